"""Equalization Loss v2 (Tan et al., "Equalization Loss v2: A New Gradient Balance Approach
for Long-Tailed Object Detection", CVPR 2021, Sec. 3: gradient-guided re-weighting), as in
MMDetection's ``EQLV2Loss``.

Sigmoid BCE where class ``j`` weights its positive and negative terms by (paper notation)

    g_j = (accumulated |dL/dz| of j's positives) / (accumulated |dL/dz| of j's negatives)
    f(x) = 1 / (1 + exp(-gamma * (x - mu)))
    r_j = f(g_j)                      weight of j's negative terms
    q_j = 1 + alpha * (1 - f(g_j))    weight of j's positive terms
    L = (1 / N) * sum_i sum_j w_ij * BCE(z_ij, y_ij),  w_ij = q_j if y_ij = 1 else r_j

``g`` comes from the statistics of **earlier** iterations: the accumulated positive and
negative gradient magnitudes ``|sigmoid(z) - y|``, each multiplied by the weight it was
trained with (the code's ``collect_grad``), are added after this batch's loss is computed.
They accumulate from iteration 0 and are summed over DDP workers
(:func:`ltmodels.engine.distributed.all_reduce_sum`). Until the first update every weight is
exactly 1 (the code starts from ``g = 100``, which gives 1 for its default gamma; we use an
update counter, which gives 1 for any gamma). Statistics are updated in training mode only.

Shape shorthand: N RoIs, C foreground classes, K = C + 1 logits. Column 0 is the
background ("objectness") column of the code (its last column there): target 1 for
background RoIs, weight 1, no statistics. Column ``j`` is label ``j``. Inference scores
are ``sigmoid(z_j) * (1 - sigmoid(z_0))`` (the code's ``test_with_obj=True``). Computed in
float32 (float64 inputs stay float64).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ltmodels.engine.distributed import all_reduce_sum
from ltmodels.losses.base import LongTailLoss, register_loss, upcast
from ltmodels.losses.domains import DOMAINS

_EPS = 1e-10


@register_loss("eqlv2")
class EqualizationLossV2(LongTailLoss):
    """Gradient-balanced sigmoid BCE with an objectness column.

    Args:
        num_classes: C.
        gamma: slope of the mapping ``f``.
        mu: centre of the mapping ``f``.
        alpha: strength of the positive up-weighting ``q_j``.
    """

    params = DOMAINS["eqlv2"]

    pos_grad: torch.Tensor
    neg_grad: torch.Tensor
    num_updates: torch.Tensor

    def __init__(
        self, *, num_classes: int, gamma: float = 12.0, mu: float = 0.8, alpha: float = 4.0
    ) -> None:
        super().__init__(num_classes=num_classes)
        self.gamma = float(gamma)
        self.mu = float(mu)
        self.alpha = float(alpha)
        self.register_buffer("pos_grad", torch.zeros(self.num_classes))
        self.register_buffer("neg_grad", torch.zeros(self.num_classes))
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    @classmethod
    def num_logits(cls, num_classes: int) -> int:
        return num_classes + 1

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        p = torch.sigmoid(upcast(logits))
        return p[:, 1:] * (1.0 - p[:, :1])

    def class_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Positive and negative weights ``[K]`` from the statistics so far (column 0 is 1)."""
        g = self.pos_grad / (self.neg_grad + _EPS)
        # Before the first update every weight is 1 (the code's initial g = 100 does this
        # for its default gamma; torch.where does it for any gamma, without a host sync).
        neg = torch.where(
            self.num_updates > 0, torch.sigmoid(self.gamma * (g - self.mu)), torch.ones_like(g)
        )
        pos = 1.0 + self.alpha * (1.0 - neg)
        one = neg.new_ones(1)
        return torch.cat([one, pos]), torch.cat([one, neg])

    def forward(  # type: ignore[override]
        self, logits: torch.Tensor, labels: torch.Tensor, **context: Any
    ) -> dict[str, torch.Tensor]:
        """Args: logits ``[N, C + 1]``, labels ``[N]`` in ``0..C``. Returns ``loss_cls``."""
        self.check_inputs(logits, labels)
        z = upcast(logits)
        y = labels.long()
        pos_w, neg_w = (w.to(z.dtype) for w in self.class_weights())
        # sum_ij w_ij BCE_ij with BCE(z, 0) = softplus(z), BCE(z, 1) = softplus(z) - z:
        # every entry as a weighted negative (one mat-vec), then swap each row's own column
        # to a weighted positive. Same value as the code's weighted BCE, without [N, K]
        # target and weight tensors.
        sp = F.softplus(z)
        sp_own = sp.gather(1, y[:, None]).squeeze(1)
        z_own = z.gather(1, y[:, None]).squeeze(1)
        loss = (sp @ neg_w).sum() + (pos_w[y] * (sp_own - z_own) - neg_w[y] * sp_own).sum()
        loss = loss / max(z.shape[0], 1)
        if self.training:
            self._collect_grad(z.detach(), y, pos_w, neg_w)
        return {"loss_cls": loss}

    @torch.no_grad()
    def _collect_grad(
        self, z: torch.Tensor, y: torch.Tensor, pos_w: torch.Tensor, neg_w: torch.Tensor
    ) -> None:
        """Add this batch's weighted gradient magnitudes |sigmoid(z) - y| * w per class."""
        p = torch.sigmoid(z)
        p_own = p.gather(1, y[:, None]).squeeze(1)
        k = z.shape[1]
        pos = z.new_zeros(k).index_add_(0, y, 1.0 - p_own) * pos_w
        neg = (p.sum(0) - z.new_zeros(k).index_add_(0, y, p_own)) * neg_w
        # column 0 (objectness) keeps no statistics
        both = all_reduce_sum(torch.stack([pos[1:], neg[1:]]).to(self.pos_grad.dtype))
        self.pos_grad += both[0]
        self.neg_grad += both[1]
        self.num_updates += 1
