"""Mask R-CNN RoI heads whose classification loss and inference scores come from a loss object.

Shape shorthand: N sampled RoIs (all images of the batch), C foreground classes,
K = ``loss.num_logits(C)`` classifier outputs, D box-head feature channels, G ground-truth
objects in the batch.

:class:`LongTailRoIHeads` subclasses torchvision's ``RoIHeads`` and keeps its RoI sampling,
box coding and mask branch. What changes:

- training: the classification term is ``loss(logits, labels, features=, weight=, gt_index=)``
  (every term the loss returns is added under its own name, e.g. ``loss_cls``, ``loss_gap``);
  box regression is torchvision's smooth-L1 or a GIoU loss on decoded boxes;
- inference: per-class scores are ``loss.scores(logits)`` (``[N, C]``), not a softmax, then
  torchvision's threshold / per-class NMS / top-k, with the papers' LVIS settings
  (score threshold 1e-4, at most 300 detections per image) as defaults.

The loss is the submodule ``cls_loss``, so its buffers (EQLv2 gradient sums, Seesaw/GAP
counts, EBL mean scores) are part of the model's ``state_dict`` and of every checkpoint.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection.roi_heads import RoIHeads, maskrcnn_loss
from torchvision.ops import boxes as box_ops
from torchvision.ops import generalized_box_iou_loss

from ltmodels.losses.base import LongTailLoss

BOX_LOSSES = ("smooth_l1", "giou")
_RESERVED = ("loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg")


def matched_gt_index(
    matched_idxs: list[torch.Tensor], labels: list[torch.Tensor], num_gt: list[int]
) -> torch.Tensor:
    """Batch-unique index of the ground-truth object each sampled RoI was matched to.

    Args:
        matched_idxs: per image ``[n_i]`` long, index into that image's ground truth
            (torchvision clamps unmatched RoIs to 0, so only ``labels > 0`` are meaningful).
        labels: per image ``[n_i]`` long, ``0`` background, ``1..C`` foreground.
        num_gt: number of ground-truth boxes of each image.

    Returns:
        ``[N]`` long: ``matched + (number of ground-truth objects in earlier images)`` for
        foreground RoIs, ``-1`` for background.
    """
    out = []
    offset = 0
    for idx, lab, n in zip(matched_idxs, labels, num_gt, strict=True):
        out.append(torch.where(lab > 0, idx + offset, torch.full_like(idx, -1)))
        offset += n
    return torch.cat(out)


def select_detections(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    image_shape: tuple[int, int],
    *,
    score_thresh: float,
    nms_thresh: float,
    detections_per_img: int,
    pre_nms_top_k: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Threshold, per-class NMS and top-k of one image's class-specific candidates.

    Args:
        boxes: ``[R, C, 4]`` decoded xyxy boxes, column j for label j + 1.
        scores: ``[R, C]`` per-class scores (``loss.scores``).
        image_shape: ``(H, W)`` to clip to.
        score_thresh: candidates scoring at or below it are dropped.
        nms_thresh: IoU of per-class NMS.
        detections_per_img: at most this many detections are kept.
        pre_nms_top_k: keep only the best k candidates before NMS (``None``: all).

    Returns:
        boxes ``[M, 4]``, scores ``[M]``, labels ``[M]`` (``1..C``), best first.
    """
    num_classes = scores.shape[1]
    boxes = box_ops.clip_boxes_to_image(boxes.reshape(-1, 4), image_shape)
    labels = torch.arange(1, num_classes + 1, device=scores.device).repeat(scores.shape[0])
    scores = scores.reshape(-1)
    keep = torch.where(scores > score_thresh)[0]
    if pre_nms_top_k is not None and keep.numel() > pre_nms_top_k:
        keep = keep[scores[keep].topk(pre_nms_top_k).indices]
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    keep = box_ops.remove_small_boxes(boxes, min_size=1e-2)
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    keep = box_ops.batched_nms(boxes, scores, labels, nms_thresh)[:detections_per_img]
    return boxes[keep], scores[keep], labels[keep]


def mask_probs(mask_logits: torch.Tensor, labels: list[torch.Tensor]) -> list[torch.Tensor]:
    """Mask probabilities of each detection's own class, split per image.

    torchvision's ``maskrcnn_inference`` gives the same values but takes the sigmoid of all
    C + 1 channels first; at 300 detections per image that was a tenth of CPU inference.

    Args:
        mask_logits: ``[M, C + 1, S, S]`` for the M detections of all images.
        labels: per image ``[m_i]`` detected labels (sum of m_i = M).

    Returns:
        per image ``[m_i, 1, S, S]`` probabilities.
    """
    flat = torch.cat(labels)
    rows = torch.arange(len(flat), device=flat.device)
    probs = mask_logits[rows, flat].sigmoid()[:, None]
    return list(probs.split([len(lab) for lab in labels]))


