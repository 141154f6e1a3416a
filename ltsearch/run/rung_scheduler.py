"""The Ray Tune scheduler of early stopping: MO-ASHA decisions at each rung, made durable.

A trial with ``search.early_stopping`` reports once per rung (:mod:`ltsearch.run.rungs`).
:class:`RungScheduler` decides on that report, by :func:`ltsearch.run.moasha.promote` over
the configurations recorded at that rung so far (asynchronous: nothing waits for a rung to
fill), and makes the decision durable *before* Tune acts on it:

1. the decision is appended to ``rungs.jsonl`` (fsync'ed);
2. a stop also writes the trial's rows: one per seed, status ``stopped``, with the rung
   reached (``rung_epoch``) and the rung's metrics, and its per-epoch history;
3. then it returns ``STOP`` (Tune ends the trial; the searcher tells Optuna it is PRUNED,
   :mod:`ltsearch.run.search`) or ``CONTINUE``.

Decisions are keyed by configuration hash and read back from ``rungs.jsonl`` when a driver
starts, so a resumed study decides as the killed one did: a configuration reaching a rung
already decided gets the same answer again (its stopped rows are not written twice), and
new arrivals are compared with every configuration recorded at the rung before the kill.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from ltsearch.run.moasha import promote
from ltsearch.run.trainable import ERROR_KEY
from ltsearch.rung_log import (
    CONFIG_KEY,
    CONTINUE,
    RUNG_KEY,
    RUNS_KEY,
    STOP,
    STOPPED,
    RungRecord,
    append_log,
    read_log,
)
from ltsearch.spec.study import StudySpec
from ltsearch.store import ResultStore

Rule = Callable[[Any, int, list[float], list[list[float]]], bool]
"""``rule(trial, rung, values, recorded) -> goes on``: ``values`` are the trial's objectives
at ``rung``, ``recorded`` those of the configurations decided at that rung before."""


def pareto_rule(spec: StudySpec) -> Rule:
    """MO-ASHA: :func:`~ltsearch.run.moasha.promote` on the study's objectives, with the
    study's reduction and promotion rule."""
    assert spec.search.early_stopping is not None
    early = spec.search.early_stopping
    directions = [o.direction for o in spec.search.parsed_objectives]

    def rule(trial: Any, rung: int, values: list[float], recorded: list[list[float]]) -> bool:
        return promote(recorded, values, early.reduction, directions, early.promotion)

    return rule


def _value(result: dict[str, Any], metric: str) -> float:
    """An objective of a rung result; NaN when missing or undefined (lvis-api's -1)."""
    v = result.get(metric)
    if not isinstance(v, (int, float)) or math.isnan(v) or v < 0:
        return float("nan")
    return float(v)


class RungScheduler(FIFOScheduler):
    """Asynchronous successive halving on the rung reports of :mod:`ltsearch.run.rungs`;
    every other result (a trial's final one, an error) passes through."""

    def __init__(self, spec: StudySpec, study_dir: Path, rule: Rule | None = None) -> None:
        super().__init__()
        self.study_dir = Path(study_dir)
        self.metrics = spec.search.metric_names
        self.rule = rule or pareto_rule(spec)
        self.recorded: dict[int, dict[str, list[float]]] = {}  # rung -> config -> values
        self.decided: dict[tuple[str, int], str] = {}
        for record in read_log(self.study_dir):
            self._remember(record)

    def _remember(self, record: RungRecord) -> None:
        self.recorded.setdefault(record.rung, {})[record.config_hash] = record.values
        self.decided[(record.config_hash, record.rung)] = record.decision

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        return True  # the objectives come from the study spec

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        if result.get(RUNG_KEY) is None or ERROR_KEY in result:
            return TrialScheduler.CONTINUE
        chash, rung = str(result[CONFIG_KEY]), int(result[RUNG_KEY])
        decision = self.decided.get((chash, rung))
        if decision is None:
            values = [_value(result, m) for m in self.metrics]
            recorded = [v for h, v in self.recorded.get(rung, {}).items() if h != chash]
            decision = CONTINUE if self.rule(trial, rung, values, recorded) else STOP
            record = RungRecord(
                config_hash=chash,
                rung=rung,
                values=values,
                decision=decision,
                label=_label(trial),
                at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            )
            append_log(self.study_dir, record)  # durable before Tune acts on it
            self._remember(record)
        if decision == STOP:
            self._write_stopped(json.loads(result[RUNS_KEY]))
            return TrialScheduler.STOP
        return TrialScheduler.CONTINUE

    def _write_stopped(self, runs: list[dict[str, Any]]) -> None:
        """Each seed's stopped row and epoch history, unless already stored."""
        store = ResultStore(self.study_dir)
        for run in runs:
            row = run["row"]
            chash, seed = str(row["config_hash"]), int(row["seed"])
            have = store.run_rows("trials", chash, seed)
            if have and have[-1].get("status") == STOPPED:
                continue  # stopped there before the driver was killed: kept as it is
            store.write_epochs(chash, seed, run["epochs"])
            store.write_trial(row)

    def debug_string(self) -> str:
        stops = sum(d == STOP for d in self.decided.values())
        return f"RungScheduler: {len(self.decided)} rung decisions, {stops} stops"


def _label(trial: Any) -> str:
    from ltsearch.rows import config_label
    from ltsearch.space import params_to_config

    try:
        choice = params_to_config(getattr(trial, "config", None) or {})
    except (KeyError, ValueError):
        return ""
    return config_label(choice["loss"], choice["loss_params"])


def make_scheduler(spec: StudySpec, study_dir: Path, rule: Rule | None = None) -> Any:
    """The study's Tune scheduler: :class:`RungScheduler` with ``search.early_stopping``;
    ``None`` (Tune's default FIFO: every trial runs to its end) without it."""
    if spec.search.early_stopping is None:
        return None
    return RungScheduler(spec, study_dir, rule)


__all__ = ["RungScheduler", "Rule", "make_scheduler", "pareto_rule"]
