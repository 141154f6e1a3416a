"""Sections of a study spec: dataset, model, search, resources, reference, tracking.

``loss`` is in :mod:`ltsearch.spec.loss`, ``training`` in :mod:`ltsearch.spec.training`.

Each is a pydantic model with unknown keys forbidden; cross-section checks (objectives vs
masks, grid sampler vs loss spaces, initial points) live in :mod:`ltsearch.spec`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import Field, StrictBool, field_validator, model_validator

from ltsearch.errors import SpecError
from ltsearch.spec.early_stopping import EarlyStopping
from ltsearch.spec.loss import Float, Int, Strict
from ltsearch.spec.paths import tracking_path, uri_scheme

METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf")
METRICS = tuple(f"{kind}/{m}" for kind in ("bbox", "segm") for m in METRIC_NAMES)

PosInt = Annotated[Int, Field(gt=0)]
PosFloat = Annotated[Float, Field(gt=0)]
Seed = Annotated[Int, Field(ge=0, le=2**32 - 1)]  # what NumPy and Optuna accept as a seed
Path_ = Annotated[str, Field(min_length=1)]


class SyntheticData(Strict):
    """The embedded synthetic long-tail dataset; ``None`` keeps the package default."""

    kind: Literal["synthetic"]
    # the generator's bounds (ltmodels.data.synthetic.SynthConfig), checked at load time
    classes: Annotated[Int, Field(ge=3, le=200)] | None = None
    train_images: PosInt | None = None
    val_images: PosInt | None = None
    image_size: Annotated[Int, Field(ge=64, le=1024)] | None = None
    seed: Seed | None = None
    # every class in at least this many validation images (the generator's default is 2):
    # raising it gives rare classes more validation instances, so AP_r is measured on more
    # than a handful of boxes; the training images do not change
    min_val_images: Annotated[Int, Field(ge=1, le=10)] | None = None

    def synth_kwargs(self) -> dict[str, int]:
        """Keyword arguments of ``ltmodels.data.synthetic.SynthConfig`` (``classes`` is
        ``num_classes`` there)."""
        out = self.model_dump(exclude={"kind"}, exclude_none=True)
        if "classes" in out:
            out["num_classes"] = out.pop("classes")
        return out

    def check_paths(self) -> None:
        """Nothing to check: the synthetic dataset is generated."""


class LvisData(Strict):
    """An LVIS-format dataset. Paths are not checked when a spec loads (a study is often
    written on a laptop for a cluster's paths): :meth:`check_paths` does, on request
    (``ltsearch validate --check-data``). Relative paths in a study file are relative to
    the file's own directory (made absolute when it loads, :mod:`ltsearch.spec.paths`).
    ``train_images``/``val_images`` default to ``images`` (COCO's layout: one root holding
    both splits' files)."""

    kind: Literal["lvis"]
    train: Path_
    val: Path_
    images: Path_
    train_images: Path_ | None = None
    val_images: Path_ | None = None
    version: Literal["auto", "v0.5", "v1"] = "auto"

    def check_paths(self) -> None:
        """Raise :class:`SpecError` (path ``dataset.<key>``) for the first missing path."""
        for key in ("train", "val", "images", "train_images", "val_images"):
            value = getattr(self, key)
            if value is None:
                continue
            p = Path(value).expanduser()
            ok = p.is_file() if key in ("train", "val") else p.is_dir()
            if not ok:
                what = "annotation file" if key in ("train", "val") else "image directory"
                raise SpecError(
                    f"{what} {value!r} does not exist; fix the path (relative paths are "
                    "relative to the study file's directory)",
                    path=["dataset", key],
                )

    def check_contents(self, *, masks: bool = True) -> None:
        """``validate --check-data`` after :meth:`check_paths`: both annotation files load
        as LVIS (schema, ids, boxes), list the same categories, and every image they name
        exists with the size the JSON gives (reads each image's header: a minute or two
        for real LVIS). Raises :class:`~ltmodels.errors.DatasetError` naming the file."""
        from ltmodels.data.lvis import LVISDetection, check_same_categories

        train = LVISDetection(self.train, self.train_images or self.images, with_masks=masks)
        val = LVISDetection(self.val, self.val_images or self.images, with_masks=False)
        check_same_categories(train, val)
        train.check(files=True, sizes=True)
        val.check(files=True, sizes=True)


DatasetSpec = Annotated[SyntheticData | LvisData, Field(discriminator="kind")]


class ModelSection(Strict):
    """Overrides of :class:`ltmodels.modeling.detector.ModelSpec` (``None`` keeps its default);
    :meth:`overrides` gives them as keyword arguments. ``min_size`` is one size or a list
    (multi-scale training; inference uses the last)."""

    backbone: Literal["tiny", "resnet18_fpn", "resnet50_fpn", "resnet101_fpn"] | None = None
    masks: StrictBool | None = None
    min_size: list[PosInt] | None = Field(default=None, min_length=1)
    max_size: PosInt | None = None
    rpn_pre_nms_top_n_train: PosInt | None = None
    rpn_pre_nms_top_n_test: PosInt | None = None
    rpn_post_nms_top_n_train: PosInt | None = None
    rpn_post_nms_top_n_test: PosInt | None = None
    box_batch_size_per_image: PosInt | None = None
    box_positive_fraction: Annotated[Float, Field(gt=0, le=1)] | None = None
    box_score_thresh: Annotated[Float, Field(ge=0, lt=1)] | None = None
    box_detections_per_img: PosInt | None = None
    cls_head: Literal["auto", "linear", "cosine"] | None = None
    cosine_scale: PosFloat | None = None
    box_loss: Literal["smooth_l1", "giou"] | None = None
    trainable_backbone_layers: Annotated[Int, Field(ge=0, le=5)] | None = None
    norm: Literal["bn", "frozen_bn", "gn"] | None = None
    backbone_weights: Path_ | None = None

    @field_validator("min_size", mode="before")
    @classmethod
    def _sizes(cls, value: Any) -> Any:
        return [value] if isinstance(value, (int, float, str)) else value

    @model_validator(mode="after")
    def _consistent(self) -> ModelSection:
        sizes = self.min_size or []
        if self.max_size is not None and any(s > self.max_size for s in sizes):
            raise SpecError(f"exceeds max_size {self.max_size}; lower it", path=["min_size"])
        if self.norm == "frozen_bn" and self.backbone_weights is None:
            raise SpecError(
                "frozen_bn needs backbone_weights (frozen statistics of an untrained network do "
                "not normalise); use gn or bn, or give backbone_weights",
                path=["norm"],
            )
        return self

    def overrides(self) -> dict[str, Any]:
        """The keys set, as ``ModelSpec`` keyword arguments (``min_size``: an int, or a tuple
        of sizes for multi-scale training)."""
        out = self.model_dump(exclude_none=True)
        if "min_size" in out:
            sizes = out["min_size"]
            out["min_size"] = sizes[0] if len(sizes) == 1 else tuple(sizes)
        return out


class Objective(NamedTuple):
    metric: str
    direction: str


class SearchSpec(Strict):
    """How the search runs. ``trials`` counts configurations (each runs once per seed);
    it defaults to the number of grid points under the grid sampler. ``max_failures``:
    while no trial has succeeded, this many failures with the same error stop the study
    (a systematic error, e.g. a wrong path; 0 never stops). ``trial_timeout``: seconds one
    (configuration, seed) run may take before it is recorded as failed and its process
    ended (a hung run: a deadlock, a dead data mount; ``null``: no limit).
    ``max_retries``: how many times a trial whose process or node died (SIGKILL, OOM
    killer, node loss) is started again; it resumes from its last epoch checkpoint. An
    error raised by the run itself is recorded once and never retried: a run is
    deterministic for its seed. ``early_stopping``: stop configurations that fall behind at
    rung epochs (end-to-end studies; :mod:`ltsearch.spec.early_stopping`). ``reuse``: a
    (configuration, seed) that another study in the same storage finished with the same
    code, packages and resources is copied, not trained again (:mod:`ltsearch.run.reuse`);
    ``false`` trains every run anew."""

    sampler: Literal["tpe", "nsga2", "grid", "random"] = "tpe"
    objectives: list[str] = Field(default_factory=lambda: ["bbox/APr:max", "bbox/APf:max"])
    trials: PosInt | None = None
    seeds: list[Seed] = Field(default_factory=lambda: [0], min_length=1)
    seed: Seed = 0
    initial_points: list[dict[str, Any]] = Field(default_factory=list)
    population_size: Annotated[Int, Field(ge=2)] | None = None
    max_failures: Annotated[Int, Field(ge=0)] = 3
    trial_timeout: PosFloat | None = None
    max_retries: Annotated[Int, Field(ge=0, le=100)] = 2
    early_stopping: EarlyStopping | None = None  # MO-ASHA rungs (ltsearch.spec.early_stopping)
    reuse: StrictBool = True  # runs other studies of the storage finished (ltsearch.run.reuse)

    @field_validator("objectives")
    @classmethod
    def _objectives(cls, value: list[str]) -> list[str]:
        if not value:
            raise SpecError("is empty; list at least one, e.g. [bbox/APr:max, bbox/APf:max]")
        out = []
        for i, text in enumerate(value):
            metric, _, direction = str(text).partition(":")
            direction = direction or "max"
            if metric not in METRICS:
                raise SpecError(
                    f"unknown metric {metric!r}; known: {', '.join(METRICS)}", path=[i]
                )
            if direction not in ("max", "min"):
                raise SpecError(f"direction {direction!r} is invalid; use max or min", path=[i])
            out.append(f"{metric}:{direction}")
        if len({o.split(":")[0] for o in out}) != len(out):
            raise SpecError("a metric is listed twice; list each once")
        return out

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, value: list[int]) -> list[int]:
        if len(set(value)) != len(value):
            raise SpecError("a seed is listed twice; list each once")
        return value

    @model_validator(mode="after")
    def _population(self) -> SearchSpec:
        if self.population_size is not None and self.sampler != "nsga2":
            raise SpecError("applies to sampler: nsga2 only; remove it", path=["population_size"])
        return self

    @property
    def parsed_objectives(self) -> list[Objective]:
        return [Objective(*o.split(":")) for o in self.objectives]

    @property
    def metric_names(self) -> list[str]:
        return [o.metric for o in self.parsed_objectives]

    @property
    def directions(self) -> list[str]:
        """``"maximize"``/``"minimize"`` per objective, as Optuna spells them."""
        return [o.direction + "imize" for o in self.parsed_objectives]


class Resources(Strict):
    """Per trial: ``workers`` DDP workers of ``cpus_per_worker``/``gpus_per_worker`` each.

    ``build_threads``: torch threads of the one-CPU-worker trial that builds what every
    trial of a decoupled study needs (stage 1, the feature cache) while the others wait for
    it; ``None``: the waiting trials' CPUs, ``max_concurrent_trials x cpus_per_worker``, at
    most the node's. Not hashed: like the worker count it changes summation order, not
    what is trained.

    ``pack``: how many (configuration, seed) runs of a decoupled feature-cache study one
    process trains together on one pass over the cache (:mod:`ltsearch.run.packing`); each
    still is its own Tune trial and parquet row, with the same result as alone. ``auto``: the
    concurrent trials per CPU slot, ``ceil(max_concurrent_trials x cpus_per_worker / CPUs)``,
    at most 16 (1 when the study cannot pack). Not hashed: it changes no result."""

    workers: PosInt = 1
    cpus_per_worker: PosFloat = 1.0
    gpus_per_worker: Annotated[Float, Field(ge=0)] = 0.0
    max_concurrent_trials: PosInt = 1
    build_threads: PosInt | None = None
    pack: Annotated[Int, Field(gt=0, le=64)] | Literal["auto"] = "auto"

    @field_validator("pack", mode="before")
    @classmethod
    def _pack(cls, value: Any) -> Any:
        ok = value == "auto" or (type(value) is int and 1 <= value <= 64)
        if not ok:
            raise SpecError(f"got {value!r}; write auto or a number of runs from 1 to 64")
        return value


class Unexpressed(Strict):
    """A row of the paper's table that the study cannot express, and why (REPRODUCTION.md
    lists it: a reader sees which rows were left out, not only which were run)."""

    row: Annotated[str, Field(min_length=1)]
    why: Annotated[str, Field(min_length=1)]
    numbers: dict[str, Float] = Field(default_factory=dict)

    @field_validator("numbers")
    @classmethod
    def _metric_keys(cls, value: dict[str, float]) -> dict[str, float]:
        for key in value:
            if key not in METRIC_NAMES and key not in METRICS:
                raise SpecError(
                    f"{key!r} is not a metric; use {', '.join(METRIC_NAMES)} or a full name "
                    "such as bbox/AP"
                )
        return value


class Reference(Strict):
    """Published numbers to compare against: each row holds parameter values (plus
    ``loss`` when the study searches several) and some of ``AP, AP50, ..., APf`` (of
    ``metric_kind``) and/or of their full names ``bbox/AP, ..., segm/APf`` (a table that
    prints box and mask AP side by side). ``unexpressed`` names the table's rows the study
    cannot run, with the reason."""

    source: Annotated[str, Field(min_length=1)]
    metric_kind: Literal["bbox", "segm"] = "bbox"
    rows: list[dict[str, Any]] = Field(min_length=1)
    unexpressed: list[Unexpressed] = Field(default_factory=list)


class Profile(Strict):
    """Written by ``--embedded`` (:mod:`ltsearch.spec.profiles`), not by hand: the study
    this one was derived from and the scaling rules applied, which the report prints."""

    name: Literal["embedded"]
    source: Annotated[str, Field(min_length=1)]
    rules: list[str] = Field(default_factory=list)


TRACKING_SCHEMES = (
    "file",
    "sqlite",
    "http",
    "https",
    "postgresql",
    "mysql",
    "mssql",
    "databricks",
)
"""Schemes of the MLflow tracking stores a study may name (``sqlite+driver`` counts as
``sqlite``); a value without a scheme is a local directory (a file store)."""
TRACKING_FIX = (
    "use http(s)://HOST:PORT (a tracking server), sqlite:///FILE.db, file:DIR or a directory"
)


class Tracking(Strict):
    """Experiment tracking besides the parquet results (README "Tracking", module
    :mod:`ltsearch.tracking`). ``mlflow``: an MLflow tracking URI; a local one (a
    directory, ``file:DIR``, ``sqlite:///FILE.db``) relative to the study file's directory.
    Logging needs the ``mlflow`` package (``pip install 'ltsearch[mlflow]'``)."""

    mlflow: Annotated[str, Field(min_length=1)] | None = None

    @field_validator("mlflow")
    @classmethod
    def _uri(cls, value: str | None) -> str | None:
        if value is not None:
            check_tracking_uri(value)
        return value


def check_tracking_uri(uri: str) -> None:
    """Raise :class:`SpecError` (no key path) unless ``uri`` can name an MLflow store."""
    if not uri.strip() or any(ord(c) < 32 for c in uri):
        raise SpecError(f"{uri!r} is not a URI; {TRACKING_FIX}")
    scheme = uri_scheme(uri)
    if scheme is None:
        return
    if scheme.partition("+")[0] not in TRACKING_SCHEMES:
        raise SpecError(f"scheme {scheme!r} is not an MLflow tracking store; {TRACKING_FIX}")
    if scheme in ("http", "https"):
        from urllib.parse import urlsplit

        try:
            host = urlsplit(uri).hostname
        except ValueError:  # a malformed port or IPv6 address
            host = None
        if not host:
            raise SpecError(f"{uri!r} names no host; use {scheme}://HOST:PORT")
    if scheme.startswith("sqlite") and not tracking_path(uri):
        raise SpecError(f"{uri!r} names no database file; use sqlite:///FILE.db")


__all__ = [
    "METRICS", "METRIC_NAMES", "DatasetSpec", "LvisData", "ModelSection", "Objective",
    "PosFloat", "PosInt", "Profile", "Reference", "Resources", "SearchSpec", "Seed",
    "SyntheticData", "TRACKING_SCHEMES", "Tracking", "check_tracking_uri",
]  # fmt: skip
