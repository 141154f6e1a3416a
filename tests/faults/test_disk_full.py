"""Disk full: the study's storage on a real small filesystem (a tmpfs of a few MB) that
fills up during the run. The study stops with one clear message and exit 1, no
half-written part is visible to readers, the run the full disk cut short is left to
``resume`` (not recorded as failed), and after space is freed ``ltsearch resume`` finishes
the study equal to an uninterrupted run.

Where the machine does not allow a mount (no CAP_SYS_ADMIN), ENOSPC is injected at the
atomic-write call instead (:mod:`tests.faults.inject.sitecustomize`); the record says which.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import faultkit
import pytest
from records import record

pytestmark = [pytest.mark.faults, pytest.mark.slow]
SMALL_MB = 6  # the data lives elsewhere; stage 1's checkpoints and the cache (~15 MB) do not fit


def _mount(path: Path, mb: int) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    ran = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={mb}m", "tmpfs", str(path)],
        capture_output=True, text=True,
    )  # fmt: skip
    return ran.returncode == 0


@pytest.fixture
def small_storage(fault_data: Path, tmp_path: Path) -> Iterator[dict[str, Any]]:
    project = faultkit.new_project(fault_data, tmp_path / "project")
    storage = project / "results"
    mounted = _mount(storage, SMALL_MB)
    try:
        yield {"project": project, "storage": storage, "mounted": mounted}
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(storage)], check=False)


def test_a_full_disk_stops_the_study_and_resume_finishes_it(
    small_storage: dict[str, Any], reference: dict[str, Any]
) -> None:
    project, storage = small_storage["project"], small_storage["storage"]
    mounted = small_storage["mounted"]
    inject = None if mounted else {"enospc": {"match": str(storage), "after": 6}}
    rc, out, err = faultkit.run("run", "decoupled.yaml", "--no-report", cwd=project, inject=inject)
    assert rc == 1, out[-3000:] + err[-3000:]
    text = out + err
    assert "Traceback" not in text, text[-4000:]
    assert "the storage is full" in text and "No space left on device" in text, text[-3000:]
    assert "ltsearch resume" in text, text[-3000:]
    message = next(ln for ln in text.splitlines() if "the storage is full" in ln).strip()
    study = storage / "decoupled"
    assert not faultkit.hidden_temporaries(study)
    rows = faultkit.read_rows(study) if (study / "trials").is_dir() else None
    rows_at_full = 0 if rows is None else len(rows)
    assert rows is None or (rows["status"] == "ok").all(), rows  # not recorded as failed
    states = faultkit.journal_states(study, "decoupled")
    assert "FAIL" not in states, states

    if mounted:  # free space: grow the filesystem
        subprocess.run(["mount", "-o", "remount,size=64m", str(storage)], check=True)
    t0 = time.monotonic()
    rc, out, err = faultkit.run("resume", "results/decoupled", "--no-report", cwd=project)
    recover_s = time.monotonic() - t0
    assert rc == 0, out[-3000:] + err[-3000:]
    cmp = faultkit.compare(study, reference["decoupled"])
    assert not cmp.problems(), cmp
    assert faultkit.journal_states(study, "decoupled") == ["COMPLETE"] * 4
    how = f"a {SMALL_MB} MB tmpfs as storage" if mounted else "ENOSPC injected at write"
    record(
        "disk full",
        group="disk full",
        injected=f"{how}; it fills during the run",
        promised="one clear message, exit 1, no half-written part visible, the cut-short "
        "run not recorded as failed; resume after space is freed finishes the study",
        observed=f"{message[:120]}; {rows_at_full} rows whole, none failed; journal "
        f"{states}; resume equal",
        mount=mounted,
        recover_s=round(recover_s, 1),
        **cmp.figures(),
    )
