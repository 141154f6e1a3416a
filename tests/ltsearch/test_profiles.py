"""The ``--embedded`` profile (:mod:`ltsearch.spec.profiles`): every paper study keeps its
whole design (configurations, losses, stages, samplers) with at least three seeds, budgets
and thresholds scaled by the documented rules, and the rules written into the study."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ltsearch.errors import SpecError
from ltsearch.spec.hashing import stage1_hash
from ltsearch.spec.profiles import CACHED_STAGE2, END_TO_END, WHOLE_MODEL, embedded_rules
from ltsearch.spec.study import StudySpec, load_spec, spec_from_dict

REPO = Path(__file__).resolve().parents[2]
PAPER_STUDIES = sorted(
    p for p in (REPO / "studies").glob("*.yaml") if p.stem not in ("quickstart",)
)


def _embedded(name: str) -> tuple[StudySpec, StudySpec]:
    spec = load_spec(REPO / "studies" / f"{name}.yaml")
    return spec, spec.embedded_variant()


@pytest.mark.parametrize("path", PAPER_STUDIES, ids=lambda p: p.stem)
def test_whole_design_is_kept(path: Path, tmp_path: Path) -> None:
    spec = load_spec(path)
    emb = spec.embedded_variant(cwd=tmp_path)
    assert emb.name == f"{spec.name}-embedded"
    assert emb.storage == str(tmp_path / "runs")
    assert emb.dataset.kind == "synthetic" and emb.model.backbone == "tiny"
    assert emb.n_trials == spec.n_trials and emb.grid_size == spec.grid_size
    assert [o.name for o in emb.loss.options] == [o.name for o in spec.loss.options]
    assert emb.training.schedule == spec.training.schedule
    assert len(emb.search.seeds) >= 3 and emb.search.seeds[: len(spec.search.seeds)] == (
        spec.search.seeds
    )
    assert len(emb.search.initial_points) == len(spec.search.initial_points)
    if spec.training.schedule == "decoupled":  # the cached stage 2 is evaluated on boxes
        assert emb.search.objectives == [
            o.replace("segm/", "bbox/") for o in spec.search.objectives
        ]
    else:
        assert emb.search.objectives == spec.search.objectives
    if spec.reference is not None:
        assert emb.reference is not None and len(emb.reference.rows) == len(spec.reference.rows)
    assert emb.profile is not None and emb.profile.source == spec.name
    assert embedded_rules(emb)[0].startswith("dataset: the embedded synthetic long-tail data")
    assert embedded_rules(spec) == []
    stages = (
        [(emb.training, spec.training, END_TO_END)]
        if spec.training.schedule == "end_to_end"
        else [
            (emb.training.stage1, spec.training.stage1, WHOLE_MODEL),
            (emb.training.stage2, spec.training.stage2, CACHED_STAGE2),
        ]
    )
    for new, old, budget in stages:
        assert new is not None and old is not None
        assert (new.epochs, new.lr, new.batch_size) == (
            budget["epochs"], budget["lr"], budget["batch_size"],
        )  # fmt: skip
        assert new.sampler == old.sampler and new.max_norm == old.max_norm
        if old.lr_milestones:  # the paper's fractions of the schedule
            assert new.lr_milestones is not None
            for a, b in zip(new.lr_milestones, old.lr_milestones, strict=True):
                assert a / new.epochs == pytest.approx(b / old.epochs, abs=1e-4)
        else:
            assert new.lr_milestones is None
    if spec.training.schedule == "decoupled":
        assert emb.training.stage2 is not None and emb.training.stage2.feature_cache
        assert not emb.training.stage2.full_eval


def test_loce_tables_share_one_stage1_model() -> None:
    hashes = {stage1_hash(_embedded(f"loce_table{i}")[1]) for i in (1, 2, 3, 4)}
    assert len(hashes) == 1 and None not in hashes


def test_frequency_thresholds_keep_their_classes() -> None:
    """EQL's lambda, AHR's lambda_r and RFS's t are shares of the train images: multiplied
    by LVIS v0.5's 57,263 over the embedded 800 images (1.76e-3 -> 0.125979)."""
    spec, emb = _embedded("ahrl_table5")
    factor = 57_263 / 800
    s1 = emb.training.stage1
    assert s1 is not None and s1.loss_params["lambda_"] == pytest.approx(0.00176 * factor, 1e-5)
    assert s1.rfs_threshold == pytest.approx(0.001 * factor, 1e-5)
    eql, ahr = emb.loss.options
    assert eql.params["lambda_"].fixed == pytest.approx(0.00176 * factor, 1e-5)
    assert ahr.params["lambda_r"].fixed == pytest.approx(0.00176 * factor, 1e-5)
    assert ahr.params["num_clusters"].fixed == 7  # 200 x 40 / 1230 = 6.5
    rules = "\n".join(embedded_rules(emb))
    assert "stage-1 eql lambda_ x 57,263/800: 0.00176 -> 0.125979" in rules
    assert "stage 2: RFS threshold t x 57,263/800: 0.001 -> 0.071579" in rules
    assert "the paper fine-tunes backbone, rpn, box_head, box_predictor, mask_head" in rules


def test_cluster_counts_scale_in_grid_and_reference() -> None:
    _, emb = _embedded("ahrl_table3")
    space = emb.loss.options[0].params["num_clusters"]
    assert space.choices() == [4, 7, 13]  # 108, 200, 400 of 1230 classes -> of 40
    assert emb.reference is not None
    assert [row["num_clusters"] for row in emb.reference.rows] == [4, 7, 13]


def test_lvis_v1_rfs_threshold() -> None:
    _, emb = _embedded("rog_table1_rfs")
    assert emb.training.rfs_threshold == pytest.approx(0.001 * 100_170 / 800, 1e-5)


def test_embedded_block_merges_last_and_is_validated() -> None:
    raw = load_spec(REPO / "studies" / "acsl_table2.yaml").to_dict()
    raw["embedded"] = {"search": {"seeds": [3, 4, 5, 6]}}
    emb = spec_from_dict(raw).embedded_variant()
    assert emb.search.seeds == [3, 4, 5, 6]
    assert any("embedded block" in rule for rule in embedded_rules(emb))
    raw["embedded"] = {"search": {"seeds": []}}
    with pytest.raises(SpecError, match=r"embedded\.search\.seeds"):
        spec_from_dict(raw)


def test_cli_validate_embedded_from_another_directory(tmp_path: Path) -> None:
    study = REPO / "studies" / "c2am_table4.yaml"
    cmd = [sys.executable, "-m", "ltsearch", "validate", str(study), "--embedded"]
    out = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "study 'c2am-table4-embedded', 5 configuration(s) x 3 seed(s)" in out.stdout
    assert out.stdout.rstrip().endswith(str(tmp_path / "runs" / "c2am-table4-embedded"))
    both = subprocess.run(
        [*cmd, "--smoke"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert both.returncode == 2 and "not allowed with argument" in both.stderr
