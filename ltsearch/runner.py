"""Run a study: Ray Tune + OptunaSearch over the spec's space, each trial a seed loop.

A study directory (``<storage>/<name>``) holds:

- ``spec.yaml``: the resolved study spec (``ltsearch resume DIR`` reads it back);
- ``optuna.journal``: the Optuna study (a journal file: optuna-dashboard opens it);
- ``tune/``: Ray Tune's experiment state (resume continues unfinished trials);
- ``trials/``, ``epochs/``, ``categories/``: parquet parts (:mod:`ltsearch.store`);
- ``runs/<config>-s<seed>/``: per-run checkpoints.

Exactly-once: a (configuration, seed) already in parquet is read back, never re-run, and a
starting point already in the Optuna journal is not enqueued again, so a driver killed
with ``kill -9`` and resumed ends with every trial once.
"""

from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ltsearch.errors import SpecError
from ltsearch.spec import StudySpec, load_spec
from ltsearch.trainable import StudyContext, make_trial_fn, resolve_data

SPEC_FILE = "spec.yaml"
JOURNAL_FILE = "optuna.journal"
TUNE_DIR = "tune"


@dataclass
class StudyOutcome:
    study_dir: Path
    finished: int
    failed: int
    wall_s: float
    where: str


def _write_spec(spec: StudySpec, study_dir: Path) -> None:
    path = study_dir / SPEC_FILE
    text = yaml.safe_dump(spec.to_dict(), sort_keys=False)
    if path.exists():
        if path.read_text() != text:
            raise SpecError(
                f"{study_dir} already holds a different study; run `ltsearch resume "
                f"{study_dir}` to continue it, or choose another --storage or name",
                file=str(path),
            )
        return
    study_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def load_study_dir(study_dir: str | Path) -> StudySpec:
    """The spec a study directory was started with (for ``resume`` and ``status``)."""
    path = Path(study_dir) / SPEC_FILE
    if not path.exists():
        raise SpecError(
            f"no {SPEC_FILE} here: not a study directory (give the directory `ltsearch run` "
            "printed, e.g. runs/<name>)",
            file=str(study_dir),
        )
    return load_spec(path)


def _journal_storage(study_dir: Path) -> Any:
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(str(study_dir / JOURNAL_FILE)))


def _pending_points(spec: StudySpec, storage: Any) -> list[dict[str, Any]]:
    """Starting points not yet in the Optuna journal (none is enqueued twice)."""
    import optuna

    from ltsearch.space import points_to_evaluate

    points = points_to_evaluate(spec)
    try:
        study = optuna.load_study(study_name=spec.name, storage=storage)
    except KeyError:
        return points
    seen = [t.params for t in study.get_trials(deepcopy=False)]
    return [p for p in points if not any(_same_point(p, s) for s in seen)]


def _same_point(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.keys() == b.keys() and all(a[k] == b[k] for k in a)


def _searcher(spec: StudySpec, storage: Any, points: list[dict[str, Any]]) -> Any:
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    from ltsearch.space import make_sampler, suggest

    search = spec.search
    single = len(search.metric_names) == 1
    searcher = OptunaSearch(
        space=functools.partial(suggest, spec=spec),  # picklable: Tune checkpoints it
        metric=search.metric_names[0] if single else search.metric_names,
        mode=(search.directions[0][:3] if single else [d[:3] for d in search.directions]),
        points_to_evaluate=points or None,
        sampler=make_sampler(spec),
        storage=storage,
        study_name=spec.name,
        seed=None,
    )
    return ConcurrencyLimiter(searcher, max_concurrent=spec.resources.max_concurrent_trials)


def _resources(spec: StudySpec) -> dict[str, float]:
    r = spec.resources
    if r.workers == 1 and r.gpus_per_worker == 0:
        return {"cpu": r.cpus_per_worker}
    return {"cpu": 0.5}  # the trial only drives its TorchTrainer, which asks for the workers


def run_study(
    spec: StudySpec,
    *,
    address: str | None = None,
    resume: bool = False,
    progress: bool = True,
) -> StudyOutcome:
    """Run (or continue) a study to completion; returns where its results are."""
    from ray import tune

    from ltsearch import cluster
    from ltsearch.progress import ProgressPrinter

    study_dir = spec.study_dir.resolve()
    if not resume:
        _write_spec(spec, study_dir)
    data = resolve_data(spec)
    ctx = StudyContext(spec=spec.to_dict(), study_dir=str(study_dir), data=data)
    t0 = time.perf_counter()
    where = cluster.connect(address, cpus_needed=_cpus_needed(spec))
    printer = ProgressPrinter(spec, study_dir, enabled=progress)
    printer.header(where)
    trainable = tune.with_resources(make_trial_fn(ctx), _resources(spec))
    run_config = tune.RunConfig(
        name=TUNE_DIR,
        storage_path=str(study_dir),
        verbose=0,
        callbacks=[printer],
        failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
    )
    tune_path = str(study_dir / TUNE_DIR)
    storage = _journal_storage(study_dir)
    try:
        if tune.Tuner.can_restore(tune_path):
            tuner = tune.Tuner.restore(
                tune_path, trainable=trainable, resume_unfinished=True, resume_errored=False
            )
        else:
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(
                    search_alg=_searcher(spec, storage, _pending_points(spec, storage)),
                    num_samples=spec.n_trials,
                    reuse_actors=True,
                ),
                run_config=run_config,
            )
        grid = tuner.fit()
    finally:
        cluster.shutdown()
    failed = len(grid.errors)
    return StudyOutcome(study_dir, len(grid) - failed, failed, time.perf_counter() - t0, where)


def _cpus_needed(spec: StudySpec) -> float:
    r = spec.resources
    per_trial = r.workers * r.cpus_per_worker + (0.5 if r.workers > 1 else 0)
    return per_trial * r.max_concurrent_trials


def resume_study(study_dir: str | Path, *, address: str | None = None) -> StudyOutcome:
    """Continue a study after a crash or ``kill -9`` of its driver."""
    root = Path(study_dir).resolve()
    spec = load_study_dir(root)
    if spec.name != root.name:
        raise SpecError(
            f"the directory is named {root.name!r} but holds study {spec.name!r}; rename it "
            f"back to {spec.name!r} (results live in <storage>/<name>)",
            file=str(root),
        )
    return run_study(spec.with_overrides(storage=root.parent), address=address, resume=True)


__all__ = ["StudyOutcome", "load_study_dir", "resume_study", "run_study"]
