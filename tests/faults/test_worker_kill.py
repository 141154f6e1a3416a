"""SIGKILL of a trial's worker process mid-epoch (what the OOM killer or a preempted
machine does): Ray Tune starts the trial again (``search.max_retries``), the seeds already
stored are read back and the seed in flight resumes from its last epoch checkpoint, so its
row equals the uninterrupted one and no whole epoch is trained twice."""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path
from typing import Any

import faultkit
import pytest
import torch
from records import record

pytestmark = [pytest.mark.faults, pytest.mark.slow]
EPOCHS = 3
RESUMED = re.compile(r"resumed (\S+checkpoint\.pt) at epoch (\d+)")


def _descendants(root: int) -> set[int]:
    procs = faultkit.ray_processes()
    out, grew = {root}, True
    while grew:
        new = {pid for pid, ppid in procs.items() if ppid in out and pid not in out}
        out |= new
        grew = bool(new)
    return out - {root}


def _trial_worker(driver: int) -> int | None:
    for pid in _descendants(driver):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"ray::ImplicitFunc" in cmd:
            return pid
    return None


def _checkpoint_at(project: Path) -> tuple[Path, int] | None:
    for ckpt in (project / "results" / "e2e" / "runs").glob("*/checkpoint.pt"):
        try:
            epoch = int(torch.load(ckpt, weights_only=True)["epoch"])
        except Exception:  # being replaced right now: look again
            continue
        if 1 <= epoch < EPOCHS:
            return ckpt, epoch
    return None


def test_a_killed_trial_worker_is_retried_from_its_checkpoint(
    fault_data: Path, tmp_path: Path, reference: dict[str, Any]
) -> None:
    project = faultkit.new_project(fault_data, tmp_path / "project")
    proc = faultkit.start("run", "e2e.yaml", "--no-report", cwd=project)
    ckpt, epoch = faultkit.wait_for(lambda: _checkpoint_at(project), proc, timeout=900)
    worker = faultkit.wait_for(lambda: _trial_worker(proc.pid), proc, timeout=30)
    time.sleep(0.3)  # into the next epoch
    t_kill = time.monotonic()
    faultkit.os.kill(worker, signal.SIGKILL)
    done = int(torch.load(ckpt, weights_only=True)["epoch"])  # epochs it had finished
    rc = proc.wait(600)
    recover_s = time.monotonic() - t_kill
    out, err = proc.text()
    assert rc == 0, proc.describe()
    assert "[retry 1]" in out, proc.describe()
    resumed = RESUMED.search(out)  # the engine's line when it picks a checkpoint up
    run_dir = f"{ckpt.parent.name}/checkpoint.pt"
    assert resumed and resumed.group(1).endswith(run_dir), proc.describe()
    redone = done - int(resumed.group(2))  # finished epochs the retry trained again
    assert redone == 0, (done, resumed.group(0))
    study = project / "results" / "e2e"
    cmp = faultkit.compare(study, reference["e2e"])
    assert not cmp.problems(), cmp
    assert faultkit.journal_states(study, "e2e") == ["COMPLETE"] * 2
    record(
        "trial worker SIGKILL mid-epoch",
        group="worker kill",
        injected=f"SIGKILL of the trial's Ray worker (pid {worker}) in epoch {epoch + 1}/"
        f"{EPOCHS} of an end-to-end run",
        promised="Ray Tune retries the trial; stored seeds read back, the seed in flight "
        "resumes from its epoch checkpoint; its row equals the uninterrupted one",
        observed=f"retried once; '{resumed.group(0).rsplit('/', 1)[-1]}' (epoch {done + 1} "
        f"of {EPOCHS} next); {cmp.rows_compared} rows equal",
        epochs_redone=redone,
        recover_s=round(recover_s, 1),
        **cmp.figures(),
    )
