"""Live progress of a running study: trials done / running / failed, an ETA from the
measured time per trial, the best front so far and what each running trial is doing
(loading data, stage 1 epoch k/n, building the feature cache, training, evaluating).
:mod:`ltsearch.live.view` shows it on the driver and in ``ltsearch status --watch``.

A trial's worker writes what it is doing to ``<study>/live/<trial>.json``
(:class:`PhaseFile`, fed by :mod:`ltmodels.engine.phases`), on whichever node it runs; the
rest is read from the study's journal and parquet rows (:mod:`ltsearch.status`), so the
driver and a watcher elsewhere see the same. Phase files are shown only while a driver
holds the study (a killed run's leftovers are ignored, and the next driver clears them).

Like ``status``, this imports none of torch, Ray, Optuna or pandas.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from ltsearch.control import is_running, read_holder
from ltsearch.rows import config_label, config_params, search_rows
from ltsearch.spec.sections import Objective
from ltsearch.status import StudyProgress, ap_scale, metric_value, progress_from
from ltsearch.store import ResultStore
from ltsearch.study_dir import load_study_dir

LIVE_DIR = "live"
PHASES = {
    "data": "loading data",
    "stage1_wait": "waiting for stage 1",
    "stage1": "stage 1",
    "cache": "building the feature cache",
    "train": "training",
    "cooldown": "annealing a copy for the rung",
    "eval": "evaluating",
    "full_eval": "evaluating (segm)",
}


class PhaseFile:
    """What one trial is doing, in ``<study>/live/<trial>.json`` (written atomically, on
    every change; removed by :meth:`close`)."""

    def __init__(self, study_dir: str | Path, trial: str, label: str, seeds: int) -> None:
        self.path = Path(study_dir) / LIVE_DIR / f"{trial}.json"
        self.state: dict[str, Any] = {
            "label": label, "seeds": seeds, "seed": None, "seed_index": 0,
            "phase": None, "step": None, "of": None, "pid": os.getpid(),
            "host": socket.gethostname(),
        }  # fmt: skip

    def seed(self, index: int, seed: int) -> None:
        """Run ``index`` (from 0) of the trial's seeds, ``seed``, starts."""
        self.state.update(seed=seed, seed_index=index, phase=None, step=None, of=None)
        self._write()

    def __call__(self, phase: Any) -> None:
        """A :class:`ltmodels.engine.phases.Phase` was reported."""
        self.state.update(phase=phase.name, step=phase.step, of=phase.of)
        self._write()

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({**self.state, "updated": time.time()}))
        os.replace(tmp, self.path)

    def close(self) -> None:
        self.path.unlink(missing_ok=True)

    def to_dict(self) -> dict[str, Any]:
        """What another process needs to go on writing this file (a DDP trial's rank 0)."""
        return {"path": str(self.path), "state": dict(self.state)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PhaseFile:
        path = Path(d["path"])
        state = d["state"]
        out = cls(path.parent.parent, path.stem, state["label"], state["seeds"])
        out.state.update(state, pid=os.getpid(), host=socket.gethostname())
        return out


_active: list[PhaseFile] = []


def activate(phase_file: PhaseFile | None) -> None:
    """Make ``phase_file`` the one this process's trial writes (None: no trial runs)."""
    _active[:] = [] if phase_file is None else [phase_file]


def active() -> PhaseFile | None:
    """The phase file of the trial this process runs, if any."""
    return _active[0] if _active else None


def clear_phase_files(study_dir: str | Path) -> None:
    """Remove the phase files a previous (killed) driver's trials left behind."""
    for path in (Path(study_dir) / LIVE_DIR).glob("*.json"):
        path.unlink(missing_ok=True)


@dataclass(frozen=True)
class Running:
    """A running trial as its phase file says."""

    label: str
    seed: int | None
    seed_index: int
    seeds: int
    phase: str | None
    step: int | None
    of: int | None

    def describe(self) -> str:
        seed = (
            "" if self.seed is None else f" seed {self.seed} ({self.seed_index + 1}/{self.seeds})"
        )
        what = PHASES.get(self.phase or "", self.phase or "starting")
        if self.of:
            what += f", epoch {self.step or 0}/{self.of}"
        return f"{self.label}{seed}: {what}"


@dataclass(frozen=True)
class Snapshot:
    """Everything the live display shows, read from the study directory at one moment."""

    name: str
    progress: StudyProgress
    objectives: Sequence[Objective]
    running: list[Running] = field(default_factory=list)
    front: list[tuple[str, list[float]]] = field(default_factory=list)
    eta_s: float | None = None
    elapsed_s: float | None = None
    driver: bool = False


def snapshot(study_dir: str | Path) -> Snapshot:
    """Read the study's progress, rows and phase files now.

    Raises:
        SpecError: not a study directory.
    """
    spec = load_study_dir(study_dir)
    root = Path(os.path.abspath(study_dir))
    every_row = ResultStore(root).trial_rows()
    progress = progress_from(
        root, spec.name, spec.n_trials, every_row, stage1_row=spec.training.stage1_row
    )
    rows = search_rows(every_row)  # the stage-1 row has no place on a front or in the ETA
    driver = is_running(root)
    objectives = spec.search.parsed_objectives
    concurrency = spec.resources.max_concurrent_trials
    return Snapshot(
        name=spec.name,
        progress=progress,
        objectives=objectives,
        running=read_phases(root) if driver else [],
        front=front_so_far([r for r in rows if r.get("status") == "ok"], objectives),
        eta_s=eta_seconds(rows, progress, len(spec.search.seeds), concurrency),
        elapsed_s=_elapsed(root) if driver else None,
        driver=driver,
    )


def read_phases(root: Path) -> list[Running]:
    out = []
    for path in sorted((root / LIVE_DIR).glob("*.json")):
        try:
            d = json.loads(path.read_text())
            out.append(Running(**{k: d.get(k) for k in Running.__dataclass_fields__}))
        except (OSError, ValueError, TypeError):
            continue  # removed or replaced while read: shown on the next redraw
    return out


def _elapsed(root: Path) -> float | None:
    holder = read_holder(root)
    if holder is None:
        return None
    try:
        return time.time() - datetime.fromisoformat(holder.started_at).timestamp()
    except (ValueError, TypeError):
        return None


def eta_seconds(
    rows: Sequence[Mapping[str, Any]], progress: StudyProgress, seeds: int, concurrency: int
) -> float | None:
    """Trials left x the median time of a finished trial (all its seeds) / concurrency;
    None before a trial has finished every seed."""
    per_config: dict[str, list[float]] = {}
    for r in rows:
        t = r.get("time_total_s")
        if isinstance(t, (int, float)):
            per_config.setdefault(str(r["config_hash"]), []).append(float(t))
    done = [sum(ts) for ts in per_config.values() if len(ts) >= seeds]
    if not done:
        return None
    left = max(0, progress.trials_total - progress.trials_finished)
    return left * statistics.median(done) / max(1, concurrency)


def front_so_far(
    ok: Sequence[Mapping[str, Any]], objectives: Sequence[Objective]
) -> list[tuple[str, list[float]]]:
    """The non-dominated configurations (seed means, AP in %) on the objectives, best first
    on the first objective."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for r in ok:
        groups.setdefault(str(r["config_hash"]), []).append(r)
    scale = ap_scale(ok)
    points = []
    for rs in groups.values():
        means = []
        for o in objectives:
            vals = [v for r in rs if (v := metric_value(r, o.metric)) is not None]
            means.append(sum(vals) / len(vals) * scale if vals else None)
        if None not in means:
            first = rs[0]
            label = config_label(str(first["loss"]), config_params(first, str(first["loss"])))
            points.append((label, [float(m) for m in means if m is not None]))
    signs = [1.0 if o.direction == "max" else -1.0 for o in objectives]

    def dominated(p: list[float]) -> bool:
        return any(
            all(s * a >= s * b for s, a, b in zip(signs, q, p, strict=True)) and q != p
            for _, q in points
        )

    front = [(lab, p) for lab, p in points if not dominated(p)]
    return sorted(front, key=lambda lp: -signs[0] * lp[1][0])


__all__ = [
    "LIVE_DIR", "PHASES", "PhaseFile", "Running", "Snapshot", "activate", "active",
    "clear_phase_files", "eta_seconds", "front_so_far", "read_phases", "snapshot",
]  # fmt: skip
