"""A study with relative paths, run from a directory that is not the study file's.

Rules (README "Writing a study"): dataset paths are relative to the study file's own
directory, ``storage`` to the directory the command runs in. The layout::

    project/studies/tiny_lvis.yaml      dataset: data/...   storage: results
    project/studies/data/               ltsearch data synth --out data (LVIS format)
    project/work/                       ltsearch run ../studies/tiny_lvis.yaml
    project/work/results/tiny-lvis/     where the results must land
    project/third/                      ltsearch resume ../work/results/tiny-lvis

Not ``--smoke``: it would replace the dataset with the embedded one.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from study_checks import check_results, snapshot
from workspace import run_cli

from ltsearch.store import ResultStore

pytestmark = [pytest.mark.acceptance, pytest.mark.slow]

NAME = "tiny-lvis"
SEEDS = [0, 1]
STUDY = f"""\
name: {NAME}
dataset:
  kind: lvis
  train: data/lvis_synth_train.json
  val: data/lvis_synth_val.json
  images: data
model: {{backbone: tiny, masks: true}}
training:
  schedule: decoupled
  stage1: {{loss: ce, epochs: 1, lr: 0.02, batch_size: 2, warmup_iters: 2}}
  stage2: {{epochs: 1, lr: 0.01, batch_size: 2, warmup_iters: 2, finetune: [box_predictor]}}
loss: {{choice: [{{name: ce}}, {{name: acsl, params: {{xi: 0.7}}}}]}}
search: {{sampler: grid, objectives: [bbox/AP:max, bbox/APr:max], seeds: {SEEDS}}}
resources: {{workers: 1, cpus_per_worker: 1, max_concurrent_trials: 1}}
storage: results
"""
CONFIGURATIONS = 2  # the grid: ce, acsl(xi=0.7)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("relative") / "project"
    studies = root / "studies"
    studies.mkdir(parents=True)
    (studies / "tiny_lvis.yaml").write_text(STUDY)
    synth = ("--classes", "4", "--train-images", "8", "--val-images", "4")
    ran = run_cli("data", "synth", "--out", "data", *synth, cwd=studies, timeout=300)
    assert ran.rc == 0, ran.describe()
    for cwd in ("work", "third"):
        (root / cwd).mkdir()
    return root


def test_run_and_resume_from_other_directories(project: Path) -> None:
    work, third = project / "work", project / "third"
    study = os.path.relpath(project / "studies" / "tiny_lvis.yaml", work)

    checked = run_cli("validate", study, "--check-data", cwd=work, timeout=300)
    assert checked.rc == 0, checked.describe()

    ran = run_cli("run", study, cwd=work)
    assert ran.rc == 0, ran.describe()
    study_dir = work / "results" / NAME
    assert (study_dir / "spec.yaml").is_file(), f"no results in {study_dir}\n{ran.describe()}"
    problems = check_results(study_dir, name=NAME, trials=CONFIGURATIONS, seeds=SEEDS)
    assert not problems, "\n".join(problems) + "\n" + ran.describe()

    spec = yaml.safe_load((study_dir / "spec.yaml").read_text())
    data = project / "studies" / "data"
    expected = {
        "storage": work / "results",
        "train": data / "lvis_synth_train.json",
        "val": data / "lvis_synth_val.json",
        "images": data,
    }
    written = {"storage": spec["storage"], **{k: spec["dataset"][k] for k in list(expected)[1:]}}
    for key, value in written.items():
        assert os.path.isabs(value), f"spec.yaml {key}: {value!r} is relative"
        assert os.path.realpath(value) == os.path.realpath(expected[key]), (key, value)

    before = snapshot(study_dir)
    resumed = run_cli("resume", os.path.relpath(study_dir, third), cwd=third)
    assert resumed.rc == 0, resumed.describe()
    rows = ResultStore(study_dir).load_trials()
    runs = rows.groupby(["config_hash", "seed"]).size()
    assert len(runs) == CONFIGURATIONS * len(SEEDS) and (runs == 1).all(), runs
    assert (rows["status"] == "ok").all(), rows[["loss", "seed", "status", "error"]]
    after = snapshot(study_dir)
    changed = sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))
    assert not changed, f"resume of a finished study changed {changed}\n{resumed.describe()}"
    assert not (third / "results").exists(), "resume wrote under its working directory"
