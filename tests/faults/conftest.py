"""Fault suite (``-m faults``): real faults injected into real runs, see RELIABILITY.md.

Helpers shared by the cases live in :mod:`records` (what a case observed), :mod:`faultkit`
(studies, the CLI in the background, comparison with an uninterrupted run) and the
acceptance tests' :mod:`workspace` (the CLI as a user runs it).

Session fixtures: :func:`fault_data`, the small dataset every case copies, and
:func:`reference`, each study of :mod:`faultkit` run once without a fault, with ``ltsearch
status`` and ``report`` reading it and a second driver trying to start while it runs
(what :mod:`test_concurrency` checks).
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))  # records, faultkit
sys.path.insert(0, str(HERE.parent / "acceptance"))  # workspace, study_checks

import faultkit  # noqa: E402


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh ``ltsearch data synth`` dataset (:data:`bad_project.SYNTH`) that the
    bad-input cases copy into their projects."""
    from bad_project import SYNTH
    from workspace import run_cli

    root = tmp_path_factory.mktemp("pristine")
    ran = run_cli("data", "synth", "--out", "data", *SYNTH, cwd=root, timeout=300)
    assert ran.rc == 0, ran.describe()
    return root / "data"


@pytest.fixture(scope="session")
def fault_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return faultkit.make_data(tmp_path_factory.mktemp("fault-data"))


@pytest.fixture(autouse=True)
def _reap_ray_orphans() -> Any:
    before = faultkit.ray_processes()
    yield
    faultkit.reap_orphans(before)


def _read_while_running(project: Path, proc: faultkit.Proc, seen: dict[str, Any]) -> None:
    """``ltsearch status`` and ``report`` of the study, over and over, while it runs."""
    study = "results/decoupled"
    while proc.alive():
        for cmd in (("status", study), ("report", study)):
            if not (project / study / "spec.yaml").exists():
                continue
            rc, out, err = faultkit.run(*cmd, cwd=project, timeout=300)
            seen["reads"].append((cmd[0], rc, err.strip()[-500:], time.monotonic()))
        time.sleep(0.2)


@pytest.fixture(scope="session")
def reference(fault_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Each study run once, uninterrupted: ``{"decoupled": dir, "e2e": dir, ...}`` plus what
    the concurrent readers and the second driver saw."""
    project = faultkit.new_project(fault_data, tmp_path_factory.mktemp("reference") / "p")
    out: dict[str, Any] = {"project": project, "reads": []}
    proc = faultkit.start("run", "decoupled.yaml", "--no-report", cwd=project)
    reader = threading.Thread(target=_read_while_running, args=(project, proc, out))
    reader.start()
    faultkit.wait_for(lambda: list((project / "results/decoupled/trials").glob("*.parquet")), proc)
    out["second_driver"] = faultkit.run("run", "decoupled.yaml", cwd=project, timeout=300)
    out["second_driver_pid"] = proc.pid
    rc = proc.wait()
    reader.join()
    assert rc == 0, proc.describe()
    out["decoupled"] = project / "results" / "decoupled"
    t0 = time.monotonic()
    rc, o, e = faultkit.run("run", "e2e.yaml", "--no-report", cwd=project)
    assert rc == 0, o[-3000:] + e[-3000:]
    out["e2e"] = project / "results" / "e2e"
    out["e2e_s"] = time.monotonic() - t0
    return out
