"""MFS: Memory-augmented Feature Sampling (Feng et al., "Exploring Classification Equilibrium
in Long-Tailed Object Detection", ICCV 2021; LOCE Sec. 3.3). A training component used with
the ``ebl`` loss, not a registered loss.

Implements Eq. 5-8 as the released code (fcjian/LOCE ``mmdet/models/utils/mfs.py``) does:

- :func:`dense_boxes` (Eq. 5): 16 boxes per ground-truth box ``[x1, y1, x2, y2]``, one per
  sign pattern of ``[x1 +- eta1 w/6, y1 +- eta2 h/6, x2 +- eta3 w/6, y2 +- eta4 h/6]``
  with fresh ``eta_i ~ U[0, 1]`` per box and coordinate, clipped to the image. Every box
  is labelled with its ground truth's class (no IoU filter: some have IoU < 0.5).
- :class:`FeatureMemory` (Eq. 6): a queue of ``size`` (M) features and regression targets
  per class. A push enqueues, per class, the first M rows of that class and overwrites the
  oldest ones (ring buffer). Pushes are gathered from all DDP workers first
  (``all_gather_cat``), so every worker holds the same memory (the code keeps one memory
  per GPU; gathering makes 2 workers on halves of a batch equal 1 worker on the whole).
- :meth:`FeatureMemory.sample` (Eq. 7-8): ``k`` classes drawn with replacement with
  ``p_c`` proportional to ``1 / (s_c + 1e-7)`` over all C classes (``s`` the mean score
  vector of :class:`ltmodels.losses.ebl.EquilibriumLoss`), then ``m`` slots drawn with
  replacement from each chosen class's filled queue; a class with an empty queue gives no
  rows, so a sample has at most ``k * m`` rows. Each worker samples on its own (the paper's
  k and m are per GPU): seed each worker's generator differently.

Shape shorthand: G ground-truth boxes, C foreground classes, M memory size, D feature
channels, T regression-target width, R sampled rows. Labels follow torchvision (0
background, ``1..C`` foreground); queue ``c`` holds label ``c + 1``.

The sampled rows are appended to the batch's RoIs; give them
:func:`memory_gt_index` ids so EBL counts one mean-score entry per sampled class. A loss
owns MFS through :class:`ltmodels.losses.feature_sampling.FeatureSampling`, and trainers
reach it through that module's protocol.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from ltmodels.engine.distributed import all_gather_cat
from ltmodels.losses.domains import MFS_PARAMS

NUM_DENSE_BOXES = 16
_SCORE_EPS = 1e-7


def _sign_patterns(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``[16, 4]`` every +-1 pattern over the four coordinates."""
    bits = torch.arange(NUM_DENSE_BOXES, device=device)[:, None] >> torch.arange(
        3, -1, -1, device=device
    )
    return ((bits & 1) * 2 - 1).to(dtype)


