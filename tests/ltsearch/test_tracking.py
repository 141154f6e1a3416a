"""MLflow tracking for real: a study logged to a file store while it runs, then to a local
``mlflow server`` (SQLite backend, loopback only) with ``--mlflow``, read back with
``MlflowClient`` and compared with the parquet rows; nothing logged twice on ``resume`` and
``report``; an unreachable server and a damaged part fail nothing and are counted.

One study runs (2 trials x 1 seed, 2 epochs, tiny model: the size of test_runner's kill
study) with ``tracking: {mlflow: mlruns}``, from another working directory; the rest re-use
its directory (``run`` again, ``resume`` and ``report`` run nothing). The server starts
first, so that it boots while the study trains.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from mlflow.tracking import MlflowClient

from ltsearch.store import ResultStore
from ltsearch.study_dir import load_study_dir
from ltsearch.tracking import Tracker
from ltsearch.tracking import mlflow_runs as ml
from ltsearch.tracking.state import STATE_FILE, load_state, row_key

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "acceptance"))
from workspace import BIN, Ran, cli_env, run_cli  # noqa: E402

pytestmark = pytest.mark.slow

NAME = "track-run"
STUDY = f"""\
name: {NAME}
dataset: {{kind: synthetic, classes: 8, train_images: 16, val_images: 8, image_size: 64}}
model: {{backbone: tiny, masks: false}}
training: {{schedule: end_to_end, epochs: 2, batch_size: 4, warmup_iters: 4}}
loss: {{name: acsl, params: {{xi: {{uniform: [0.05, 0.95]}}}}}}
search:
  sampler: tpe
  objectives: [bbox/APr:max, bbox/APf:max]
  trials: 2
  seeds: [0]
  initial_points: [{{xi: 0.7}}, {{xi: 0.3}}]
resources: {{workers: 1, cpus_per_worker: 1, max_concurrent_trials: 1}}
storage: results
tracking: {{mlflow: mlruns}}
"""
# what ltsearch sets (where unset) when it logs; set here too, so that the test's own
# clients read the file store, and undone after each test
MLFLOW_ENV = {**ml.HTTP_DEFAULTS, "MLFLOW_ALLOW_FILE_STORE": "true"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """An ``mlflow server`` on 127.0.0.1 in its own process group."""

    proc: subprocess.Popen
    url: str
    log: Path

    def ready(self, timeout: float = 240) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"mlflow server exited:\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                    if r.status == 200:
                        return self.url
            except OSError:
                time.sleep(0.5)
        raise AssertionError(f"mlflow server not up in {timeout} s:\n{self.log.read_text()}")

    def stop(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.proc.pid, sig)  # the group this test started, by its id
            except ProcessLookupError:
                return
            try:
                self.proc.wait(timeout=15)
                return
            except subprocess.TimeoutExpired:
                continue


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    env = {**cli_env(), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    args = [
        str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
        "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
        "--artifacts-destination", str(root / "artifacts"), "--workers", "1",
    ]  # fmt: skip
    log = root / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            args, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    srv = Server(proc, f"http://127.0.0.1:{port}", log)
    try:
        yield srv
    finally:
        srv.stop()


@dataclass
class Tracked:
    """The study directory and what each command along the way printed."""

    root: Path
    study_dir: Path
    store: str  # the study file's tracking URI, resolved
    first: Ran  # ltsearch run ../study/track.yaml (trains; logs to the file store)
    first_s: float
    first_state: dict[str, Any]  # tracking.json after it
    first_status: Ran
    server_url: str
    again: Ran  # ltsearch run ../study/track.yaml --mlflow URL (runs nothing)
    resumed: Ran  # ltsearch resume DIR --no-report (logs to the recorded URL)
    report: Ran  # ltsearch report DIR
    status: Ran


@pytest.fixture(scope="module")
def tracked(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Tracked:
    root = tmp_path_factory.mktemp("tracking")
    (root / "study").mkdir()
    (root / "study" / "track.yaml").write_text(STUDY)
    work = root / "work"
    work.mkdir()
    rel = f"results/{NAME}"
    t0 = time.perf_counter()
    first = run_cli("run", "../study/track.yaml", cwd=work)
    first_s = time.perf_counter() - t0
    study_dir = work / rel
    first_state = json.loads((study_dir / STATE_FILE).read_text())
    first_status = run_cli("status", rel, cwd=work)
    url = server.ready()
    again = run_cli("run", "../study/track.yaml", "--mlflow", url, cwd=work)
    resumed = run_cli("resume", rel, "--no-report", cwd=work)
    report = run_cli("report", rel, cwd=work)
    status = run_cli("status", rel, cwd=work)
    print(f"tracked study: first run {first_s:.1f} s")
    return Tracked(
        root, study_dir, str(root / "study" / "mlruns"), first, first_s, first_state,
        first_status, url, again, resumed, report, status,
    )  # fmt: skip


@pytest.fixture(autouse=True)
def _mlflow_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in MLFLOW_ENV.items():
        monkeypatch.setenv(key, value)


def study_runs(client: Any) -> tuple[Any, list[Any]]:
    """The study's parent run and its member runs (every active run must be one)."""
    exp = client.get_experiment_by_name(NAME)
    assert exp is not None, f"no experiment {NAME!r}"
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("ltsearch.role") == "study"]
    assert len(parents) == 1, [r.info.run_name for r in runs]
    parent = parents[0]
    members = [r for r in runs if r is not parent]
    for r in members:
        assert r.data.tags["mlflow.parentRunId"] == parent.info.run_id
    return parent, members


