"""LVIS evaluation (bbox and segm) with vernier, numerically identical to lvis-api.

The engine is vernier's Rust core in its lvis-api parity mode: the ground truth is read as a
federated LVIS dataset (``CocoDataset.from_lvis_json``), detections are matched on an IoU grid
with ``parity_mode="strict"``, then accumulated and summarized with LVIS's plan. The numbers
are lvis-api's ``LVISEval`` numbers (the tests compare them to lvis-api on every metric and
every category); only the speed differs (see BENCHMARKS.md).

LVIS semantics kept on purpose:

- at most ``max_dets`` (300) detections per image, the highest-scoring ones, counted over all
  categories before anything else is filtered;
- a detection of a category that is neither annotated on its image nor in the image's
  ``neg_category_ids`` is ignored (the federated protocol does not know if it is right);
- an unmatched detection of a category in the image's ``not_exhaustive_category_ids`` is
  ignored, not counted as a false positive;
- a metric whose cells are all undefined is -1, as in lvis-api: APs when no ground truth is
  small, APr when no rare category has ground truth in the evaluated images, a category's AP
  when it has no ground truth at all.

The ground truth must satisfy LVIS's own invariants, which vernier checks and lvis-api does
not: a category in an image's ``neg_category_ids`` has no annotation on that image, and one in
its ``not_exhaustive_category_ids`` has at least one. Violations raise ``DatasetError``.

Zero detections are valid input (lvis-api itself cannot hold an empty result list): every
defined AP is then 0.0 and undefined ones stay -1, which is what lvis-api's accumulate computes
for categories that have ground truth and no detection.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple, cast

import numpy as np
import vernier.instance as vi

from ltmodels.data.parsed import memoised
from ltmodels.errors import ConfigError, DatasetError
from ltmodels.evaluation.lvis_api import METRIC_NAMES, per_category_ap

IOU_TYPES = ("bbox", "segm")
FREQUENCIES = ("r", "c", "f")
# vernier's lvis-api parity mode (pycocotools/lvis-api quirks reproduced), matching per category.
_STRICT: dict[str, Any] = {"parity_mode": "strict", "use_cats": True}


@dataclass(frozen=True, eq=False)
class LvisGroundTruth:
    """A parsed, validated LVIS ground truth, reusable across many evaluations.

    Parsing the ground-truth JSON is the part of an evaluation worth not repeating: a study
    that evaluates many trials against one validation set loads it once with
    :func:`load_lvis_gt`. The vernier dataset also keeps the ground-truth masks it rasterized
    for one segm evaluation for the next.

    Attributes:
        dataset: vernier's federated dataset handle.
        image_ids: [M] int64 ids of the evaluated images, sorted.
        category_ids: [K] int64 category ids, sorted (the order of ``per_category``).
        categories: category records by id (``name``, ``frequency``).
        source: the file it came from, or ``"<dict>"``, for error messages.
    """

    dataset: vi.CocoDataset
    image_ids: np.ndarray
    category_ids: np.ndarray
    categories: Mapping[int, Mapping[str, Any]]
    source: str


def _check_lvis_fields(data: Any, source: str) -> None:
    """Reject what lvis-api would choke on, naming the record (vernier checks the rest)."""
    if not isinstance(data, Mapping):
        raise DatasetError(f"{source}: an LVIS ground truth is a JSON object, got {type(data)}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DatasetError(f"{source}: missing the LVIS list {key!r}")
    for cat in data["categories"]:
        if not isinstance(cat, Mapping) or "id" not in cat or "name" not in cat:
            raise DatasetError(f"{source}: category record without 'id'/'name': {cat!r:.200}")
        if cat.get("frequency") not in FREQUENCIES:
            raise DatasetError(
                f"{source}: category {cat['id']} has frequency {cat.get('frequency')!r}; "
                "LVIS categories need 'frequency' in r/c/f"
            )
    for img in data["images"]:
        if not isinstance(img, Mapping) or "id" not in img:
            raise DatasetError(f"{source}: image record without 'id': {img!r:.200}")
        for key in ("neg_category_ids", "not_exhaustive_category_ids"):
            if not isinstance(img.get(key), list):
                raise DatasetError(
                    f"{source}: image {img['id']} lacks the LVIS list {key!r} "
                    "(use [] when nothing is verified absent / not exhaustive)"
                )


def load_lvis_gt(gt: str | Path | Mapping[str, Any]) -> LvisGroundTruth:
    """Read and validate an LVIS-format ground truth (v0.5 or v1).

    Args:
        gt: path of the annotation JSON, or the loaded dict (not modified).

    Returns:
        The parsed ground truth, to pass to :func:`evaluate_lvis` any number of times.

    Raises:
        DatasetError: the file is missing or not JSON, or the content is not LVIS-format
            (missing ``frequency``/``neg_category_ids``/``not_exhaustive_category_ids``, a
            category both annotated and listed as negative on an image, bad annotations).
    """
    if isinstance(gt, (str, Path)):
        path = Path(gt)
        if not path.is_file():
            raise DatasetError(f"LVIS ground truth not found: {gt}")
        return memoised("lvis-gt", path, lambda: _parse_gt(path))
    return _parse_gt(gt)


def _parse_gt(gt: Path | Mapping[str, Any]) -> LvisGroundTruth:
    if isinstance(gt, Path):
        source = str(gt)
        raw = gt.read_bytes()
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DatasetError(f"{source}: not valid JSON ({exc})") from None
    elif isinstance(gt, Mapping):
        source, data = "<dict>", gt
        try:
            raw = json.dumps(gt).encode()
        except (TypeError, ValueError) as exc:
            raise DatasetError(
                f"{source}: ground truth is not JSON-serializable ({exc})"
            ) from None
    else:
        raise DatasetError(f"ground truth must be a path or a dict, got {type(gt).__name__}")
    _check_lvis_fields(data, source)
    try:
        dataset = vi.CocoDataset.from_lvis_json(raw)
    except ValueError as exc:
        raise DatasetError(f"{source}: invalid LVIS ground truth: {exc}") from None
    categories = {int(c["id"]): c for c in data["categories"]}
    return LvisGroundTruth(
        dataset=dataset,
        image_ids=np.unique(np.array([img["id"] for img in data["images"]], dtype=np.int64)),
        category_ids=np.array(sorted(categories), dtype=np.int64),
        categories=categories,
        source=source,
    )


def _ids(detections: Sequence[Mapping[str, Any]], key: str) -> np.ndarray:
    """[N] int64 column ``key`` of the detections; a missing or non-integer one is named."""
    try:
        values = np.asarray([d[key] for d in detections])
        if values.size == 0 or values.dtype.kind in "iu":
            return values.astype(np.int64)
    except (KeyError, TypeError, ValueError):
        pass
    for i, det in enumerate(detections):
        value = det.get(key) if isinstance(det, Mapping) else None
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
            raise ConfigError(
                f"detection {i} needs an integer {key!r} (LVIS result dict), got {det!r:.200}"
            )
    raise ConfigError(f"detections: {key!r} values do not form an integer column")


def _check_detections(
    detections: Sequence[Mapping[str, Any]], gt: LvisGroundTruth, iou_type: str
) -> Literal["bbox", "mask"]:
    """Validate detections against the ground truth; return vernier's ``dt_area`` rule."""
    if isinstance(detections, (str, bytes, Mapping)) or not isinstance(detections, Sequence):
        raise ConfigError(
            f"detections must be a list of LVIS result dicts, got {type(detections).__name__}"
        )
    for key, known, what in (
        ("image_id", gt.image_ids, "image"),
        ("category_id", gt.category_ids, "category"),
    ):
        values = _ids(detections, key)
        unknown = np.flatnonzero(~np.isin(values, known))
        if unknown.size:
            i = int(unknown[0])
            raise DatasetError(
                f"detection {i} has {key} {int(values[i])}, which is not among the ground "
                f"truth's {what} ids ({gt.source}; {unknown.size} such detections): map "
                f"predictions to the ground truth's {what} ids"
            )
    if iou_type == "bbox":
        return "bbox"
    without_mask = [i for i, d in enumerate(detections) if "segmentation" not in d]
    if without_mask:
        raise ConfigError(
            f"segm evaluation: detection {without_mask[0]} has no 'segmentation' "
            f"({len(without_mask)} such); give each an RLE from pycocotools.mask.encode"
        )
    with_box = sum("bbox" in d for d in detections)
    if with_box == len(detections):
        return "bbox"  # lvis-api: a result with a box gets the box's area (w * h)
    if with_box == 0:
        return "mask"  # lvis-api: box-less results get the mask's area
    raise ConfigError(
        "segm evaluation: some detections have a 'bbox' and some do not; lvis-api decides "
        "the detection areas from the first one, so give all of them a box or none"
    )


