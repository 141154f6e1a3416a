"""Running a frozen detector for the feature cache: proposals, matching, box-head features,
and the writer that streams them to disk (used by :mod:`ltmodels.cache.build`).

Shape shorthand: P RoIs of one image view (RPN proposals plus its G ground-truth boxes for a
training view), D box-head channels, K pre-sampled views per training image.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ltmodels.cache.shards import ShardWriter
from ltmodels.modeling.roi_sampling import sample_balanced

# bytes per cached RoI besides its features: label, gt index (int32), target, box (4 x f32)
TRAIN_ROI_EXTRA = 4 + 4 + 16 + 16
VAL_ROI_EXTRA = 16  # proposal box (4 x f32)


def open_writers(
    root: Path, feature_dtype: str, dim: int, shard_bytes: int | None
) -> dict[str, ShardWriter]:
    """A writer per array of a cache in ``root`` (``"train/features"``: ``[R, D]``, ...;
    :class:`~ltmodels.cache.store.FeatureCache` lists them), its split folders created."""
    layout = {
        "train/features": (feature_dtype, (dim,)),
        "train/labels": ("int32", ()),
        "train/gt_index": ("int32", ()),
        "train/targets": ("float32", (4,)),
        "train/boxes": ("float32", (4,)),
        "train/view_rows": ("int64", ()),
        "train/view_flip": ("uint8", ()),
        "train/image_view_count": ("int64", ()),
        "train/image_ids": ("int64", ()),
        "val/features": (feature_dtype, (dim,)),
        "val/boxes": ("float32", (4,)),
        "val/rows": ("int64", ()),
        "val/input_size": ("int32", (2,)),
        "val/orig_size": ("int32", (2,)),
        "val/image_ids": ("int64", ()),
    }
    for split in ("train", "val"):
        (root / split).mkdir(exist_ok=True)
    return {n: ShardWriter(root, n, d, r, shard_bytes) for n, (d, r) in layout.items()}


class OverBudget(Exception):
    """All-proposals mode outgrew ``max_bytes`` (ground-truth boxes are not in the bound)."""


def dataset_meta(dataset: Any) -> dict[str, Any]:
    """Image ids, LVIS image sizes and label map of an LVISDetection or (nested) Subset."""
    indices = None
    while not hasattr(dataset, "image_info"):
        if not (hasattr(dataset, "dataset") and hasattr(dataset, "indices")):
            raise TypeError(f"need an LVISDetection or a Subset of one, got {type(dataset)}")
        sub = [int(i) for i in dataset.indices]
        indices = sub if indices is None else [sub[i] for i in indices]
        dataset = dataset.dataset
    rows = range(len(dataset)) if indices is None else indices
    infos = [dataset.image_info(i) for i in rows]
    return {
        "image_ids": np.array([int(i["id"]) for i in infos], dtype=np.int64),
        "orig_size": np.array([(int(i["height"]), int(i["width"])) for i in infos], np.int32),
        "label_to_cat_id": [0]
        + [dataset.label_to_cat_id[k + 1] for k in range(dataset.num_classes)],
    }


def ids_digest(ids: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(ids, dtype=np.int64).tobytes()).hexdigest()


@contextlib.contextmanager
def _rpn_top_n(rpn: nn.Module, phase: str) -> Iterator[None]:
    """Make an eval-mode RPN keep its ``phase`` ("training"/"testing") top-n settings.

    Swaps the instance's two settings dicts (torchvision reads them through
    ``pre_nms_top_n()``/``post_nms_top_n()``) and restores them; no function is patched.
    """
    pre, post = rpn._pre_nms_top_n, rpn._post_nms_top_n
    rpn._pre_nms_top_n = {"training": pre["training"], "testing": pre[phase]}
    rpn._post_nms_top_n = {"training": post["training"], "testing": post[phase]}
    try:
        yield
    finally:
        rpn._pre_nms_top_n, rpn._post_nms_top_n = pre, post


def _run_backbone(
    model: nn.Module, images: list[torch.Tensor], boxes: list[torch.Tensor], phase: str
) -> tuple[dict[str, torch.Tensor], list[torch.Tensor], list[tuple[int, int]], list[torch.Tensor]]:
    """Transform, backbone and RPN. Returns FPN features, proposals ``[n_i, 4]``, input sizes
    and the ground-truth boxes in input coordinates."""
    targets = [{"boxes": b} for b in boxes]
    batch, targets_t = model.transform(images, targets)
    feats = model.backbone(batch.tensors)
    with _rpn_top_n(model.rpn, phase):
        proposals, _ = model.rpn(batch, feats)
    return feats, proposals, batch.image_sizes, [t["boxes"] for t in targets_t]


def _box_features(
    model: nn.Module, feats: dict[str, torch.Tensor], boxes: list[torch.Tensor], sizes: list
) -> list[torch.Tensor]:
    """Box-head features ``[n_i, D]`` of per-image boxes ``[n_i, 4]``."""
    heads = model.roi_heads
    out = heads.box_head(heads.box_roi_pool(feats, boxes, sizes)).flatten(1)
    return list(out.split([len(b) for b in boxes]))


def _match(
    heads: nn.Module, props: torch.Tensor, gt: torch.Tensor, gt_labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """torchvision's assignment of one image's RoIs: labels ``[P]`` (0 bg, -1 ignored),
    matched ground-truth index ``[P]`` (-1 unless foreground), regression targets ``[P, 4]``."""
    matched, labels = heads.assign_targets_to_proposals([props], [gt], [gt_labels])
    matched, labels = matched[0], labels[0]
    if len(gt):
        targets = heads.box_coder.encode_single(gt[matched], props)
    else:
        targets = props.new_zeros(props.shape)
    return labels, torch.where(labels > 0, matched, torch.full_like(matched, -1)), targets


class _Rois:
    """One (image, flip) entry: RoI boxes ``[P, 4]``, labels, gt index, targets ``[P, 4]``
    and the row selections of its views."""

    def __init__(
        self,
        boxes: torch.Tensor,
        labels: torch.Tensor,
        gt_index: torch.Tensor,
        targets: torch.Tensor,
        views: list[np.ndarray],
    ) -> None:
        self.boxes, self.labels, self.gt_index, self.targets = boxes, labels, gt_index, targets
        self.views = views


class CacheWriter:
    """Streams one cache's arrays to disk while the model runs.

    Every array is cut into shards of at most ``opts["shard_bytes"]`` between images
    (:class:`~ltmodels.cache.shards.ShardWriter`): the rows of an image's views, or of its
    validation proposals, stay in one shard.

    Args:
        views: K pre-sampled views per training image, or ``None`` for all proposals.
    """

    def __init__(self, model: nn.Module, root: Path, opts: dict[str, Any], views: int | None):
        self.model, self.opts, self.views = model, opts, views
        self.flips = 2 if opts["flip_views"] and (views is None or views >= 2) else 1
        self.rng = np.random.default_rng(opts["seed"])
        self.device = next(model.parameters()).device
        self.bytes = 0
        self.writers = open_writers(
            root, opts["feature_dtype"], feature_dim(model), opts["shard_bytes"]
        )

    def write(self, name: str, rows: torch.Tensor | np.ndarray, *, per_image: bool = False):
        """Add rows to the array ``name``: to its current image (written by :meth:`end_image`),
        or, ``per_image``, one row per image."""
        arr = rows.detach().cpu().numpy() if torch.is_tensor(rows) else np.asarray(rows)
        w = self.writers[name]
        if per_image:
            w.append_units(arr)
        else:
            w.append(arr)
        self.bytes += arr.size * w.dtype.itemsize
        budget = self.opts["max_bytes"]
        if self.views is None and budget is not None and self.bytes > budget:
            raise OverBudget

    def end_image(self, split: str) -> None:
        """Write the rows added to ``split``'s arrays since its last image, into one shard."""
        for name, w in self.writers.items():
            if name.startswith(split + "/"):
                w.end_unit()

    def close(self) -> dict[str, dict[str, Any]]:
        return {f"{n}.bin": w.close() for n, w in self.writers.items()}

    def abort(self) -> None:
        for w in self.writers.values():
            w.discard()

    def train_batch(
        self, images: list[torch.Tensor], targets: list[dict], gt_offsets: list[int]
    ) -> None:
        """Cache the views of a batch of training images (``gt_offsets``: index of each
        image's first ground-truth box in the dataset)."""
        ims, boxes, labels = [], [], []
        for im, t in zip(images, targets, strict=True):
            b = t["boxes"].to(self.device, torch.float32).reshape(-1, 4)
            w = im.shape[-1]
            mirrored = torch.stack([w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]], dim=1)
            for f in range(self.flips):
                ims.append((im.flip(-1) if f else im).to(self.device))
                boxes.append(mirrored if f else b)
                labels.append(t["labels"].to(self.device))
        feats, props, sizes, gts = _run_backbone(self.model, ims, boxes, "training")
        entries = [
            self._rois(e % self.flips, p, gt, gl)
            for e, (p, gt, gl) in enumerate(zip(props, gts, labels, strict=True))
        ]
        fts = _box_features(self.model, feats, [e.boxes for e in entries], sizes)
        n = self.flips
        for i, off in enumerate(gt_offsets):
            self._write_image(entries[i * n : (i + 1) * n], fts[i * n : (i + 1) * n], off)

    def _rois(self, flip: int, props: torch.Tensor, gt: torch.Tensor, gl: torch.Tensor) -> _Rois:
        allp = torch.cat([props, gt])
        lab, gti, tgt = _match(self.model.roi_heads, allp, gt, gl)
        if self.views is None:
            return _Rois(allp, lab, gti, tgt, [np.arange(len(allp))])
        lab_np = lab.cpu().numpy()
        picks = [
            sample_balanced(
                lab_np,
                np.array([0]),
                np.array([len(lab_np)]),
                self.rng,
                rois_per_image=self.opts["view_rois"],
                positive_fraction=self.opts["view_positive_fraction"],
            )
            for _ in range(flip, self.views, self.flips)
        ]
        bounds = np.cumsum([0] + [len(p) for p in picks])
        sel = torch.from_numpy(np.concatenate(picks)).to(self.device)
        views = [np.arange(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        return _Rois(allp[sel], lab[sel], gti[sel], tgt[sel], views)

    def _write_image(self, entries: list[_Rois], fts: list[torch.Tensor], gt_offset: int) -> None:
        """Write one image's views; view k is flip ``k % flips`` (mirrored views alternate)."""
        total = sum(len(e.views) for e in entries)
        for k in range(total):
            f, j = k % self.flips, k // self.flips
            e = entries[f]
            sel = torch.from_numpy(e.views[j]).to(self.device)
            gti = e.gt_index[sel]
            self.write("train/features", fts[f][sel])
            self.write("train/labels", e.labels[sel])
            self.write("train/gt_index", torch.where(gti >= 0, gti + gt_offset, gti))
            self.write("train/targets", e.targets[sel])
            self.write("train/boxes", e.boxes[sel])
            self.write("train/view_rows", np.array([len(sel)]))
            self.write("train/view_flip", np.array([f]))
        self.write("train/image_view_count", np.array([total]))
        self.end_image("train")

    def val_batch(self, images: list[torch.Tensor]) -> None:
        """Cache the proposals of a batch of validation images."""
        ims = [im.to(self.device) for im in images]
        none = [torch.zeros((0, 4), device=self.device) for _ in ims]
        feats, props, sizes, _ = _run_backbone(self.model, ims, none, "testing")
        fts = _box_features(self.model, feats, props, sizes)
        for p, f, size in zip(props, fts, sizes, strict=True):
            self.write("val/features", f)
            self.write("val/boxes", p)
            self.write("val/rows", np.array([len(p)]))
            self.write("val/input_size", np.array([size]))
            self.end_image("val")


def feature_dim(model: nn.Module) -> int:
    """D, the width of the box head's output (the box predictor's input)."""
    pred = model.roi_heads.box_predictor
    weight = pred.cls_weight if hasattr(pred, "cls_weight") else pred.cls_score.weight
    return int(weight.shape[1])


__all__ = [
    "TRAIN_ROI_EXTRA",
    "VAL_ROI_EXTRA",
    "CacheWriter",
    "OverBudget",
    "dataset_meta",
    "feature_dim",
    "ids_digest",
    "open_writers",
]
