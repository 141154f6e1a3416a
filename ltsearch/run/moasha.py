"""The promotion rule of multi-objective asynchronous successive halving (MO-ASHA).

Successive halving trains many configurations a few epochs, keeps the best ``1/reduction``
of them for more epochs, and so on up a ladder of *rungs* (epochs). ASHA (Li et al., 2020,
"A System for Massively Parallel Hyperparameter Tuning") decides each trial alone, when it
reaches a rung, against the trials recorded at that rung so far, so nothing waits for a full
rung. With several objectives "best" is not a single sort: as in MOASHA (Schmucker et al.,
2021, "Multi-objective Asynchronous Successive Halving"; Syne Tune), the points at a rung are
ordered by non-dominated sorting (rank 1 is their Pareto front, rank 2 the front once rank 1
is removed, ...) and, within a rank, by NSGA-II's crowding distance (larger first: points in
sparse regions of the front, and its two ends, go on before points in crowded ones, so the
trials kept stay spread along the trade-off instead of clustering at one end).

Shape shorthand: n points (configurations at a rung), m objectives. ``directions`` gives
``"max"`` or ``"min"`` per objective. Pure numpy; the Ray Tune scheduler around it is
:mod:`ltsearch.run.rung_scheduler`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ltsearch.report.pareto import pareto_rank


def nondominated_ranks(values: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """Non-dominated sorting of ``values`` ``[n, m]``: 1 for the front, 2 for the next, ...

    A row with a NaN (an objective the evaluation could not define) ranks after every
    complete row: one more than the worst rank.

    Returns:
        ``[n]`` int ranks, all >= 1.
    """
    x = np.asarray(values, dtype=float).reshape(len(values), -1)
    ranks = pareto_rank(x, directions)
    worst = int(ranks.max()) if len(ranks) else 0
    return np.where(ranks == 0, worst + 1, ranks)


def crowding_distance(values: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """NSGA-II crowding distance of each point within its non-domination rank.

    Per objective, the points of one rank are sorted; each inner point gets the gap between
    its two neighbours divided by the rank's range in that objective, summed over the
    objectives; the two ends (and every point of a rank of one or two) get ``inf``. An
    objective with no range in a rank adds nothing. Rows with a NaN get 0. The distance
    does not depend on ``directions`` beyond the ranks (a gap is a gap either way).

    Returns:
        ``[n]`` float distances.
    """
    x = np.asarray(values, dtype=float).reshape(len(values), -1)
    ranks = nondominated_ranks(x, directions)
    complete = ~np.isnan(x).any(axis=1)
    out = np.zeros(len(x))
    for rank in np.unique(ranks[complete]):
        members = np.flatnonzero((ranks == rank) & complete)
        out[members] = _front_crowding(x[members])
    return out


def _front_crowding(front: np.ndarray) -> np.ndarray:
    """Crowding distances of the points ``[k, m]`` of one front."""
    k, m = front.shape
    if k <= 2:
        return np.full(k, np.inf)
    dist = np.zeros(k)
    for j in range(m):
        order = np.argsort(front[:, j], kind="stable")
        col = front[order, j]
        span = col[-1] - col[0]
        dist[order[0]] = dist[order[-1]] = np.inf
        if span > 0:
            dist[order[1:-1]] += (col[2:] - col[:-2]) / span
    return dist


def promotion_order(values: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """Indices of ``values`` ``[n, m]`` best first: by rank, then by crowding distance
    (larger first), then the later row first (a newcomer that ties goes on)."""
    x = np.asarray(values, dtype=float).reshape(len(values), -1)
    ranks = nondominated_ranks(x, directions)
    crowd = crowding_distance(x, directions)
    arrival = np.arange(len(x))
    return np.lexsort((-arrival, -crowd, ranks))


def kept(n: int, reduction: float) -> int:
    """How many of ``n`` points at a rung go on: ``ceil(n / reduction)``, so the first trial
    to reach a rung always goes on (ASHA's rule: nobody to compare with yet)."""
    return math.ceil(n / reduction)


PROMOTIONS = ("ranked", "front")
"""The promotion rules: ``ranked`` keeps the first :func:`kept` points in
:func:`promotion_order`; ``front`` also keeps every point on the rung's first front (the
non-dominated points among those that reached it so far), however many there are."""


def promote(
    records: Sequence[Sequence[float]],
    new: Sequence[float],
    reduction: float,
    directions: Sequence[str],
    promotion: str = "ranked",
) -> bool:
    """Whether a trial that reached a rung with objective values ``new`` goes on.

    ``ranked``: it goes on iff it is among the first :func:`kept` of the points at the rung
    (the ``records`` of the trials that reached it before, and itself) in
    :func:`promotion_order`. ``front``: the same, or it is non-dominated among them (rank 1:
    a point no other point at the rung beats in every objective is never stopped, so a
    front's middle is not cut by crowding when the front outnumbers the quota).

    Args:
        records: ``[n, m]`` objective values recorded at this rung so far.
        new: ``[m]`` the trial's values at the rung.
        reduction: keep ``1/reduction`` of the trials (``>= 2`` in a study spec).
        directions: ``"max"``/``"min"`` per objective.
        promotion: one of :data:`PROMOTIONS`.
    """
    if reduction <= 1:
        raise ValueError(f"reduction must be > 1, got {reduction}")
    if promotion not in PROMOTIONS:
        raise ValueError(f"promotion must be one of {PROMOTIONS}, got {promotion!r}")
    m = len(new)
    points = np.array([*[list(r) for r in records], list(new)], dtype=float).reshape(-1, m)
    if promotion == "front" and nondominated_ranks(points, directions)[-1] == 1:
        return True
    order = promotion_order(points, directions)
    position = int(np.flatnonzero(order == len(points) - 1)[0])
    return position < kept(len(points), reduction)


__all__ = [
    "PROMOTIONS",
    "crowding_distance",
    "kept",
    "nondominated_ranks",
    "promote",
    "promotion_order",
]
