"""Sharded arrays of the RoI-feature cache: one logical array in several files.

Shape shorthand: R rows of a logical array, S shards, ``row`` the trailing shape of a row.

At LVIS scale (100k training images, 512 RoIs each, D = 1024 in fp16) the training features
alone are ~100 GB. Written as one file, every open would re-hash it whole before the first
iteration. The builder therefore cuts each array into shards of at most ``shard_bytes``,
only between images (:class:`ShardWriter`): an image's rows never straddle two files, so a
shard covers a range of images. Every shard is a flat C-order file with its own size and
digests in the manifest (:func:`ltmodels.cache.manifest.shard_parts`). An array that fits one
shard keeps today's single file and manifest entry (format 1), so small caches are
unchanged.

:class:`ShardedArray` exposes a sharded array with the numpy indexing the trainer and the
evaluator use (``arr[int_array]``, ``arr[bool_mask]``, ``arr[a:b]``, ``arr[i]``, ``len``,
``.shape``, ``.dtype``, ``np.asarray``, ``.max()``): global rows map to (shard, local row)
through the shards' row offsets, and a fancy index is read shard by shard in increasing row
order (sorted within a shard, so each shard is read front to back). A slice within one shard
is a view of its memory map; anything else is a copy.

Verification: the whole-file sha256 of a shard can be checked lazily, on the first read that
touches it (``verify`` callback; :meth:`~ltmodels.cache.store.FeatureCache.open` passes the
shards that only had their sampled digest checked at open). Opening a 100 GB cache then
reads ~18 MiB per shard, not 100 GB; note that an epoch draws images at random, so its first
iterations touch most shards: the full check is spread over the first reads and bounded by
one read per process, not avoided (``full=False`` skips it).

Sharing: every shard is ``np.memmap``-ed read-only (``mode="r"``), so Ray workers on one node
that open the same cache on shared storage share the kernel's page cache and none copies the
cache into its own memory: a worker's private memory is its batch, not the cache. The limit
is the page cache and the storage's bandwidth: at LVIS scale a full cache is tens of GB (more
than this 24 GiB machine's RAM), so on a network file system every epoch streams it again at
the file system's speed unless the node's page cache holds it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ltmodels.cache.manifest import ArrayWriter

DEFAULT_SHARD_BYTES = 4 << 30  # 4 GiB: every array of today's caches stays one file


def manifest_format(files: Mapping[str, Mapping[str, Any]]) -> int:
    """The format of a manifest with these array entries: 2 if any array is sharded, else 1."""
    return 2 if any("shards" in e for e in files.values()) else 1


def shard_file(name: str, index: int) -> str:
    """File of shard ``index`` of the array ``name`` (``"train/features"``)."""
    return f"{name}.{index:05d}.bin"


class ShardWriter:
    """Writes one logical array as shards of whole units (an image's rows) of at most
    ``shard_bytes`` (a unit larger than that gets a shard of its own).

    Rows given to :meth:`append` are held until :meth:`end_unit` and then written together
    to the current shard, or to a new one when they would overflow it. While there is one
    shard it is the array's own file ``<name>.bin``; the first overflow renames it to
    ``<name>.00000.bin`` and starts ``<name>.00001.bin``.

    Args:
        root: the cache directory being built.
        name: the array, ``"<split>/<array>"``.
        dtype, row_shape: as :class:`~ltmodels.cache.manifest.ArrayWriter`.
        shard_bytes: bound of a shard (``None``: one file whatever the size).
    """

    def __init__(
        self,
        root: Path,
        name: str,
        dtype: np.dtype | str,
        row_shape: tuple[int, ...],
        shard_bytes: int | None = DEFAULT_SHARD_BYTES,
    ) -> None:
        self.root, self.name, self.shard_bytes = root, name, shard_bytes
        self.dtype = np.dtype(dtype)
        self.row_shape = tuple(int(s) for s in row_shape)
        self.row_bytes = self.dtype.itemsize * int(np.prod(self.row_shape, dtype=np.int64))
        self.rows = 0
        self._unit: list[np.ndarray] = []
        self._done: list[dict[str, Any]] = []
        self._writer = ArrayWriter(root / f"{name}.bin", self.dtype, self.row_shape)

    def append(self, rows: np.ndarray) -> None:
        """Add ``rows`` ``[n, *row_shape]`` to the current unit."""
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        if rows.shape[1:] != self.row_shape:
            raise ValueError(f"{self.name}: rows {rows.shape} do not fit {self.row_shape}")
        self._unit.append(rows)

    def end_unit(self) -> None:
        """Write the rows appended since the last call, all to one shard."""
        n = sum(len(r) for r in self._unit)
        if n and self._writer.rows and n > self._room():
            self._roll()
        for rows in self._unit:
            self._writer.append(rows)
        self.rows += n
        self._unit.clear()

    def append_units(self, rows: np.ndarray) -> None:
        """Write ``rows``, each row a unit of its own (per-image arrays)."""
        self.end_unit()
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        while len(rows):
            room = self._room()
            if room == 0:
                self._roll()
                continue
            self._writer.append(rows[:room])
            self.rows += min(room, len(rows))
            rows = rows[room:]

    def _room(self) -> int:
        """Rows the current shard can still take (at least one when it is empty)."""
        if self.shard_bytes is None or self.row_bytes == 0:
            return np.iinfo(np.int64).max
        free = (self.shard_bytes - self._writer.rows * self.row_bytes) // self.row_bytes
        return max(free, 0 if self._writer.rows else 1)

    def _roll(self) -> None:
        entry = self._writer.close()
        entry["file"] = shard_file(self.name, len(self._done))
        if not self._done:  # the single file becomes shard 0
            os.replace(self._writer.path, self.root / entry["file"])
        self._done.append(entry)
        path = self.root / shard_file(self.name, len(self._done))
        self._writer = ArrayWriter(path, self.dtype, self.row_shape)

    def discard(self) -> None:
        """Close and delete every file written (an abandoned build)."""
        self._writer.discard()
        for entry in self._done:
            (self.root / entry["file"]).unlink(missing_ok=True)

    def close(self) -> dict[str, Any]:
        """Flush and return the array's manifest entry: the single file's entry, or
        ``dtype``, ``shape``, ``bytes`` and ``shards`` (one file entry each, with ``file``)."""
        self.end_unit()
        last = self._writer.close()
        if not self._done:
            return last
        last["file"] = shard_file(self.name, len(self._done))
        shards = [*self._done, last]
        return {
            "dtype": self.dtype.str,
            "shape": [self.rows, *self.row_shape],
            "bytes": sum(s["bytes"] for s in shards),
            "shards": shards,
        }


def _is_int(key: Any) -> bool:
    return isinstance(key, int | np.integer) and not isinstance(key, bool | np.bool_)


def _is_basic(key: Any) -> bool:
    """An index that numpy applies without advanced indexing."""
    return key is None or key is Ellipsis or _is_int(key) or isinstance(key, slice)


class ShardedArray:
    """A read-only logical array ``[R, *row]`` over memory-mapped shards of consecutive rows.

    Args:
        parts: each shard's rows, in order (``np.memmap`` in a cache; any arrays work).
        files: each shard's file (named in errors, passed to ``verify``).
        verify: called with a shard's file before that shard is first read, once per shard
            named in ``unchecked``; raises to refuse it.
        unchecked: files of the shards still to verify.
    """

    def __init__(
        self,
        parts: Sequence[np.ndarray],
        files: Sequence[str],
        *,
        verify: Callable[[str], None] | None = None,
        unchecked: Collection[str] = (),
    ) -> None:
        if not parts or len(parts) != len(files):
            raise ValueError("a sharded array needs one file name per shard, at least one")
        self._parts, self._files, self._verify = list(parts), list(files), verify
        self.starts = np.concatenate([[0], np.cumsum([len(p) for p in parts])]).astype(np.int64)
        self.dtype = parts[0].dtype
        self.shape = (int(self.starts[-1]), *parts[0].shape[1:])
        self._unchecked = {i for i, f in enumerate(files) if verify and f in unchecked}
        self._lock = threading.Lock()

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    @property
    def num_shards(self) -> int:
        return len(self._parts)

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"ShardedArray(shape={self.shape}, dtype={self.dtype}, shards={self.num_shards})"

    def _part(self, s: int) -> np.ndarray:
        """Shard ``s``, verified first if it is still unchecked."""
        if self._unchecked and s in self._unchecked:
            with self._lock:
                if s in self._unchecked:
                    assert self._verify is not None
                    self._verify(self._files[s])
                    self._unchecked.discard(s)
        return self._parts[s]

    def _shard_of(self, rows: np.ndarray | int) -> Any:
        return np.searchsorted(self.starts, rows, side="right") - 1

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, tuple):
            if not key or key[0] is Ellipsis or key[0] is None:
                return np.asarray(self)[key]
            head, rest = self[key[0]], key[1:]
            if not rest:
                return head
            if not all(_is_basic(r) for r in rest):
                raise IndexError("ShardedArray: only the first index may be an array")
            lead = 0 if _is_int(key[0]) else 1 if isinstance(key[0], slice) else np.ndim(key[0])
            return head[(slice(None),) * lead + rest]
        if key is Ellipsis:
            return np.asarray(self)
        if _is_int(key):
            i = int(key) + (len(self) if int(key) < 0 else 0)
            if not 0 <= i < len(self):
                raise IndexError(f"index {int(key)} is out of bounds for {len(self)} rows")
            s = int(self._shard_of(i))
            return self._part(s)[i - self.starts[s]]
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step != 1:
                return self._take(np.arange(start, stop, step))
            return self._range(start, max(start, stop))
        idx = np.asarray(key)
        if idx.dtype == bool:
            if idx.shape != self.shape[:1]:
                raise IndexError(f"boolean index of shape {idx.shape} for {len(self)} rows")
            idx = np.flatnonzero(idx)
        elif idx.dtype.kind not in "iu":
            raise IndexError(f"ShardedArray cannot be indexed by {idx.dtype} arrays")
        return self._take(idx)

    def _range(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop``: a view within one shard, else a copy."""
        if stop == start:
            return np.empty((0, *self.shape[1:]), dtype=self.dtype)
        first, last = int(self._shard_of(start)), int(self._shard_of(stop - 1))
        pieces = [
            self._part(s)[max(start, self.starts[s]) - self.starts[s] : stop - self.starts[s]]
            for s in range(first, last + 1)
        ]
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)

    def _take(self, idx: np.ndarray) -> np.ndarray:
        """``arr[idx]`` for an integer array: shard by shard, increasing rows in each."""
        flat = idx.reshape(-1).astype(np.int64, copy=False)
        n = len(self)
        if flat.size and (flat.min() < -n or flat.max() >= n):
            raise IndexError(f"index out of bounds for {n} rows")
        flat = np.where(flat < 0, flat + n, flat)
        out = np.empty((flat.size, *self.shape[1:]), dtype=self.dtype)
        ascending = flat.size < 2 or bool((flat[1:] >= flat[:-1]).all())
        order = None if ascending else np.argsort(flat, kind="stable")
        rows = flat if order is None else flat[order]
        shard = self._shard_of(rows)
        bounds = np.flatnonzero(np.diff(shard)) + 1
        for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, rows.size], strict=True):
            if hi == lo:
                continue
            s = int(shard[lo])
            got = self._part(s)[rows[lo:hi] - self.starts[s]]
            out[slice(lo, hi) if order is None else order[lo:hi]] = got
        return out.reshape(idx.shape + self.shape[1:])

    def __iter__(self) -> Iterator[Any]:
        for s in range(self.num_shards):
            yield from self._part(s)

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        whole = self._range(0, len(self))
        return np.array(whole, dtype=dtype) if dtype is not None else np.array(whole)

    def tolist(self) -> list[Any]:
        return np.asarray(self).tolist()

    def max(self) -> Any:
        """Largest element (shard by shard)."""
        return max(self._part(s).max() for s in range(self.num_shards) if len(self._parts[s]))

    def min(self) -> Any:
        """Smallest element (shard by shard)."""
        return min(self._part(s).min() for s in range(self.num_shards) if len(self._parts[s]))


__all__ = ["DEFAULT_SHARD_BYTES", "ShardWriter", "ShardedArray", "manifest_format", "shard_file"]
