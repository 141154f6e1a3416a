"""A stage's ``lr_milestones`` (epochs) drive the lr schedule of whole-model stages and of
feature-cache packs; unset, the keys of cached work (stage 1, packs) are the ones made
before the field existed."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from ltmodels.trial import pack, schedules, stages
from ltmodels.trial.config import (
    DataConfig,
    StageConfig,
    TrialConfig,
    trial_config_from_dict,
    trial_config_to_dict,
)

DATA = DataConfig("/d/train.json", "/d/val.json", "/d/img", "/d/img")
STAGE2 = StageConfig(
    loss="acsl",
    loss_params={"xi": 0.7},
    epochs=6,
    use_feature_cache=True,
    finetune=("box_predictor",),
)
CFG = TrialConfig(
    data=DATA,
    train=STAGE2,
    schedule="decoupled",
    stage1=StageConfig(epochs=24),
    model={"backbone": "tiny"},
    cache_dir="/c",
)
# Computed before StageConfig.lr_milestones existed.
GOLDEN_PACK, GOLDEN_STAGE1 = "73b66bc1e45ea19c", "a51485b04b29998f"


@dataclass(frozen=True)
class FixedModelSpec:
    """Stands for the ModelSpec in stage1_key, so the golden key does not follow its fields."""

    backbone: str = "tiny"


@pytest.fixture
def fixed_files(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(schedules, "_file_sig", lambda p: {"path": p, "size": 1})


def test_keys_without_milestones_are_unchanged(fixed_files: None) -> None:
    assert pack.pack_key(CFG) == GOLDEN_PACK
    assert schedules.stage1_key(CFG, FixedModelSpec()) == GOLDEN_STAGE1  # type: ignore[arg-type]


def test_stage1_milestones_change_both_keys_stage2_ones_neither(fixed_files: None) -> None:
    assert CFG.stage1 is not None
    s1 = replace(CFG, stage1=replace(CFG.stage1, lr_milestones=(16.0, 22.0)))
    assert schedules.stage1_key(s1, FixedModelSpec()) != GOLDEN_STAGE1  # type: ignore[arg-type]
    assert pack.pack_key(s1) != GOLDEN_PACK
    # stage 2's schedule is a member's own optimiser setting: members of a pack may differ
    s2 = replace(CFG, train=replace(STAGE2, lr_milestones=(3.0, 5.0)))
    assert pack.pack_key(s2) == GOLDEN_PACK
    assert pack._optim(s2).milestones == pytest.approx((0.5, 5 / 6))
    assert pack._optim(CFG).milestones == pytest.approx((2 / 3, 8 / 9))  # the engine's


def test_milestones_survive_the_trip_to_ray_workers() -> None:
    cfg = replace(CFG, train=replace(STAGE2, lr_milestones=(3.0, 5.0)))
    back = trial_config_from_dict(trial_config_to_dict(cfg))
    assert back == cfg and back.train.lr_milestones == (3.0, 5.0)
    assert StageConfig(epochs=12, lr_milestones=()).milestone_fractions() == ()
    assert StageConfig(epochs=12).milestone_fractions() is None


@pytest.mark.parametrize(
    ("milestones", "drops"),
    [((2.0, 5.0), (8, 20)), (None, (16, 21)), ((), ())],  # 24 iterations: 2/3 = 16, 8/9 = 21
)
def test_train_stage_decays_at_the_milestone_epochs(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    milestones: tuple[float, ...] | None,
    drops: tuple[int, ...],
) -> None:
    """6 epochs of 4 iterations, no warm-up: lr 1 until the iteration that ends epoch 2
    (index 8), then 0.1, then 0.01 from the end of epoch 5 (index 20)."""
    seen: list[float] = []

    def one_epoch(_model: Any, optimizer: Any, loader: Any, *, scheduler: Any, **_: Any):
        for _batch in loader:
            seen.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        return {"loss": 0.0, "seconds": 0.0}

    monkeypatch.setattr(stages, "train_one_epoch", one_epoch)
    stage = StageConfig(epochs=6, lr=1.0, warmup_iters=0, lr_milestones=milestones)
    stages.train_stage(
        nn.Linear(2, 2),
        stage,
        [0, 1, 2, 3],  # type: ignore[arg-type]
        device=torch.device("cpu"),
        ckpt_path=tmp_path / "checkpoint.pt",
    )
    assert len(seen) == 24
    changes = [i for i in range(1, 24) if seen[i] != pytest.approx(seen[i - 1])]
    assert tuple(changes) == drops
    assert seen[-1] == pytest.approx(0.1 ** len(drops))
