"""The ranking part of ROG's GAP loss (Zhang et al., ICCV 2023): the class weight ``w_m``
of Eq. 9 and the error-driven gradient of Eq. 11 over a batch's score matrix, vectorised
(sorted prefix sums instead of the positives x negatives matrix). The loss module,
:mod:`ltmodels.losses.gap`, documents the equations and the choices; this one holds the
arithmetic it calls.

Shape shorthand: N RoIs, C foreground classes (column ``j`` is label ``j + 1``), P
positives, Q negatives ranked against them.
"""

from __future__ import annotations

import torch

_ACTIVE_EPS = 1e-10


def gap_class_weight(counts: torch.Tensor, gamma: float) -> torch.Tensor:
    """``w_m`` of Eq. 9 from per-class counts ``[C]`` (clamped at 1), as float64."""
    w = counts.double().clamp_min(1.0).reciprocal().pow(gamma)
    return w / (w.sum() + 1e-9) * counts.numel()


def _ramp_sums(
    points: torch.Tensor,
    weights: torch.Tensor,
    queries: torch.Tensor,
    delta: float,
    *,
    queries_below: bool,
    sorted_input: str = "",
) -> torch.Tensor:
    """``out[q] = sum_p weights[p] * H`` with the ramp ``H`` of Eq. 5, without the P x Q matrix.

    ``queries_below=True``: ``H = clamp((points[p] - queries[q]) / 2 delta + 1/2, 0, 1)``
    (a positive ``q`` against negatives ``p``); ``False``: the same ramp with the roles
    swapped, ``H = clamp((queries[q] - points[p]) / 2 delta + 1/2, 0, 1)``. The points are
    sorted once; each query sums the points where ``H = 1`` and the linear part of the ramp
    from prefix sums (float64), so the cost is O((P + Q) log P) instead of O(P Q).
    ``sorted_input``: ``"points"`` or ``"queries"`` when that side is already ascending
    (sorted queries are located with one pass of counts instead of a search per query).
    """
    if sorted_input == "points":
        x, w = points.double(), weights.double()
    else:
        order = torch.argsort(points)
        x, w = points[order].double(), weights[order].double()
    zero = x.new_zeros(1)
    cw = torch.cat([zero, torch.cumsum(w, 0)])  # cw[k] = sum of the first k weights
    cwx = torch.cat([zero, torch.cumsum(w * x, 0)])
    q = queries.double()
    # H rises linearly from 0 to 1 over the points x in (lo, hi] (queries_below) or falls
    # from 1 to 0 over x in [lo, hi) (not queries_below); the ramp is continuous, so which
    # side a tie at a boundary falls on does not change the sum.
    search = _search_sorted_queries if sorted_input == "queries" else torch.searchsorted
    lo = search(x, q - delta, right=True)
    hi = search(x, q + delta, right=False)
    mid_w = cw[hi] - cw[lo]
    mid_wx = cwx[hi] - cwx[lo]
    if queries_below:  # H = (x - q + delta) / 2 delta on the ramp, 1 above it
        ramp = (mid_wx - (q - delta) * mid_w) / (2 * delta)
        full = cw[-1] - cw[hi]
    else:  # H = (q - x + delta) / 2 delta on the ramp, 1 below it
        ramp = ((q + delta) * mid_w - mid_wx) / (2 * delta)
        full = cw[lo]
    return (ramp + full).to(queries.dtype)


def _search_sorted_queries(x: torch.Tensor, q: torch.Tensor, *, right: bool) -> torch.Tensor:
    """``torch.searchsorted(x, q, right=right)`` for ascending ``q``: each of the few points
    ``x`` is placed among the many queries, and the counts are accumulated (O(P log Q + Q))."""
    pos = torch.searchsorted(q, x, right=not right)
    return torch.cumsum(torch.bincount(pos, minlength=q.numel() + 1), 0)[: q.numel()]


def gap_gradient(
    scores: torch.Tensor,
    labels: torch.Tensor,
    class_weight: torch.Tensor,
    *,
    delta: float,
    own_rank: float,
    exclude_fg: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The error-driven gradient of Eq. 11 (without ``lambda_gap``), vectorised.

    Args:
        scores: ``[N, C]`` ranked scores, column ``j`` is label ``j + 1``.
        labels: ``[N]`` long in ``0..C``, at least one foreground.
        class_weight: ``[C]`` ``w_m``.
        delta: margin of ``H`` (Eq. 5).
        own_rank: ``o``, the positive's own term in ``R+`` (code 0.5, paper 1).
        exclude_fg: the negatives of class ``m`` are ``N``, the entries that are positives
            of no class (ROG Table 4 "Excl. FG", Eq. 8); ``False``: ``N(m)``, every entry
            but the positives of ``m``, so the positives of the other classes are ranked
            against those of ``m`` too, and take a negative's update for it.

    Returns:
        ``([N, C] gradient, [P] ranking error sum_j L_ij, [P] 1 / (|P(m)| |C^|))``.
    """
    s = scores.detach()
    n, c = s.shape
    rows = torch.nonzero(labels > 0).squeeze(1)
    cols = labels[rows] - 1
    s_pos = s[rows, cols]
    per_class = torch.bincount(cols, minlength=c)
    norm = 1.0 / (per_class[cols] * (per_class > 0).sum()).to(s.dtype)
    coef = class_weight.to(s.dtype)[cols] * norm

    h_pp = ((s_pos[None, :] - s_pos[:, None]) / (2 * delta) + 0.5).clamp(0.0, 1.0)
    same = cols[:, None] == cols[None, :]
    same.fill_diagonal_(False)
    r_plus = own_rank + (h_pp * same).sum(1)

    neg = torch.ones(n, c, dtype=torch.bool, device=s.device)
    neg[rows, cols] = False
    flat = s.reshape(-1)
    # Entries below min(positive) - delta have H = 0 against every positive (the code's cut).
    neg_idx = torch.nonzero(neg.reshape(-1) & (flat >= s_pos.min() - delta)).squeeze(1)
    s_neg, order = torch.sort(flat[neg_idx])
    neg_idx = neg_idx[order]
    fp = _ramp_sums(
        s_neg, torch.ones_like(s_neg), s_pos, delta, queries_below=True, sorted_input="points"
    )
    # without Excl. FG the positives of the other classes are negatives of m as well:
    # P x P, as R+ already is
    fg_negative = (cols[:, None] != cols[None, :]).to(s.dtype) * h_pp if not exclude_fg else None
    if fg_negative is not None:
        fp = fp + fg_negative.sum(1)
    live = (fp > _ACTIVE_EPS).to(s.dtype)
    a = coef * live / (r_plus + fp)
    g_neg = _ramp_sums(s_pos, a, s_neg, delta, queries_below=False, sorted_input="queries")
    error = fp / (r_plus + fp)
    grad = torch.zeros_like(flat)
    grad[neg_idx] = g_neg
    grad = grad.reshape(n, c)
    g_pos = -coef * error * live
    if fg_negative is not None:  # a positive of n as a negative of every other class m
        g_pos = g_pos + (a[:, None] * fg_negative).sum(0)
    grad[rows, cols] = g_pos
    return grad, error, norm


__all__ = ["gap_class_weight", "gap_gradient"]
