"""A rung's cooldown (``search.early_stopping.cooldown``): the linear decay counted by hand;
and through a trial: the rung evaluates an annealed copy, the run's checkpoint, RNG and end
are those of a run without it, and the same rung evaluated again gives the same numbers."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from ltmodels.data.synthetic import SynthPaths
from ltmodels.engine import phases
from ltmodels.engine.checkpoint import load_checkpoint, rng_state
from ltmodels.engine.train import LinearCooldownLR
from ltmodels.trial.run import run_trial
from ltmodels.trial.schedules import build_model, model_spec
from ltmodels.trial.stages import cool_down, datasets, train_loader
from tests.ltmodels.cache_fixtures import tiny_end_to_end


def test_the_learning_rate_falls_linearly_from_the_start_towards_zero() -> None:
    params = [nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))]
    opt = torch.optim.SGD(
        [{"params": [params[0]], "lr": 1.0}, {"params": [params[1]], "lr": 1.0}], lr=1.0
    )
    sched = LinearCooldownLR(opt, [0.2, 0.04], steps=4)
    seen = []
    for _ in range(4):
        seen.extend(g["lr"] for g in opt.param_groups)
        opt.step()
        sched.step()
    assert seen == pytest.approx([0.2, 0.04, 0.15, 0.03, 0.1, 0.02, 0.05, 0.01])
    sched.step()
    assert [g["lr"] for g in opt.param_groups] == [0.0, 0.0]  # past the end: stays at 0
    with pytest.raises(ValueError, match="one start lr per parameter group"):
        LinearCooldownLR(opt, [0.2], steps=4)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        LinearCooldownLR(opt, [0.2, 0.1], steps=0)


def test_cool_down_refuses_more_than_an_epoch(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"a cooldown is in \(0, 1\] epochs, got 1.5"):
        cool_down(nn.Linear(1, 1), None, [], device=torch.device("cpu"),  # type: ignore[arg-type]
                  ckpt_path=tmp_path / "x.pt", epochs=1.5)  # fmt: skip


@pytest.mark.slow
def test_a_rung_evaluates_a_cooled_copy_and_training_is_untouched(
    synth_small: SynthPaths, tmp_path: Path
) -> None:
    cfg = tiny_end_to_end(synth_small, tmp_path / "cache", "ce", seed=3)
    cooled = replace(cfg, rung_cooldown=0.5)
    seen: list[str] = []
    remove = phases.add_listener(lambda p: seen.append(p.name))
    try:
        at_rung = run_trial(replace(cooled, stop_at_epoch=1), workdir=tmp_path / "a")
    finally:
        remove()
    assert at_rung.timings["cooldown"] > 0
    assert seen[-2:] == ["cooldown", "eval"]  # the live view says what the trial is doing
    plain = run_trial(replace(cfg, stop_at_epoch=1), workdir=tmp_path / "c")
    assert "cooldown" not in plain.timings
    assert at_rung.metrics != plain.metrics  # the rung saw the annealed copy

    # the checkpoint the run goes on from is the rung's own, to the bit
    a = load_checkpoint(tmp_path / "a" / "checkpoint.pt", restore_rng=False)
    c = load_checkpoint(tmp_path / "c" / "checkpoint.pt", restore_rng=False)
    assert a["epoch"] == c["epoch"] == 1
    assert all(torch.equal(a["model"][k], v) for k, v in c["model"].items())

    # evaluated again (a resumed study): nothing trains, the same copy, the same numbers
    again = run_trial(replace(cooled, stop_at_epoch=1), workdir=tmp_path / "a")
    assert again.metrics == at_rung.metrics

    # the end is the same with or without the rung's cooldown; the last epoch gets none
    end_a = run_trial(cooled, workdir=tmp_path / "a")
    end_c = run_trial(cfg, workdir=tmp_path / "c")
    assert "cooldown" not in end_a.timings
    assert end_a.metrics == end_c.metrics
    assert [e["loss"] for e in end_a.epochs] == [e["loss"] for e in end_c.epochs]


@pytest.mark.slow
def test_cool_down_leaves_the_model_and_the_rng_as_they_were(
    synth_small: SynthPaths, tmp_path: Path
) -> None:
    cfg = replace(tiny_end_to_end(synth_small, tmp_path / "cache", "ce", seed=1), stop_at_epoch=1)
    run_trial(cfg, workdir=tmp_path / "r")
    ckpt = tmp_path / "r" / "checkpoint.pt"
    spec = model_spec(dict(cfg.model))
    train_set, _ = datasets(cfg.data, masks=spec.masks)
    model = build_model(spec, cfg.train, train_set, torch.device("cpu"))
    load_checkpoint(ckpt, model=model, restore_rng=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loader = train_loader(train_set, cfg.train, seed=cfg.seed, workers=0)
    torch.manual_seed(123)
    rng = rng_state()
    fork = cool_down(
        model, cfg.train, loader, device=torch.device("cpu"), ckpt_path=ckpt, epochs=0.5
    )
    after = rng_state()
    assert torch.equal(after["torch"], rng["torch"]) and after["python"] == rng["python"]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    moved = [k for k, v in fork.state_dict().items() if not torch.equal(before[k], v)]
    assert moved  # the copy trained
