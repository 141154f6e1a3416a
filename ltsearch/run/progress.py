"""The progress display of a running study: one line per finished trial, on the driver."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from ray.tune import Callback

from ltsearch.run.trainable import ERROR_KEY, STOP_KEY
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
