"""A (configuration, seed) run's record in the study's parquet store: its key, its run
directory, the row written before and after it runs, and the watchdog of
``search.trial_timeout``. Used by a trial (:mod:`ltsearch.run.trainable`) and by the rungs of
early stopping (:mod:`ltsearch.run.rungs`)."""

from __future__ import annotations

import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ltmodels.engine.atomic import disk_full
from ltsearch.provenance import run_metadata
from ltsearch.spec.hashing import config_hash
from ltsearch.spec.study import StudySpec
from ltsearch.store import ResultStore

if TYPE_CHECKING:
    from ltsearch.run.trainable import StudyContext


def _flat_params(choice: Mapping[str, Any]) -> dict[str, Any]:
    return {f"param.{choice['loss']}.{k}": v for k, v in choice["loss_params"].items()}


class RecordedFailure(RuntimeError):
    """A (configuration, seed) whose failure is already in parquet: raised again instead
    of running it again (a run is deterministic for its seed, so is its error)."""


def stored_metrics(store: ResultStore, chash: str, seed: int) -> dict[str, float] | None:
    """The metrics of a stored ok run; ``None`` when none is stored.

    Raises:
        RecordedFailure: the run is stored as failed (a retry of its trial by Ray Tune
            after its process died, or the driver's resume, reads the failure back).
    """
    df = store.load_trials()
    if df.empty:
        return None
    hit = df[(df["config_hash"] == chash) & (df["seed"] == seed)]
    hit = hit[hit["status"] != "stopped"]  # stopped early (ltsearch.run.rungs): not a failure
    ok = hit[hit["status"] == "ok"]
    if not ok.empty:
        row = ok.iloc[-1]
        return {c: float(row[c]) for c in ok.columns if c.startswith(("bbox/", "segm/"))}
    if not hit.empty:
        error = str(hit.iloc[-1].get("error") or "unknown error")
        raise RecordedFailure(f"seed {seed} failed before: {error.strip().splitlines()[0]}")
    return None


def _prefixed(choice: Mapping[str, Any]) -> dict[str, Any]:
    return {f"{choice['loss']}.{k}": v for k, v in choice["loss_params"].items()}


def choice_hash(choice: Mapping[str, Any], spec: StudySpec) -> str:
    """The configuration hash of a trial's ``choice`` (its parquet key and run directory)."""
    return config_hash({"loss": choice["loss"], **_prefixed(choice)}, spec)


def run_dir(ctx: StudyContext, chash: str, seed: int) -> Path:
    """A (configuration, seed)'s run directory: its checkpoints."""
    return Path(ctx.study_dir) / "runs" / f"{chash}-s{seed}"


def base_row(
    spec: StudySpec,
    choice: Mapping[str, Any],
    chash: str,
    seed: int,
    tune_trial_id: str,
    device: str,
) -> dict[str, Any]:
    """The columns of a (configuration, seed) row known before it runs."""
    return {
        "study": spec.name,
        "trial_id": chash,
        "tune_trial_id": tune_trial_id,
        "config_hash": chash,
        "loss": choice["loss"],
        **_flat_params(choice),
        "seed": seed,
        "schedule": spec.training.schedule,
        "workers": spec.resources.workers,
        "device": device,
        "started_at": datetime.now(timezone.utc).isoformat(),
        **run_metadata(),
    }


def execute_recorded(
    spec: StudySpec,
    store: ResultStore,
    row: Mapping[str, Any],
    t0: float,
    cfg: Any,
    workdir: Path,
    execute: Callable[..., Any],
    *,
    timeout_scale: int = 1,
) -> Any:
    """``execute(cfg)`` under ``search.trial_timeout`` (times ``timeout_scale``: a packed
    run waits for its pack); a failure is written as ``row`` with status failed (a full disk
    is not: ``resume`` runs it again), then re-raised."""

    def record_failure(error: str) -> None:
        failed = dict(row)
        failed.update(
            status="failed",
            error=error,
            time_total_s=time.perf_counter() - t0,
            finished_at=datetime.now(timezone.utc).isoformat(),
        )
        store.write_trial(failed)

    try:
        timeout = spec.search.trial_timeout
        with Watchdog(None if timeout is None else timeout * timeout_scale, record_failure):
            return execute(cfg, workdir=workdir, resources=spec.resources)
    except Exception as exc:  # recorded, then re-raised so Tune and Optuna see the failure
        if disk_full(exc):  # not the run's fault: no row, so `resume` runs it again
            raise
        record_failure(f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=8)}")
        raise


def first_line(text: str) -> str:
    """The first non-blank line of an error text, stripped ("unknown error" if none)."""
    return next((ln.strip() for ln in str(text).splitlines() if ln.strip()), "unknown error")


TIMEOUT_EXIT = 124  # the exit status of a run ended by search.trial_timeout (as timeout(1))


class Watchdog:
    """Ends a (configuration, seed) run that outlives ``search.trial_timeout``.

    A hung run (a deadlock in a collective, a read from a dead mount) cannot be interrupted
    from Python, so after ``timeout`` seconds the watchdog records the run as failed
    (``TrialTimeout`` in its row) and ends the whole trial process with exit status
    :data:`TIMEOUT_EXIT`. Ray Tune sees the process die and retries the trial
    (``search.max_retries``); the retry reads the recorded failure back
    (:class:`RecordedFailure`) instead of running the seed again, so the study goes on.
    """

    def __init__(self, timeout: float | None, record: Callable[[str], None]) -> None:
        self.timeout = timeout
        self.record = record
        self._timer: threading.Timer | None = None

    def _fire(self) -> None:
        try:
            self.record(
                f"TrialTimeout: the run took longer than search.trial_timeout = "
                f"{self.timeout:g} s and was ended; raise the limit if it is expected to "
                "take that long"
            )
        finally:
            print(f"ltsearch: run ended after {self.timeout:g} s (search.trial_timeout)",
                  file=sys.stderr, flush=True)  # fmt: skip
            os._exit(TIMEOUT_EXIT)

    def __enter__(self) -> Watchdog:
        if self.timeout is not None:
            self._timer = threading.Timer(self.timeout, self._fire)
            self._timer.daemon = True
            self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._timer is not None:
            self._timer.cancel()


__all__ = [
    "TIMEOUT_EXIT", "RecordedFailure", "Watchdog", "base_row", "choice_hash",
    "execute_recorded", "first_line", "run_dir", "stored_metrics",
]  # fmt: skip
