"""``tracking.json``: what MLflow logging has done for a study, kept in its directory.

Written by :class:`ltsearch.tracking.Tracker` after each pass and read by ``ltsearch
status`` (without importing MLflow): the tracking URI it is about, the experiment and the
study's parent run there, one entry per (configuration, seed) row logged (its MLflow run
id, the row's ``finished_at``, so a row replaced in parquet is logged again, and when it
was logged), the
errors counted with the last one's first line, and the time spent logging. A state of
another URI is not this URI's: switching URIs starts a fresh state.

Passes of several processes (the driver and an ``ltsearch report`` at the same time) are
serialised by an ``flock`` on ``.tracking.lock``, so none logs a row another just logged.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ltmodels.engine.atomic import write_atomic

STATE_FILE = "tracking.json"
LOCK_FILE = ".tracking.lock"


def row_key(row: Mapping[str, Any]) -> str:
    """The identity of a stored row: ``<trial_id>-s<seed>`` (one row per configuration and
    seed, :mod:`ltsearch.store`)."""
    return f"{row['trial_id']}-s{int(row['seed'])}"


@dataclass
class TrackingState:
    """The logging state of one study at one tracking URI (see the module doc)."""

    uri: str
    experiment_id: str | None = None
    parent_run_id: str | None = None
    runs: dict[str, dict[str, str]] = field(default_factory=dict)
    errors: int = 0
    last_error: str | None = None
    log_seconds: float = 0.0  # time spent logging the runs counted in log_count
    log_count: int = 0

    def logged(self, row: Mapping[str, Any]) -> bool:
        """Whether ``row``, as stored now, is logged (same key, same ``finished_at``)."""
        entry = self.runs.get(row_key(row))
        return entry is not None and entry.get("finished_at") == finished_at(row)

    def line(self, rows: Sequence[Mapping[str, Any]] = ()) -> str:
        """``mlflow: 16 runs logged, 2 errors (last: ...)``, then where, and the rows of
        ``rows`` not logged yet."""
        text = f"mlflow: {_count(len(self.runs), 'run')} logged, {_count(self.errors, 'error')}"
        if self.last_error:
            text += f" (last: {self.last_error})"
        text += f"; {self.uri}"
        pending = sum(not self.logged(r) for r in rows)
        if pending:
            text += f"; {pending} not logged yet (the next run, resume or report logs them)"
        return text


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def finished_at(row: Mapping[str, Any]) -> str:
    return str(row.get("finished_at") or "")


def load_state(study_dir: Path, uri: str | None = None) -> TrackingState | None:
    """The state in ``study_dir``; with ``uri``, a fresh one unless the file is about that
    URI. None without ``uri`` when there is no readable state."""
    try:
        data = json.loads((study_dir / STATE_FILE).read_text(encoding="utf-8"))
        state = TrackingState(**{k: v for k, v in data.items() if k in _FIELDS})
    except (OSError, ValueError, TypeError):
        state = None
    if uri is not None and (state is None or state.uri != uri):
        return TrackingState(uri=uri)
    return state


_FIELDS = set(TrackingState.__dataclass_fields__)


def save_state(study_dir: Path, state: TrackingState) -> None:
    """Write ``tracking.json`` atomically (a reader sees the old state or the new one)."""
    text = json.dumps(asdict(state), indent=1, sort_keys=True)
    write_atomic(study_dir / STATE_FILE, lambda f: f.write(text.encode("utf-8")))


@contextlib.contextmanager
def state_lock(study_dir: Path) -> Iterator[None]:
    """Hold the study's tracking lock (one logging pass at a time, across processes)."""
    study_dir.mkdir(parents=True, exist_ok=True)
    with open(study_dir / LOCK_FILE, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def status_line(study_dir: Path, uri: str | None, rows: Sequence[Mapping[str, Any]]) -> str | None:
    """The ``mlflow:`` line of ``ltsearch status``: the study's state for ``uri`` (its
    tracking URI), or the last state written when the study no longer tracks; None when
    it never tracked."""
    state = load_state(study_dir)
    if uri is not None and (state is None or state.uri != uri):
        state = TrackingState(uri=uri)
    return None if state is None else state.line(rows)


__all__ = [
    "STATE_FILE", "TrackingState", "load_state", "row_key", "save_state", "state_lock",
    "status_line",
]  # fmt: skip
