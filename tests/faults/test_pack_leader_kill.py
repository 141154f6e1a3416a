"""SIGKILL of the process that trains a pack (``resources.pack``): the leader's trial is
retried, its pack is dissolved, the members that waited on it train alone, and the study
ends with every (configuration, seed) once, ok, equal to the unpacked reference.

The decoupled fault study with ``pack: 3`` on 3 concurrent trials, starting from the
reference's stage 1 and feature cache. Every loss sleeps 0.1 s a step (the ``slow`` fault:
the values are the right ones), so a pack of 3 trains for seconds; the injector's
``pack_lead`` marker names the leader's pid and its members as the pack starts.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import faultkit
import pytest
from records import record

from ltsearch.store import ResultStore

pytestmark = [pytest.mark.faults, pytest.mark.slow]
PACKED = (
    "--set", "resources.max_concurrent_trials=3", "--set", "resources.pack=3",
    "--set", "resources.build_threads=1",
)  # fmt: skip


def _first_pack(marker: Path) -> dict[str, Any] | None:
    try:
        line = marker.read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    return json.loads(line)


def test_a_killed_pack_leader_is_retried_and_its_members_run_alone(
    fault_data: Path, tmp_path: Path, reference: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    project = faultkit.new_project(
        fault_data, tmp_path / "project", cache_from=reference["project"]
    )
    marker = tmp_path / "packs.jsonl"
    inject = {"loss": [{"match": {}, "fault": "slow", "seconds": 0.1}],
              "pack_lead": {"marker": str(marker)}}  # fmt: skip
    monkeypatch.setenv("LTSEARCH_PACK_WAIT_S", "300")  # groups fill however slow the start
    proc = faultkit.start(
        "run", "decoupled.yaml", "--no-report", *PACKED, cwd=project,
        inject=inject,
    )  # fmt: skip
    pack = faultkit.wait_for(lambda: _first_pack(marker), proc, timeout=900)
    time.sleep(0.3)  # into its training
    t_kill = time.monotonic()
    faultkit.os.kill(pack["pid"], signal.SIGKILL)
    rc = proc.wait(900)
    recover_s = time.monotonic() - t_kill
    out, _ = proc.text()
    assert rc == 0, proc.describe()
    assert "[retry 1]" in out, proc.describe()
    study = project / "results" / "decoupled"
    cmp = faultkit.compare(study, reference["decoupled"])
    assert not cmp.problems(), cmp
    rows = ResultStore(study).load_trials()
    assert len(rows) == 8 and (rows["status"] == "ok").all()
    waiting = pack["members"][1:]  # the leader's is first
    assert waiting, pack
    for params, seed in waiting:  # they ran alone once the pack was dissolved
        row = rows[(rows["param.acsl.xi"] == params["xi"]) & (rows["seed"] == seed)]
        assert len(row) == 1, (params, seed)
        assert int(row["pack_size"].iloc[0]) == 1 and row["pack_id"].isna().all(), row
    later = [json.loads(x) for x in marker.read_text().splitlines()[1:]]
    for p in later:  # no waiting member of the killed pack was trained in a pack again
        assert not any(m in waiting for m in p["members"]), (p, waiting)
    assert faultkit.journal_states(study, "decoupled") == ["COMPLETE"] * 4
    record(
        "pack leader SIGKILL mid-pack",
        group="worker kill",
        injected=f"SIGKILL of the process training a pack of {len(pack['members'])} "
        f"(pid {pack['pid']}) of a decoupled study with pack: 3",
        promised="the leader's trial is retried and its pack dissolved; the members that "
        "waited on it train alone; every row equals the unpacked reference",
        observed=f"retried once; {len(waiting)} waiting member(s) ran alone; "
        f"{cmp.rows_compared} rows equal",
        recover_s=round(recover_s, 1),
        packs_after=len(later),
        **{k: v for k, v in cmp.figures().items() if k != "rows_compared"},
        rows_compared=cmp.rows_compared,
    )
