"""GAP: Generalized Average Precision loss (Zhang et al., "Reconciling Object-Level and
Global-Level Objectives for Long-Tail Detection", ICCV 2023; ROG), added to a
classification loss.

Implements Eq. 5-11. Over the batch's score matrix, ``P(m)`` are the positive entries of
class ``m`` (the RoIs labelled ``m``, column ``m``) and ``N`` every entry that is not a
positive of any class (Sec. 3.3, "Excl. FG"). With the ranking function

    H(i, j) = clamp((s_j - s_i) / (2 delta) + 1/2, 0, 1)                             (Eq. 5)
    R+(i) = o + sum_{j in P(m), j != i} H(i, j),   R(i) = R+(i) + sum_{j in N} H(i, j)  (6, 7)
    L_ij = H(i, j) / R(i)
    w_m = C (1 / n_m)^gamma / sum_k (1 / n_k)^gamma                                     (Eq. 9)
    L_gap = 1/|C^| sum_{m in C^} w_m / |P(m)| sum_{i in P(m)} sum_{j in N} L_ij         (Eq. 8)

where ``C^`` are the foreground classes present in the batch and ``n_m`` the number of RoIs
of class ``m`` seen so far (buffer ``counts``, clamped at 1). The loss is trained with the
error-driven update of Eq. 11, not with autograd of Eq. 8: a custom autograd function whose
backward returns, times ``lambda_gap`` (Eq. 10),

    g_k = -1/|C^| w_m / |P(m)| sum_{j in N} L_kj          for a positive k of class m
    g_k =  1/|C^| sum_m w_m / |P(m)| sum_{i in P(m)} L_ik  for a negative k.

The positive update of an entry whose row has no negative above it (``sum_j H < 1e-10``)
is skipped, as in the code. The term is returned as ``loss_gap`` next to the base loss's
terms; a batch without foreground gives a zero ``loss_gap``.

``variant="code"`` (default) is the released code (EricZsy/ROG ``gap_loss.py`` and
``ROGShared2FCBBoxHead``): a positive's own rank term counts ``o = 1/2`` (H(i, i));
the scores ranked are the raw logits of the C foreground columns
(:meth:`LongTailLoss.foreground_logits` of the base); the logged value is the mean ranking
error ``1/|C^| sum_m 1/|P(m)| sum_i sum_j L_ij``, without ``w_m`` and ``lambda_gap``
(the gradient uses both). ``variant="paper"``: ``o = 1`` (Eq. 6-7), the ranked scores are
the base's inference probabilities ``scores(logits)`` (Sec. 3.1; the gradient reaches the
logits through them by the chain rule), the value is ``lambda_gap * L_gap`` of Eq. 8.

Counts are updated with the batch before the loss, in training mode. They are summed over
DDP workers (``all_reduce_sum``) so that 2 workers on halves of a batch keep the same
counts as 1 worker on the whole batch; the code counts per worker. ``|C^|`` and ``|P(m)|``
are per worker, as in the code (DDP averages the workers' gradients).

Shape shorthand: N RoIs, C foreground classes, K = ``base.num_logits(C)``, P positives,
Q negatives ranked against them. Labels follow torchvision (0 background). The base loss
(``base``, built with its defaults) fixes the column layout: ``num_logits`` and ``scores``
are the base's, and every context keyword goes to it.
"""

from __future__ import annotations

from typing import Any

import torch

from ltmodels.engine.distributed import all_reduce_sum
from ltmodels.losses.base import LongTailLoss, build_loss, register_loss, registry, upcast
from ltmodels.losses.domains import DOMAINS

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
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The error-driven gradient of Eq. 11 (without ``lambda_gap``), vectorised.

    Args:
        scores: ``[N, C]`` ranked scores, column ``j`` is label ``j + 1``.
        labels: ``[N]`` long in ``0..C``, at least one foreground.
        class_weight: ``[C]`` ``w_m``.
        delta: margin of ``H`` (Eq. 5).
        own_rank: ``o``, the positive's own term in ``R+`` (code 0.5, paper 1).

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
    live = (fp > _ACTIVE_EPS).to(s.dtype)
    a = coef * live / (r_plus + fp)
    g_neg = _ramp_sums(s_pos, a, s_neg, delta, queries_below=False, sorted_input="queries")
    error = fp / (r_plus + fp)
    grad = torch.zeros_like(flat)
    grad[neg_idx] = g_neg
    grad = grad.reshape(n, c)
    grad[rows, cols] = -coef * error * (fp > _ACTIVE_EPS).to(s.dtype)
    return grad, error, norm


