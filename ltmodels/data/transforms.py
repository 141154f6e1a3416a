"""Detection transforms on (image, target) pairs: scale jitter and horizontal flip.

An image is a float tensor [3, H, W]; a target is torchvision's Mask R-CNN dict with
``boxes`` float [n, 4] (x1, y1, x2, y2) and optionally ``masks`` uint8 [n, H, W] and
``area`` [n]; other keys pass through. Randomness comes from torch's global generator, which
the DataLoader seeds per worker.

torchvision's ``GeneralizedRCNNTransform`` resizes again inside the model (and itself picks a
random ``min_size`` from a tuple in training mode); build the model so that one of the two
does the jitter, not both.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ltmodels.errors import ConfigError

Target = dict[str, Any]
Transform = Callable[[torch.Tensor, Target], tuple[torch.Tensor, Target]]


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: torch.Tensor, target: Target) -> tuple[torch.Tensor, Target]:
        for t in self.transforms:
            image, target = t(image, target)
        return image, target

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


def resized_shape(height: int, width: int, min_size: int, max_size: int) -> tuple[int, int]:
    """(H', W') with the short edge ``min_size`` unless the long edge would pass ``max_size``."""
    scale = min_size / min(height, width)
    if max(height, width) * scale > max_size:
        scale = max_size / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


class ResizeShortestEdge:
    """Resize so the short edge is one of ``min_sizes`` (chosen at random), long edge capped.

    Boxes scale by the exact ratios of the new to the old width and height; masks are resized
    with nearest-neighbour interpolation; ``area`` scales with the box.

    Args:
        min_sizes: candidate short-edge lengths (several = scale jitter; one for evaluation).
        max_size: the long edge never exceeds this.
    """

    def __init__(self, min_sizes: Sequence[int], max_size: int) -> None:
        self.min_sizes = tuple(int(s) for s in min_sizes)
        self.max_size = int(max_size)
        if not self.min_sizes or min(self.min_sizes) < 1 or self.max_size < 1:
            raise ConfigError(
                f"ResizeShortestEdge needs positive sizes, got min_sizes={tuple(min_sizes)}, "
                f"max_size={max_size}"
            )

    def __call__(self, image: torch.Tensor, target: Target) -> tuple[torch.Tensor, Target]:
        choice = int(torch.randint(len(self.min_sizes), (1,)).item())
        height, width = image.shape[-2:]
        new_h, new_w = resized_shape(height, width, self.min_sizes[choice], self.max_size)
        if (new_h, new_w) == (height, width):
            return image, target
        image = F.interpolate(
            image[None], size=(new_h, new_w), mode="bilinear", align_corners=False
        )[0]
        target = dict(target)
        rw, rh = new_w / width, new_h / height
        if "boxes" in target:
            target["boxes"] = target["boxes"] * torch.tensor(
                [rw, rh, rw, rh], dtype=target["boxes"].dtype
            )
        if "area" in target:
            target["area"] = target["area"] * (rw * rh)
        if "masks" in target:
            target["masks"] = _resize_masks(target["masks"], new_h, new_w)
        return image, target

    def __repr__(self) -> str:
        return f"ResizeShortestEdge(min_sizes={self.min_sizes}, max_size={self.max_size})"


class RandomHorizontalFlip:
    """Mirror the image, its boxes and masks left-right with probability ``p``."""

    def __init__(self, p: float = 0.5) -> None:
        if not 0.0 <= p <= 1.0:
            raise ConfigError(f"RandomHorizontalFlip p must be in [0, 1], got {p}")
        self.p = p

    def __call__(self, image: torch.Tensor, target: Target) -> tuple[torch.Tensor, Target]:
        if torch.rand(()).item() >= self.p:
            return image, target
        width = image.shape[-1]
        target = dict(target)
        if "boxes" in target:
            boxes = target["boxes"]
            target["boxes"] = torch.stack(
                [width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1
            )
        if "masks" in target:
            target["masks"] = target["masks"].flip(-1)
        return image.flip(-1), target

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


def build_transforms(train: bool, min_sizes: Sequence[int], max_size: int) -> Compose:
    """Training: random short edge from ``min_sizes`` and a 50% flip; evaluation: resize to
    the largest of ``min_sizes`` (detectron2's 640-800 training jitter, 800 at test time).
    """
    resize = ResizeShortestEdge(min_sizes, max_size)
    if train:
        return Compose([resize, RandomHorizontalFlip(0.5)])
    return Compose([ResizeShortestEdge((max(resize.min_sizes),), max_size)])


def _resize_masks(masks: torch.Tensor, height: int, width: int) -> torch.Tensor:
    if masks.shape[0] == 0:
        return masks.new_zeros((0, height, width))
    resized = F.interpolate(masks[:, None].float(), size=(height, width), mode="nearest")
    return resized[:, 0].to(masks.dtype)


__all__ = [
    "Compose",
    "RandomHorizontalFlip",
    "ResizeShortestEdge",
    "build_transforms",
    "resized_shape",
]
