"""What the feature-cache tests share: the small dataset's first training images, a tiny
detector whose box predictor is initialised wide enough to score proposals apart, and a
decoupled trial small enough to train stage 1, build its cache and fine-tune in seconds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Subset

from ltmodels.data.lvis import LVISDetection
from ltmodels.data.synthetic import SynthConfig, SynthPaths
from ltmodels.losses import build_loss
from ltmodels.modeling.detector import ModelSpec, build_detector
from ltmodels.trial.config import DataConfig, StageConfig, TrialConfig

TINY_SYNTH = SynthConfig(num_classes=8, train_images=16, val_images=8, image_size=64, seed=0)
TINY_MODEL = {"backbone": "tiny", "min_size": 64, "max_size": 64, "masks": False}
TINY_STAGE1 = StageConfig(loss="ce", epochs=1, lr=0.02, batch_size=4, warmup_iters=2)
TINY_CACHED = StageConfig(
    loss="ce", epochs=1, lr=0.01, batch_size=8, warmup_iters=2,
    finetune=("box_predictor",), use_feature_cache=True,
)  # fmt: skip


def tiny_decoupled(
    data: DataConfig, cache: Path, stage1: StageConfig = TINY_STAGE1, **fields: Any
) -> TrialConfig:
    """A decoupled feature-cache trial of :data:`TINY_STAGE1` and :data:`TINY_CACHED`."""
    return TrialConfig(
        data=data, train=TINY_CACHED, stage1=stage1, schedule="decoupled", model=TINY_MODEL,
        eval_masks=False, cache_dir=str(cache), **fields,
    )  # fmt: skip


def tiny_end_to_end(synth: SynthPaths, cache: Path, loss: str, seed: int) -> TrialConfig:
    """A 3-epoch end-to-end trial of the tiny detector on ``synth`` (the rungs' tests)."""
    root = str(synth.root)
    train = StageConfig(loss=loss, epochs=3, lr=0.02, batch_size=8, warmup_iters=4)
    return TrialConfig(
        data=DataConfig(str(synth.train_json), str(synth.val_json), root, root),
        train=train, model=TINY_MODEL, seed=seed, eval_masks=False, cache_dir=str(cache),
    )  # fmt: skip


def cache_datasets(synth: SynthPaths, train_images: int) -> tuple[Subset, LVISDetection]:
    """The first ``train_images`` training images (no masks) and the validation set."""
    train = LVISDetection(synth.train_json, synth.root, with_masks=False)
    val = LVISDetection(synth.val_json, synth.root, with_masks=False)
    return Subset(train, range(train_images)), val


def probe_detector(num_classes: int) -> nn.Module:
    """A tiny box-only detector (seed 0, CE) with a wide classifier and regressor init."""
    torch.manual_seed(0)
    net = build_detector(
        ModelSpec.tiny(masks=False), build_loss("ce", num_classes=num_classes), num_classes
    )
    pred = net.roi_heads.box_predictor
    torch.nn.init.normal_(pred.cls_score.weight, std=0.3)
    torch.nn.init.normal_(pred.bbox_pred.weight, std=0.05)
    return net