def check_members(client: Any, study_dir: Path, members: list[Any]) -> None:
    """Each stored row is one member run with its params, metrics, history and tags."""
    store = ResultStore(study_dir)
    rows = store.trial_rows()
    assert len(rows) == 2 and len(members) == 2
    by_key = {r.data.tags["ltsearch.row"]: r for r in members}
    assert sorted(by_key) == sorted(row_key(r) for r in rows)
    for row in rows:
        run = by_key[row_key(row)]
        xi = row["param.acsl.xi"]
        assert run.info.run_name == f"acsl(xi={xi:.4g}) s0"
        assert run.info.status == "FINISHED"
        assert run.data.params == {"loss": "acsl", "acsl.xi": str(xi)}
        for key, value in row.items():
            if key.startswith("bbox/") and value >= 0:
                assert run.data.metrics[key] == pytest.approx(value), key
            elif key.startswith("bbox/"):  # undefined in LVIS: not a metric of 0 or -1
                assert key not in run.data.metrics
        assert run.data.metrics["time_total_s"] == pytest.approx(row["time_total_s"])
        tags = run.data.tags
        for key in ("git_commit", "config_hash", "trial_id", "tune_trial_id", "status"):
            assert tags[key] == str(row[key]), key
        assert tags["seed"] == "0" and tags["status"] == "ok"
        epochs = store.run_rows("epochs", row["trial_id"], 0)
        assert [e["epoch"] for e in epochs] == [0.0, 1.0]
        for col in ("loss", "loss_cls", "lr"):
            history = client.get_metric_history(run.info.run_id, f"epoch/{col}")
            got = sorted((m.step, m.value) for m in history)
            assert got == [(int(e["epoch"]), pytest.approx(e[col])) for e in epochs], col


def artifact_paths(client: Any, run_id: str, path: str | None = None) -> set[str]:
    return {a.path for a in client.list_artifacts(run_id, path)}


def test_a_study_logs_to_a_file_store_beside_its_study_file_as_it_runs(
    tracked: Tracked,
) -> None:
    assert tracked.first.rc == 0, tracked.first.describe()
    assert not (tracked.root / "work" / "mlruns").exists()  # not relative to the cwd
    client = MlflowClient(tracked.store)
    parent, members = study_runs(client)
    check_members(client, tracked.study_dir, members)
    assert parent.info.run_name == NAME and parent.info.status == "FINISHED"
    assert parent.data.params["sampler"] == "tpe" and parent.data.params["trials"] == "2"
    assert {"spec.yaml", "report.md", "report"} <= artifact_paths(client, parent.info.run_id)
    plots = {f"report/{p.name}" for p in (tracked.study_dir / "report").iterdir()}
    assert plots and artifact_paths(client, parent.info.run_id, "report") == plots
    # logged as each trial ended (the Tune callback), not all at the end
    rows = sorted(ResultStore(tracked.study_dir).trial_rows(), key=lambda r: r["finished_at"])
    logged = tracked.first_state["runs"][row_key(rows[0])]["logged_at"]
    assert logged < rows[1]["finished_at"], (logged, rows[1]["finished_at"])
    assert f"mlflow: 2 runs logged, 0 errors; {tracked.store}" in tracked.first.out
    assert f"  mlflow: 2 runs logged, 0 errors; {tracked.store}\n" in tracked.first_status.out
    per_run = tracked.first_state["log_seconds"] / tracked.first_state["log_count"]
    print(f"file store: {per_run * 1000:.0f} ms per logged run")


