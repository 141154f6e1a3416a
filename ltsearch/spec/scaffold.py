"""``ltsearch new``: a commented study file for one loss, ready to validate and run.

The file holds every parameter of the loss with its domain and its ``Param`` doc
(:data:`ltmodels.losses.domains.DOMAINS`), the schedule the loss's studies use, the
dataset section (the embedded synthetic data, or LVIS with placeholder paths and comments
saying which files they must point at) and the editor's ``$schema`` line. Which schedule a
loss trains with and which of its parameters are searched first comes from
:data:`PLANS`, taken from the paper studies in ``studies/`` (a test keeps the two in
step); a loss without a plan trains end to end with every parameter fixed at its
default, ready to be turned into a search.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ltmodels.losses.domains import DOMAINS
from ltsearch.errors import ConfigError, SpecError
from ltsearch.spec.study import SLUG

SCHEMA_FILE = "study.schema.json"
SHIPPED_SCHEMA = Path(__file__).resolve().parents[2] / "studies" / SCHEMA_FILE
DATASETS = ("synthetic", "lvis")
_ALL_PARTS = ("backbone", "rpn", "box_head", "box_predictor", "mask_head")


@dataclass(frozen=True)
class Plan:
    """How a study of one loss trains and what it searches first.

    Args:
        schedule: ``end_to_end`` or ``decoupled``.
        follows: where the schedule comes from (a study in ``studies/``, a paper).
        search: parameter -> space (YAML flow text) searched; the others stay fixed.
        stage1: the ``training.stage1`` loss and sampler keys of a decoupled schedule.
        finetune: the parts stage 2 trains.
    """

    schedule: str
    follows: str
    search: Mapping[str, str] = field(default_factory=dict)
    stage1: str = "loss: ce"
    finetune: tuple[str, ...] = ("box_predictor",)


_E2E = "end_to_end"
PLANS: Mapping[str, Plan] = {
    "ce": Plan(_E2E, "the softmax CE baseline of studies/rog_table1.yaml"),
    "bce": Plan(_E2E, "the sigmoid CE baseline of studies/rog_table1.yaml"),
    "eql": Plan(_E2E, "EQL (Tan et al., CVPR 2020) trains end to end",
                {"lambda_": "{loguniform: [0.0001, 0.01]}"}),
    "eqlv2": Plan(_E2E, "studies/rog_table1.yaml (EQLv2 trains end to end)",
                  {"gamma": "{uniform: [4.0, 20.0]}", "mu": "{uniform: [0.5, 0.95]}",
                   "alpha": "{uniform: [1.0, 8.0]}"}),
    "seesaw": Plan(_E2E, "Seesaw (Wang et al., CVPR 2021) trains end to end",
                   {"p": "{uniform: [0.0, 1.5]}", "q": "{uniform: [0.0, 3.0]}"}),
    "acsl": Plan("decoupled", "studies/acsl_table2.yaml (ACSL fine-tunes the classifier)",
                 {"xi": "{uniform: [0.01, 0.95]}"}),
    "ahr": Plan("decoupled", "studies/ahrl_table3.yaml (stage 1: EQL with RFS)",
                {"lambda_m": "{uniform: [0.0, 4.0]}", "lambda_": "{uniform: [0.0, 2.0]}"},
                stage1="loss: eql, sampler: rfs, rfs_threshold: 0.001", finetune=_ALL_PARTS),
    "c2am": Plan(_E2E, "studies/c2am_table3.yaml",
                 {"s": "{uniform: [10.0, 50.0]}", "alpha": "{uniform: [0.0, 1.0]}"}),
    "ebl": Plan("decoupled", "studies/loce_table1.yaml (LOCE fine-tunes RPN and heads)",
                {"alpha": "{uniform: [0.8, 0.999]}",
                 "background_score": "{loguniform: [0.001, 0.1]}"},
                finetune=("rpn", "box_predictor", "mask_head")),
    "gap": Plan(_E2E, "studies/rog_table1.yaml",
                {"gamma": "{uniform: [0.0, 2.0]}", "lambda_gap": "{loguniform: [0.01, 1.0]}"}),
}  # fmt: skip
"""Per loss: its schedule and the parameters a new study searches (ranges around the
papers' values)."""

# optimisation per dataset: end-to-end training, then stage 1 and stage 2 of a decoupled one
_OPTIM = {
    "synthetic": ("epochs: 4, lr: 0.02, batch_size: 4, warmup_iters: 50",
                  "epochs: 3, lr: 0.02, batch_size: 4, warmup_iters: 100",
                  "epochs: 8, lr: 0.01, batch_size: 8, warmup_iters: 20"),
    "lvis": ("epochs: 12, lr: 0.02, batch_size: 16, warmup_iters: 500",
             "epochs: 12, lr: 0.02, batch_size: 16, warmup_iters: 500",
             "epochs: 12, lr: 0.02, batch_size: 16, warmup_iters: 500"),
}  # fmt: skip


def plan_for(loss: str) -> Plan:
    """The plan of ``loss``: :data:`PLANS`, or end to end with nothing searched."""
    return PLANS.get(loss, Plan(_E2E, "no study of this loss yet"))


def check_loss(loss: str) -> None:
    """Raise :class:`ConfigError` naming the known losses unless ``loss`` is registered."""
    if loss not in DOMAINS:
        near = difflib.get_close_matches(loss, list(DOMAINS), n=1)
        hint = f"did you mean {near[0]!r}? " if near else ""
        raise ConfigError(
            f"unknown loss {loss!r}; {hint}known losses: {', '.join(sorted(DOMAINS))}"
        )


def study_name(out: Path, loss: str) -> str:
    """The study's name: the file's stem as a slug (``my_acsl.yaml`` -> ``my-acsl``)."""
    name = out.stem.lower().replace("_", "-").replace(" ", "-")
    return name if SLUG.fullmatch(name) else f"{loss}-study"


def schema_ref(out: Path) -> str:
    """The ``$schema`` path for a study written to ``out``: the checkout's
    ``studies/study.schema.json`` relative to ``out``'s folder, else ``study.schema.json``
    beside it (``ltsearch schema --out`` writes one)."""
    if not SHIPPED_SCHEMA.is_file():
        return SCHEMA_FILE
    return Path(os.path.relpath(SHIPPED_SCHEMA, out.absolute().parent)).as_posix()


def render(loss: str, dataset: str, out: Path) -> str:
    """The text of a new study of ``loss`` on ``dataset`` to be written to ``out``."""
    check_loss(loss)
    if dataset not in DATASETS:
        raise ConfigError(f"unknown dataset {dataset!r}; use one of {', '.join(DATASETS)}")
    plan = plan_for(loss)
    sections = [
        _header(loss, dataset, out, plan),
        _dataset(dataset),
        _model(dataset),
        _training(plan, dataset),
        _loss(loss, plan),
        _search(loss, plan),
        _resources(dataset),
    ]
    return "\n".join(line for section in sections for line in section) + "\n"


def write_new(loss: str, dataset: str, out: str | Path) -> Path:
    """Write :func:`render`'s study to ``out``; an existing file is never overwritten.

    Raises:
        ConfigError: unknown loss or dataset.
        SpecError: ``out`` exists (or cannot be written).
    """
    path = Path(out)
    text = render(loss, dataset, path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("x", encoding="utf-8") as fh:
            fh.write(text)
    except FileExistsError:
        raise SpecError(
            "already exists; choose another --out, or remove the file first", file=str(out)
        ) from None
    except OSError as exc:
        raise SpecError(
            f"cannot be written ({exc.strerror}); choose another --out", file=str(out)
        ) from None
    return path


def _yaml(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False)
    return text.removesuffix("\n...\n").strip()


def _header(loss: str, dataset: str, out: Path, plan: Plan) -> list[str]:
    data = "the embedded synthetic data" if dataset == "synthetic" else "LVIS"
    f = out.as_posix()
    return [
        f"# yaml-language-server: $schema={schema_ref(out)}",
        f"# A study of the {loss} loss on {data}, written by `ltsearch new --loss {loss}`.",
        f"# Schedule {plan.schedule}, as in {plan.follows}.",
        "#",
        f"#   ltsearch validate {f}      # check it (starts nothing)",
        f"#   ltsearch run {f} --smoke   # try it on tiny data, one epoch, two trials",
        f"#   ltsearch run {f}           # run it; --set KEY=VALUE changes a value, e.g.",
        f"#   ltsearch run {f} --set search.trials=40",
        f"name: {study_name(out, loss)}",
        f"description: {_question(loss, plan)}",
    ]


def _question(loss: str, plan: Plan) -> str:
    if plan.search:
        return f"Which {loss} parameters give the best AP_r / AP_f trade-off?"
    return f"AP_r / AP_f of {loss} with its default parameters, over three seeds"


def _dataset(dataset: str) -> list[str]:
    if dataset == "synthetic":
        from ltmodels.data.synthetic import SynthConfig

        d = SynthConfig()
        return [
            "dataset:",
            "  kind: synthetic        # the embedded long-tail dataset: generated, no files",
            f"  # classes: {d.num_classes}          # 3-200",
            f"  # train_images: {d.train_images}",
            f"  # val_images: {d.val_images}",
            f"  # image_size: {d.image_size}       # pixels, 64-1024",
            f"  # min_val_images: {d.min_val_images}     # 1-10: each class in at least this many"
            " val images (more rare boxes, less noisy AP_r)",
        ]
    return [
        "dataset:",
        "  kind: lvis",
        "  version: v1                            # v1 or v0.5 (auto: read it from the files)",
        "  # Point these at your copy of LVIS (a relative path is relative to this file's",
        "  # folder); `ltsearch validate FILE --check-data` reads them all.",
        "  train: /data/lvis/lvis_v1_train.json   # the LVIS train annotations",
        "  val: /data/lvis/lvis_v1_val.json       # the LVIS val annotations",
        "  images: /data/coco                     # the COCO root holding train2017/, val2017/",
    ]


def _model(dataset: str) -> list[str]:
    if dataset == "synthetic":
        return ["model: {backbone: tiny, masks: true}   # the tiny backbone trains on a CPU"]
    return [
        "model:",
        "  backbone: resnet50_fpn     # the papers' model (or resnet101_fpn)",
        "  masks: true                # Mask R-CNN; false: Faster R-CNN, box metrics only",
        "  min_size: 800              # shorter image side; a list trains multi-scale",
        "  max_size: 1333",
        "  # backbone_weights: /data/pretrained/resnet50-0676ba61.pth   # ImageNet state dict",
    ]


def _training(plan: Plan, dataset: str) -> list[str]:
    end_to_end, stage1, stage2 = _OPTIM[dataset]
    if plan.schedule == _E2E:
        return [
            "training:",
            "  schedule: end_to_end       # the whole detector trains with the trial's loss",
            *(f"  {kv}" for kv in end_to_end.split(", ")),
        ]
    finetune = ", ".join(plan.finetune)
    return [
        "training:",
        "  schedule: decoupled        # stage 1 once per study, stage 2 per trial",
        f"  stage1: {{{plan.stage1}, {stage1}}}",
        f"  stage2: {{{stage2}, finetune: [{finetune}]}}",
    ]


def _loss(loss: str, plan: Plan) -> list[str]:
    params = DOMAINS[loss]
    if not params:
        return ["loss:", f"  name: {loss}                # {loss} has no parameters"]
    lines = [
        "loss:",
        f"  name: {loss}",
        "  params:",
        "    # A value fixes a parameter; {uniform: [lo, hi]}, {loguniform: [lo, hi]},",
        "    # {int: [lo, hi]}, {grid: [...]} or {categorical: [...]} searches it.",
    ]
    for name, param in params.items():
        space = plan.search.get(name, _yaml(param.default))
        lines += [f"    # {param.doc}; {param.describe()}", f"    {name}: {space}"]
    return lines


def _search(loss: str, plan: Plan) -> list[str]:
    objectives = "  objectives: [bbox/APr:max, bbox/APf:max]   # {bbox,segm}/AP.. with :max/:min"
    if not plan.search:
        what = "no parameters" if not DOMAINS[loss] else "nothing searched yet"
        return [
            "search:",
            f"  sampler: grid              # {what}: one configuration, three seeds",
            objectives,
            "  seeds: [0, 1, 2]",
        ]
    first = {name: DOMAINS[loss][name].default for name in plan.search}
    return [
        "search:",
        "  sampler: tpe               # tpe, nsga2, random or grid",
        objectives,
        "  trials: 20                 # configurations to try; each runs once per seed",
        "  seeds: [0, 1]",
        "  initial_points:            # tried first: the paper's defaults",
        f"    - {_yaml(first)}",
    ]


def _resources(dataset: str) -> list[str]:
    if dataset == "synthetic":
        return [
            "resources: {workers: 1, cpus_per_worker: 1, max_concurrent_trials: 1}",
            "storage: runs                # results in <storage>/<name>, from where you run",
        ]
    return [
        "resources: {workers: 8, gpus_per_worker: 1, max_concurrent_trials: 1}   # as the papers",
        "storage: runs                # results in <storage>/<name>, from where you run",
    ]


__all__ = ["DATASETS", "PLANS", "Plan", "check_loss", "plan_for", "render", "write_new"]
