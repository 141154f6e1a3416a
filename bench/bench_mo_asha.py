"""Early stopping on an end-to-end study: full training vs MO-ASHA vs single-objective ASHA.

One end-to-end study of the embedded synthetic data (tiny backbone, 64 px, masks off) runs
three times through :func:`ltsearch.run.driver.run_study`, as ``ltsearch run`` runs it:

- ``full``: every configuration trains all its epochs, evaluated at every rung by a rule
  that never stops (:func:`never_stop`), so its ``rungs.jsonl`` holds every configuration's
  values at every rung;
- ``mo-asha``: ``search.early_stopping`` (this project's scheduler: promotion by
  non-dominated sorting on (AP_r, AP_f), crowding distance within a rank);
- ``asha``: the same rungs and reduction, decided by Ray Tune's own
  ``AsyncHyperBandScheduler`` on AP_r alone (its decisions, our bookkeeping around them).

Every trial starts from one pretrained tiny backbone, as the papers' end-to-end trials start
from ImageNet weights: a CE detector trained first on a different synthetic dataset (data
seed 1, 480 images: :func:`pretrain`), whose backbone is ``model.backbone_weights``. From
scratch, one epoch of 120 images leaves every AP below 0.05 % and a first rung orders noise
(BENCHMARKS.md keeps that record); batches of 2 give 60 steps per epoch.

Then each rule (both promotions of ``search.early_stopping`` and ASHA on AP_r) is replayed
on the full run's rung values over ``--orders`` arrival orders (:mod:`mo_asha_replay`): one
real run per rule is one draw of the order in which configurations reach the rungs, the
replay gives each rule's spread over many. ``--runs full --orders 500`` measures the replay
alone.

The configurations are a grid over three losses (ACSL, Seesaw, EQLv2), asked in the same
order in every run, so a configuration trained to the end has the same metrics in each
(runs are deterministic for their seed). For each run: epochs trained (configuration x
seed), wall time, the hypervolume of the front of its fully trained configurations (mean
over seeds of AP_r and AP_f in %, reference point (0, 0)) and how many of the full run's
front members it trained to the end. Stopped configurations never count in a front.

Full size: 16 configurations x 2 seeds x 9 epochs, rungs [1, 3], reduction 3 (tens of
minutes on 2 cores; the estimate is printed first). ``--quick``: 6 configurations x 1 seed x
3 epochs, rung [1] (a few minutes). ``--rungs``/``--reduction`` try other rungs (ASHA's
rungs are geometric from the first: give ones that are).

    .venv/bin/python bench/bench_mo_asha.py [--quick] [--keep DIR] [--rungs 3 ...] [--reduction 3]
        [--runs full mo-asha asha-apr] [--orders 200]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from mo_asha_outcomes import measure, report  # noqa: E402
from mo_asha_report import replay_report  # noqa: E402
from mo_asha_rules import asha_rule  # noqa: E402

from ltmodels.trial.run import run_trial  # noqa: E402
from ltsearch.run.driver import run_study  # noqa: E402
from ltsearch.run.moasha import PROMOTIONS  # noqa: E402
from ltsearch.run.rung_scheduler import Rule  # noqa: E402
from ltsearch.run.trainable import StudyContext, resolve_data, trial_config  # noqa: E402
from ltsearch.spec.sections import Objective  # noqa: E402
from ltsearch.spec.study import StudySpec, spec_from_dict  # noqa: E402

# 120 training images: the fewest with frequent classes (> 100 images), so AP_f is defined
DATASET = {"kind": "synthetic", "classes": 6, "train_images": 120, "val_images": 24,
           "image_size": 64, "seed": 0}  # fmt: skip
# the validation set of the runs (--val-images, --min-val-images): 48 images with every
# class in at least 10 hold 28 rare-class boxes where the 24 images above hold 5, so a
# rung's AP_r is measured on more than a handful of boxes (the training images are equal)
VALIDATION = {"val_images": 48, "min_val_images": 10}
MODEL = {"backbone": "tiny", "masks": False, "min_size": 64, "max_size": 64}
# the pretraining data: other images (data seed 1), four times as many, the same classes
PRETRAIN_DATASET = {**DATASET, "seed": 1, "train_images": 480}
PRETRAIN_EPOCHS = 6
TRAINING = {"schedule": "end_to_end", "lr": 0.02, "batch_size": 2, "warmup_iters": 20}
OBJECTIVES = [Objective("bbox/APr", "max"), Objective("bbox/APf", "max")]
FULL_LOSSES = [
    {"name": "acsl", "params": {"xi": {"grid": [0.1, 0.3, 0.5, 0.7, 0.8, 0.9]}}},
    {"name": "seesaw", "params": {"p": {"grid": [0.4, 0.8, 1.6]}, "q": {"grid": [1.0, 3.0]}}},
    {"name": "eqlv2", "params": {"gamma": {"grid": [6.0, 12.0]}, "alpha": {"grid": [2.0, 8.0]}}},
]
# --wide: 64 configurations, the same three losses on finer grids
WIDE_LOSSES = [
    {"name": "acsl", "params": {"xi": {"grid": [round(0.05 + 0.04 * i, 2) for i in range(24)]}}},
    {"name": "seesaw", "params": {"p": {"grid": [0.2, 0.4, 0.8, 1.2, 1.6, 2.0]},
                                  "q": {"grid": [0.5, 1.0, 2.0, 3.0]}}},
    {"name": "eqlv2", "params": {"gamma": {"grid": [4.0, 6.0, 8.0, 12.0]},
                                 "alpha": {"grid": [2.0, 4.0, 6.0, 8.0]}}},
]  # fmt: skip
QUICK_LOSSES = [
    {"name": "acsl", "params": {"xi": {"grid": [0.2, 0.5, 0.8]}}},
    {"name": "seesaw", "params": {"p": {"grid": [0.4, 0.8, 1.6]}}},
]


@dataclass(frozen=True)
class Size:
    losses: list[dict[str, Any]]
    seeds: list[int]
    epochs: int
    rungs: list[int]
    reduction: int
    validation: dict[str, int] = field(default_factory=lambda: dict(VALIDATION))
    ema: float | None = None  # search.early_stopping.ema_half_life (epochs)
    cooldown: float | None = None  # search.early_stopping.cooldown (epochs)


FULL = Size(FULL_LOSSES, [0, 1], 9, [1, 3], 3)
WIDE = Size(WIDE_LOSSES, [0, 1], 9, [1, 3], 3)
QUICK = Size(QUICK_LOSSES, [0], 3, [1], 3)


def make_spec(
    name: str,
    storage: Path,
    size: Size,
    early: bool,
    weights: Path | None = None,
    promotion: str = "ranked",
    rungs: list[int] | None = None,
) -> StudySpec:
    search: dict[str, Any] = {
        "sampler": "grid",
        "objectives": [f"{o.metric}:{o.direction}" for o in OBJECTIVES],
        "seeds": size.seeds,
    }
    if early:
        search["early_stopping"] = {
            "rungs": rungs or size.rungs,
            "reduction": size.reduction,
            "promotion": promotion,
        }
        if size.ema is not None:
            search["early_stopping"]["ema_half_life"] = size.ema
            name = f"{name}-ema{size.ema:g}"
        if size.cooldown is not None:
            search["early_stopping"]["cooldown"] = size.cooldown
            name = f"{name}-cool{size.cooldown:g}"
    return spec_from_dict(
        {
            "name": name,
            "dataset": {**DATASET, **size.validation},
            "model": MODEL if weights is None else {**MODEL, "backbone_weights": str(weights)},
            "training": {**TRAINING, "epochs": size.epochs},
            "loss": {"choice": size.losses},
            "search": search,
            "storage": str(storage),
        }
    )


def every_epoch(size: Size) -> list[int]:
    """The full run's rungs: every epoch before the last."""
    return list(range(1, size.epochs))


