"""LVIS-format data: dataset, distributed samplers (RFS) and detection transforms."""

from __future__ import annotations

from ltmodels.data.lvis import LVISDetection, collate_fn
from ltmodels.data.samplers import (
    RepeatFactorSampler,
    ShardedRandomSampler,
    epoch_generator,
    repeat_factors,
)
from ltmodels.data.transforms import (
    Compose,
    RandomHorizontalFlip,
    ResizeShortestEdge,
    build_transforms,
)

__all__ = [
    "Compose",
    "LVISDetection",
    "RandomHorizontalFlip",
    "RepeatFactorSampler",
    "ResizeShortestEdge",
    "ShardedRandomSampler",
    "build_transforms",
    "collate_fn",
    "epoch_generator",
    "repeat_factors",
]
