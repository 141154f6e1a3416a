"""Atomic file writes: a reader (or a crash) sees the old file or the whole new one; and
:func:`disk_full`, which tells a write that failed for lack of space."""

from __future__ import annotations

import errno
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def write_atomic(path: str | Path, write: Callable[[BinaryIO], object]) -> Path:
    """Call ``write(fh)`` on a hidden temporary file beside ``path``, fsync it, then rename
    it over ``path`` (creating the folder). The temporary file never outlives a failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
_DISK_FULL_TEXT = (os.strerror(errno.ENOSPC), os.strerror(errno.EDQUOT))


def disk_full(exc: BaseException | None) -> str | None:
    """What says the disk is full in ``exc`` or the exceptions it was raised from (torch
    and pyarrow wrap the OSError of a failed write in their own), e.g. ``"No space left on
    device: '/runs/x/model.pt'"``; ``None`` when nothing does."""
    seen, found = 0, None
    while exc is not None and seen < 8:
        if isinstance(exc, OSError) and exc.errno in _DISK_FULL:
            where = f": {exc.filename!r}" if exc.filename else ""
            return f"{os.strerror(exc.errno)}{where}"
        if found is None and any(m in str(exc) for m in _DISK_FULL_TEXT):
            found = next(m for m in _DISK_FULL_TEXT if m in str(exc))
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return found


__all__ = ["disk_full", "write_atomic"]
