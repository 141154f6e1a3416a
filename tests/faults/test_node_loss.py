"""Node loss and token authentication on a real two-node Ray cluster (issue 17, sections 8
and 10).

A head (``ray start --head --num-cpus 1``, no dashboard) and a worker node (``ray start
--address ... --num-cpus 2``), each with a private ``--temp-dir``, both with
``RAY_AUTH_MODE=token`` and a random ``RAY_AUTH_TOKEN`` made for this module (never
``~/.ray/auth_token``). Each node is a ``ray start --block`` child of the test (see
:class:`Cluster`). ``ray stop`` is never used: the nodes are stopped by the processes whose
command line names their temp dir (``tests/ltsearch/conftest.py``).

- Node loss: ``ltsearch run --address <head>`` runs a study of 2 configurations x 2 seeds,
  two trials at a time; the head's one CPU cannot hold both, so at least one trial runs on
  the worker node. Once a trial runs there and a row is stored, the worker node's raylet
  is SIGKILLed (its ``ray start --block`` takes the rest of the node down; its workers die
  with the raylet). Once they are dead a replacement node (a new temp dir, 2 CPUs) joins:
  without it the head's one CPU would run the rest one trial at a time on a 2-core machine.
  Each trial that was on the lost node must be seen running again on a live node (the
  head or the replacement, never the dead raylet: the trial was rescheduled, not revived),
  and the study must end with every (configuration, seed) once, ok, with the metrics of
  the same study run without a fault on a local Ray (run alongside).
- Token: while the study runs, clients without the token (no ``RAY_AUTH_*`` variables, a
  ``HOME`` without ``.ray/auth_token``) and with a wrong token try to join, through the CLI
  and through ``ray.init``; each is refused. The same ``ray.init`` with the token joins.

The cluster, the trial placement read from ``/proc`` and the token probes are in
:mod:`token_cluster`.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import faultkit
import pytest
from records import record
from token_cluster import (
    AUTH_VARS,
    CONFIGS,
    NAME,
    SEEDS,
    STUDY,
    Cluster,
    Placement,
    _alive,
    _raylet,
    _start,
    _start_probes,
    _wait_two_nodes,
    nodes_kit,
)

pytestmark = [pytest.mark.faults, pytest.mark.slow]


@pytest.fixture(scope="module")
def cluster(fault_data: Path) -> Iterator[Cluster]:
    """Token-auth head (1 CPU) + worker node (2 CPUs); the token probes started. Every
    node and probe is stopped at the end, whatever happened."""
    root = Path(f"/tmp/ltnl{os.getpid()}_{nodes_kit.free_port()}")  # short: socket paths
    root.mkdir()
    env = nodes_kit.ray_env()
    for k in AUTH_VARS:
        env.pop(k, None)
    token = secrets.token_hex(32)
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, RAY_USAGE_STATS_ENABLED="0")
    c = Cluster(root, env, token)
    try:
        t0 = time.monotonic()
        c.start_head(num_cpus=1)
        c.add_worker(num_cpus=2)
        _wait_two_nodes(c)
        c.up_s = time.monotonic() - t0
        _start_probes(c, fault_data)
        yield c
    finally:
        c.stop()
        shutil.rmtree(root, ignore_errors=True)


# --- node loss --------------------------------------------------------------------------


def _rows(study: Path) -> int:
    return len(list((study / "trials").glob("*.parquet")))


def test_a_lost_node_s_trials_are_rescheduled_and_the_study_completes(
    cluster: Cluster, fault_data: Path, tmp_path: Path
) -> None:
    t0 = time.monotonic()
    ref_project = faultkit.new_project(fault_data, tmp_path / "local", **{NAME: STUDY})
    project = faultkit.new_project(fault_data, tmp_path / "cluster", **{NAME: STUDY})
    ltsearch = str(nodes_kit.VENV_BIN / "ltsearch")
    # the uninterrupted reference on a local Ray, alongside (deterministic per seed)
    ref = faultkit.start("run", f"{NAME}.yaml", "--no-report", cwd=ref_project)
    args = [ltsearch, "run", f"{NAME}.yaml", "--address", cluster.address, "--no-report"]
    proc = _start(args, cwd=project, env=dict(cluster.env), logs=tmp_path / "logs")
    study = project / "results" / NAME
    try:
        where = Placement({"head": cluster.head_temp, "worker": cluster.worker_temp})

        def fault_point() -> dict[str, dict[int, str]] | None:
            running = where.look()
            return running if running["worker"] and _rows(study) >= 1 else None

        at_kill = faultkit.wait_for(fault_point, proc, timeout=900, poll=0.1)
        rows_before = _rows(study)
        raylet = _raylet(cluster.worker_temp)
        t_kill = time.monotonic()
        os.kill(raylet, signal.SIGKILL)
        # the node's trial processes die with it
        gone = set(at_kill["worker"])
        faultkit.wait_for(lambda: not _alive(gone), proc, timeout=120, poll=0.1)
        worker_gone_s = time.monotonic() - t_kill
        # a replacement machine joins (the head's one CPU alone would run the rest serially)
        cluster.add_worker(num_cpus=2)
        where.nodes = {"head": cluster.head_temp, "replacement": cluster.temp_dirs[2]}
        after: dict[str, tuple[str, float]] = {}  # trial -> (node, first seen after the kill)
        t_ref = None
        while proc.alive():
            for node, trials in where.look().items():
                for trial in trials.values():
                    after.setdefault(trial, (node, time.monotonic() - t_kill))
            if t_ref is None and not ref.alive():
                t_ref = time.monotonic()
            time.sleep(0.2)
        rc = proc.wait(600)
        t_done = time.monotonic()
        ref_rc = ref.wait(600)
    finally:
        for p in (proc, ref):
            if p.alive():
                p.popen.kill()
                p.popen.wait()
    out, err = proc.text()
    assert rc == 0, proc.describe()
    assert ref_rc == 0, ref.describe()
    assert f"on ray cluster at {cluster.address}" in out + err, proc.describe()
    # every (configuration, seed) once, ok, equal to the local run; the journal complete
    rows = faultkit.read_rows(study)
    assert len(rows) == CONFIGS * SEEDS, (rows[["param.acsl.xi", "seed", "status"]], out[-3000:])
    assert (rows["status"] == "ok").all(), rows[["config_hash", "seed", "status"]]
    assert not rows.duplicated(["config_hash", "seed"]).any(), rows[["config_hash", "seed"]]
    assert sorted(rows["param.acsl.xi"].round(6).unique()) == [0.3, 0.7]
    cmp = faultkit.compare(study, ref_project / "results" / NAME)
    assert cmp.rows_compared == CONFIGS * SEEDS and not cmp.problems(), cmp
    assert faultkit.journal_states(study, NAME) == ["COMPLETE"] * CONFIGS
    # the lost node's trials were retried, and ran again on a live node
    retries = [line for line in out.splitlines() if line.startswith("[retry")]
    assert retries, proc.describe()
    lost_trials = sorted(set(at_kill["worker"].values()))
    moved = {t: after[t] for t in lost_trials if t in after}
    assert sorted(moved) == lost_trials, (
        f"trials on the lost node {lost_trials}; seen on live nodes after the kill {after}"
    )

    first_moved = min(t for _, t in moved.values())
    print(
        f"node loss: cluster up {cluster.up_s:.1f} s (module setup); kill at "
        f"{t_kill - t0:.1f} s, {rows_before} row(s) stored, trials running: {at_kill}; "
        f"worker's trial processes dead {worker_gone_s:.1f} s after the kill; lost trials "
        f"(node, s after the kill): {moved}; study done {t_done - t_kill:.1f} s after "
        f"the kill; local reference done at "
        f"{'(after the study)' if t_ref is None else f'{t_ref - t0:.1f} s'}; "
        f"test {time.monotonic() - t0:.1f} s"
    )
    print("seen (s from start):", {
        node: {t: round(v - t0, 1) for t, v in trials.items()}
        for node, trials in where.seen.items()
    })  # fmt: skip
    print("\n".join(retries))
    record(
        "node loss",
        group="node loss",
        injected=f"SIGKILL of the worker node's raylet (2-node token-auth cluster, "
        f"{len(lost_trials)} trial(s) running there, {rows_before} of {CONFIGS * SEEDS} rows "
        "stored); "
        "a replacement node joins once they are dead",
        promised="the lost node's trials are retried on live nodes (stored seeds "
        "read back, the seed in flight resumes from its checkpoint); the study completes, "
        "every (configuration, seed) once with the metrics of an unfaulted local run",
        observed=f"{len(retries)} retry line(s); the {len(lost_trials)} lost trial(s) ran "
        f"again on {sorted({n for n, _ in moved.values()})} {first_moved:.0f} s after the "
        "kill; driver exit 0; "
        f"{cmp.rows_compared} rows equal to the local run; journal {CONFIGS} COMPLETE",
        recover_s=round(t_done - t_kill, 1),
        rescheduled_s=round(first_moved, 1),
        **cmp.figures(),
    )


# --- token ------------------------------------------------------------------------------


def test_a_client_without_the_cluster_s_token_is_refused(cluster: Cluster) -> None:
    results = {}
    for label, p in cluster.probes.items():
        rc = p.wait(300)
        out, err = p.text()
        results[label] = (rc, out, err)
    address = cluster.address
    for label in ("cli without token", "cli wrong token"):
        rc, out, err = results[label]
        lines = err.strip().splitlines()
        assert rc == 2, (label, cluster.probes[label].describe())
        assert lines and lines[-1].startswith(
            f"ltsearch: error: cannot join the Ray cluster at {address} ("
        ), (label, cluster.probes[label].describe())
        assert "InvalidAuthToken" in err, (label, cluster.probes[label].describe())
        assert not list((cluster.root / label.replace(" ", "-")).glob("results/*/trials/*"))
    for label in ("ray.init without token", "ray.init wrong token"):
        rc, out, err = results[label]
        assert rc != 0 and "CPUS" not in out, (label, cluster.probes[label].describe())
        assert "ConnectionError: Failed to connect to Ray cluster" in err, label
        assert "AuthenticationError" in err and "InvalidAuthToken" in err, label
    rc, out, err = results["ray.init with token"]
    assert rc == 0 and "CPUS" in out, cluster.probes["ray.init with token"].describe()
    cli_line = results["cli without token"][2].strip().splitlines()[-1]
    print(cli_line)
    record(
        "client without the token",
        group="security",
        injected="clients joining a token-auth cluster: ltsearch run --address and ray.init "
        "with no RAY_AUTH_* variables and no ~/.ray/auth_token, and with a wrong token",
        promised="refused: the CLI exits 2 with one line naming the cluster and the token; "
        "ray.init raises; the same ray.init with the token joins",
        observed=f"4 refused (InvalidAuthToken), 1 with the token joined; CLI: {cli_line[:160]}",
        clients_refused=4,
        clients_admitted=1,
    )
