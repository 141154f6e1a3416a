"""Stopping a running study early: on a systematic error, or on Ctrl-C / SIGTERM.

Both go through one Ray Tune :class:`~ray.tune.stopper.Stopper` (:class:`StudyStopper`):
Tune asks it at every step of its loop, and once it says stop, Tune hands out no new
trials and stops the ones in flight. A trial stopped that way has reported nothing; the
searcher leaves it ``RUNNING`` in the Optuna journal (see ``runner``), so ``ltsearch
resume`` adopts it and runs it again: an interrupted study loses nothing.

A *systematic* error is one that the first trials all hit: while no trial has succeeded,
``search.max_failures`` failures with the same :func:`error_signature` (exception type and
message, with paths and numbers masked) stop the study, and the error is printed once,
with the log of the trial that showed it. One error in a study that otherwise works is
recorded as a failed row and the study goes on.
"""

from __future__ import annotations

import re
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray.tune import Callback
from ray.tune.stopper import Stopper

from ltsearch.control import stop_requested
from ltsearch.run.records import first_line
from ltsearch.run.trainable import ERROR_KEY, STOP_KEY
from ltsearch.store import ResultStore

_PATH = re.compile(r"(?:[A-Za-z]:)?(?:[\w.~-]*/)+[\w.<>-]*")
_HEX = re.compile(r"\b[0-9a-f]{8,}\b")
_NUM = re.compile(r"[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?", re.IGNORECASE)


def error_signature(text: str) -> str:
    """The first line of an error (``Type: message``) with paths, hashes and numbers
    masked: two trials that failed for the same reason have the same signature."""
    first = _PATH.sub("<path>", first_line(text))
    first = _HEX.sub("<hash>", first)
    return _NUM.sub("<n>", first)


@dataclass
class StopRequest:
    reason: str  # "interrupted", "systematic" or "storage" (the disk is full)
    message: str


class StudyStopper(Stopper):
    """Stops the whole study once :meth:`request` was called, or once ``ltsearch stop``
    asked for it through the study directory (:mod:`ltsearch.control`, polled at most once
    a second); never a single trial."""

    POLL_S = 1.0

    def __init__(self, study_dir: Path | None = None) -> None:
        self.request_: StopRequest | None = None
        self.study_dir = study_dir
        self._polled = 0.0

    def request(self, reason: str, message: str) -> None:
        if self.request_ is None:  # the first reason wins
            self.request_ = StopRequest(reason, message)

    @property
    def reason(self) -> str | None:
        return None if self.request_ is None else self.request_.reason

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return False

    def stop_all(self) -> bool:
        if self.request_ is None and self.study_dir is not None:
            now = time.monotonic()
            if now - self._polled >= self.POLL_S:
                self._polled = now
                who = stop_requested(self.study_dir)
                if who is not None:
                    print(
                        f"ltsearch: `ltsearch stop` received (from {who}); stopping the "
                        "trials in flight (they stay resumable)",
                        file=sys.stderr,
                        flush=True,
                    )
                    self.request("interrupted", f"stopped by `ltsearch stop` from {who}")
        return self.request_ is not None


class FailFast(Callback):
    """Requests a stop when the first ``max_failures`` failed trials share one error."""

    def __init__(self, stopper: StudyStopper, study_dir: Path, max_failures: int) -> None:
        self.stopper = stopper
        self.study_dir = Path(study_dir)
        self.max_failures = max_failures
        self.succeeded = 0
        self.signatures: Counter[str] = Counter()

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        result = trial.last_result or {}
        if STOP_KEY in result:
            self.stopper.request(
                "storage",
                f"stopped: the storage is full ({result[STOP_KEY]}); free space, then "
                f"`ltsearch resume {self.study_dir}` (the runs it cut short run again)",
            )
        elif ERROR_KEY in result:
            self._failed(trial)
        elif result:
            self.succeeded += 1

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._failed(trial)  # its process died more often than search.max_retries allows

    def _failed(self, trial: Any) -> None:
        text, log = self._error_of(trial)
        sig = error_signature(text)
        self.signatures[sig] += 1
        if self.max_failures and not self.succeeded and self.signatures[sig] >= self.max_failures:
            self.stopper.request(
                "systematic",
                f"stopped: the first {self.signatures[sig]} trials failed with the same error "
                f"(search.max_failures: {self.max_failures}):\n  {first_line(text)}\n"
                f"  trial log: {log}",
            )

    def _error_of(self, trial: Any) -> tuple[str, str]:
        """The trial's error text and where to read it in full: the failed parquet row
        (written by the trial itself), else Ray Tune's error file."""
        log = _log_path(trial, self.study_dir)
        try:
            df = ResultStore(self.study_dir).load_trials()
        except Exception:  # a torn read never decides a stop
            df = None
        if df is not None and not df.empty and "tune_trial_id" in df:
            rows = df[(df["tune_trial_id"] == trial.trial_id) & (df["status"] == "failed")]
            if not rows.empty:
                return str(rows.iloc[-1]["error"]), log
        path = trial.error_file
        if path and Path(path).is_file():
            lines = [ln for ln in Path(path).read_text(errors="replace").splitlines() if ln]
            return (lines[-1] if lines else "unknown error"), log
        return "unknown error", log


def _log_path(trial: Any, study_dir: Path) -> str:
    """The trial's ``error.txt`` in the study's own ``tune/`` folder (Ray Tune copies it
    there from its session folder, which is gone once Ray stops)."""
    if getattr(trial, "path", None):
        return str(Path(trial.path) / "error.txt")
    return str(trial.error_file or study_dir / "tune")


class Interrupts:
    """Ctrl-C and SIGTERM: the first asks the study to stop cleanly (trials in flight
    stay resumable); a second one interrupts at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, stopper: StudyStopper) -> None:
        self.stopper = stopper
        self._old: dict[int, Any] = {}

    def __enter__(self) -> Interrupts:
        for sig in self.SIGNALS:
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.stopper.reason == "interrupted":
            raise KeyboardInterrupt
        name = signal.Signals(signum).name
        print(
            f"ltsearch: {name} received; stopping the trials in flight (they stay resumable; "
            "send it again to stop at once)",
            file=sys.stderr,
            flush=True,
        )
        self.stopper.request("interrupted", f"interrupted by {name}")


__all__ = ["FailFast", "Interrupts", "StopRequest", "StudyStopper", "error_signature"]
