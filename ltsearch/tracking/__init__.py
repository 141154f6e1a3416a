"""Experiment tracking: a study's results also logged to MLflow (``tracking: {mlflow: URI}``
in the study file, or ``--mlflow URI`` on ``run``/``resume``).

Logging happens on the driver, from the rows in ``trials/`` and ``epochs/``: a trial runs
in a Ray worker that may sit on a node that cannot reach the tracking server, while the
driver reads the parquet store anyway. :class:`Tracker` makes one *pass* when the study
starts (the experiment and the parent run exist before any trial, and rows of an earlier
untracked run are logged), after every trial (a Ray Tune callback,
:mod:`ltsearch.run.tracking`) and when the driver ends; ``ltsearch report`` (and the
report at the end of ``run``) makes one more and attaches the report to the parent run.
What goes where in MLflow: :mod:`ltsearch.tracking.mlflow_runs`.

A pass logs each row not yet logged under the study's parent run, so nothing is logged
twice: not on resume, not by a second process (passes hold a lock), not after a crash
mid-pass (the runs already under the parent are read back from MLflow when a tracker
starts, and the state is in ``tracking.json``, :mod:`ltsearch.tracking.state`).

Logging never fails a trial or the study: every MLflow error is caught, counted in
``tracking.json`` with its first line (``ltsearch status`` shows them) and printed once.
A tracker that cannot reach its store (the first call fails), or meets
:data:`MAX_CONSECUTIVE_ERRORS` errors in a row, stops logging for the rest of its process;
the rows it left are logged by the next run, resume or report.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ltsearch.errors import SpecError
from ltsearch.spec.study import StudySpec
from ltsearch.tracking.state import (
    TrackingState,
    load_state,
    row_key,
    save_state,
    state_lock,
)

MAX_CONSECUTIVE_ERRORS = 3
REPORT_FILES = (("report.md", None), ("report.html", None), ("report", "report"))
_WARNED: set[str] = set()  # URIs whose first error this process printed


def error_line(exc: BaseException) -> str:
    """``Type: first line of the message``, at most 200 characters."""
    text = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), "")
    return f"{type(exc).__name__}: {text}"[:200] if text else type(exc).__name__


class Tracker:
    """Logs one study's rows to one MLflow tracking URI (see the module doc)."""

    def __init__(self, spec: StudySpec, study_dir: Path, uri: str) -> None:
        self.spec = spec
        self.study_dir = Path(study_dir)
        self.uri = uri
        self.client: Any = None
        self.off = False  # stopped logging for the rest of this process
        self.skip: set[str] = set()  # rows that failed in this process: left to the next
        self.created_parent = False

    def __getstate__(self) -> dict[str, Any]:
        """Picklable (Ray Tune pickles its callbacks): without the client, which holds
        connections; a copy connects again on its first pass."""
        return {**self.__dict__, "client": None}

    def sync(self) -> None:
        """One pass: log every stored row not yet logged. Never raises."""
        self._pass(lambda state: None)

    def start(self) -> None:
        """The first pass of a driver: also mark the parent run RUNNING (a resumed study's
        was ended by the driver before). Never raises."""
        from ltsearch.tracking import mlflow_runs as ml

        def running(state: TrackingState) -> None:
            if not self.created_parent:
                ml.set_status(self.client, parent_id(state), "RUNNING")

        self._pass(running)

    def attach_report(self) -> None:
        """One pass, then log ``report.md``, ``report.html`` and ``report/`` to the
        parent run. Never raises."""
        from ltsearch.tracking import mlflow_runs as ml

        def attach(state: TrackingState) -> None:
            files = [(self.study_dir / name, dest) for name, dest in REPORT_FILES]
            ml.log_files(self.client, parent_id(state), files)
            if self.created_parent:  # nobody else ends it: a driver would have created it
                ml.set_status(self.client, parent_id(state), "FINISHED")

        self._pass(attach)

    def finish(self, stopped: str | None = None) -> None:
        """A last pass, then end the parent run: FINISHED, or KILLED when the study was
        interrupted (``stopped``: :attr:`ltsearch.run.driver.StudyOutcome.stopped`), FAILED
        when it stopped on an error. Never raises."""
        from ltsearch.tracking import mlflow_runs as ml

        status = {None: "FINISHED", "interrupted": "KILLED"}.get(stopped, "FAILED")
        self._pass(lambda state: ml.set_status(self.client, parent_id(state), status))

    def _pass(self, then: Callable[[TrackingState], None]) -> None:
        if self.off:
            return
        try:
            with state_lock(self.study_dir):
                state = load_state(self.study_dir, self.uri)
                assert state is not None
                try:
                    self._log(state, then)
                finally:
                    save_state(self.study_dir, state)
        except OSError as exc:  # the state file or its lock: the study goes on all the same
            self._say(error_line(exc))

    def _log(self, state: TrackingState, then: Callable[[TrackingState], None]) -> None:
        try:
            self._setup(state)
        except Exception as exc:  # unreachable, refused, misconfigured: nothing else works
            self._error(state, exc)
            self.off = True
            return
        self._log_rows(state)
        if self.off:
            return
        try:
            then(state)
        except Exception as exc:
            self._error(state, exc)

    def _setup(self, state: TrackingState) -> None:
        from ltsearch.tracking import mlflow_runs as ml

        first = self.client is None
        if first:
            self.client = ml.connect(self.uri)
        if first or state.experiment_id is None:
            state.experiment_id = ml.ensure_experiment(self.client, self.spec.name, self.uri)
        if not ml.parent_exists(self.client, state.parent_run_id):
            parent = ml.create_parent(self.client, state.experiment_id, self.spec, self.study_dir)
            state.parent_run_id, state.runs = parent, {}
            self.created_parent = True
            save_state(self.study_dir, state)  # before anything else can fail
        elif first:  # what is under the parent is the truth (a pass may have died mid-way)
            state.runs = ml.logged_children(self.client, state.experiment_id, parent_id(state))

    def _log_rows(self, state: TrackingState) -> None:
        from ltsearch.store import ResultStore

        store = ResultStore(self.study_dir)
        errors_in_a_row = 0
        for row in store.trial_rows():
            key = row_key(row)
            if state.logged(row) or key in self.skip:
                continue
            t0 = time.perf_counter()
            try:
                self._log_row(state, store, key, row)
            except Exception as exc:
                self._error(state, exc)
                self.skip.add(key)
                errors_in_a_row += 1
                if errors_in_a_row >= MAX_CONSECUTIVE_ERRORS:
                    self.off = True
                    return
                continue
            errors_in_a_row = 0
            state.log_seconds += time.perf_counter() - t0
            state.log_count += 1

    def _log_row(self, state: TrackingState, store: Any, key: str, row: Mapping[str, Any]) -> None:
        from ltsearch.tracking import mlflow_runs as ml

        old = state.runs.pop(key, None)
        if old is not None:  # the row was replaced (run again): its old run goes
            self.client.delete_run(old["run_id"])
        epochs = store.run_rows("epochs", str(row["trial_id"]), int(row["seed"]))
        state.runs[key] = ml.log_member(
            self.client, str(state.experiment_id), parent_id(state), key, row, epochs
        )

    def _error(self, state: TrackingState, exc: BaseException) -> None:
        state.errors += 1
        state.last_error = error_line(exc)
        self._say(state.last_error)

    def _say(self, error: str) -> None:
        if self.uri not in _WARNED:  # once per process: a study's output is no error log
            _WARNED.add(self.uri)
            print(
                f"ltsearch: mlflow logging to {self.uri} failed ({error}); the study goes on, "
                f"`ltsearch status {self.study_dir}` counts the errors and `ltsearch report "
                f"{self.study_dir}` logs what is left",
                file=sys.stderr,
                flush=True,
            )


