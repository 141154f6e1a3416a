"""Box detections and LVIS box metrics of box predictors on cached validation features.

Shape shorthand: B validation images in a chunk, N cached proposals of the chunk, D feature
channels, C foreground classes, M candidates kept before NMS.

Per image this computes what :meth:`LongTailRoIHeads.postprocess_detections` computes (scores
``loss.scores(logits)``, class-specific boxes decoded with the stage-1 box coder and clipped,
score threshold, optional pre-NMS top-k, small boxes removed, per-class NMS, best
``detections_per_img``), in another order that gives the same detections but costs less:

- the top-k candidates are chosen per image on the ``[N, C]`` scores, vectorised over a chunk
  of images, and only those M candidates' boxes are decoded (the full model decodes
  ``N x C`` boxes); with an ``nn.Linear`` ``bbox_pred`` only their 4 regression outputs are
  computed when that is cheaper than the whole regression of their RoIs (LVIS);
- per-class NMS (:func:`grouped_nms`) runs in calls of about 128 candidates, whole classes of
  one image each, moved apart by a coordinate offset in float64 (exact for float32 boxes):
  neither one call per class nor one quadratic call over all classes;
- every predictor of the list is applied to one read of each chunk of features, so a study
  evaluates many trials for the cost of reading the cache once.

The classifier of a predictor with a ``classify`` method runs without its box regressor
(:func:`classifier_logits`); other predictors run whole.

Detections map back to LVIS image coordinates (``orig_size / input_size``) and category ids.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torchvision.models.detection._utils import BoxCoder
from torchvision.ops import nms

from ltmodels.cache.store import FeatureCache
from ltmodels.errors import ConfigError
from ltmodels.evaluation.metrics import (
    ImageBoxes,
    LvisGroundTruth,
    evaluate_lvis_boxes,
    load_lvis_gt,
)
from ltmodels.losses.base import LongTailLoss

_CHUNK_SCORES = 1 << 24  # padded score entries per chunk (64 MiB of float32)
_NMS_GROUP = 128  # candidates per NMS call (whole classes of one image per call)


def classifier_logits(predictor: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Logits ``[N, K]`` of a predictor, without its box regression when it can be skipped
    (the predictor has a ``classify`` method, as :mod:`ltmodels.modeling.heads`' do)."""
    classify = getattr(predictor, "classify", None)
    return classify(x) if callable(classify) else predictor(x)[0]


def _deltas(predictor: nn.Module, x: torch.Tensor, roi: torch.Tensor, label: torch.Tensor):
    """Regression outputs ``[M, 4]`` of RoI ``roi`` for class ``label`` (1..C).

    Runs ``bbox_pred`` on the distinct RoIs only, or, when that is the larger job (many
    classes, few candidates per RoI: LVIS), one ``[m_c, D] x [D, 4]`` product per class
    present (gathering every candidate's ``[4, D]`` weight rows instead moves 16 KB per
    candidate at D = 1024 and measured 6x slower on CPU)."""
    if roi.numel() == 0:  # no candidate left in this chunk
        return x.new_zeros((0, 4))
    uniq, inverse = torch.unique(roi, return_inverse=True)
    bbox = getattr(predictor, "bbox_pred", None)
    if not isinstance(bbox, nn.Linear) or len(uniq) * bbox.out_features <= 64 * len(roi):
        full = predictor(x[uniq])[1] if bbox is None else bbox(x[uniq])
        return full.reshape(len(uniq), -1, 4)[inverse, label]
    weight, bias = bbox.weight.view(-1, 4, bbox.in_features), bbox.bias.view(-1, 4)
    order = torch.argsort(label)
    classes, sizes = torch.unique_consecutive(label[order], return_counts=True)
    grouped = x[roi[order]].split(sizes.tolist())
    pairs = zip(classes.tolist(), grouped, strict=True)
    parts = [torch.addmm(bias[c], xs, weight[c].T) for c, xs in pairs]
    out = torch.empty(len(roi), 4, dtype=x.dtype, device=x.device)
    out[order] = torch.cat(parts)
    return out


