"""The ``--embedded`` profile: a paper study's whole design on the embedded synthetic data.

A study in ``studies/`` is written for real LVIS (8 GPUs, days). ``ltsearch run STUDY.yaml
--embedded`` runs the same ablation on this machine: every grid point or initial point,
every seed (at least three), the same losses, hyperparameters, stages, samplers and
schedule kind (decoupled or end-to-end), with budgets scaled to the embedded data. Every
scaling rule is here, and :func:`embedded_raw` writes the ones it applied, in words, into
the profiled study (``profile.rules``), so the report and REPRODUCTION.md print them.

The rules (constants below):

- **Data and model**: the embedded synthetic long-tail dataset with the package defaults
  (the quickstart's data: 40 classes with LVIS v1's rare / common / frequent shares), the
  ``tiny`` backbone trained from scratch (no ImageNet weights, no sizes of the real model).
- **Stage 1** gets the quickstart's stage-1 budget (:data:`WHOLE_MODEL`), so every
  decoupled study with the same stage-1 setting shares one stage-1 model and feature cache
  (the seeds of a decoupled study fine-tune that one model, as the papers do: their spread
  is stage 2's).
- **End-to-end training** gets :data:`END_TO_END`, stage 1's budget: every configuration
  and seed trains a whole detector from scratch. Two epochs were tried first and are too
  few (C2AM, s 30: AP_r 0.0-0.2 %, AP_f 3-13 % after 2 epochs; 0.6-7 % and 17-43 % after 3).
- **Stage 2** trains the box predictor on the feature cache with the quickstart's stage-2
  budget (:data:`CACHED_STAGE2`); a paper that fine-tunes more parts (LOCE: RPN and mask
  head, AHRL: the whole model) is reduced to the box predictor, the rule the report names.
  It is evaluated on boxes: segm objectives become their bbox counterparts (a whole-model
  segm pass costs about 60 s per run on this machine, ten times the training).
- **Learning-rate milestones** stay at the paper's fractions of each schedule.
- **Frequency thresholds** (RFS's t, EQL's lambda, AHR's lambda_r) are thresholds on the
  share of training images holding a class: they are multiplied by (LVIS train images /
  embedded train images), so the same classes fall below them (the embedded rare and
  common classes keep LVIS's absolute image counts).
- **Class-count parameters** (AHR's number of clusters) are multiplied by (embedded
  classes / LVIS classes), at least 2: the same classes per cluster.
- **Search**: seeds 0, 1, 2 (more when the study lists more), early stopping off (the
  budgets are a few epochs), one CPU per trial and two trials at a time.

The study's own ``embedded:`` block is merged last, key by key (as ``smoke:``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ltsearch.spec.paths import absolute

if TYPE_CHECKING:
    from ltsearch.spec.study import StudySpec

# --smoke (StudySpec.smoked): tiny data, tiny model, few short trials.
SMOKE_DATASET: dict[str, Any] = {
    "kind": "synthetic", "classes": 8, "train_images": 16, "val_images": 8, "image_size": 128,
}  # fmt: skip
SMOKE_RESOURCES: dict[str, Any] = {
    "workers": 1, "cpus_per_worker": 1, "gpus_per_worker": 0, "max_concurrent_trials": 1,
}  # fmt: skip
SMOKE_MODEL_KEEP = ("masks", "cls_head", "cosine_scale", "box_loss")
SMOKE_TRIALS = 2
SMOKE_MAX_BATCH = 4
SMOKE_MAX_WARMUP = 10

# --embedded (StudySpec.embedded_variant)
EMBEDDED_DATASET: dict[str, Any] = {"kind": "synthetic"}
WHOLE_MODEL: dict[str, Any] = {"epochs": 3, "lr": 0.02, "batch_size": 4, "warmup_iters": 100}
END_TO_END: dict[str, Any] = dict(WHOLE_MODEL)
CACHED_STAGE2: dict[str, Any] = {"epochs": 8, "lr": 0.01, "batch_size": 8, "warmup_iters": 20}
EMBEDDED_SEEDS = (0, 1, 2)
EMBEDDED_RESOURCES: dict[str, Any] = {
    "workers": 1, "cpus_per_worker": 1, "gpus_per_worker": 0, "max_concurrent_trials": 2,
}  # fmt: skip
EMBEDDED_STORAGE = "runs"  # relative to the working directory, as the quickstart's
FREQUENCY_PARAMS = {"eql": ("lambda_",), "ahr": ("lambda_r",)}
CLASS_COUNT_PARAMS = {"ahr": ("num_clusters",)}
LVIS_SIZES = {"v0.5": (57_263, 1230), "v1": (100_170, 1203)}  # train images, classes
"""LVIS train-set sizes: v0.5 57,263 images (ACSL Sec. 4.1: "about 57k") and 1,230
classes; v1 100,170 images and 1,203 classes. ``version: auto`` counts as v1."""


def smoked_raw(spec: StudySpec) -> dict[str, Any]:
    """The ``--smoke`` variant as raw data (see :meth:`StudySpec.smoked`)."""
    raw = spec.to_dict()
    raw.pop("smoke", None)
    raw.pop("embedded", None)
    raw["name"] = f"{spec.name}-smoke"
    raw["dataset"] = dict(SMOKE_DATASET)
    model = {k: v for k, v in raw.get("model", {}).items() if k in SMOKE_MODEL_KEEP}
    raw["model"] = {**model, "backbone": "tiny"}
    for raw_stage, stage in _stages(spec, raw):
        length = stage.length()[0]
        raw_stage.pop("iterations", None)
        raw_stage["epochs"] = 1
        if stage.lr_milestones:  # the same decay points, as fractions of the one epoch
            raw_stage["lr_milestones"] = [m / length for m in stage.lr_milestones]
        raw_stage["batch_size"] = min(stage.batch_size, SMOKE_MAX_BATCH)
        raw_stage["warmup_iters"] = min(stage.warmup_iters, SMOKE_MAX_WARMUP)
    raw["resources"] = dict(SMOKE_RESOURCES)
    search = raw.setdefault("search", {})
    trials = min(spec.n_trials, SMOKE_TRIALS)
    search["trials"] = trials
    search["seeds"] = spec.search.seeds[:1]
    search["initial_points"] = search.get("initial_points", [])[:trials]
    search.pop("early_stopping", None)  # 1 epoch: no rung to stop at
    return deep_merge(raw, spec.smoke or {})


def embedded_raw(spec: StudySpec, cwd: str | Path | None = None) -> dict[str, Any]:
    """The ``--embedded`` variant as raw data: the module docstring's rules, then the
    study's ``embedded`` block; ``profile.rules`` lists what was changed, in words.
    ``storage`` is ``runs`` under ``cwd`` (default: the working directory)."""
    from ltmodels.data.synthetic import SynthConfig

    raw = spec.to_dict()
    raw.pop("smoke", None)
    block = raw.pop("embedded", None) or {}
    rules: list[str] = []
    emb = SynthConfig()
    src_images, src_classes = _source_size(spec)
    raw["name"] = f"{spec.name}-embedded"
    raw["dataset"] = dict(EMBEDDED_DATASET)
    rules.append(
        f"dataset: the embedded synthetic long-tail data ({emb.num_classes} classes, "
        f"{emb.train_images} train / {emb.val_images} val images of {emb.image_size} px) "
        f"instead of {_source_name(spec)}"
    )
    model = {k: v for k, v in raw.get("model", {}).items() if k in SMOKE_MODEL_KEEP}
    raw["model"] = {**model, "backbone": "tiny"}
    weights = spec.model.backbone_weights
    rules.append(
        f"model: the tiny backbone trained from scratch (the study: "
        f"{spec.model.backbone or 'the default backbone'}"
        f"{' from ' + Path(weights).name if weights else ''}); sizes and proposal counts at "
        "the tiny model's defaults"
    )
    rules += _scale_training(spec, raw)
    rules += _box_objectives(spec, raw)
    freq = src_images / emb.train_images if src_images else 1.0
    ratio = emb.num_classes / src_classes if src_classes else 1.0
    rules += _scale_params(spec, raw, freq, ratio, src_images, emb.train_images)
    search = raw.setdefault("search", {})
    seeds = list(spec.search.seeds)
    seeds += [s for s in EMBEDDED_SEEDS if s not in seeds][: max(0, 3 - len(seeds))]
    if seeds != spec.search.seeds:
        rules.append(f"seeds: {_nums(seeds)} (the study lists {_nums(spec.search.seeds)})")
    search["seeds"] = seeds
    if search.pop("early_stopping", None) is not None:
        rules.append("early stopping: off (a few epochs per run)")
    raw["resources"] = dict(EMBEDDED_RESOURCES)
    raw["storage"] = absolute(EMBEDDED_STORAGE, Path.cwd() if cwd is None else cwd)
    if block:
        rules.append(f"the study's embedded block: {_inline(block)}")
    raw["profile"] = {"name": "embedded", "source": spec.name, "rules": rules}
    return deep_merge(raw, block)


def _source_size(spec: StudySpec) -> tuple[int | None, int | None]:
    """(train images, classes) of the study's own dataset; (None, None) for synthetic."""
    ds = spec.dataset
    if ds.kind != "lvis":
        return None, None
    return LVIS_SIZES["v0.5" if ds.version == "v0.5" else "v1"]


