"""Box detections scored as arrays per image (``evaluate_lvis_boxes``, what the cached
evaluation uses) give exactly the numbers of the same detections as LVIS result dicts, and
bad arrays are named."""

from __future__ import annotations

import numpy as np
import pytest

from ltmodels.errors import ConfigError, DatasetError
from ltmodels.evaluation.metrics import (
    ImageBoxes,
    evaluate_lvis,
    evaluate_lvis_boxes,
    load_lvis_gt,
)
from tests.ltmodels.test_evaluation import _make_detections, _make_gt


def _as_arrays(dets: list[dict]) -> list[ImageBoxes]:
    by_image: dict[int, list[dict]] = {}
    for d in dets:
        by_image.setdefault(d["image_id"], []).append(d)
    return [
        ImageBoxes(
            image_id,
            np.array([d["bbox"] for d in ds], dtype=np.float64).reshape(-1, 4),
            np.array([d["score"] for d in ds], dtype=np.float64),
            np.array([d["category_id"] for d in ds], dtype=np.int64),
        )
        for image_id, ds in by_image.items()
    ]


@pytest.mark.parametrize("max_dets", [300, 3])
def test_arrays_score_as_the_dicts(max_dets: int) -> None:
    gt = load_lvis_gt(_make_gt())
    dets = _make_detections(_make_gt(), False)
    by_dicts = evaluate_lvis(gt, dets, "bbox", max_dets=max_dets)
    by_arrays = evaluate_lvis_boxes(gt, _as_arrays(dets), max_dets=max_dets)
    assert by_arrays == by_dicts  # every AP and every category's AP, exactly
    assert by_arrays["AP"] > 0


def test_no_detections_and_empty_images() -> None:
    gt = load_lvis_gt(_make_gt())
    empty = ImageBoxes(1, np.zeros((0, 4)), np.zeros(0), np.zeros(0, dtype=np.int64))
    assert evaluate_lvis_boxes(gt, []) == evaluate_lvis(gt, [], "bbox")
    assert evaluate_lvis_boxes(gt, [empty]) == evaluate_lvis(gt, [], "bbox")


def test_bad_arrays_are_named() -> None:
    gt = load_lvis_gt(_make_gt())
    [first, *_] = _as_arrays(_make_detections(_make_gt(), False))
    with pytest.raises(DatasetError, match="category_id 999"):
        evaluate_lvis_boxes(gt, [first._replace(category_ids=first.category_ids * 0 + 999)])
    with pytest.raises(DatasetError, match="image_id 77"):
        evaluate_lvis_boxes(gt, [first._replace(image_id=77)])
    with pytest.raises(ConfigError, match=r"boxes of shape \(\d+, 3\)"):
        evaluate_lvis_boxes(gt, [first._replace(boxes=first.boxes[:, :3])])
    with pytest.raises(ConfigError, match="max_dets"):
        evaluate_lvis_boxes(gt, [first], max_dets=0)
