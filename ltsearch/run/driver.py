"""Run a study: Ray Tune + OptunaSearch over the spec's space, each trial a seed loop.

A study directory (``<storage>/<name>``) holds:

- ``spec.yaml``: the resolved study spec (``ltsearch resume DIR`` reads it back);
- ``optuna.journal``: the Optuna study (a journal file: optuna-dashboard opens it);
- ``tune/``: Ray Tune's experiment state of each driver run (logs; not used to resume);
- ``trials/``, ``epochs/``, ``categories/``: parquet parts (:mod:`ltsearch.store`);
- ``runs/<config>-s<seed>/``: per-run checkpoints.

Resuming (``ltsearch resume DIR``, or ``ltsearch run`` of the same study again) does not
use ``Tuner.restore``: Tune saves its experiment state at most every 10 s, so after a
``kill -9`` of the driver it can be several trials behind, and a restored run then samples
new configurations on top of ones already finished (a 5-trial study ended with 6
configurations). The Optuna journal, written at every ask and tell, is the source of
truth instead. A resumed run (:func:`ltsearch.run.search.plan_study`):

- counts the journal's finished trials (complete, failed, pruned) against ``trials``;
- adopts every trial still ``RUNNING`` there (the killed driver's trials in flight): a new
  Tune trial re-suggests it, which returns the parameters it already had, and reports to it;
- leaves enqueued starting points still waiting to be asked, and enqueues only the ones
  that are in no trial of the journal, so no starting point is enqueued twice;
- reseeds the sampler with the journal's trial count, so it does not replay the draws
  the killed run already made.

A (configuration, seed) already in parquet with status ok is read back, never re-run
(:func:`ltsearch.run.trainable.run_seed`), and its part file is named by configuration and
seed, so each (configuration, seed) is stored exactly once. A driver holds an exclusive
lock on ``.driver.lock`` while it runs (released by the OS when it dies, ``kill -9``
included), so two drivers never adopt each other's trials (:mod:`ltsearch.control`, which
also carries ``ltsearch stop``).

A trial whose process or node dies (SIGKILL, the OOM killer, a lost node) is started again
by Ray Tune, up to ``search.max_retries`` times; it reads back the seeds already stored and
resumes the one in flight from its last epoch checkpoint. An error raised by a run is
stored as a failed row once: a retry reads it back instead of running the seed again.
"""

from __future__ import annotations

import logging
import os
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from ltsearch.control import driver_lock
from ltsearch.errors import SpecError
from ltsearch.live.state import clear_phase_files
from ltsearch.run.baseline import baseline_pending, evaluate_stage1
from ltsearch.run.rebuild import reconcile_journal
from ltsearch.run.search import (
    StudyPlan,
    journal_storage,
    make_searcher,
    plan_study,
    repair_journal,
)
from ltsearch.run.segm_front import evaluate_front, front_rows
from ltsearch.run.trainable import (
    PackSetup,
    StudyContext,
    execute_trial,
    make_trial_fn,
    resolve_data,
    run_pack_here,
)
from ltsearch.spec.paths import require_absolute
from ltsearch.spec.study import StudySpec
from ltsearch.study_dir import SPEC_FILE, check_storage, load_study_dir
from ltsearch.tracking import Tracker, open_tracker
from ltsearch.tracking.spec_file import record_descriptive, same_study

TUNE_DIR = "tune"

if TYPE_CHECKING:
    from ltsearch.run.stopping import StopRequest


@dataclass
class StudyOutcome:
    """What a driver run did. ``stopped`` is ``None`` for a run that went to the end,
    ``"systematic"`` (the first trials failed alike) or ``"interrupted"`` (Ctrl-C or
    SIGTERM: resumable); ``message`` says why it stopped."""

    study_dir: Path
    finished: int  # trials complete, or pruned by early stopping (not failed)
    failed: int
    wall_s: float
    where: str
    total: int = 0  # configurations the study asks for
    stopped: str | None = None
    message: str = ""


def _spec_text(spec: StudySpec) -> str:
    return yaml.safe_dump(spec.to_dict(), sort_keys=False)


def _check_spec_dir(spec: StudySpec, study_dir: Path) -> None:
    """Raise if ``study_dir`` already holds a different study (writes nothing)."""
    path = study_dir / SPEC_FILE
    if path.exists() and not same_study(path.read_text(), _spec_text(spec)):
        raise SpecError(
            f"{study_dir} already holds a different study; run `ltsearch resume "
            f"{study_dir}` to continue it, or choose another --storage or name",
            file=str(path),
        )


def _write_spec(spec: StudySpec, study_dir: Path) -> None:
    _check_spec_dir(spec, study_dir)
    path = study_dir / SPEC_FILE
    if path.exists():
        return
    study_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(_spec_text(spec))
    os.replace(tmp, path)


def _drop_temporaries(study_dir: Path) -> None:
    """Remove the temporary files of parquet parts whose writer died (a killed driver's
    trials): readers never see them, and under the driver lock nobody still writes them."""
    from ltsearch.store import KINDS

    for kind in KINDS:
        for tmp in (study_dir / kind).glob(".*.tmp"):
            tmp.unlink(missing_ok=True)


