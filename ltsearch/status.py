"""``ltsearch status``: how far a study is, its failures and best so far, read from disk.

It reads ``spec.yaml``, the parquet trial parts (with pyarrow only) and the Optuna journal
(:mod:`ltsearch.journal`, without Optuna), and imports none of torch, Ray, Optuna,
matplotlib or pandas, so it answers in a fraction of a second, also while the study runs.

Progress is counted in trials, from the journal (the runner's source of truth), not in
configurations from parquet: TPE can suggest a configuration already stored, and that
trial finishes by reading its runs back, adding no row. A finished 24-trial study with one
such trial has 23 configurations and is complete.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ltsearch import journal
from ltsearch.rows import config_label, config_params, is_baseline, row_label, search_rows
from ltsearch.spec.sections import Objective
from ltsearch.store import ResultStore
from ltsearch.study_dir import JOURNAL_FILE, load_study_dir
from ltsearch.tracking import state as tracking

MAX_STATUS_FAILURES = 20


@dataclass(frozen=True)
class StudyProgress:
    """Trials of a study (from its journal) and runs (from its parquet parts).

    Attributes:
        study_dir: the study directory.
        trials_total: the spec's number of trials.
        trials_finished: journal trials complete, failed or pruned.
        trials_complete, trials_failed, trials_pruned, trials_running: journal trials by
            state (waiting ones, enqueued but not asked, are in none).
        configs_ok: distinct configurations with an ok (configuration, seed) row.
        rows_ok, rows_failed, rows_stopped: (configuration, seed) rows by status
            (stopped: by early stopping at a rung, ``search.early_stopping``).
        rows_reused: of the ok rows, those copied from another study of the storage
            (``reused_from``, :mod:`ltsearch.run.reuse`).
        journal: whether the study has an Optuna journal yet.
        baseline: the stage-1 row (``training.stage1.evaluate``): ``ok``, ``failed`` or
            ``pending``; None when the study asks for none. Not in the counts above.
    """

    study_dir: Path
    trials_total: int
    trials_finished: int = 0
    trials_complete: int = 0
    trials_failed: int = 0
    trials_pruned: int = 0
    trials_running: int = 0
    configs_ok: int = 0
    rows_ok: int = 0
    rows_failed: int = 0
    rows_stopped: int = 0
    rows_reused: int = 0
    journal: bool = True
    baseline: str | None = None

    @property
    def repeated(self) -> int:
        """Complete trials whose configuration was already stored (read back, no new row)."""
        return max(0, self.trials_complete - self.configs_ok)

    @property
    def complete(self) -> bool:
        """Every trial of the budget finished and none running."""
        return self.trials_finished >= self.trials_total and not self.trials_running

    def runs_line(self) -> str:
        """``runs (configuration x seed): 46 ok, 0 failed``: the parquet rows by status
        (``, 6 stopped early`` added when early stopping stopped some)."""
        text = f"runs (configuration x seed): {self.rows_ok} ok"
        text += f" ({self.rows_reused} reused from other studies)" if self.rows_reused else ""
        text += f", {self.rows_failed} failed"
        text += f", {self.rows_stopped} stopped early" if self.rows_stopped else ""
        return text + (f"; stage 1 only: {self.baseline}" if self.baseline else "")

    def line(self) -> str:
        """One line: ``24/24 trials, study complete; 1 repeated configuration read back``
        or ``17/24 trials, 2 running, 1 failed; not complete: `ltsearch resume DIR`
        continues``."""
        head = f"{self.trials_finished}/{self.trials_total} trials"
        if not self.journal:
            head += " (no optuna.journal yet)"
        counts = (
            (self.trials_running, "running"),
            (self.trials_failed, "failed"),
            (self.trials_pruned, "pruned"),
        )
        parts = [head, *(f"{n} {what}" for n, what in counts if n)]
        text = ", ".join(parts)
        if self.complete:
            text += ", study complete"
        if self.repeated:
            s = "" if self.repeated == 1 else "s"
            text += f"; {self.repeated} repeated configuration{s} read back"
        if not self.complete:
            text += f"; not complete: `ltsearch resume {self.study_dir}` continues"
        return text


def progress_from(
    study_dir: Path,
    name: str,
    n_trials: int,
    rows: Sequence[Mapping[str, Any]],
    *,
    stage1_row: bool = False,
) -> StudyProgress:
    """``rows``: every stored row; ``stage1_row``: the study asks for a stage-1 row."""
    path = study_dir / JOURNAL_FILE
    states = journal.trial_states(path, name)
    base = [r for r in rows if is_baseline(r)]
    rows = search_rows(rows)
    ok = [r for r in rows if r.get("status") == "ok"]
    return StudyProgress(
        study_dir=study_dir,
        trials_total=n_trials,
        trials_finished=sum(s in journal.FINISHED for s in states),
        trials_complete=states.count(journal.COMPLETE),
        trials_failed=states.count(journal.FAIL),
        trials_pruned=states.count(journal.PRUNED),
        trials_running=states.count(journal.RUNNING),
        configs_ok=len({r["config_hash"] for r in ok}),
        rows_ok=len(ok),
        rows_failed=sum(r.get("status") == "failed" for r in rows),
        rows_stopped=sum(r.get("status") == "stopped" for r in rows),
        rows_reused=sum(bool(r.get("reused_from")) for r in ok),
        journal=path.is_file(),
        baseline=str(base[-1]["status"]) if base else "pending" if stage1_row else None,
    )


def _absolute(study_dir: str | Path) -> Path:
    """``study_dir`` absolute and normalised (``../runs/x`` from any working directory)."""
    return Path(os.path.abspath(os.path.expanduser(study_dir)))


def study_progress(study_dir: str | Path) -> StudyProgress:
    """How far the study in ``study_dir`` is (see :class:`StudyProgress`).

    Raises:
        SpecError: ``study_dir`` is not a study directory (no readable ``spec.yaml``).
    """
    spec = load_study_dir(study_dir)
    root = _absolute(study_dir)
    rows = ResultStore(root).trial_rows()
    return progress_from(root, spec.name, spec.n_trials, rows, stage1_row=spec.training.stage1_row)


def ap_scale(rows: Sequence[Mapping[str, Any]]) -> float:
    """100 when stored metrics are lvis-api fractions, 1 when some value is already in %
    (the rule of :func:`ltsearch.report.tables.prepare_runs`)."""
    for r in rows:
        for k, v in r.items():
            if k.startswith(("bbox/", "segm/")) and isinstance(v, (int, float)) and v > 1.0:
                return 1.0
    return 100.0


def metric_value(row: Mapping[str, Any], metric: str) -> float | None:
    """The row's value of ``metric``; None when absent or undefined (lvis-api's -1)."""
    v = row.get(metric)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v) or v < 0:
        return None
    return float(v)


def _best_lines(ok: Sequence[Mapping[str, Any]], objectives: Sequence[Objective]) -> list[str]:
    by_config: dict[str, list[Mapping[str, Any]]] = {}
    for r in ok:
        by_config.setdefault(str(r["config_hash"]), []).append(r)
    scale = ap_scale(ok)
    out = []
    for o in objectives:
        means = {}
        for h in sorted(by_config):
            values = [v for r in by_config[h] if (v := metric_value(r, o.metric)) is not None]
            if values:
                means[h] = sum(values) / len(values) * scale
        if not means:
            out.append(f"    {o.metric} ({o.direction}): no value yet")
            continue
        pick = max if o.direction == "max" else min
        best = pick(means, key=means.__getitem__)  # ties: the first config hash
        first = by_config[best][0]
        label = config_label(str(first["loss"]), config_params(first, str(first["loss"])))
        out.append(
            f"    {o.metric} ({o.direction}): {means[best]:.2f}  {label} "
            f"[{best[:8]}, {len(by_config[best])} seed(s)]"
        )
    return out


def _failure_lines(failed: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = []
    order = sorted(failed, key=lambda r: (str(r["config_hash"]), r["seed"]))
    for r in order[:MAX_STATUS_FAILURES]:
        err = str(r.get("error") or "no error recorded").strip().splitlines() or [""]
        lines.append(
            f"    FAILED {str(r['config_hash'])[:8]} {row_label(r)} seed {r['seed']}: {err[0]}"
        )
    if len(failed) > MAX_STATUS_FAILURES:
        lines.append(f"    ... and {len(failed) - MAX_STATUS_FAILURES} more failed run(s)")
    return lines


def _driver_line(root: Path) -> str:
    from ltsearch.control import is_running, read_holder

    holder = read_holder(root)
    if is_running(root):
        return f"running ({holder.describe() if holder else 'holder unknown'})"
    if holder is None:
        return "none running"
    return f"none running (the last one: {holder.describe()})"


def status_text(study_dir: str | Path) -> str:
    """Progress of a study (trials from the journal: :class:`StudyProgress`), its
    configurations and runs from the parquet parts, failures (first line of each error)
    and the best configuration so far per objective.

    Raises:
        SpecError: ``study_dir`` is not a study directory (no readable ``spec.yaml``).
    """
    spec = load_study_dir(study_dir)
    root = _absolute(study_dir)
    every_row = ResultStore(root).trial_rows()
    progress = progress_from(
        root, spec.name, spec.n_trials, every_row, stage1_row=spec.training.stage1_row
    )
    rows = search_rows(every_row)
    lines = [f"study {spec.name} ({root})", f"  progress: {progress.line()}"]
    lines.append(f"  driver: {_driver_line(root)}")
    tracked = tracking.status_line(root, spec.tracking.mlflow if spec.tracking else None, rows)
    if tracked:
        lines.append(f"  {tracked}")  # mlflow: N runs logged, E errors (ltsearch.tracking)
    failed = _failure_lines([r for r in every_row if r.get("status") == "failed"])
    if not rows:
        return "\n".join([*lines, "  no (configuration, seed) run finished yet", *failed])
    ok = [r for r in rows if r.get("status") == "ok"]
    seeds = set(spec.search.seeds)
    have: dict[str, set[Any]] = {}
    for r in ok:
        have.setdefault(str(r["config_hash"]), set()).add(r["seed"])
    every = sum(s >= seeds for s in have.values())
    started = len({r["config_hash"] for r in rows})
    lines.append(
        f"  configurations: {progress.configs_ok} with an ok run, {every} of them with every "
        f"seed ({started} started)"
    )
    lines.append(f"  {progress.runs_line()}")
    lines += failed
    lines.append("  best so far (AP %, mean over a configuration's ok seeds):")
    lines += _best_lines(ok, spec.search.parsed_objectives)
    return "\n".join(lines)


def stop_study(study_dir: str | Path, *, wait: bool = True, timeout: float = 600) -> str:
    """``ltsearch stop``: ask the study's driver to stop; with ``wait``, until it has.

    Returns:
        The line to print.

    Raises:
        SpecError: not a study directory.
        TimeoutError: the driver still runs after ``timeout`` seconds.
    """
    from ltsearch.control import is_running, read_holder, request_stop

    root = Path(study_dir).resolve()
    spec = load_study_dir(root)
    if not is_running(root):
        return f"study {spec.name}: no driver is running it; nothing to stop"
    holder = read_holder(root)
    who = holder.describe() if holder else "its driver"
    request_stop(root)
    if not wait:
        return f"study {spec.name}: asked the driver ({who}) to stop"
    deadline = time.monotonic() + timeout
    while is_running(root):
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"the driver ({who}) still runs {timeout:.0f} s after the stop request; "
                f"stop it with kill -TERM {holder.pid if holder else '<pid>'} on its host"
            )
        time.sleep(0.25)
    return f"study {spec.name}: driver ({who}) stopped; `ltsearch resume {root}` continues"


__all__ = [
    "MAX_STATUS_FAILURES", "StudyProgress", "ap_scale", "metric_value", "progress_from",
    "status_text", "stop_study", "study_progress",
]  # fmt: skip
