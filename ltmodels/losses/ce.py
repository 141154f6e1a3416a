"""Softmax cross-entropy: the standard Mask R-CNN box classifier loss (torchvision's
``fastrcnn_loss``; Girshick, "Fast R-CNN", ICCV 2015, Eq. 1's ``L_cls``).

    L = (1 / N) * sum_i -log softmax(z_i)[y_i]

Shape shorthand: N RoIs, C foreground classes, K = C + 1 logits. Column 0 is background
(torchvision's label 0), column ``j`` is label ``j``. Inference scores are
``softmax(z)[:, 1:]``. The loss is the mean over RoIs and is computed in float32 whatever
the logits' dtype.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ltmodels.losses.base import LongTailLoss, register_loss, upcast


@register_loss("ce")
class CrossEntropyLoss(LongTailLoss):
    """(C+1)-way softmax cross-entropy averaged over RoIs; no hyperparameters."""

    def __init__(self, *, num_classes: int) -> None:
        super().__init__(num_classes=num_classes)

    @classmethod
    def num_logits(cls, num_classes: int) -> int:
        return num_classes + 1

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        return F.softmax(upcast(logits), dim=1)[:, 1:]

    def forward(  # type: ignore[override]
        self, logits: torch.Tensor, labels: torch.Tensor, **context: Any
    ) -> dict[str, torch.Tensor]:
        """Args: logits ``[N, C + 1]``, labels ``[N]`` in ``0..C``. Returns ``loss_cls``."""
        self.check_inputs(logits, labels)
        return {"loss_cls": F.cross_entropy(upcast(logits), labels.long())}
