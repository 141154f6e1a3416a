"""SIGKILL of the driver at each phase of a decoupled study, then ``ltsearch resume``:
during stage-1 training, during the feature-cache build, between trials, while a parquet
part is being written, and during the report. After the resume the study equals the same
study run without a fault: every (configuration, seed) once, equal metrics and per-epoch
losses, no part that was finished before the kill rewritten, no epoch trained twice.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import faultkit
import pytest
import torch
from records import record

from ltsearch.store import ResultStore

pytestmark = [pytest.mark.faults, pytest.mark.slow]
STAGE1_EPOCHS = 3
EPOCH_LINE = re.compile(r"stage 1 \(ce\): epoch (\d+)/(\d+)")


def _project(fault_data: Path, tmp_path: Path, cache_from: Path | None = None) -> Path:
    return faultkit.new_project(fault_data, tmp_path / "project", cache_from=cache_from)


def _kill(proc: faultkit.Proc, *, tree: bool = False) -> float:
    """SIGKILL the driver (``tree``: with its Ray node and trial worker, whose work would
    otherwise go on for the seconds they outlive it); returns once they have all died."""
    return faultkit.kill_driver(proc, tree=tree)[0]


def _resume(project: Path) -> tuple[str, float]:
    """``ltsearch resume`` from another directory, with a relative path; returns stdout."""
    t0 = time.monotonic()
    rc, out, err = faultkit.run("resume", "../results/decoupled", cwd=project / "elsewhere")
    assert rc == 0, out[-3000:] + err[-3000:]
    assert out.strip().splitlines()[-1].endswith("runs (configuration x seed): 8 ok, 0 failed")
    return out, time.monotonic() - t0


def _check(project: Path, reference: dict[str, Any]) -> faultkit.Comparison:
    study = project / "results" / "decoupled"
    cmp = faultkit.compare(study, reference["decoupled"])
    assert not cmp.problems(), cmp
    assert faultkit.journal_states(study, "decoupled") == ["COMPLETE"] * 4
    assert not faultkit.hidden_temporaries(study)
    return cmp


def _stage1_dir(project: Path) -> Path | None:
    found = list((project / "results" / "_cache" / "stage1").glob("*/train.pt"))
    return found[0].parent if found else None


def test_kill_during_stage1_resumes_from_its_last_epoch(
    fault_data: Path, tmp_path: Path, reference: dict[str, Any]
) -> None:
    project = _project(fault_data, tmp_path)
    proc = faultkit.start("run", "decoupled.yaml", "--no-report", cwd=project)
    stage1 = faultkit.wait_for(lambda: _stage1_dir(project), proc, timeout=900)
    time.sleep(1.5)  # into the next epoch
    killed = _kill(proc, tree=True)
    assert not (stage1 / "model.pt").exists(), "killed after stage 1 had finished"
    done = int(torch.load(stage1 / "train.pt", weights_only=True)["epoch"])
    assert 1 <= done < STAGE1_EPOCHS, done

    out, recover_s = _resume(project)
    trained = [int(m.group(1)) for m in EPOCH_LINE.finditer(out)]
    assert trained == list(range(done + 1, STAGE1_EPOCHS + 1)), (done, trained)
    redone = done + len(trained) - STAGE1_EPOCHS
    cmp = _check(project, reference)
    record(
        "driver SIGKILL during stage-1 training",
        group="driver kill",
        injected=f"SIGKILL of `ltsearch run` and its Ray processes {killed - proc.started:.1f} s "
        f"in, stage 1 at epoch {done + 1}/{STAGE1_EPOCHS}",
        promised="resume trains stage 1 from its last epoch checkpoint; results equal",
        observed=f"resume trained epochs {trained} only; {cmp.rows_compared} rows equal",
        epochs_redone=redone,
        recover_s=round(recover_s, 1),
        **cmp.figures(),
    )


def _building_cache(project: Path) -> bool:
    root = project / "results" / "_cache" / "features"
    return any(d.is_dir() and not (d / "manifest.json").exists() for d in root.glob("*"))


def test_kill_during_the_feature_cache_build_rebuilds_it(
    fault_data: Path, tmp_path: Path, reference: dict[str, Any]
) -> None:
    project = _project(fault_data, tmp_path)
    proc = faultkit.start("run", "decoupled.yaml", "--no-report", cwd=project)
    faultkit.wait_for(lambda: _building_cache(project), proc, timeout=900, poll=0.005)
    killed = _kill(proc, tree=True)
    partial = [p for p in (project / "results/_cache/features").rglob("*") if p.is_file()]
    assert not list((project / "results/_cache/features").glob("*/manifest.json"))

    out, recover_s = _resume(project)
    assert not EPOCH_LINE.search(out), "stage 1 was finished before the kill: not retrained"
    assert list((project / "results/_cache/features").glob("*/manifest.json"))
    cmp = _check(project, reference)
    record(
        "driver SIGKILL during the feature-cache build",
        group="driver kill",
        injected=f"SIGKILL of `ltsearch run` and its Ray processes {killed - proc.started:.1f} s "
        f"in, while the cache had {len(partial)} file(s) and no manifest",
        promised="the unfinished cache is never used: rebuilt on resume; results equal",
        observed=f"rebuilt; stage 1 not retrained; {cmp.rows_compared} rows equal",
        epochs_redone=0,
        recover_s=round(recover_s, 1),
        **cmp.figures(),
    )


def test_kill_between_trials_keeps_every_finished_part(
    fault_data: Path, tmp_path: Path, reference: dict[str, Any]
) -> None:
    project = _project(fault_data, tmp_path, reference["project"])  # stage 1 done
    study = project / "results" / "decoupled"
    proc = faultkit.start("run", "decoupled.yaml", "--no-report", cwd=project)
    faultkit.wait_for(lambda: len(list((study / "trials").glob("*.parquet"))) >= 3, proc)
    killed = _kill(proc)
    before = faultkit.parts(study)
    # the killed driver's lock is free at once (flock dies with the process) and says who
    # held it last; the resume below takes it over
    rc, status, _ = faultkit.run("status", "results/decoupled", cwd=project)
    stale = f"driver: none running (the last one: pid {proc.pid} on "
    assert rc == 0 and stale in status, status

    _, recover_s = _resume(project)
    after = faultkit.parts(study)
    rewritten = [k for k, v in before.items() if after.get(k) != v]
    assert not rewritten, rewritten
    cmp = _check(project, reference)
    record(
        "driver SIGKILL between trials",
        group="driver kill",
        injected=f"SIGKILL of `ltsearch run` {killed - proc.started:.1f} s in (its trial worker "
        f"died on its own after it), with {sum(k.startswith('trials/') for k in before)} of 8 "
        "rows written",
        promised="finished parts kept byte for byte; the rest run once; results equal",
        observed=f"{len(before)} parts kept, 0 rewritten; {cmp.rows_compared} rows equal",
        parts_rewritten=len(rewritten),
        recover_s=round(recover_s, 1),
        **cmp.figures(),
    )
    record(
        "stale lock of a SIGKILLed driver",
        group="concurrency",
        injected="SIGKILL of the driver holding .driver.lock, then `ltsearch resume`",
        promised="the lock is free at once and taken over; status names the last holder",
        observed=f"status: '{stale.strip()}...'; resume took the lock and finished",
        rows_lost=cmp.rows_lost,
        rows_duplicated=cmp.rows_duplicated,
        recover_s=round(recover_s, 1),
    )


def test_kill_while_a_part_is_written_leaves_no_half_part(
    fault_data: Path, tmp_path: Path, reference: dict[str, Any]
) -> None:
    project = _project(fault_data, tmp_path, reference["project"])  # stage 1 done
    study = project / "results" / "decoupled"
    # the write stalls long enough for the kill to land in it on a loaded machine (xdist)
    slow = {"slow_write": {"match": f"{os.sep}trials{os.sep}part-", "seconds": 60}}
    proc = faultkit.start("run", "decoupled.yaml", "--no-report", cwd=project, inject=slow)
    # the stalled write is the trial row's part: an epochs or categories part's temporary
    # (written just before, at full speed) can be renamed between this check and the kill
    stalled = study / "trials"
    faultkit.wait_for(lambda: list(stalled.glob(".*")), proc, timeout=900)
    _kill(proc, tree=True)
    halves = [str(p) for p in stalled.glob(".*")]
    assert halves, "the kill came after the rename"
    readable = ResultStore(study).load_trials()  # readers never see the half-written part
    assert len(readable) < 8 and (readable.empty or (readable["status"] == "ok").all())

    _, recover_s = _resume(project)
    cmp = _check(project, reference)  # the temporary is gone, the row was written once
    record(
        "driver SIGKILL while a parquet part is written",
        group="driver kill",
        injected="SIGKILL of `ltsearch run` and its Ray processes while a trial's part sat in "
        "its temporary file (writes slowed to 60 s by the injector)",
        promised="readers see whole parts only; resume removes the temporary; results equal",
        observed=f"{len(halves)} temporary file(s) left, invisible to readers "
        f"({len(readable)} rows read); removed on resume",
        half_parts_visible=0,
        recover_s=round(recover_s, 1),
        **cmp.figures(),
    )


GENERATED = re.compile(rb"^Generated \d{4}-\d\d-\d\d \d\d:\d\d UTC ", re.MULTILINE)


def _report(study: Path) -> bytes:
    """report.md without its time of generation (a later report of the same rows differs
    only there)."""
    return GENERATED.sub(b"Generated <time> ", (study / "report.md").read_bytes())


def test_kill_during_the_report_keeps_the_last_whole_report(
    tmp_path: Path, reference: dict[str, Any]
) -> None:
    study = tmp_path / "results" / "decoupled"
    shutil.copytree(reference["decoupled"], study)
    rc, _, err = faultkit.run("report", "results/decoupled", cwd=tmp_path)
    assert rc == 0, err
    whole = _report(study)
    assert GENERATED.search((study / "report.md").read_bytes())
    plots = sorted(p.name for p in (study / "report").glob("*.png"))
    parts = faultkit.parts(study)
    t0 = time.monotonic()
    rc, _, _ = faultkit.run("report", "results/decoupled", cwd=tmp_path)
    duration = time.monotonic() - t0
    kills, delay, at = 0, 0.3 * duration, []
    for attempt in range(16):  # kills spread over the command's run, however fast it is
        proc = faultkit.start("report", "results/decoupled", cwd=tmp_path)
        time.sleep(delay)
        if proc.alive():  # (no Ray: `report` starts no process of its own)
            proc.signal(signal.SIGKILL)
        rc = proc.wait(60)
        if rc == -signal.SIGKILL:
            kills, at = kills + 1, [*at, round(delay, 2)]
            delay *= 1.3
        else:  # it finished first, or as the kill came: kill earlier next time
            assert rc == 0, proc.describe()
            delay *= 0.6
        assert _report(study) == whole, f"try {attempt}: report.md torn"
        for name in plots:
            assert (study / "report" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        if kills == 6:
            break
    assert kills >= 4, (kills, at, duration)
    assert faultkit.parts(study) == parts
    rc, _, err = faultkit.run("report", "results/decoupled", cwd=tmp_path)
    assert rc == 0 and _report(study) == whole, err
    record(
        "driver SIGKILL during the report",
        group="driver kill",
        injected=f"{kills} SIGKILLs of `ltsearch report` at {at} s of its {duration:.1f} s",
        promised="report.md and plots are the last whole ones (atomic writes); no part changed",
        observed=f"after each of {kills} kills report.md was the whole previous report",
        rows_lost=0,
        rows_duplicated=0,
        recover_s=round(duration, 1),
    )
