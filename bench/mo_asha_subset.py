"""A full run of :mod:`bench_mo_asha` cut to some of its seeds, and replayed there.

A full run with many seeds (``--seeds 8``) holds, per seed, every configuration's final row
and its evaluation at every epoch (``runs/<config>-s<seed>/rung-<r>.json``). This writes a
study directory that is the same run with only ``--seeds`` (trial rows of those seeds, and
``rungs.jsonl`` rebuilt from their rung evaluations, means over those seeds as the trial
reports them), then runs :func:`mo_asha_report.replay_report` on it: the replay of the
issue's 2-seed protocol on a run that was made with more seeds, on the same backbone and
host as another full run it is to be compared with.

    .venv/bin/python bench/mo_asha_subset.py /tmp/mo8/full --seeds 0 1 --out /tmp/mo8/full-s01
"""

from __future__ import annotations

import argparse
import os
import shutil
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from bench_mo_asha import FULL, OBJECTIVES, make_spec  # noqa: E402
from mo_asha_report import replay_report  # noqa: E402
from mo_asha_rung_sources import rung_rows  # noqa: E402

from ltsearch.run.trainable import mean_metrics  # noqa: E402
from ltsearch.rung_log import CONTINUE, RungRecord, append_log, read_log  # noqa: E402
from ltsearch.store import ResultStore  # noqa: E402


def subset(src: Path, out: Path, seeds: list[int]) -> None:
    """Write ``out``: ``src``'s rows and rung values of ``seeds`` only."""
    if out.exists():
        raise SystemExit(f"{out} exists: give a new --out")
    out.mkdir(parents=True)
    shutil.copy(src / "spec.yaml", out / "spec.yaml")  # the seeds it lists are src's
    runs = ResultStore(src).load_trials()
    store = ResultStore(out)
    for row in runs[runs["seed"].isin(seeds)].to_dict("records"):
        store.write_trial({k: v for k, v in row.items() if v == v and v is not None})
    metrics = [o.metric for o in OBJECTIVES]
    labels = {r.config_hash: r.label for r in read_log(src)}
    per_rung: dict[tuple[str, int], list[dict[str, float]]] = {}
    for chash, _seed, rung, row in rung_rows(src, seeds):
        per_rung.setdefault((chash, rung), []).append({m: float(row[m]) for m in metrics})
    for (chash, rung), values in sorted(per_rung.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        if len(values) != len(seeds) or chash not in labels:
            continue  # a seed failed before this rung (or another seed before the first)
        means = mean_metrics(values)
        record = RungRecord(chash, rung, [means[m] for m in metrics], CONTINUE, labels[chash])
        append_log(out, record)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("full", type=Path, help="a full run's study directory")
    parser.add_argument("--seeds", type=int, nargs="+", required=True)
    parser.add_argument("--out", type=Path, required=True, help="the new study directory")
    parser.add_argument("--epochs", type=int, default=FULL.epochs)
    parser.add_argument("--orders", type=int, default=300)
    parser.add_argument(
        "--leave-out-failed",
        action="store_true",
        help="leave out configurations that failed after a rung (mo_asha_replay.load_full)",
    )
    args = parser.parse_args()
    subset(args.full, args.out, args.seeds)
    size = replace(FULL, seeds=args.seeds, epochs=args.epochs)
    storage = args.out.parent
    replay_report(
        args.out,
        (size.rungs, size.reduction, size.epochs),
        lambda r, k: make_spec("full", storage, replace(size, rungs=r, reduction=k), True),
        OBJECTIVES,
        args.orders,
        args.leave_out_failed,
    )


if __name__ == "__main__":
    main()
