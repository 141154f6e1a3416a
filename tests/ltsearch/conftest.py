"""Ray nodes for the slow study tests: ``ray start`` with a private ``--temp-dir``.

Other processes on the machine may run Ray too, so ``ray stop`` (which kills every Ray
process on the machine) is never used: a node is stopped by the ids of the processes
whose command line names its temp dir, and their descendants.

Token authentication: when a token exists (``~/.ray/auth_token`` or ``RAY_AUTH_TOKEN``),
every node, driver and ``ray job`` command runs with ``RAY_AUTH_MODE=token`` and that token.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

VENV_BIN = Path(sys.executable).parent
RAY = str(VENV_BIN / "ray")
REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ray_env() -> dict[str, str]:
    """Environment of every Ray process a test starts (nodes, drivers, job commands)."""
    env = dict(os.environ)
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.pop("RAY_ADDRESS", None)
    token = env.get("RAY_AUTH_TOKEN") or (Path.home() / ".ray" / "auth_token").is_file()
    if token and "RAY_AUTH_MODE" not in env:
        env["RAY_AUTH_MODE"] = "token"
    return env


def _processes() -> dict[int, tuple[int, str]]:
    """``{pid: (ppid, command line)}`` of the live processes (Linux ``/proc``)."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] == "Z":  # a zombie is dead already
            continue
        out[int(entry)] = (int(fields[1]), cmd)
    return out


def _pids_of(temp_dir: str) -> set[int]:
    """Processes whose command line names ``temp_dir`` (the node's own processes), and
    their descendants (workers and agents, whose titles do not name it)."""
    procs = _processes()
    pids = {
        pid for pid, (_, cmd) in procs.items() if temp_dir + "/" in cmd or cmd.endswith(temp_dir)
    }
    grew = True
    while grew:
        kids = {pid for pid, (ppid, _) in procs.items() if ppid in pids} - pids
        pids |= kids
        grew = bool(kids)
    pids.discard(os.getpid())
    return pids


def stop_node(temp_dir: str, grace_s: float = 1.5) -> None:
    """Stop the Ray node started with ``temp_dir``: SIGTERM, then SIGKILL what is left."""
    pids = _pids_of(temp_dir)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace_s
        while pids and time.monotonic() < deadline:
            time.sleep(0.2)
            pids &= set(_processes())
        if not pids:
            return


@dataclass
class RayNodes:
    """The nodes one test started; :meth:`stop` stops all of them."""

    root: Path
    env: dict[str, str] = field(default_factory=ray_env)
    temp_dirs: list[str] = field(default_factory=list)
    gcs_port: int = 0
    dashboard_port: int = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    def _start(self, args: list[str]) -> None:
        temp = str(self.root / f"n{len(self.temp_dirs)}")  # short: socket paths <= 107 bytes
        self.temp_dirs.append(temp)
        ports = [
            "--dashboard-agent-listen-port", str(free_port()),
            "--metrics-export-port", str(free_port()),
            "--runtime-env-agent-port", str(free_port()),
        ]  # fmt: skip
        proc = subprocess.run(
            [RAY, "start", "--temp-dir", temp, *ports, *args],
            env=self.env, cwd=REPO, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        if proc.returncode != 0:
            raise AssertionError(f"ray start failed:\n{proc.stdout}\n{proc.stderr}")

    def start_head(self, *, num_cpus: int, dashboard: bool) -> None:
        self.gcs_port = free_port()
        args = ["--head", "--port", str(self.gcs_port), "--num-cpus", str(num_cpus)]
        args += ["--disable-usage-stats", "--ray-client-server-port", str(free_port())]
        if dashboard:
            self.dashboard_port = free_port()
            args += ["--include-dashboard", "true", "--dashboard-port", str(self.dashboard_port)]
        else:
            args += ["--include-dashboard", "false"]
        self._start(args)

    def add_worker(self, *, num_cpus: int) -> None:
        self._start(["--address", self.address, "--num-cpus", str(num_cpus)])

    def stop(self) -> None:
        for temp in reversed(self.temp_dirs):
            stop_node(temp)


@pytest.fixture
def ray_nodes() -> Iterator[RayNodes]:
    """Start Ray nodes with private temp dirs; every one is stopped at the end."""
    root = Path(f"/tmp/lts{os.getpid()}_{free_port()}")
    root.mkdir()
    nodes = RayNodes(root)
    try:
        yield nodes
    finally:
        nodes.stop()
        shutil.rmtree(root, ignore_errors=True)
