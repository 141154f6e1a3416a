"""The Optuna journal rebuilt from the parquet parts when it is lost, damaged or behind them.

The journal (``optuna.journal``) is what a resumed run plans from (:mod:`ltsearch.run.driver`);
the parquet parts (:mod:`ltsearch.store`) are what the trials produced. Without this module a
study whose journal was deleted would start over: its starting points read back from parquet,
then ``search.trials`` new configurations sampled with no history, so it ends with more
configurations than it asks for. :func:`reconcile_journal`, called under the driver lock once
:func:`ltsearch.run.search.repair_journal` has dropped a torn last line:

1. reads every part (trials, epochs, categories): a damaged one is a ``StoreError`` naming it
   (one line, exit 2) before Ray starts;
2. rebuilds the journal from the trial rows when trials/ holds rows and the journal is
   missing or holds no trial of the study, has a line that is not JSON (Optuna refuses to
   replay it), or holds a COMPLETE trial whose configuration lacks an ok row for one of the
   study's seeds (a damaged part deleted as the store's message says). A journal replaced is
   kept as ``optuna.journal.damaged-<n>``; one line on stderr says what was done.

Per configuration (``config_hash``), in the order of its first ``started_at``: every seed ok ->
a COMPLETE trial told the mean over seeds of each objective
(:func:`ltsearch.run.trainable.mean_metrics`, as a live trial reports it); a failed seed ->
a FAIL trial; a seed stopped by early stopping (status ``stopped``) -> a PRUNED trial; some
seeds ok and none failed or stopped -> an enqueued (WAITING) trial, which the resumed
run asks first and whose stored seeds it reads back. Parameters go through
``enqueue_trial`` + ``ask`` + :func:`ltsearch.space.suggest`, so each has the distribution
the spec gives it and TPE / NSGA-II learn from the trials. What parquet cannot tell is lost:
a configuration run twice (the sampler proposed it again) becomes one trial, so the resumed
run samples one more; RUNNING states and the trials' order within a second.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ltsearch.rows import PARAM_PREFIX, present
from ltsearch.spec.hashing import config_hash
from ltsearch.spec.points import param_key
from ltsearch.spec.study import StudySpec
from ltsearch.store import ResultStore
from ltsearch.study_dir import JOURNAL_FILE

COMPLETE, FAIL, PRUNED, WAITING = "complete", "fail", "pruned", "waiting"


@dataclass
class Configuration:
    """One configuration as the parquet rows give it."""

    config_hash: str
    params: dict[str, Any]  # Optuna params: ``loss`` and the suggested ``<loss>.<name>``
    state: str  # COMPLETE, FAIL, PRUNED or WAITING
    values: list[float] | None  # objectives of a COMPLETE one, in spec order
    started_at: str


def _optuna_params(row: dict[str, Any], spec: StudySpec) -> dict[str, Any] | None:
    """The params Optuna suggested for a row's configuration (None: a loss the spec lacks)."""
    from ltmodels.losses.domains import DOMAINS

    loss = str(row["loss"])
    try:
        option = spec.loss.option(loss)
    except KeyError:
        return None
    fixed = option.fixed()
    out: dict[str, Any] = {"loss": loss}
    for name in option.params:
        value = row.get(f"{PARAM_PREFIX}{loss}.{name}")
        if name not in fixed and present(value):
            out[param_key(loss, name)] = DOMAINS[loss][name].check(loss, name, value)
    return out


def _seed_metrics(row: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in row.items() if k.startswith(("bbox/", "segm/")) and present(v)}


def configurations(spec: StudySpec, rows: list[dict[str, Any]]) -> list[Configuration]:
    """The study's configurations in the trial rows, in the order they were first started
    (rows of a loss the spec does not search are left out)."""
    from ltsearch.run.trainable import mean_metrics

    by_hash: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_hash.setdefault(str(row["config_hash"]), []).append(row)
    out = []
    for chash, group in by_hash.items():
        params = _optuna_params(group[0], spec)
        if params is None:
            continue
        ok = {int(r["seed"]): r for r in group if r["status"] == "ok"}
        seeds = list(spec.search.seeds)
        values = None
        if all(s in ok for s in seeds):
            state = COMPLETE
            means = mean_metrics([_seed_metrics(ok[s]) for s in seeds])
            values = [means.get(m, float("nan")) for m in spec.search.metric_names]
        else:
            statuses = {r["status"] for r in group}
            state = FAIL if "failed" in statuses else PRUNED if "stopped" in statuses else WAITING
        first = min(str(r.get("started_at") or "") for r in group)
        out.append(Configuration(chash, params, state, values, first))
    return sorted(out, key=lambda c: c.started_at)


