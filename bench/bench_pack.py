"""Packed feature-cache trials: (configuration, seed) runs per CPU-hour for K = 1, 2, 4, 8, 16.

The configurations are the quickstart study's (``studies/quickstart.yaml``: its dataset, stage
1, stage 2 and its six initial points, cycled to K members with seed 0), built exactly as a
study builds them (:func:`ltsearch.run.trainable.trial_config`), on the quickstart's stage 1
and feature cache under ``--storage`` (``runs`` by default: the folder ``make quickstart``
fills; stage 1 and the cache are built there first if they are missing, a one-off cost left
out of the figures).

For each K, in one process on one thread, one after the other:

- ``unpacked``: the K runs one by one, each :func:`ltmodels.trial.pack.run_pack` of one
  member (what :func:`ltmodels.trial.run.run_trial` runs for such a trial);
- ``packed``: one :func:`~ltmodels.trial.pack.run_pack` of the K members.

Printed per K: seconds per run (train = drawing + reading + the member's steps, eval), runs
per CPU-hour of both, the speed-up, and the packed run's cost split: ``sample`` (RoI
sampling), ``read`` (cache rows to tensors), ``step`` (forward, loss, backward, update of
all members) and ``eval`` (one read of the validation features, every member's detections
and LVIS scoring). A run's figures exclude process start-up and the study framework
(``bench/bench_overhead.py`` measures those). ``--out`` writes the JSON.

    .venv/bin/python bench/bench_pack.py [--ks 1,2,4,8,16] [--out pack.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from bench_trial import machine  # the bench folder is the script's, on sys.path

ROOT = Path(__file__).resolve().parent.parent


def quickstart_configs(storage: Path, k: int) -> list[Any]:
    """K trial configs of the quickstart: its initial points cycled, seed 0."""
    from ltsearch.run.trainable import StudyContext, resolve_data, trial_config
    from ltsearch.space import params_to_config, points_to_evaluate
    from ltsearch.spec.study import load_spec

    spec = load_spec(ROOT / "studies" / "quickstart.yaml", [f"storage={storage}"])
    ctx = StudyContext(spec=spec.model_dump(mode="json"), study_dir=str(spec.study_dir),
                       data=resolve_data(spec))  # fmt: skip
    points = [params_to_config(p) for p in points_to_evaluate(spec)]
    return [trial_config(ctx, spec, points[i % len(points)], 0) for i in range(k)]


def run_k(storage: Path, k: int) -> dict[str, Any]:
    from ltmodels.cache.train import PackTimes
    from ltmodels.trial.config import TrialResult
    from ltmodels.trial.pack import run_pack

    cfgs = quickstart_configs(storage, k)
    t0 = time.perf_counter()
    alone = [run_pack([c])[0] for c in cfgs]
    unpacked_s = time.perf_counter() - t0
    times = PackTimes()
    t0 = time.perf_counter()
    packed = run_pack(cfgs, times=times)
    packed_s = time.perf_counter() - t0
    results = [r for r in packed if isinstance(r, TrialResult)]
    if len(results) != k:
        failed = [r for r in packed if not isinstance(r, TrialResult)]
        raise RuntimeError(f"a member failed: {failed}")
    same = all(
        abs(p.metrics["bbox/AP"] - a.metrics["bbox/AP"]) <= 1e-6
        for p, a in zip(results, alone, strict=True)
        if isinstance(a, TrialResult)
    )
    eval_s = sum(r.timings["eval"] for r in results)
    return {
        "k": k,
        "unpacked_s_per_run": unpacked_s / k,
        "packed_s_per_run": packed_s / k,
        "unpacked_runs_per_cpu_hour": 3600 * k / unpacked_s,
        "packed_runs_per_cpu_hour": 3600 * k / packed_s,
        "speedup": unpacked_s / packed_s,
        "split_s_per_run": {
            "sample": times.sample / k,
            "read": times.read / k,
            "step": sum(times.step) / k,
            "eval": eval_s / k,
        },
        "step_s_by_loss": {c.train.loss: t for c, t in zip(cfgs, times.step, strict=True)},
        "metrics_equal": same,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--storage", default=str(ROOT / "runs"), help="the quickstart's storage")
    ap.add_argument("--ks", default="1,2,4,8,16")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (a trial has 1 CPU)")
    ap.add_argument("--out", help="write the figures as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    storage = Path(args.storage).absolute()
    warm = time.perf_counter()
    run_k(storage, 1)  # stage 1 and the cache (built if missing), imports, first-call costs
    print(f"warm-up (stage 1 and feature cache if missing): {time.perf_counter() - warm:.1f} s")
    rows = []
    print(f"{'K':>3} {'alone s/run':>11} {'packed s/run':>12} {'runs/CPU-h':>10} "
          f"{'packed':>7} {'x':>5}  split s/run: sample read step eval  equal")  # fmt: skip
    for k in (int(x) for x in args.ks.split(",")):
        r = run_k(storage, k)
        rows.append(r)
        s = r["split_s_per_run"]
        print(f"{k:>3} {r['unpacked_s_per_run']:>11.2f} {r['packed_s_per_run']:>12.2f} "
              f"{r['unpacked_runs_per_cpu_hour']:>10.0f} {r['packed_runs_per_cpu_hour']:>7.0f} "
              f"{r['speedup']:>5.2f}  {s['sample']:.3f} {s['read']:.3f} {s['step']:.3f} "
              f"{s['eval']:.3f}  {r['metrics_equal']}", flush=True)  # fmt: skip
        steps = ", ".join(f"{k} {v:.2f}" for k, v in r["step_s_by_loss"].items())
        print(f"    step s per run by loss: {steps}")
    if args.out:
        Path(args.out).write_text(json.dumps({"machine": machine(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
