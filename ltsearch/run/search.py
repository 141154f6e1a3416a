"""The Optuna side of a driver run: the journal, what a (resumed) run must do, and the
searcher that adopts the trials a killed driver left running.

:func:`plan_study` reads the journal (the source of truth, see :mod:`ltsearch.run.driver`):
finished trials count against ``search.trials``, ``RUNNING`` ones are adopted, starting
points already in the journal are not enqueued again. :func:`make_searcher` is Ray Tune's
``OptunaSearch`` over :func:`ltsearch.space.suggest`, with that plan.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ltsearch.spec.study import StudySpec
from ltsearch.study_dir import JOURNAL_FILE


def repair_journal(study_dir: Path) -> None:
    """Make the journal appendable after a crash of the driver that held it.

    Only called under the driver lock (no other writer): drops an incomplete last line
    (a write cut short; Optuna's reader rejects it once another line follows) and a
    journal lock left behind (Optuna would wait 30 s before breaking it).
    """
    path = study_dir / JOURNAL_FILE
    if path.exists() and path.stat().st_size:
        with open(path, "rb+") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                data = path.read_bytes()
                f.truncate(data.rfind(b"\n") + 1)
    lock = path.with_name(path.name + ".lock")
    if lock.is_symlink() or lock.exists():
        lock.unlink()


def journal_storage(study_dir: Path) -> Any:
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(str(study_dir / JOURNAL_FILE)))


@dataclass
class StudyPlan:
    """What a (re)started driver has left to do, read from the Optuna journal."""

    finished: int = 0  # trials complete, failed or pruned
    failed: int = 0
    trials_in_journal: int = 0
    adopt: list[int] = field(default_factory=list)  # storage ids of RUNNING trials
    points: list[dict[str, Any]] = field(default_factory=list)  # to enqueue
    to_run: int = 0  # Tune samples: adopted trials, then new or waiting ones


def plan_study(spec: StudySpec, storage: Any) -> StudyPlan:
    """Read the journal: finished trials, trials to adopt, starting points to enqueue."""
    import optuna
    from optuna.trial import TrialState

    from ltsearch.space import points_to_evaluate

    points = points_to_evaluate(spec)
    try:
        study = optuna.load_study(study_name=spec.name, storage=storage)
    except KeyError:
        return StudyPlan(points=points, to_run=spec.n_trials)
    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state.is_finished()]
    adopt = [t._trial_id for t in trials if t.state == TrialState.RUNNING]
    seen = [t.params for t in trials] + [
        t.system_attrs["fixed_params"] for t in trials if "fixed_params" in t.system_attrs
    ]
    pending = [p for p in points if not any(_same_point(p, s) for s in seen)]
    left = max(0, spec.n_trials - len(done) - len(adopt))
    return StudyPlan(
        finished=len(done),
        failed=sum(t.state == TrialState.FAIL for t in done),
        trials_in_journal=len(trials),
        adopt=adopt[: max(0, spec.n_trials - len(done))],
        points=pending,
        to_run=min(len(adopt), max(0, spec.n_trials - len(done))) + left,
    )


def _same_point(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.keys() == b.keys() and all(a[k] == b[k] for k in a)


def _adopting_search_cls() -> type:
    from optuna.trial import Trial
    from ray.tune.search.optuna import OptunaSearch

    from ltsearch.rung_log import RUNG_KEY

    class AdoptingOptunaSearch(OptunaSearch):
        """OptunaSearch that first hands out the given RUNNING journal trials (a killed
        driver's trials in flight) before asking the study for new ones."""

        def __init__(
            self,
            *args: Any,
            adopt: list[int] | None = None,
            study_dir: str | None = None,
            **kwargs: Any,
        ) -> None:
            super().__init__(*args, **kwargs)
            self._adopt = list(adopt or [])
            self._study_dir = study_dir  # where early stopping logs its rung decisions

        def suggest(self, trial_id: str) -> dict | None:
            if self._adopt and trial_id not in self._ot_trials:
                study: Any = self._ot_study
                self._ot_trials[trial_id] = Trial(study, self._adopt.pop(0))
            return super().suggest(trial_id)

        def on_trial_result(self, trial_id: str, result: dict) -> None:
            from ltsearch.run.trainable import ERROR_KEY, STOP_KEY

            if ERROR_KEY in result or STOP_KEY in result:  # no metrics: see on_trial_complete
                return
            super().on_trial_result(trial_id, result)

        def on_trial_complete(
            self, trial_id: str, result: dict | None = None, error: bool = False
        ) -> None:
            from ltsearch.run.trainable import ERROR_KEY

            if result and ERROR_KEY in result:  # a run failed (reported, not raised)
                super().on_trial_complete(trial_id, result=None, error=True)
                return
            metrics = self.metric if isinstance(self.metric, list) else [self.metric]
            if not error and result and result.get(RUNG_KEY) is not None:
                self._rung_complete(trial_id, result, metrics)
                return
            if not error and not all((result or {}).get(m) is not None for m in metrics):
                # stopped by the study (Ctrl-C, SIGTERM, a systematic error, a full disk)
                # before it reported: leave it RUNNING, so resume adopts and reruns it
                self._completed_trials.add(trial_id)
                return
            super().on_trial_complete(trial_id, result=result, error=error)

        def _rung_complete(self, trial_id: str, result: dict, metrics: list[str]) -> None:
            """A trial that ended on a rung result: PRUNED if early stopping stopped it
            there (:mod:`ltsearch.run.rung_scheduler`), else it was interrupted between two
            rungs (Ctrl-C, ``ltsearch stop``): left RUNNING for resume to adopt."""
            from optuna.trial import TrialState

            from ltsearch.rung_log import stopped_at

            self._completed_trials.add(trial_id)
            rung = None if self._study_dir is None else stopped_at(self._study_dir, result)
            if rung is None:
                return
            ot_trial = self._ot_trials[trial_id]
            ot_trial.set_user_attr(RUNG_KEY, rung)
            ot_trial.set_user_attr("rung_values", {m: result.get(m) for m in metrics})
            study: Any = self._ot_study
            study.tell(ot_trial, state=TrialState.PRUNED)

    return AdoptingOptunaSearch


def make_searcher(spec: StudySpec, storage: Any, plan: StudyPlan) -> Any:
    from ray.tune.search import ConcurrencyLimiter

    from ltsearch.space import make_sampler, suggest

    search = spec.search
    if plan.trials_in_journal:  # a resumed study: do not replay the killed run's draws
        seed = (search.seed * 1_000_003 + plan.trials_in_journal) % 2**31
        spec = spec.model_copy(update={"search": search.model_copy(update={"seed": seed})})
    single = len(search.metric_names) == 1
    searcher = _adopting_search_cls()(
        space=functools.partial(suggest, spec=spec),  # picklable: Tune checkpoints it
        metric=search.metric_names[0] if single else search.metric_names,
        mode=(search.directions[0][:3] if single else [d[:3] for d in search.directions]),
        points_to_evaluate=plan.points or None,
        sampler=make_sampler(spec),
        storage=storage,
        study_name=spec.name,
        seed=None,
        adopt=plan.adopt,
        study_dir=str(spec.study_dir),
    )
    return ConcurrencyLimiter(searcher, max_concurrent=spec.resources.max_concurrent_trials)


__all__ = ["StudyPlan", "journal_storage", "make_searcher", "plan_study", "repair_journal"]
