"""Validation and indexing of an LVIS-format annotation dict (used by ``LVISDetection``).

Every check here is cheap (one pass over the JSON, no image is opened); a problem raises
:class:`~ltmodels.errors.DatasetError` naming the file, the record and the fix.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NoReturn

from ltmodels.errors import DatasetError

GROUP_OF_FREQUENCY = {"r": 0, "c": 1, "f": 2}
"""LVIS frequency group -> group index (0 rare, 1 common, 2 frequent)."""

BOX_TOLERANCE = 1.0
"""How far (px) a box may stick out of its image before the annotation is an error."""

_TOP_LEVEL_KEYS = ("images", "annotations", "categories")


def clip_box(bbox: Sequence[float], width: int, height: int) -> list[float]:
    """LVIS ``[x, y, w, h]`` -> ``[x1, y1, x2, y2]`` clipped to a ``width`` x ``height`` image."""
    x, y, w, h = (float(v) for v in bbox)
    return [max(0.0, x), max(0.0, y), min(float(width), x + w), min(float(height), y + h)]


def is_degenerate(box: Sequence[float]) -> bool:
    """A clipped box narrower or shorter than 1 px (skipped everywhere)."""
    return box[2] - box[0] < 1.0 or box[3] - box[1] < 1.0


class LVISIndex:
    """Validated view of an LVIS dict: categories sorted by id, images, kept annotations.

    Attributes:
        layout: ``"v0.5"`` when images carry ``file_name``, else ``"v1"`` (``coco_url``).
        categories: category records sorted by id.
        images: image records in file order.
        anns_per_image: per image, its annotations with a non-degenerate box, in file order.
    """

    def __init__(self, data: Any, source: str, *, with_masks: bool) -> None:
        self.source = source
        self.with_masks = with_masks
        if not isinstance(data, dict):
            self._fail(f"top level is a {type(data).__name__}, not an object", "use an LVIS file")
        missing = [k for k in _TOP_LEVEL_KEYS if not isinstance(data.get(k), list)]
        if missing:
            self._fail(
                f"missing top-level list(s) {', '.join(repr(k) for k in missing)}",
                "an LVIS file has 'images', 'annotations' and 'categories'",
            )
        self.categories = self._index_categories(data["categories"])
        self.images = data["images"]
        self._image_pos = self._index_images(self.images)
        self.layout = "v0.5" if any("file_name" in img for img in self.images) else "v1"
        self.anns_per_image: list[list[dict[str, Any]]] = [[] for _ in self.images]
        cat_ids = {c["id"] for c in self.categories}
        for ann in data["annotations"]:
            self._add_annotation(ann, cat_ids)

    def _fail(self, what: str, fix: str) -> NoReturn:
        raise DatasetError(f"{self.source}: {what}; {fix}")

    def _index_categories(self, categories: list[Any]) -> list[dict[str, Any]]:
        seen: set[int] = set()
        for cat in categories:
            cid = cat.get("id") if isinstance(cat, dict) else None
            if not isinstance(cid, int):
                self._fail(f"category {cat!r:.80} has no integer 'id'", "fix the category")
            if cid in seen:
                self._fail(f"category id {cid} appears twice", "remove the duplicate")
            seen.add(cid)
            if cat.get("frequency") not in GROUP_OF_FREQUENCY:
                self._fail(
                    f"category id {cid} ({cat.get('name', '?')!r}) has frequency "
                    f"{cat.get('frequency')!r}",
                    "set 'frequency' to 'r', 'c' or 'f' (1-10, 11-100, >100 training images)",
                )
        if not categories:
            self._fail("'categories' is empty", "an LVIS file lists its categories")
        return sorted(categories, key=lambda c: c["id"])

    def _index_images(self, images: list[Any]) -> dict[int, int]:
        pos: dict[int, int] = {}
        for i, img in enumerate(images):
            iid = img.get("id") if isinstance(img, dict) else None
            if not isinstance(iid, int):
                self._fail(f"image {img!r:.80} has no integer 'id'", "fix the image record")
            if iid in pos:
                self._fail(f"image id {iid} appears twice", "remove the duplicate")
            for key in ("width", "height"):
                if not isinstance(img.get(key), int) or img[key] <= 0:
                    self._fail(
                        f"image id {iid} has {key} {img.get(key)!r}", f"set its '{key}' in pixels"
                    )
            if not img.get("file_name") and not img.get("coco_url"):
                self._fail(
                    f"image id {iid} has neither 'file_name' (v0.5) nor 'coco_url' (v1)",
                    "add one so its file can be found",
                )
            for key in ("file_name", "coco_url"):
                if img.get(key) is not None and not isinstance(img[key], str):
                    self._fail(f"image id {iid} has {key} {img[key]!r:.60}", "it is a string")
            pos[iid] = i
        return pos

    def _add_annotation(self, ann: Any, cat_ids: set[int]) -> None:
        aid = ann.get("id") if isinstance(ann, dict) else None
        if aid is None:
            self._fail(f"annotation {ann!r:.80} has no 'id'", "fix the annotation")
        iid = ann.get("image_id")
        where = f"annotation id {aid} (image {iid})"
        pos = self._image_pos.get(iid)
        if pos is None:
            self._fail(f"{where} refers to a missing image", "add the image or drop the record")
        if ann.get("category_id") not in cat_ids:
            self._fail(
                f"{where} has unknown category_id {ann.get('category_id')!r}",
                "add the category to 'categories' or fix the annotation",
            )
        img = self.images[pos]
        box = self._checked_box(ann, where, img["width"], img["height"])
        if self.with_masks:
            self._check_segmentation(ann.get("segmentation"), where, img["width"], img["height"])
        if not is_degenerate(box):
            self.anns_per_image[pos].append(ann)

    def _checked_box(self, ann: dict[str, Any], where: str, width: int, height: int) -> list:
        bbox = ann.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(_finite(v) for v in bbox):
            self._fail(f"{where} has bbox {bbox!r:.80}", "a bbox is 4 finite numbers [x, y, w, h]")
        x, y, w, h = bbox
        tol = BOX_TOLERANCE
        if x < -tol or y < -tol or x + w > width + tol or y + h > height + tol:
            self._fail(
                f"{where} has bbox {bbox} outside its {width}x{height} image "
                f"(tolerance {tol:g} px)",
                "fix the box or the image's width/height",
            )
        return clip_box(bbox, width, height)

    def _check_segmentation(self, seg: Any, where: str, width: int, height: int) -> None:
        fix = "pass with_masks=False, or give polygons [[x1, y1, x2, y2, ...]] or an RLE"
        if isinstance(seg, list):
            for poly in seg:
                if not isinstance(poly, list) or len(poly) < 6 or len(poly) % 2:
                    self._fail(f"{where} has a polygon {poly!r:.60} with < 3 points", fix)
                if not all(_finite(v) for v in poly):
                    self._fail(f"{where} has a polygon {poly!r:.60} with a non-number", fix)
            if not seg:
                self._fail(f"{where} has an empty segmentation", fix)
        elif isinstance(seg, dict) and "counts" in seg and "size" in seg:
            if list(seg["size"]) != [height, width]:
                self._fail(
                    f"{where} has an RLE of size {seg['size']} on a {width}x{height} image",
                    "an RLE's size is [height, width] of its image",
                )
        else:
            self._fail(f"{where} has segmentation {seg!r:.60}", fix)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


__all__ = ["BOX_TOLERANCE", "GROUP_OF_FREQUENCY", "LVISIndex", "clip_box", "is_degenerate"]
