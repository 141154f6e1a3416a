"""Framework overhead per trial: Ray Tune + OptunaSearch + parquet around a no-op trial.

Runs a study through :func:`ltsearch.run.driver.run_study` exactly as ``ltsearch run`` does, but
each (configuration, seed) returns fixed metrics at once instead of training, so the wall
time is what the study system itself costs: Ray start-up, Optuna's sampler and journal,
Tune's scheduling, the parquet parts, the progress lines. Prints the per-trial overhead.

    .venv/bin/python bench/bench_overhead.py --trials 24 --seeds 2 --concurrency 2
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from ltmodels.trial.config import TrialResult  # noqa: E402
from ltsearch.run.driver import run_study  # noqa: E402
from ltsearch.spec.study import spec_from_dict  # noqa: E402


def noop_trial(cfg: Any, *, workdir: Path, resources: Any) -> TrialResult:
    """A trial that does no work: fixed metrics derived from the seed."""
    return TrialResult(
        metrics={"bbox/AP": 0.2, "bbox/APr": 0.1 + 0.01 * cfg.seed, "bbox/APf": 0.3},
        epochs=[{"epoch": 0.0, "loss": 1.0}],
        categories=[{"category_id": 1, "name": "a", "frequency": "r", "AP": 0.1}],
        timings={"train": 0.0},
    )


def study(trials: int, seeds: int, concurrency: int, storage: str) -> dict[str, Any]:
    return {
        "name": "overhead",
        "dataset": {"kind": "synthetic", "classes": 8, "train_images": 16, "val_images": 8},
        "model": {"backbone": "tiny"},
        "training": {"schedule": "end_to_end", "epochs": 1},
        "loss": {
            "choice": [
                {"name": "ce"},
                {"name": "acsl", "params": {"xi": {"uniform": [0.0, 1.0]}}},
                {"name": "c2am", "params": {"s": {"uniform": [8.0, 32.0]}}},
            ]
        },
        "search": {
            "sampler": "tpe",
            "objectives": ["bbox/APr:max", "bbox/APf:max"],
            "trials": trials,
            "seeds": list(range(seeds)),
        },
        "resources": {"workers": 1, "max_concurrent_trials": concurrency},
        "storage": storage,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        spec = spec_from_dict(study(args.trials, args.seeds, args.concurrency, tmp))
        t0 = time.perf_counter()
        outcome = run_study(spec, progress=False, execute=noop_trial)
        wall = time.perf_counter() - t0
    runs = args.trials * args.seeds
    print(
        f"{args.trials} no-op trials x {args.seeds} seeds, concurrency {args.concurrency}: "
        f"{wall:.1f} s wall (ray.init and dataset generation included), {outcome.finished} ok"
    )
    print(
        f"overhead per trial: {wall / args.trials:.2f} s; per (trial, seed): {wall / runs:.2f} s"
    )


if __name__ == "__main__":
    main()
