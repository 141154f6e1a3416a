"""A real two-node Ray cluster on this machine, a study submitted with ``ray job submit``.

Head (4 CPUs, dashboard) and a second node (2 CPUs), each with its own ``--temp-dir``;
the job runs ``python -m ltsearch run studies/quickstart.yaml --smoke`` inside the
cluster, where ``ray job submit`` sets ``RAY_ADDRESS`` and ``ltsearch`` joins that cluster
instead of starting a local Ray. With a token in ``~/.ray/auth_token``, every node and
``ray job`` command runs with ``RAY_AUTH_MODE=token`` (see ``conftest.py``).
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from ltsearch.store import ResultStore

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def ray_cli(nodes: Any, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).parent / "ray"), *args],
        env=nodes.env, cwd=REPO, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def wait_for(what: str, check: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        ok, last = check()
        if ok:
            return last
        time.sleep(1.0)
    raise AssertionError(f"{what} within {timeout:.0f} s; last answer:\n{last}")


def test_study_runs_as_a_ray_job_on_a_two_node_cluster(tmp_path: Path, ray_nodes: Any) -> None:
    t0 = time.perf_counter()
    ray_nodes.start_head(num_cpus=4, dashboard=True)
    ray_nodes.add_worker(num_cpus=2)
    dashboard = f"http://127.0.0.1:{ray_nodes.dashboard_port}"

    def two_nodes() -> tuple[bool, str]:
        p = ray_cli(ray_nodes, "status", "--address", ray_nodes.address)
        return p.returncode == 0 and p.stdout.count(" node_") == 2, p.stdout + p.stderr

    wait_for("two alive nodes", two_nodes, 90)

    def jobs_answer() -> tuple[bool, str]:  # the job agent needs a few seconds after start
        p = ray_cli(ray_nodes, "job", "list", "--address", dashboard)
        return p.returncode == 0, p.stdout + p.stderr

    wait_for("`ray job list` to answer", jobs_answer, 90)
    t_up = time.perf_counter()

    storage = tmp_path / "results"
    job_id = f"ltsearch-{uuid.uuid4().hex[:8]}"
    entry = [sys.executable, "-m", "ltsearch", "run", str(REPO / "studies" / "quickstart.yaml"),
             "--smoke", "--storage", str(storage), "--no-report"]  # fmt: skip
    p = ray_cli(
        ray_nodes, "job", "submit", "--address", dashboard, "--submission-id", job_id,
        "--no-wait", "--", *entry,
    )  # fmt: skip
    assert p.returncode == 0, p.stdout + p.stderr

    def finished() -> tuple[bool, str]:  # "Job '<id>' succeeded" / "failed" / "was stopped"
        q = ray_cli(ray_nodes, "job", "status", "--address", dashboard, job_id)
        match = re.search(rf"Job '{job_id}' (succeeded|failed|was stopped)", q.stdout + q.stderr)
        return match is not None, (match.group(1) if match else q.stdout + q.stderr)

    status = wait_for("the job to finish", finished, 300)
    logs = ray_cli(ray_nodes, "job", "logs", "--address", dashboard, job_id).stdout
    assert status == "succeeded", status + logs[-4000:]
    t_done = time.perf_counter()

    # it joined the cluster (RAY_ADDRESS from the job), not a Ray of its own
    assert "on ray cluster at" in logs and "local ray" not in logs, logs[-4000:]
    assert "quickstart-smoke: 2/2 trials, study complete" in logs, logs[-4000:]
    assert "runs (configuration x seed): 2 ok, 0 failed" in logs, logs[-4000:]
    df = ResultStore(storage / "quickstart-smoke").load_trials()
    assert len(df) == 2 and (df["status"] == "ok").all()
    assert sorted(df["loss"]) == ["acsl", "ce"]
    assert df["bbox/APr"].notna().all() and not df.duplicated(["config_hash", "seed"]).any()
    print(
        f"cluster test: two nodes + job agent up {t_up - t0:.1f} s, "
        f"job submitted to SUCCEEDED {t_done - t_up:.1f} s"
    )
