"""Build the RoI-feature cache of a frozen stage-1 detector (decoupled stage 2).

Shape shorthand: P proposals of one image (RPN proposals, plus its G ground-truth boxes for a
training image), D box-head channels, C foreground classes.

Per training image the detector's backbone, RPN (with its *training* pre/post-NMS top-n) and
box head run once per view (the image, and its horizontal mirror when ``flip_views``); each
RoI gets the label, dataset-wide ground-truth index and regression target that torchvision's
``RoIHeads.select_training_samples`` would give it (``roi_heads.proposal_matcher``,
``roi_heads.box_coder``; the ground-truth boxes are appended to the proposals as torchvision
does). Per validation image the RPN runs with its *test* top-n and the features of every
proposal are kept with the proposal boxes, the size the model saw and the LVIS image size.

Images are resized by the model's own transform in eval mode (its last ``min_size``): the
cache holds one scale. With a GroupNorm backbone the features depend on the padding of the
batch (``batch_size``), exactly as they do for the full model run on the same batches.

Budget (``max_bytes``): when every proposal of every view cannot fit (bound: the RPN's
post-NMS top-n per view), each training image keeps K pre-sampled views of ``view_rois`` RoIs
(``view_positive_fraction`` positive, torchvision's sampler; odd views mirrored), K as large
as fits (at most ``max_views``); validation proposals are always kept whole. The manifest's
``mode`` says which (``all_proposals`` or ``sampled_views``) and a log line states it.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ltmodels.cache.extract import (
    TRAIN_ROI_EXTRA,
    VAL_ROI_EXTRA,
    CacheWriter,
    OverBudget,
    dataset_meta,
    feature_dim,
    ids_digest,
)
from ltmodels.cache.manifest import CacheError, check_cache, write_manifest
from ltmodels.cache.shards import DEFAULT_SHARD_BYTES, manifest_format
from ltmodels.cache.store import FeatureCache, exclusive_lock, install, remove_leftovers
from ltmodels.data.lvis import collate_fn
from ltmodels.errors import ConfigError

log = logging.getLogger(__name__)

FEATURE_DTYPES = ("float16", "float32")


def _plan_views(
    model: nn.Module, opts: dict[str, Any], n_train: int, n_val: int, *, sampled: bool = False
) -> int | None:
    """``None`` (all proposals) when their bound fits ``max_bytes`` (and not ``sampled``),
    else the number K of pre-sampled views per training image that fits.

    Raises:
        ConfigError: not even the validation proposals plus one view per image fit.
    """
    budget = opts["max_bytes"]
    if budget is None:
        return None
    item = np.dtype(opts["feature_dtype"]).itemsize * feature_dim(model)
    post = model.rpn._post_nms_top_n
    flips = 2 if opts["flip_views"] else 1
    val_bound = n_val * (post["testing"] * (item + VAL_ROI_EXTRA) + 64)
    full = n_train * (flips * post["training"] * (item + TRAIN_ROI_EXTRA) + 64) + val_bound
    if full <= budget and not sampled:
        return None
    per_view = opts["view_rois"] * (item + TRAIN_ROI_EXTRA) + 16
    k = min(opts["max_views"], (budget - val_bound - 64 * n_train) // (n_train * per_view))
    if k < 1:
        raise ConfigError(
            f"feature cache: max_bytes={budget} holds neither the validation proposals "
            f"(<= {val_bound} bytes) nor one {opts['view_rois']}-RoI view per training image; "
            f"raise max_bytes to at least {val_bound + n_train * (per_view + 64)}"
        )
    return int(k)


def _stream(dataset: Any, batch_size: int, num_workers: int) -> Iterator[tuple[list, list]]:
    yield from torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_fn
    )


def _build_into(
    root: Path,
    model: nn.Module,
    datasets: tuple[Any, Any],
    metas: tuple[dict[str, Any], dict[str, Any]],
    opts: dict[str, Any],
    views: int | None,
) -> dict[str, Any]:
    """Run the model over both splits into ``root``; return the manifest (without writing)."""
    start = time.perf_counter()
    builder = CacheWriter(model, root, opts, views)
    gt_seen = 0
    try:
        for images, targets in _stream(datasets[0], opts["batch_size"], opts["num_workers"]):
            offsets = np.cumsum([gt_seen] + [len(t["boxes"]) for t in targets]).tolist()
            builder.train_batch(images, targets, offsets[:-1])
            gt_seen = offsets[-1]
        for images, _ in _stream(datasets[1], opts["batch_size"], opts["num_workers"]):
            builder.val_batch(images)
        builder.write("train/image_ids", metas[0]["image_ids"], per_image=True)
        builder.write("val/image_ids", metas[1]["image_ids"], per_image=True)
        builder.write("val/orig_size", metas[1]["orig_size"], per_image=True)
    except BaseException:
        builder.abort()
        raise
    files = builder.close()
    heads = model.roi_heads
    return {
        "format": manifest_format(files),
        "shard_bytes": opts["shard_bytes"],
        "mode": "all_proposals" if views is None else "sampled_views",
        "views_per_image": builder.flips if views is None else views,
        "feature_dim": feature_dim(model),
        "num_classes": len(metas[1]["label_to_cat_id"]) - 1,
        "label_to_cat_id": metas[1]["label_to_cat_id"],
        "box_coder": {
            "weights": [float(w) for w in heads.box_coder.weights],
            "bbox_xform_clip": float(heads.box_coder.bbox_xform_clip),
        },
        "fg_iou_thresh": float(heads.proposal_matcher.high_threshold),
        "bg_iou_thresh": float(heads.proposal_matcher.low_threshold),
        "rpn_post_nms_top_n": dict(model.rpn._post_nms_top_n),
        "num_train_rois": files["train/labels.bin"]["shape"][0],
        "num_val_rois": files["val/boxes.bin"]["shape"][0],
        "total_bytes": sum(f["bytes"] for f in files.values()),
        "build_seconds": time.perf_counter() - start,
        "files": files,
    }


def _build(
    root: Path, model: nn.Module, datasets: tuple, metas: tuple, opts: dict, expected: dict
) -> None:
    n_train, n_val = (len(m["image_ids"]) for m in metas)
    views = _plan_views(model, opts, n_train, n_val)
    try:
        manifest = _build_into(root, model, datasets, metas, opts, views)
    except OverBudget:  # ground-truth boxes pushed it over: fall back to sampled views
        log.info("feature cache: all proposals passed max_bytes while building; resampling")
        for path in root.iterdir():
            shutil.rmtree(path)
        views = _plan_views(model, opts, n_train, n_val, sampled=True)
        manifest = _build_into(root, model, datasets, metas, opts, views)
    if views is not None:
        log.info(
            "feature cache %s: all proposals do not fit max_bytes=%d; keeping %d pre-sampled "
            "views of %d RoIs (%.0f%% positive) per training image (%d bytes)",
            expected["key"],
            opts["max_bytes"],
            views,
            opts["view_rois"],
            100 * opts["view_positive_fraction"],
            manifest["total_bytes"],
        )
    write_manifest(root, {**manifest, **expected})


@torch.no_grad()
def build_feature_cache(
    model: nn.Module,
    train_set: Any,
    val_set: Any,
    cache_dir: str | Path,
    *,
    key: str,
    batch_size: int = 4,
    flip_views: bool = True,
    max_bytes: int | None = None,
    feature_dtype: str = "float16",
    view_rois: int = 512,
    view_positive_fraction: float = 0.25,
    max_views: int = 24,
    seed: int = 0,
    num_workers: int = 0,
    source_sha256: str | None = None,
    shard_bytes: int | None = DEFAULT_SHARD_BYTES,
) -> FeatureCache:
    """Build (or reuse) the RoI-feature cache ``cache_dir/<key>/`` of a frozen detector.

    Reuse needs a valid manifest with the same key, build options, image ids and source
    weights, and every file matching its whole-file sha256 (one read of the cache); anything
    else (a truncated or bit-flipped file included) is rebuilt, with one warning. A sharded
    array over 64 MiB is the exception: its shards' sampled digests are checked here and each
    shard's sha256 on its first read, which raises :class:`~ltmodels.cache.manifest.CacheError`
    naming the shard (the cache is then rebuilt by the next call, not mid-trial). Concurrent
    callers with the same key serialise on a file lock: the first builds, the others wait
    and reuse its cache.

    Args:
        model: torchvision Mask/Faster R-CNN with
            :class:`~ltmodels.modeling.roi_heads.LongTailRoIHeads` (any ``RoIHeads``), on the
            device to run on; run in eval mode, its mode restored.
        train_set, val_set: :class:`~ltmodels.data.lvis.LVISDetection` (or ``Subset`` of one)
            with deterministic transforms (no random flip/scale: the cache adds the mirror).
        cache_dir: parent folder of all caches.
        key: the cache's name; the caller hashes the stage-1 checkpoint, the datasets and the
            model spec into it.
        batch_size: images per model call.
        flip_views: also cache each training image mirrored (a second view).
        max_bytes: size budget; over it, K pre-sampled views per training image are kept.
        feature_dtype: ``"float16"`` (default) or ``"float32"``.
        view_rois, view_positive_fraction, max_views: the budget mode's views.
        seed: seed of the budget mode's view sampling.
        num_workers: DataLoader workers that read the images.
        source_sha256: sha256 of the stage-1 checkpoint the model was loaded from; a cache
            built from other weights is rebuilt (None: not checked).
        shard_bytes: bound of one file: a larger array is cut between images into shards
            (:mod:`ltmodels.cache.shards`; ``None``: one file per array). The default, 4 GiB,
            keeps today's caches one file per array (format 1); LVIS-scale ones are sharded.
            Only the layout changes: a cache built with another value is reused as it is.

    Returns:
        The validated, memory-mapped cache.

    Raises:
        ConfigError: bad key, options, or a budget too small for the validation proposals.
    """
    if not key or "/" in key or key.startswith(".") or key != key.strip():
        raise ConfigError(f"feature cache key must be a plain file name, got {key!r}")
    if feature_dtype not in FEATURE_DTYPES:
        raise ConfigError(f"feature_dtype must be one of {FEATURE_DTYPES}, got {feature_dtype!r}")
    if batch_size < 1 or view_rois < 1 or max_views < 1 or not 0 < view_positive_fraction <= 1:
        raise ConfigError(
            "batch_size, view_rois, max_views >= 1; view_positive_fraction in (0, 1]"
        )
    if shard_bytes is not None and shard_bytes < 1:
        raise ConfigError(f"shard_bytes must be >= 1 or None, got {shard_bytes}")
    metas = (dataset_meta(train_set), dataset_meta(val_set))
    if not all(len(m["image_ids"]) for m in metas):
        raise ConfigError("feature cache: the training and validation sets must not be empty")
    opts = {
        "flip_views": bool(flip_views),
        "max_bytes": None if max_bytes is None else int(max_bytes),
        "feature_dtype": feature_dtype,
        "view_rois": int(view_rois),
        "view_positive_fraction": float(view_positive_fraction),
        "max_views": int(max_views),
        "seed": int(seed),
        "batch_size": int(batch_size),
    }
    expected = {
        "key": key,
        "options": opts,
        "train_image_ids_sha256": ids_digest(metas[0]["image_ids"]),
        "val_image_ids_sha256": ids_digest(metas[1]["image_ids"]),
    }
    if source_sha256 is not None:
        expected["source_sha256"] = source_sha256
    root = Path(cache_dir)
    final = root / key
    with exclusive_lock(root / f".{key}.lock"):
        try:  # whole-file checks (large shards': on first read), a flipped bit is found
            manifest, unchecked = check_cache(final, expected=expected, lazy=True)
            log.debug("feature cache %s: reusing", final)
            return FeatureCache(final, manifest, unchecked)
        except CacheError as err:
            problem = str(err)
        if final.exists():
            log.warning("feature cache %s is unusable (%s); rebuilding", final, problem)
        remove_leftovers(root, key)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.tmp-", dir=root))
        was_training = model.training
        model.eval()
        try:
            _build(
                tmp,
                model,
                (train_set, val_set),
                metas,
                {**opts, "num_workers": num_workers, "shard_bytes": shard_bytes},
                expected,
            )
            install(tmp, final)
        finally:
            model.train(was_training)
            shutil.rmtree(tmp, ignore_errors=True)
        # sampled check only: the sha256s were computed from the bytes as they were written
        return FeatureCache.open(final, expected=expected, full=False)


__all__ = ["FEATURE_DTYPES", "build_feature_cache"]
