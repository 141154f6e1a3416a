"""C2AM: Category-Aware Angular Margin loss (Wang et al., "C2AM Loss: Chasing a Better
Decision Boundary for Long-Tail Object Detection", CVPR 2022).

Implements Eq. 5-7: a cosine classifier with scale ``s`` whose softmax adds, for a RoI of
class ``i``, an angular margin ``m_ij`` to every non-target class ``j``:

    L = -log( e^{s cos(theta_i)} / (e^{s cos(theta_i)} + sum_{j != i} e^{s cos(theta_j + m_ij)}) )
    m_ij = max(0, alpha / pi * log(||W_i|| / ||W_j||))                                  (Eq. 7)

The norms are those of the raw classifier weight, detached (Sec. 3.2: "we detach the
gradients of W_i, W_j when calculating the margin"). ``alpha = 0`` is the plain cosine
softmax of Eq. 5. ``margin="fixed"`` is Table 5's control: every ``m_ij`` (j != i) is the
constant ``fixed_margin`` (the paper tunes it but does not print its value; our default
0.1 rad is a choice, not the paper's).

Shape shorthand: N RoIs, C foreground classes, K = C + 1 logits, D feature channels.
Column 0 of the logits is background (torchvision's label 0), column ``j`` is label ``j``.

Choices the paper leaves open, made here and documented:

- ``background_margin`` (default ``True``): the background column is an ordinary class of
  Eq. 6-7, so background RoIs push margins onto foreground classes with smaller weight
  norms and foreground RoIs receive ``m_i0`` against background (what replacing the
  (C+1)-way cross-entropy of MMDetection's box head with Eq. 6 does). ``False`` sets every
  margin involving background (``m_0j`` and ``m_i0``) to zero.
- ``theta_j + m_ij`` is capped at ``pi`` so that a margin never raises a non-target logit
  (``cos`` is decreasing only on ``[0, pi]``); the cap only touches classes at
  ``cos(theta_j) ~ -1`` whose softmax weight is ``~e^{-2s}``.
- ``theta = acos(clamp(cos, -1 + eps, 1 - eps))`` keeps gradients finite at ``cos = +-1``.
- The loss is the mean over RoIs (MMDetection's cross-entropy default).

Context: ``weight`` ``[K, D]``, the raw classifier weight (needed for adaptive margins with
``alpha > 0``). Inference scores are ``softmax(s * cos)[:, 1:]`` (no margins).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from ltmodels.losses.base import LongTailLoss, register_loss
from ltmodels.losses.domains import DOMAINS

_ACOS_EPS = 1e-6
_NORM_EPS = 1e-12


def c2am_margins(
    weight: torch.Tensor, *, alpha: float, background_margin: bool = True
) -> torch.Tensor:
    """Adaptive angular margins of Eq. 7 from the (detached) norms of the classifier weight.

    Args:
        weight: ``[K, D]`` raw classifier weight, row 0 background.
        alpha: margin strength (Eq. 7).
        background_margin: whether margins involving row/column 0 are kept.

    Returns:
        ``[K, K]`` matrix ``m[i, j] = max(0, alpha / pi * log(||W_i|| / ||W_j||))``.
    """
    norms = weight.detach().norm(dim=1).clamp_min(_NORM_EPS)
    log_n = norms.log()
    m = (alpha / math.pi * (log_n[:, None] - log_n[None, :])).clamp_min(0.0)
    if not background_margin:
        m[0, :] = 0.0
        m[:, 0] = 0.0
    return m


@register_loss("c2am")
class C2AMLoss(LongTailLoss):
    """Category-aware angular margin softmax loss (C2AM Eq. 5-7) on a cosine classifier."""

    predictor: ClassVar[str] = "cosine"
    params = DOMAINS["c2am"]

    def __init__(
        self,
        *,
        num_classes: int,
        s: float = 30.0,
        alpha: float = 0.5,
        margin: str = "adaptive",
        fixed_margin: float = 0.1,
        background_margin: bool = True,
    ) -> None:
        super().__init__(num_classes=num_classes)
        self.s = float(s)
        self.alpha = float(alpha)
        self.margin = margin
        self.fixed_margin = float(fixed_margin)
        self.background_margin = bool(background_margin)

    @classmethod
    def num_logits(cls, num_classes: int) -> int:
        return num_classes + 1

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        """``softmax(s * cos)[:, 1:]``: ``[N, C]`` foreground probabilities."""
        return torch.softmax(self.s * _at_least_f32(logits), dim=1)[:, 1:]

    def margins(self, weight: torch.Tensor | None, k: int, device: torch.device) -> torch.Tensor:
        """``[K, K]`` margin matrix (zero diagonal) for the configured margin type."""
        if self.margin == "fixed":
            m = torch.full((k, k), self.fixed_margin, device=device)
            m.fill_diagonal_(0.0)
            if not self.background_margin:
                m[0, :] = 0.0
                m[:, 0] = 0.0
            return m
        if self.alpha == 0.0:
            return torch.zeros(k, k, device=device)
        if weight is None:
            raise ValueError("c2am with adaptive margins needs the context keyword `weight`")
        if weight.dim() != 2 or weight.shape[0] != k:
            raise ValueError(f"c2am: weight must be [{k}, D], got {list(weight.shape)}")
        return c2am_margins(
            _at_least_f32(weight), alpha=self.alpha, background_margin=self.background_margin
        )

    def forward(  # type: ignore[override]
        self, logits: torch.Tensor, labels: torch.Tensor, **context: Any
    ) -> dict[str, torch.Tensor]:
        """C2AM loss (Eq. 6) averaged over RoIs.

        Args:
            logits: ``[N, K]`` cosine similarities, column 0 background.
            labels: ``[N]`` long in ``0..C``.
            **context: ``weight`` ``[K, D]`` raw classifier weight.

        Returns:
            ``{"loss_cls": scalar}``.
        """
        self.check_inputs(logits, labels)
        cos = _at_least_f32(logits)
        labels = labels.long()
        n, k = cos.shape
        if n == 0:
            return {"loss_cls": cos.sum() * 0.0}
        m = self.margins(context.get("weight"), k, cos.device).to(cos.dtype)[labels]  # [N, K]
        theta = torch.acos(cos.clamp(-1.0 + _ACOS_EPS, 1.0 - _ACOS_EPS))
        shifted = torch.cos(torch.clamp(theta + m, max=math.pi))
        # m[i, y_i] == 0, so the target column keeps cos(theta_i) itself (not its clamp).
        z = torch.where(m > 0, shifted, cos)
        loss = F.cross_entropy(self.s * z, labels)
        return {"loss_cls": loss}


def _at_least_f32(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


__all__ = ["C2AMLoss", "c2am_margins"]