def _source_name(spec: StudySpec) -> str:
    ds = spec.dataset
    if ds.kind != "lvis":
        return "the study's synthetic data"
    version = "v0.5" if ds.version == "v0.5" else "v1"
    images, classes = LVIS_SIZES[version]
    return f"LVIS {version} ({classes} classes, {images:,} train images)"


def _stages(spec: StudySpec, raw: dict[str, Any]) -> list[tuple[dict[str, Any], Any]]:
    """(raw section, validated section) of each trained stage."""
    t = spec.training
    training = raw.setdefault("training", {})
    if t.schedule == "end_to_end":
        return [(training, t)]
    return [(training[key], getattr(t, key)) for key in ("stage1", "stage2")]


def _scale_training(spec: StudySpec, raw: dict[str, Any]) -> list[str]:
    rules = []
    for (raw_stage, stage), label in zip(_stages(spec, raw), _stage_labels(spec), strict=True):
        whole = label != "stage 2" or stage.finetune != ["box_predictor"]
        if label == "stage 2":
            if whole:
                rules.append(
                    f"stage 2: fine-tunes the box predictor on the feature cache (the paper "
                    f"fine-tunes {', '.join(stage.finetune)}); the other parts stay stage 1's"
                )
            raw_stage["finetune"] = ["box_predictor"]
            raw_stage.pop("use_feature_cache", None)
            raw_stage.pop("full_eval", None)
        budget = {"stage 2": CACHED_STAGE2, "stage 1": WHOLE_MODEL}.get(label, END_TO_END)
        (length, unit), lr, batch = stage.length(), stage.lr, stage.batch_size
        raw_stage.pop("iterations", None)
        raw_stage.update(budget)
        line = (
            f"{label}: {budget['epochs']} epochs, lr {budget['lr']}, batch "
            f"{budget['batch_size']}, {budget['warmup_iters']} warm-up iterations (paper: "
            f"{length} {unit}, lr {lr}, batch {batch}, {stage.warmup_iters} warm-up)"
        )
        if stage.lr_milestones:
            new = [round(m / length * budget["epochs"], 4) for m in stage.lr_milestones]
            raw_stage["lr_milestones"] = new
            of = f"{length} iterations" if unit == "iterations" else f"{length}"
            line += (
                f"; lr milestones at the paper's fractions: {_nums(stage.lr_milestones)} of "
                f"{of} -> {_nums(new)} of {budget['epochs']}"
            )
        rules.append(line)
    return rules


