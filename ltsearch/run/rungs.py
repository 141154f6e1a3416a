"""Early stopping, the trial's side: climbing the rungs, and the log of rung decisions.

With ``search.early_stopping`` (:mod:`ltsearch.spec.early_stopping`) a trial does not train
each seed to the end in one go. For each decision rung ``r`` (the rungs before
``training.epochs``) it trains every seed in turn up to epoch ``r`` (each seed resuming from
its own checkpoint in ``runs/<config>-s<seed>/``: ``TrialConfig.stop_at_epoch``), evaluates
it there (the trial's bbox evaluation on the validation set; segm only when an objective is
a segm metric; of the weights' moving average with ``ema_half_life``, of a copy annealed
further with ``cooldown``), and reports the
mean over seeds to Tune with ``rung_epoch: r``. The scheduler
(:mod:`ltsearch.run.rung_scheduler`, on the driver) decides: a trial it stops never
returns from that report; one it lets go on climbs to the next rung, and after the last
one trains its seeds to the end as a trial without early stopping does.

Every decision is appended to ``<study>/rungs.jsonl`` (one JSON line per configuration and
rung, flushed and fsync'ed before Tune acts on it), keyed by configuration hash, so a
decision outlives the driver: a resumed trial (or a repeated suggestion of the same
configuration) skips the rungs it already passed and is stopped again at a rung where it
was stopped. A seed's evaluation at a rung is kept in its run directory
(``rung-<r>.json``), so resuming does not evaluate it again.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ltmodels.engine.atomic import write_atomic
from ltsearch.run import records as rec
from ltsearch.rung_log import (
    CONFIG_KEY,
    CONTINUE,
    RUNG_KEY,
    RUNS_KEY,
    STOPPED,
    decision_rungs,
    decisions,
)
from ltsearch.spec.study import StudySpec
from ltsearch.store import ResultStore

if TYPE_CHECKING:
    from ltsearch.run.trainable import StudyContext


def _rung_file(
    workdir: Path, rung: int, ema: float | None = None, cooldown: float | None = None
) -> Path:
    """A seed's evaluation at a rung (of the weight average or a cooled-down copy: the
    setting in the name, so that a study whose setting changed evaluates again)."""
    suffix = "" if ema is None else f"-ema{ema:g}"
    suffix += "" if cooldown is None else f"-cool{cooldown:g}"
    return workdir / f"rung-{rung}{suffix}.json"


def _earlier(workdir: Path, rung: int) -> dict[str, Any] | None:
    """This seed's evaluation at its latest rung before ``rung`` (None: none yet)."""
    found = {int(p.stem.split("-")[1]): p for p in workdir.glob("rung-*.json")}
    below = [r for r in found if r < rung]
    return json.loads(found[max(below)].read_text()) if below else None


def rung_run(
    ctx: StudyContext,
    spec: StudySpec,
    choice: Mapping[str, Any],
    seed: int,
    rung: int,
    *,
    tune_trial_id: str,
    execute: Callable[..., Any],
) -> dict[str, Any]:
    """Train one seed up to epoch ``rung`` and evaluate it (or read that evaluation back).

    Returns:
        ``{"row": ..., "epochs": [...]}``: the trial row this seed gets if the trial is
        stopped at this rung (status ``stopped``, ``rung_epoch``, the rung's metrics, the
        seed's time so far) and its per-epoch history.

    Raises:
        RecordedFailure: the seed is stored as failed.
        Exception: the run failed (its failed row is written, as for a whole run).
    """
    from ltsearch.run import trainable as tr

    store = ResultStore(ctx.study_dir)
    chash = rec.choice_hash(choice, spec)
    rec.stored_metrics(store, chash, seed)  # raises for a failed seed
    workdir = rec.run_dir(ctx, chash, seed)
    early = spec.search.early_stopping
    ema = None if early is None else early.ema_half_life
    cooldown = None if early is None else early.cooldown
    cached = _rung_file(workdir, rung, ema, cooldown)
    if cached.is_file():
        return json.loads(cached.read_text())
    cfg = tr.trial_config(ctx, spec, choice, seed)
    segm = any(m.startswith("segm/") for m in spec.search.metric_names)
    cfg = replace(
        cfg,
        stop_at_epoch=rung,
        rung_ema=ema,
        rung_cooldown=cooldown,
        eval_masks=cfg.eval_masks and segm,
    )
    before = _earlier(workdir, rung)
    row = rec.base_row(spec, choice, chash, seed, tune_trial_id, cfg.device)
    t0 = time.perf_counter()
    result = rec.execute_recorded(spec, store, row, t0, cfg, workdir, execute)
    spent = (before or {}).get("row", {}).get("time_total_s", 0.0)
    row.update(
        status=STOPPED,
        error=None,
        **{RUNG_KEY: rung},
        **result.metrics,
        started_at=(before or {}).get("row", {}).get("started_at", row["started_at"]),
        time_total_s=spent + time.perf_counter() - t0,
        finished_at=datetime.now(timezone.utc).isoformat(),
    )
    out = {"row": row, "epochs": result.epochs}
    text = json.dumps(out, default=str).encode()
    write_atomic(cached, lambda f: f.write(text))
    return out


def climb(
    ctx: StudyContext,
    spec: StudySpec,
    choice: Mapping[str, Any],
    *,
    tune_trial_id: str,
    execute: Callable[..., Any],
    report: Callable[[dict[str, Any]], None],
    on_seed: Callable[[int, int], None] = lambda i, s: None,
) -> None:
    """Take one configuration up its rungs; returns once it may train to the end.

    ``report`` is ``ray.tune.report``: when the scheduler stops the trial it does not
    return (Ray Tune ends the trial's thread there). A configuration with a seed already
    finished has passed every rung (it climbs no more).
    """
    from ltsearch.run import trainable as tr

    store = ResultStore(ctx.study_dir)
    chash = rec.choice_hash(choice, spec)
    seeds = spec.search.seeds
    if any(rec.stored_metrics(store, chash, s) is not None for s in seeds):
        return
    done = decisions(ctx.study_dir, chash)
    for rung in decision_rungs(spec):
        if done.get(rung) == CONTINUE:
            continue
        runs = []
        for i, seed in enumerate(seeds):
            on_seed(i, seed)
            runs.append(
                rung_run(
                    ctx, spec, choice, seed, rung, tune_trial_id=tune_trial_id, execute=execute
                )
            )
        means = tr.mean_metrics([_metrics(r["row"]) for r in runs])
        report(
            {**means, RUNG_KEY: rung, CONFIG_KEY: chash, RUNS_KEY: json.dumps(runs, default=str)}
        )


def _metrics(row: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in row.items() if k.startswith(("bbox/", "segm/"))}


__all__ = ["climb", "rung_run"]
