"""The two-node token-auth Ray cluster of :mod:`test_node_loss`, and what looks into it.

Nodes are ``ray start --block`` children of the test, each with a private ``--temp-dir``
(:class:`Cluster`); :func:`_trials_on` and :class:`Placement` read which Tune trial runs on
which node from ``/proc`` (a trial runs in a working directory named after it); the token
probes (:func:`_start_probes`) are clients that try to join the cluster with no token, a
wrong one and the right one. :data:`STUDY` is the study the node-loss case runs, and that
the CLI probes try to run.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import faultkit

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location(
    "_ltsearch_ray_nodes", REPO / "tests" / "ltsearch" / "conftest.py"
)
assert _spec is not None and _spec.loader is not None
nodes_kit = sys.modules.setdefault(_spec.name, importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(nodes_kit)  # ray_env, free_port, stop_node, _pids_of, RAY

NAME = "nodeloss"
STUDY = f"""\
name: {NAME}
dataset: {faultkit.DATASET}
model: {{backbone: tiny, masks: true}}
training: {{schedule: end_to_end, epochs: 3, lr: 0.02, batch_size: 4, warmup_iters: 4}}
loss: {{name: acsl, params: {{xi: {{grid: [0.3, 0.7]}}}}}}
search: {{sampler: grid, objectives: [bbox/AP:max], seeds: [0, 1]}}
resources: {{workers: 1, cpus_per_worker: 1, max_concurrent_trials: 2}}
storage: results
"""
CONFIGS, SEEDS = 2, 2
AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
INIT = (
    "import sys, ray; ray.init(address=sys.argv[1]); print('CPUS', ray.cluster_resources()['CPU'])"
)


# --- processes --------------------------------------------------------------------------


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _trial_actors(temp_dir: str) -> set[int]:
    """Tune trial processes (``ray::ImplicitFunc``) of the node started with ``temp_dir``."""
    return {pid for pid in nodes_kit._pids_of(temp_dir) if b"ray::ImplicitFunc" in _cmdline(pid)}


def _trials_on(temp_dir: str) -> dict[int, str]:
    """``{pid: trial}`` of the Tune trials running on a node: Tune runs a trial in its own
    working directory (named after the trial), also in a reused actor."""
    out = {}
    for pid in _trial_actors(temp_dir):
        try:
            cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
        except OSError:
            continue
        if cwd != REPO:  # an actor not yet given a trial stays where its node started
            out[pid] = cwd.name
    return out


@dataclass
class Placement:
    """Where each trial was seen running, sampled by :meth:`look`."""

    nodes: dict[str, str]  # name -> temp dir
    seen: dict[str, dict[str, float]] = field(default_factory=dict)  # node -> trial -> time

    def look(self) -> dict[str, dict[int, str]]:
        now = time.monotonic()
        running = {node: _trials_on(temp) for node, temp in self.nodes.items()}
        for node, trials in running.items():
            for trial in trials.values():
                self.seen.setdefault(node, {}).setdefault(trial, now)
        return running


def _raylet(temp_dir: str) -> int:
    pids = [
        pid
        for pid in nodes_kit._pids_of(temp_dir)
        if _cmdline(pid).split(b"\0")[0].endswith(b"/raylet")
    ]
    assert len(pids) == 1, f"raylet of {temp_dir}: {pids}"
    return pids[0]


def _alive(pids: set[int]) -> set[int]:
    return {pid for pid in pids if _cmdline(pid)}


def _start(args: list[str], *, cwd: Path, env: dict[str, str], logs: Path) -> faultkit.Proc:
    """``args`` in the background with ``env``; output to files under ``logs``."""
    logs.mkdir(parents=True, exist_ok=True)
    n = len(list(logs.glob("cmd-*.out")))
    out, err = logs / f"cmd-{n}.out", logs / f"cmd-{n}.err"
    popen = subprocess.Popen(
        args, cwd=cwd, env=env,
        stdout=open(out, "wb"), stderr=open(err, "wb"),  # noqa: SIM115 (the child owns them)
    )  # fmt: skip
    return faultkit.Proc(popen, out, err, time.monotonic())


# --- the cluster ------------------------------------------------------------------------


@dataclass
class Cluster:
    """Ray nodes started with ``ray start --block``: the ``ray start`` process stays the
    parent of the node's daemons, so no other test's orphan reaper (``faultkit.reap_orphans``
    kills Ray processes whose parent is gone) takes them for leftovers, and a node whose
    raylet dies is torn down by its own ``ray start``, as on a real machine."""

    root: Path
    env: dict[str, str]
    token: str
    gcs_port: int = 0
    temp_dirs: list[str] = field(default_factory=list)
    starters: list[subprocess.Popen[bytes]] = field(default_factory=list)
    probes: dict[str, faultkit.Proc] = field(default_factory=dict)
    up_s: float = 0.0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def head_temp(self) -> str:
        return self.temp_dirs[0]

    @property
    def worker_temp(self) -> str:
        return self.temp_dirs[1]

    def start_node(self, args: list[str], timeout: float = 180) -> None:
        n = len(self.temp_dirs)
        temp = str(self.root / f"n{n}")  # short: socket paths <= 107 bytes
        self.temp_dirs.append(temp)
        free = nodes_kit.free_port
        ports = [
            "--dashboard-agent-listen-port", str(free()),
            "--metrics-export-port", str(free()),
            "--runtime-env-agent-port", str(free()),
        ]  # fmt: skip
        log = self.root / f"node{n}.log"
        starter = subprocess.Popen(
            [nodes_kit.RAY, "start", "--block", "--temp-dir", temp, *ports, *args],
            env=self.env, cwd=REPO, stdout=open(log, "wb"),  # noqa: SIM115 (the child owns it)
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.starters.append(starter)
        deadline = time.monotonic() + timeout
        while "Ray runtime started" not in log.read_text(errors="replace"):
            if starter.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"ray start {args}:\n{log.read_text(errors='replace')}")
            time.sleep(0.2)

    def start_head(self, *, num_cpus: int) -> None:
        self.gcs_port = nodes_kit.free_port()
        self.start_node([
            "--head", "--port", str(self.gcs_port), "--num-cpus", str(num_cpus),
            "--disable-usage-stats", "--ray-client-server-port", str(nodes_kit.free_port()),
            "--include-dashboard", "false",
        ])  # fmt: skip

    def add_worker(self, *, num_cpus: int) -> None:
        self.start_node(["--address", self.address, "--num-cpus", str(num_cpus)])

    def stop(self) -> None:
        for p in self.probes.values():
            if p.alive():
                p.popen.kill()
                p.popen.wait()
        for temp in reversed(self.temp_dirs):
            nodes_kit.stop_node(temp)
        for starter in self.starters:
            if starter.poll() is None:
                starter.kill()
            starter.wait()


def _without_token(env: dict[str, str], home: Path) -> dict[str, str]:
    env = {k: v for k, v in env.items() if k not in AUTH_VARS}
    env["HOME"] = str(home)  # no ~/.ray/auth_token to fall back on
    return env


def _start_probes(cluster: Cluster, data: Path) -> None:
    """Clients that try to join the cluster, in the background (each refused one retries
    for ~20 s before it gives up, so they run while the study does)."""
    home = cluster.root / "home"
    home.mkdir()
    assert not (home / ".ray" / "auth_token").exists()
    good = dict(cluster.env)
    wrong = dict(good, RAY_AUTH_TOKEN=secrets.token_hex(32))
    none = _without_token(good, home)
    ltsearch = str(nodes_kit.VENV_BIN / "ltsearch")
    for label, env in (("cli without token", none), ("cli wrong token", wrong)):
        project = cluster.root / label.replace(" ", "-")
        project.mkdir()
        (project / "data").symlink_to(data)
        (project / "study.yaml").write_text(STUDY)
        args = [ltsearch, "run", "study.yaml", "--address", cluster.address, "--no-report"]
        cluster.probes[label] = _start(args, cwd=project, env=env, logs=project)
    for label, env in (
        ("ray.init without token", none),
        ("ray.init wrong token", wrong),
        ("ray.init with token", good),
    ):
        logs = cluster.root / label.replace(" ", "-").replace(".", "_")
        args = [sys.executable, "-c", INIT, cluster.address]
        cluster.probes[label] = _start(args, cwd=cluster.root, env=env, logs=logs)


def _wait_two_nodes(cluster: Cluster, timeout: float = 120) -> None:
    deadline, last = time.monotonic() + timeout, ""
    while time.monotonic() < deadline:
        p = subprocess.run(
            [nodes_kit.RAY, "status", "--address", cluster.address],
            env=dict(cluster.env), capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        last = p.stdout + p.stderr
        if p.returncode == 0 and last.count(" node_") == 2:
            return
        time.sleep(1.0)
    raise AssertionError(f"two alive nodes within {timeout:.0f} s; last answer:\n{last}")
