"""Inference and LVIS scoring of a detector: :func:`predict` (detections in LVIS result
format, gathered over DDP workers), :func:`score_detections` and :func:`evaluate`.

A loader yields ``(images, targets)`` as :func:`ltmodels.data.lvis.collate_fn` builds them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils
from torch import nn

from ltmodels.engine import distributed as dist_utils
from ltmodels.engine.checkpoint import unwrap
from ltmodels.engine.train import Batch
from ltmodels.evaluation.metrics import LvisGroundTruth, evaluate_lvis, load_lvis_gt

log = logging.getLogger(__name__)


def dataset_image_sizes(dataset: Any) -> dict[int, tuple[int, int]] | None:
    """``image_id -> (height, width)`` of the original images, for datasets that know them
    (:class:`~ltmodels.data.lvis.LVISDetection` and ``Subset`` of one); else ``None``."""
    while hasattr(dataset, "dataset") and not hasattr(dataset, "image_info"):
        dataset = dataset.dataset
    if not (hasattr(dataset, "image_info") and hasattr(dataset, "image_ids")):
        return None
    infos = (dataset.image_info(i) for i in range(len(dataset.image_ids)))
    return {int(info["id"]): (int(info["height"]), int(info["width"])) for info in infos}


def _lvis_results(
    output: Mapping[str, torch.Tensor],
    image_id: int,
    input_size: tuple[int, int],
    orig_size: tuple[int, int],
    cat_lookup: torch.Tensor,
    masks: bool,
) -> list[dict[str, Any]]:
    """One image's detections (model input coordinates) as LVIS result dicts in the original
    image's coordinates."""
    sy, sx = orig_size[0] / input_size[0], orig_size[1] / input_size[1]
    boxes = output["boxes"].detach().float().cpu() * torch.tensor([sx, sy, sx, sy])
    boxes[:, 2:] -= boxes[:, :2]
    cats = cat_lookup[output["labels"].cpu()].tolist()
    scores = output["scores"].detach().float().cpu().tolist()
    dets = [
        {"image_id": image_id, "category_id": c, "bbox": b, "score": s}
        for c, b, s in zip(cats, boxes.tolist(), scores, strict=True)
    ]
    if masks and dets:
        prob = output["masks"].detach().float()
        if tuple(prob.shape[-2:]) != tuple(orig_size):
            prob = F.interpolate(prob, size=orig_size, mode="bilinear", align_corners=False)
        binary = (prob[:, 0] > 0.5).cpu().numpy().astype(np.uint8)
        rles = mask_utils.encode(np.asfortranarray(binary.transpose(1, 2, 0)))
        for d, rle in zip(dets, rles, strict=True):
            d["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
    return dets


@torch.no_grad()
def predict(
    model: nn.Module,
    loader: Iterable[Batch],
    *,
    device: torch.device | str,
    label_to_cat_id: Mapping[int, int],
    masks: bool,
    image_sizes: Mapping[int, tuple[int, int]] | None = None,
) -> list[dict[str, Any]]:
    """Run the detector and return LVIS result dicts (bbox xywh, score, category_id,
    image_id, and an RLE ``segmentation`` when ``masks``).

    Args:
        label_to_cat_id: contiguous label (1..C) -> dataset category id.
        image_sizes: ``image_id -> (H, W)`` of the original images, when the loader's
            transforms resized them; predictions are mapped back. Default: taken from the
            loader's dataset when it knows them (LVISDetection), else no mapping.

    Under DDP each worker predicts its shard and every worker returns all detections. An
    image seen twice (sampler padding) contributes its detections once.
    """
    device = torch.device(device)
    if image_sizes is None:
        image_sizes = dataset_image_sizes(getattr(loader, "dataset", None))
    lookup = torch.zeros(max(label_to_cat_id) + 1, dtype=torch.long)
    for label, cat in label_to_cat_id.items():
        lookup[label] = cat
    model.eval()
    heads: Any = getattr(unwrap(model), "roi_heads", None)
    infer_masks = getattr(heads, "infer_masks", None)
    if infer_masks is not None:  # boxes only: skip the mask branch (most of CPU inference)
        heads.infer_masks = masks
    per_image: dict[int, list[dict[str, Any]]] = {}
    try:
        for images, targets in loader:
            outputs = model([im.to(device) for im in images])
            for im, t, out in zip(images, targets, outputs, strict=True):
                image_id = int(t["image_id"])
                size = (int(im.shape[-2]), int(im.shape[-1]))
                orig = size if image_sizes is None else image_sizes.get(image_id, size)
                per_image[image_id] = _lvis_results(out, image_id, size, orig, lookup, masks)
    finally:
        if infer_masks is not None:
            heads.infer_masks = infer_masks
    parts = [per_image]
    if dist_utils.is_distributed():
        parts = [{} for _ in range(dist_utils.world_size())]
        torch.distributed.all_gather_object(parts, per_image)
    merged: dict[int, list[dict[str, Any]]] = {}
    for part in parts:  # a sharded sampler pads with repeats: first copy of an image wins
        for image_id, dets in part.items():
            merged.setdefault(image_id, dets)
    return [d for dets in merged.values() for d in dets]


def score_detections(
    detections: Sequence[Mapping[str, Any]],
    gt: str | Path | Mapping[str, Any] | LvisGroundTruth,
    *,
    iou_types: Sequence[str] = ("bbox", "segm"),
    max_dets: int = 300,
) -> tuple[dict[str, float], dict[str, list[dict[str, Any]]]]:
    """LVIS metrics of a result set: flat ``{"bbox/AP": .., "segm/APr": ..}`` and the
    per-category AP tables by IoU type."""
    gt_data = gt if isinstance(gt, LvisGroundTruth) else load_lvis_gt(gt)
    metrics: dict[str, float] = {}
    per_category: dict[str, list[dict[str, Any]]] = {}
    for iou_type in iou_types:
        res = evaluate_lvis(gt_data, detections, iou_type, max_dets=max_dets)
        per_category[iou_type] = res.pop("per_category")
        metrics.update({f"{iou_type}/{k}": float(v) for k, v in res.items()})
    return metrics, per_category


def evaluate(
    model: nn.Module,
    loader: Iterable[Batch],
    gt: str | Path | Mapping[str, Any] | LvisGroundTruth,
    *,
    device: torch.device | str,
    label_to_cat_id: Mapping[int, int],
    iou_types: Sequence[str] = ("bbox", "segm"),
    image_sizes: Mapping[int, tuple[int, int]] | None = None,
    max_dets: int = 300,
) -> dict[str, float]:
    """Predict on ``loader`` and return the flat LVIS metric dict (``"bbox/AP"``,
    ``"bbox/APr"``, ..., ``"segm/APf"``; -1.0 where LVIS leaves a metric undefined)."""
    dets = predict(
        model,
        loader,
        device=device,
        label_to_cat_id=label_to_cat_id,
        masks="segm" in iou_types,
        image_sizes=image_sizes,
    )
    return score_detections(dets, gt, iou_types=iou_types, max_dets=max_dets)[0]


__all__ = ["dataset_image_sizes", "evaluate", "predict", "score_detections"]
