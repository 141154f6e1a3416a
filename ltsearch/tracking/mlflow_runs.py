"""A study in MLflow: its experiment, its parent run and one member run per stored row.

- Experiment: named after the study (created when absent, restored when deleted). A local
  SQLite store keeps its artifacts beside the database file, not in ``./mlruns`` of
  whichever directory the command ran in.
- Parent run: one per study directory (its id kept in ``tracking.json``), named after the
  study, tag ``ltsearch.role: study``; params: sampler, objectives, trials, seeds,
  schedule, losses; artifacts: ``spec.yaml``, and the report once written.
- Member run: one per (configuration, seed) row of ``trials/``, nested under the parent
  (tag ``mlflow.parentRunId``), named ``acsl(xi=0.7) s0``, its start and end the row's
  ``started_at`` and ``finished_at``, status FINISHED (row ``ok``), KILLED (``stopped`` by
  early stopping) or FAILED. Params: the loss (``loss``) and its parameters
  (``acsl.xi``). Metrics: every number of the row (``bbox/APr``, ``time_total_s``, ...;
  undefined ones, LVIS's -1 and NaN, left out) and the per-epoch history of ``epochs/``
  as ``epoch/<column>`` at step = epoch. Tags:
  ``git_commit`` (also as ``mlflow.source.git.commit``), ``config_hash``, ``trial_id``,
  ``tune_trial_id``, ``seed``, ``status``, ``study``, ``loss``, the first line of ``error``,
  and ``ltsearch.row`` (the row's identity) with ``ltsearch.finished_at``.

A member run's last write is the tag ``ltsearch.complete`` (with ``ltsearch.logged_at``): a
run cut short (the process killed mid-way) lacks it, and is deleted and logged again by
the next pass.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ltsearch.rows import PARAM_PREFIX, config_label, config_params, present
from ltsearch.spec.paths import tracking_path, uri_scheme
from ltsearch.tracking.state import finished_at

ROW_TAG = "ltsearch.row"
FINISHED_TAG = "ltsearch.finished_at"
COMPLETE_TAG = "ltsearch.complete"
LOGGED_TAG = "ltsearch.logged_at"
ROLE_TAG = "ltsearch.role"
PARENT_TAG = "mlflow.parentRunId"
NOT_METRICS = frozenset({"seed", "workers", "pid"})  # numbers that name, not measure
EPOCH_KEYS = frozenset({"trial_id", "seed", "epoch"})
HTTP_DEFAULTS = {
    # MLflow's own: 7 retries with exponential backoff, about 4 minutes per request to an
    # unreachable server, each time a trial finishes; a study's logging gives up sooner
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
    # else every ended run costs one more request and prints two "View run" lines
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}
RUN_STATUS = {"ok": "FINISHED", "stopped": "KILLED", "failed": "FAILED"}  # row -> run status
BATCH = 900  # metrics per log_batch: MLflow takes 1000 values (100 params, 100 tags) at most


def connect(uri: str) -> Any:
    """An ``MlflowClient`` of ``uri`` (environment defaults above, where unset). A local
    file store (a directory, ``file:``) is opted into: MLflow 3 refuses it otherwise."""
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    if uri_scheme(uri) in (None, "file") and tracking_path(uri) is not None:
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def ensure_experiment(client: Any, name: str, uri: str) -> str:
    """The id of the experiment ``name``, created (or restored) when needed."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return str(exp.experiment_id)
    location = None
    if (uri_scheme(uri) or "").startswith("sqlite"):
        db = tracking_path(uri)
        location = (Path(db).parent / "mlartifacts" / name).as_uri() if db else None
    return str(client.create_experiment(name, artifact_location=location))


def parent_exists(client: Any, run_id: str | None) -> bool:
    """Whether ``run_id`` is a run there, not deleted (False when ``run_id`` is None).

    Raises:
        MlflowException: any other error than "no such run" (a server that is down must
            not make the study start a second parent run).
    """
    if not run_id:
        return False
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id).info.lifecycle_stage != "deleted"
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return False
        raise


def create_parent(client: Any, experiment_id: str, spec: Any, study_dir: Path) -> str:
    """Create the study's parent run (see the module doc); returns its id."""
    tags = {ROLE_TAG: "study", "ltsearch.study_dir": str(study_dir)}
    run = client.create_run(experiment_id, run_name=spec.name, tags=tags)
    run_id = str(run.info.run_id)
    search = spec.search
    params = {
        "sampler": search.sampler,
        "objectives": ",".join(search.objectives),
        "trials": spec.n_trials,
        "seeds": ",".join(str(s) for s in search.seeds),
        "schedule": spec.training.schedule,
        "losses": ",".join(o.name for o in spec.loss.options),
    }
    _batch(client, run_id, params=params)
    spec_file = study_dir / "spec.yaml"
    if spec_file.is_file():
        client.log_artifact(run_id, str(spec_file))
    return run_id


def logged_children(client: Any, experiment_id: str, parent_id: str) -> dict[str, dict[str, str]]:
    """``{row key: {"run_id", "finished_at", "logged_at"}}`` of the complete member runs
    under the parent; runs cut short (no ``ltsearch.complete``) are deleted, to be logged
    again."""
    out: dict[str, dict[str, str]] = {}
    token = None
    while True:
        page = client.search_runs(
            [experiment_id],
            filter_string=f"tags.`{PARENT_TAG}` = '{parent_id}'",
            max_results=1000,
            page_token=token,
        )
        for run in page:
            tags = run.data.tags
            if ROW_TAG not in tags:
                continue
            if tags.get(COMPLETE_TAG) != "true":
                client.delete_run(run.info.run_id)
                continue
            out[tags[ROW_TAG]] = {
                "run_id": run.info.run_id,
                "finished_at": tags.get(FINISHED_TAG, ""),
                "logged_at": tags.get(LOGGED_TAG, ""),
            }
        token = page.token
        if not token:
            return out