def _box_objectives(spec: StudySpec, raw: dict[str, Any]) -> list[str]:
    """A decoupled study's stage 2 runs on the feature cache and is evaluated on boxes: a
    whole-model pass for segm costs about 60 s per run here (the mask head on 300
    detections per image), ten times the training."""
    if spec.training.schedule != "decoupled":
        return []
    old = spec.search.objectives
    new = [o.replace("segm/", "bbox/", 1) if o.startswith("segm/") else o for o in old]
    if new == old:
        return []
    raw["search"]["objectives"] = new
    return [
        f"objectives: {', '.join(old)} -> {', '.join(new)} (stage 2 on the feature cache is "
        "evaluated on boxes; a segm pass would cost ten times its training)"
    ]


def _stage_labels(spec: StudySpec) -> list[str]:
    if spec.training.schedule == "end_to_end":
        return ["end-to-end training"]
    return ["stage 1", "stage 2"]


def _scale_params(
    spec: StudySpec,
    raw: dict[str, Any],
    freq: float,
    ratio: float,
    src_images: int | None,
    emb_images: int,
) -> list[str]:
    """Frequency thresholds and class counts, wherever the study writes them."""
    rules: list[str] = []
    if freq != 1.0:

        def to_freq(v: float) -> float:
            return min(1.0, round(v * freq, 6))

        for (raw_stage, stage), label in zip(_stages(spec, raw), _stage_labels(spec), strict=True):
            if stage.sampler == "rfs":
                raw_stage["rfs_threshold"] = to_freq(stage.rfs_threshold)
                rules.append(
                    f"{label}: RFS threshold t x {src_images:,}/{emb_images}: "
                    f"{stage.rfs_threshold} -> {raw_stage['rfs_threshold']}"
                )
        stage1 = raw.get("training", {}).get("stage1")
        if stage1 is not None:
            s1 = spec.training.stage1
            assert s1 is not None
            for key in FREQUENCY_PARAMS.get(s1.loss, ()):
                if key in s1.loss_params:
                    stage1["loss_params"][key] = to_freq(s1.loss_params[key])
                    rules.append(
                        f"stage-1 {s1.loss} {key} x {src_images:,}/{emb_images}: "
                        f"{s1.loss_params[key]} -> {stage1['loss_params'][key]}"
                    )
        rules += _map_loss_params(raw, FREQUENCY_PARAMS, to_freq,
                                  f"x {src_images:,}/{emb_images}")  # fmt: skip
    if ratio != 1.0:

        def to_count(v: float) -> int:
            return max(2, round(v * ratio))

        rules += _map_loss_params(raw, CLASS_COUNT_PARAMS, to_count, f"x {ratio:.4g} (classes)")
    return rules