def parent_id(state: TrackingState) -> str:
    assert state.parent_run_id is not None
    return state.parent_run_id


def open_tracker(spec: StudySpec) -> Tracker | None:
    """The tracker of a study that tracks (None otherwise).

    Raises:
        SpecError: the study names an MLflow URI but the ``mlflow`` package is missing.
    """
    uri = spec.tracking.mlflow if spec.tracking is not None else None
    if uri is None:
        return None
    if importlib.util.find_spec("mlflow") is None:
        raise SpecError(
            "needs the mlflow package, which is not installed; pip install 'ltsearch[mlflow]', "
            "or remove the key",
            path=["tracking", "mlflow"],
        )
    return Tracker(spec, spec.study_dir, uri)


def check_cli_uri(uri: str | None) -> None:
    """Check ``--mlflow URI`` (None: not given).

    Raises:
        SpecError: not an MLflow tracking URI (key path ``--mlflow``).
    """
    from ltsearch.spec.sections import check_tracking_uri

    if uri is not None:
        try:
            check_tracking_uri(uri)
        except SpecError as exc:
            raise SpecError(exc.reason, path=["--mlflow"]) from None


def log_report(study_dir: Path) -> str | None:
    """``ltsearch report`` of a study that tracks: log what is left and attach the report
    to the parent run; returns the ``mlflow:`` line of the state (None: no tracking)."""
    from ltsearch.study_dir import load_study_dir

    spec = load_study_dir(study_dir)
    uri = spec.tracking.mlflow if spec.tracking is not None else None
    if uri is None:
        return None
    root = Path(study_dir).absolute()
    if importlib.util.find_spec("mlflow") is None:
        return "mlflow: not logged: the mlflow package is missing (pip install 'ltsearch[mlflow]')"
    Tracker(spec, root, uri).attach_report()
    state = load_state(root, uri)
    return None if state is None else state.line()


__all__ = [
    "MAX_CONSECUTIVE_ERRORS", "Tracker", "check_cli_uri", "error_line", "log_report",
    "open_tracker",
]  # fmt: skip