def test_a_tracking_server_gets_the_runs_once_across_run_resume_and_report(
    tracked: Tracked,
) -> None:
    for ran in (tracked.again, tracked.resumed, tracked.report, tracked.status):
        assert ran.rc == 0, ran.describe()
    url = tracked.server_url
    assert f"mlflow: 2 runs logged, 0 errors; {url}" in tracked.again.out
    assert "View run" not in tracked.again.out  # MLflow's two lines per run: not printed
    # --mlflow overrode the study file's URI, and resume and report used it
    stored = yaml.safe_load((tracked.study_dir / "spec.yaml").read_text())
    assert stored["tracking"] == {"mlflow": url}
    assert "tracking: {mlflow: mlruns}" in (tracked.root / "study" / "track.yaml").read_text()
    assert tracked.report.out.strip() == f"results/{NAME}/report.md"  # stdout: the path only
    assert f"mlflow: 2 runs logged, 0 errors; {url}" in tracked.report.err
    assert f"  mlflow: 2 runs logged, 0 errors; {url}\n" in tracked.status.out
    client = MlflowClient(url)
    parent, members = study_runs(client)  # one parent, two members: nothing twice
    check_members(client, tracked.study_dir, members)
    assert {"spec.yaml", "report.md", "report"} <= artifact_paths(client, parent.info.run_id)
    assert artifact_paths(client, parent.info.run_id, "report")
    state = json.loads((tracked.study_dir / STATE_FILE).read_text())
    assert state["uri"] == url and state["errors"] == 0
    assert state["log_count"] == 2  # logged by the first command only
    print(f"mlflow server: {state['log_seconds'] / state['log_count'] * 1000:.0f} ms per run")


def test_an_unreachable_server_fails_nothing_and_shows_in_status(
    tracked: Tracked, tmp_path: Path
) -> None:
    copy = tmp_path / "elsewhere" / NAME
    shutil.copytree(tracked.study_dir, copy, ignore=shutil.ignore_patterns("runs"))
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    t0 = time.perf_counter()
    ran = run_cli("resume", f"elsewhere/{NAME}", "--mlflow", url, "--no-report", cwd=tmp_path)
    took = time.perf_counter() - t0
    assert ran.rc == 0, ran.describe()
    assert ran.out.strip().splitlines()[-1].endswith("runs (configuration x seed): 2 ok, 0 failed")
    assert f"ltsearch: mlflow logging to {url} failed" in ran.err
    assert json.loads((copy / STATE_FILE).read_text())["uri"] == url
    status = run_cli("status", f"elsewhere/{NAME}", cwd=tmp_path)
    line = next(ln.strip() for ln in status.out.splitlines() if "mlflow:" in ln)
    # the driver's first call failed: it stopped logging, and said so once
    assert line.startswith("mlflow: 0 runs logged, 1 error (last: MlflowException: "), line
    assert line.endswith(f"; {url}; 2 not logged yet (the next run, resume or report logs them)")
    print(f"resume with an unreachable server: {took:.1f} s")


def test_a_damaged_part_is_an_error_and_a_run_cut_short_is_logged_again(
    tracked: Tracked, tmp_path: Path
) -> None:
    copy = tmp_path / NAME
    shutil.copytree(tracked.study_dir, copy, ignore=shutil.ignore_patterns("runs"))
    uri = str(tmp_path / "store")
    spec = load_study_dir(copy).with_overrides(storage=tmp_path, mlflow=uri)
    bad, good = ResultStore(copy).trial_rows()
    part = copy / "epochs" / f"part-{bad['trial_id']}-s0.parquet"
    data = part.read_bytes()
    part.write_bytes(data[:-40])
    Tracker(spec, copy, uri).sync()
    state = load_state(copy, uri)
    assert state is not None and list(state.runs) == [row_key(good)]
    assert state.errors == 1 and (state.last_error or "").startswith("StoreError: ")
    client = MlflowClient(uri)
    assert state.experiment_id is not None and state.parent_run_id is not None
    half = client.create_run(  # what a process killed while logging leaves behind
        state.experiment_id,
        tags={"mlflow.parentRunId": state.parent_run_id, "ltsearch.row": row_key(bad)},
    )
    part.write_bytes(data)
    Tracker(spec, copy, uri).sync()  # a new process: reads back what is logged
    state = load_state(copy, uri)
    assert state is not None and sorted(state.runs) == sorted([row_key(bad), row_key(good)])
    assert state.errors == 1 and state.log_count == 2
    assert client.get_run(half.info.run_id).info.lifecycle_stage == "deleted"
    _, members = study_runs(client)
    check_members(client, copy, members)


