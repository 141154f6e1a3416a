"""A tiny LVIS-format dataset written to disk for tests (v1 or v0.5 layout).

Categories (ids not contiguous, to exercise the id -> label map):
    id 3 "cat_f" frequent -> label 1, id 7 "cat_c" common -> label 2, id 11 "cat_r" rare -> 3.
Images (W x H) and annotations:
    101 (48 x 32): ann 1 cat 3 rectangle polygon, bbox [4, 4, 16, 12];
                   ann 2 cat 11 compressed RLE of rows 10-19 x cols 24-39, bbox [24, 10, 16, 10];
                   ann 3 cat 7 degenerate bbox [0, 0, 0.5, 5] (skipped everywhere).
    102 (40 x 40): ann 4 cat 3 polygon, bbox [10, 12, 20, 8];
                   ann 5 cat 7 uncompressed RLE of rows 0-4 x cols 0-9, bbox [0, 0, 10, 5].
    103 (36 x 24): no annotation.
    104 (30 x 30): ann 6 cat 3 polygon, bbox [-0.5, 2, 10, 10] (within the 1-px tolerance).
Pixels are ``(5 x + 3 y + 70 c + image_id) % 256`` (see :func:`expected_pixels`), saved as PNG.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

SIZES = {101: (48, 32), 102: (40, 40), 103: (36, 24), 104: (30, 30)}  # id -> (W, H)
IMAGE_COUNTS = {3: 500, 7: 50, 11: 5}  # the 'image_count' fields (differ from the real counts)


def expected_pixels(image_id: int) -> np.ndarray:
    """The uint8 [H, W, 3] pixels written for ``image_id``."""
    width, height = SIZES[image_id]
    y, x, c = np.meshgrid(np.arange(height), np.arange(width), np.arange(3), indexing="ij")
    return ((5 * x + 3 * y + 70 * c + image_id) % 256).astype(np.uint8)


def rect_mask(height: int, width: int, rows: slice, cols: slice) -> np.ndarray:
    m = np.zeros((height, width), dtype=np.uint8)
    m[rows, cols] = 1
    return m


def _polygon(x: float, y: float, w: float, h: float) -> list[list[float]]:
    return [[x, y, x + w, y, x + w, y + h, x, y + h]]


def _compressed_rle(m: np.ndarray) -> dict[str, Any]:
    rle = mask_utils.encode(np.asfortranarray(m))
    return {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}


def _uncompressed_rle(m: np.ndarray) -> dict[str, Any]:
    flat = m.flatten(order="F")
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0] == 1:
        counts = [0, *counts]
    return {"size": list(m.shape), "counts": counts}


def _annotations() -> list[dict[str, Any]]:
    rle_101 = _compressed_rle(rect_mask(32, 48, slice(10, 20), slice(24, 40)))
    rle_102 = _uncompressed_rle(rect_mask(40, 40, slice(0, 5), slice(0, 10)))
    rows = [
        (1, 101, 3, [4, 4, 16, 12], _polygon(4, 4, 16, 12)),
        (2, 101, 11, [24, 10, 16, 10], rle_101),
        (3, 101, 7, [0, 0, 0.5, 5], _polygon(0, 0, 0.5, 5)),
        (4, 102, 3, [10, 12, 20, 8], _polygon(10, 12, 20, 8)),
        (5, 102, 7, [0, 0, 10, 5], rle_102),
        (6, 104, 3, [-0.5, 2, 10, 10], _polygon(0, 2, 9.5, 10)),
    ]
    return [
        {
            "id": aid,
            "image_id": iid,
            "category_id": cid,
            "bbox": bbox,
            "area": bbox[2] * bbox[3],
            "segmentation": seg,
        }
        for aid, iid, cid, bbox, seg in rows
    ]


def image_relpath(image_id: int, layout: str) -> str:
    """Where the fixture stores ``image_id`` under the image root."""
    if layout == "v0.5":
        return f"COCO_val2014_{image_id:012d}.png"
    return f"train2017/{image_id:012d}.png"


def make_lvis(
    root: Path, *, layout: str = "v1", image_count: bool = True
) -> tuple[Path, Path, dict[str, Any]]:
    """Write the fixture under ``root``.

    Args:
        layout: "v1" (path from ``coco_url``) or "v0.5" (``file_name``).
        image_count: give categories an ``image_count`` field (else it must be counted).

    Returns:
        (annotation JSON path, image root, the annotation dict).
    """
    image_root = root / "images"
    images = []
    for iid, (width, height) in SIZES.items():
        rel = image_relpath(iid, layout)
        (image_root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(expected_pixels(iid)).save(image_root / rel)
        record: dict[str, Any] = {"id": iid, "width": width, "height": height}
        if layout == "v0.5":
            record["file_name"] = rel
        else:
            record["coco_url"] = f"http://images.cocodataset.org/{rel}"
        images.append(record)
    categories = []
    for cid, name, freq in [(7, "cat_c", "c"), (3, "cat_f", "f"), (11, "cat_r", "r")]:
        cat: dict[str, Any] = {
            "id": cid,
            "name": name,
            "synset": f"{name}.n.01",
            "frequency": freq,
        }
        if image_count:
            cat["image_count"] = IMAGE_COUNTS[cid]
        categories.append(cat)
    data = {"images": images, "annotations": _annotations(), "categories": categories}
    ann_path = root / "lvis.json"
    ann_path.write_text(json.dumps(data))
    return ann_path, image_root, data
