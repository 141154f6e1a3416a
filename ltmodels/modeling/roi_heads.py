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
counts, EBL mean scores, an MFS memory) are part of the model's ``state_dict`` and of every
checkpoint.

A loss with a feature memory (LOCE's MFS, the protocol of
:mod:`ltmodels.losses.feature_sampling`) is bound to the predictor's feature width here; in
training the head pushes dense-box features to it and appends R sampled memory rows after
the N RoIs of the classifier batch (:mod:`ltmodels.modeling.roi_mfs`). Other losses see no change.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection.roi_heads import RoIHeads, maskrcnn_loss
from torchvision.ops import generalized_box_iou_loss

from ltmodels.losses.base import LongTailLoss
from ltmodels.losses.feature_sampling import bind_memory, memory_of
from ltmodels.losses.mfs import MemorySample, memory_gt_index
from ltmodels.modeling.detections import mask_probs, own_class_mask_logits, select_detections
from ltmodels.modeling.roi_mfs import memory_box_loss, push_dense_features

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
        bind_memory(loss, box_predictor.cls_weight.shape[1])
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
        memory_rows: MemorySample | None = None,
    ) -> dict[str, torch.Tensor]:
        """Classification terms from the loss object plus the box regression loss.

        Args:
            class_logits: ``[N + R, K]``. box_regression: ``[N + R, 4 * (C + 1)]``.
            box_features: ``[N + R, D]`` box-head output. proposals, labels, matched_idxs:
            per image, from ``select_training_samples`` (N RoIs in all). targets: the images'
            ground truth. memory_rows: the R MFS rows appended after the RoIs (R = 0 if None).
        """
        labels_all = torch.cat(labels)
        gt_index = matched_gt_index(matched_idxs, labels, [len(t["boxes"]) for t in targets])
        cls_labels, cls_gt = labels_all, gt_index
        if memory_rows is not None:
            cls_labels = torch.cat([labels_all, memory_rows.labels])
            cls_gt = torch.cat([gt_index, memory_gt_index(memory_rows.labels, gt_index)])
        terms = self.cls_loss(
            class_logits.float(),
            cls_labels,
            features=box_features.flatten(1),
            weight=self.box_predictor.cls_weight,
            gt_index=cls_gt,
        )
        clash = sorted(set(terms) & set(_RESERVED))
        if clash:
            raise ValueError(f"loss {self.cls_loss.name!r} returned reserved term(s) {clash}")
        pos = torch.where(labels_all > 0)[0]
        box_regression = box_regression.float()
        rois_regression = box_regression[: len(labels_all)]
        deltas = rois_regression.reshape(len(labels_all), -1, 4)[pos, labels_all[pos]]
        # per image, only foreground RoIs index the ground truth (an image may have none)
        gt_boxes = torch.cat(
            [
                t["boxes"][m[lab > 0]]
                for t, m, lab in zip(targets, matched_idxs, labels, strict=True)
            ]
        ).to(deltas.dtype)
        rois = torch.cat(proposals).to(deltas.dtype)[pos]
        n = max(len(cls_labels), 1)
        if self.box_loss == "giou":
            pred = self.box_coder.decode_single(deltas, rois)
            box = generalized_box_iou_loss(pred, gt_boxes, reduction="sum") * self.giou_weight
        else:
            target = self.box_coder.encode_single(gt_boxes, rois)
            box = F.smooth_l1_loss(deltas, target, beta=1 / 9, reduction="sum")
        if memory_rows is not None:
            box = box + memory_box_loss(
                self.box_coder,
                box_regression[len(labels_all) :],
                memory_rows,
                box_loss=self.box_loss,
                giou_weight=self.giou_weight,
            )
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
        x = self.mask_head(self.mask_roi_pool(features, boxes, image_shapes))
        if sampled is not None and targets is not None:
            mask_logits = self.mask_predictor(x)
            gt_masks = [t["masks"] for t in targets]
            gt_labels = [t["labels"] for t in targets]
            return {
                "loss_mask": maskrcnn_loss(mask_logits, boxes, gt_masks, gt_labels, pos_matched)
            }
        labels = [r["labels"] for r in result]
        own = own_class_mask_logits(self.mask_predictor, x, labels)
        if own is not None:  # inference reads one class channel per detection
            probs = list(own.sigmoid().split([len(lab) for lab in labels]))
        else:
            probs = mask_probs(self.mask_predictor(x), labels)
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
        memory = memory_of(self.cls_loss) if sampled is not None else None
        rows = None
        if memory is not None and targets is not None:
            push_dense_features(memory, self, features, targets, image_shapes)
            rows = memory.sample()
            box_features = torch.cat(
                [box_features.flatten(1), rows.features.to(box_features.dtype)]
            )
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
                rows,
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