class _GAPFunction(torch.autograd.Function):
    """Value of Eq. 8 (or the code's logged value) forward, Eq. 11 times lambda backward."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        scores: torch.Tensor,
        labels: torch.Tensor,
        class_weight: torch.Tensor,
        delta: float,
        own_rank: float,
        lam: float,
        weighted_value: bool,
    ) -> torch.Tensor:
        grad, error, norm = gap_gradient(
            scores, labels, class_weight, delta=delta, own_rank=own_rank
        )
        ctx.save_for_backward(grad * lam)
        if weighted_value:
            w = class_weight.to(error.dtype)[labels[labels > 0] - 1]
            return lam * (w * error * norm).sum()
        return (error * norm).sum()

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        (grad,) = ctx.saved_tensors
        return grad * grad_out, None, None, None, None, None, None


class _BaseWidth:
    """``num_logits``: an instance answers for its base; the class for the default base."""

    def __get__(self, obj: Any, objtype: Any = None) -> Any:
        if obj is None:
            return registry()[GAPLoss.params["base"].default].num_logits
        return obj.base.num_logits


@register_loss("gap")
class GAPLoss(LongTailLoss):
    """A base classification loss plus ROG's generalized average precision term."""

    params = DOMAINS["gap"]
    num_logits = _BaseWidth()  # type: ignore[assignment]

    counts: torch.Tensor
    base: LongTailLoss

    def __init__(
        self,
        *,
        num_classes: int,
        delta: float = 0.5,
        gamma: float = 1.0,
        lambda_gap: float = 1.0,
        base: str = "bce",
        variant: str = "code",
    ) -> None:
        super().__init__(num_classes=num_classes)
        self.delta = float(delta)
        self.gamma = float(gamma)
        self.lambda_gap = float(lambda_gap)
        self.variant = variant
        self.base = build_loss(base, num_classes=num_classes)
        # RoIs seen per label (entry 0 background), summed over workers; int64 stays exact.
        self.register_buffer("counts", torch.zeros(num_classes + 1, dtype=torch.long))

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        """The base loss's ``[N, C]`` inference probabilities."""
        return self.base.scores(logits)

    def foreground_logits(self, logits: torch.Tensor) -> torch.Tensor:
        return self.base.foreground_logits(logits)

    def set_class_stats(self, image_counts: torch.Tensor, num_images: int) -> None:
        """Passed on to the base loss (GAP itself counts online)."""
        self.base.set_class_stats(image_counts, num_images)

    def class_weight(self) -> torch.Tensor:
        """``[C]`` ``w_m`` of Eq. 9 from the counts so far."""
        return gap_class_weight(self.counts[1:], self.gamma)

    def forward(  # type: ignore[override]
        self, logits: torch.Tensor, labels: torch.Tensor, **context: Any
    ) -> dict[str, torch.Tensor]:
        """The base loss's terms plus ``loss_gap``.

        Args:
            logits: ``[N, K]`` in the base loss's layout.
            labels: ``[N]`` long in ``0..C``.
            **context: passed to the base loss.

        Returns:
            The base's terms and ``"loss_gap"`` (scalars).
        """
        self.check_inputs(logits, labels)
        labels = labels.long()
        terms = dict(self.base(logits, labels, **context))
        if "loss_gap" in terms:
            raise RuntimeError(f"gap: base loss {self.base.name!r} already returns loss_gap")
        if self.training:
            batch = torch.bincount(labels, minlength=self.num_classes + 1)
            self.counts += all_reduce_sum(batch).to(self.counts.device)
        if self.variant == "code":
            s = upcast(self.base.foreground_logits(logits))
        else:
            s = upcast(self.base.scores(logits))
        if not bool((labels > 0).any()):
            terms["loss_gap"] = s.sum() * 0.0
            return terms
        own = 0.5 if self.variant == "code" else 1.0
        terms["loss_gap"] = _GAPFunction.apply(
            s,
            labels,
            self.class_weight().to(s.dtype),
            self.delta,
            own,
            self.lambda_gap,
            self.variant == "paper",
        )
        return terms


__all__ = ["GAPLoss", "gap_class_weight", "gap_gradient"]