def _vernier_detections(
    detections: Sequence[Mapping[str, Any]], dt_area: str
) -> Sequence[Mapping[str, Any]]:
    """Box-less segm results get a zero box: vernier requires the field, segm never reads it."""
    if dt_area != "mask":
        return detections
    return [{**d, "bbox": [0.0, 0.0, 0.0, 0.0]} for d in detections]


def evaluate_lvis(
    gt: str | Path | Mapping[str, Any] | LvisGroundTruth,
    detections: Sequence[Mapping[str, Any]],
    iou_type: str = "bbox",
    *,
    max_dets: int = 300,
) -> dict[str, Any]:
    """LVIS box or mask AP of a detection result set, equal to lvis-api's ``LVISEval``.

    Args:
        gt: the LVIS-format ground truth: a JSON path, the loaded dict, or a
            :class:`LvisGroundTruth` from :func:`load_lvis_gt` (no re-parsing).
        detections: LVIS result dicts ``{image_id, category_id, bbox: [x, y, w, h], score}``;
            for ``"segm"`` also ``segmentation``, an RLE from ``pycocotools.mask.encode``
            whose ``counts`` may be bytes or str. Ids are the ground truth's (LVIS category
            ids, not contiguous labels). May be empty.
        iou_type: ``"bbox"`` or ``"segm"``.
        max_dets: detections kept per image, highest scores first (LVIS: 300).

    Returns:
        ``AP, AP50, AP75, APs, APm, APl, APr, APc, APf`` as floats in [0, 1], -1.0 where
        lvis-api reports the metric as undefined (no ground truth in that group), and
        ``per_category``: one dict ``{category_id, name, frequency, AP}`` per category of the
        ground truth, sorted by id, AP -1.0 for categories without ground truth.

    Raises:
        ConfigError: unknown ``iou_type``, ``max_dets`` < 1, malformed detections.
        DatasetError: bad ground truth, or detections naming images or categories that the
            ground truth does not have.
    """
    if iou_type not in IOU_TYPES:
        raise ConfigError(f"iou_type must be one of {IOU_TYPES}, got {iou_type!r}")
    if isinstance(max_dets, bool) or not isinstance(max_dets, int) or max_dets < 1:
        raise ConfigError(f"max_dets must be a positive integer, got {max_dets!r}")
    gt_data = gt if isinstance(gt, LvisGroundTruth) else load_lvis_gt(gt)
    dt_area = _check_detections(detections, gt_data, iou_type)
    dt = cast(Any, _vernier_detections(detections, dt_area))
    try:
        if dt_area == "mask":
            grid = vi.evaluate_segm_grid(
                gt_data.dataset, dt, **_STRICT, max_dets_per_image=max_dets, dt_area="mask"
            )
        elif iou_type == "segm":
            grid = vi.evaluate_segm_grid(
                gt_data.dataset, dt, **_STRICT, max_dets_per_image=max_dets, dt_area="bbox"
            )
        else:
            grid = vi.evaluate_bbox_grid(
                gt_data.dataset, dt, **_STRICT, max_dets_per_image=max_dets, dt_area="bbox"
            )
    except ValueError as exc:
        raise ConfigError(f"invalid detections: {exc}") from None
    return _summary(grid, gt_data, max_dets)


