"""``ltmodels.engine.ema``: the bias-corrected moving average of the weights that a rung
evaluates (``search.early_stopping.ema_half_life``), counted by hand; and through a trial:
training is untouched, a rung resumed from its saved average is the uninterrupted one."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from ltmodels.data.synthetic import SynthPaths
from ltmodels.engine.checkpoint import load_checkpoint
from ltmodels.engine.ema import WeightEMA, ema_path, load_ema, save_ema
from ltmodels.trial.run import run_trial
from tests.ltmodels.cache_fixtures import tiny_end_to_end


def _model() -> nn.Module:
    model = nn.Linear(1, 1, bias=True)
    model.bias.requires_grad_(False)  # frozen: never averaged
    with torch.no_grad():
        model.weight.fill_(0.0)
        model.bias.fill_(5.0)
    return model


def _set(model: nn.Module, value: float) -> None:
    with torch.no_grad():
        model.weight.fill_(value)


def test_the_average_is_bias_corrected_and_weights_steps_by_the_half_life() -> None:
    model = _model()
    ema = WeightEMA(model, half_life=1.0)  # beta = 0.5
    assert ema.averaged()["weight"].item() == 0.0  # no step yet: the weights themselves
    _set(model, 4.0)
    ema.update()
    assert ema.averaged()["weight"].item() == pytest.approx(4.0)  # no weight on the start
    _set(model, 1.0)
    ema.update()
    # m = 0.5 * (0.5 * 4) + 0.5 * 1 = 1.5; 1 - 0.5^2 = 0.75: (2 * 1 + 1 * 4) / 3 = 2
    assert ema.averaged()["weight"].item() == pytest.approx(2.0)
    assert set(ema.averaged()) == {"weight"}  # the frozen bias is the model's own

    with ema.applied():
        assert model.weight.item() == pytest.approx(2.0)
        assert model.bias.item() == 5.0
    assert model.weight.item() == 1.0  # given back


def test_constant_weights_average_to_themselves_for_any_half_life() -> None:
    for half_life in (0.3, 7.0, 1e4):
        model = _model()
        _set(model, 3.0)
        ema = WeightEMA(model, half_life)
        for _ in range(5):
            ema.update()
        assert ema.averaged()["weight"].item() == pytest.approx(3.0, rel=1e-5)
    with pytest.raises(ValueError, match="half_life must be > 0"):
        WeightEMA(_model(), 0.0)


def test_saved_and_loaded_only_at_its_epoch_half_life_and_parameters(tmp_path: Path) -> None:
    model = _model()
    ema = WeightEMA(model, 2.0)
    _set(model, 4.0)
    ema.update()
    ckpt = tmp_path / "checkpoint.pt"
    save_ema(ckpt, ema, epoch=1)
    assert ema_path(ckpt).is_file()

    again = WeightEMA(model, 2.0)
    assert not load_ema(ckpt, again, epoch=2)  # of another epoch
    assert again.steps == 0
    assert load_ema(ckpt, again, epoch=1)
    assert again.steps == 1
    assert again.averaged()["weight"].item() == pytest.approx(4.0)
    assert not load_ema(ckpt, WeightEMA(model, 3.0), epoch=1)  # another half-life
    assert not load_ema(ckpt, WeightEMA(nn.Linear(2, 1), 2.0), epoch=1)  # other shapes
    assert not load_ema(tmp_path / "none.pt", WeightEMA(model, 2.0), epoch=1)


@pytest.mark.slow
def test_a_rung_evaluates_the_average_and_training_is_untouched(
    synth_small: SynthPaths, tmp_path: Path
) -> None:
    cfg = tiny_end_to_end(synth_small, tmp_path / "cache", "ce", seed=2)
    averaged = replace(cfg, rung_ema=0.5)
    # rung 1 then rung 2, each resuming; and rung 2 in one go: the same average
    run_trial(replace(averaged, stop_at_epoch=1), workdir=tmp_path / "a")
    first = torch.load(ema_path(tmp_path / "a" / "checkpoint.pt"), weights_only=True)
    assert first["epoch"] == 1 and first["steps"] > 0
    resumed = run_trial(replace(averaged, stop_at_epoch=2), workdir=tmp_path / "a")
    straight = run_trial(replace(averaged, stop_at_epoch=2), workdir=tmp_path / "b")
    assert resumed.metrics == straight.metrics
    plain = run_trial(replace(cfg, stop_at_epoch=2), workdir=tmp_path / "c")
    assert plain.metrics != straight.metrics  # the rung saw other weights

    # the weights trained are the same with or without the average, and so is the end
    a = load_checkpoint(tmp_path / "a" / "checkpoint.pt", restore_rng=False)["model"]
    c = load_checkpoint(tmp_path / "c" / "checkpoint.pt", restore_rng=False)["model"]
    assert all(torch.equal(a[k], v) for k, v in c.items())
    end_a = run_trial(averaged, workdir=tmp_path / "a")
    end_c = run_trial(cfg, workdir=tmp_path / "c")
    assert end_a.metrics == end_c.metrics
    assert [e["loss"] for e in end_a.epochs] == [e["loss"] for e in end_c.epochs]
