"""The manifest of an RoI-feature cache: its array files, their digests, and their checks.

A cache is one directory ``cache_dir/<key>/`` holding flat binary arrays (``<split>/<name>.bin``,
C order, read back as ``numpy.memmap``) and a ``manifest.json`` written last. An array larger
than the build's ``shard_bytes`` is cut by image ranges into shards ``<name>.00000.bin``, ...
(:mod:`ltmodels.cache.shards`) listed in its entry (``shards``), and the manifest has format 2;
a cache with no sharded array is format 1, as before; both are read. The manifest records
each file's dtype, shape, byte size and two digests:

- ``sha256``: of the whole file, computed while the file is streamed out (no second read).
  Reuse re-reads and checks it with the sizes: a truncated or resized file, and a single
  flipped bit anywhere, are caught before the arrays are mapped. It costs one read of the
  cache (sha256 runs at ~1.4 GB/s on one core here; a trial reads every feature each epoch).
- ``sample_sha256``: of the file size, its first and last MiB and 64 KiB blocks at 256 evenly
  spaced offsets (at most ~18 MiB read, whatever the size): the quick check of
  ``verify(full=False)`` and of a cache just built (its sha256 was computed while writing). It
  misses a flipped bit inside an unsampled block.

Arrays up to 64 MiB are always checked whole. A larger sharded array opened ``lazy`` (open,
reuse) gets its shards' sampled checks at open and each shard's sha256 on its first read (not
100 GB read up front): a damaged shard is then a CacheError naming it, raised by that read.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = 2  # the newest; format 1 (no sharded array) is still written and read
FORMATS = (1, 2)
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


def shard_parts(name: str, entry: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """``(file, file entry)`` of each shard of the array ``name`` (``"train/features.bin"``);
    one pair, the array's own, for an array in one file."""
    if "shards" not in entry:
        return [(name, entry)]
    return [(part["file"], part) for part in entry["shards"]]


def check_file(root: Path, name: str, entry: Mapping[str, Any], whole: bool) -> None:
    """Check one file's size and its whole-file (``whole``) or sampled digest."""
    path = root / name
    if not path.is_file():
        raise CacheError(f"{root}: file {name} is missing")
    size = path.stat().st_size
    if size != entry["bytes"]:
        raise CacheError(f"{root}: {name} has {size} bytes, the manifest says {entry['bytes']}")
    if whole and full_digest(path) != entry["sha256"]:
        raise CacheError(f"{root}: {name} does not match its sha256")
    if not whole and sample_digest(path) != entry["sample_sha256"]:
        raise CacheError(f"{root}: {name} does not match its sampled sha256")


def _check_array(
    root: Path, name: str, entry: Mapping[str, Any], full: bool, lazy: bool
) -> list[str]:
    """Check an array's files; return those whose whole-file check is left to first use."""
    parts = shard_parts(name, entry)
    rows, size = sum(p["shape"][0] for _, p in parts), sum(p["bytes"] for _, p in parts)
    if (rows, size) != (entry["shape"][0], entry["bytes"]):
        raise CacheError(f"{root}: the shards of {name} do not add up to its shape")
    small = entry["bytes"] <= 64 * _MIB
    deferred = full and lazy and len(parts) > 1 and not small
    for file, part in parts:
        check_file(root, file, part, whole=small or (full and not deferred))
    return [file for file, _ in parts] if deferred else []


def check_cache(
    root: Path,
    *,
    expected: Mapping[str, Any] | None = None,
    full: bool = True,
    lazy: bool = False,
) -> tuple[dict[str, Any], frozenset[str]]:
    """The manifest of the cache at ``root`` after checking it, and the shard files whose
    whole-file check is still due (only with ``lazy``); raises CacheError.

    Checks the format version, that every ``expected`` manifest field (key, build options,
    image ids' digests, stage-1 weights) is equal, and every file's size and digest: arrays
    up to 64 MiB whole, larger ones whole when ``full`` (default) else by sampled digests;
    ``full`` and ``lazy``: a larger sharded array's shards sampled now, whole on first read.
    """
    manifest = _read_manifest(root)
    if manifest.get("format") not in FORMATS:
        raise CacheError(f"{root}: cache format {manifest.get('format')}, expected {FORMATS}")
    for field, value in (expected or {}).items():
        if manifest.get(field) != value:
            raise CacheError(
                f"{root}: stale cache: {field} is {manifest.get(field)!r}, expected {value!r}"
            )
    unchecked: list[str] = []
    for name, entry in manifest["files"].items():
        unchecked += _check_array(root, name, entry, full, lazy)
    return manifest, frozenset(unchecked)


def validate(
    root: Path, *, expected: Mapping[str, Any] | None = None, full: bool = True
) -> dict[str, Any]:
    """Return the manifest of the cache at ``root`` after checking it, or raise CacheError:
    :func:`check_cache` with every check done now (whole files when ``full``)."""
    return check_cache(root, expected=expected, full=full)[0]


def cache_problem(root: Path, expected: Mapping[str, Any]) -> str | None:
    """Why the cache at ``root`` cannot be used (``None`` when it can; whole-file digests)."""
    try:
        validate(root, expected=expected)
    except CacheError as err:
        return str(err)
    return None


__all__ = [
    "FORMAT",
    "FORMATS",
    "MANIFEST",
    "ArrayWriter",
    "CacheError",
    "cache_problem",
    "check_cache",
    "check_file",
    "full_digest",
    "sample_digest",
    "shard_parts",
    "validate",
    "write_manifest",
]
