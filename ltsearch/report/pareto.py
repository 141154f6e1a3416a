"""Pareto fronts, hypervolume and seed statistics: small pure numpy/pandas functions.

Shape shorthand: n points, m objectives, k and l seeds. ``directions`` gives ``"max"`` or
``"min"`` per objective; internally everything is turned into minimisation.

Conventions:
    - ``a`` dominates ``b`` when ``a`` is no worse in every objective and strictly better
      in at least one; equal points do not dominate each other (both stay on the front).
    - A row with a NaN is never on a front and never dominates (its rank is 0).
    - ``+inf``/``-inf`` compare as the extended reals: an objective at ``+inf`` under
      ``"max"`` beats every finite value, and two equal infinities tie.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

_CHUNK = 1 << 22  # elements per comparison block: bounds memory for large n


def _signs(directions: Sequence[str], m: int) -> np.ndarray:
    if len(directions) != m:
        raise ValueError(f"{len(directions)} directions for {m} objectives")
    bad = [d for d in directions if d not in ("max", "min")]
    if bad:
        raise ValueError(f"directions must be 'max' or 'min', got {bad}")
    return np.array([-1.0 if d == "max" else 1.0 for d in directions])


def _as_min(values: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """``values`` ``[n, m]`` as floats to minimise."""
    x = np.asarray(values, dtype=float)
    if x.ndim != 2:
        raise ValueError(f"values must be [n, m], got shape {x.shape}")
    return x * _signs(directions, x.shape[1])


def _nondominated_min(x: np.ndarray) -> np.ndarray:
    """Mask of the non-dominated rows of NaN-free ``x`` ``[n, m]`` (minimisation)."""
    n, m = x.shape
    dominated = np.zeros(n, dtype=bool)
    step = max(1, _CHUNK // max(1, n * m))
    for start in range(0, n, step):
        block = x[start : start + step, None, :]  # [b, 1, m]: candidates i
        no_worse = np.all(x[None, :, :] <= block, axis=2)  # [b, n]: j no worse than i
        better = np.any(x[None, :, :] < block, axis=2)
        dominated[start : start + step] = (no_worse & better).any(axis=1)
    return ~dominated


def nondominated_mask(values: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """Which points are on the Pareto front.

    Args:
        values: ``[n, m]`` objective values.
        directions: ``"max"``/``"min"`` per objective.

    Returns:
        ``[n]`` bool; rows with a NaN are False.
    """
    x = _as_min(values, directions)
    valid = ~np.isnan(x).any(axis=1)
    mask = np.zeros(len(x), dtype=bool)
    mask[valid] = _nondominated_min(x[valid])
    return mask


def pareto_rank(values: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """Non-dominated sorting: 1 for the front, 2 for the front once it is removed, ...

    Returns:
        ``[n]`` int; 0 for rows with a NaN (unranked).
    """
    x = _as_min(values, directions)
    ranks = np.zeros(len(x), dtype=int)
    remaining = np.flatnonzero(~np.isnan(x).any(axis=1))
    rank = 1
    while remaining.size:
        front = _nondominated_min(x[remaining])
        ranks[remaining[front]] = rank
        remaining = remaining[~front]
        rank += 1
    return ranks


def _hv2(x: np.ndarray, ref: np.ndarray) -> float:
    """Exact 2-D hypervolume by a sweep over the first objective (minimisation)."""
    order = np.lexsort((x[:, 1], x[:, 0]))
    xs, ys = x[order, 0], x[order, 1]
    best_before = np.concatenate([[ref[1]], np.minimum.accumulate(ys)[:-1]])
    return float(np.sum((ref[0] - xs) * np.clip(best_before - ys, 0.0, None)))


def _hv(x: np.ndarray, ref: np.ndarray) -> float:
    """Exact hypervolume of points strictly inside ``ref`` (minimisation), by slicing
    along the last objective down to the 2-D sweep (HSO)."""
    m = x.shape[1]
    if m == 1:
        return float(ref[0] - x[:, 0].min())
    if m == 2:
        return _hv2(x, ref)
    x = x[np.argsort(x[:, -1], kind="stable")]
    total = 0.0
    for i in range(len(x)):
        upper = x[i + 1, -1] if i + 1 < len(x) else ref[-1]
        depth = upper - x[i, -1]
        if depth > 0:
            slab = x[: i + 1, :-1]
            total += depth * _hv(slab[_nondominated_min(slab)], ref[:-1])
    return total


def hypervolume(values: np.ndarray, directions: Sequence[str], ref: Sequence[float]) -> float:
    """Volume dominated by the points and bounded by the reference point ``ref``.

    Exact. Only points strictly better than ``ref`` in every objective count; NaN rows
    are ignored. 2-D is an O(n log n) sweep; m > 2 slices along one objective at a time,
    O(n^(m-1) log n): meant for m <= 4 and up to a few hundred front points.

    Returns:
        The hypervolume; 0.0 when no point beats ``ref``, ``inf`` when a counted point
        is infinitely better than ``ref`` in some objective (or ``ref`` is infinite there).

    Raises:
        ValueError: ``ref`` has a NaN or the wrong length.
    """
    x = _as_min(values, directions)
    r = np.asarray(ref, dtype=float).reshape(-1) * _signs(directions, x.shape[1])
    if r.shape != (x.shape[1],) or np.isnan(r).any():
        raise ValueError(f"ref must be {x.shape[1]} non-NaN values, got {list(ref)}")
    x = x[~np.isnan(x).any(axis=1)]
    x = x[(x < r).all(axis=1)]
    if len(x) == 0:
        return 0.0
    if np.isinf(x).any() or np.isinf(r).any():
        return float("inf")  # every side of a counted point's box is > 0, one is infinite
    x = np.unique(x[_nondominated_min(x)], axis=0)
    return _hv(x, r)


def bootstrap_ci(
    samples: Sequence[float] | np.ndarray, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0
) -> tuple[float, float, float]:
    """Mean and percentile-bootstrap ``1 - alpha`` interval of the mean.

    NaNs are dropped. No sample gives ``(nan, nan, nan)``; one sample ``(x, x, x)`` (no
    spread can be estimated from one seed).
    """
    x = np.asarray(samples, dtype=float).reshape(-1)
    x = x[~np.isnan(x)]
    if x.size == 0:
        return (float("nan"),) * 3  # type: ignore[return-value]
    mean = float(x.mean())
    if x.size == 1:
        return mean, mean, mean
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return mean, float(lo), float(hi)


def prob_dominates(
    a_samples: np.ndarray,
    b_samples: np.ndarray,
    directions: Sequence[str],
    n_boot: int = 2000,
    seed: int = 0,
) -> float:
    """Probability that configuration A dominates B, by bootstrap over seeds.

    Each bootstrap round resamples A's seeds ``[k, m]`` and B's seeds ``[l, m]`` with
    replacement and compares the two mean vectors; the result is the share of rounds
    where A's mean dominates B's (ties count as not dominating). Rows with a NaN are
    dropped; NaN if either side has no row left.
    """
    a = _as_min(a_samples, directions)
    b = _as_min(b_samples, directions)
    a = a[~np.isnan(a).any(axis=1)]
    b = b[~np.isnan(b).any(axis=1)]
    if len(a) == 0 or len(b) == 0:
        return float("nan")
    rng = np.random.default_rng(seed)
    ma = a[rng.integers(0, len(a), size=(n_boot, len(a)))].mean(axis=1)  # [n_boot, m]
    mb = b[rng.integers(0, len(b), size=(n_boot, len(b)))].mean(axis=1)
    dominates = (ma <= mb).all(axis=1) & (ma < mb).any(axis=1)
    return float(dominates.mean())


def seed_summary(
    df: pd.DataFrame,
    group_cols: Sequence[str],
    metric_cols: Sequence[str],
    n_boot: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
) -> pd.DataFrame:
    """Per configuration: mean and bootstrap interval of each metric over its seeds.

    Groups with NaN keys are kept (a parameter another loss does not have is NaN).

    Returns:
        One row per group: ``group_cols``, ``n`` (rows in the group), and per metric
        ``<metric>.mean``, ``<metric>.lo``, ``<metric>.hi`` (over its non-NaN values).
    """
    columns = [*group_cols, "n"] + [f"{m}.{s}" for m in metric_cols for s in ("mean", "lo", "hi")]
    rows = []
    for key, group in df.groupby(list(group_cols), dropna=False, sort=True):
        keys = key if isinstance(key, tuple) else (key,)
        row: list[object] = [*keys, len(group)]
        for metric in metric_cols:
            row.extend(bootstrap_ci(group[metric].to_numpy(float), n_boot, alpha, seed))
        rows.append(row)
    return pd.DataFrame(rows, columns=columns)


__all__ = [
    "bootstrap_ci", "hypervolume", "nondominated_mask", "pareto_rank", "prob_dominates",
    "seed_summary",
]  # fmt: skip
