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

ROG Table 4's design switches (defaults: both on, the full design and the released code):
``online=False`` takes ``n_m`` from the dataset instead of counting it ("Online" x: "the
pre-defined category distribution from dataset", Sec. 4.2), here the number of training
images containing class ``m`` given to :meth:`set_class_stats` (the paper does not say
whether images or instances are counted; only the distribution matters, Eq. 9 normalises).
``exclude_fg=False`` ranks the positives of ``m`` against ``N(m)``, every entry but the
positives of ``m``, instead of ``N`` ("Excl. FG" x): the positives of the other classes
become negatives of ``m`` (sum over ``j in N(m)`` in Eq. 7, 8 and 11). ``gamma = 0`` gives
every ``w_m = 1``, Table 4's "omega" x.

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
from ltmodels.losses.gap_ranking import gap_class_weight, gap_gradient


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
        exclude_fg: bool,
    ) -> torch.Tensor:
        grad, error, norm = gap_gradient(
            scores, labels, class_weight, delta=delta, own_rank=own_rank, exclude_fg=exclude_fg
        )
        ctx.save_for_backward(grad * lam)
        if weighted_value:
            w = class_weight.to(error.dtype)[labels[labels > 0] - 1]
            return lam * (w * error * norm).sum()
        return (error * norm).sum()

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        (grad,) = ctx.saved_tensors
        return grad * grad_out, None, None, None, None, None, None, None


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
        online: bool = True,
        exclude_fg: bool = True,
    ) -> None:
        super().__init__(num_classes=num_classes)
        self.delta = float(delta)
        self.gamma = float(gamma)
        self.lambda_gap = float(lambda_gap)
        self.variant = variant
        self.online = bool(online)
        self.exclude_fg = bool(exclude_fg)
        self.base = build_loss(base, num_classes=num_classes)
        # online: RoIs seen per label (entry 0 background), summed over workers (int64 stays
        # exact); offline: the training images of each class, from set_class_stats
        self.register_buffer("counts", torch.zeros(num_classes + 1, dtype=torch.long))

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        """The base loss's ``[N, C]`` inference probabilities."""
        return self.base.scores(logits)

    def foreground_logits(self, logits: torch.Tensor) -> torch.Tensor:
        return self.base.foreground_logits(logits)

    def set_class_stats(self, image_counts: torch.Tensor, num_images: int) -> None:
        """Passed on to the base loss; with ``online=False`` the class sizes of Eq. 9 too
        (``image_counts``: ``[C]`` training images containing each class)."""
        self.base.set_class_stats(image_counts, num_images)
        if not self.online:
            sizes = torch.as_tensor(image_counts).round().long().flatten()
            if sizes.numel() != self.num_classes:
                raise ValueError(f"gap: {sizes.numel()} class counts for {self.num_classes}")
            self.counts[0] = 0
            self.counts[1:] = sizes.to(self.counts.device)

    def class_weight(self) -> torch.Tensor:
        """``[C]`` ``w_m`` of Eq. 9 from the counts (online: so far; offline: the dataset's)."""
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
        if self.training and self.online:
            batch = torch.bincount(labels, minlength=self.num_classes + 1)
            self.counts += all_reduce_sum(batch).to(self.counts.device)
        elif not self.online and not bool(self.counts.any()):
            raise RuntimeError("gap (online=False): class sizes unset; call set_class_stats()")
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
            self.exclude_fg,
        )
        return terms


__all__ = ["GAPLoss", "gap_class_weight", "gap_gradient"]
