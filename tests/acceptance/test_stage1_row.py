"""``training.stage1.evaluate`` through the CLI: a decoupled study on tiny LVIS-format data,
run from another directory, stores one stage-1 row with bbox and segm metrics, shows it in
the report's tables, and ``ltsearch resume`` neither duplicates it nor reruns it; a study
whose stage-1 row was lost gets it back from ``resume`` without rerunning a trial."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from study_checks import check_report, check_results, snapshot
from workspace import run_cli

from ltsearch.store import ResultStore

pytestmark = [pytest.mark.acceptance, pytest.mark.slow]

NAME = "tiny-stage1"
OBJECTIVES = ["bbox/AP:max", "segm/AP:max"]
STUDY = f"""\
name: {NAME}
dataset: {{kind: lvis, train: data/lvis_synth_train.json, val: data/lvis_synth_val.json,
  images: data}}
model: {{backbone: tiny, masks: true}}
training:
  schedule: decoupled
  stage1: {{loss: ce, epochs: 1, lr: 0.02, batch_size: 2, warmup_iters: 2, evaluate: true}}
  stage2: {{epochs: 1, lr: 0.01, batch_size: 2, warmup_iters: 2, finetune: [box_predictor],
    full_eval: true}}
loss: {{name: acsl, params: {{xi: {{grid: [0.3, 0.7]}}}}}}
search: {{sampler: grid, objectives: {OBJECTIVES}, seeds: [0]}}
resources: {{workers: 1, cpus_per_worker: 1, max_concurrent_trials: 1}}
storage: results
reference:
  source: ACSL Table 2
  rows:
    - {{baseline: stage1, AP: 21.18, APr: 4.3, APc: 20.09, APf: 29.28}}
    - {{xi: 0.7, AP: 26.36, APr: 18.64, APc: 26.41, APf: 29.37}}
"""


def _stage1_rows(study_dir: Path):
    df = ResultStore(study_dir).load_trials()
    return df, df[df["loss"] == "stage1"]


def test_stage1_row_once_in_parquet_and_report(tmp_path: Path) -> None:
    studies, work, third = tmp_path / "studies", tmp_path / "work", tmp_path / "third"
    for d in (studies, work, third):
        d.mkdir()
    (studies / "tiny.yaml").write_text(STUDY)
    synth = ("--classes", "4", "--train-images", "8", "--val-images", "4")
    made = run_cli("data", "synth", "--out", "data", *synth, cwd=studies, timeout=300)
    assert made.rc == 0, made.describe()

    ran = run_cli("run", os.path.relpath(studies / "tiny.yaml", work), cwd=work)
    assert ran.rc == 0, ran.describe()
    assert "[baseline] stage 1 only (ce): bbox/AP" in ran.out, ran.describe()
    assert "; stage 1 only: ok" in ran.out.splitlines()[-1], ran.describe()
    study_dir = work / "results" / NAME
    problems = check_results(study_dir, name=NAME, trials=2, seeds=[0])  # the search's rows
    problems += check_report(study_dir, OBJECTIVES)
    assert not problems, "\n".join(problems) + "\n" + ran.describe()
    df, base = _stage1_rows(study_dir)
    assert len(df) == 3 and len(base) == 1, df[["loss", "config_hash", "status"]]
    row = base.iloc[0]
    assert row["baseline"] == "stage1" and row["stage1_loss"] == "ce" and row["status"] == "ok"
    assert str(row["config_hash"]).startswith("stage1-")
    for metric in ("bbox/AP", "segm/AP"):
        assert 0 <= row[metric] <= 1, (metric, row[metric])
    for metric in ("bbox/APr", "bbox/APf", "segm/APr", "segm/APf"):  # -1: no such class here
        assert row[metric] == -1 or 0 <= row[metric] <= 1, (metric, row[metric])
    cats = ResultStore(study_dir).load_categories()
    assert set(cats[cats["trial_id"] == row["trial_id"]]["iou_type"]) == {"bbox", "segm"}

    report = (study_dir / "report.md").read_text()
    ap = f"{100 * row['bbox/AP']:.1f}"
    assert f"| baseline | stage1 | stage 1 only (ce) | 1 | {ap} " in report
    assert f"| stage 1 only (ce) | stage1 stage 1 only (ce) | 1 | 21.2 \\| {ap} (" in report
    assert report.count("stage 1 only (ce)") == 4  # front, groups, ablation (name and match)
    html = (study_dir / "report.html").read_text(encoding="utf-8")
    assert '<tr class="baseline">' in html and '"name":"stage 1 only"' in html

    before = snapshot(study_dir)
    resumed = run_cli("resume", os.path.relpath(study_dir, third), cwd=third)
    assert resumed.rc == 0, resumed.describe()
    assert "[baseline]" not in resumed.out, resumed.describe()
    assert snapshot(study_dir) == before, "resume of a finished study changed its results"
    assert len(_stage1_rows(study_dir)[1]) == 1

    # a study whose stage-1 row was lost (say its driver was killed while evaluating it and
    # the trials were run by a later driver): resume evaluates it again, and runs no trial
    part = study_dir / "trials" / f"part-{row['trial_id']}-s0.parquet"
    part.unlink()
    trials = {p.name: p.stat().st_mtime_ns for p in (study_dir / "trials").glob("*.parquet")}
    again = run_cli("resume", os.path.relpath(study_dir, third), cwd=third)
    assert again.rc == 0, again.describe()
    assert "[baseline] stage 1 only (ce)" in again.out, again.describe()
    df, base = _stage1_rows(study_dir)
    assert len(df) == 3 and len(base) == 1 and part.is_file()
    assert base.iloc[0]["bbox/AP"] == row["bbox/AP"]  # the same cached stage 1, evaluated
    for name, mtime in trials.items():
        assert (study_dir / "trials" / name).stat().st_mtime_ns == mtime, name
