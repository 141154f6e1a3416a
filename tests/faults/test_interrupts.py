"""Stopping a running study on purpose: SIGTERM (a scheduler, ``kill``), Ctrl-C (SIGINT to
the terminal's whole foreground process group) and ``ltsearch stop DIR`` from another
terminal. Each stops the trials in flight, leaves them RUNNING in a journal Optuna reads
back, exits 130, and ``ltsearch resume`` then finishes the study equal to an uninterrupted
run, with no finished part rewritten."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import faultkit
import pytest
from records import record

pytestmark = [pytest.mark.faults, pytest.mark.slow]


def _interrupt_and_resume(
    fault_data: Path, tmp_path: Path, reference: dict[str, Any], how: str
) -> dict[str, Any]:
    project = faultkit.new_project(
        fault_data, tmp_path / "project", cache_from=reference["project"]
    )  # stage 1 and the feature cache done: the signal lands among the trials
    study = project / "results" / "decoupled"
    # every loss step sleeps 0.25 s (12 per run: ~3 s a run), so the 7 runs left after the
    # first row take ~20 s more: the stop lands among the trials however fast they become
    slow = {"loss": [{"match": {}, "fault": "slow", "seconds": 0.25}]}
    proc = faultkit.start(
        "run", "decoupled.yaml", "--no-report", cwd=project, session=True, inject=slow
    )
    faultkit.wait_for(lambda: list((study / "trials").glob("*.parquet")), proc, timeout=900)
    t0 = time.monotonic()
    stop_out = ""
    if how == "SIGTERM":
        proc.signal(signal.SIGTERM)
    elif how == "SIGINT":
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    else:
        rc, stop_out, err = faultkit.run(
            "stop", "../results/decoupled", "--timeout", "180", cwd=project / "elsewhere"
        )
        assert rc == 0 and "stopped" in stop_out and "ltsearch resume" in stop_out, err
        assert f"pid {proc.pid}" in stop_out, stop_out
    rc = proc.wait(300)
    stop_s = time.monotonic() - t0
    out, err = proc.text()
    assert rc == 130, proc.describe()
    assert "Traceback" not in err, proc.describe()
    assert "ltsearch resume" in err, proc.describe()
    states = faultkit.journal_states(study, "decoupled")  # Optuna reads it: consistent
    assert "FAIL" not in states and states.count("COMPLETE") < 4, states
    before = faultkit.parts(study)
    rows_at_stop = sum(k.startswith("trials/") for k in before)

    t1 = time.monotonic()
    rc, out, err = faultkit.run("resume", "results/decoupled", "--no-report", cwd=project)
    assert rc == 0, out[-3000:] + err[-3000:]
    recover_s = time.monotonic() - t1
    after = faultkit.parts(study)
    assert {k: after.get(k) for k in before} == before
    cmp = faultkit.compare(study, reference["decoupled"])
    assert not cmp.problems(), cmp
    assert faultkit.journal_states(study, "decoupled") == ["COMPLETE"] * 4
    return {
        "states": states,
        "rows_at_stop": rows_at_stop,
        "stop_s": round(stop_s, 1),
        "recover_s": round(recover_s, 1),
        "stop_out": stop_out.strip(),
        **cmp.figures(),
    }


@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT"])
def test_a_signal_stops_cleanly_and_resume_finishes(
    fault_data: Path, tmp_path: Path, reference: dict[str, Any], how: str
) -> None:
    got = _interrupt_and_resume(fault_data, tmp_path, reference, how)
    states = got.pop("states")
    record(
        f"{how} of the driver" + (" (Ctrl-C, to the process group)" if how == "SIGINT" else ""),
        group="interrupt",
        injected=f"{how} once a first row was written"
        + (": to the whole foreground process group" if how == "SIGINT" else ""),
        promised="trials in flight stop and stay resumable; journal consistent; exit 130; "
        "resume finishes with results equal",
        observed=f"exit 130 after {got['stop_s']} s; journal {states}; resume equal",
        **{k: v for k, v in got.items() if k != "stop_out"},
    )


def test_ltsearch_stop_from_another_terminal(
    fault_data: Path, tmp_path: Path, reference: dict[str, Any]
) -> None:
    got = _interrupt_and_resume(fault_data, tmp_path, reference, "stop")
    got.pop("states")
    record(
        "`ltsearch stop DIR` from another terminal",
        group="interrupt",
        injected="`ltsearch stop ../results/decoupled` from another working directory",
        promised="the driver stops as on SIGTERM (exit 130); stop waits for it and exits 0",
        observed=got.pop("stop_out")[:160],
        **got,
    )