class LongTailRoIHeads(RoIHeads):
    """torchvision ``RoIHeads`` with a pluggable long-tail classification loss.

    Args:
        box_roi_pool, box_head, box_predictor: as torchvision's; the predictor returns
            ``([N, K], [N, 4 * (C + 1)])`` and exposes ``cls_weight`` ``[K, D]``.
        loss: the classification loss (becomes the submodule ``cls_loss``).
        box_loss: ``"smooth_l1"`` (torchvision's, beta 1/9) or ``"giou"`` (GIoU on decoded
            boxes, weight ``giou_weight``; both summed over positives and divided by N).
        giou_weight: MMDetection's RoI-head GIoU weight (10) used by AHRL's Baseline++.
        score_thresh, nms_thresh, detections_per_img: inference settings.
        pre_nms_top_k: optional cap on candidates per image before NMS.
        mask_roi_pool, mask_head, mask_predictor: torchvision's mask branch (optional).
        Other arguments: torchvision's RoI sampling settings.
    """

    def __init__(
        self,
        box_roi_pool: nn.Module,
        box_head: nn.Module,
        box_predictor: nn.Module,
        *,
        loss: LongTailLoss,
        fg_iou_thresh: float = 0.5,
        bg_iou_thresh: float = 0.5,
        batch_size_per_image: int = 512,
        positive_fraction: float = 0.25,
        bbox_reg_weights: tuple[float, float, float, float] | None = None,
        score_thresh: float = 1e-4,
        nms_thresh: float = 0.5,
        detections_per_img: int = 300,
        pre_nms_top_k: int | None = None,
        box_loss: str = "smooth_l1",
        giou_weight: float = 10.0,
        mask_roi_pool: nn.Module | None = None,
        mask_head: nn.Module | None = None,
        mask_predictor: nn.Module | None = None,
    ) -> None:
        if box_loss not in BOX_LOSSES:
            raise ValueError(f"box_loss must be one of {BOX_LOSSES}, got {box_loss!r}")
        super().__init__(
            box_roi_pool,
            box_head,
            box_predictor,
            fg_iou_thresh,
            bg_iou_thresh,
            batch_size_per_image,
            positive_fraction,
            bbox_reg_weights,
            score_thresh,
            nms_thresh,
            detections_per_img,
            mask_roi_pool=mask_roi_pool,
            mask_head=mask_head,
            mask_predictor=mask_predictor,
        )
        self.cls_loss = loss
        self.box_loss = box_loss
        self.giou_weight = float(giou_weight)
        self.pre_nms_top_k = pre_nms_top_k
        # Evaluation that needs boxes only switches this off to skip the mask branch.
        self.infer_masks = True

    def box_losses(
        self,
        class_logits: torch.Tensor,
        box_regression: torch.Tensor,
        box_features: torch.Tensor,
        proposals: list[torch.Tensor],
        labels: list[torch.Tensor],
        matched_idxs: list[torch.Tensor],
        targets: list[dict[str, torch.Tensor]],
    ) -> dict[str, torch.Tensor]:
        """Classification terms from the loss object plus the box regression loss.

        Args:
            class_logits: ``[N, K]``. box_regression: ``[N, 4 * (C + 1)]``.
            box_features: ``[N, D]`` box-head output. proposals, labels, matched_idxs: per
            image, from ``select_training_samples``. targets: the images' ground truth.
        """
        labels_all = torch.cat(labels)
        gt_index = matched_gt_index(matched_idxs, labels, [len(t["boxes"]) for t in targets])
        terms = self.cls_loss(
            class_logits.float(),
            labels_all,
            features=box_features.flatten(1),
            weight=self.box_predictor.cls_weight,
            gt_index=gt_index,
        )
        clash = sorted(set(terms) & set(_RESERVED))
        if clash:
            raise ValueError(f"loss {self.cls_loss.name!r} returned reserved term(s) {clash}")
        pos = torch.where(labels_all > 0)[0]
        deltas = box_regression.float().reshape(len(labels_all), -1, 4)[pos, labels_all[pos]]
        # per image, only foreground RoIs index the ground truth (an image may have none)
        gt_boxes = torch.cat(
            [
                t["boxes"][m[lab > 0]]
                for t, m, lab in zip(targets, matched_idxs, labels, strict=True)
            ]
        ).to(deltas.dtype)
        rois = torch.cat(proposals).to(deltas.dtype)[pos]
        n = max(len(labels_all), 1)
        if self.box_loss == "giou":
            pred = self.box_coder.decode_single(deltas, rois)
            box = generalized_box_iou_loss(pred, gt_boxes, reduction="sum") * self.giou_weight
        else:
            target = self.box_coder.encode_single(gt_boxes, rois)
            box = F.smooth_l1_loss(deltas, target, beta=1 / 9, reduction="sum")
        return {**terms, "loss_box_reg": box / n}

    def postprocess_detections(
        self,
        class_logits: torch.Tensor,
        box_regression: torch.Tensor,
        proposals: list[torch.Tensor],
        image_shapes: list[tuple[int, int]],
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """Score with ``loss.scores`` and keep the best class-specific boxes per image.

        Args:
            class_logits: ``[N, K]``; box_regression: ``[N, 4 * (C + 1)]``;
            proposals: per image ``[n_i, 4]``; image_shapes: per image ``(H, W)``.

        Returns:
            per image boxes ``[M_i, 4]``, scores ``[M_i]``, labels ``[M_i]`` in ``1..C``.
        """
        per_image = [len(p) for p in proposals]
        pred_boxes = self.box_coder.decode(box_regression.float(), proposals)[:, 1:]
        pred_scores = self.cls_loss.scores(class_logits.float())
        out: tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]] = ([], [], [])
        for boxes, scores, shape in zip(
            pred_boxes.split(per_image), pred_scores.split(per_image), image_shapes, strict=True
        ):
            kept = select_detections(
                boxes,
                scores,
                shape,
                score_thresh=self.score_thresh,
                nms_thresh=self.nms_thresh,
                detections_per_img=self.detections_per_img,
                pre_nms_top_k=self.pre_nms_top_k,
            )
            for acc, t in zip(out, kept, strict=True):
                acc.append(t)
        return out

    def mask_branch(
        self,
        features: dict[str, torch.Tensor],
        image_shapes: list[tuple[int, int]],
        result: list[dict[str, torch.Tensor]],
        sampled: tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]] | None,
        targets: list[dict[str, torch.Tensor]] | None,
    ) -> dict[str, torch.Tensor]:
        """torchvision's mask branch: loss on positive RoIs, or masks added to ``result``.

        Args:
            sampled: ``(proposals, labels, matched_idxs)`` in training, ``None`` in eval.
        """
        if sampled is not None and targets is not None:
            proposals, labels, matched_idxs = sampled
            pos = [torch.where(lab > 0)[0] for lab in labels]
            boxes = [p[i] for p, i in zip(proposals, pos, strict=True)]
            pos_matched = [m[i] for m, i in zip(matched_idxs, pos, strict=True)]
        else:
            boxes = [r["boxes"] for r in result]
        x = self.mask_roi_pool(features, boxes, image_shapes)
        mask_logits = self.mask_predictor(self.mask_head(x))
        if sampled is not None and targets is not None:
            gt_masks = [t["masks"] for t in targets]
            gt_labels = [t["labels"] for t in targets]
            return {
                "loss_mask": maskrcnn_loss(mask_logits, boxes, gt_masks, gt_labels, pos_matched)
            }
        probs = mask_probs(mask_logits, [r["labels"] for r in result])
        for prob, r in zip(probs, result, strict=True):
            r["masks"] = prob
        return {}

    def forward(  # type: ignore[override]
        self,
        features: dict[str, torch.Tensor],
        proposals: list[torch.Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, torch.Tensor]] | None = None,
    ) -> tuple[list[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
        """Args: FPN features, per-image proposals ``[n_i, 4]``, image sizes, targets
        (training). Returns per-image detections (eval) and the loss dict (training)."""
        sampled = None
        if self.training:
            if targets is None:
                raise ValueError("targets are required in training mode")
            for t in targets:
                if not t["boxes"].is_floating_point() or t["labels"].dtype != torch.int64:
                    raise TypeError("target boxes must be float and labels int64")
            proposals, matched_idxs, labels, _ = self.select_training_samples(proposals, targets)
            sampled = (proposals, labels, matched_idxs)
        box_features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_regression = self.box_predictor(box_features)
        result: list[dict[str, torch.Tensor]] = []
        losses: dict[str, torch.Tensor] = {}
        if sampled is not None and targets is not None:
            losses = self.box_losses(
                class_logits,
                box_regression,
                box_features,
                proposals,
                labels,
                matched_idxs,
                targets,
            )
        else:
            boxes, scores, labels_out = self.postprocess_detections(
                class_logits, box_regression, proposals, image_shapes
            )
            result = [
                {"boxes": b, "labels": lab, "scores": s}
                for b, s, lab in zip(boxes, scores, labels_out, strict=True)
            ]
        if self.has_mask() and (self.training or self.infer_masks):
            losses.update(self.mask_branch(features, image_shapes, result, sampled, targets))
        return result, losses


__all__ = ["BOX_LOSSES", "LongTailRoIHeads", "mask_probs", "matched_gt_index", "select_detections"]
