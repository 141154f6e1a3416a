"""MFS in the full model: what :class:`~ltmodels.modeling.roi_heads.LongTailRoIHeads` does when its
loss has a feature memory (LOCE Sec. 3.3; see :mod:`ltmodels.losses.feature_sampling`).

Shape shorthand: G ground-truth boxes of the batch, P = 16 G dense boxes, D box-head
channels, R sampled memory rows, C foreground classes.

Each training iteration the head

1. pushes the box-head features of the dense boxes around every ground truth (Eq. 5,
   :func:`~ltmodels.losses.mfs.dense_boxes`), with their ground truth's label and the box
   coder's regression target (:func:`push_dense_features`, no gradient, as the released
   code's detached features);
2. appends one memory sample to the classifier batch (after its N RoIs); the rows take part
   in the classification loss with :func:`~ltmodels.losses.mfs.memory_gt_index` group ids,
   and in the box loss with their stored targets (:func:`memory_box_loss`), the normaliser
   becoming N + R, as the released code's ``avg_factor`` over all rows.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torchvision.models.detection._utils import BoxCoder
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.ops import generalized_box_iou_loss

from ltmodels.losses.feature_sampling import MemoryAccess
from ltmodels.losses.mfs import MemorySample, dense_boxes


@torch.no_grad()
def dense_features(
    heads: RoIHeads,
    features: dict[str, torch.Tensor],
    targets: list[dict[str, torch.Tensor]],
    image_shapes: list[tuple[int, int]],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Box-head features of the dense boxes around every ground truth of the batch.

    Args:
        heads: the RoI heads (``box_roi_pool``, ``box_head``, ``box_coder``).
        features: FPN features. targets: per image ``boxes`` ``[G_i, 4]``, ``labels``.
        image_shapes: per image ``(H, W)`` after the transform (boxes are clipped to it).

    Returns:
        features ``[P, D]``, labels ``[P]``, regression targets ``[P, 4]``.
    """
    boxes, labels, deltas = [], [], []
    for t, shape in zip(targets, image_shapes, strict=True):
        dense, idx = dense_boxes(t["boxes"], image_size=shape)
        dense = dense.to(t["boxes"].dtype)
        boxes.append(dense)
        labels.append(t["labels"][idx])
        deltas.append(heads.box_coder.encode_single(t["boxes"][idx], dense))
    labels_all, deltas_all = torch.cat(labels), torch.cat(deltas)
    if labels_all.numel() == 0:  # still a push (a collective under DDP), of no rows
        width = int(heads.box_predictor.cls_weight.shape[1])  # type: ignore[union-attr,index]
        return deltas_all.new_zeros(0, width), labels_all, deltas_all
    feats = heads.box_head(heads.box_roi_pool(features, boxes, image_shapes)).flatten(1)
    return feats, labels_all, deltas_all


def push_dense_features(
    memory: MemoryAccess,
    heads: RoIHeads,
    features: dict[str, torch.Tensor],
    targets: list[dict[str, torch.Tensor]],
    image_shapes: list[tuple[int, int]],
) -> None:
    """Push the batch's dense-box features to ``memory`` (every worker, every iteration)."""
    if any(p.requires_grad for p in heads.box_head.parameters()):
        warnings.warn(
            "MFS with a trainable box head: stored features lag the head (LOCE fine-tunes "
            "with the box head frozen; use finetune without box_head)",
            stacklevel=2,
        )
    memory.push(*dense_features(heads, features, targets, image_shapes))


def memory_box_loss(
    box_coder: BoxCoder,
    box_regression: torch.Tensor,
    rows: MemorySample,
    *,
    box_loss: str,
    giou_weight: float,
) -> torch.Tensor:
    """Box loss of memory rows, summed (the caller divides by all rows).

    Args:
        box_coder: the heads' ``BoxCoder``.
        box_regression: ``[R, 4 (C + 1)]`` predictions for the rows.
        rows: the sample (``labels`` ``[R]``, ``targets`` ``[R, 4]`` encoded deltas).
        box_loss: ``"smooth_l1"`` on the deltas, or ``"giou"``: predictions and targets are
            decoded against one shared reference box (GIoU is invariant to the axis-aligned
            affine map from that box to the row's proposal, which the memory does not keep).
        giou_weight: the GIoU loss weight.
    """
    r = rows.labels.numel()
    if r == 0:
        return box_regression.sum() * 0.0
    deltas = box_regression.reshape(r, -1, 4)[
        torch.arange(r, device=rows.labels.device), rows.labels
    ]
    target = rows.targets.to(deltas)
    if box_loss == "giou":
        ref = deltas.new_tensor([0.0, 0.0, 1.0, 1.0]).expand(r, 4)
        pred = box_coder.decode_single(deltas, ref)
        gt = box_coder.decode_single(target, ref)
        return generalized_box_iou_loss(pred, gt, reduction="sum") * giou_weight
    return F.smooth_l1_loss(deltas, target, beta=1 / 9, reduction="sum")


__all__ = ["dense_features", "memory_box_loss", "push_dense_features"]
