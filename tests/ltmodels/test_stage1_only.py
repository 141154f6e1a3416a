"""The ``stage1_only`` schedule: the cached stage-1 model evaluated as is (the "before
re-balancing" row of a decoupled study), trained first when no trial has trained it."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from ltmodels.data.synthetic import SynthConfig, ensure_synthetic
from ltmodels.trial import schedules
from ltmodels.trial.config import DataConfig, StageConfig, TrialConfig
from ltmodels.trial.run import run_trial

SYNTH = SynthConfig(num_classes=4, train_images=8, val_images=4, image_size=64, seed=0)
STAGE1 = StageConfig(loss="ce", epochs=1, lr=0.02, batch_size=2, warmup_iters=2)


@pytest.fixture(scope="module")
def cfg(tmp_path_factory: pytest.TempPathFactory) -> TrialConfig:
    synth = ensure_synthetic(tmp_path_factory.mktemp("stage1-only-data"), SYNTH)
    root = str(synth.root)
    return TrialConfig(
        data=DataConfig(str(synth.train_json), str(synth.val_json), root, root),
        train=STAGE1,
        stage1=STAGE1,
        model={"backbone": "tiny", "min_size": 64, "max_size": 64, "masks": True},
        schedule="stage1_only",
        cache_dir=str(tmp_path_factory.mktemp("stage1-only-cache")),
    )


def test_evaluates_the_cached_stage1_without_training_again(
    cfg: TrialConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = run_trial(cfg, workdir=tmp_path / "a")
    assert {"bbox/AP", "bbox/APr", "segm/AP", "segm/APf"} <= first.metrics.keys()
    assert first.epochs == [] and {"stage1", "eval"} <= first.timings.keys()
    assert {r["iou_type"] for r in first.categories} == {"bbox", "segm"}
    key = schedules.stage1_key(cfg, schedules.model_spec(dict(cfg.model)))
    assert (Path(cfg.cache_dir) / "stage1" / key / "model.pt").is_file()

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("stage 1 trained again")

    monkeypatch.setattr(schedules, "_train_stage1", no_training)
    again = run_trial(replace(cfg, eval_masks=False), workdir=tmp_path / "b")
    assert again.metrics == {k: v for k, v in first.metrics.items() if k.startswith("bbox/")}