def log_member(
    client: Any,
    experiment_id: str,
    parent_id: str,
    key: str,
    row: Mapping[str, Any],
    epochs: Sequence[Mapping[str, Any]],
) -> dict[str, str]:
    """Log one row (and its epochs) as a member run under ``parent_id``; returns its
    entry in ``tracking.json`` (``run_id``, ``finished_at``, ``logged_at``)."""
    loss = str(row["loss"])
    params = {"loss": loss, **{f"{loss}.{k}": v for k, v in config_params(row, loss).items()}}
    run = client.create_run(
        experiment_id,
        start_time=_millis(row.get("started_at")),
        run_name=f"{config_label(loss, config_params(row, loss))} s{int(row['seed'])}",
        tags={**member_tags(row), PARENT_TAG: parent_id, ROW_TAG: key},
    )
    run_id = str(run.info.run_id)
    when = _millis(row.get("finished_at")) or _millis(row.get("started_at")) or 0
    metrics = [(k, v, when, 0) for k, v in row_metrics(row).items()]
    metrics += [(k, v, when, step) for k, v, step in epoch_metrics(epochs)]
    logged_at = datetime.now(timezone.utc).isoformat()
    chunks = [metrics[i : i + BATCH] for i in range(0, len(metrics), BATCH)] or [[]]
    for i, chunk in enumerate(chunks):  # params first, the completion tag in the last
        done = {COMPLETE_TAG: "true", LOGGED_TAG: logged_at} if i == len(chunks) - 1 else None
        _batch(client, run_id, params=params if i == 0 else None, metrics=chunk, tags=done)
    status = RUN_STATUS.get(str(row.get("status")), "FAILED")
    client.set_terminated(run_id, status=status, end_time=_millis(row.get("finished_at")))
    return {
        "run_id": run_id,
        "finished_at": finished_at(row),
        "logged_at": logged_at,
    }


def member_tags(row: Mapping[str, Any]) -> dict[str, str]:
    """The tags of a row's member run (module doc), without the parent and the key."""
    names = ("study", "loss", "trial_id", "tune_trial_id", "config_hash", "seed", "status")
    tags = {k: str(row[k]) for k in names if present(row.get(k))}
    commit = row.get("git_commit")
    if present(commit):
        tags["git_commit"] = str(commit)
        tags["mlflow.source.git.commit"] = str(commit).removesuffix("-dirty")
    error = row.get("error")
    if present(error):
        lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
        tags["error"] = (lines or ["unknown error"])[0][:500]
    tags[FINISHED_TAG] = finished_at(row)
    return tags


def row_metrics(row: Mapping[str, Any]) -> dict[str, float]:
    """Every number of a row but its parameters and the ids among them (seed, pid, ...);
    an undefined AP (LVIS's -1) and NaN are left out."""
    out = {}
    for k, v in row.items():
        if k in NOT_METRICS or k.startswith(PARAM_PREFIX) or not _number(v):
            continue
        if k.startswith(("bbox/", "segm/")) and v < 0:
            continue
        out[k] = float(v)
    return out


def epoch_metrics(epochs: Iterable[Mapping[str, Any]]) -> list[tuple[str, float, int]]:
    """``(epoch/<column>, value, epoch)`` for every number of every epoch row."""
    out = []
    for e in epochs:
        if not _number(e.get("epoch")):
            continue
        step = int(e["epoch"])
        out += [
            (f"epoch/{k}", float(v), step)
            for k, v in e.items()
            if k not in EPOCH_KEYS and _number(v)
        ]
    return out


def log_files(client: Any, run_id: str, files: Iterable[tuple[Path, str | None]]) -> None:
    """Log each ``(file or directory, artifact path)`` that exists to ``run_id``."""
    for path, dest in files:
        if path.is_dir():
            client.log_artifacts(run_id, str(path), dest)
        elif path.is_file():
            client.log_artifact(run_id, str(path), dest)


def set_status(client: Any, run_id: str, status: str) -> None:
    """Mark a run RUNNING (again) or terminated with ``status``."""
    if status == "RUNNING":
        client.update_run(run_id, status="RUNNING")
    else:
        client.set_terminated(run_id, status=status)


def _batch(
    client: Any,
    run_id: str,
    *,
    params: Mapping[str, Any] | None = None,
    metrics: Sequence[tuple[str, float, int, int]] = (),
    tags: Mapping[str, str] | None = None,
) -> None:
    from mlflow.entities import Metric, Param, RunTag

    client.log_batch(
        run_id,
        metrics=[Metric(k, v, t, s) for k, v, t, s in metrics],
        params=[Param(k, str(v)) for k, v in (params or {}).items()],
        tags=[RunTag(k, v) for k, v in (tags or {}).items()],
    )


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _millis(iso: Any) -> int | None:
    """An ISO 8601 time (a row's ``started_at``) as Unix milliseconds; None if absent."""
    if not present(iso):
        return None
    try:
        return int(datetime.fromisoformat(str(iso)).timestamp() * 1000)
    except ValueError:
        return None


__all__ = [
    "connect", "create_parent", "ensure_experiment", "epoch_metrics", "log_files",
    "log_member", "logged_children", "member_tags", "parent_exists", "row_metrics",
    "set_status",
]  # fmt: skip