def test_a_failed_row_and_a_row_run_again_are_logged_as_they_stand(
    tracked: Tracked, tmp_path: Path
) -> None:
    copy = tmp_path / NAME
    shutil.copytree(tracked.study_dir, copy, ignore=shutil.ignore_patterns("runs"))
    uri = f"sqlite:///{tmp_path}/mlflow.db"  # a local database, no server
    spec = load_study_dir(copy).with_overrides(storage=tmp_path, mlflow=uri)
    Tracker(spec, copy, uri).sync()
    store = ResultStore(copy)
    first, second = store.trial_rows()
    metrics = [k for k in first if k.startswith("bbox/")]
    failed = {k: v for k, v in first.items() if k not in metrics}  # another seed failed
    failed.update(seed=1, status="failed", error="RuntimeError: boom\nTraceback (most ...)")
    store.write_trial(failed)
    store.write_trial({**second, "finished_at": "2030-01-01T00:00:00+00:00"})  # run again
    client = MlflowClient(uri)
    old = {r.data.tags["ltsearch.row"]: r.info.run_id for r in study_runs(client)[1]}
    Tracker(spec, copy, uri).sync()
    _, members = study_runs(client)
    by_key = {r.data.tags["ltsearch.row"]: r for r in members}
    assert sorted(by_key) == sorted([row_key(first), row_key(second), row_key(failed)])
    assert by_key[row_key(first)].info.run_id == old[row_key(first)]  # unchanged: kept
    rerun = by_key[row_key(second)]
    assert rerun.info.run_id != old[row_key(second)]  # the old one is deleted, not doubled
    assert client.get_run(old[row_key(second)]).info.lifecycle_stage == "deleted"
    assert rerun.data.tags["ltsearch.finished_at"] == "2030-01-01T00:00:00+00:00"
    run = by_key[row_key(failed)]
    assert run.info.status == "FAILED" and run.info.run_name.endswith(" s1")
    assert run.data.tags["status"] == "failed" and run.data.tags["error"] == "RuntimeError: boom"
    assert not [k for k in run.data.metrics if k.startswith("bbox/")]
    assert run.data.metrics["time_total_s"] == pytest.approx(first["time_total_s"])
    state = load_state(copy, uri)
    assert state is not None and state.errors == 0 and len(state.runs) == 3
    assert state.log_count == 4  # two, then the failed row and the row run again


def test_a_long_history_is_logged_in_batches(tmp_path: Path) -> None:
    uri = str(tmp_path / "store")
    client = ml.connect(uri)
    experiment = ml.ensure_experiment(client, "batches", uri)
    row = {
        "trial_id": "t", "seed": 3, "loss": "acsl", "param.acsl.xi": 0.5, "status": "ok",
        "bbox/AP": 0.25, "bbox/APr": -1.0, "workers": 1, "pid": 7,
        "started_at": "2026-01-01T00:00:00+00:00", "finished_at": "2026-01-01T00:10:00+00:00",
    }  # fmt: skip
    # 100 epochs x 10 columns: more values than one log_batch takes
    epochs = [{"epoch": float(e), **{f"c{j}": e + j / 10 for j in range(10)}} for e in range(100)]
    entry = ml.log_member(client, experiment, "the-parent", "t-s3", row, epochs)
    run = client.get_run(entry["run_id"])
    assert run.data.params == {"loss": "acsl", "acsl.xi": "0.5"}
    assert run.data.metrics == {"bbox/AP": 0.25, "epoch/c0": 99.0, **{
        f"epoch/c{j}": pytest.approx(99 + j / 10) for j in range(1, 10)
    }}  # fmt: skip
    assert run.data.tags["ltsearch.complete"] == "true"
    assert run.data.tags["mlflow.parentRunId"] == "the-parent"
    assert run.info.end_time - run.info.start_time == 600_000  # the row's times
    for j in (0, 9):
        history = sorted(
            (m.step, m.value) for m in client.get_metric_history(run.info.run_id, f"epoch/c{j}")
        )
        assert history == [(e, pytest.approx(e + j / 10)) for e in range(100)]