@contextlib.contextmanager
def _quiet_optuna() -> Iterator[None]:
    import optuna

    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(level)


def write_journal(spec: StudySpec, configs: list[Configuration], path: Path) -> None:
    """Write a journal of ``configs`` to ``path`` (atomically: built beside it, renamed)."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    from optuna.study import StudyDirection
    from optuna.trial import TrialState

    from ltsearch.space import suggest

    tmp = path.with_name(f".{path.name}.rebuild")
    tmp.unlink(missing_ok=True)
    with _quiet_optuna():
        study = optuna.create_study(
            storage=JournalStorage(JournalFileBackend(str(tmp))),
            study_name=spec.name,
            directions=[StudyDirection[d.upper()] for d in spec.search.directions],
            sampler=optuna.samplers.RandomSampler(seed=0),
        )
        for c in configs:  # finished ones first: an enqueued trial is asked before others
            if c.state == WAITING:
                continue
            study.enqueue_trial(c.params)
            trial = study.ask()
            suggest(trial, spec)
            if c.state in (FAIL, PRUNED):
                study.tell(trial, state=TrialState.FAIL if c.state == FAIL else TrialState.PRUNED)
            else:
                study.tell(trial, c.values)
        for c in configs:
            if c.state == WAITING:
                study.enqueue_trial(c.params)
    os.replace(tmp, path)


def _journal_problem(spec: StudySpec, path: Path, configs: list[Configuration]) -> str | None:
    """Why the journal must be rebuilt from ``configs`` (None: it agrees with them)."""
    if not path.exists() or not path.stat().st_size:
        return "missing"
    for n, line in enumerate(path.read_bytes().splitlines(), 1):
        try:
            json.loads(line)
        except ValueError:
            return f"line {n} is not JSON"
    import optuna
    from optuna.trial import TrialState

    from ltsearch.run.search import journal_storage

    try:
        with _quiet_optuna():
            study = optuna.load_study(study_name=spec.name, storage=journal_storage(path.parent))
    except KeyError:
        return "it holds no trial of the study"
    trials = study.get_trials(deepcopy=False)
    if not trials:
        return "it holds no trial of the study"
    complete = {c.config_hash for c in configs if c.state == COMPLETE}
    known = set()
    for t in trials:
        params = {**t.system_attrs.get("fixed_params", {}), **t.params}  # enqueued: fixed
        try:
            chash = config_hash(params, spec)
        except (ValueError, KeyError):  # no params yet, or not of this spec
            continue
        known.add(chash)
        if t.state == TrialState.COMPLETE and chash not in complete:
            return f"trial {t.number} is COMPLETE there but not every seed of it is in trials/"
    behind = [c.config_hash for c in configs if c.config_hash not in known]
    if behind:
        return f"configuration {behind[0]} is in trials/ but in no trial there"
    return None


def reconcile_journal(spec: StudySpec, study_dir: Path) -> str | None:
    """Check every parquet part and rebuild the journal where it disagrees with them.

    Call under the driver lock, after ``repair_journal``. Returns the line printed to stderr
    when the journal was rebuilt (None otherwise).

    Raises:
        StoreError: a damaged parquet part (one line naming it and the fix).
    """
    store = ResultStore(study_dir)
    store.load_epochs()
    store.load_categories()
    rows = store.trial_rows()
    if not rows:
        return None
    configs = configurations(spec, rows)
    path = study_dir / JOURNAL_FILE
    problem = _journal_problem(spec, path, configs)
    if problem is None:
        return None
    kept = ""
    if path.exists():
        n = 1 + sum(1 for _ in study_dir.glob(f"{JOURNAL_FILE}.damaged-*"))
        aside = path.with_name(f"{JOURNAL_FILE}.damaged-{n}")
        os.replace(path, aside)
        kept = f" (the old one kept as {aside.name})"
    write_journal(spec, configs, path)
    counts = {s: sum(c.state == s for c in configs) for s in (COMPLETE, FAIL, PRUNED, WAITING)}
    pruned = f", {counts[PRUNED]} stopped early" if counts[PRUNED] else ""
    line = (
        f"{path}: {problem}; rebuilt it from the parquet parts{kept}: {counts[COMPLETE]} "
        f"complete, {counts[FAIL]} failed{pruned}, {counts[WAITING]} to finish"
    )
    print(line, file=sys.stderr, flush=True)
    return line


__all__ = ["Configuration", "configurations", "reconcile_journal", "write_journal"]
