"""The live progress display as a user sees it: ``ltsearch run`` in a real pseudo-terminal
(redrawn in place below the trial lines) while ``ltsearch status --watch`` follows the same
study from another directory with its output in a pipe (plain timestamped lines), until
the driver ends.
"""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import time
from pathlib import Path

import pytest
from workspace import cli_env, run_cli

pytestmark = pytest.mark.slow
CLEAR_UP = re.compile(r"\x1b\[(\d+)F\x1b\[J")
STAMPED = re.compile(r"^\[\d\d:\d\d:\d\d\] live: (\d+)/(\d+) trials, (\d+) running", re.M)
STUDY = """\
name: live
dataset: {kind: lvis, train: data/lvis_synth_train.json, val: data/lvis_synth_val.json, \
images: data}
model: {backbone: tiny, masks: true}
training:
  schedule: decoupled
  stage1: {loss: ce, epochs: 2, lr: 0.02, batch_size: 4, warmup_iters: 4}
  stage2: {epochs: 2, lr: 0.01, batch_size: 8, warmup_iters: 2, finetune: [box_predictor]}
loss: {name: acsl, params: {xi: {grid: [0.3, 0.7]}}}
search: {sampler: grid, objectives: [bbox/APr:max, bbox/AP:max], seeds: [0, 1]}
resources: {workers: 1, cpus_per_worker: 1, max_concurrent_trials: 1}
storage: results
"""


def _run_in_pty(args: list[str], cwd: Path, env: dict[str, str]) -> tuple[int, int]:
    """Start ``args`` on a new pseudo-terminal; returns (pid, the terminal's master fd)."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: a terminal program as a user starts it
        try:
            os.chdir(cwd)
            os.execvpe(args[0], args, env)
        finally:
            os._exit(127)
    return pid, fd


def _read_all(pid: int, fd: int, timeout: float) -> tuple[int, str]:
    out, deadline = b"", time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 1.0)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # the terminal closed: the program ended
                break
            if not chunk:
                break
            out += chunk
    else:
        os.kill(pid, 9)
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    return os.waitstatus_to_exitcode(status), out.decode(errors="replace")


def test_run_redraws_in_a_terminal_and_watch_prints_lines_in_a_pipe(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    synth = ("--classes", "6", "--train-images", "48", "--val-images", "8", "--image-size", "96")
    made = run_cli("data", "synth", "--out", "data", *synth, cwd=project, timeout=300)
    assert made.rc == 0, made.describe()
    (project / "live.yaml").write_text(STUDY)
    env = {**cli_env(), "COLUMNS": "150", "TERM": "xterm"}
    exe = str(Path(env["PATH"].split(os.pathsep)[0]) / "ltsearch")

    pid, fd = _run_in_pty([exe, "run", "live.yaml", "--no-report"], project, env)
    study = project / "results" / "live"
    deadline = time.monotonic() + 120
    while not (study / ".driver.lock").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    watcher = subprocess.Popen(
        [exe, "status", "--watch", "../project/results/live", "--interval", "1"],
        cwd=elsewhere, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    rc, screen = _read_all(pid, fd, timeout=600)
    watched, werr = watcher.communicate(timeout=60)

    assert rc == 0, screen[-4000:]
    redraws = CLEAR_UP.findall(screen)
    assert len(redraws) >= 5, screen[-4000:]
    # the block's lines, as drawn each time (redraw codes split them)
    drawn = CLEAR_UP.split(screen)
    assert any("now: acsl(xi=0.3) seed 0 (1/2): stage 1, epoch 1/2" in d for d in drawn), screen
    assert any("building the feature cache" in d or "training" in d for d in drawn), screen
    assert "[1/2] acsl(" in screen and "[2/2] acsl(" in screen  # trial lines stay above it
    last = screen[screen.rindex("study live [") :].splitlines()[0]
    assert "[####################] 2/2 trials, 0 running, 0 failed" in last, last
    assert "complete" in last, last
    assert max(len(line) for line in screen.splitlines() if "study live [" in line) <= 150

    assert watcher.returncode == 0, werr
    stamped = STAMPED.findall(watched)
    assert len(stamped) >= 2 and "\x1b[" not in watched, watched
    assert any(running == "1" for _, _, running in stamped), watched
    assert "now: acsl(" in watched and "stage 1" in watched, watched
    assert watched.strip().splitlines()[-1] == (
        "study live: no driver running it; 2/2 trials, study complete"
    ), watched
    # the phase files are gone with their trials
    assert not list((study / "live").glob("*.json"))
