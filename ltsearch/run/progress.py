"""The progress display of a running study on the driver: one line per finished trial
(:class:`ProgressPrinter`) and, below them, the live view of :mod:`ltsearch.live`
(:func:`live_progress`): redrawn in a terminal, timestamped lines otherwise."""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ray.tune import Callback

from ltsearch.run.trainable import ERROR_KEY, STOP_KEY
from ltsearch.rung_log import RUNG_KEY, stopped_at
from ltsearch.spec.study import StudySpec


def _fmt_params(config: dict[str, Any]) -> str:
    loss = config.get("loss", "?")
    rest = [f"{k.split('.', 1)[1]}={_num(v)}" for k, v in sorted(config.items()) if "." in k]
    return f"{loss}" + (f"({', '.join(rest)})" if rest else "")


def _ap(v: float) -> str:
    """An LVIS metric as the papers print it: percent; lvis-api's -1 (undefined) as n/a."""
    return "n/a" if v < 0 else f"{100 * v:.1f}"


def _num(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


class ProgressPrinter(Callback):
    """Prints a header, then ``[k/N] loss(params): objectives  (time)  best: ...`` lines."""

    def __init__(
        self, spec: StudySpec, study_dir: Path, *, enabled: bool = True, done_before: int = 0
    ) -> None:
        self.enabled = enabled
        self.done_before = done_before  # trials a killed driver finished (a resumed study)
        self.total = spec.n_trials
        self.seeds = len(spec.search.seeds)
        self.objectives = spec.search.parsed_objectives
        self.study_dir = str(study_dir)
        self.name = spec.name
        self.done = 0
        self.failed = 0
        self.best: dict[str, tuple[float, str]] = {}
        self.t0 = time.time()

    def _print(self, text: str) -> None:
        if self.enabled:
            print(text, file=sys.stdout, flush=True)

    def say(self, text: str) -> None:
        """Print a line among the trial lines (not with ``--quiet``)."""
        self._print(text)

    def header(self, where: str) -> None:
        objs = ", ".join(f"{o.metric} ({o.direction})" for o in self.objectives)
        self._print(
            f"study {self.name}: {self.total} configurations x {self.seeds} seed(s) on {where}"
            + (f" ({self.done_before} done before; resuming)" if self.done_before else "")
            + "\n"
            f"  objectives: {objs}\n  results: {self.study_dir}"
        )

    def _update_best(self, result: dict[str, Any], label: str) -> None:
        for o in self.objectives:
            v = result.get(o.metric)
            if not isinstance(v, (int, float)) or v < 0:  # -1: undefined in LVIS
                continue
            cur = self.best.get(o.metric)
            better = cur is None or (v > cur[0] if o.direction == "max" else v < cur[0])
            if better:
                self.best[o.metric] = (float(v), label)

    def _count(self) -> int:
        return self.done_before + self.done + self.failed

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        result = trial.last_result or {}
        if not result or STOP_KEY in result:  # stopped before it reported (run.stopping)
            self._print(f"[stopped] {_fmt_params(trial.config)}: left to `ltsearch resume`")
            return
        if ERROR_KEY in result:
            self.on_trial_error(iteration, trials, trial)
            return
        if result.get(RUNG_KEY) is not None:  # it ended on a rung (early stopping)
            self._rung_end(trial, result)
            return
        self.done += 1
        label = _fmt_params(trial.config)
        self._update_best(result, label)
        vals = "  ".join(
            f"{o.metric} {_ap(result[o.metric])}"
            for o in self.objectives
            if isinstance(result.get(o.metric), (int, float))
        )
        best = "  ".join(f"{m} {_ap(v)}" for m, (v, _) in self.best.items())
        elapsed = time.time() - self.t0
        self._print(
            f"[{self._count()}/{self.total}] {label}: {vals}   "
            f"({elapsed:.0f} s; best so far {best or 'n/a'})"
        )

    def _rung_end(self, trial: Any, result: dict[str, Any]) -> None:
        """A trial stopped at a rung by early stopping, or interrupted between rungs."""
        rung = stopped_at(self.study_dir, result)
        if rung is None:
            self._print(f"[stopped] {_fmt_params(trial.config)}: left to `ltsearch resume`")
            return
        self.done += 1
        vals = "  ".join(
            f"{o.metric} {_ap(result[o.metric])}"
            for o in self.objectives
            if isinstance(result.get(o.metric), (int, float))
        )
        self._print(
            f"[{self._count()}/{self.total}] {_fmt_params(trial.config)}: stopped early at "
            f"epoch {rung} ({vals})   ({time.time() - self.t0:.0f} s)"
        )

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.failed += 1
        self._print(
            f"[{self._count()}/{self.total}] {_fmt_params(trial.config)}: FAILED "
            f"{(trial.last_result or {}).get(ERROR_KEY, '')} (error recorded in "
            f"{self.study_dir}/trials)"
        )

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        n = trial.run_metadata.num_failures
        self._print(
            f"[retry {n}] {_fmt_params(trial.config)}: its process died; starting it again "
            "(stored seeds are read back, the seed in flight resumes from its checkpoint)"
        )


PLAIN_EVERY = 10.0  # seconds between two plain progress lines at most once


@contextlib.contextmanager
def live_progress(study_dir: Path, *, enabled: bool = True) -> Iterator[None]:
    """Show the live view of the study while the block runs: redrawn each second below the
    trial lines when stdout is a terminal, else one timestamped line when it has changed
    (at most every :data:`PLAIN_EVERY` seconds)."""
    from ltsearch.live.state import snapshot
    from ltsearch.live.terminal import LiveBlock, is_terminal
    from ltsearch.live.view import plain_line, render

    if not enabled:
        yield
    elif is_terminal():
        with LiveBlock(lambda: render(snapshot(study_dir)), interval=2.0):
            yield
    else:
        with _plain_lines(study_dir, snapshot, plain_line):
            yield


@contextlib.contextmanager
def _plain_lines(study_dir: Path, snapshot: Any, line: Any) -> Iterator[None]:
    stop = threading.Event()

    def loop() -> None:
        last_key, last_at = None, 0.0
        while not stop.wait(2.0):
            try:
                snap = snapshot(study_dir)
            except Exception:  # read while files change: the next second reads again
                continue
            key = (snap.progress, tuple(snap.running))
            if key != last_key and time.monotonic() - last_at >= PLAIN_EVERY:
                print(line(snap), flush=True)
                last_key, last_at = key, time.monotonic()

    thread = threading.Thread(target=loop, name="plain-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)