def _resources(spec: StudySpec, pack: int = 1) -> dict[str, float]:
    r = spec.resources
    if r.workers == 1 and r.gpus_per_worker == 0:
        return {"cpu": r.cpus_per_worker / pack}  # K packed trials share a slot
    return {"cpu": 0.5}  # the trial only drives its TorchTrainer, which asks for the workers


def run_study(
    spec: StudySpec,
    *,
    address: str | None = None,
    resume: bool = False,
    progress: bool = True,
    execute: Callable[..., Any] = execute_trial,
    rule: Callable[..., bool] | None = None,
    execute_pack: Callable[[Any], list[Any]] | None = None,
) -> StudyOutcome:
    """Run (or continue) a study to completion; returns where its results are.

    ``execute`` runs one (configuration, seed) (:func:`ltsearch.run.trainable.execute_trial`;
    the framework-overhead benchmark passes a no-op); ``execute_pack`` runs a pack of them
    (:mod:`ltsearch.run.packing`; default :func:`~ltsearch.run.trainable.run_pack_here`
    with the default ``execute``, else no packing). ``rule``: the promotion rule of
    ``search.early_stopping`` (:data:`ltsearch.run.rung_scheduler.Rule`; default MO-ASHA,
    the early-stopping benchmark passes single-objective ASHA).

    Every user error (a different study in the directory, missing dataset files, a second
    driver, an unreachable cluster) is raised before anything is written or Ray starts.
    """
    require_absolute(spec)
    study_dir = spec.study_dir
    check_storage(spec.storage)
    if not resume:
        _check_spec_dir(spec, study_dir)
    tracker = open_tracker(spec)  # MLflow, when the study tracks (ltsearch.tracking)
    data = resolve_data(spec)
    t0 = time.perf_counter()
    if not resume:
        _write_spec(spec, study_dir)
    with driver_lock(study_dir):
        repair_journal(study_dir)
        _drop_temporaries(study_dir)
        clear_phase_files(study_dir)
        reconcile_journal(spec, study_dir)  # damaged parts: one line; lost journal: rebuilt
        record_descriptive(spec, study_dir)  # this run's tracking and wording into spec.yaml
        storage = journal_storage(study_dir)
        plan = plan_study(spec, storage)
        if tracker is not None:
            tracker.start()
        where, stop = "nothing to run", None
        pending = baseline_pending(spec, study_dir) or front_rows(spec, study_dir)
        if plan.to_run or pending:  # training.stage1.evaluate, training.stage2.segm_front
            ctx = StudyContext(spec=spec.to_dict(), study_dir=str(study_dir), data=data)
            where, stop = _fit(
                spec, ctx, storage, plan, address=address, progress=progress, execute=execute,
                tracker=tracker, rule=rule, execute_pack=execute_pack,
            )  # fmt: skip
        elif progress:
            print(f"study {spec.name}: all {spec.n_trials} configurations done ({study_dir})")
        final = plan_study(spec, storage)
        if tracker is not None:
            tracker.finish(None if stop is None else stop.reason)
    return StudyOutcome(
        study_dir,
        final.finished - final.failed,
        final.failed,
        time.perf_counter() - t0,
        where,
        total=spec.n_trials,
        stopped=None if stop is None else stop.reason,
        message="" if stop is None else stop.message,
    )


