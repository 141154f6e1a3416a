"""Study specs: the YAML a user writes, validated into a :class:`StudySpec`.

Sections (see ``studies/*.yaml`` for complete examples)::

    name: acsl-xi                     # slug: names the results directory <storage>/<name>
    description: ...                  # optional
    dataset: {kind: synthetic, classes: 40}           # or {kind: lvis, train, val, images}
    model: {backbone: resnet50_fpn, masks: true}  # modeling.detector.ModelSpec overrides
    training: {schedule: end_to_end, epochs: 12, lr: 0.02, sampler: rfs}
    loss: {name: acsl, params: {xi: {uniform: [0.0, 1.0]}}}      # or {choice: [...]}
    search: {sampler: tpe, objectives: [bbox/APr:max, bbox/APf:max], trials: 20, seeds: [0, 1]}
    resources: {workers: 1, gpus_per_worker: 0, max_concurrent_trials: 1}
    storage: runs                     # root directory; the study writes to <storage>/<name>
    reference: {source: ACSL Table 2, rows: [{xi: 0.7, APr: 18.6, APf: 29.4}]}
    smoke: {search: {trials: 3}}      # extra overrides for --smoke (see StudySpec.smoked)
    tracking: {mlflow: mlruns}        # optional: also log runs to MLflow (ltsearch.tracking)

Every error is a :class:`~ltsearch.errors.SpecError` whose ``str`` is one line:
``<file>: <key.path>: <what is wrong>; <what is allowed / the fix>``. Loading checks the
file's syntax and values only; dataset paths are checked by :meth:`StudySpec.check_data`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator, model_validator

from ltsearch.errors import SpecError
from ltsearch.spec.early_stopping import check_early_stopping
from ltsearch.spec.io import from_validation_error, parse_yaml
from ltsearch.spec.loss import LossSpec, Strict
from ltsearch.spec.overrides import apply_overrides, blame, parse_overrides
from ltsearch.spec.paths import absolute, inside, resolve_raw, tracking_uri
from ltsearch.spec.points import check_point, check_reference_row, param_key
from ltsearch.spec.profiles import SMOKE_DATASET, embedded_raw, smoked_raw
from ltsearch.spec.sections import (
    DatasetSpec,
    ModelSection,
    Profile,
    Reference,
    Resources,
    SearchSpec,
    Tracking,
)
from ltsearch.spec.training import TrainingSpec

SLUG = re.compile(r"[a-z0-9][a-z0-9._-]{0,79}")  # fullmatch: "$" would let a newline end it
MAX_GRID_POINTS = 100_000
"""Most points a grid study may have: the grid sampler lists them all before it starts, and
each is a trained detector per seed."""


class StudySpec(Strict):
    """A validated study. Treat as immutable: derive variants with :meth:`with_overrides`
    and :meth:`smoked`."""

    name: str
    description: str | None = None
    dataset: DatasetSpec
    model: ModelSection = ModelSection()
    training: TrainingSpec = TrainingSpec()
    loss: LossSpec
    search: SearchSpec = SearchSpec()
    resources: Resources = Resources()
    storage: str = Field("runs", min_length=1)
    reference: Reference | None = None
    smoke: dict[str, Any] | None = None
    embedded: dict[str, Any] | None = None
    profile: Profile | None = None
    tracking: Tracking | None = None

    @field_validator("name")
    @classmethod
    def _slug(cls, value: str) -> str:
        if not SLUG.fullmatch(value):
            raise SpecError(
                f"{value!r} is not a slug; use lowercase letters, digits, '.', '_' or '-' "
                "(it names the results directory)"
            )
        return value

    @model_validator(mode="after")
    def _cross_checks(self) -> StudySpec:
        if self.model.masks is False:
            for i, obj in enumerate(self.search.parsed_objectives):
                if obj.metric.startswith("segm/"):
                    raise SpecError(
                        "segm metrics need masks; use a bbox metric or set model.masks: true",
                        path=["search", "objectives", i],
                    )
        stage2 = self.training.stage2
        if stage2 is not None and stage2.feature_cache and not stage2.full_eval:
            for i, obj in enumerate(self.search.parsed_objectives):
                if obj.metric.startswith("segm/"):
                    raise SpecError(
                        "feature-cache trials report box metrics only; set "
                        "training.stage2.full_eval: true for segm metrics, or use a bbox metric",
                        path=["search", "objectives", i],
                    )
        if stage2 is not None and stage2.segm_front and self.model.masks is False:
            raise SpecError(
                "segm needs masks; set model.masks: true or drop segm_front",
                path=["training", "stage2", "segm_front"],
            )
        self._check_trials()
        self._check_pack()
        check_early_stopping(self.search.early_stopping, self.training.schedule,
                             self.training.epochs, self.training.iterations)  # fmt: skip
        for i, point in enumerate(self.search.initial_points):
            check_point(point, self.loss, ["search", "initial_points", i])
        if self.reference is not None:
            for i, row in enumerate(self.reference.rows):
                check_reference_row(
                    row, self.loss, ["reference", "rows", i], self.reference.metric_kind,
                    stage1_row=self.training.stage1_row,
                )  # fmt: skip
        for key, variant in (("smoke", smoked_raw), ("embedded", embedded_raw)):
            if getattr(self, key) is not None:
                try:
                    StudySpec.model_validate(variant(self))
                except ValidationError as exc:
                    raise from_validation_error(exc).located(prefix=[key]) from None
        return self

    def _check_pack(self) -> None:
        r, stage2 = self.resources, self.training.stage2
        if r.pack == "auto" or r.pack == 1:
            return
        if stage2 is None or not stage2.feature_cache:
            raise SpecError(
                f"pack: {r.pack} needs a decoupled study whose stage 2 trains on the feature "
                "cache (training.stage2 with finetune: [box_predictor]); set pack: 1 or auto",
                path=["resources", "pack"],
            )
        if r.workers != 1 or r.gpus_per_worker > 0:
            raise SpecError(
                f"pack: {r.pack} needs one-CPU-worker trials (workers: 1, gpus_per_worker: 0); "
                "set pack: 1 or auto",
                path=["resources", "pack"],
            )

    def _check_trials(self) -> None:
        search = self.search
        if search.sampler != "grid":
            if search.trials is None:
                raise SpecError(
                    f"missing; sampler {search.sampler} needs a budget, e.g. trials: 20",
                    path=["search", "trials"],
                )
            return
        for i, opt in enumerate(self.loss.options):
            for pname, space in opt.params.items():
                if space.choices() is None:
                    raise SpecError(
                        f"sampler grid needs a value, grid or categorical here, not {space.kind}; "
                        "list the values to try",
                        path=["loss", *self.loss.path(i), "params", pname, space.kind],
                    )
        if self.grid_size > MAX_GRID_POINTS:
            raise SpecError(
                f"the grid has {self.grid_size} points (the product of the values listed per "
                f"loss), more than the {MAX_GRID_POINTS} a study can list; list fewer values, "
                "or use sampler: tpe with a trials budget",
                path=["loss"],
            )
        if search.trials is not None and search.trials > self.grid_size:
            raise SpecError(
                f"{search.trials} exceeds the {self.grid_size} grid points; lower it or omit it",
                path=["search", "trials"],
            )

    @property
    def grid_size(self) -> int:
        """Number of grid points (0 when some parameter is a range)."""
        total = 0
        for opt in self.loss.options:
            sizes = [space.choices() for space in opt.params.values()]
            if any(s is None for s in sizes):
                return 0
            total += math.prod(len(s or ()) for s in sizes)
        return total

    @property
    def n_trials(self) -> int:
        """Configurations to try (each runs once per seed)."""
        return self.search.trials if self.search.trials is not None else self.grid_size

    @property
    def study_dir(self) -> Path:
        """Where this study's results live: ``<storage>/<name>``.

        Raises:
            SpecError: ``<storage>/<name>`` is a link that leads outside ``storage`` (a
                study writes inside its storage only, :func:`ltsearch.spec.paths.inside`).
        """
        return inside(Path(self.storage).expanduser(), self.name)

    def check_data(self) -> None:
        """``validate --check-data``: the dataset's paths exist and, for an LVIS-format
        dataset, its files load, agree on categories and name images that exist."""
        self.dataset.check_paths()
        if self.dataset.kind == "lvis":
            self.dataset.check_contents(masks=self.model.masks is not False)

    def to_dict(self) -> dict[str, Any]:
        """The spec as plain data, keys as written in YAML; ``spec_from_dict`` round-trips it."""
        return self.model_dump(mode="json", by_alias=True, exclude_unset=True)

    def with_overrides(
        self,
        *,
        storage: str | Path | None = None,
        dataset: Mapping[str, Any] | None = None,
        mlflow: str | None = None,
    ) -> StudySpec:
        """A copy with ``storage``, ``dataset`` (a dataset section mapping) and/or
        ``tracking.mlflow`` replaced.

        A relative ``storage``, and an ``mlflow`` URI naming a relative local path, are
        taken relative to the working directory (as ``--storage`` and ``--mlflow``).
        """
        raw = self.to_dict()
        if storage is not None:
            raw["storage"] = absolute(storage, Path.cwd())
        if dataset is not None:
            raw["dataset"] = dict(dataset)
        if mlflow is not None:
            uri = tracking_uri(mlflow, Path.cwd())
            raw["tracking"] = {**raw.get("tracking", {}), "mlflow": uri}
        return spec_from_dict(raw)

    def smoked(self) -> StudySpec:
        """The ``--smoke`` variant: the built-in policy, then the study's ``smoke`` block.

        Policy (:func:`ltsearch.spec.profiles.smoked_raw`): name ``<name>-smoke`` (its own
        results directory), the tiny synthetic dataset (:data:`SMOKE_DATASET`), backbone
        ``tiny`` (size, proposal and weight overrides dropped), one CPU worker per trial and
        one trial at a time, 1 epoch per stage (``lr_milestones`` scaled to it), batch size
        <= 4, warm-up <= 10 iterations, at most 2 trials and the first seed only. The
        ``smoke`` block is then merged key by key (a ``dataset`` in it replaces the dataset
        section whole).
        """
        return spec_from_dict(smoked_raw(self))

    def embedded_variant(self, cwd: str | Path | None = None) -> StudySpec:
        """The ``--embedded`` profile: the study's whole design on the embedded data with
        budgets scaled to it (:mod:`ltsearch.spec.profiles`), named ``<name>-embedded``,
        stored under ``runs`` in ``cwd`` (default: the working directory), then the
        study's ``embedded`` block; ``profile.rules`` says what was scaled."""
        return spec_from_dict(embedded_raw(self, cwd))

    def resolved(self, spec_dir: str | Path, cwd: str | Path | None = None) -> StudySpec:
        """A copy with every path absolute (:mod:`ltsearch.spec.paths`): storage relative to
        ``cwd`` (default: the working directory), dataset and weight paths relative to
        ``spec_dir``. :func:`load_spec` does this for a study file."""
        return spec_from_dict(resolve_raw(self.to_dict(), spec_dir=spec_dir, cwd=cwd))


