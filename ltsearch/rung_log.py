"""The log of early-stopping decisions, ``<study>/rungs.jsonl``: one JSON line per
configuration and rung, appended and fsync'ed before Ray Tune acts on the decision, read
back by a resumed driver (:mod:`ltsearch.run.rung_scheduler`), the trials
(:mod:`ltsearch.run.rungs`) and the report (:mod:`ltsearch.report.early`). No Ray here."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ltsearch.spec.study import StudySpec

RUNG_KEY = "rung_epoch"  # a rung result's epoch (also the column of a stopped row)
CONFIG_KEY = "config_hash"  # a rung result's configuration
RUNS_KEY = "ltsearch_rung_runs"  # JSON text: each seed's stopped row and epoch history
LOG_FILE = "rungs.jsonl"
CONTINUE, STOP = "continue", "stop"
STOPPED = "stopped"  # the status of a stopped run's row


@dataclass(frozen=True)
class RungRecord:
    """One decision: configuration ``config_hash`` reached epoch ``rung`` with these means
    over its seeds (``values``, the objectives in spec order; NaN when undefined)."""

    config_hash: str
    rung: int
    values: list[float]
    decision: str  # CONTINUE or STOP
    label: str = ""
    at: str = ""  # UTC time of the decision


def decision_rungs(spec: StudySpec) -> list[int]:
    """Epochs where a configuration may be stopped (empty without early stopping)."""
    early = spec.search.early_stopping
    return [] if early is None else early.decision_rungs(spec.training.epochs)


def read_log(study_dir: str | Path) -> list[RungRecord]:
    """Every decision in ``rungs.jsonl``, in order (a line cut short by a kill is skipped)."""
    path = Path(study_dir) / LOG_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    out = []
    for line in data.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            continue
        try:
            d = json.loads(line)
            values = [float("nan") if v is None else float(v) for v in d["values"]]
            out.append(RungRecord(**{**d, "values": values}))
        except (ValueError, KeyError, TypeError):
            continue
    return out


def append_log(study_dir: str | Path, record: RungRecord) -> None:
    """Append one decision durably (NaN written as null: the file stays strict JSON)."""
    d = asdict(record)
    d["values"] = [None if v != v else v for v in record.values]
    line = (json.dumps(d, sort_keys=True) + "\n").encode()
    path = Path(study_dir) / LOG_FILE
    with open(path, "ab") as f:
        if f.tell():  # a torn last line (a killed driver) must not swallow this one
            with open(path, "rb") as r:
                r.seek(-1, os.SEEK_END)
                if r.read(1) != b"\n":
                    f.write(b"\n")
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def decisions(study_dir: str | Path, chash: str) -> dict[int, str]:
    """``{rung: decision}`` of one configuration."""
    return {r.rung: r.decision for r in read_log(study_dir) if r.config_hash == chash}


def stopped_at(study_dir: str | Path, result: Mapping[str, Any]) -> int | None:
    """The rung where early stopping stopped the trial whose last result is ``result``;
    None when it was not stopped there (a trial that ends on a rung result without a stop
    decision was interrupted between two rungs)."""
    rung = result.get(RUNG_KEY)
    if rung is None or CONFIG_KEY not in result:
        return None
    stop = decisions(study_dir, str(result[CONFIG_KEY])).get(int(rung)) == STOP
    return int(rung) if stop else None


__all__ = [
    "CONFIG_KEY", "CONTINUE", "LOG_FILE", "RUNG_KEY", "RUNS_KEY", "STOP", "STOPPED",
    "RungRecord", "append_log", "decision_rungs", "decisions", "read_log", "stopped_at",
]  # fmt: skip
