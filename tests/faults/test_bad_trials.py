"""Trials that go wrong on their own: a loss that raises, a NaN loss, a MemoryError, a run
that hangs (``search.trial_timeout``). Each is a failed row naming its error, recorded once
(never retried: a run is deterministic for its seed), Optuna marks its trial FAIL, and the
study goes on with the others. A failure that every trial meets stops the study early
(``search.max_failures``)."""

from __future__ import annotations

import time
from pathlib import Path

import faultkit
import pytest
from records import record

pytestmark = [pytest.mark.faults, pytest.mark.slow]
# a healthy one-epoch run takes a few seconds alone, but more than 25 s (the earlier limit)
# on a 2-core CI while another fault test's Ray cluster runs beside it (Dec 7: two healthy
# runs timed out): the limit must sit well above that, the hang still ends at it
TIMEOUT = 75
STUDY = f"""\
name: bad
dataset: {faultkit.DATASET}
model: {{backbone: tiny, masks: false}}
training: {{schedule: end_to_end, epochs: 1, lr: 0.02, batch_size: 4, warmup_iters: 4}}
loss: {{name: acsl, params: {{xi: {{grid: [0.1, 0.2, 0.3, 0.5, 0.7, 0.9]}}}}}}
search: {{sampler: grid, objectives: [bbox/AP:max], seeds: [0], trial_timeout: {TIMEOUT}}}
resources: {{workers: 1, cpus_per_worker: 1, max_concurrent_trials: 2}}
storage: results
"""
FAULTS = {0.1: "raise", 0.3: "nan", 0.5: "memory", 0.7: "hang"}
EXPECTED = {
    "raise": "RuntimeError: injected fault: the loss raised",
    "nan": "NonFiniteLossError: non-finite loss",
    "memory": "MemoryError",
    "hang": f"TrialTimeout: the run took longer than search.trial_timeout = {TIMEOUT} s",
}


def test_each_bad_trial_is_a_failed_row_and_the_study_goes_on(
    fault_data: Path, tmp_path: Path
) -> None:
    project = faultkit.new_project(fault_data, tmp_path / "project", bad=STUDY)
    inject = {"loss": [{"match": {"xi": xi}, "fault": f} for xi, f in FAULTS.items()]}
    t0 = time.monotonic()
    rc, out, err = faultkit.run("run", "bad.yaml", "--no-report", cwd=project, inject=inject)
    wall = time.monotonic() - t0
    assert rc == 1, out[-3000:] + err[-3000:]
    assert "6/6 trials, 4 failed, study complete" in out.splitlines()[-1], out[-2000:]
    study = project / "results" / "bad"
    rows = faultkit.read_rows(study)
    assert len(rows) == 6 and not rows.duplicated(["config_hash", "seed"]).any()
    for xi, fault in FAULTS.items():
        row = rows[rows["param.acsl.xi"] == xi].iloc[0]
        assert row["status"] == "failed" and EXPECTED[fault] in row["error"], (xi, row["error"])
    assert (rows[~rows["param.acsl.xi"].isin(list(FAULTS))]["status"] == "ok").all()
    states = faultkit.journal_states(study, "bad")
    assert sorted(states) == ["COMPLETE"] * 2 + ["FAIL"] * 4, states
    # an error raised by a run is not retried; only the timeout ends the process (one
    # retry, which reads the recorded failure back instead of hanging again)
    assert out.count("[retry ") == 1, out[-3000:]
    for fault in FAULTS.values():
        record(
            f"bad trial: {fault}",
            group="bad trials",
            injected={
                "raise": "the loss raises RuntimeError in its forward pass",
                "nan": "the loss returns NaN",
                "memory": "the loss allocates 1 PiB (a real MemoryError)",
                "hang": f"the loss never returns; search.trial_timeout: {TIMEOUT}",
            }[fault],
            promised="a failed row with its error, Optuna FAIL, the study goes on",
            observed=f"failed row: {EXPECTED[fault]}; the other trials ran (2 ok)",
            rows_compared=6,
            rows_lost=0,
            rows_duplicated=0,
            study_wall_s=round(wall, 1),
        )


def test_a_systematic_failure_stops_the_study_early(fault_data: Path, tmp_path: Path) -> None:
    project = faultkit.new_project(fault_data, tmp_path / "project", bad=STUDY)
    inject = {"loss": [{"match": {}, "fault": "raise"}]}
    rc, out, err = faultkit.run("run", "bad.yaml", "--no-report", cwd=project, inject=inject)
    assert rc == 1, out[-3000:] + err[-3000:]
    assert "stopped: the first 3 trials failed with the same error" in out, out[-3000:]
    assert out.count("injected fault: the loss raised") <= 6, out[-3000:]
    rows = faultkit.read_rows(project / "results" / "bad")
    assert 3 <= len(rows) <= 4 and (rows["status"] == "failed").all(), rows
    record(
        "systematic failure",
        group="bad trials",
        injected="every trial's loss raises",
        promised="stops after search.max_failures (3) alike failures, one message, exit 1",
        observed=f"stopped after {len(rows)} of 6 trials (2 run at once), exit 1",
        trials_run=len(rows),
        rows_lost=0,
        rows_duplicated=0,
    )
