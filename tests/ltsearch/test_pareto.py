"""Pareto fronts, ranks, hypervolume and seed statistics on hand-made cases."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest

from ltsearch.report.pareto import (
    bootstrap_ci,
    hypervolume,
    nondominated_mask,
    pareto_rank,
    prob_dominates,
    seed_summary,
)

INF, NAN = math.inf, math.nan
MAXMAX = ["max", "max"]


def brute_front(values: np.ndarray, directions: list[str]) -> np.ndarray:
    """The definition, one pair at a time."""
    sign = np.array([1.0 if d == "max" else -1.0 for d in directions])
    x = values * sign  # maximise
    out = []
    for i, a in enumerate(x):
        if np.isnan(a).any():
            out.append(False)
            continue
        dominated = any(
            not np.isnan(b).any() and (b >= a).all() and (b > a).any()
            for j, b in enumerate(x)
            if j != i
        )
        out.append(not dominated)
    return np.array(out)


def test_front_hand_case_with_ties_and_nan() -> None:
    v = np.array(
        [
            [10, 30],  # front
            [20, 20],  # front
            [20, 20],  # tie with the previous: both stay
            [15, 15],  # dominated by [20, 20]
            [30, 10],  # front
            [NAN, 99],  # never on the front ...
            [5, 5],  # ... and does not dominate: this is dominated by others anyway
        ]
    )
    assert nondominated_mask(v, MAXMAX).tolist() == [1, 1, 1, 0, 1, 0, 0]
    assert pareto_rank(v, MAXMAX).tolist() == [1, 1, 1, 2, 1, 0, 3]


def test_nan_row_does_not_dominate() -> None:
    v = np.array([[1.0, 1.0], [NAN, 100.0], [100.0, NAN]])
    assert nondominated_mask(v, MAXMAX).tolist() == [True, False, False]


def test_infinities() -> None:
    v = np.array([[INF, 0.0], [1e300, 5.0], [INF, 0.0], [-INF, 10.0], [-INF, 9.0]])
    assert nondominated_mask(v, MAXMAX).tolist() == [True, True, True, True, False]
    # minimising, -inf is the best possible value
    assert nondominated_mask(v, ["min", "max"]).tolist() == [False, False, False, True, False]


def test_min_direction_and_single_objective() -> None:
    v = np.array([[3.0], [1.0], [1.0], [2.0]])
    assert nondominated_mask(v, ["min"]).tolist() == [False, True, True, False]
    assert pareto_rank(v, ["min"]).tolist() == [3, 1, 1, 2]


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("m", [2, 3])
def test_front_matches_definition(seed: int, m: int) -> None:
    rng = np.random.default_rng(seed)
    v = rng.integers(0, 6, size=(60, m)).astype(float)  # many ties
    v[rng.random(60) < 0.1, 0] = NAN
    v[rng.random(60) < 0.05, -1] = INF
    directions = ["max", "min", "max"][:m]
    assert (nondominated_mask(v, directions) == brute_front(v, directions)).all()


def test_empty_and_bad_input() -> None:
    assert nondominated_mask(np.zeros((0, 2)), MAXMAX).shape == (0,)
    with pytest.raises(ValueError, match="directions"):
        nondominated_mask(np.zeros((3, 2)), ["max"])
    with pytest.raises(ValueError, match="'max' or 'min'"):
        nondominated_mask(np.zeros((3, 2)), ["max", "up"])


def test_hypervolume_2d_known_shapes() -> None:
    # one box: (3 - 1) x (5 - 2)
    assert hypervolume(np.array([[1.0, 2.0]]), ["min", "min"], [3, 5]) == 6.0
    # staircase: union of [1,4]x[3,4] (3), [2,4]x[2,4] (4), [3,4]x[1,4] (3) = 3 + 2 + 1 = 6
    stairs = np.array([[1.0, 3.0], [2.0, 2.0], [3.0, 1.0]])
    assert hypervolume(stairs, ["min", "min"], [4, 4]) == 6.0
    # dominated, duplicated and out-of-reference points add nothing
    extra = np.vstack([stairs, [[3.0, 3.0], [2.0, 2.0], [5.0, 0.0], [NAN, 0.0]]])
    assert hypervolume(extra, ["min", "min"], [4, 4]) == 6.0
    # the same staircase maximised (AP_r, AP_f style) against the origin
    assert hypervolume(4 - stairs, MAXMAX, [0, 0]) == 6.0
    # a point on the reference boundary has zero volume
    assert hypervolume(np.array([[4.0, 1.0]]), ["min", "min"], [4, 4]) == 0.0


def test_hypervolume_infinite_and_invalid() -> None:
    assert hypervolume(np.array([[INF, 1.0]]), MAXMAX, [0, 0]) == INF
    assert hypervolume(np.array([[1.0, 1.0]]), MAXMAX, [-INF, 0]) == INF
    assert hypervolume(np.array([[-INF, 1.0]]), MAXMAX, [0, 0]) == 0.0
    assert hypervolume(np.zeros((0, 2)), MAXMAX, [0, 0]) == 0.0
    with pytest.raises(ValueError, match="ref"):
        hypervolume(np.array([[1.0, 1.0]]), MAXMAX, [0, NAN])


def cell_count(points: np.ndarray, ref: int) -> int:
    """Hypervolume of integer points (minimisation) by counting unit cells."""
    m = points.shape[1]
    count = 0
    for cell in itertools.product(range(ref), repeat=m):
        if any((p <= np.array(cell)).all() for p in points):
            count += 1
    return count


def test_hypervolume_3d_boxes() -> None:
    box = np.array([[1.0, 2.0, 3.0]])
    assert hypervolume(box, ["min"] * 3, [4, 4, 4]) == 3 * 2 * 1
    two = np.array([[0.0, 2.0, 2.0], [2.0, 0.0, 2.0]])  # 16 + 16 - overlap [2,4]^3 = 8
    assert hypervolume(two, ["min"] * 3, [4, 4, 4]) == 24.0


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("m", [3, 4])
def test_hypervolume_matches_cell_count(seed: int, m: int) -> None:
    rng = np.random.default_rng(seed)
    pts = rng.integers(0, 5, size=(12, m)).astype(float)
    expected = cell_count(pts[(pts < 5).all(axis=1)], 5)
    assert hypervolume(pts, ["min"] * m, [5] * m) == pytest.approx(expected)
    assert hypervolume(-pts, ["max"] * m, [-5] * m) == pytest.approx(expected)


def test_bootstrap_ci() -> None:
    assert bootstrap_ci([2.0, 2.0, 2.0]) == (2.0, 2.0, 2.0)
    assert bootstrap_ci([3.0]) == (3.0, 3.0, 3.0)
    assert all(math.isnan(x) for x in bootstrap_ci([NAN]))
    mean, lo, hi = bootstrap_ci([1.0, 2.0, 3.0, 4.0, NAN], n_boot=4000, seed=1)
    assert mean == 2.5 and 1.0 <= lo < mean < hi <= 4.0
    assert bootstrap_ci([1.0, 2.0, 3.0, 4.0], seed=1) == bootstrap_ci([1.0, 2.0, 3.0, 4.0], seed=1)
    wide = bootstrap_ci(np.arange(100.0), alpha=0.01)
    narrow = bootstrap_ci(np.arange(100.0), alpha=0.5)
    assert wide[1] < narrow[1] < narrow[2] < wide[2]


def test_prob_dominates() -> None:
    a = np.array([[20.0, 30.0], [21.0, 31.0], [19.0, 29.0]])
    b = a - 5.0
    assert prob_dominates(a, b, MAXMAX) == 1.0
    assert prob_dominates(b, a, MAXMAX) == 0.0
    assert prob_dominates(a, b, ["min", "min"]) == 0.0
    assert prob_dominates(a[:1], a[:1], MAXMAX) == 0.0  # equal means: no dominance
    trade_off = np.array([[25.0, 20.0]])
    assert prob_dominates(a, trade_off, MAXMAX) == 0.0
    close = np.array([[20.0, 30.0], [19.0, 29.0], [21.0, 31.0], [18.0, 28.0]])
    p = prob_dominates(a, close, MAXMAX, n_boot=3000, seed=0)
    assert 0.2 < p < 0.95
    assert math.isnan(prob_dominates(np.array([[NAN, 1.0]]), b, MAXMAX))


def test_seed_summary_keeps_nan_groups() -> None:
    df = pd.DataFrame(
        {
            "loss": ["acsl", "acsl", "acsl", "ce", "ce"],
            "param.acsl.xi": [0.5, 0.5, 0.7, NAN, NAN],
            "bbox/APr": [10.0, 12.0, 9.0, 5.0, NAN],
        }
    )
    out = seed_summary(df, ["loss", "param.acsl.xi"], ["bbox/APr"], n_boot=500)
    assert list(out.columns) == [
        "loss", "param.acsl.xi", "n", "bbox/APr.mean", "bbox/APr.lo", "bbox/APr.hi",
    ]  # fmt: skip
    assert out["loss"].tolist() == ["acsl", "acsl", "ce"]
    assert out["n"].tolist() == [2, 1, 2]
    assert out["bbox/APr.mean"].tolist() == [11.0, 9.0, 5.0]
    first = out.iloc[0]
    assert 10.0 <= first["bbox/APr.lo"] <= 11.0 <= first["bbox/APr.hi"] <= 12.0
    empty = seed_summary(df.iloc[:0], ["loss"], ["bbox/APr"])
    assert empty.empty and "bbox/APr.mean" in empty.columns