def never_stop(spec: StudySpec) -> Rule:
    """The full run's rule: every configuration goes on at every rung (:func:`every_epoch`).
    It trains every epoch as a study without early stopping does (a seed resumes bit-exactly
    from its rung checkpoint), and its ``rungs.jsonl`` holds every configuration's values at
    every epoch: what :mod:`mo_asha_replay` replays any rungs and rule on."""

    def rule(trial: Any, rung: int, values: list[float], recorded: list[list[float]]) -> bool:
        return True

    return rule


RUNS = ("full", "mo-asha", "asha-apr")


def pretrain(
    storage: Path,
    images: int = PRETRAIN_DATASET["train_images"],
    epochs: int = PRETRAIN_EPOCHS,
) -> Path:
    """The tiny backbone every trial starts from: a CE detector trained end to end on
    :data:`PRETRAIN_DATASET` (not the study's images; ``images`` of them, ``epochs``
    epochs), its backbone saved as a state dict. Kept under ``storage`` and reused
    (``--keep``)."""
    default = (images, epochs) == (PRETRAIN_DATASET["train_images"], PRETRAIN_EPOCHS)
    out = storage / ("tiny_backbone.pt" if default else f"tiny_backbone-{images}i-{epochs}e.pt")
    if out.is_file():
        return out
    spec = spec_from_dict(
        {
            "name": "pretrain" if default else f"pretrain-{images}i-{epochs}e",
            "dataset": {**PRETRAIN_DATASET, "train_images": images},
            "model": MODEL,
            "training": {**TRAINING, "batch_size": 8, "epochs": epochs},
            "loss": {"choice": [{"name": "ce"}]},
            "search": {"sampler": "grid", "objectives": ["bbox/AP:max"], "seeds": [0]},
            "storage": str(storage),
        }
    )
    ctx = StudyContext(spec=spec.to_dict(), study_dir=str(spec.study_dir), data=resolve_data(spec))
    cfg = trial_config(ctx, spec, {"loss": "ce", "loss_params": {}}, 0)
    with tempfile.TemporaryDirectory() as tmp:
        result = run_trial(cfg, workdir=tmp)
        state = torch.load(Path(tmp) / "checkpoint.pt", map_location="cpu", weights_only=True)
    torch.save({k: v for k, v in state["model"].items() if k.startswith("backbone.")}, out)
    print(
        f"pretrained backbone: CE, bbox AP {100 * result.metrics['bbox/AP']:.1f} % on its own data"
    )
    return out


