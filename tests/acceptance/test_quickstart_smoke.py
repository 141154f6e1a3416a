"""The quickstart as a user meets it: ``ltsearch run studies/quickstart.yaml --smoke`` in a
fresh checkout, the study's own relative ``storage: runs``, then ``status``, ``report`` and
``resume`` from another working directory with a relative path to the study directory.

Assertions are on results, not exit codes alone: one ok parquet row per (distinct
configuration, seed) of the Optuna journal and no failed row; a report.md whose Pareto
table matches the parquet's means, and a Pareto plot (drawn on bbox/APr x bbox/AP: the
smoke data has no frequent class, so the default axes' APf is undefined); ``resume`` of
the finished study runs nothing (parts, journal and Ray Tune's files byte- and
mtime-identical).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from study_checks import check_report, check_results, snapshot
from workspace import Ran, SmokeRun, run_cli

from ltsearch.store import ResultStore

pytestmark = [pytest.mark.acceptance, pytest.mark.slow]


def _elsewhere(smoke: SmokeRun) -> tuple[Path, str]:
    """A working directory outside the checkout, and the study directory relative to it."""
    cwd = smoke.root.parent / "elsewhere"
    cwd.mkdir(exist_ok=True)
    return cwd, os.path.relpath(smoke.study_dir, cwd)


def test_smoke_run_stores_ok_rows(smoke_run: SmokeRun) -> None:
    assert smoke_run.ran.rc == 0, smoke_run.ran.describe()
    assert (smoke_run.study_dir / "spec.yaml").is_file(), (
        f"no study directory at <copy>/runs/{smoke_run.name}: `storage: runs` must be "
        f"relative to the directory the command ran in\n{smoke_run.ran.describe()}"
    )
    problems = check_results(
        smoke_run.study_dir, name=smoke_run.name, trials=smoke_run.trials, seeds=smoke_run.seeds
    )
    assert not problems, "\n".join(problems) + "\n" + smoke_run.ran.describe()


def test_smoke_run_prints_plain_timestamped_progress(smoke_run: SmokeRun) -> None:
    """Output that is not a terminal (a pipe here, CI logs, ``ray job submit``) gets the
    live view as plain timestamped lines, no terminal control codes. (Which phases show
    depends on how long each lasts against the 10 s between lines: the phases in a pipe
    are checked in test_live_progress, whose watcher prints every change.)"""
    lines = re.findall(
        rf"^\[\d\d:\d\d:\d\d\] {smoke_run.name}: (\d+)/(\d+) trials", smoke_run.ran.out, re.M
    )
    assert lines, smoke_run.ran.describe()
    assert all(int(total) == smoke_run.trials for _, total in lines)
    assert "\x1b[J" not in smoke_run.ran.out  # no redraw (Ray colours its own prefixes)


def test_status_from_another_directory(smoke_run: SmokeRun) -> None:
    assert smoke_run.ran.rc == 0, smoke_run.ran.describe()
    cwd, rel = _elsewhere(smoke_run)
    ran = run_cli("status", rel, cwd=cwd, timeout=300)
    assert ran.rc == 0, ran.describe()
    assert smoke_run.name in ran.out, ran.describe()
    rows = ResultStore(smoke_run.study_dir).load_trials()
    runs = int((rows["status"] == "ok").sum()) if not rows.empty else 0
    assert runs > 0, "no ok row to report"
    ok = re.search(r"\b(\d+) ok\b", ran.out)
    assert ok is not None and int(ok[1]) == runs, f"expected '{runs} ok'\n{ran.describe()}"
    failed = re.search(r"\b(\d+) failed\b", ran.out)
    assert failed is None or int(failed[1]) == 0, ran.describe()


def _report(smoke: SmokeRun, *axes: str) -> Ran:
    """``ltsearch report <relative study dir> [axes]`` from elsewhere, over no old report."""
    (smoke.study_dir / "report.md").unlink(missing_ok=True)  # the run wrote one
    shutil.rmtree(smoke.study_dir / "report", ignore_errors=True)
    cwd, rel = _elsewhere(smoke)
    return run_cli("report", rel, *axes, cwd=cwd, timeout=300)


def test_report_from_another_directory_matches_parquet(smoke_run: SmokeRun) -> None:
    assert smoke_run.ran.rc == 0, smoke_run.ran.describe()
    ran = _report(smoke_run)
    assert ran.rc == 0, ran.describe()
    problems = check_report(smoke_run.study_dir, smoke_run.objectives)
    assert not problems, "\n".join(problems) + "\n" + ran.describe()


def test_report_draws_the_pareto_plot(smoke_run: SmokeRun) -> None:
    """The smoke data has no frequent class (APf, the second objective, is undefined), so
    the plot is asked for on two metrics it defines."""
    assert smoke_run.ran.rc == 0, smoke_run.ran.describe()
    ran = _report(smoke_run, "--x", "bbox/APr", "--y", "bbox/AP")
    assert ran.rc == 0, ran.describe()
    problems = check_report(smoke_run.study_dir, smoke_run.objectives, require_plot=True)
    assert not problems, "\n".join(problems) + "\n" + ran.describe()


def test_resume_of_a_finished_study_runs_nothing(smoke_run: SmokeRun) -> None:
    assert smoke_run.ran.rc == 0, smoke_run.ran.describe()
    cwd, rel = _elsewhere(smoke_run)
    before = snapshot(smoke_run.study_dir)
    assert any(p.startswith("trials/") for p in before), "no trial part to compare"
    ran = run_cli("resume", rel, cwd=cwd)
    assert ran.rc == 0, ran.describe()
    after = snapshot(smoke_run.study_dir)
    changed = sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))
    assert not changed, f"resume changed {changed}\n{ran.describe()}"
    assert not (cwd / "runs").exists(), "resume wrote under its working directory"