def _fit(
    spec: StudySpec,
    ctx: StudyContext,
    storage: Any,
    plan: StudyPlan,
    *,
    address: str | None,
    progress: bool,
    execute: Callable[..., Any],
    tracker: Tracker | None = None,
    rule: Callable[..., bool] | None = None,
    execute_pack: Callable[[Any], list[Any]] | None = None,
) -> tuple[str, StopRequest | None]:
    """Run the Tuner; returns where it ran and why it stopped early (None: it did not)."""
    from ray import tune

    from ltsearch.run import cluster, packing
    from ltsearch.run.progress import ProgressPrinter, live_progress
    from ltsearch.run.rung_scheduler import make_scheduler
    from ltsearch.run.stopping import FailFast, Interrupts, StudyStopper
    from ltsearch.run.tracking import tracking_callbacks

    study_dir = Path(ctx.study_dir)
    # Ctrl-C is ours (Interrupts), not Tune's: Tune's handler ends fit() as if it finished
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    # a failed trial is one progress line; its traceback is in parquet and its error.txt
    os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")
    # a trial whose run failed reports the error instead of its metrics (trainable.py)
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    sigterm = signal.getsignal(signal.SIGTERM)  # ray.init replaces it; put it back after
    try:
        local = not (address or os.environ.get("RAY_ADDRESS"))
        size = _pack_size(spec, local, execute, execute_pack) if local else 1
        where = cluster.connect(address, cpus_needed=_cpus_needed(spec, size))
        if not local:  # the cluster's CPUs decide an automatic pack size
            size = _pack_size(spec, local, execute, execute_pack)
    except SystemExit as exc:  # ray.init's SIGTERM handler exits with the signal number
        if exc.code == signal.SIGTERM:
            raise KeyboardInterrupt from None
        raise
    signal.signal(signal.SIGTERM, sigterm)
    stopper = StudyStopper(study_dir)
    held: list[Any] = []  # the pack broker's handle: Ray ends an actor nobody holds
    try:
        printer = ProgressPrinter(spec, study_dir, enabled=progress, done_before=plan.finished)
        printer.header(where)
        if size > 1:
            name = f"ltsearch-pack-{os.getpid()}-{uuid.uuid4().hex[:6]}"
            held.append(
                packing.start_broker(name, size, spec.resources.max_concurrent_trials, plan.to_run)
            )
            ctx = replace(ctx, pack=PackSetup(name, size))
            printer.say(
                f"packs of up to {size} runs: each pass over the feature cache trains up to "
                f"{size} (configuration, seed) runs (resources.pack: {spec.resources.pack})"
            )
        fail_fast = FailFast(stopper, study_dir, spec.search.max_failures)
        runner = execute_pack or run_pack_here
        tuner = tune.Tuner(
            tune.with_resources(make_trial_fn(ctx, execute, runner), _resources(spec, size)),
            tune_config=tune.TuneConfig(
                search_alg=make_searcher(spec, storage, plan),
                scheduler=make_scheduler(spec, study_dir, rule),  # None: FIFO, no early stops
                num_samples=plan.to_run,
                reuse_actors=True,
            ),
            run_config=tune.RunConfig(
                name=TUNE_DIR,
                storage_path=str(study_dir),
                verbose=0,
                stop=stopper,
                callbacks=[printer, fail_fast, *tracking_callbacks(tracker)],
                failure_config=tune.FailureConfig(
                    max_failures=spec.search.max_retries, fail_fast=False
                ),
            ),
        )
        with Interrupts(stopper), live_progress(study_dir, enabled=progress):
            # training.stage1.evaluate: the stage-1 row first (ltsearch.run.baseline says why)
            evaluate_stage1(ctx, spec, execute, stopper, say=printer.say)
            if plan.to_run and stopper.request_ is None:
                tuner.fit()  # (Interrupts after connect: ray.init sets its own SIGTERM)
            # training.stage2.segm_front: the front's runs again with segm (segm_front.py)
            evaluate_front(ctx, spec, execute, stopper, say=printer.say)
    finally:
        held.clear()
        cluster.shutdown()
        signal.signal(signal.SIGTERM, sigterm)
    return where, stopper.request_


class _TuneStateNote(logging.Filter):
    """Ray Tune's own experiment state is not what a study resumes from (the Optuna journal
    and the parquet rows are). Saving it can race with the searcher's state file when trials
    are stopped (a temporary file renamed while Tune copies the folder); Tune then logs an
    ERROR with a traceback. That becomes one warning line, so a clean stop looks clean."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.levelno >= logging.ERROR:
            exc = record.exc_info[1]
            record.msg = (
                "Ray Tune could not save its own experiment state "
                f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                "not needed: a study resumes from its journal and parquet rows"
            )
            record.args, record.exc_info, record.exc_text = (), None, None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


logging.getLogger("ray.tune.execution.experiment_state").addFilter(_TuneStateNote())


def _cpus_needed(spec: StudySpec, pack: int = 1) -> float:
    r = spec.resources
    per_trial = r.workers * r.cpus_per_worker + (0.5 if r.workers > 1 else 0)
    return per_trial * r.max_concurrent_trials / pack


def _pack_size(
    spec: StudySpec,
    local: bool,
    execute: Callable[..., Any],
    execute_pack: Callable[[Any], list[Any]] | None,
) -> int:
    """K (:func:`ltsearch.run.packing.pack_size`) on this node's CPUs (a local Ray) or the
    cluster's (Ray initialised); 1 when ``execute`` is replaced without ``execute_pack``."""
    from ltsearch.run.packing import pack_size

    if execute is not execute_trial and execute_pack is None:
        return 1
    if local:
        from ltmodels.engine.threads import node_cpus

        return pack_size(spec, node_cpus())
    import ray

    return pack_size(spec, float(ray.cluster_resources().get("CPU", 1.0)))


def resume_study(
    study_dir: str | Path, *, address: str | None = None, mlflow: str | None = None
) -> StudyOutcome:
    """Continue a study after a crash or ``kill -9`` of its driver (``mlflow``: log to this
    MLflow URI instead of the study's own, ``--mlflow``)."""
    root = Path(study_dir).resolve()
    spec = load_study_dir(root)
    if spec.name != root.name:
        raise SpecError(
            f"the directory is named {root.name!r} but holds study {spec.name!r}; rename it "
            f"back to {spec.name!r} (results live in <storage>/<name>)",
            file=str(root),
        )
    spec = spec.with_overrides(storage=root.parent, mlflow=mlflow)
    return run_study(spec, address=address, resume=True)


__all__ = ["StudyOutcome", "resume_study", "run_study"]
