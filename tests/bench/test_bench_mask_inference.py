"""``bench/bench_mask_inference.py``: both mask paths give the same RLEs on a tiny detector,
and the script runs from another directory on the layout ``make quickstart`` leaves."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from ltmodels.data import LVISDetection
from ltmodels.data.synthetic import SynthPaths, ensure_synthetic
from ltmodels.engine.checkpoint import save_checkpoint
from ltmodels.modeling import detections, roi_heads
from ltmodels.trial.config import StageConfig
from ltmodels.trial.schedules import build_model, model_spec
from tests.ltmodels.cache_fixtures import TINY_SYNTH

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

from bench_mask_inference import compare_paths  # noqa: E402

MODEL = {"backbone": "tiny", "min_size": 64, "max_size": 64, "masks": True}


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> SynthPaths:
    datasets = tmp_path_factory.mktemp("storage") / "_cache" / "datasets"
    return ensure_synthetic(datasets, TINY_SYNTH)  # into datasets/synthetic/<hash>


def detector(synth: SynthPaths) -> torch.nn.Module:
    train = LVISDetection(synth.train_json, synth.root, with_masks=False)
    torch.manual_seed(0)
    return build_model(model_spec(MODEL), StageConfig(loss="ce"), train, torch.device("cpu"))


def test_both_paths_give_the_same_masks_and_the_patch_is_undone(synth: SynthPaths) -> None:
    val = LVISDetection(synth.val_json, synth.root, with_masks=True)
    out = compare_paths(detector(synth), val, str(synth.val_json), rounds=2)
    assert out["detections"] > 0 and out["identical_rles"] and out["equal_segm_metrics"]
    assert all(len(s) == 2 and min(s) > 0 for s in out["seconds"].values())
    assert roi_heads.own_class_mask_logits is detections.own_class_mask_logits


def test_script_reads_the_quickstart_layout(synth: SynthPaths, tmp_path: Path) -> None:
    storage = Path(synth.root).parents[3]  # <storage>/_cache/datasets/synthetic/<hash>
    weights = storage / "_cache" / "stage1" / "abc" / "model.pt"
    weights.parent.mkdir(parents=True)
    save_checkpoint(weights, model=detector(synth), epoch=1)
    meta = {"stage1": asdict(StageConfig(loss="ce")), "model": asdict(model_spec(MODEL))}
    (weights.parent / "stage1.json").write_text(json.dumps(meta, default=str))
    ran = subprocess.run(
        [sys.executable, str(BENCH / "bench_mask_inference.py"), "--storage", str(storage),
         "--rounds", "1"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "RLEs identical: True, segm metrics equal: True" in ran.stdout
