"""The replay report of :mod:`bench_mo_asha`: every rule of :mod:`mo_asha_replay`, both
asynchronous and synchronous, on a full run's values over many arrival orders and rung
settings, how well each epoch predicts the end, and the noise ceiling of any rule
(:mod:`mo_asha_ceiling`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from mo_asha_ceiling import ceiling_report
from mo_asha_replay import HEADER, compare, load_full, rung_correlations, sync_summary
from mo_asha_rules import geometric_rungs, replay_rules, sync_selections

from ltsearch.spec.sections import Objective
from ltsearch.spec.study import StudySpec


def replay_report(
    full_dir: Path,
    setting: tuple[list[int], int, int],
    spec_for: Callable[[list[int], int], StudySpec],
    objectives: Sequence[Objective],
    orders: int,
    leave_out_failed: bool = False,
) -> None:
    """Every rule on ``setting``'s rungs and reduction (``(rungs, reduction, epochs)``;
    ``spec_for(rungs, reduction)`` is the study's spec with them), then on a grid of first
    rungs and reductions (geometric rungs, as ASHA's), each over the same ``orders`` arrival
    orders."""
    first_rungs, first_reduction, epochs = setting
    settings = [(first_rungs, first_reduction)]
    for first in (1, 2, 3):
        for reduction in (2, 3, 4):
            rungs = geometric_rungs(first, reduction, epochs)
            if rungs and (rungs, reduction) not in settings:
                settings.append((rungs, reduction))
    print(
        f"\nreplayed on the full run's values at every epoch ({full_dir}): the grid order and "
        f"{orders - 1} random orders (the same for every rule); epochs as a share of the full "
        "run's; targets: <= 33% of the epochs and >= 95% of the hypervolume"
    )
    for rungs, reduction in settings:
        spec = spec_for(rungs, reduction)
        early = spec.search.early_stopping
        cost = 0.0 if early is None or early.cooldown is None else early.cooldown
        full = load_full(full_dir, objectives, rungs, epochs, leave_out_failed, cost)
        slots = spec.resources.max_concurrent_trials
        print(f"\nrungs {rungs}, reduction {reduction}, {slots} trial(s) at a time")
        print(HEADER)
        for summary in compare(full, replay_rules(spec), orders, slots):
            print(summary.line(len(full.front())))
        for name, select in sync_selections(spec).items():  # no order: one outcome each
            print(sync_summary(name, full, select).line(len(full.front())))
    front = sorted(full.front())
    print(f"\nfull-run front: {', '.join(full.labels[c] for c in front)}")
    if full.left_out:
        when = "failed" if leave_out_failed else "failed before the first rung, as under any rule"
        print(f"left out ({when}): {full.left_out}")
    every = load_full(full_dir, objectives, list(range(1, epochs)), epochs, leave_out_failed)
    names = ", ".join(o.metric for o in objectives)
    print(f"\nSpearman rank correlation of each epoch's values with the final means ({names}):")
    for rung, rho in rung_correlations(every).items():
        print(f"  epoch {rung}: " + " / ".join(f"{r:+.2f}" for r in rho))
    ceiling_report(full_dir, objectives, epochs)


__all__ = ["replay_report"]