def spec_from_dict(data: Any, *, file: str | None = None) -> StudySpec:
    """Validate already-parsed YAML data; errors raise :class:`SpecError` naming ``file``."""
    if data is None:
        raise SpecError(
            "the spec is empty; a study needs at least name, dataset and loss", file=file
        )
    if not isinstance(data, Mapping):
        raise SpecError(
            f"the top level is a {type(data).__name__}; expected a mapping of study keys "
            f"({', '.join(StudySpec.model_fields)})",
            file=file,
        )
    try:
        return StudySpec.model_validate(data)
    except ValidationError as exc:
        raise from_validation_error(exc, file) from None


def load_spec(path: str | Path, overrides: Sequence[str] = ()) -> StudySpec:
    """Read and validate a study YAML file, with every path in it made absolute: storage
    relative to the working directory, dataset and weight paths relative to the file's own
    directory (:mod:`ltsearch.spec.paths`). ``overrides`` (``--set KEY=VALUE`` arguments,
    :mod:`ltsearch.spec.overrides`) are applied to the parsed file before it is validated.

    Raises:
        SpecError: missing or unreadable file, YAML syntax error (with its line), a tag
            other than plain data (e.g. ``!!python/object``), duplicate keys, a non-mapping
            top level, or any invalid key or value (with its key path and the ``--set``
            it comes from).
    """
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError("file not found; check the path", file=file) from None
    except IsADirectoryError:
        raise SpecError("is a directory; give the study's YAML file", file=file) from None
    except UnicodeDecodeError:
        raise SpecError("is not UTF-8 text; save the study as UTF-8 YAML", file=file) from None
    except OSError as exc:
        raise SpecError(f"cannot be read ({exc.strerror}); check it", file=file) from None
    sets = parse_overrides(overrides, file)
    raw = apply_overrides(parse_yaml(text, file), sets, file)
    raw = resolve_raw(raw, spec_dir=Path(path).expanduser().absolute().parent)
    try:
        return spec_from_dict(raw, file=file)
    except SpecError as exc:
        raise blame(exc, sets) from None


__all__ = [
    "MAX_GRID_POINTS", "SMOKE_DATASET", "StudySpec", "check_reference_row", "load_spec",
    "param_key", "spec_from_dict",
]  # fmt: skip
