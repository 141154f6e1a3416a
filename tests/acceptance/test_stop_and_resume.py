"""Stopping a study the ways users do, through the CLI: SIGTERM (what a scheduler or
``kill`` sends) mid-run exits 130 and ``ltsearch resume`` finishes the study with every
(configuration, seed) once; a study whose data is broken stops after the first
``search.max_failures`` trials with one message naming the error, and exits 1 (with
``--check-data`` it is one line and exit 2 before anything starts).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from study_checks import check_results
from workspace import TAIL, cli_env, run_cli

from ltsearch.store import ResultStore

pytestmark = [pytest.mark.acceptance, pytest.mark.slow]

NAME = "stop-me"
SEEDS = [0, 1]
STUDY = f"""\
name: {NAME}
dataset: {{kind: lvis, train: data/lvis_synth_train.json, val: data/lvis_synth_val.json,
          images: data}}
model: {{backbone: tiny, masks: true}}
# end to end, so that a run takes seconds (a cached stage 2 takes less than the 0.5 s the
# test polls at) and runs are still in flight when the SIGTERM comes
training: {{schedule: end_to_end, epochs: 1, lr: 0.02, batch_size: 2, warmup_iters: 2}}
loss: {{name: acsl, params: {{xi: {{grid: [0.1, 0.3, 0.5, 0.7]}}}}}}
search: {{sampler: grid, objectives: [bbox/AP:max], seeds: {SEEDS}, max_failures: 2}}
resources: {{workers: 1, cpus_per_worker: 1, max_concurrent_trials: 1}}
storage: results
"""
CONFIGURATIONS = 4


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("stop") / "project"
    root.mkdir()
    (root / "study.yaml").write_text(STUDY)
    synth = ("--classes", "4", "--train-images", "8", "--val-images", "4")
    ran = run_cli("data", "synth", "--out", "data", *synth, cwd=root, timeout=300)
    assert ran.rc == 0, ran.describe()
    return root


def test_sigterm_exits_130_and_resume_finishes_the_study(project: Path) -> None:
    study_dir = project / "results" / NAME
    proc = subprocess.Popen(
        ["ltsearch", "run", "study.yaml"], cwd=project, env=cli_env(),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:  # until a first row lands
        if list((study_dir / "trials").glob("*.parquet")):
            break
        time.sleep(0.5)
    assert proc.poll() is None, "the study ended before it could be interrupted"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    tail = f"--- stdout ---\n{out[-TAIL:]}\n--- stderr ---\n{err[-TAIL:]}"
    assert proc.returncode == 130, tail
    assert "SIGTERM received" in err and f"ltsearch resume {study_dir}" in err, tail
    rows = ResultStore(study_dir).load_trials()
    assert 0 < len(rows) < CONFIGURATIONS * len(SEEDS) and (rows["status"] == "ok").all(), rows

    resumed = run_cli("resume", os.path.relpath(study_dir, project / "data"), cwd=project / "data")
    assert resumed.rc == 0, resumed.describe()
    problems = check_results(study_dir, name=NAME, trials=CONFIGURATIONS, seeds=SEEDS)
    assert not problems, "\n".join(problems) + "\n" + resumed.describe()


def test_a_systematic_error_stops_the_study_with_one_message(project: Path) -> None:
    broken = project / "broken"
    (broken / "empty").mkdir(parents=True)  # exists (checked before a start), holds no image
    (broken / "study.yaml").write_text(
        STUDY.replace(f"name: {NAME}", "name: broken").replace("data/", "../data/")
        .replace("images: data", "images: empty")
    )  # fmt: skip
    checked = run_cli("run", "study.yaml", "--check-data", cwd=broken)  # reads the data first
    assert checked.rc == 2 and "file not found" in checked.err, checked.describe()
    assert len(checked.err.strip().splitlines()) == 1, checked.describe()
    assert not (broken / "results").exists(), "run --check-data wrote before it checked"

    ran = run_cli("run", "study.yaml", cwd=broken)  # without: each trial meets the error
    assert ran.rc == 1, ran.describe()
    assert "stopped: the first 2 trials failed with the same error" in ran.out, ran.describe()
    assert ran.out.count("trial log: ") == 1, ran.describe()
    rows = ResultStore(broken / "results" / "broken").load_trials()
    assert len(rows) <= 3 and (rows["status"] == "failed").all(), rows  # not all 8 runs
    last = ran.out.strip().splitlines()[-1]
    assert "failed" in last and "ltsearch status" in last, ran.describe()
