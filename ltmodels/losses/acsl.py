"""ACSL: Adaptive Class Suppression Loss (Wang et al., "Adaptive Class Suppression Loss for
Long-Tail Object Detection", CVPR 2021).

Implements Eq. 5-7: a sigmoid cross-entropy over every output in which a negative term
``-log(1 - p_i)`` is kept only where the network is confused, ``p_i >= xi`` (Eq. 6), so
its gradient is ``w_i p_i`` (Eq. 7); the ground-truth term is always kept. Background
RoIs follow Sec. 4.2: they are negatives of every frequent class, and a random 10% (1%)
of them are also negatives of every common (rare) class.

Shape shorthand: N RoIs, C foreground classes, K = C + 1 sigmoid outputs. Column 0 is
background (torchvision's label 0), column ``j`` is label ``j``. The loss is the sum of
the kept terms divided by N. Inference scores are ``sigmoid(logits[:, 1:])``.

``background="code"`` (default) is the released code (CASIA-IVA-Lab/ACSL ``acsl_loss``):

- a foreground RoI of label ``k``: target one-hot at column ``k``; weight 1 at column
  ``k`` and at every column with ``p >= xi``, background column 0 included;
- a background RoI: target 1 at column 0 with weight 1; the xi rule is not applied;
  weight 1 at every frequent column; ``floor(0.1 * n_bg)`` background RoIs drawn without
  replacement also get weight 1 at every common column, and ``floor(0.01 * n_bg)`` drawn
  independently at every rare column (the code draws background RoIs, one draw per group
  and batch; read "a random 10% of common classes" as "10% of the background RoIs keep
  the common classes' negatives").

``background="paper"`` is Eq. 5 as printed, which sums over the C categories only: the
background column takes part in no term (it gets no gradient and is not used at
inference); foreground RoIs apply Eq. 6 to the C foreground columns; background RoIs are
treated as above (the paper's Sec. 4.2 remark) minus the column-0 term.

Class groups come from :meth:`ACSLLoss.set_class_stats` (LVIS thresholds on the number of
training images containing the class: rare <= 10 < common <= 100 < frequent, as the code
reads LVIS's ``frequency`` field) or :meth:`ACSLLoss.set_groups`; they live in the buffer
``groups`` (-1 = unknown). Until either is called every class counts as frequent, so
background RoIs are negatives of every class (plain sigmoid CE for background), and a
warning says so once.

The random draws use a ``torch.Generator`` seeded from ``seed``, the number of earlier
draws (buffer ``draws``, checkpointed) and the DDP rank, so a trial is reproducible and
resumes with the same stream; the released code uses ``np.random``.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F

from ltmodels.engine.distributed import rank
from ltmodels.losses.base import LongTailLoss, register_loss, upcast
from ltmodels.losses.domains import DOMAINS

RARE, COMMON, FREQUENT = 0, 1, 2
# Fractions of background RoIs that keep the rare / common negatives (ACSL Sec. 4.2).
_RARE_FRACTION = 0.01
_COMMON_FRACTION = 0.1


def lvis_frequency_groups(image_counts: torch.Tensor) -> torch.Tensor:
    """LVIS frequency group of each class from its number of training images.

    Args:
        image_counts: ``[C]`` images containing each class (index ``j`` is label ``j + 1``).

    Returns:
        ``[C]`` long: 0 rare (<= 10 images), 1 common (11-100), 2 frequent (> 100).
    """
    counts = torch.as_tensor(image_counts).reshape(-1)
    groups = torch.full(counts.shape, FREQUENT, dtype=torch.long)
    groups[counts <= 100] = COMMON
    groups[counts <= 10] = RARE
    return groups


@register_loss("acsl")
class ACSLLoss(LongTailLoss):
    """Adaptive class suppression sigmoid loss (ACSL Eq. 5-7) with Sec. 4.2 background rule."""

    params = DOMAINS["acsl"]

    groups: torch.Tensor
    draws: torch.Tensor

    def __init__(
        self, *, num_classes: int, xi: float = 0.7, background: str = "code", seed: int = 0
    ) -> None:
        super().__init__(num_classes=num_classes)
        self.xi = float(xi)
        self.background = background
        self.seed = int(seed)
        self.register_buffer("groups", torch.full((num_classes,), -1, dtype=torch.long))
        self.register_buffer("draws", torch.zeros((), dtype=torch.long))
        self._warned = False

    @classmethod
    def num_logits(cls, num_classes: int) -> int:
        return num_classes + 1

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        """``sigmoid(logits[:, 1:])``: ``[N, C]`` foreground probabilities."""
        return torch.sigmoid(upcast(logits[:, 1:]))

    def set_groups(self, groups: torch.Tensor) -> None:
        """Set the frequency group (0 rare, 1 common, 2 frequent) of each class, ``[C]``."""
        groups = torch.as_tensor(groups, dtype=torch.long).reshape(-1)
        if groups.numel() != self.num_classes or bool(((groups < 0) | (groups > 2)).any()):
            raise ValueError(f"acsl: groups must be {self.num_classes} values in {{0, 1, 2}}")
        self.groups.copy_(groups.to(self.groups.device))

    def set_class_stats(self, image_counts: torch.Tensor, num_images: int) -> None:
        """Derive the class groups from training-image counts (``[C]``, label order).

        ``num_images`` is unused: the LVIS thresholds are absolute image counts.
        """
        self.set_groups(lvis_frequency_groups(image_counts))

    def _generator(self) -> torch.Generator:
        g = torch.Generator()
        # Mix seed, draw number and rank so that streams differ but are reproducible.
        g.manual_seed((self.seed * 1_000_003 + int(self.draws) * 7_919 + rank()) % 2**63)
        return g

    def weights(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The ``[N, K]`` 0/1 term weights ``w`` of Eq. 6 plus the background rule.

        Each call advances the random stream of the background-RoI draws.
        """
        z = logits.detach()
        n, k = z.shape
        fg = labels > 0
        w = torch.sigmoid(z) >= self.xi
        w[~fg] = False
        w[torch.arange(n, device=z.device), labels] = True  # ground truth (bg: column 0)
        bg_rows = torch.nonzero(~fg).squeeze(1)
        if bg_rows.numel() > 0:
            cols = torch.zeros(k, dtype=torch.bool, device=z.device)
            cols[1:] = (self.groups == FREQUENT) | (self.groups < 0)
            w[bg_rows] |= cols
            g = self._generator()
            for group, frac in ((RARE, _RARE_FRACTION), (COMMON, _COMMON_FRACTION)):
                take = int(bg_rows.numel() * frac)
                perm = torch.randperm(bg_rows.numel(), generator=g)[:take].to(z.device)
                cols = torch.zeros(k, dtype=torch.bool, device=z.device)
                cols[1:] = self.groups == group
                rows = bg_rows[perm]
                w[rows] |= cols
        self.draws += 1
        if self.background == "paper":
            w[:, 0] = False
        return w

    def forward(  # type: ignore[override]
        self, logits: torch.Tensor, labels: torch.Tensor, **context: Any
    ) -> dict[str, torch.Tensor]:
        """ACSL summed over kept terms and divided by the number of RoIs.

        Args:
            logits: ``[N, C + 1]``, column 0 background.
            labels: ``[N]`` long in ``0..C``.
            **context: unused.

        Returns:
            ``{"loss_cls": scalar}``.
        """
        self.check_inputs(logits, labels)
        z = upcast(logits)
        labels = labels.long()
        n = z.shape[0]
        if n == 0:
            return {"loss_cls": z.sum() * 0.0}
        if self.training and not self._warned and bool((self.groups < 0).any()):
            warnings.warn(
                "acsl: class groups were never set (call set_class_stats); every class is "
                "treated as frequent for background RoIs",
                stacklevel=2,
            )
            self._warned = True
        w = self.weights(z, labels).to(z.dtype)
        target = F.one_hot(labels, z.shape[1]).to(z.dtype)
        terms = F.binary_cross_entropy_with_logits(z, target, reduction="none")
        return {"loss_cls": (w * terms).sum() / n}


__all__ = ["ACSLLoss", "lvis_frequency_groups"]
