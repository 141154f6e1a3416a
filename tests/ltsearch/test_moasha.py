"""The MO-ASHA promotion rule (:mod:`ltsearch.run.moasha`) on hand-made rung results."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ltsearch.run.moasha import (
    crowding_distance,
    kept,
    nondominated_ranks,
    promote,
    promotion_order,
)

MAX2 = ["max", "max"]


def test_the_first_trial_at_a_rung_goes_on() -> None:
    assert promote([], [0.0, 0.0], 3, MAX2)
    assert [kept(n, 3) for n in range(1, 8)] == [1, 1, 1, 2, 2, 2, 3]


def test_a_dominated_newcomer_stops_and_a_dominating_one_goes_on() -> None:
    assert not promote([[0.5, 0.5]], [0.4, 0.4], 2, MAX2)
    assert not promote([[0.5, 0.5]], [0.5, 0.4], 2, MAX2)  # equal in one, worse in the other
    assert promote([[0.2, 0.2]], [0.3, 0.3], 2, MAX2)


def test_a_non_dominated_newcomer_goes_on_where_a_single_objective_would_stop_it() -> None:
    # worse in the first objective, better in the second: both are on the front
    assert promote([[0.5, 0.2]], [0.2, 0.5], 2, MAX2)
    assert not promote([[0.5]], [0.2], 2, ["max"])


def test_ties_go_on() -> None:
    """An equal point neither dominates nor is dominated, has the same crowding distance,
    and the newcomer wins the tie (as ASHA continues a trial equal to its cut-off)."""
    assert promote([[0.3, 0.3]], [0.3, 0.3], 2, MAX2)
    assert promote([[0.3, 0.3], [0.3, 0.3], [0.3, 0.3]], [0.3, 0.3], 4, MAX2)


@pytest.mark.parametrize(
    ("directions", "goes_on"),
    [(["max", "max"], False), (["min", "min"], True), (["max", "min"], True)],
)
def test_directions(directions: list[str], goes_on: bool) -> None:
    """[0.4, 5] against [0.5, 10]: dominated when both are maximised, dominating when both
    are minimised, on the same front under (max, min)."""
    assert promote([[0.5, 10.0]], [0.4, 5.0], 2, directions) is goes_on


def test_ranks_and_a_nan_row_ranks_last() -> None:
    values = np.array([[0.1, 0.9], [0.5, 0.5], [0.4, 0.4], [0.3, 0.3], [np.nan, 0.9]])
    assert nondominated_ranks(values, MAX2).tolist() == [1, 1, 2, 3, 4]
    assert not promote(values[:4].tolist(), [np.nan, 1.0], 2, MAX2)


def test_crowding_distance_by_hand() -> None:
    """Front (0.1, 0.9), (0.15, 0.85), (0.5, 0.5), (0.9, 0.1); range 0.8 in both objectives.

    Ends: inf. (0.15, 0.85): neighbours 0.1 and 0.5 in x, 0.5 and 0.9 in y:
    0.4/0.8 + 0.4/0.8 = 1.0. (0.5, 0.5): 0.75/0.8 twice = 1.875. The dominated point
    (0.2, 0.2) is alone in rank 2: inf.
    """
    values = np.array([[0.1, 0.9], [0.15, 0.85], [0.5, 0.5], [0.9, 0.1], [0.2, 0.2]])
    got = crowding_distance(values, MAX2)
    assert math.isinf(got[0]) and math.isinf(got[3]) and math.isinf(got[4])
    assert got[1] == pytest.approx(1.0)
    assert got[2] == pytest.approx(1.875)
    # best first: rank 1 (the ends by arrival, later first; then the sparse middle), rank 2
    assert promotion_order(values, MAX2).tolist() == [3, 0, 2, 1, 4]


def test_crowding_breaks_ties_within_a_rank_to_keep_the_front_spread() -> None:
    """Three of four go on (reduction 1.5): both ends, then the inner point in the sparser
    region. A newcomer in the gap of the front goes on; one next to a recorded point stops."""
    ends_and_crowded = [[0.1, 0.9], [0.15, 0.85], [0.9, 0.1]]
    assert promote(ends_and_crowded, [0.5, 0.5], 1.5, MAX2)
    ends_and_sparse = [[0.1, 0.9], [0.5, 0.5], [0.9, 0.1]]
    assert not promote(ends_and_sparse, [0.15, 0.85], 1.5, MAX2)


def test_rank_comes_before_crowding() -> None:
    """A dominated point with infinite crowding (alone in its rank) still comes after the
    whole front."""
    front = [[0.1, 0.9], [0.2, 0.8], [0.3, 0.7], [0.4, 0.6]]
    assert not promote(front, [0.05, 0.05], 1.5, MAX2)


def test_front_promotion_keeps_every_non_dominated_point_and_only_those_beyond_the_quota() -> None:
    """Four points on one front, reduction 3: ``ranked`` keeps ceil(4/3) = 2 (the two
    ends by crowding) and stops the crowded middle; ``front`` keeps it too. A dominated
    newcomer is judged by the quota alone in both."""
    front = [[0.1, 0.9], [0.5, 0.5], [0.9, 0.1]]
    middle = [0.45, 0.55]  # on the front, crowded next to (0.5, 0.5)
    assert not promote(front, middle, 3, MAX2)
    assert promote(front, middle, 3, MAX2, "front")
    # dominated by (0.5, 0.5): not on the front, and outside the quota of 2 of 4
    assert not promote(front, [0.4, 0.4], 3, MAX2, "front")
    # dominated, but within the quota (2nd of ceil(3/2) = 2): goes on in both rules
    assert promote([[0.5, 0.5], [0.1, 0.1]], [0.4, 0.4], 2, MAX2, "front")
    assert promote([[0.5, 0.5], [0.1, 0.1]], [0.4, 0.4], 2, MAX2)
    # a NaN newcomer is never on the front once a complete point is recorded
    assert not promote(front, [np.nan, 0.95], 3, MAX2, "front")


def test_an_unknown_promotion_is_refused() -> None:
    with pytest.raises(ValueError, match="promotion"):
        promote([], [0.1], 3, ["max"], "hypervolume")


def test_a_reduction_of_one_or_less_is_refused() -> None:
    with pytest.raises(ValueError, match="reduction"):
        promote([], [0.1], 1, ["max"])
