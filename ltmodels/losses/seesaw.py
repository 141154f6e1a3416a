"""Seesaw Loss (Wang et al., "Seesaw Loss for Long-Tailed Instance Segmentation", CVPR 2021,
Sec. 3), as in MMDetection's ``SeesawLoss`` (with its objectness branch).

For a positive RoI of class ``i`` the class softmax re-weights every other class ``j``:

    sigma_i = e^{z_i} / (sum_{j != i} S_ij e^{z_j} + e^{z_i}),   S_ij = M_ij * C_ij
    M_ij = (N_j / N_i)^p  if N_j < N_i else 1     mitigation factor, N = class counts
    C_ij = (sigma_j / sigma_i)^q  if sigma_j > sigma_i else 1    compensation factor

with ``sigma`` in ``C_ij`` the plain class softmax (no gradient), ``sigma_i`` clamped below at
``eps`` and counts clamped below at 1 (the code's choices). Implemented as cross-entropy on
``z_j + log S_ij`` (``j != i``). A separate 2-way softmax (object vs background) is trained on
every RoI, and the class softmax on foreground RoIs only:

    L = (1 / N) * [ sum_{i fg} CE_seesaw(z^cls_i, y_i) + sum_i CE(z^obj_i, 1[y_i > 0]) ]

(both terms divided by the number of RoIs N, the code's ``avg_factor``). The class counts
``N`` are a buffer: each batch's foreground labels are counted (summed over DDP workers
with :func:`ltmodels.engine.distributed.all_reduce_sum`) and added **before** the loss is
computed, in training mode only.

Shape shorthand: N RoIs, C foreground classes, K = C + 2 logits. Column layout (the code
puts the C classes first and the objectness pair last; we keep column ``j`` = label ``j``):

- column 0: objectness logit of "background" (label 0);
- columns 1..C: class logits, column ``j`` is label ``j``;
- column C + 1: objectness logit of "object".

Inference scores are the code's ``softmax(z[:, 1:C+1]) * softmax([z_0, z_{C+1}])[object]``.
Computed in float32 (float64 inputs stay float64).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ltmodels.engine.distributed import all_reduce_sum
from ltmodels.losses.base import LongTailLoss, register_loss, upcast
from ltmodels.losses.domains import DOMAINS


def seesaw_logit_offsets(
    cls_logits: torch.Tensor,
    targets: torch.Tensor,
    counts: torch.Tensor,
    *,
    p: float,
    q: float,
    eps: float,
) -> torch.Tensor:
    """``log S_ij`` for every positive RoI, zero in its own class column.

    Args:
        cls_logits: ``[P, C]`` class logits of the foreground RoIs.
        targets: ``[P]`` their classes in ``0..C-1``.
        counts: ``[C]`` accumulated sample counts per class.
        p, q, eps: mitigation exponent, compensation exponent, floor of ``sigma_i``.

    Returns:
        ``[P, C]`` offsets (no gradient) to add to ``cls_logits``.
    """
    with torch.no_grad():
        log_s = cls_logits.new_zeros(cls_logits.shape)
        if p > 0:
            n = counts.to(cls_logits.dtype).clamp(min=1)
            ratio = n[None, :] / n[targets][:, None]
            log_s += torch.where(ratio < 1, p * ratio.log(), torch.zeros_like(ratio))
        if q > 0:
            sigma = F.softmax(cls_logits, dim=1)
            own = sigma.gather(1, targets[:, None]).clamp(min=eps)
            ratio = sigma / own
            log_s += torch.where(ratio > 1, q * ratio.log(), torch.zeros_like(ratio))
        # The own class keeps weight 1 (the code multiplies log S by 1 - onehot).
        return log_s.scatter(1, targets[:, None], 0.0)


@register_loss("seesaw")
class SeesawLoss(LongTailLoss):
    """Seesaw class softmax on foreground RoIs plus a 2-way objectness softmax.

    Args:
        num_classes: C.
        p: mitigation exponent; 0 turns mitigation off.
        q: compensation exponent; 0 turns compensation off.
        eps: floor of the own-class probability in the compensation ratio.
    """

    params = DOMAINS["seesaw"]

    cum_samples: torch.Tensor

    def __init__(
        self, *, num_classes: int, p: float = 0.8, q: float = 2.0, eps: float = 1e-2
    ) -> None:
        super().__init__(num_classes=num_classes)
        self.p = float(p)
        self.q = float(q)
        self.eps = float(eps)
        # int64: exact however long training runs (float32 stops counting at 2**24).
        self.register_buffer("cum_samples", torch.zeros(self.num_classes, dtype=torch.long))

    @classmethod
    def num_logits(cls, num_classes: int) -> int:
        return num_classes + 2

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        z = upcast(logits)
        c = self.num_classes
        p_object = torch.sigmoid(z[:, c + 1] - z[:, 0])  # 2-way softmax, "object" entry
        return F.softmax(z[:, 1 : c + 1], dim=1) * p_object[:, None]

    def forward(  # type: ignore[override]
        self, logits: torch.Tensor, labels: torch.Tensor, **context: Any
    ) -> dict[str, torch.Tensor]:
        """Args: logits ``[N, C + 2]``, labels ``[N]`` in ``0..C``.

        Returns ``loss_cls_classes`` and ``loss_cls_objectness``.
        """
        self.check_inputs(logits, labels)
        c = self.num_classes
        z = upcast(logits)
        labels = labels.long()
        if self.training:
            batch = torch.bincount(labels, minlength=c + 1)[1:]
            self.cum_samples += all_reduce_sum(batch)
        n = max(z.shape[0], 1)

        pos = labels > 0
        cls_logits = z[pos, 1 : c + 1]
        targets = labels[pos] - 1
        offsets = seesaw_logit_offsets(
            cls_logits.detach(), targets, self.cum_samples, p=self.p, q=self.q, eps=self.eps
        )
        loss_classes = F.cross_entropy(cls_logits + offsets, targets, reduction="sum") / n

        obj_logits = torch.stack([z[:, 0], z[:, c + 1]], dim=1)
        loss_obj = F.cross_entropy(obj_logits, pos.long(), reduction="sum") / n
        return {"loss_cls_classes": loss_classes, "loss_cls_objectness": loss_obj}
