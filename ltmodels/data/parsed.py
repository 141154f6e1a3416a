"""Parsed annotation files kept for the life of a process, keyed by the file's identity.

A decoupled trial on the feature cache trains for a few seconds, and before this it parsed
and validated the same LVIS annotation files once per run: the training JSON twice (with
and without masks), the validation JSON for the dataset and once more for the evaluator.
That was about a seventh of a cached run on the embedded data. A study's Ray actors are
reused from trial to trial (``reuse_actors``), so a process meets the same files again and
again: :func:`memoised` keeps what was built from a file, and builds it again when the file
changes.

A file's identity is its resolved path, size and content digest (:func:`file_identity`):
a file rewritten with other bytes makes a new entry, whatever its timestamps say. The
objects kept are shared, not copied; the callers treat them as read-only. At most
:data:`ENTRIES` are kept (least recently used first out), and only of files up to
:data:`MAX_BYTES`, so a process holds at most the few small files it works with. A build
that raises keeps nothing.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

ENTRIES = 8
"""Built objects kept per process (a trial uses the training JSON as data, with and
without masks, the validation JSON as data and its ground truth for the evaluator)."""

MAX_BYTES = 64 << 20
"""Larger files are parsed every time, as before: LVIS v1's annotation files (1.1 GB train,
190 MB val) parse into gigabytes that a long-lived process (the study's driver, a reused
actor between studies) should not keep, and a trial on them lasts hours, not seconds."""

_LOCK = threading.Lock()
_MEMO: OrderedDict[tuple[Hashable, ...], Any] = OrderedDict()


def file_identity(path: str | Path) -> tuple[Hashable, ...]:
    """The file's resolved path, size and content digest (SHA-1 of its bytes).

    The content, not the modification time: a file rewritten within the file system's
    timestamp granularity (milliseconds) keeps its times, and a touched file keeps its
    parse. Hashing reads the file at about a GB/s, a small fraction of parsing it.

    Raises:
        OSError: the file cannot be read (missing).
    """
    resolved = Path(path).resolve()
    digest = hashlib.sha1(usedforsecurity=False)
    size = 0
    with resolved.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
            size += len(block)
    return (str(resolved), size, digest.hexdigest())


def memoised(kind: Hashable, path: str | Path, build: Callable[[], T]) -> T:
    """``build()``'s result for the file at ``path`` as ``kind``, built once per identity.

    Args:
        kind: what is built from the file (two kinds of one file are two entries).
        path: the file; a missing file is built (so that ``build`` raises its own error).
        build: reads ``path``; called at most once per identity while the entry is kept.
    """
    try:
        if Path(path).stat().st_size > MAX_BYTES:
            return build()
        key = (kind, *file_identity(path))
    except OSError:
        return build()
    with _LOCK:
        if key in _MEMO:
            _MEMO.move_to_end(key)
            return _MEMO[key]  # type: ignore[no-any-return]
    value = build()  # outside the lock: a slow parse does not block other files
    with _LOCK:
        _MEMO[key] = value
        _MEMO.move_to_end(key)
        while len(_MEMO) > ENTRIES:
            _MEMO.popitem(last=False)
    return value


def clear() -> None:
    """Forget every kept object (tests; a process that wants its memory back)."""
    with _LOCK:
        _MEMO.clear()


__all__ = ["ENTRIES", "clear", "file_identity", "memoised"]
