"""Runs another study already finished: a (configuration, seed) is not trained twice in one
storage.

Ablation tables share rows: C2AM's Tables 3, 4 and 5 each hold its default (s 30, alpha
0.5), LOCE's four tables their full EBL + MFS, ROG's Tables 1 and 4 sigmoid CE + GAP. On
LVIS each such run is GPU-days. A study's configuration hash
(:func:`ltsearch.spec.hashing.config_hash`) covers everything that decides a run's result
but the seed (loss and parameters, training, model, dataset), so two studies in one
storage with the same hash and seed ask for the same run. Before a seed trains,
:func:`find_finished` looks for it in the storage's other studies; a run is taken only when
it was computed the same way, i.e. when all of these are equal:

- the row: status ``ok``, ``device``, ``workers``, ``git_commit`` and ``versions`` (the
  code and the packages that computed it: a change of either may change the numbers);
- the other study's ``resources``: ``cpus_per_worker`` and ``gpus_per_worker`` (the
  thread count changes float summation order);
- neither study stops runs early (``search.early_stopping``: a rung's row is not a run).

The run's parquet parts (trial row, epochs, per-category AP) are copied into this study, the
row naming where it came from (``reused_from``) and this study's trial. Its ``time_*_s``
columns are the original run's, the cost of that result, which a study's summed run time
leaves out (:func:`ltsearch.report.sections.wall_time`); ``started_at`` / ``finished_at``
are the copy's, within this study's span. ``search.reuse: false`` trains every run anew.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ltsearch.errors import StoreError
from ltsearch.spec.io import parse_yaml
from ltsearch.spec.study import StudySpec
from ltsearch.store import ResultStore

SAME_ROW = ("device", "workers", "git_commit", "versions")
SAME_RESOURCES = ("cpus_per_worker", "gpus_per_worker")


@dataclass(frozen=True)
class FinishedRun:
    """A run of another study: its study directory and its three parts' rows."""

    study_dir: Path
    row: dict[str, Any]
    epochs: list[dict[str, Any]]
    categories: list[dict[str, Any]]


def _recorded(study_dir: Path) -> dict[str, Any] | None:
    """A study directory's ``spec.yaml`` as a mapping (None: unreadable)."""
    try:
        raw = parse_yaml((study_dir / "spec.yaml").read_text(), str(study_dir / "spec.yaml"))
    except Exception:  # another study's damaged file is not this study's problem
        return None
    return raw if isinstance(raw, dict) else None


def _computed_alike(raw: dict[str, Any], spec: StudySpec) -> bool:
    """The other study ran its seeds to the end on the threads and GPUs this one would."""
    search, theirs = raw.get("search"), raw.get("resources")
    if isinstance(search, dict) and search.get("early_stopping") is not None:
        return False
    theirs = theirs if isinstance(theirs, dict) else {}
    ours = spec.resources.model_dump()
    defaults = type(spec.resources)().model_dump()
    return all(theirs.get(k, defaults[k]) == ours[k] for k in SAME_RESOURCES)


def find_finished(spec: StudySpec, study_dir: Path, row: Mapping[str, Any]) -> FinishedRun | None:
    """The run of ``row`` (this study's row as known before the run:
    ``ltsearch.run.records.base_row``) as another study of the same storage finished it
    the same way (see the module doc); ``None`` when there is none or reuse is off."""
    if not spec.search.reuse or spec.search.early_stopping is not None:
        return None
    chash, seed = str(row["config_hash"]), int(row["seed"])
    want = {k: row[k] for k in SAME_ROW}
    own = study_dir.resolve()
    for other in sorted(p for p in own.parent.iterdir() if p.is_dir() and p.resolve() != own):
        store = ResultStore(other)
        if not (other / "spec.yaml").is_file():
            continue
        try:
            rows = store.run_rows("trials", chash, seed)
        except StoreError:  # a damaged part there: that study's own commands say so
            continue
        if not rows or rows[0].get("status") != "ok":
            continue
        row = rows[0]
        if any(row.get(k) != want[k] for k in SAME_ROW):
            continue
        raw = _recorded(other)
        if raw is None or not _computed_alike(raw, spec):
            continue
        try:
            epochs = store.run_rows("epochs", chash, seed)
            categories = store.run_rows("categories", chash, seed)
        except StoreError:
            continue
        return FinishedRun(other, row, epochs, categories)
    return None


def copy_finished(found: FinishedRun, store: ResultStore, row: dict[str, Any]) -> dict[str, float]:
    """Write ``found``'s parts into ``store`` as this study's run (``row``: this study's
    columns known before the run: study, trial ids, parameters); returns its metrics."""
    chash, seed = str(row["config_hash"]), int(row["seed"])
    strip = ("trial_id", "seed")
    store.write_epochs(chash, seed, [{k: v for k, v in r.items() if k not in strip}
                                     for r in found.epochs])  # fmt: skip
    store.write_categories(chash, seed, [{k: v for k, v in r.items() if k not in strip}
                                         for r in found.categories])  # fmt: skip
    source = found.row.get("reused_from") or found.study_dir.name  # where it was trained
    keep = {k: v for k, v in found.row.items() if k not in row or k.startswith("time_")}
    merged = {**row, **keep, "reused_from": source}
    for k in ("status", "error", "git_commit", "versions", "host", "pid"):
        if k in found.row:
            merged[k] = found.row[k]
    merged["finished_at"] = datetime.now(timezone.utc).isoformat()  # this study's span
    store.write_trial(merged)  # last: its presence means the seed is complete
    print(f"{row['loss']} {chash} seed {seed}: reused the run of study {source} (same "
          "configuration, seed, code and resources)", flush=True)  # fmt: skip
    return {k: float(v) for k, v in found.row.items()
            if k.startswith(("bbox/", "segm/")) and v is not None}  # fmt: skip


__all__ = ["FinishedRun", "copy_finished", "find_finished"]