class ImageBoxes(NamedTuple):
    """One image's box detections as arrays (what :func:`evaluate_lvis_boxes` scores).

    Attributes:
        image_id: the ground truth's image id.
        boxes: ``[n, 4]`` float64 ``[x, y, w, h]`` in the image's LVIS coordinates.
        scores: ``[n]`` float64.
        category_ids: ``[n]`` int64, the ground truth's category ids.
    """

    image_id: int
    boxes: np.ndarray
    scores: np.ndarray
    category_ids: np.ndarray


def evaluate_lvis_boxes(
    gt: str | Path | Mapping[str, Any] | LvisGroundTruth,
    images: Sequence[ImageBoxes],
    *,
    max_dets: int = 300,
) -> dict[str, Any]:
    """:func:`evaluate_lvis` of box detections given as arrays per image, without a result
    dict per detection (building them was a third of a cached trial's evaluation); the
    numbers are the same as from the same detections as dicts.

    Raises:
        ConfigError: ``max_dets`` < 1, arrays of other lengths or shapes.
        DatasetError: an image or category id the ground truth does not have.
    """
    if isinstance(max_dets, bool) or not isinstance(max_dets, int) or max_dets < 1:
        raise ConfigError(f"max_dets must be a positive integer, got {max_dets!r}")
    gt_data = gt if isinstance(gt, LvisGroundTruth) else load_lvis_gt(gt)
    dets = []
    for image in images:
        n = len(image.scores)
        if image.boxes.shape != (n, 4) or image.category_ids.shape != (n,):
            raise ConfigError(
                f"image {image.image_id}: {n} scores, boxes of shape {image.boxes.shape} and "
                f"category ids of shape {image.category_ids.shape}; give [n, 4], [n] and [n]"
            )
        dets.append(
            vi.Detections(
                image_id=int(image.image_id),
                boxes=np.ascontiguousarray(image.boxes, dtype=np.float64),
                scores=np.ascontiguousarray(image.scores, dtype=np.float64),
                labels=np.ascontiguousarray(image.category_ids, dtype=np.int64),
            )
        )
    image_ids = np.array([d["image_id"] for d in dets], dtype=np.int64)
    category_ids = np.concatenate([d["labels"] for d in dets] or [np.zeros(0, np.int64)])
    for key, values, known, what in (
        ("image_id", image_ids, gt_data.image_ids, "image"),
        ("category_id", category_ids, gt_data.category_ids, "category"),
    ):
        unknown = values[~np.isin(values, known)]
        if unknown.size:
            raise DatasetError(
                f"detections have {key} {int(unknown[0])}, which is not among the ground "
                f"truth's {what} ids ({gt_data.source}): map predictions to them"
            )
    try:
        grid = vi.evaluate_bbox_grid(
            gt_data.dataset, cast(Any, dets), **_STRICT, max_dets_per_image=max_dets,
            dt_area="bbox",
        )  # fmt: skip
    except ValueError as exc:
        raise ConfigError(f"invalid detections: {exc}") from None
    return _summary(grid, gt_data, max_dets)


def _summary(grid: Any, gt_data: LvisGroundTruth, max_dets: int) -> dict[str, Any]:
    """LVIS's AP summary and per-category AP table of an evaluated grid."""
    accumulated = grid.accumulate([max_dets])
    stats = accumulated.summarize_lvis(gt_data.dataset, [max_dets]).stats
    # LVIS's summary: the 9 AP entries (METRIC_NAMES order), then 4 AR entries.
    aps = stats[: len(METRIC_NAMES)]
    out: dict[str, Any] = {name: float(v) for name, v in zip(METRIC_NAMES, aps, strict=True)}
    # vernier's precision is [T, R, K, A, M]; the single M slot is max_dets.
    precision = np.asarray(accumulated.precision)[..., -1]
    out["per_category"] = per_category_ap(
        precision, gt_data.category_ids.tolist(), gt_data.categories
    )
    return out


__all__ = [
    "FREQUENCIES",
    "IOU_TYPES",
    "METRIC_NAMES",
    "ImageBoxes",
    "LvisGroundTruth",
    "evaluate_lvis",
    "evaluate_lvis_boxes",
    "load_lvis_gt",
]