def dense_boxes(
    gt_boxes: torch.Tensor,
    *,
    image_size: tuple[int, int] | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Jittered boxes around each ground truth (LOCE Eq. 5).

    Args:
        gt_boxes: ``[G, 4]`` boxes ``x1, y1, x2, y2``.
        image_size: ``(height, width)``; boxes are clipped to ``[0, width] x [0, height]``.
        generator: random stream (CPU); ``None`` uses torch's global one.

    Returns:
        ``([G * 16, 4] boxes, [G * 16] index of their ground truth)``, grouped by ground
        truth.
    """
    g = gt_boxes.shape[0]
    boxes = gt_boxes.to(torch.promote_types(gt_boxes.dtype, torch.float32))
    wh = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)  # [G, 4] = w, h, w, h
    eta = torch.rand((g, NUM_DENSE_BOXES, 4), generator=generator).to(boxes)
    signs = _sign_patterns(boxes.device, boxes.dtype)
    out = boxes[:, None, :] + signs[None] * eta * wh[:, None, :] / 6.0
    if image_size is not None:
        height, width = image_size
        out[..., 0::2] = out[..., 0::2].clamp(0, width)
        out[..., 1::2] = out[..., 1::2].clamp(0, height)
    index = torch.arange(g, device=boxes.device).repeat_interleave(NUM_DENSE_BOXES)
    return out.reshape(-1, 4), index


def memory_gt_index(labels: torch.Tensor, gt_index: torch.Tensor) -> torch.Tensor:
    """Group ids for sampled memory rows: one fresh id per class, after the batch's ids.

    Args:
        labels: ``[R]`` labels of the sampled rows.
        gt_index: ``[N]`` the batch RoIs' ``gt_index`` (-1 background).

    Returns:
        ``[R]`` long ids ``max(gt_index) + 1 + label``, to concatenate after ``gt_index``.
    """
    start = int(gt_index.max()) + 1 if gt_index.numel() else 0
    return labels.long() + max(start, 0)


class MemorySample(NamedTuple):
    """Rows drawn from a :class:`FeatureMemory`."""

    features: torch.Tensor  # [R, D]
    labels: torch.Tensor  # [R] long in 1..C
    targets: torch.Tensor  # [R, T]


class FeatureMemory(nn.Module):
    """Per-class feature queues (LOCE Eq. 6) and the score-guided sampler (Eq. 7-8).

    Args:
        num_classes: C.
        feat_dim: D, width of a stored feature.
        size: M, queue length per class (Sec. 4.1: 80).
        target_dim: T, width of the stored regression target (0 stores none).
        dtype: storage type of the features (float16 halves the memory).
    """

    features: torch.Tensor
    targets: torch.Tensor
    count: torch.Tensor

    def __init__(
        self,
        num_classes: int,
        feat_dim: int,
        *,
        size: int = 80,
        target_dim: int = 4,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        if num_classes < 1 or feat_dim < 1 or size < 1 or target_dim < 0:
            raise ValueError("FeatureMemory: num_classes, feat_dim, size must be >= 1")
        self.num_classes = int(num_classes)
        self.feat_dim = int(feat_dim)
        self.size = int(size)
        self.target_dim = int(target_dim)
        self.register_buffer("features", torch.zeros(num_classes, size, feat_dim, dtype=dtype))
        self.register_buffer("targets", torch.zeros(num_classes, size, target_dim))
        # Rows ever stored per class: the write pointer is count % M, the fill min(count, M).
        self.register_buffer("count", torch.zeros(num_classes, dtype=torch.long))

    def fill(self) -> torch.Tensor:
        """``[C]`` number of valid slots per class."""
        return self.count.clamp(max=self.size)

    @torch.no_grad()
    def push(
        self, features: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None = None
    ) -> None:
        """Enqueue rows (gathered from all DDP workers); background rows are ignored.

        Args:
            features: ``[P, D]``.
            labels: ``[P]`` long, 0 background.
            targets: ``[P, T]`` regression targets (zeros if ``None``).
        """
        p = features.shape[0]
        if targets is None:
            targets = features.new_zeros(p, self.target_dim)
        if features.shape[1:] != (self.feat_dim,) or targets.shape != (p, self.target_dim):
            raise ValueError(
                f"FeatureMemory.push: expected [P, {self.feat_dim}] features and "
                f"[P, {self.target_dim}] targets, got {list(features.shape)}, "
                f"{list(targets.shape)}"
            )
        dev = self.features.device
        packed = torch.cat(
            [labels.reshape(-1, 1).float(), features.float(), targets.float()], dim=1
        ).to(dev)
        packed = all_gather_cat(packed)
        lab = packed[:, 0].round().long()
        packed = packed[lab > 0]
        cls = lab[lab > 0] - 1
        if cls.numel() == 0:
            return
        order = torch.argsort(cls, stable=True)
        cls, packed = cls[order], packed[order]
        n = torch.bincount(cls, minlength=self.num_classes)
        starts = torch.cumsum(n, 0) - n
        rank_in_class = torch.arange(cls.numel(), device=dev) - starts[cls]
        keep = rank_in_class < self.size  # the code keeps the first M rows of a push
        cls, packed, rank_in_class = cls[keep], packed[keep], rank_in_class[keep]
        slot = (self.count[cls] + rank_in_class) % self.size
        d = self.feat_dim
        self.features[cls, slot] = packed[:, 1 : 1 + d].to(self.features.dtype)
        self.targets[cls, slot] = packed[:, 1 + d :].to(self.targets.dtype)
        self.count += n.clamp(max=self.size)

    @torch.no_grad()
    def sample(
        self,
        mean_scores: torch.Tensor,
        k: int,
        m: int,
        generator: torch.Generator | None = None,
    ) -> MemorySample:
        """Draw rows for weak classes: ``p_c ~ 1 / s_c`` (Eq. 7-8), k classes, m rows each.

        Args:
            mean_scores: ``[C + 1]`` EBL mean scores, entry 0 background (ignored).
            k: classes drawn, with replacement.
            m: rows drawn per chosen class, with replacement from its filled slots.
            generator: random stream (CPU); ``None`` uses torch's global one.

        Returns:
            :class:`MemorySample` with at most ``k * m`` rows, grouped by class draw.
        """
        if mean_scores.shape != (self.num_classes + 1,):
            raise ValueError(
                f"FeatureMemory.sample: mean_scores must be [{self.num_classes + 1}] "
                f"(entry 0 background), got {list(mean_scores.shape)}"
            )
        dev = self.features.device
        inv = 1.0 / (mean_scores[1:].detach().double().cpu() + _SCORE_EPS)
        if k > 0:
            chosen = torch.multinomial(inv / inv.sum(), k, replacement=True, generator=generator)
        else:
            chosen = torch.zeros(0, dtype=torch.long)
        chosen = chosen.to(dev)
        fill = self.fill()[chosen]
        chosen, fill = chosen[fill > 0], fill[fill > 0]
        u = torch.rand((chosen.numel(), m), generator=generator).to(dev)
        slots = torch.minimum((u * fill[:, None]).long(), fill[:, None] - 1)
        rows = chosen[:, None].expand(-1, m)
        return MemorySample(
            features=self.features[rows, slots].reshape(-1, self.feat_dim),
            labels=(rows + 1).reshape(-1),
            targets=self.targets[rows, slots].reshape(-1, self.target_dim),
        )


__all__ = [
    "MFS_PARAMS",
    "NUM_DENSE_BOXES",
    "FeatureMemory",
    "MemorySample",
    "dense_boxes",
    "memory_gt_index",
]
