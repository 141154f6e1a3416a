"""On-disk storage of the RoI-feature cache: array files, manifest, checksums, locking.

A cache is one directory ``cache_dir/<key>/`` holding flat binary arrays (``<split>/<name>.bin``,
C order, read back as ``numpy.memmap``) and a ``manifest.json`` written last. The manifest
records each file's dtype, shape, byte size and two digests:

- ``sha256``: of the whole file, computed while the file is streamed out (no second read).
  :meth:`FeatureCache.open` (so every reuse of a cache) re-reads and checks it, together with
  the sizes: a truncated or resized file, and a single flipped bit anywhere, are caught before
  the arrays are mapped. It costs one read of the cache (sha256 runs at ~1.4 GB/s on one core
  here; a cached trial reads every feature each epoch anyway).
- ``sample_sha256``: of the file size, its first and last MiB and 64 KiB blocks at 256 evenly
  spaced offsets (at most ~18 MiB read, whatever the size): the quick check of
  ``verify(full=False)`` and of a cache just built (its sha256 was computed while writing). It
  misses a flipped bit inside an unsampled block.

A cache is built in a temporary sibling directory and renamed into place, under an exclusive
``fcntl.flock`` on ``cache_dir/.<key>.lock``; a second builder blocks on the lock and then
finds the finished cache. Anything wrong with a cache (missing manifest, other format or key,
other build options or source weights, size or digest mismatch) is a :class:`CacheError`
from :func:`validate` (:func:`cache_problem` as text) and makes the builder rebuild it;
:meth:`FeatureCache.open` raises it instead of using the cache.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = 1
MANIFEST = "manifest.json"
_MIB = 1 << 20
_SAMPLE_BLOCKS = 256
_SAMPLE_BLOCK = 64 << 10


class CacheError(RuntimeError):
    """A feature cache is missing, incomplete, stale or corrupt."""


def sample_digest(path: Path) -> str:
    """sha256 of the file size, first and last MiB and 256 evenly spaced 64 KiB blocks."""
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with path.open("rb") as f:
        if size <= 2 * _MIB + _SAMPLE_BLOCKS * _SAMPLE_BLOCK:
            h.update(f.read())
            return h.hexdigest()
        h.update(f.read(_MIB))
        for off in np.linspace(_MIB, size - _MIB - _SAMPLE_BLOCK, _SAMPLE_BLOCKS, dtype=np.int64):
            f.seek(int(off))
            h.update(f.read(_SAMPLE_BLOCK))
        f.seek(size - _MIB)
        h.update(f.read(_MIB))
    return h.hexdigest()


def full_digest(path: Path) -> str:
    """sha256 of the whole file."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(16 * _MIB):
            h.update(chunk)
    return h.hexdigest()


class ArrayWriter:
    """Appends rows of one array to a binary file and hashes them on the way out.

    Args:
        path: the ``.bin`` file (created, truncated).
        dtype: element type of every row.
        row_shape: trailing shape of a row (``()`` for a vector, ``(D,)`` for features).
    """

    def __init__(self, path: Path, dtype: np.dtype | str, row_shape: tuple[int, ...]) -> None:
        self.path = path
        self.dtype = np.dtype(dtype)
        self.row_shape = tuple(int(s) for s in row_shape)
        self.rows = 0
        self._hash = hashlib.sha256()
        self._file = path.open("wb")

    def append(self, rows: np.ndarray) -> None:
        """Write ``rows`` ``[n, *row_shape]`` (cast to the writer's dtype)."""
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        if rows.shape[1:] != self.row_shape:
            raise ValueError(f"{self.path.name}: rows {rows.shape} do not fit {self.row_shape}")
        data = rows.tobytes()
        self._file.write(data)
        self._hash.update(data)
        self.rows += rows.shape[0]

    def discard(self) -> None:
        """Close and delete the file (an abandoned build)."""
        self._file.close()
        self.path.unlink(missing_ok=True)

    def close(self) -> dict[str, Any]:
        """Flush, fsync and return the file's manifest entry."""
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        return {
            "dtype": self.dtype.str,
            "shape": [self.rows, *self.row_shape],
            "bytes": self.rows
            * int(np.prod(self.row_shape, dtype=np.int64))
            * self.dtype.itemsize,
            "sha256": self._hash.hexdigest(),
            "sample_sha256": sample_digest(self.path),
        }


