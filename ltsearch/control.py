"""Who drives a study, and how another terminal stops it, without Ray.

A driver holds an exclusive ``flock`` on ``<study>/.driver.lock`` while it runs and writes
into it who it is (:class:`Holder`: pid, host, start time, command). The lock dies with
the process, ``kill -9`` included, so a lock left by a killed driver is simply free: the
next driver takes it and overwrites the holder. A second driver of a running study is
refused with one line naming the holder.

``ltsearch stop DIR`` stops a study whose driver runs elsewhere (another terminal, a ``ray
job submit``): it writes ``<study>/.stop-request`` (:func:`request_stop`), the driver sees
it within a second (:func:`stop_requested`, polled by Ray Tune's stopper) and stops as on
SIGTERM: the trials in flight stop, stay resumable, and the driver exits 130. The request
goes through the study directory, so it reaches a driver on another host that shares the
storage. A request is dropped when a driver starts and when it ends, so it never stops a
later run.

``flock`` on a network filesystem is only as good as that filesystem's locking (NFSv4 and
Lustre with ``flock`` mount options honour it; some FUSE mounts do not).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from ltmodels.engine.atomic import write_atomic
from ltsearch.errors import SpecError

LOCK_FILE = ".driver.lock"
STOP_FILE = ".stop-request"


@dataclass(frozen=True)
class Holder:
    """The driver that holds (or last held) a study's lock."""

    pid: int
    host: str
    started_at: str  # ISO 8601, UTC
    command: str = ""

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}, started {self.started_at}"

    @classmethod
    def me(cls) -> Holder:
        now = datetime.now(timezone.utc).replace(microsecond=0).isoformat()
        return cls(os.getpid(), socket.gethostname(), now, " ".join(sys.argv))


def read_holder(study_dir: str | Path) -> Holder | None:
    """The holder written in the lock file (``None``: no file, or not one we wrote)."""
    try:
        data = json.loads((Path(study_dir) / LOCK_FILE).read_text())
        return Holder(**data)
    except (OSError, ValueError, TypeError):
        return None


def is_running(study_dir: str | Path) -> bool:
    """Whether a live driver holds the study's lock."""
    path = Path(study_dir) / LOCK_FILE
    try:
        f = open(path, "rb")  # noqa: SIM115 (closed below; flock needs the descriptor)
    except FileNotFoundError:
        return False
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
        return False


@contextlib.contextmanager
def driver_lock(study_dir: str | Path) -> Iterator[Holder]:
    """Hold the study's driver lock; a second driver of the same study is a user error."""
    root = Path(study_dir)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / LOCK_FILE, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = read_holder(root)
            who = holder.describe() if holder else "another process"
            raise SpecError(
                f"another ltsearch driver ({who}) is running this study; wait for it to "
                f"finish or `ltsearch stop {root}`, then `ltsearch resume` the directory",
                file=str(root),
            ) from None
        me = Holder.me()
        f.seek(0)
        f.truncate()
        f.write(json.dumps(asdict(me)) + "\n")
        f.flush()
        clear_stop(root)  # a request from before this driver is not for it
        try:
            yield me
        finally:
            clear_stop(root)
            fcntl.flock(f, fcntl.LOCK_UN)


def request_stop(study_dir: str | Path) -> Path:
    """Ask the study's driver to stop (see the module doc); returns the request file."""
    me = Holder.me()
    text = json.dumps({**asdict(me), "requested_at": time.time()}) + "\n"
    return write_atomic(Path(study_dir) / STOP_FILE, lambda f: f.write(text.encode()))


def stop_requested(study_dir: str | Path) -> str | None:
    """Who asked the driver to stop (``pid P on HOST``), or ``None`` when nobody did."""
    path = Path(study_dir) / STOP_FILE
    try:
        data = json.loads(path.read_text())
        return f"pid {data['pid']} on {data['host']}"
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        return "an unreadable request" if path.exists() else None


def clear_stop(study_dir: str | Path) -> None:
    (Path(study_dir) / STOP_FILE).unlink(missing_ok=True)


__all__ = [
    "LOCK_FILE", "STOP_FILE", "Holder", "clear_stop", "driver_lock", "is_running",
    "read_holder", "request_stop", "stop_requested",
]  # fmt: skip