def _map_loss_params(
    raw: dict[str, Any],
    params: Mapping[str, tuple[str, ...]],
    fn: Callable[[float], float],
    how: str,
) -> list[str]:
    """Apply ``fn`` to the named parameters in the loss section, the initial points and
    the reference rows; one rule line per parameter that changed."""
    changed: dict[tuple[str, str], list[str]] = {}
    loss = raw.get("loss", {})
    options = loss.get("choice") or [loss]
    for opt in options:
        name = opt.get("name")
        for key in params.get(name, ()):
            space = opt.get("params", {}).get(key)
            if space is not None:
                new = _map_space(space, fn)
                if new != space:
                    changed.setdefault((name, key), []).append(
                        f"{_inline(space)} -> {_inline(new)}"
                    )
                opt["params"][key] = new
    single = None if loss.get("choice") else loss.get("name")
    rows = [*raw.get("search", {}).get("initial_points", [])]
    rows += raw.get("reference", {}).get("rows", []) if raw.get("reference") else []
    for row in rows:
        name = row.get("loss", single)
        for key in params.get(name, ()):
            if isinstance(row.get(key), int | float) and not isinstance(row[key], bool):
                row[key] = fn(row[key])
    return [f"{name} {key} {how}: {'; '.join(v)}" for (name, key), v in changed.items()]


def _map_space(space: Any, fn: Callable[[float], float]) -> Any:
    if isinstance(space, bool) or not isinstance(space, int | float | dict):
        return space
    if not isinstance(space, dict):
        return fn(space)
    out = copy.deepcopy(space)
    for kind, values in space.items():
        if isinstance(values, list):
            out[kind] = [fn(v) if isinstance(v, int | float) else v for v in values]
        elif isinstance(values, int | float) and not isinstance(values, bool):
            out[kind] = fn(values)
    return out


def _nums(values: Any) -> str:
    return "[" + ", ".join(f"{v:g}" for v in values) + "]"


def _inline(value: Any) -> str:
    import json

    return json.dumps(value, sort_keys=True, separators=(", ", ": "))


def deep_merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``extra`` merged into a copy of ``base`` key by key; a ``dataset`` is replaced whole."""
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if key != "dataset" and isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def embedded_rules(spec: StudySpec) -> list[str]:
    """The scaling rules an ``--embedded`` study was made with (empty for any other)."""
    profile = spec.profile
    return list(profile.rules) if profile is not None and profile.name == "embedded" else []


__all__ = [
    "CACHED_STAGE2", "EMBEDDED_DATASET", "END_TO_END", "SMOKE_DATASET", "WHOLE_MODEL",
    "deep_merge", "embedded_raw", "embedded_rules", "smoked_raw",
]  # fmt: skip
