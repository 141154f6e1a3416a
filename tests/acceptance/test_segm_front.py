"""``training.stage2.segm_front`` through the CLI: a box-only decoupled study, run from
another directory, ends with segm numbers in exactly its front's rows (each seed run again
with a whole-model evaluation, box metrics unchanged to 1e-6), says so in the report, and a
run of the finished study again changes nothing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from study_checks import snapshot
from workspace import run_cli

from ltsearch.report.tables import prepare_runs, summarize
from ltsearch.spec.sections import Objective
from ltsearch.store import ResultStore

pytestmark = [pytest.mark.acceptance, pytest.mark.slow]

NAME = "tiny-segm-front"
STUDY = f"""\
name: {NAME}
dataset: {{kind: synthetic, classes: 4, train_images: 8, val_images: 4}}
model: {{backbone: tiny, masks: true}}
training:
  schedule: decoupled
  stage1: {{loss: ce, epochs: 1, lr: 0.02, batch_size: 2, warmup_iters: 2}}
  stage2: {{epochs: 1, lr: 0.01, batch_size: 2, warmup_iters: 2, segm_front: true}}
loss: {{name: acsl, params: {{xi: {{grid: [0.1, 0.5, 0.9]}}}}}}
search: {{sampler: grid, objectives: [bbox/AP:max, bbox/APf:max], seeds: [0, 1]}}
resources: {{workers: 1, cpus_per_worker: 1, max_concurrent_trials: 1}}
storage: results
"""


def test_front_rows_get_segm(tmp_path: Path) -> None:
    studies, work = tmp_path / "studies", tmp_path / "work"
    studies.mkdir()
    work.mkdir()
    (studies / "tiny.yaml").write_text(STUDY)
    study = os.path.relpath(studies / "tiny.yaml", work)
    ran = run_cli("run", study, cwd=work, timeout=900)
    assert ran.rc == 0, ran.describe()
    study_dir = work / "results" / NAME
    df = ResultStore(study_dir).load_trials()
    assert len(df) == 6 and set(df["status"]) == {"ok"}, df[["config_hash", "seed", "status"]]
    runs, _ = prepare_runs(df)
    objectives = [Objective("bbox/AP", "max"), Objective("bbox/APf", "max")]
    configs = summarize(runs, objectives, []).configs
    front = set(configs.loc[configs["front"], "config_hash"])
    assert front and ran.out.count("[segm] acsl(") == 2 * len(front), ran.describe()
    for _, row in df.iterrows():
        if row["config_hash"] in front:
            assert row["segm_front"] is True or row["segm_front"] == 1, row
            assert 0 <= row["segm/AP"] <= 1 and row["segm_bbox_drift"] <= 1e-6, row
        else:
            assert "segm/AP" not in row or row["segm/AP"] != row["segm/AP"], row  # NaN
    report = (study_dir / "report.md").read_text()
    assert f"- segm: {2 * len(front)} of 6 ok runs ({len(front)} configuration(s)" in report

    before = snapshot(study_dir)
    again = run_cli("run", study, cwd=work, timeout=300)
    assert again.rc == 0, again.describe()
    assert "[segm]" not in again.out, again.describe()
    assert snapshot(study_dir) == before, "a run of the finished study changed its results"
