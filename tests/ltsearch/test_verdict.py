"""The verdict rule of ``ltsearch reproduction`` (:mod:`ltsearch.report.verdict`): its
pinned text, comparisons judged on hand-made intervals, claims from their comparisons, and
Student-t intervals against known quantiles."""

from __future__ import annotations

import math
from typing import Any

import pytest

from ltsearch.report.verdict import (
    INCONCLUSIVE,
    NOT_JUDGED,
    NOT_REPRODUCED,
    REPRODUCED,
    TAU,
    VERDICT_RULE,
    Stat,
    claim_verdict,
    judge,
    point,
    seed_stat,
    seeds_to_decide,
    t_quantile,
)


def stat(mean: float, n: int = 3, half: float = 1.0) -> Stat:
    return Stat(n, mean, math.nan if n < 2 else 1.0, math.nan if n < 2 else half)


def test_rule_text_is_pinned() -> None:
    assert TAU == 1.0
    assert VERDICT_RULE == (
        "For a comparison of configurations A and B on a metric, the paper's difference is "
        "Dp = paper(A) - paper(B). If |Dp| < 1.0 AP point, the paper shows no clear "
        "difference: the comparison is listed, not judged. Otherwise the paper's direction "
        "is sign(Dp), and ours is read from the 95% confidence intervals of our means of A "
        "and B over seeds (Student's t, n - 1 degrees of freedom): disjoint intervals with "
        "our difference in the paper's direction: reproduced; disjoint intervals with our "
        "difference in the opposite direction: not reproduced; overlapping intervals, fewer "
        "than 2 seeds on either side, or a side missing: inconclusive. A decoupled study's "
        "stage-1 row is the one model every seed fine-tunes, evaluated once: it is a point "
        "(an interval of width 0), not a sample of one. A claim is not "
        "reproduced if any judged comparison is not reproduced; reproduced if it has judged "
        "comparisons and every one is reproduced; inconclusive otherwise."
    )


@pytest.mark.parametrize(
    ("paper", "ours", "verdict"),
    [
        ((18.0, 10.0), (stat(12.0), stat(9.0)), REPRODUCED),  # [11, 13] vs [8, 10]
        ((10.0, 18.0), (stat(9.0), stat(12.0)), REPRODUCED),  # the paper's A below B: same
        ((18.0, 10.0), (stat(9.0), stat(12.0)), NOT_REPRODUCED),
        ((18.0, 10.0), (stat(11.0), stat(9.5)), INCONCLUSIVE),  # [10, 12] vs [8.5, 10.5]
        ((18.0, 10.0), (stat(11.0), stat(9.0)), INCONCLUSIVE),  # touching at 10: overlap
        ((18.0, 10.0), (stat(30.0, n=1), stat(9.0)), INCONCLUSIVE),  # one seed
        ((18.0, 10.0), (stat(12.0), None), INCONCLUSIVE),  # a side missing
        ((18.0, 10.0), (stat(12.0), point(10.5)), REPRODUCED),  # the stage-1 row: a point
        ((18.0, 10.0), (stat(12.0), point(11.5)), INCONCLUSIVE),  # inside A's [11, 13]
        ((18.0, 10.0), (stat(12.0, n=1), point(5.0)), INCONCLUSIVE),  # A has one seed
        ((18.64, 17.65), (stat(30.0), stat(1.0)), NOT_JUDGED),  # |Dp| 0.99 < TAU
        ((18.5, 17.5), (stat(30.0), stat(1.0)), REPRODUCED),  # |Dp| exactly 1.0: judged
        ((None, 17.5), (stat(30.0), stat(1.0)), NOT_JUDGED),  # the paper gives no number
    ],
)
def test_judge(paper: tuple[Any, Any], ours: tuple[Any, Any], verdict: str) -> None:
    assert judge(*paper, *ours) == verdict


@pytest.mark.parametrize(
    ("verdicts", "expected"),
    [
        ([REPRODUCED, REPRODUCED], (REPRODUCED, 2, 2)),
        ([REPRODUCED, NOT_JUDGED], (REPRODUCED, 1, 1)),
        ([REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE], (NOT_REPRODUCED, 1, 3)),
        ([REPRODUCED, INCONCLUSIVE], (INCONCLUSIVE, 1, 2)),
        ([NOT_JUDGED, NOT_JUDGED], (INCONCLUSIVE, 0, 0)),  # nothing judged: no verdict
        ([], (INCONCLUSIVE, 0, 0)),
    ],
)
def test_claim_verdict(verdicts: list[str], expected: tuple[str, int, int]) -> None:
    assert claim_verdict(verdicts) == expected


def test_t_intervals() -> None:
    """[1, 2, 3]: mean 2, sd 1, half-width t(0.975, 2) / sqrt(3) = 4.302653 / 1.732051."""
    s = seed_stat([1.0, 2.0, 3.0])
    assert s is not None and (s.n, s.mean, s.sd) == (3, 2.0, 1.0)
    assert s.half == pytest.approx(2.4841377, abs=1e-6)
    known = {1: 12.706205, 2: 4.302653, 3: 3.182446, 4: 2.776445, 10: 2.228139, 30: 2.042272}
    for df, t in known.items():
        assert t_quantile(df) == pytest.approx(t, abs=1e-6)
    one = seed_stat([5.0, math.nan])  # an undefined value is no seed
    assert one is not None and one.n == 1 and math.isnan(one.half)
    assert seed_stat([]) is None and seed_stat([math.nan]) is None


def test_seeds_to_decide() -> None:
    """Means 10 and 12, sd 1 each: t(n-1) x 2 / sqrt(n) < 2 first at n = 7 (t(5) = 2.571:
    2.10 at n = 6; t(6) = 2.447: 1.85 at n = 7). A point side keeps width 0, so sd 1 on one
    side only: t(n-1) / sqrt(n) < 2 first at n = 4 (t(2) / sqrt(3) = 2.48; t(3) / 2 = 1.59)."""
    a, b = Stat(3, 10.0, 1.0, 2.48), Stat(3, 12.0, 1.0, 2.48)
    assert seeds_to_decide(a, b) == 7
    assert seeds_to_decide(point(12.0), a) == 4
    assert seeds_to_decide(a, Stat(3, 10.0, 1.0, 2.48)) is None  # equal means
    assert seeds_to_decide(a, Stat(1, 12.0, math.nan, math.nan)) is None  # one seed
    assert seeds_to_decide(a, None) is None
    assert seeds_to_decide(a, Stat(3, 10.01, 1.0, 2.48), cap=50) == 51  # past the cap