def write_manifest(root: Path, manifest: Mapping[str, Any]) -> None:
    """Write ``manifest.json`` (the cache's completion mark) atomically and durably."""
    tmp = root / (MANIFEST + ".tmp")
    with tmp.open("w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, root / MANIFEST)


def _read_manifest(root: Path) -> dict[str, Any]:
    try:
        return json.loads((root / MANIFEST).read_text())
    except FileNotFoundError:
        raise CacheError(f"{root}: no {MANIFEST} (never built or interrupted)") from None
    except (OSError, json.JSONDecodeError) as err:
        raise CacheError(f"{root}: unreadable {MANIFEST} ({err})") from None


def _check_file(root: Path, name: str, entry: Mapping[str, Any], full: bool) -> None:
    path = root / name
    if not path.is_file():
        raise CacheError(f"{root}: file {name} is missing")
    size = path.stat().st_size
    if size != entry["bytes"]:
        raise CacheError(f"{root}: {name} has {size} bytes, the manifest says {entry['bytes']}")
    small = size <= 64 * _MIB
    if (full or small) and full_digest(path) != entry["sha256"]:
        raise CacheError(f"{root}: {name} does not match its sha256")
    if not (full or small) and sample_digest(path) != entry["sample_sha256"]:
        raise CacheError(f"{root}: {name} does not match its sampled sha256")


def validate(
    root: Path, *, expected: Mapping[str, Any] | None = None, full: bool = True
) -> dict[str, Any]:
    """Return the manifest of the cache at ``root`` after checking it, or raise CacheError.

    Checks the format version, that every ``expected`` manifest field (key, build options,
    image ids' digests, stage-1 weights) is equal, and every file's size and digest (whole
    when ``full``, the default; otherwise files up to 64 MiB whole and larger ones by their
    sampled digest).
    """
    manifest = _read_manifest(root)
    if manifest.get("format") != FORMAT:
        raise CacheError(f"{root}: cache format {manifest.get('format')}, expected {FORMAT}")
    for field, value in (expected or {}).items():
        if manifest.get(field) != value:
            raise CacheError(
                f"{root}: stale cache: {field} is {manifest.get(field)!r}, expected {value!r}"
            )
    for name, entry in manifest["files"].items():
        _check_file(root, name, entry, full)
    return manifest


def cache_problem(root: Path, expected: Mapping[str, Any]) -> str | None:
    """Why the cache at ``root`` cannot be used (``None`` when it can; whole-file digests)."""
    try:
        validate(root, expected=expected)
    except CacheError as err:
        return str(err)
    return None


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
    """

    def __init__(self, path: Path, manifest: dict[str, Any]) -> None:
        self.path = path
        self.manifest = manifest
        self.train: dict[str, np.ndarray] = {}
        self.val: dict[str, np.ndarray] = {}
        for name, entry in manifest["files"].items():
            split, array = name.removesuffix(".bin").split("/")
            shape = tuple(entry["shape"])
            dtype = np.dtype(entry["dtype"])
            if 0 in shape:  # numpy cannot map an empty file
                arr: np.ndarray = np.zeros(shape, dtype=dtype)
            else:
                arr = np.memmap(path / name, dtype=dtype, mode="r", shape=shape)
            getattr(self, split)[array] = arr
        self.train["view_offsets"] = _offsets(self.train["view_rows"])
        self.train["image_views"] = _offsets(self.train["image_view_count"])
        self.val["offsets"] = _offsets(self.val["rows"])

    @classmethod
    def open(
        cls, path: str | Path, *, expected: Mapping[str, Any] | None = None, full: bool = True
    ) -> FeatureCache:
        """Open a cache after :func:`validate` (whole-file sha256 unless ``full=False``);
        raises :class:`CacheError` if unusable."""
        root = Path(path)
        return cls(root, validate(root, expected=expected, full=full))

    def verify(self, *, full: bool = True) -> None:
        """Re-check every file (whole-file sha256 when ``full``); raises CacheError."""
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
    "FORMAT",
    "MANIFEST",
    "ArrayWriter",
    "CacheError",
    "FeatureCache",
    "cache_problem",
    "exclusive_lock",
    "full_digest",
    "install",
    "remove_leftovers",
    "sample_digest",
    "validate",
    "write_manifest",
]
