"""The shared builds of a decoupled study (stage 1, the feature cache) use the waiting
trials' cores (``TrialConfig.build_threads``); the trial's own stage 2 keeps the process's
thread count, and the count is given back afterwards, also when the build fails."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from ltmodels.data.synthetic import SynthPaths, ensure_synthetic
from ltmodels.engine.threads import build_threads_for, torch_threads
from ltmodels.trial import pack
from ltmodels.trial.config import DataConfig
from ltmodels.trial.run import run_trial
from tests.ltmodels.cache_fixtures import TINY_SYNTH, tiny_decoupled


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """As in a one-CPU Ray trial (OMP_NUM_THREADS=1)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> SynthPaths:
    return ensure_synthetic(tmp_path_factory.mktemp("threads-data"), TINY_SYNTH)


def test_torch_threads_sets_and_gives_back() -> None:
    with torch_threads(3) as n:
        assert n == 3 and torch.get_num_threads() == 3
    assert torch.get_num_threads() == 1
    with pytest.raises(RuntimeError), torch_threads(2):
        raise RuntimeError("build failed")
    assert torch.get_num_threads() == 1
    with torch_threads(0) as n:  # 0: the process's own
        assert n == 1 and torch.get_num_threads() == 1


def test_build_threads_are_the_waiting_trials_cpus_capped_by_the_node() -> None:
    assert build_threads_for(2, 1.0, 2) == 2  # the quickstart on this 2-core machine
    assert build_threads_for(4, 1.0, 2) == 2  # no more than the node has
    assert build_threads_for(3, 2.0, 16) == 6
    assert build_threads_for(1, 0.5, 8) == 1  # never below one


def test_stage1_and_cache_build_with_the_lent_threads_stage2_without(
    synth: SynthPaths, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, int] = {}
    build, train = pack.build_feature_cache, pack.train_pack

    def spy_build(*args: Any, **kwargs: Any) -> Any:
        seen["cache"] = torch.get_num_threads()
        return build(*args, **kwargs)

    def spy_train(*args: Any, **kwargs: Any) -> Any:
        seen["stage2"] = torch.get_num_threads()
        return train(*args, **kwargs)

    monkeypatch.setattr(pack, "build_feature_cache", spy_build)
    monkeypatch.setattr(pack, "train_pack", spy_train)
    root = str(synth.root)
    data = DataConfig(str(synth.train_json), str(synth.val_json), root, root)
    cfg = tiny_decoupled(data, tmp_path / "cache", build_threads=2)
    result = run_trial(cfg, workdir=tmp_path / "run")
    assert result.metrics["bbox/AP"] >= 0
    [meta] = (tmp_path / "cache" / "stage1").glob("*/stage1.json")
    assert json.loads(meta.read_text())["threads"] == 2  # recorded with the weights
    assert seen == {"cache": 2, "stage2": 1}
    assert torch.get_num_threads() == 1  # given back
