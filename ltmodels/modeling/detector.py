"""Build torchvision's Mask R-CNN (or Faster R-CNN) from a :class:`ModelSpec` and a loss.

The classifier width is ``loss.num_logits(C)`` and its kind (linear or cosine) comes from
``loss.predictor`` and ``spec.cls_head``; the RoI heads are :class:`LongTailRoIHeads`, so
adding a loss never touches this file.

Backbones: torchvision ResNet-18/50/101 with a 256-channel FPN (the papers' Mask R-CNN,
2-FC 1024-d box head, 4-conv mask head), and ``"tiny"``: a ~1M-parameter conv stack with a
3-level 64-channel FPN and slim heads for the embedded synthetic dataset on CPU. No
pretrained weights ship with this project: ``backbone_weights`` optionally names a local
state dict (a torchvision ImageNet ResNet's, or a trained tiny backbone's); without one the
network trains from scratch, where BatchNorm or GroupNorm is needed (frozen BN of an
untrained network is the identity).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN, MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor

from ltmodels.errors import ConfigError
from ltmodels.losses.base import LongTailLoss
from ltmodels.modeling.backbones import norm_layer, resnet_fpn, tiny_backbone
from ltmodels.modeling.heads import LinearPredictor, build_predictor
from ltmodels.modeling.roi_align import FastMultiScaleRoIAlign
from ltmodels.modeling.roi_heads import BOX_LOSSES, LongTailRoIHeads

BACKBONES = ("tiny", "resnet18_fpn", "resnet50_fpn", "resnet101_fpn")
NORMS = ("bn", "frozen_bn", "gn")
CLS_HEADS = ("auto", "linear", "cosine")


@dataclass(frozen=True)
class ModelSpec:
    """Everything that defines the detector apart from the loss and the number of classes.

    ``min_size`` may be a tuple: training picks one per batch (multi-scale), inference uses
    the last. ``rpn_*_top_n`` are torchvision's (pre-NMS per FPN level, post-NMS per image).
    ``trainable_backbone_layers`` (0-5) freezes ResNet stages from the stem up (torchvision's
    rule); the tiny backbone always trains. ``backbone_weights`` is a local path to a
    torchvision ResNet ImageNet state dict, or for ``"tiny"`` to a trained tiny backbone's (or
    a whole tiny detector's) state dict. ``norm`` defaults to
    GroupNorm: it does not depend on the per-worker batch (2 DDP workers on half-batches
    compute what 1 worker does), and from scratch on the synthetic data it reached the AP of
    BatchNorm (bbox AP 0.275 vs 0.265 after 8 epochs of 96 images, 6 classes, 96 px).
    """

    backbone: str = "resnet50_fpn"
    masks: bool = True
    min_size: int | tuple[int, ...] = 800
    max_size: int = 1333
    rpn_pre_nms_top_n_train: int = 2000
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_train: int = 2000
    rpn_post_nms_top_n_test: int = 1000
    box_batch_size_per_image: int = 512
    box_positive_fraction: float = 0.25
    box_score_thresh: float = 1e-4
    box_detections_per_img: int = 300
    cls_head: str = "auto"
    cosine_scale: float = 20.0
    box_loss: str = "smooth_l1"
    trainable_backbone_layers: int = 5
    norm: str = "gn"
    backbone_weights: str | None = None

    def __post_init__(self) -> None:
        choices = {
            "backbone": BACKBONES,
            "norm": NORMS,
            "cls_head": CLS_HEADS,
            "box_loss": BOX_LOSSES,
        }
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ConfigError(
                    f"model.{key}={getattr(self, key)!r} is invalid; use one of {allowed}"
                )
        if isinstance(self.min_size, list):  # from YAML / pydantic
            object.__setattr__(self, "min_size", tuple(self.min_size))
        sizes = self.min_size if isinstance(self.min_size, tuple) else (self.min_size,)
        if not sizes or min(sizes) < 1 or self.max_size < max(sizes):
            raise ConfigError(
                f"model.min_size={self.min_size!r} / max_size={self.max_size}: sizes must be "
                "positive and max_size at least the largest min_size"
            )
        if not 0 <= self.trainable_backbone_layers <= 5:
            raise ConfigError("model.trainable_backbone_layers must be in 0..5")
        if not 0 < self.box_positive_fraction <= 1:
            raise ConfigError("model.box_positive_fraction must be in (0, 1]")
        if self.norm == "frozen_bn" and self.backbone_weights is None:
            raise ConfigError(
                "model.norm='frozen_bn' needs backbone_weights: frozen statistics of an "
                "untrained network do not normalise; use norm 'gn' or 'bn' from scratch"
            )

    @classmethod
    def tiny(cls, **overrides: Any) -> ModelSpec:
        """The CPU preset for the embedded synthetic data: ~1M parameters, 128-256 px, 300
        proposals and 128 sampled RoIs per image. Measured on the 2-core build machine, one
        thread, 4 images at 256 px: 0.56 s per step; 0.82 s with 512 RoIs; 1.4 s with 2000
        proposals and 512 RoIs."""
        base = cls(
            backbone="tiny",
            min_size=128,
            max_size=256,
            rpn_pre_nms_top_n_train=600,
            rpn_pre_nms_top_n_test=300,
            rpn_post_nms_top_n_train=300,
            rpn_post_nms_top_n_test=300,
            box_batch_size_per_image=128,
            norm="gn",
        )
        return dataclasses.replace(base, **overrides)

    @classmethod
    def paper(cls, **overrides: Any) -> ModelSpec:
        """Mask R-CNN R-50-FPN with the papers' LVIS settings: multi-scale 640-800 training,
        800 px test, max 1333, 2000/1000 proposals, 512 RoIs per image at 25% positive, score
        threshold 1e-4 and 300 detections per image. Pass ``backbone_weights`` and
        ``norm="frozen_bn"`` to start from ImageNet weights as the papers do; the default
        trains from scratch with GroupNorm."""
        base = cls(backbone="resnet50_fpn", min_size=(640, 672, 704, 736, 768, 800))
        return dataclasses.replace(base, **overrides)


def _parts(spec: ModelSpec, num_classes: int) -> dict[str, Any]:
    """Backbone, anchors, RoI pools and heads (all but the box predictor) for a spec."""
    ratios = (0.5, 1.0, 2.0)
    head_norm = norm_layer(spec.norm) if spec.norm == "gn" else None
    if spec.backbone == "tiny":
        backbone: nn.Module = tiny_backbone(spec.norm, spec.backbone_weights)
        sizes: tuple[tuple[int, ...], ...] = ((16,), (32,), (64,), (128,))
        # 32-channel mask head: at 300 detections per image, mask inference dominates
        # evaluation on CPU (64 channels cost 3x more for no measurable segm AP).
        levels, rep = ["0", "1", "2"], 128
        mask_layers: tuple[int, ...] = (32, 32)
    else:
        backbone = resnet_fpn(
            spec.backbone, spec.norm, spec.backbone_weights, spec.trainable_backbone_layers
        )
        sizes = ((32,), (64,), (128,), (256,), (512,))
        levels, rep, mask_layers = ["0", "1", "2", "3"], 1024, (256, 256, 256, 256)
    ch = int(backbone.out_channels)  # type: ignore[arg-type]
    parts: dict[str, Any] = {
        "backbone": backbone,
        "rpn_anchor_generator": AnchorGenerator(sizes, (ratios,) * len(sizes)),
        "box_roi_pool": FastMultiScaleRoIAlign(levels, output_size=7, sampling_ratio=2),
        "box_head": TwoMLPHead(ch * 7 * 7, rep),
        "representation_size": rep,
    }
    if spec.masks:
        parts["mask_roi_pool"] = FastMultiScaleRoIAlign(levels, output_size=14, sampling_ratio=2)
        parts["mask_head"] = MaskRCNNHeads(ch, mask_layers, 1, norm_layer=head_norm)
        parts["mask_predictor"] = MaskRCNNPredictor(
            mask_layers[-1], mask_layers[-1], num_classes + 1
        )
    return parts


def build_detector(
    spec: ModelSpec,
    loss: LongTailLoss,
    num_classes: int,
    *,
    image_counts: torch.Tensor | None = None,
    num_images: int | None = None,
) -> FasterRCNN:
    """Build Mask R-CNN (``spec.masks``) or Faster R-CNN with :class:`LongTailRoIHeads`.

    The loss receives the training set's class statistics through ``set_class_stats`` when
    they are given (EQL, ACSL, AHR need them). A loss class may declare ``cls_bias_init``
    (a float): the linear classifier's bias starts there (the sigmoid prior of EQL's code).

    Args:
        spec: the model spec.
        loss: the classification loss; it becomes ``model.roi_heads.cls_loss``.
        num_classes: C foreground classes (labels ``1..C``).
        image_counts: ``[C]`` training images containing each class (label j + 1 at j).
        num_images: number of training images (required with ``image_counts``).

    Returns:
        A torchvision ``MaskRCNN`` (or ``FasterRCNN`` when ``spec.masks`` is false).

    Raises:
        ConfigError: the loss was built for another number of classes, or the head choice
            does not fit the loss.
    """
    if loss.num_classes != num_classes:
        raise ConfigError(f"loss built for {loss.num_classes} classes, model for {num_classes}")
    if image_counts is not None:
        if num_images is None:
            raise ValueError("build_detector: image_counts needs num_images")
        loss.set_class_stats(torch.as_tensor(image_counts), int(num_images))
    parts = _parts(spec, num_classes)
    predictor = build_predictor(
        spec.cls_head,
        parts.pop("representation_size"),
        num_logits=loss.num_logits(num_classes),
        num_classes=num_classes,
        loss_predictor=loss.predictor,
        cosine_scale=spec.cosine_scale,
    )
    bias = getattr(type(loss), "cls_bias_init", None)
    if bias is not None and isinstance(predictor, LinearPredictor):
        nn.init.constant_(predictor.cls_score.bias, float(bias))
    mask_keys = ("mask_roi_pool", "mask_head", "mask_predictor")
    mask_parts = {k: parts.pop(k) for k in mask_keys if k in parts}
    model = (MaskRCNN if spec.masks else FasterRCNN)(
        parts.pop("backbone"),
        min_size=spec.min_size,
        max_size=spec.max_size,
        rpn_pre_nms_top_n_train=spec.rpn_pre_nms_top_n_train,
        rpn_pre_nms_top_n_test=spec.rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_train=spec.rpn_post_nms_top_n_train,
        rpn_post_nms_top_n_test=spec.rpn_post_nms_top_n_test,
        box_predictor=predictor,
        **parts,
        **mask_parts,
    )
    model.roi_heads = LongTailRoIHeads(
        model.roi_heads.box_roi_pool,
        model.roi_heads.box_head,
        predictor,
        loss=loss,
        batch_size_per_image=spec.box_batch_size_per_image,
        positive_fraction=spec.box_positive_fraction,
        score_thresh=spec.box_score_thresh,
        detections_per_img=spec.box_detections_per_img,
        box_loss=spec.box_loss,
        **mask_parts,
    )
    return model


__all__ = ["BACKBONES", "ModelSpec", "build_detector"]
