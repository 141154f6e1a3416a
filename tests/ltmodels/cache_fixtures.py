"""What the feature-cache tests share: the small dataset's first training images, and a tiny
detector whose box predictor is initialised wide enough to score proposals apart."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import Subset

from ltmodels.data.lvis import LVISDetection
from ltmodels.data.synthetic import SynthPaths
from ltmodels.losses import build_loss
from ltmodels.modeling.detector import ModelSpec, build_detector


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
