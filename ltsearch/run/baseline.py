"""The stage-1-only row of a decoupled study (``training.stage1.evaluate: true``).

Papers that re-balance in a second stage print the model before re-balancing as their
first row (ACSL Table 2's "baseline (1x)"). That model is the study's shared stage 1, so the
row is computed once per study, whatever the trials' hyperparameters: the driver runs it
before the search's trials (:func:`ltsearch.run.driver.run_study`), through the trials' own
executor (in-process for one CPU worker, Ray Train DDP otherwise) with the schedule
``stage1_only`` (:func:`ltmodels.trial.schedules.stage1_only`): the cached stage 1, trained
there if no trial has trained it yet, evaluated as is on the whole validation set (bbox, and
segm where the study's trials report segm).

Not a Tune trial: it has no point in the search space, so as a trial it would need a
searcher handing out a configuration Optuna never suggested, and it would count against
``search.trials``, in the journal and in fail-fast. Before the trials, not after: stage 1
then trains here, once, and every trial finds it cached.

Its row in ``trials/`` (:mod:`ltsearch.rows`): ``loss`` and ``baseline`` are ``stage1``,
``stage1_loss`` names stage 1's loss, ``config_hash`` and ``trial_id`` are
``stage1-<stage-1 hash>`` (no configuration hash looks like it, and the Optuna journal
rebuilt from parquet skips a loss the study does not search). A stored row, ok or failed,
is read back and never run again (a failed one stays failed, like a trial's seed: delete its
part to run it again), so a resumed study never duplicates it.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any

from ltmodels.engine.atomic import disk_full
from ltsearch.rows import BASELINE, STAGE1, baseline_label
from ltsearch.run.records import base_row, first_line, run_dir
from ltsearch.run.trainable import StudyContext, trial_config
from ltsearch.spec.hashing import stage1_hash
from ltsearch.spec.study import StudySpec
from ltsearch.store import ResultStore

DRIVER_ID = "driver"  # the row's tune_trial_id: no Tune trial ran it


def baseline_key(spec: StudySpec) -> str | None:
    """``stage1-<stage-1 hash>``, the row's key; None when the study asks for no such row."""
    stage1 = spec.training.stage1
    h = stage1_hash(spec)
    if stage1 is None or h is None or not stage1.evaluate:
        return None
    return f"{STAGE1}-{h}"


def stored_baseline(store: ResultStore, key: str) -> dict[str, Any] | None:
    """The stored stage-1 row (ok or failed); None before it is written."""
    rows = [r for r in store.trial_rows() if r.get("config_hash") == key]
    return rows[-1] if rows else None


def baseline_pending(spec: StudySpec, study_dir: Any) -> bool:
    """Whether the study asks for a stage-1 row that is not stored yet."""
    key = baseline_key(spec)
    return key is not None and stored_baseline(ResultStore(study_dir), key) is None


def baseline_config(ctx: StudyContext, spec: StudySpec) -> Any:
    """The ``TrialConfig`` of the stage-1 evaluation: a trial's, with schedule
    ``stage1_only``; segm only where the trials report it (whole-model trials, or
    feature-cache trials with ``full_eval``)."""
    stage1, stage2 = spec.training.stage1, spec.training.stage2
    assert stage1 is not None and stage2 is not None
    choice = {"loss": stage1.loss, "loss_params": dict(stage1.loss_params)}
    cfg = trial_config(ctx, spec, choice, seed=0)
    assert cfg.stage1 is not None
    segm = cfg.eval_masks and (not stage2.feature_cache or stage2.full_eval)
    return replace(
        cfg, schedule="stage1_only", train=cfg.stage1, seed=cfg.stage1.seed, eval_masks=segm,
        full_eval=False,
    )  # fmt: skip


def run_baseline(ctx: StudyContext, spec: StudySpec, execute: Callable[..., Any]) -> str | None:
    """Evaluate the stage-1 model and store its row, unless it is stored; returns the line
    to print (None when there was nothing to do).

    A run's error is stored as a failed row (the study goes on: its trials meet a broken
    stage 1 themselves). Raises what ``execute`` raises when the disk is full (no row:
    ``resume`` runs it again), and KeyboardInterrupt.
    """
    from ltmodels.engine import phases
    from ltsearch.live.state import PhaseFile, activate

    key = baseline_key(spec)
    store = ResultStore(ctx.study_dir)
    if key is None or stored_baseline(store, key) is not None:
        return None
    cfg = baseline_config(ctx, spec)
    label = baseline_label(cfg.stage1.loss)
    row = base_row(spec, {"loss": STAGE1, "loss_params": {}}, key, cfg.seed, DRIVER_ID,
                   cfg.device)  # fmt: skip
    row.update(
        {BASELINE: STAGE1, "stage1_loss": cfg.stage1.loss,
         "stage1_loss_params": dict(cfg.stage1.loss_params)}
    )  # fmt: skip
    live = PhaseFile(ctx.study_dir, key, label, 1)
    unlisten = phases.add_listener(live)
    activate(live)
    t0 = time.perf_counter()
    try:
        live.seed(0, cfg.seed)
        result = execute(cfg, workdir=run_dir(ctx, key, cfg.seed), resources=spec.resources)
    except Exception as exc:
        if disk_full(exc):
            raise
        error = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=8)}"
        row.update(status="failed", error=error)
        return _finish(store, row, t0, f"[baseline] {label}: FAILED {first_line(error)}")
    finally:
        unlisten()
        activate(None)
        live.close()
    row.update(
        status="ok",
        error=None,
        **result.metrics,
        **{f"time_{k}_s": v for k, v in result.timings.items()},
    )
    store.write_categories(key, cfg.seed, result.categories)
    shown = ", ".join(
        f"{m} {100 * v:.1f}" for m, v in result.metrics.items() if m.endswith("/AP") and v >= 0
    )
    return _finish(store, row, t0, f"[baseline] {label}: {shown or 'evaluated'}")


def evaluate_stage1(
    ctx: StudyContext,
    spec: StudySpec,
    execute: Callable[..., Any],
    stopper: Any,
    *,
    say: Callable[[str], None],
) -> None:
    """The driver's step before the trials: :func:`run_baseline`, its line given to
    ``say``; a full disk asks ``stopper`` (:class:`ltsearch.run.stopping.StudyStopper`) to
    stop the study, as a trial's full disk does."""
    try:
        line = run_baseline(ctx, spec, execute)
    except Exception as exc:
        full = disk_full(exc)
        if not full:
            raise
        stopper.request(
            "storage",
            f"stopped: the storage is full ({full}); free space, then `ltsearch resume "
            f"{ctx.study_dir}` (the runs it cut short run again)",
        )
        return
    if line:
        say(line)


def _finish(store: ResultStore, row: dict[str, Any], t0: float, line: str) -> str:
    row.update(
        time_total_s=time.perf_counter() - t0,
        finished_at=datetime.now(timezone.utc).isoformat(),
    )
    store.write_trial(row)  # last: its presence means the row is complete
    return line


__all__ = [
    "baseline_config", "baseline_key", "baseline_pending", "evaluate_stage1", "run_baseline",
    "stored_baseline",
]  # fmt: skip
