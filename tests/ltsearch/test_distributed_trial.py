"""A trial as a Ray Train TorchTrainer: 2 CPU workers (gloo DDP) on a local Ray."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from ltmodels.data.synthetic import SynthConfig, ensure_synthetic
from ltmodels.trial.config import DataConfig, StageConfig, TrialConfig
from ltsearch.run.distributed import CHECKPOINT_FILE, RESULT_FILE, STORAGE_NAME

MODEL = {"backbone": "tiny", "min_size": 64, "max_size": 64, "masks": False}


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_run_distributed_two_cpu_workers(ray_local, tmp_path: Path) -> None:
    """A decoupled trial: stage 1 trained by both workers (rank 0 holds the stage-1 lock and
    tells the other to train), then stage 2 reported per epoch with its checkpoint."""
    from ltsearch.run.distributed import run_distributed

    synth = ensure_synthetic(
        tmp_path / "data", SynthConfig(num_classes=6, train_images=16, val_images=8, image_size=64)
    )
    root = str(synth.root)
    cfg = TrialConfig(
        data=DataConfig(str(synth.train_json), str(synth.val_json), root, root),
        schedule="decoupled",
        stage1=StageConfig(loss="ce", epochs=1, lr=0.02, batch_size=4, warmup_iters=2),
        train=StageConfig(
            loss="eqlv2",
            epochs=2,
            lr=0.01,
            batch_size=4,
            warmup_iters=2,
            finetune=("box_predictor", "box_head"),
        ),
        model=MODEL,
        eval_masks=False,
        cache_dir=str(tmp_path / "cache"),
    )
    workdir = tmp_path / "run"
    resources = SimpleNamespace(workers=2, cpus_per_worker=1.0, gpus_per_worker=0.0)
    result = run_distributed(cfg, workdir=workdir, resources=resources)

    assert {"bbox/AP", "bbox/APr", "bbox/APc", "bbox/APf"} <= set(result.metrics)
    assert all(isinstance(v, float) for v in result.metrics.values())
    assert "segm/AP" not in result.metrics
    # per-worker images: 16 images, 2 workers -> 8 each per epoch
    assert [e["epoch"] for e in result.epochs] == [0.0, 1.0]
    assert all(e["images"] == 8 and e["iterations"] == 4 for e in result.epochs)
    assert set(result.timings) == {"stage1", "train", "eval"}
    assert len(list((tmp_path / "cache" / "stage1").glob("*/model.pt"))) == 1
    saved = json.loads((workdir / RESULT_FILE).read_text())
    assert saved["metrics"] == result.metrics
    # Ray Train kept the last reported checkpoint (the trial's checkpoint file alone)
    ckpts = [p for p in (workdir / STORAGE_NAME).glob("checkpoint_*") if p.is_dir()]
    assert len(ckpts) == 1
    assert [p.name for p in ckpts[0].iterdir()] == [CHECKPOINT_FILE]
