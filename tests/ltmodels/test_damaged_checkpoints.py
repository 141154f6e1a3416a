"""Damaged cached checkpoints are discarded and rebuilt, never loaded: stage 1's weights
(``model.pt``) and resumable state (``train.pt``), and a trial's ``checkpoint.pt``.

Each file gets one bit flipped inside a weight tensor (torch would load it silently: it does
not check its zip CRCs); the schedule must notice it from the file's sha256, say so in one log
line, and train again.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from ltmodels.data.synthetic import SynthPaths, ensure_synthetic
from ltmodels.engine.checkpoint import checkpoint_problem, recorded_sha256
from ltmodels.trial import schedules
from ltmodels.trial.config import DataConfig, StageConfig, TrialConfig
from ltmodels.trial.run import run_trial
from ltmodels.trial.stages import datasets, train_loader, train_stage
from tests.ltmodels.cache_fixtures import TINY_MODEL, TINY_STAGE1, TINY_SYNTH, tiny_decoupled

SYNTH, MODEL, STAGE1 = TINY_SYNTH, TINY_MODEL, TINY_STAGE1


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> SynthPaths:
    return ensure_synthetic(tmp_path_factory.mktemp("damaged-data"), SYNTH)


@pytest.fixture(scope="module")
def data(synth: SynthPaths) -> DataConfig:
    root = str(synth.root)
    return DataConfig(str(synth.train_json), str(synth.val_json), root, root)


def flip_a_weight_bit(path: Path) -> None:
    """Flip one bit of the largest tensor of the checkpoint, where the file stores it."""
    state = torch.load(path, weights_only=True)["model"]
    big = max(state.values(), key=lambda t: t.numel()).flatten()
    data = bytearray(path.read_bytes())
    at = data.find(big[:8].numpy().tobytes())
    assert at > 0, "tensor bytes not found in the checkpoint"
    data[at + 1] ^= 0x10
    path.write_bytes(bytes(data))


def decoupled(data: DataConfig, cache: Path, stage1: StageConfig = STAGE1) -> TrialConfig:
    return tiny_decoupled(data, cache, stage1)


def messages(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(r.getMessage() for r in caplog.records)


def test_damaged_stage1_weights_are_retrained_and_the_feature_cache_follows(
    data: DataConfig, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = decoupled(data, tmp_path / "cache")
    run_trial(cfg, workdir=tmp_path / "a")
    [weights] = (tmp_path / "cache" / "stage1").glob("*/model.pt")
    [manifest] = (tmp_path / "cache" / "features").glob("*/manifest.json")
    assert json.loads(manifest.read_text())["source_sha256"] == recorded_sha256(weights)

    flip_a_weight_bit(weights)
    with caplog.at_level(logging.INFO, logger="ltmodels"):
        run_trial(cfg, workdir=tmp_path / "b")
    log = messages(caplog)
    assert f"{weights}: damaged checkpoint" in log and "training stage 1" in log, log
    assert checkpoint_problem(weights) is None  # rebuilt, with a matching sha256
    assert json.loads(manifest.read_text())["source_sha256"] == recorded_sha256(weights)


def test_damaged_stage1_training_state_restarts_stage1(
    data: DataConfig, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = decoupled(data, tmp_path / "cache", replace(STAGE1, epochs=2))
    spec = schedules.model_spec(dict(cfg.model))
    train_set, _ = datasets(cfg.data, masks=spec.masks)
    key = schedules.stage1_key(cfg, spec)
    state = tmp_path / "cache" / "stage1" / key / "train.pt"
    first = replace(STAGE1, epochs=1)  # as if stage 1 had been killed after its first epoch
    model = schedules.build_model(spec, first, train_set, torch.device("cpu"))
    loader = train_loader(train_set, first, seed=first.seed)
    train_stage(model, first, loader, device=torch.device("cpu"), ckpt_path=state)
    flip_a_weight_bit(state)

    with caplog.at_level(logging.INFO, logger="ltmodels"):
        weights, _ = schedules.ensure_stage1(cfg, spec, train_set, torch.device("cpu"))
    log = messages(caplog)
    assert f"{state}: damaged checkpoint" in log and "stage 1 starts from its first" in log
    assert "resumed" not in log and "epoch 1/2" in log and "epoch 2/2" in log, log
    assert checkpoint_problem(weights) is None and not state.exists()


def test_damaged_trial_checkpoint_trains_the_trial_again(
    data: DataConfig, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    train = StageConfig(loss="ce", epochs=1, lr=0.02, batch_size=4, warmup_iters=2)
    cfg = TrialConfig(
        data=data, train=train, schedule="end_to_end", model=MODEL, eval_masks=False,
        cache_dir=str(tmp_path / "cache"),
    )  # fmt: skip
    run_trial(cfg, workdir=tmp_path / "run")
    ckpt = tmp_path / "run" / "checkpoint.pt"
    flip_a_weight_bit(ckpt)

    with caplog.at_level(logging.INFO, logger="ltmodels"):
        res = run_trial(replace(cfg, train=replace(train, epochs=2)), workdir=tmp_path / "run")
    log = messages(caplog)
    assert f"{ckpt}: damaged checkpoint" in log and "trains from its first epoch" in log, log
    assert "resumed" not in log and len(res.epochs) == 2
    assert checkpoint_problem(ckpt) is None
