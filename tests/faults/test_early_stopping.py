"""Early stopping (``search.early_stopping``) end to end, as a user runs it: ``ltsearch run``
of a small end-to-end study with rungs [1, 2] and reduction 2, then the same study with its
driver SIGKILLed mid-study and ``ltsearch resume``d, which must keep every rung decision: no
stopped configuration runs again, the configuration in flight resumes from its checkpoint,
and the study ends equal to the uninterrupted one.

The study trains four configurations (grid order xi = 0.3, 0.5, 0.7, 0.1; one seed, two
epochs of the tiny model at 64 px, masks off) on the fault suite's dataset. On it, at epoch
1, xi = 0.5 is dominated by xi = 0.3 and stopped, xi = 0.7 (a trade-off with 0.3) goes on,
and xi = 0.1, dominated by both, is stopped: the kill comes while xi = 0.7 trains its second
epoch, after a stop was decided, so the resumed driver decides on xi = 0.1 from the rung
records of the killed one.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import faultkit
import pytest
import torch
from records import record

from ltsearch.rung_log import LOG_FILE
from ltsearch.store import ResultStore

pytestmark = [pytest.mark.faults, pytest.mark.slow]
NAME = "moasha"
STUDY = f"""\
name: {NAME}
dataset: {faultkit.DATASET}
model: {{backbone: tiny, masks: false, min_size: 64, max_size: 64}}
training: {{schedule: end_to_end, epochs: 2, lr: 0.02, batch_size: 4, warmup_iters: 4}}
loss: {{name: acsl, params: {{xi: {{grid: [0.3, 0.5, 0.7, 0.1]}}}}}}
search:
  sampler: grid
  objectives: [bbox/AP:max, bbox/APc:max]
  seeds: [0]
  early_stopping: {{rungs: [1, 2], reduction: 2}}
