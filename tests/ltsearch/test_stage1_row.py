"""The stage-1 row of a decoupled study (``training.stage1.evaluate``): no hash moves, the
spec checks its reference row, the driver's step stores it once, and the report and status
show it apart from the search's configurations."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from ltmodels.trial.config import TrialResult
from ltsearch.errors import SpecError
from ltsearch.report.ablation import ablation_md
from ltsearch.report.tables import front_md, groups_md, prepare_runs, summarize
from ltsearch.rows import is_baseline, row_label, search_rows
from ltsearch.run.baseline import (
    baseline_config,
    baseline_key,
    baseline_pending,
    evaluate_stage1,
    run_baseline,
)
from ltsearch.run.stopping import StudyStopper
from ltsearch.run.trainable import StudyContext
from ltsearch.spec.hashing import config_hash, stage1_hash
from ltsearch.spec.study import StudySpec, spec_from_dict
from ltsearch.status import progress_from
from ltsearch.store import ResultStore

from .test_lr_milestones import ACSL, DECOUPLED, GOLDEN, with_training

EVALUATED = with_training(DECOUPLED, ("stage1", "evaluate"), True)
METRICS = {"bbox/AP": 0.2, "bbox/APr": 0.05, "bbox/APc": 0.2, "bbox/APf": 0.3}


def spec_with(**changes: Any) -> StudySpec:
    return spec_from_dict({**EVALUATED, **changes})


def test_evaluate_moves_no_hash() -> None:
    spec = spec_from_dict(EVALUATED)
    assert spec.training.stage1_row
    assert config_hash(ACSL, spec) == GOLDEN["decoupled acsl"]
    assert stage1_hash(spec) == GOLDEN["decoupled stage 1"]
    assert baseline_key(spec) == f"stage1-{GOLDEN['decoupled stage 1']}"
    assert baseline_key(spec_from_dict(DECOUPLED)) is None


def test_baseline_reference_row_is_checked() -> None:
    ref = {"source": "ACSL Table 2", "rows": [{"baseline": "stage1", "AP": 21.18}]}
    assert spec_with(reference=ref).reference is not None
    with pytest.raises(SpecError, match=r"reference\.rows\.0\.baseline: .*stage1\.evaluate"):
        spec_from_dict({**DECOUPLED, "reference": ref})
    wrong = {"source": "x", "rows": [{"baseline": "stage2", "AP": 1.0}]}
    with pytest.raises(SpecError, match=r"rows\.0\.baseline: got 'stage2'"):
        spec_with(reference=wrong)
    params = {"source": "x", "rows": [{"baseline": "stage1", "xi": 0.7, "AP": 1.0}]}
    with pytest.raises(SpecError, match=r"rows\.0\.xi: a baseline row gives metrics only"):
        spec_with(reference=params)
    with pytest.raises(SpecError, match="evaluate"):  # a boolean, strictly
        spec_from_dict(with_training(DECOUPLED, ("stage1", "evaluate"), "yes"))


def _ctx(spec: StudySpec, tmp_path: Path) -> StudyContext:
    data = {"train_json": "t.json", "val_json": "v.json", "train_root": ".", "val_root": "."}
    return StudyContext(spec=spec.to_dict(), study_dir=str(tmp_path / spec.name), data=data)


def test_config_is_stage1_as_is_with_segm_where_trials_report_it(tmp_path: Path) -> None:
    spec = spec_from_dict(EVALUATED)  # masks false: bbox only
    cfg = baseline_config(_ctx(spec, tmp_path), spec)
    assert cfg.schedule == "stage1_only" and cfg.train == cfg.stage1
    assert cfg.stage1.loss == "ce" and cfg.stage1.epochs == 24 and not cfg.eval_masks
    masked = {**EVALUATED, "model": {"backbone": "tiny", "masks": True}}
    cached = spec_from_dict(masked)  # feature-cache trials without full_eval: bbox only
    assert not baseline_config(_ctx(cached, tmp_path), cached).eval_masks
    full = with_training(masked, ("stage2", "full_eval"), True)
    assert baseline_config(_ctx(spec_from_dict(full), tmp_path), spec_from_dict(full)).eval_masks


def test_stored_once_and_never_run_again(tmp_path: Path) -> None:
    spec = spec_from_dict(EVALUATED)
    ctx = _ctx(spec, tmp_path)
    calls: list[Any] = []

    def execute(cfg: Any, *, workdir: Path, resources: Any) -> TrialResult:
        calls.append(cfg)
        cats = [{"category_id": 1, "name": "a", "frequency": "r", "iou_type": "bbox", "AP": 0.1}]
        return TrialResult(dict(METRICS), [], cats, {"stage1": 1.0, "eval": 0.5})

    assert baseline_pending(spec, ctx.study_dir)
    line = run_baseline(ctx, spec, execute)
    assert line == "[baseline] stage 1 only (ce): bbox/AP 20.0"
    assert run_baseline(ctx, spec, execute) is None  # stored: read back, not run
    assert len(calls) == 1 and not baseline_pending(spec, ctx.study_dir)
    [row] = ResultStore(ctx.study_dir).trial_rows()
    assert row["loss"] == row["baseline"] == "stage1" and row["stage1_loss"] == "ce"
    assert row["config_hash"] == row["trial_id"] == baseline_key(spec)
    assert row["status"] == "ok" and row["bbox/APr"] == 0.05 and row["time_eval_s"] == 0.5
    assert row["tune_trial_id"] == "driver" and row["seed"] == 0
    assert len(ResultStore(ctx.study_dir).load_categories()) == 1
    assert not list(Path(ctx.study_dir, "live").glob("*.json"))  # its phase file is gone


def test_a_failure_is_a_failed_row_and_stays_one(tmp_path: Path) -> None:
    spec = spec_from_dict(EVALUATED)
    ctx = _ctx(spec, tmp_path)

    def broken(cfg: Any, **_: Any) -> TrialResult:
        raise RuntimeError("stage 1 diverged")

    said: list[str] = []
    evaluate_stage1(ctx, spec, broken, StudyStopper(), say=said.append)
    assert said == ["[baseline] stage 1 only (ce): FAILED RuntimeError: stage 1 diverged"]
    [row] = ResultStore(ctx.study_dir).trial_rows()
    assert row["status"] == "failed" and "stage 1 diverged" in row["error"]
    assert run_baseline(ctx, spec, broken) is None
    progress = progress_from(Path(ctx.study_dir), spec.name, 2, [row], stage1_row=True)
    assert progress.baseline == "failed" and progress.rows_failed == 0
    assert progress.runs_line().endswith("; stage 1 only: failed")


def test_a_full_disk_stops_the_study_without_a_row(tmp_path: Path) -> None:
    import errno

    spec = spec_from_dict(EVALUATED)
    ctx = _ctx(spec, tmp_path)

    def full(cfg: Any, **_: Any) -> TrialResult:
        raise OSError(errno.ENOSPC, "No space left on device", "/x/model.pt")

    stopper = StudyStopper()
    evaluate_stage1(ctx, spec, full, stopper, say=print)
    assert stopper.reason == "storage" and baseline_pending(spec, ctx.study_dir)


def _runs() -> pd.DataFrame:
    search = [
        {"config_hash": f"h{i}", "loss": "acsl", "param.acsl.xi": xi, "seed": 0, "status": "ok",
         "bbox/AP": 0.25 + i / 100, "bbox/APr": 0.1 + i / 100, "bbox/APc": 0.2, "bbox/APf": 0.3}
        for i, xi in enumerate([0.5, 0.7])
    ]  # fmt: skip
    base = {"config_hash": "stage1-abc", "loss": "stage1", "baseline": "stage1",
            "stage1_loss": "ce", "seed": 0, "status": "ok", **METRICS}  # fmt: skip
    return prepare_runs(pd.DataFrame([*search, base]))[0]


def test_report_tables_show_it_first_and_never_rank_it() -> None:
    spec = spec_with(
        search={"sampler": "grid", "objectives": ["bbox/APr:max", "bbox/APf:max"]},
        reference={
            "source": "ACSL Table 2",
            "rows": [
                {"baseline": "stage1", "AP": 21.18, "APr": 4.3},
                {"xi": 0.7, "AP": 26.36, "APr": 18.64},
            ],
        },
    )
    summary = summarize(_runs(), spec.search.parsed_objectives, ["bbox/AP", "bbox/APr"])
    assert list(summary.configs["config_hash"]) == ["h1", "h0"]  # the search's only
    assert list(summary.baseline["label"]) == ["stage 1 only (ce)"]
    lines = front_md(summary).splitlines()
    assert lines[2].startswith("| baseline | stage1 | stage 1 only (ce) | 1 | 5.0 | 30.0 |")
    assert lines[3].startswith("| 1 | h1 | acsl(xi=0.7) |")
    assert "| stage1 | stage 1 only (ce) | 20.0 |" in groups_md(summary.baseline, ["bbox"])
    table = ablation_md(spec, summary).splitlines()
    assert table[2].startswith(
        "| stage 1 only (ce) | stage1 stage 1 only (ce) | 1 | 21.2 \\| 20.0"
    )
    assert table[3].startswith("| acsl(xi=0.7) | h1 acsl(xi=0.7) | 1 | 26.4 \\| 26.0")


def test_ablation_shows_it_without_a_reference_row() -> None:
    spec = spec_with(reference={"source": "x", "rows": [{"xi": 0.7, "AP": 26.36}]})
    summary = summarize(_runs(), spec.search.parsed_objectives, ["bbox/AP"])
    table = ablation_md(spec, summary).splitlines()
    assert table[2].startswith(
        "| stage 1 only (ce) | stage1 stage 1 only (ce) | 1 | \u2014 \\| 20.0"
    )
    assert len(table) == 4


def test_status_counts_the_search_only(tmp_path: Path) -> None:
    rows = _runs().to_dict("records")
    assert [is_baseline(r) for r in rows] == [False, False, True]
    assert len(search_rows(rows)) == 2 and row_label(rows[2]) == "stage 1 only (ce)"
    progress = progress_from(tmp_path, "x", 2, rows, stage1_row=True)
    assert (progress.rows_ok, progress.configs_ok, progress.baseline) == (2, 2, "ok")
    pending = progress_from(tmp_path, "x", 2, rows[:2], stage1_row=True)
    assert pending.baseline == "pending"
    assert progress_from(tmp_path, "x", 2, rows[:2]).runs_line().endswith("0 failed")
