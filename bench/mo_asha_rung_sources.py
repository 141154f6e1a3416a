"""Which rung values predict the end better: two full runs of :mod:`bench_mo_asha` compared.

Each full run keeps, per configuration and seed, its evaluation at every epoch before the
last (``runs/<config>-s<seed>/rung-<r>[-ema<h>].json``). Given two full runs of the same
configurations (for example one evaluating the weights at the rungs and one evaluating their
moving average, ``--ema``), this prints for each epoch the Spearman rank correlation between
each run's rung means over the seeds they share and the final means of a reference run (by
default the first one, over all its seeds: with more seeds than the rung means have, its
final means are closer to each configuration's expected end). It also checks that the two
runs trained the same: the final metrics of the shared seeds, configuration by
configuration (an average evaluated at the rungs must not change training).

    .venv/bin/python bench/mo_asha_rung_sources.py /tmp/mo8/full /tmp/mo8/full-ema0.5
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from ltsearch.report.tables import prepare_runs
from ltsearch.store import ResultStore

METRICS = ["bbox/APr", "bbox/APf"]


def rung_rows(study_dir: Path, seeds: list[int]) -> Iterator[tuple[str, int, int, dict]]:
    """``(config_hash, seed, epoch, row)`` of every kept rung evaluation of ``seeds``."""
    for run in sorted((study_dir / "runs").iterdir()):
        chash, seed = run.name.rsplit("-s", 1)
        if int(seed) in seeds:
            for path in run.glob("rung-*.json"):
                row = json.loads(path.read_text())["row"]
                yield chash, int(seed), int(path.stem.split("-")[1]), row


def rung_means(study_dir: Path, configs: list[str], seeds: list[int]) -> pd.DataFrame:
    """Mean over ``seeds`` of each of ``configs``' rung values: index (config_hash, epoch),
    columns :data:`METRICS`, in %."""
    rows = [
        {"config_hash": chash, "epoch": epoch, "seed": seed,
         **{m: 100 * float(row[m]) for m in METRICS}}
        for chash, seed, epoch, row in rung_rows(study_dir, seeds)
        if chash in configs
    ]  # fmt: skip
    table = pd.DataFrame(rows)
    counts = table.groupby(["config_hash", "epoch"])["seed"].nunique()
    if (counts != len(seeds)).any():
        raise ValueError(f"{study_dir}: not every seed has every rung")
    return table.groupby(["config_hash", "epoch"])[METRICS].mean()


def finals(study_dir: Path) -> pd.DataFrame:
    """The ok runs' final values in %: index (config_hash, seed)."""
    runs = ResultStore(study_dir).load_trials()
    runs, _ = prepare_runs(runs[runs["status"] == "ok"])
    return runs.set_index(["config_hash", "seed"])[METRICS].astype(float)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs=2, help="two full runs' study directories")
    parser.add_argument("--reference", type=Path, help="whose final means (default: the first)")
    args = parser.parse_args()
    ends = [finals(d) for d in args.runs]
    seeds = sorted(set.intersection(*(set(e.index.get_level_values(1)) for e in ends)))
    configs = sorted(set.intersection(*(set(e.index.get_level_values(0)) for e in ends)))
    shared = pd.MultiIndex.from_product([configs, seeds])
    a, b = (e.reindex(shared) for e in ends)
    diff = (a - b).abs().max().max()
    print(f"{len(configs)} configurations ok in both, seeds {seeds} in both; largest "
          f"difference of their final {'/'.join(METRICS)}: {diff:.2e} points")  # fmt: skip
    ref = finals(args.reference or args.runs[0])
    ref_seeds = sorted(set(ref.index.get_level_values(1)))
    target = ref.groupby(level=0).mean().loc[configs]
    means = [rung_means(d, configs, seeds) for d in args.runs]
    epochs = sorted(set.intersection(*(set(m.index.get_level_values(1)) for m in means)))
    source = args.reference or args.runs[0]
    print(f"Spearman of each epoch's rung means (seeds {seeds}) with the final means of "
          f"{source} (seeds {ref_seeds}), {' / '.join(METRICS)}:")  # fmt: skip
    print("| epoch | " + " | ".join(d.name for d in args.runs) + " |")
    print("|---|" + "---|" * len(args.runs))
    for epoch in epochs:
        cells = []
        for m in means:
            at = m.xs(epoch, level=1).loc[configs]
            rho = [at[c].rank().corr(target[c].rank()) for c in METRICS]
            cells.append(" / ".join(f"{r:+.2f}" for r in rho))
        print(f"| {epoch} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
