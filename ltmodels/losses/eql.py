"""Equalization Loss (Tan et al., "Equalization Loss for Long-Tailed Object Recognition",
CVPR 2020, Sec. 3.2), as in the authors' released code (eql.detectron2).

    y_ij = 1[j == y_i],  p_ij = sigmoid(z_ij)
    w_ij = 1 - E(r_i) * T_lambda(f_j) * (1 - y_ij)
    L = (1 / N) * sum_i sum_j w_ij * BCE(z_ij, y_ij)

``E(r) = 1`` for a foreground RoI and 0 for background; ``T_lambda(f) = 1[f < lambda]``
with ``f_j`` the fraction of training images that contain class ``j`` (LVIS's
``image_count / num_images``); ``lambda = 1.76e-3`` is the value the paper selects on LVIS
v0.5 and AHRL reuses. So a foreground RoI does not push down the logits of rare classes;
background RoIs still suppress every class. The sum runs over classes and the mean over
RoIs (the released code's ``sum(...) / n_i``).

Shape shorthand: N RoIs, C foreground classes, K = C logits. As in the released code there
is **no background column**: column ``j`` is label ``j + 1``, and a background RoI (label 0)
has an all-zero target. Inference scores are ``sigmoid(z)``. (The released code also
initialises the classifier bias to ``-log((1 - 0.001) / 0.001)``; that is the predictor's
business, not the loss's.)

Class frequencies come from :meth:`set_class_stats`, which the detector calls after
building the loss; they live in the buffer ``image_freq`` (checkpointed), and a forward
without them raises. Computed in float32 (float64 inputs stay float64).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ltmodels.losses.base import LongTailLoss, image_frequency, register_loss, upcast
from ltmodels.losses.domains import DOMAINS


@register_loss("eql")
class EqualizationLoss(LongTailLoss):
    """Sigmoid BCE over C columns that ignores rare-class negatives of foreground RoIs.

    Args:
        num_classes: C.
        lambda_: frequency threshold ``lambda`` of ``T_lambda``: classes present in fewer
            than this fraction of training images are not suppressed by foreground RoIs.
    """

    params = DOMAINS["eql"]

    image_freq: torch.Tensor

    def __init__(self, *, num_classes: int, lambda_: float = 1.76e-3) -> None:
        super().__init__(num_classes=num_classes)
        self.lambda_ = float(lambda_)
        self.register_buffer("image_freq", torch.full((self.num_classes,), float("nan")))

    @classmethod
    def num_logits(cls, num_classes: int) -> int:
        return num_classes

    def set_class_stats(self, image_counts: torch.Tensor, num_images: int) -> None:
        self.image_freq.copy_(image_frequency(self, image_counts, num_images))

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(upcast(logits))

    def foreground_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """All C columns: this loss has no background column (column j is label j + 1)."""
        return logits[:, : self.num_classes]

    def forward(  # type: ignore[override]
        self, logits: torch.Tensor, labels: torch.Tensor, **context: Any
    ) -> dict[str, torch.Tensor]:
        """Args: logits ``[N, C]``, labels ``[N]`` in ``0..C``. Returns ``loss_cls``."""
        self.check_inputs(logits, labels)
        if bool(torch.isnan(self.image_freq).any()):
            raise RuntimeError("eql: class frequencies unset; call set_class_stats() first")
        z = upcast(logits)
        labels = labels.long()
        fg = (labels > 0).to(z.dtype)
        col = (labels - 1).clamp(min=0)[:, None]  # own column (unused for background)
        tail = (self.image_freq < self.lambda_).to(z.dtype)
        # BCE(z, 0) = softplus(z), BCE(z, 1) = softplus(z) - z. Take every entry as a
        # negative, drop the tail negatives of foreground rows (one mat-vec instead of
        # [N, C] weight tensors), then make each foreground row's own column a positive
        # of weight 1.
        sp = F.softplus(z)
        sp_own = sp.gather(1, col).squeeze(1)
        z_own = z.gather(1, col).squeeze(1)
        loss = (
            sp.sum() - (fg * (sp @ tail)).sum() + (fg * (tail[col[:, 0]] * sp_own - z_own)).sum()
        )
        return {"loss_cls": loss / max(z.shape[0], 1)}
