"""``TrialConfig.stop_at_epoch``: a run stopped at a rung and continued later is the same run
as one trained straight through (the rungs of early stopping in ``ltsearch.run.rungs``)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from ltmodels.data.synthetic import SynthPaths
from ltmodels.engine.checkpoint import load_checkpoint
from ltmodels.trial.run import run_trial
from tests.ltmodels.cache_fixtures import tiny_end_to_end


@pytest.mark.slow
def test_stopped_at_a_rung_then_continued_equals_a_straight_run(
    synth_small: SynthPaths, tmp_path: Path
) -> None:
    cfg = tiny_end_to_end(synth_small, tmp_path / "cache", "eqlv2", seed=1)
    rung = run_trial(replace(cfg, stop_at_epoch=1), workdir=tmp_path / "rungs")
    assert [e["epoch"] for e in rung.epochs] == [0.0]
    assert load_checkpoint(tmp_path / "rungs" / "checkpoint.pt", restore_rng=False)["epoch"] == 1
    assert "bbox/AP" in rung.metrics

    continued: list[int] = []
    final = run_trial(
        cfg, workdir=tmp_path / "rungs", on_epoch=lambda e, s, d: continued.append(e)
    )
    straight = run_trial(cfg, workdir=tmp_path / "straight")
    assert continued == [1, 2]  # epoch 0 was not trained again
    assert [e["epoch"] for e in final.epochs] == [0.0, 1.0, 2.0]
    assert [e["loss"] for e in final.epochs] == [e["loss"] for e in straight.epochs]
    for key, value in straight.metrics.items():
        assert abs(final.metrics[key] - value) <= 1e-6, key
    a = load_checkpoint(tmp_path / "rungs" / "checkpoint.pt", restore_rng=False)["model"]
    b = load_checkpoint(tmp_path / "straight" / "checkpoint.pt", restore_rng=False)["model"]
    assert all(torch.equal(a[k], v) for k, v in b.items())

    with pytest.raises(RuntimeError, match="is at epoch 3, past the epoch 1 asked for"):
        run_trial(replace(cfg, stop_at_epoch=1), workdir=tmp_path / "straight")
