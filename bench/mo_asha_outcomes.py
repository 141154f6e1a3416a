"""The outcome of each run of :mod:`bench_mo_asha` (full, MO-ASHA, ASHA on AP_r): epochs
trained, the front and hypervolume of its fully trained configurations, and the table that
compares them with the full run."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ltsearch.report.pareto import hypervolume
from ltsearch.report.tables import prepare_runs, summarize
from ltsearch.rung_log import RUNG_KEY, read_log
from ltsearch.spec.sections import Objective
from ltsearch.spec.study import StudySpec
from ltsearch.store import ResultStore


@dataclass
class Outcome:
    name: str
    wall_s: float
    epochs: float
    trained: set[str]  # configurations trained to the end (labels)
    front: set[str]
    hv: float


def measure(name: str, spec: StudySpec, wall_s: float, objectives: Sequence[Objective],
            rung_cost: float = 0.0) -> Outcome:  # fmt: skip
    """One run's epochs trained, front and hypervolume (against (0, 0)) of its fully trained
    configurations, read from its study directory. ``rung_cost``: epochs that each seed's
    evaluation at a rung trains beyond the run (``search.early_stopping.cooldown``), counted
    per decision in ``rungs.jsonl``."""
    runs = ResultStore(spec.study_dir).load_trials()
    ok = runs["status"] == "ok"
    stopped = runs.loc[runs["status"] == "stopped", RUNG_KEY] if RUNG_KEY in runs else []
    epochs = int(ok.sum()) * spec.training.epochs + int(sum(stopped))
    if rung_cost:
        epochs += rung_cost * len(spec.search.seeds) * len(read_log(spec.study_dir))
    runs, _ = prepare_runs(runs)
    configs = summarize(runs, objectives, [o.metric for o in objectives]).configs
    values = configs[[f"{o.metric}.mean" for o in objectives]].to_numpy(float)
    hv = hypervolume(values, [o.direction for o in objectives], [0.0, 0.0])
    return Outcome(
        name,
        wall_s,
        epochs,
        set(configs["label"]),
        set(configs.loc[configs["front"], "label"]),
        hv,
    )


def report(outcomes: list[Outcome], size: Any, n_configs: int) -> None:
    """The table of the runs, the full run first (``size``: seeds, epochs, rungs, reduction)."""
    full = outcomes[0]
    print(
        f"\n{n_configs} configurations x {len(size.seeds)} seed(s) x {size.epochs} epochs, "
        f"rungs {size.rungs}, reduction {size.reduction}; front in (AP_r, AP_f) %, "
        "hypervolume against (0, 0)"
    )
    print("| run | epochs trained | wall time | hypervolume | share of full HV | full-front "
          "members trained to the end |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for o in outcomes:
        kept = len(full.front & o.trained)
        share = o.hv / full.hv if full.hv else float("nan")
        print(
            f"| {o.name} | {o.epochs:g} ({100 * o.epochs / full.epochs:.0f}%) | {o.wall_s:.0f} s "
            f"| {o.hv:.2f} | {100 * share:.1f}% | {kept} of {len(full.front)} |"
        )
    print(f"\nfull-run front: {', '.join(sorted(full.front))}")


__all__ = ["Outcome", "measure", "report"]