def _top_candidates(
    scores: torch.Tensor, counts: torch.Tensor, k: int | None, thresh: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per image the best ``k`` (all if None) scores above ``thresh``.

    Args:
        scores: ``[N, C]`` of the chunk's images, image after image. counts: ``[B]``.

    Returns:
        image ``[M]`` (sorted), RoI row ``[M]`` (into ``scores``), class column ``[M]``,
        score ``[M]``.
    """
    num_classes, dev = scores.shape[1], scores.device
    b = len(counts)
    image = torch.repeat_interleave(torch.arange(b, device=dev), counts)
    if k is None:
        roi, cls = torch.where(scores > thresh)
        return image[roi], roi, cls, scores[roi, cls]
    pmax = int(counts.max())
    starts = torch.cumsum(counts, 0) - counts
    if bool((counts == pmax).all()):
        padded = scores.reshape(b, pmax * num_classes)
    else:
        within = torch.arange(len(scores), device=dev) - starts[image]
        padded = scores.new_full((b, pmax, num_classes), -1.0)
        padded[image, within] = scores
        padded = padded.reshape(b, pmax * num_classes)
    vals, idx = padded.topk(min(k, padded.shape[1]), dim=1)
    image, col = torch.where(vals > thresh)
    flat = idx[image, col]
    return image, starts[image] + flat // num_classes, flat % num_classes, vals[image, col]


def grouped_nms(
    boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou: float
) -> torch.Tensor:
    """``batched_nms``'s result (the kept indices, as a set) in few, small NMS calls.

    The candidates are sorted by ``idxs`` (class, or image x class) and cut into groups of
    about 128 at ``idxs`` boundaries; each group is one ``nms`` call with its ``idxs`` moved
    apart by a coordinate offset in float64 (exact for float32 boxes). Greedy NMS costs
    ``O(n^2)`` per call, so this costs ``O(n * 128)`` where one call with offsets costs
    ``O(n^2)`` and one call per class costs one Python call per class (LVIS: 1203).

    Args:
        boxes: ``[M, 4]``. scores: ``[M]``. idxs: ``[M]`` int64 >= 0.

    Returns:
        ``[K]`` int64 kept indices, in no particular order.
    """
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device)
    order = torch.argsort(idxs, stable=True)
    ids = idxs[order]
    run_start = torch.ones_like(ids, dtype=torch.bool)
    run_start[1:] = ids[1:] != ids[:-1]
    first = torch.where(run_start)[0][torch.cumsum(run_start, 0) - 1]
    _, sizes = torch.unique_consecutive(first // _NMS_GROUP, return_counts=True)
    boxes64 = boxes.double()
    shifted = boxes64 + (idxs.double() * (boxes64.max() + 1))[:, None]
    scores64 = scores.double()
    keep = [sel[nms(shifted[sel], scores64[sel], iou)] for sel in order.split(sizes.tolist())]
    return torch.cat(keep)


def _chunk_detections(
    scores: torch.Tensor,
    x: torch.Tensor,
    predictor: nn.Module,
    proposals: torch.Tensor,
    counts: torch.Tensor,
    shapes: torch.Tensor,
    coder: BoxCoder,
    opts: Mapping[str, Any],
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per image of the chunk: boxes ``[m, 4]`` (input coordinates), scores, labels 1..C."""
    image, roi, cls, score = _top_candidates(
        scores, counts, opts["topk_candidates"], opts["score_thresh"]
    )
    boxes = coder.decode_single(_deltas(predictor, x, roi, cls + 1).float(), proposals[roi])
    size = shapes[image].to(boxes.dtype)  # (h, w)
    boxes = torch.stack(
        [
            boxes[:, 0].clamp(min=0).minimum(size[:, 1]),
            boxes[:, 1].clamp(min=0).minimum(size[:, 0]),
            boxes[:, 2].clamp(min=0).minimum(size[:, 1]),
            boxes[:, 3].clamp(min=0).minimum(size[:, 0]),
        ],
        dim=1,
    )
    wh = boxes[:, 2:] - boxes[:, :2]
    big = (wh >= 1e-2).all(dim=1)
    image, boxes, score, labels = image[big], boxes[big], score[big], cls[big] + 1
    keep = grouped_nms(boxes, score, image * (scores.shape[1] + 1) + labels, opts["nms_thresh"])
    keep = keep[torch.argsort(score[keep], descending=True, stable=True)]
    keep = keep[torch.argsort(image[keep], stable=True)]  # per image, best first
    kept_image = image[keep]
    per_image = torch.bincount(kept_image, minlength=len(counts))
    rank = (
        torch.arange(len(keep), device=keep.device) - (per_image.cumsum(0) - per_image)[kept_image]
    )
    keep = keep[rank < opts["detections_per_img"]]
    split = torch.bincount(image[keep], minlength=len(counts)).tolist()
    return list(
        zip(
            boxes[keep].split(split),
            score[keep].split(split),
            labels[keep].split(split),
            strict=True,
        )
    )


def _image_boxes(
    dets: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    image_id: int,
    scale: np.ndarray,
    cat_ids: np.ndarray,
) -> ImageBoxes:
    """One image's detections in LVIS terms: xywh boxes in LVIS image coordinates (scaled
    in float32, then widened to float64), scores, category ids."""
    boxes, scores, labels = (t.cpu() for t in dets)
    sx, sy = float(scale[1]), float(scale[0])
    boxes = boxes * torch.tensor([sx, sy, sx, sy])
    boxes[:, 2:] -= boxes[:, :2]
    return ImageBoxes(
        image_id,
        boxes.numpy().astype(np.float64),
        scores.numpy().astype(np.float64),
        cat_ids[labels.numpy()],
    )


def _lvis_dicts(image: ImageBoxes) -> list[dict[str, Any]]:
    """An image's detections as LVIS result dicts."""
    return [
        {"image_id": image.image_id, "category_id": c, "bbox": b, "score": s}
        for c, b, s in zip(
            image.category_ids.tolist(), image.boxes.tolist(), image.scores.tolist(), strict=True
        )
    ]


def predict_cached(
    predictors: Sequence[tuple[nn.Module, LongTailLoss]],
    cache: FeatureCache,
    **options: Any,
) -> list[list[dict[str, Any]]]:
    """LVIS box results of each ``(predictor, loss)`` on the cached validation proposals:
    :func:`predict_boxes`'s detections as result dicts ``{image_id, category_id, bbox
    (xywh), score}``, all validation images in one list per predictor."""
    return [
        [d for image in images for d in _lvis_dicts(image)]
        for images in predict_boxes(predictors, cache, **options)
    ]


@torch.no_grad()
def predict_boxes(
    predictors: Sequence[tuple[nn.Module, LongTailLoss]],
    cache: FeatureCache,
    *,
    score_thresh: float = 1e-4,
    nms_thresh: float = 0.5,
    detections_per_img: int = 300,
    topk_candidates: int | None = 2000,
    images_per_chunk: int = 64,
    device: torch.device | str = "cpu",
) -> list[list[ImageBoxes]]:
    """Box detections of each ``(predictor, loss)`` on the cached validation proposals.

    Args:
        predictors: box predictors (on ``device``) with the loss that scores their logits.
        cache: from :func:`~ltmodels.cache.build.build_feature_cache`.
        score_thresh, nms_thresh, detections_per_img: the RoI head's inference settings.
        topk_candidates: (RoI, class) candidates kept per image before NMS (``None``: all
            above the threshold, as the full model does by default).
        images_per_chunk: images whose features are read and scored at once (lowered so a
            chunk's padded scores stay under 16M entries).

    Returns:
        Per predictor, one :class:`~ltmodels.evaluation.metrics.ImageBoxes` per validation
        image (LVIS image coordinates and category ids).
    """
    for _, loss in predictors:
        if loss.num_classes != cache.num_classes:
            raise ConfigError(
                f"loss {loss.name!r} has {loss.num_classes} classes, the cache {cache.num_classes}"
            )
    device = torch.device(device)
    val = cache.val
    coder = BoxCoder(**cache.manifest["box_coder"])
    cat_ids = cache.label_to_cat_id
    opts = {
        "score_thresh": score_thresh,
        "nms_thresh": nms_thresh,
        "detections_per_img": detections_per_img,
        "topk_candidates": topk_candidates,
    }
    modes = [p.training for p, _ in predictors]
    for p, _ in predictors:
        p.eval()
    pmax = max(int(val["rows"].max()), 1)
    chunk = max(1, min(images_per_chunk, _CHUNK_SCORES // (pmax * max(cache.num_classes, 1))))
    results: list[list[ImageBoxes]] = [[] for _ in predictors]
    offsets = val["offsets"]
    for start in range(0, cache.num_val_images, chunk):
        end = min(start + chunk, cache.num_val_images)
        r0, r1 = int(offsets[start]), int(offsets[end])
        x = torch.from_numpy(np.array(val["features"][r0:r1])).to(device).float()
        proposals = torch.from_numpy(np.array(val["boxes"][r0:r1])).to(device)
        counts = torch.from_numpy(np.array(val["rows"][start:end])).to(device)
        shapes = torch.from_numpy(np.array(val["input_size"][start:end])).to(device)
        scale = val["orig_size"][start:end] / val["input_size"][start:end]
        for out, (predictor, loss) in zip(results, predictors, strict=True):
            scores = loss.scores(classifier_logits(predictor, x).float())
            dets = _chunk_detections(scores, x, predictor, proposals, counts, shapes, coder, opts)
            for i, d in enumerate(dets):
                out.append(_image_boxes(d, int(val["image_ids"][start + i]), scale[i], cat_ids))
    for (p, _), mode in zip(predictors, modes, strict=True):
        p.train(mode)
    return results


def evaluate_cached(
    predictors: Sequence[tuple[nn.Module, LongTailLoss]],
    cache: FeatureCache,
    gt: str | Path | Mapping[str, Any] | LvisGroundTruth,
    **predict_kwargs: Any,
) -> list[tuple[dict[str, float], list[dict[str, Any]]]]:
    """LVIS bbox metrics of each predictor on the cache's validation images.

    Args:
        predictors, cache: as :func:`predict_boxes`.
        gt: the validation ground truth (parsed once for all predictors).
        predict_kwargs: :func:`predict_boxes`'s options.

    Returns:
        Per predictor, the flat metrics ``{"bbox/AP": ..., "bbox/APr": ...}`` and the
        per-category AP table, as :func:`ltmodels.engine.evaluate.score_detections` gives them.
    """
    gt_data = gt if isinstance(gt, LvisGroundTruth) else load_lvis_gt(gt)
    out = []
    for images in predict_boxes(predictors, cache, **predict_kwargs):
        result = evaluate_lvis_boxes(gt_data, images)
        per_category = result.pop("per_category")
        out.append(({f"bbox/{k}": float(v) for k, v in result.items()}, per_category))
    return out


__all__ = [
    "classifier_logits",
    "evaluate_cached",
    "grouped_nms",
    "predict_boxes",
    "predict_cached",
]
