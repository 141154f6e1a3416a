"""LVIS-format detection dataset (v0.5 and v1 layouts) in torchvision's Mask R-CNN format.

Shape shorthand: n annotations kept on an image, C foreground classes, H x W image size.
Labels follow torchvision: 0 is background, categories map to 1..C in increasing category id.

Image paths: an image with a ``file_name`` (v0.5) is ``image_root/file_name``; COCO-2014 names
(``COCO_val2014_000000397133.jpg``) also resolve to their 2017 name (``000000397133.jpg``), as
in detectron2. An image without one (v1) is ``image_root/<split>/<name>`` from the last two
components of its ``coco_url``.

The annotation file is validated when the dataset is built (cheap checks over the JSON); a
problem raises :class:`~ltmodels.errors.DatasetError` naming the record. Boxes are clipped to
the image; a box narrower or shorter than 1 px after clipping is skipped everywhere (targets,
``image_labels``, counted ``image_counts``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision.io
from PIL import Image
from pycocotools import mask as mask_utils
from torch.utils.data import Dataset

from ltmodels.data._lvis_index import GROUP_OF_FREQUENCY, LVISIndex, clip_box
from ltmodels.data.parsed import memoised
from ltmodels.errors import DatasetError

Target = dict[str, Any]
Transform = Callable[[torch.Tensor, Target], tuple[torch.Tensor, Target]]


class LVISDetection(Dataset):
    """LVIS v0.5 / v1 annotations plus an image folder, as (image, target) pairs.

    Args:
        ann: path of an LVIS annotation JSON, or the already-loaded dict.
        image_root: folder the image paths are relative to (see the module docstring).
        transforms: callable ``(image, target) -> (image, target)`` applied last.
        with_masks: rasterise instance masks into ``target["masks"]``.

    Raises:
        DatasetError: the file is missing or malformed, or a record is inconsistent.
    """

    def __init__(
        self,
        ann: str | Path | dict,
        image_root: str | Path,
        *,
        transforms: Transform | None = None,
        with_masks: bool = True,
    ) -> None:
        index = _index(ann, with_masks=with_masks)
        source = index.source
        self.source = source
        self.image_root = Path(image_root)
        self.transforms = transforms
        self.with_masks = with_masks
        self.layout = index.layout
        self.categories = index.categories
        self.cat_ids: list[int] = [int(c["id"]) for c in index.categories]
        self.cat_id_to_label: dict[int, int] = {c: i + 1 for i, c in enumerate(self.cat_ids)}
        self.label_to_cat_id: dict[int, int] = {i + 1: c for i, c in enumerate(self.cat_ids)}
        self.num_classes = len(self.cat_ids)
        self.class_names: list[str] = [str(c.get("name", c["id"])) for c in index.categories]
        self.groups = torch.tensor(
            [GROUP_OF_FREQUENCY[c["frequency"]] for c in index.categories], dtype=torch.long
        )
        self._images = index.images
        self._anns = index.anns_per_image
        self.image_ids: list[int] = [int(img["id"]) for img in index.images]
        self._labels = [
            frozenset(self.cat_id_to_label[a["category_id"]] for a in anns) for anns in self._anns
        ]
        self.image_counts = self._image_counts()

    def __len__(self) -> int:
        return len(self._images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, Target]:
        """Image ``i`` as a float tensor [3, H, W] in [0, 1] and its Mask R-CNN target.

        The target holds ``boxes`` float [n, 4] (x1, y1, x2, y2), ``labels`` int64 [n] in
        1..C, ``masks`` uint8 [n, H, W] (when ``with_masks``), ``image_id`` int, ``area``
        float [n] and ``iscrowd`` int64 [n] (zeros).
        """
        info = self._images[i]
        image = self._load_image(i)
        target = self._target(i)
        if self.with_masks:
            target["masks"] = _rasterise(self._anns[i], int(info["height"]), int(info["width"]))
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target

    def image_labels(self, i: int) -> set[int]:
        """Labels (1..C) present on image ``i``, without reading its pixels."""
        return set(self._labels[i])

    def image_info(self, i: int) -> dict[str, Any]:
        """The JSON record of image ``i`` (id, width, height, file_name or coco_url, ...)."""
        return self._images[i]

    def image_path(self, i: int) -> Path:
        """The file of image ``i``; raises DatasetError naming the image when it is missing."""
        candidates = self._candidates(self._images[i])
        for path in candidates:
            if os.path.isfile(path):
                return path
        raise DatasetError(
            f"{self.source}: image id {self.image_ids[i]}: file not found: {candidates[0]}; "
            f"check image_root ({self.image_root}) and that the images are downloaded"
        )

    def check(self, *, files: bool = True, sizes: bool = False) -> None:
        """Validate up front what ``__getitem__`` would otherwise find lazily.

        The annotation file itself is validated at construction.

        Args:
            files: every image file exists (one ``stat`` per image).
            sizes: every image file is an image (its header reads) of the pixel size the
                JSON gives; a file whose body is damaged past the header is found only
                when training decodes it (a failed row naming the file).

        Raises:
            DatasetError: naming the first bad image and how many are bad.
        """
        if not (files or sizes):
            return
        missing = []
        for i in range(len(self)):
            try:
                self.image_path(i)
            except DatasetError as err:
                missing.append(err)
        if missing:
            more = f" ({len(missing)} of {len(self)} images missing)" if len(missing) > 1 else ""
            raise DatasetError(f"{missing[0]}{more}")
        if sizes:
            for i in range(len(self)):
                path = self.image_path(i)
                try:
                    size = _header_size(path)
                except (OSError, SyntaxError) as err:  # PIL: not an image / bad header
                    raise DatasetError(
                        f"{self.source}: image id {self.image_ids[i]}: cannot read {path} as "
                        f"an image ({err}); replace the file"
                    ) from None
                self._check_size(i, size)

    def _candidates(self, info: dict[str, Any]) -> list[Path]:
        root = self.image_root
        out = []
        name = info.get("file_name")
        if name:
            out.append(root / name)
            base = os.path.basename(name)
            if base.startswith("COCO_") and len(base) > 16:
                out.append(root / os.path.dirname(name) / base[-16:])
        url = info.get("coco_url")
        if url:
            out.append(root.joinpath(*url.split("/")[-2:]))
        return out

    def _load_image(self, i: int) -> torch.Tensor:
        path = self.image_path(i)
        try:
            data = torchvision.io.read_file(str(path))
            image = torchvision.io.decode_image(data, mode=torchvision.io.ImageReadMode.RGB)
        except RuntimeError as err:
            raise DatasetError(
                f"{self.source}: image id {self.image_ids[i]}: cannot decode {path} ({err}); "
                "replace the file"
            ) from err
        self._check_size(i, (image.shape[-1], image.shape[-2]))
        return image.float().div_(255.0)

    def _check_size(self, i: int, width_height: tuple[int, int]) -> None:
        info = self._images[i]
        expected = (int(info["width"]), int(info["height"]))
        if tuple(width_height) != expected:
            raise DatasetError(
                f"{self.source}: image id {self.image_ids[i]}: {self.image_path(i)} is "
                f"{width_height[0]}x{width_height[1]} but the JSON says "
                f"{expected[0]}x{expected[1]}; fix the image's width/height or the file"
            )

    def _target(self, i: int) -> Target:
        info = self._images[i]
        height, width = int(info["height"]), int(info["width"])
        anns = self._anns[i]
        boxes = [clip_box(a["bbox"], width, height) for a in anns]
        areas = [
            float(a.get("area", (b[2] - b[0]) * (b[3] - b[1])))
            for a, b in zip(anns, boxes, strict=True)
        ]
        return {
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(
                [self.cat_id_to_label[a["category_id"]] for a in anns], dtype=torch.int64
            ),
            "image_id": self.image_ids[i],
            "area": torch.tensor(areas, dtype=torch.float32),
            "iscrowd": torch.zeros(len(anns), dtype=torch.int64),
        }

    def _image_counts(self) -> torch.Tensor:
        given = [c.get("image_count") for c in self.categories]
        if all(isinstance(n, int) for n in given):
            return torch.tensor(given, dtype=torch.long)
        counts = torch.zeros(self.num_classes, dtype=torch.long)
        for labels in self._labels:
            for label in labels:
                counts[label - 1] += 1
        return counts


def check_same_categories(train: LVISDetection, val: LVISDetection) -> None:
    """Raise :class:`DatasetError` unless both splits list the same category ids: labels
    are numbered from the training file's categories, so a validation file of another
    release (or another class subset) would be scored against the wrong classes."""
    if train.cat_ids == val.cat_ids:
        return
    only_train = sorted(set(train.cat_ids) - set(val.cat_ids))
    only_val = sorted(set(val.cat_ids) - set(train.cat_ids))
    example = (
        f"id {only_train[0]} only in train" if only_train else f"id {only_val[0]} only in val"
    )
    raise DatasetError(
        f"{val.source}: its {val.num_classes} categories differ from the {train.num_classes} "
        f"of {train.source} ({len(only_train)} only in train, {len(only_val)} only in val, "
        f"e.g. {example}); use the train and val files of one LVIS release"
    )


def collate_fn(
    batch: Sequence[tuple[torch.Tensor, Target]],
) -> tuple[list[torch.Tensor], list[Target]]:
    """Batch of (image, target) pairs -> (list of images, list of targets)."""
    return [image for image, _ in batch], [target for _, target in batch]


def _index(ann: str | Path | dict, *, with_masks: bool) -> LVISIndex:
    """The validated index of ``ann``; of a file, parsed once per process while it is
    unchanged (:func:`ltmodels.data.parsed.memoised`)."""
    if isinstance(ann, dict):
        return LVISIndex(ann, "<LVIS dict>", with_masks=with_masks)

    def build() -> LVISIndex:
        data = memoised("lvis-json", ann, lambda: _load_json(ann))
        return LVISIndex(data, str(Path(ann)), with_masks=with_masks)

    return memoised(("lvis-index", with_masks), ann, build)


def _load_json(ann: str | Path) -> dict[str, Any]:
    path = Path(ann)
    if not path.is_file():
        raise DatasetError(f"LVIS annotation file not found: {path}; check the path")
    try:
        with path.open("rb") as f:
            data = json.load(f)
    except (ValueError, RecursionError) as err:  # bad JSON or UTF-8, a 5000-digit number,
        reason = str(err) or "nested too deeply"  # or lists nested past the recursion limit
        raise DatasetError(
            f"{path}: not valid JSON ({reason[:200]}); re-download or regenerate the file"
        ) from None
    return data


def _rasterise(anns: Sequence[dict[str, Any]], height: int, width: int) -> torch.Tensor:
    """Instance masks uint8 [n, H, W] from polygon or RLE segmentations."""
    if not anns:
        return torch.zeros((0, height, width), dtype=torch.uint8)
    rles = []
    for a in anns:
        seg = a["segmentation"]
        if isinstance(seg, list):
            rles.append(mask_utils.merge(mask_utils.frPyObjects(seg, height, width)))
        elif isinstance(seg["counts"], list):
            rles.append(mask_utils.frPyObjects(seg, height, width))
        else:
            rles.append(seg)
    masks = mask_utils.decode(rles)  # [H, W, n], Fortran order
    return torch.from_numpy(np.ascontiguousarray(masks.transpose(2, 0, 1)))


def _header_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as img:
        return img.size


__all__ = ["LVISDetection", "check_same_categories", "collate_fn"]
