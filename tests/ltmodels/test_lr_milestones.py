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


def test_an_iteration_budget_cuts_the_last_epoch_and_counts_milestones_in_iterations(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Epochs of 4 iterations, a budget of 10: epochs of 4, 4 and 2 steps; lr / 10 at the
    5th and 8th iteration. Stopped after epoch 1 and resumed, it takes the same steps."""
    seen: list[float] = []

    def one_epoch(
        _model: Any, optimizer: Any, loader: Any, *, scheduler: Any, max_steps: Any, **_: Any
    ):
        for it, _batch in enumerate(loader):
            if max_steps is not None and it >= max_steps:
                break
            seen.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        return {"loss": 0.0, "seconds": 0.0}

    monkeypatch.setattr(stages, "train_one_epoch", one_epoch)
    stage = StageConfig(iterations=10, lr=1.0, warmup_iters=0, lr_milestones=(5.0, 8.0))
    assert stage.budget(4) == (3, 10) and stage.milestone_fractions() == (0.5, 0.8)
    run = {
        "device": torch.device("cpu"),
        "ckpt_path": tmp_path / "checkpoint.pt",
    }
    model, loader = nn.Linear(2, 2), [0, 1, 2, 3]
    first = stages.train_stage(model, stage, loader, stop_at=1, **run)  # type: ignore[arg-type]
    assert len(first) == 1 and len(seen) == 4
    history = stages.train_stage(model, stage, loader, **run)  # type: ignore[arg-type]
    assert len(history) == 3 and len(seen) == 10
    changes = [i for i in range(1, 10) if seen[i] != pytest.approx(seen[i - 1])]
    assert changes == [5, 8]


def test_train_one_epoch_stops_at_max_steps() -> None:
    from ltmodels.engine.train import train_one_epoch

    class Toy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.ones(1))

        def forward(self, images: list[torch.Tensor], targets: Any) -> dict[str, torch.Tensor]:
            return {"loss_a": (self.w.sum() * sum(im.sum() for im in images)) ** 2 * 1e-3}

    batch = ([torch.ones(3, 2, 2)], [{"labels": torch.tensor([1])}])
    model = Toy()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    out = train_one_epoch(model, opt, [batch] * 5, scheduler=None, device="cpu", epoch=0,
                          max_steps=3)  # fmt: skip
    assert out["iterations"] == 3 and out["images"] == 3
    out = train_one_epoch(model, opt, [batch] * 5, scheduler=None, device="cpu", epoch=1)
    assert out["iterations"] == 5