resources: {{workers: 1, cpus_per_worker: 1, max_concurrent_trials: 1}}
storage: results
"""
RUNS_LINE = re.compile(r"runs \(configuration x seed\): (\d+) ok, 0 failed, (\d+) stopped early$")


def _decisions(study: Path) -> list[dict[str, Any]]:
    lines = (study / LOG_FILE).read_text().splitlines() if (study / LOG_FILE).exists() else []
    return [json.loads(line) for line in lines]


def _xi(label: str) -> float:
    found = re.search(r"xi=([0-9.]+)", label)
    assert found, label
    return float(found.group(1))


def _outcomes(study: Path) -> dict[float, tuple[str, Any, dict[str, float]]]:
    """xi -> (status, rung reached, metrics) of each row (seed 0; the config hash covers
    the project's absolute dataset paths, so studies are compared by parameters)."""
    out = {}
    for r in ResultStore(study).trial_rows():
        metrics = {k: v for k, v in r.items() if k.startswith("bbox/")}
        out[r["param.acsl.xi"]] = (r["status"], r.get("rung_epoch"), metrics)
    return out


@pytest.fixture(scope="module")
def straight(fault_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The study run once without a fault."""
    root = tmp_path_factory.mktemp("moasha")
    project = faultkit.new_project(fault_data, root / "project", **{NAME: STUDY})
    t0 = time.monotonic()
    rc, out, err = faultkit.run("run", f"{NAME}.yaml", cwd=project)
    return {"project": project, "study": project / "results" / NAME, "rc": rc, "out": out,
            "err": err, "s": time.monotonic() - t0}  # fmt: skip


def test_a_study_with_early_stopping_stops_configurations_and_exits_0(
    straight: dict[str, Any],
) -> None:
    study = straight["study"]
    assert straight["rc"] == 0, straight["out"][-3000:] + straight["err"][-3000:]
    found = RUNS_LINE.search(straight["out"].strip().splitlines()[-1])
    assert found, straight["out"][-2000:]
    ok, stopped = int(found.group(1)), int(found.group(2))
    assert ok + stopped == 4 and stopped >= 1
    outcomes = _outcomes(study)
    halted = [xi for xi, (status, _, _) in outcomes.items() if status == "stopped"]
    assert len(halted) == stopped and all(outcomes[xi][1] == 1 for xi in halted)
    assert all(outcomes[xi][0] == "ok" and outcomes[xi][1] is None
               for xi in outcomes if xi not in halted)  # fmt: skip
    stops = [d for d in _decisions(study) if d["decision"] == "stop"]
    assert sorted(_xi(d["label"]) for d in stops) == sorted(halted)
    states = faultkit.journal_states(study, NAME)
    assert sorted(states) == sorted(["COMPLETE"] * ok + ["PRUNED"] * stopped)

    rc, status, _ = faultkit.run(
        "status", f"../results/{NAME}", cwd=study.parents[1] / "elsewhere"
    )
    assert rc == 0 and f"4/4 trials, {stopped} pruned, study complete" in status, status
    report = (study / "report.md").read_text()
    section = report.split("## Early stopping (MO-ASHA)", 1)[1]
    assert "Rungs at epochs [1, 2] of 2, reduction 2" in section
    assert section.count("**stopped**") == stopped
    assert f"{4 - stopped} of 4 went on" in section
    assert "## Failed runs" not in report


def _in_flight(study: Path) -> dict[str, Any] | None:
    """The configuration that went on after a stop was decided, while it trains on."""
    log = _decisions(study)
    if not any(d["decision"] == "stop" for d in log) or log[-1]["decision"] != "continue":
        return None
    return log[-1]


def test_driver_kill_keeps_every_rung_decision(
    fault_data: Path, tmp_path: Path, straight: dict[str, Any]
) -> None:
    project = faultkit.new_project(fault_data, tmp_path / "project", **{NAME: STUDY})
    study = project / "results" / NAME
    proc = faultkit.start("run", f"{NAME}.yaml", "--no-report", cwd=project)
    going = faultkit.wait_for(lambda: _in_flight(study), proc, timeout=900, poll=0.01)
    time.sleep(0.3)  # into its second epoch
    killed = faultkit.kill_driver(proc, tree=True)[0]
    decided = _decisions(study)
    chash = going["config_hash"]
    assert not ResultStore(study).run_rows("trials", chash, 0), "killed after it had finished"
    ckpt = study / "runs" / f"{chash}-s0" / "checkpoint.pt"
    assert int(torch.load(ckpt, weights_only=True)["epoch"]) == 1
    stopped = [d["config_hash"] for d in decided if d["decision"] == "stop"]
    before = faultkit.parts(study)

    t0 = time.monotonic()
    rc, out, err = faultkit.run("resume", f"../results/{NAME}", cwd=project / "elsewhere")
    recover_s = time.monotonic() - t0
    assert rc == 0, out[-3000:] + err[-3000:]
    after = _decisions(study)
    assert after[: len(decided)] == decided  # every decision kept, none taken again
    assert len({(d["config_hash"], d["rung"]) for d in after}) == len(after)
    reference = _decisions(straight["study"])
    assert [(d["label"], d["rung"], d["decision"]) for d in after] == [
        (d["label"], d["rung"], d["decision"]) for d in reference
    ]
    parts = faultkit.parts(study)
    for h in stopped:  # not run again: its parts as they were, nothing of it in the log
        assert f"runs/{h}-s0" not in out + err
        assert {k: v for k, v in parts.items() if h in k} == {
            k: v for k, v in before.items() if h in k
        }
    assert f"runs/{chash}-s0/checkpoint.pt at epoch 1" in out  # resumed, not restarted
    got, want = _outcomes(study), _outcomes(straight["study"])
    assert got.keys() == want.keys()
    for xi, (status, rung, metrics) in want.items():
        assert got[xi][:2] == (status, rung), xi
        assert all(abs(got[xi][2][k] - v) <= 1e-6 for k, v in metrics.items()), xi
    assert sorted(faultkit.journal_states(study, NAME)) == sorted(
        faultkit.journal_states(straight["study"], NAME)
    )
    record(
        "driver SIGKILL during early stopping",
        group="driver kill",
        injected=f"SIGKILL of `ltsearch run` and its Ray processes {killed - proc.started:.1f} s "
        f"in, after {len(decided)} rung decisions ({len(stopped)} stop), while a promoted "
        "configuration trained past its rung",
        promised="every rung decision kept; stopped configurations not re-run; the one in "
        "flight resumes from its checkpoint; results equal",
        observed=f"{len(decided)} decisions kept, {len(after) - len(decided)} new; resumed at "
        f"epoch 1; {len(want)} rows equal",
        epochs_redone=0,
        recover_s=round(recover_s, 1),
    )
