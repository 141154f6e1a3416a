"""Seed statistics and the verdict rule of ``ltsearch reproduction`` (pure, no pandas).

:data:`VERDICT_RULE` is the rule in words, printed verbatim in REPRODUCTION.md;
:func:`judge` and :func:`claim_verdict` implement it. No verdict is set anywhere else.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

TAU = 1.0
"""AP points under which the paper's own difference is not a claim (|Dp| < TAU)."""
LEVEL = 0.95
REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "not reproduced", "inconclusive"
NOT_JUDGED = "not judged"

VERDICT_RULE = (
    "For a comparison of configurations A and B on a metric, the paper's difference is "
    f"Dp = paper(A) - paper(B). If |Dp| < {TAU:.1f} AP point, the paper shows no clear "
    "difference: the comparison is listed, not judged. Otherwise the paper's direction is "
    "sign(Dp), and ours is read from the 95% confidence intervals of our means of A and B "
    "over seeds (Student's t, n - 1 degrees of freedom): disjoint intervals with our "
    "difference in the paper's direction: reproduced; disjoint intervals with our "
    "difference in the opposite direction: not reproduced; overlapping intervals, fewer "
    "than 2 seeds on either side, or a side missing: inconclusive. A decoupled study's "
    "stage-1 row is the one model every seed fine-tunes, evaluated once: it is a point "
    "(an interval of width 0), not a sample of one. A claim is not "
    "reproduced if any judged comparison is not reproduced; reproduced if it has judged "
    "comparisons and every one is reproduced; inconclusive otherwise."
)


def _t_coverage(t: float, df: int) -> float:
    """P(-t < T < t) for Student's T with ``df`` degrees of freedom, in closed form
    (Abramowitz & Stegun 26.7.3-4): a finite series in cos(theta), theta = atan(t/sqrt(df))."""
    theta = math.atan(t / math.sqrt(df))
    s, c2 = math.sin(theta), math.cos(theta) ** 2
    if df % 2 == 0:  # sin(theta) * (1 + 1/2 c^2 + 1*3/(2*4) c^4 + ...), df/2 terms
        term, total = 1.0, 1.0
        for k in range(2, df, 2):
            term *= c2 * (k - 1) / k
            total += term
        return s * total
    term, total = math.cos(theta), 0.0  # odd: 2/pi (theta + sin(theta) (c + 2/3 c^3 + ...))
    for k in range(3, df + 1, 2):
        total += term
        term *= c2 * (k - 1) / k
    return 2.0 / math.pi * (theta + s * total)


def t_quantile(df: int, level: float = LEVEL) -> float:
    """The two-sided ``level`` critical value of Student's t with ``df`` degrees of
    freedom (df 2: 4.3027), found by bisection on the closed-form coverage."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    lo, hi = 0.0, 1.0
    while _t_coverage(hi, df) < level:
        lo, hi = hi, hi * 2.0
    for _ in range(200):
        mid = (lo + hi) / 2.0
        lo, hi = (mid, hi) if _t_coverage(mid, df) < level else (lo, mid)
        if hi - lo < 1e-12:
            break
    return (lo + hi) / 2.0


@dataclass(frozen=True)
class Stat:
    """One configuration's metric over its seeds: ``n`` defined values, their mean, sample
    standard deviation ``sd`` and the 95% t interval's ``half`` width (NaN for n = 1)."""

    n: int
    mean: float
    sd: float
    half: float

    @property
    def usable(self) -> bool:
        """An interval to judge with: 2 seeds or more, or an exact point (:func:`point`)."""
        return self.n >= 2 or self.half == 0.0

    @property
    def lo(self) -> float:
        return self.mean - self.half

    @property
    def hi(self) -> float:
        return self.mean + self.half


