"""Segm numbers for the Pareto front of a box-only study (``training.stage2.segm_front``).

Feature-cache trials are evaluated on boxes: the whole-model pass that gives segm metrics
costs about ten times a cached trial's training (the mask head over every detection), so a
study pays it only where it matters. After the trials, the driver runs each front
configuration's seeds again through the trials' executor with ``full_eval``: a cached trial
is deterministic for its seed, so the re-run trains the same box predictor, and its row is
the stored row with the segm metrics added (``segm_front: true``; the part is replaced
atomically, so a kill leaves the old row). The largest difference between the re-run's box
metrics and the stored ones is kept as ``segm_bbox_drift``; a drift above 1e-6 is printed.

The front is the study's objectives' first non-dominated front over seed means (as in the
report). Rows that have segm metrics are never run again, so ``resume`` finishes the work
and a re-run of a finished study does nothing; a failed re-run leaves its row as it was
(box only) and prints one line.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from ltmodels.engine.atomic import disk_full
from ltmodels.losses.domains import DOMAINS
from ltsearch.report.tables import prepare_runs, summarize
from ltsearch.rows import config_label, config_params, is_baseline, present
from ltsearch.run.records import choice_hash, first_line, run_dir
from ltsearch.run.trainable import StudyContext, trial_config
from ltsearch.spec.study import StudySpec
from ltsearch.store import ResultStore

FLAG, DRIFT = "segm_front", "segm_bbox_drift"
DRIFT_TOL = 1e-6


def wants_segm_front(spec: StudySpec) -> bool:
    stage2 = spec.training.stage2
    return stage2 is not None and stage2.segm_front


def front_rows(spec: StudySpec, study_dir: Any) -> list[dict[str, Any]]:
    """The ok rows of the front's configurations that have no segm metrics yet."""
    if not wants_segm_front(spec):
        return []
    store = ResultStore(study_dir)
    df = store.load_trials()
    if df.empty:
        return []
    runs, _ = prepare_runs(df)
    configs = summarize(runs, spec.search.parsed_objectives, []).configs
    if configs.empty:
        return []
    front = set(configs.loc[configs["front"], "config_hash"])
    rows = [
        dict(r)
        for r in store.trial_rows()
        if r.get("config_hash") in front and r.get("status") == "ok" and not is_baseline(r)
    ]
    return sorted(
        (r for r in rows if not present(r.get("segm/AP"))),
        key=lambda r: (str(r["config_hash"]), int(r["seed"])),
    )


def _choice(row: Mapping[str, Any]) -> dict[str, Any]:
    """The trial's choice from its row; parquet may widen an int parameter to a float."""
    loss = str(row["loss"])
    params = {}
    for key, value in config_params(row, loss).items():
        default = DOMAINS[loss][key].default if key in DOMAINS[loss] else None
        if (
            isinstance(default, int)
            and not isinstance(default, bool)
            and float(value).is_integer()
        ):
            value = int(value)
        params[key] = value
    return {"loss": loss, "loss_params": params}


def evaluate_front(
    ctx: StudyContext,
    spec: StudySpec,
    execute: Callable[..., Any],
    stopper: Any,
    *,
    say: Callable[[str], None],
) -> None:
    """The driver's step after the trials (nothing when the study was stopped): each
    pending front row run again with ``full_eval``, its segm metrics written into it."""
    if stopper.request_ is not None:
        return
    store = ResultStore(ctx.study_dir)
    for row in front_rows(spec, ctx.study_dir):
        choice, seed = _choice(row), int(row["seed"])
        label = f"{config_label(choice['loss'], choice['loss_params'])} seed {seed}"
        if choice_hash(choice, spec) != row["config_hash"]:
            say(f"[segm] {label}: its row does not rebuild its configuration; left box-only")
            continue
        cfg = replace(trial_config(ctx, spec, choice, seed), full_eval=True)
        t0 = time.perf_counter()
        try:
            result = execute(
                cfg, workdir=run_dir(ctx, str(row["config_hash"]), seed), resources=spec.resources
            )
        except Exception as exc:
            full = disk_full(exc)
            if full:
                stopper.request(
                    "storage",
                    f"stopped: the storage is full ({full}); free space, then `ltsearch resume "
                    f"{ctx.study_dir}` (the front's segm evaluation goes on)",
                )
                return
            error = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=4)}"
            say(f"[segm] {label}: FAILED {first_line(error)} (its row stays box-only)")
            continue
        store.write_trial(_with_segm(row, result.metrics, time.perf_counter() - t0))
        say(_line(label, result.metrics, _drift(row, result.metrics)))


def _drift(row: Mapping[str, Any], metrics: Mapping[str, float]) -> float:
    pairs = [
        (row[m], v) for m, v in metrics.items() if m.startswith("bbox/") and present(row.get(m))
    ]
    return max((abs(float(a) - float(b)) for a, b in pairs), default=0.0)


def _with_segm(row: Mapping[str, Any], metrics: Mapping[str, float], seconds: float) -> dict:
    out = dict(row)
    out.update({m: v for m, v in metrics.items() if m.startswith("segm/")})
    out.update({FLAG: True, DRIFT: _drift(row, metrics), "time_segm_front_s": seconds})
    return out


def _line(label: str, metrics: Mapping[str, float], drift: float) -> str:
    shown = ", ".join(
        f"{m} {100 * metrics[m]:.1f}" for m in ("segm/AP", "segm/APr", "segm/APf") if m in metrics
    )
    note = (
        f"; its box metrics differ from the stored ones by {drift:.2g}"
        if drift > DRIFT_TOL
        else ""
    )
    return f"[segm] {label}: {shown}{note}"


__all__ = ["evaluate_front", "front_rows", "wants_segm_front"]
