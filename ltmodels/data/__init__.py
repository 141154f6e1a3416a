"""LVIS-format data: dataset, distributed samplers (RFS) and detection transforms.

The names below are imported from their modules on first access, so that importing a
torch-free submodule (``ltmodels.data.synthetic``, which ``ltsearch --help`` reads its
defaults from) does not import torch through this package.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

_MODULE_OF = {
    "LVISDetection": "lvis",
    "collate_fn": "lvis",
    "RepeatFactorSampler": "samplers",
    "ShardedRandomSampler": "samplers",
    "epoch_generator": "samplers",
    "repeat_factors": "samplers",
    "Compose": "transforms",
    "RandomHorizontalFlip": "transforms",
    "ResizeShortestEdge": "transforms",
    "build_transforms": "transforms",
}


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
    globals()[name] = value
    return value


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
