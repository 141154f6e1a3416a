"""Sigmoid binary cross-entropy with a trained background column (the sigmoid baseline of
Tan et al., "Equalization Loss for Long-Tailed Object Recognition", CVPR 2020, Eq. 1, and
of ACSL/EQLv2 before their re-weighting).

    y_ij = 1[j == y_i]                          (one-hot over all K = C + 1 columns)
    L = (1 / N) * sum_i sum_{j=0..C} BCE(z_ij, y_ij)

i.e. the per-column BCE terms are summed over classes and averaged over RoIs (not over
``N * K`` entries, which would shrink the loss by ``K``).

Shape shorthand: N RoIs, C foreground classes, K = C + 1 logits. Column 0 is a trained
background column: a background RoI has target 1 there and 0 elsewhere; a foreground RoI
of label ``j`` has target 1 in column ``j`` only. Inference scores are
``sigmoid(z)[:, 1:]`` (the background column is not used at inference). Computed in float32
(float64 inputs stay float64).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ltmodels.losses.base import LongTailLoss, register_loss, upcast


@register_loss("bce")
class BinaryCrossEntropyLoss(LongTailLoss):
    """Sigmoid BCE over C + 1 columns (column 0 background), summed over classes, mean over
    RoIs; no hyperparameters."""

    def __init__(self, *, num_classes: int) -> None:
        super().__init__(num_classes=num_classes)

    @classmethod
    def num_logits(cls, num_classes: int) -> int:
        return num_classes + 1

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(upcast(logits[:, 1:]))

    def forward(  # type: ignore[override]
        self, logits: torch.Tensor, labels: torch.Tensor, **context: Any
    ) -> dict[str, torch.Tensor]:
        """Args: logits ``[N, C + 1]``, labels ``[N]`` in ``0..C``. Returns ``loss_cls``."""
        self.check_inputs(logits, labels)
        z = upcast(logits)
        # BCE(z, 0) = softplus(z), BCE(z, 1) = softplus(z) - z, one positive per row: half
        # the work of binary_cross_entropy_with_logits on an explicit one-hot target.
        own = z.gather(1, labels.long()[:, None])
        loss = F.softplus(z).sum() - own.sum()
        return {"loss_cls": loss / max(z.shape[0], 1)}