def seed_stat(values: Sequence[float]) -> Stat | None:
    """Mean and 95% Student-t interval of ``values`` (NaN left out); None without any."""
    xs = [float(v) for v in values if not math.isnan(float(v))]
    if not xs:
        return None
    n = len(xs)
    mean = math.fsum(xs) / n
    if n == 1:
        return Stat(1, mean, math.nan, math.nan)
    sd = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1))
    return Stat(n, mean, sd, t_quantile(n - 1) * sd / math.sqrt(n))


def point(value: float) -> Stat:
    """A value without sampling spread (a decoupled study's stage-1 row: one model, the
    one every seed fine-tunes), as an interval of width 0."""
    return Stat(1, float(value), 0.0, 0.0)


def paper_difference(paper_a: float | None, paper_b: float | None) -> float | None:
    """Dp = paper(A) - paper(B), rounded to 1e-6 so that 18.5 - 17.5 is exactly 1.0 (the
    papers print two decimals at most); None when the paper gives either side no number."""
    if paper_a is None or paper_b is None:
        return None
    return round(paper_a - paper_b, 6)


def judge(
    paper_a: float | None, paper_b: float | None, ours_a: Stat | None, ours_b: Stat | None
) -> str:
    """One comparison's verdict under :data:`VERDICT_RULE` (:data:`NOT_JUDGED` too when the
    paper gives a side no number)."""
    dp = paper_difference(paper_a, paper_b)
    if dp is None or abs(dp) < TAU:
        return NOT_JUDGED
    if ours_a is None or ours_b is None or not (ours_a.usable and ours_b.usable):
        return INCONCLUSIVE
    if ours_a.lo > ours_b.hi or ours_b.lo > ours_a.hi:  # disjoint intervals
        return REPRODUCED if (ours_a.mean - ours_b.mean) * dp > 0 else NOT_REPRODUCED
    return INCONCLUSIVE


SEEDS_CAP = 50
SEEDS_TO_DECIDE = (
    "Seeds to decide: for an inconclusive comparison, the fewest seeds per side at which "
    "95% intervals of the spreads we observed would no longer overlap, if our means held "
    f"(a planning figure, not a verdict; '> {SEEDS_CAP}' past {SEEDS_CAP}, '-' where a side "
    "has fewer than 2 seeds or the means are equal)."
)


def seeds_to_decide(a: Stat | None, b: Stat | None, cap: int = SEEDS_CAP) -> int | None:
    """The fewest seeds n per side (n >= 2) with t(n-1) (sd_a + sd_b) / sqrt(n) < |mean_a -
    mean_b|: when the intervals of :data:`SEEDS_TO_DECIDE` would part. A point
    (:func:`point`) keeps its width 0. ``cap + 1`` past ``cap``; None when undefined (a side
    missing or of one seed, or equal means)."""
    if a is None or b is None or math.isnan(a.sd) or math.isnan(b.sd):
        return None
    gap = abs(a.mean - b.mean)
    spread = a.sd + b.sd
    if gap == 0:
        return None
    for n in range(2, cap + 1):
        if t_quantile(n - 1) * spread / math.sqrt(n) < gap:
            return n
    return cap + 1


def claim_verdict(verdicts: Sequence[str]) -> tuple[str, int, int]:
    """A claim's verdict from its comparisons' (:data:`VERDICT_RULE`).

    Returns:
        ``(verdict, k, n)``: k of the n judged comparisons are reproduced.
    """
    judged = [v for v in verdicts if v != NOT_JUDGED]
    k = sum(v == REPRODUCED for v in judged)
    if NOT_REPRODUCED in judged:
        return NOT_REPRODUCED, k, len(judged)
    if judged and k == len(judged):
        return REPRODUCED, k, len(judged)
    return INCONCLUSIVE, k, len(judged)


__all__ = [
    "INCONCLUSIVE", "LEVEL", "NOT_JUDGED", "NOT_REPRODUCED", "REPRODUCED", "SEEDS_CAP",
    "SEEDS_TO_DECIDE", "TAU", "VERDICT_RULE", "Stat", "claim_verdict", "judge",
    "paper_difference", "point", "seed_stat", "seeds_to_decide", "t_quantile",
]  # fmt: skip