def calibrate(storage: Path, weights: Path) -> tuple[float, float]:
    """Seconds of one training epoch and of one evaluation of one configuration here (one
    trial of one epoch, in-process: the machine's load at that moment included)."""
    spec = make_spec("calibrate", storage, QUICK, early=False, weights=weights)
    ctx = StudyContext(spec=spec.to_dict(), study_dir=str(spec.study_dir), data=resolve_data(spec))
    cfg = trial_config(ctx, spec, {"loss": "acsl", "loss_params": {"xi": 0.5}}, 0)
    with tempfile.TemporaryDirectory() as tmp:
        result = run_trial(replace(cfg, train=replace(cfg.train, epochs=1)), workdir=tmp)
    return result.timings["train"], result.timings["eval"]


def estimate_s(size: Size, n_configs: int, epoch_s: float, eval_s: float) -> float:
    """The three runs: the full one (each run: its epochs, one evaluation, ~3 s of set-up;
    ~20 s of Ray start), and each early-stopping run taken as half of it (it trains 1/4 to
    3/4 of the epochs, and evaluates at every rung it reaches)."""
    runs = n_configs * len(size.seeds)
    full = runs * (size.epochs * epoch_s + eval_s + 3.0) + 20.0
    return 2 * full


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="6 configs x 1 seed x 3 epochs")
    parser.add_argument(
        "--wide", action="store_true", help="64 configurations (finer grids) x 2 seeds x 9 epochs"
    )
    parser.add_argument(
        "--pretrain-images",
        type=int,
        default=PRETRAIN_DATASET["train_images"],
        help="images (other than the study's) the backbone is pretrained on",
    )
    parser.add_argument(
        "--pretrain-epochs", type=int, default=PRETRAIN_EPOCHS, help="epochs of that pretraining"
    )
    parser.add_argument(
        "--full-concurrent",
        type=int,
        default=1,
        help="trials at a time in the full run (its values do not depend on it; the "
        "early-stopping runs and the replay run one at a time)",
    )
    parser.add_argument("--keep", type=Path, help="keep the three studies under this directory")
    parser.add_argument("--rungs", type=int, nargs="+", help="rung epochs instead of the size's")
    parser.add_argument("--reduction", type=int, help="reduction instead of the size's")
    parser.add_argument("--seeds", type=int, help="seeds 0..N-1 instead of the size's")
    parser.add_argument(
        "--promotion",
        choices=PROMOTIONS,
        default="ranked",
        help="search.early_stopping.promotion of the mo-asha run",
    )
    parser.add_argument(
        "--orders",
        type=int,
        default=200,
        help="arrival orders each rule is replayed on, from the full run's rung values",
    )
    parser.add_argument(
        "--val-images",
        type=int,
        default=VALIDATION["val_images"],
        help="validation images of the study's data (the training images stay the same)",
    )
    parser.add_argument(
        "--min-val-images",
        type=int,
        default=VALIDATION["min_val_images"],
        help="every class in at least this many validation images (2: the generator's default)",
    )
    parser.add_argument(
        "--leave-out-failed",
        action="store_true",
        help="the replay leaves out configurations that failed after a rung (it refuses "
        "the full run otherwise: a rule would spend epochs on them until they fail)",
    )
    parser.add_argument(
        "--ema",
        type=float,
        help="rungs evaluate a moving average of the weights with this half-life in epochs "
        "(search.early_stopping.ema_half_life; the studies are named with -ema<half-life>)",
    )
    parser.add_argument(
        "--cooldown",
        type=float,
        help="rungs evaluate a copy trained this many epochs further with the learning rate "
        "decaying to 0 (search.early_stopping.cooldown; counted as epochs spent by the "
        "replays; the studies are named with -cool<epochs>)",
    )
    parser.add_argument(
        "--runs", nargs="+", default=list(RUNS), choices=RUNS, help="which runs (default: all)"
    )
    args = parser.parse_args()
    # one thread, as each trial's worker has (Ray sets OMP_NUM_THREADS to its 1 CPU): the
    # pretraining and the calibration in this process do not compete with themselves
    torch.set_num_threads(1)
    size = QUICK if args.quick else WIDE if args.wide else FULL
    size = replace(
        size,
        rungs=args.rungs or size.rungs,
        reduction=args.reduction or size.reduction,
        seeds=list(range(args.seeds)) if args.seeds else size.seeds,
        validation={"val_images": args.val_images, "min_val_images": args.min_val_images},
        ema=args.ema,
        cooldown=args.cooldown,
    )
    storage = Path(args.keep or tempfile.mkdtemp(prefix="bench-mo-asha-")).resolve()
    storage.mkdir(parents=True, exist_ok=True)
    n_configs = make_spec("full", storage, size, early=False).n_trials
    t0 = time.perf_counter()
    weights = pretrain(storage, args.pretrain_images, args.pretrain_epochs)
    print(f"pretraining: {time.perf_counter() - t0:.0f} s", flush=True)
    epoch_s, eval_s = calibrate(storage, weights)
    full_epochs = n_configs * len(size.seeds) * size.epochs
    print(
        f"{n_configs} configurations x {len(size.seeds)} seed(s) x {size.epochs} epochs = "
        f"{full_epochs} epochs for the full run; one epoch {epoch_s:.1f} s and one "
        f"evaluation {eval_s:.1f} s here (measured now): about "
        f"{estimate_s(size, n_configs, epoch_s, eval_s) / 60:.0f} min for the three runs",
        flush=True,
    )
    outcomes = []
    try:
        for name, rule in (("full", never_stop), ("mo-asha", None), ("asha-apr", asha_rule)):
            if name not in args.runs:
                continue
            promotion = args.promotion if name == "mo-asha" else "ranked"
            label = f"{name}-front" if promotion == "front" else name
            rungs = every_epoch(size) if name == "full" else None
            spec = make_spec(label, storage, size, True, weights, promotion, rungs)
            if name == "full" and args.full_concurrent > 1:
                resources = {"max_concurrent_trials": args.full_concurrent}
                spec = spec_from_dict({**spec.to_dict(), "resources": resources})
            t0 = time.perf_counter()
            run_study(spec, progress=False, rule=None if rule is None else rule(spec))
            cost = 0.0 if name == "full" else size.cooldown or 0.0  # the full run's rungs
            wall = time.perf_counter() - t0  # only record (every epoch) for the replays
            outcomes.append(measure(label, spec, wall, OBJECTIVES, cost))
            o = outcomes[-1]
            print(f"{label}: {o.epochs:g} epochs, {o.wall_s:.0f} s", flush=True)
        full_spec = make_spec("full", storage, size, True, rungs=every_epoch(size))
        full_dir = full_spec.study_dir
        if outcomes and outcomes[0].name != "full" and (full_dir / "trials").is_dir():
            outcomes.insert(
                0, measure("full", full_spec, float("nan"), OBJECTIVES)
            )  # an earlier run's
        if outcomes and outcomes[0].name == "full":
            report(outcomes, size, n_configs)
        if args.orders > 0 and (full_dir / "rungs.jsonl").is_file():
            replay_report(
                full_dir,
                (size.rungs, size.reduction, size.epochs),
                lambda r, k: make_spec("full", storage, replace(size, rungs=r, reduction=k), True),
                OBJECTIVES,
                args.orders,
                args.leave_out_failed,
            )
        elif args.orders > 0:
            print("no replay: it needs the full run's rung values (--runs full)")
    finally:
        if args.keep is None:
            shutil.rmtree(storage, ignore_errors=True)


if __name__ == "__main__":
    main()
