"""The early-stopping rules that :mod:`mo_asha_replay` replays, built from a study's spec.

- asynchronous (a decision per arrival, :func:`~mo_asha_replay.replay`): both MO-ASHA
  promotions (:func:`~ltsearch.run.moasha.promote`, the scheduler's own code) and Ray
  Tune's ASHA on AP_r (:func:`asha_rule`, its own code);
- synchronous (a decision per full rung, :func:`~mo_asha_replay.replay_sync`): the same
  orderings applied to every configuration at the rung (:func:`pareto_selection`,
  :func:`top_selection`);
- :func:`geometric_rungs`, ASHA's rungs for the grid of settings the report replays.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from types import SimpleNamespace
from typing import Any

import numpy as np
from mo_asha_replay import ReplayRule, Selection

from ltsearch.run.moasha import PROMOTIONS, kept, nondominated_ranks, promote, promotion_order
from ltsearch.run.rung_scheduler import Rule
from ltsearch.rung_log import RUNG_KEY
from ltsearch.spec.study import StudySpec


def pareto_selection(reduction: float, directions: Sequence[str], promotion: str) -> Selection:
    """MO-ASHA's ordering on a full rung: the first ``ceil(n / reduction)`` by
    :func:`~ltsearch.run.moasha.promotion_order`, and with ``front`` every rank-1 point."""

    def select(values: np.ndarray) -> set[int]:
        order = promotion_order(values, directions)
        out = {int(i) for i in order[: kept(len(values), reduction)]}
        if promotion == "front":
            out |= {int(i) for i in np.flatnonzero(nondominated_ranks(values, directions) == 1)}
        return out

    return select


def top_selection(reduction: float, column: int) -> Selection:
    """Successive halving on one objective (maximised): the first ``ceil(n / reduction)``
    by it, a NaN last, ties by position."""

    def select(values: np.ndarray) -> set[int]:
        score = np.nan_to_num(values[:, column], nan=-np.inf)
        order = np.argsort(-score, kind="stable")
        return {int(i) for i in order[: kept(len(values), reduction)]}

    return select


def asha_rule(spec: StudySpec) -> Rule:
    """Ray Tune's ASHA on AP_r with the study's rungs (``grace_period`` the first rung,
    geometric by ``reduction`` up to ``training.epochs``): its decision on each rung."""
    from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler

    early = spec.search.early_stopping
    assert early is not None
    asha = AsyncHyperBandScheduler(
        time_attr=RUNG_KEY,
        metric="bbox/APr",
        mode="max",
        max_t=spec.training.epochs,
        grace_period=early.rungs[0],
        reduction_factor=early.reduction,
    )
    apr = spec.search.metric_names.index("bbox/APr")

    def rule(trial: Any, rung: int, values: list[float], recorded: list[list[float]]) -> bool:
        if trial.trial_id not in asha._trial_info:
            asha.on_trial_add(None, trial)  # type: ignore[arg-type]
        result = {RUNG_KEY: rung, "bbox/APr": values[apr]}
        return asha.on_trial_result(None, trial, result) == TrialScheduler.CONTINUE  # type: ignore[arg-type]

    return rule


def replay_rules(spec: StudySpec) -> dict[str, Callable[[], ReplayRule]]:
    """The rules replayed: both MO-ASHA promotions and Ray Tune's ASHA on AP_r (its own
    code, a fresh scheduler per order)."""
    early = spec.search.early_stopping
    assert early is not None
    directions = [o.direction for o in spec.search.parsed_objectives]

    def pareto(promotion: str) -> Callable[[], ReplayRule]:
        return lambda: lambda rung, v, rec: promote(rec, v, early.reduction, directions, promotion)

    def asha() -> ReplayRule:
        rule, ids = asha_rule(spec), itertools.count()
        return lambda rung, v, rec: rule(SimpleNamespace(trial_id=str(next(ids))), rung, v, rec)

    return {
        **{f"MO-ASHA, promotion: {p}": pareto(p) for p in PROMOTIONS},
        "ASHA on AP_r": asha,
    }


def geometric_rungs(first: int, reduction: int, epochs: int) -> list[int]:
    """ASHA's rungs: ``first * reduction**k`` below ``epochs``."""
    out = []
    r = first
    while r < epochs:
        out.append(r)
        r *= reduction
    return out


def sync_selections(spec: StudySpec) -> dict[str, Selection]:
    """The synchronous counterparts of :func:`replay_rules`."""
    early = spec.search.early_stopping
    assert early is not None
    directions = [o.direction for o in spec.search.parsed_objectives]
    apr = spec.search.metric_names.index("bbox/APr")
    return {
        **{
            f"synchronous MO, {p}": pareto_selection(early.reduction, directions, p)
            for p in PROMOTIONS
        },
        "synchronous on AP_r": top_selection(early.reduction, apr),
    }


__all__ = [
    "asha_rule",
    "geometric_rungs",
    "pareto_selection",
    "replay_rules",
    "sync_selections",
    "top_selection",
]
