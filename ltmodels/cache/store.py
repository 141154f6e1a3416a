"""The RoI-feature cache on disk: the memory-mapped :class:`FeatureCache`, and a build's
lock, installation and cleanup (the manifest and its checks: :mod:`ltmodels.cache.manifest`).

A cache is built in a temporary sibling directory and renamed into place, under an exclusive
``fcntl.flock`` on ``cache_dir/.<key>.lock``; a second builder blocks on the lock and then
finds the finished cache. Anything wrong with a cache (missing manifest, other format or key,
other build options or source weights, size or digest mismatch) is a
:class:`~ltmodels.cache.manifest.CacheError` from :func:`~ltmodels.cache.manifest.validate`
(:func:`~ltmodels.cache.manifest.cache_problem` as text) and makes the builder rebuild it;
:meth:`FeatureCache.open` raises it instead of using the cache.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ltmodels.cache.manifest import check_cache, check_file, shard_parts, validate
from ltmodels.cache.shards import ShardedArray

_MIB = 1 << 20


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if needed); blocks until granted."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def install(tmp: Path, final: Path) -> None:
    """Move the finished cache ``tmp`` to ``final``, replacing an unusable one (under lock).

    Readers that still map files of the old cache keep valid data: the files are unlinked,
    not overwritten.
    """
    if final.exists():
        trash = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.rename(final, trash)
        shutil.rmtree(trash, ignore_errors=True)
    os.rename(tmp, final)
    fd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_leftovers(cache_dir: Path, key: str) -> None:
    """Delete what interrupted builds or replacements of ``key`` left (call under its lock)."""
    for pattern in (f".{key}.tmp-*", f".{key}.old-*"):
        for stale in cache_dir.glob(pattern):
            shutil.rmtree(stale, ignore_errors=True)


def _map(path: Path, dtype: str, shape: list[int]) -> np.ndarray:
    """A read-only memory map of one file (zeros for an empty one: numpy cannot map it)."""
    if 0 in shape:
        return np.zeros(tuple(shape), dtype=np.dtype(dtype))
    return np.memmap(path, dtype=np.dtype(dtype), mode="r", shape=tuple(shape))


def _offsets(counts: np.ndarray) -> np.ndarray:
    """``[n]`` counts -> ``[n + 1]`` int64 start offsets."""
    return np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])


class FeatureCache:
    """A validated, memory-mapped feature cache (see :mod:`ltmodels.cache.build`).

    Shape shorthand: R cached training RoIs, V training views, n training images, Q cached
    validation proposals, m validation images, D feature channels, C foreground classes.

    Attributes:
        path: the cache directory.
        manifest: its manifest (build options, mode, shapes, digests, timings).
        train: ``features [R, D]``, ``labels [R]`` (int32, 0 bg, 1..C, -1 ignored),
            ``gt_index [R]`` (int32, dataset-wide ground-truth index, -1 bg),
            ``targets [R, 4]`` (float32 regression targets, box-coder encoded),
            ``boxes [R, 4]`` (float32 RoI boxes, model input coordinates of their view),
            ``view_rows [V]`` and ``view_flip [V]`` (uint8, 1 = mirrored),
            ``image_view_count [n]``, ``image_ids [n]``; derived: ``view_offsets [V + 1]``
            (row range of each view) and ``image_views [n + 1]`` (view range of each image).
        val: ``features [Q, D]``, ``boxes [Q, 4]`` (proposals, model input coordinates),
            ``rows [m]``, ``image_ids [m]``, ``input_size [m, 2]`` (h, w the model saw),
            ``orig_size [m, 2]`` (LVIS h, w); derived: ``offsets [m + 1]``.

    An array is a read-only ``np.memmap``, or a :class:`~ltmodels.cache.shards.ShardedArray`
    when sharded (it checks the shards named in ``unchecked`` whole on their first read).
    """

    def __init__(
        self, path: Path, manifest: dict[str, Any], unchecked: Collection[str] = ()
    ) -> None:
        self.path = path
        self.manifest = manifest
        self.train: dict[str, Any] = {}
        self.val: dict[str, Any] = {}
        entries: dict[str, Mapping[str, Any]] = {}

        def verify(file: str) -> None:  # holds no reference to self: no reference cycle
            check_file(path, file, entries[file], whole=True)

        for name, entry in manifest["files"].items():
            split, array = name.removesuffix(".bin").split("/")
            parts = shard_parts(name, entry)
            entries.update(parts)
            maps = [_map(path / file, entry["dtype"], part["shape"]) for file, part in parts]
            files = [file for file, _ in parts]
            getattr(self, split)[array] = (
                maps[0]
                if len(maps) == 1
                else ShardedArray(maps, files, verify=verify, unchecked=unchecked)
            )
        self.train["view_offsets"] = _offsets(np.asarray(self.train["view_rows"]))
        self.train["image_views"] = _offsets(np.asarray(self.train["image_view_count"]))
        self.val["offsets"] = _offsets(np.asarray(self.val["rows"]))

    @classmethod
    def open(
        cls, path: str | Path, *, expected: Mapping[str, Any] | None = None, full: bool = True
    ) -> FeatureCache:
        """Open a cache after :func:`check_cache` (``lazy``: a large sharded array's shards
        are checked whole on first read; everything else whole now unless ``full=False``);
        raises :class:`~ltmodels.cache.manifest.CacheError` if unusable."""
        root = Path(path)
        return cls(root, *check_cache(root, expected=expected, full=full, lazy=True))

    def verify(self, *, full: bool = True) -> None:
        """Re-check every file now (whole-file sha256 when ``full``); raises CacheError."""
        validate(self.path, full=full)

    @property
    def feature_dim(self) -> int:
        """D."""
        return int(self.manifest["feature_dim"])

    @property
    def num_classes(self) -> int:
        """C."""
        return int(self.manifest["num_classes"])

    @property
    def num_train_images(self) -> int:
        return len(self.train["image_ids"])

    @property
    def num_val_images(self) -> int:
        return len(self.val["image_ids"])

    @property
    def label_to_cat_id(self) -> np.ndarray:
        """``[C + 1]`` int64: LVIS category id of each label (entry 0 unused)."""
        return np.asarray(self.manifest["label_to_cat_id"], dtype=np.int64)

    def __repr__(self) -> str:
        m = self.manifest
        return (
            f"FeatureCache({self.path}, mode={m['mode']}, train={self.num_train_images} images "
            f"/ {len(self.train['labels'])} RoIs, val={self.num_val_images} images, "
            f"{m['total_bytes'] / _MIB:.1f} MiB)"
        )


__all__ = [
    "FeatureCache",
    "exclusive_lock",
    "install",
    "remove_leftovers",
]
