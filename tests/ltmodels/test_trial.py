"""Trials on generated data: they learn, DDP equals one process, resume is exact, stage 1 and
the feature cache are built once and reused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from ltmodels.data.synthetic import SynthConfig, SynthPaths, ensure_synthetic
from ltmodels.engine.checkpoint import load_checkpoint
from ltmodels.evaluation.metrics import evaluate_lvis
from ltmodels.trial import schedules
from ltmodels.trial.config import (
    DataConfig,
    StageConfig,
    TrialConfig,
    TrialResult,
    trial_config_from_dict,
    trial_config_to_dict,
)
from ltmodels.trial.run import run_trial

HERE = Path(__file__).resolve().parent
# 8 classes, 32 training images of 64 px: an epoch of the tiny model is ~1-2 s on one core.
SYNTH = SynthConfig(num_classes=8, train_images=32, val_images=16, image_size=64, seed=0)
MODEL = {"backbone": "tiny", "min_size": 64, "max_size": 64, "masks": False}
STAGE1 = StageConfig(loss="ce", epochs=8, lr=0.02, batch_size=4, warmup_iters=10)


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> SynthPaths:
    return ensure_synthetic(tmp_path_factory.mktemp("trial-data"), SYNTH)


@pytest.fixture(scope="module")
def data(synth: SynthPaths) -> DataConfig:
    root = str(synth.root)
    return DataConfig(str(synth.train_json), str(synth.val_json), root, root)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Shared by the decoupled tests of this module: stage 1 is trained once."""
    return str(tmp_path_factory.mktemp("trial-cache"))


@pytest.fixture(scope="module")
def random_ap(synth: SynthPaths) -> float:
    """bbox AP of random boxes: 20 per image and category, uniform corners, random scores."""
    gt = json.loads(synth.val_json.read_text())
    rng = np.random.default_rng(0)
    dets = []
    for im in gt["images"]:
        w, h = im["width"], im["height"]
        for cat in gt["categories"]:
            xs, ys = np.sort(rng.uniform(0, w, (20, 2))), np.sort(rng.uniform(0, h, (20, 2)))
            for (x0, x1), (y0, y1), s in zip(xs, ys, rng.random(20), strict=True):
                box = [float(x0), float(y0), float(x1 - x0 + 1), float(y1 - y0 + 1)]
                dets.append(
                    {"image_id": im["id"], "category_id": cat["id"], "bbox": box, "score": s}
                )
    ap = float(evaluate_lvis(gt, dets, "bbox")["AP"])
    assert 0.0 <= ap < 0.01
    return ap


def decoupled(data: DataConfig, cache_dir: str, train: StageConfig, seed: int = 0):
    return TrialConfig(
        data=data,
        train=train,
        stage1=STAGE1,
        schedule="decoupled",
        model=MODEL,
        seed=seed,
        eval_masks=False,
        cache_dir=cache_dir,
    )


def cached_ce_trial(data: DataConfig, tmp_path: Path, *, epochs: int) -> TrialConfig:
    """A decoupled CE trial on the feature cache, with a 1-epoch stage 1 under tmp_path."""
    train = StageConfig(
        loss="ce",
        epochs=epochs,
        lr=0.01,
        batch_size=8,
        warmup_iters=2,
        finetune=("box_predictor",),
        use_feature_cache=True,
    )
    cache = str(tmp_path / "cache")
    return replace(decoupled(data, cache, train), stage1=replace(STAGE1, epochs=1))


def assert_learned(res: TrialResult, random_ap: float, epochs: int) -> None:
    losses = [e["loss"] for e in res.epochs]
    assert len(losses) == epochs
    assert losses[-1] < losses[0]
    ap = res.metrics["bbox/AP"]
    assert ap > max(5 * random_ap, random_ap + 0.003), (ap, random_ap)
    assert res.categories and all(r["iou_type"] == "bbox" for r in res.categories)


@pytest.mark.slow
def test_end_to_end_trial_learns(data: DataConfig, random_ap: float, tmp_path: Path) -> None:
    epochs: list[int] = []
    cfg = TrialConfig(
        data=data,
        train=replace(STAGE1, loss="eqlv2"),
        model=MODEL,
        eval_masks=False,
        cache_dir=str(tmp_path / "cache"),
    )
    res = run_trial(cfg, workdir=tmp_path / "run", on_epoch=lambda e, s, d: epochs.append(e))
    assert epochs == list(range(8))
    assert_learned(res, random_ap, 8)
    assert res.epochs[-1]["loss"] < 0.6 * res.epochs[0]["loss"]
    assert set(res.timings) == {"train", "eval"}


@pytest.mark.slow
def test_decoupled_full_stage2_learns(
    data: DataConfig, cache_dir: str, random_ap: float, tmp_path: Path
) -> None:
    train = StageConfig(
        loss="seesaw",
        epochs=3,
        lr=0.01,
        batch_size=4,
        warmup_iters=4,
        finetune=("box_predictor", "box_head"),
    )
    res = run_trial(decoupled(data, cache_dir, train), workdir=tmp_path)
    assert_learned(res, random_ap, 3)
    assert set(res.timings) == {"stage1", "train", "eval"}
    # only the named parts moved: the backbone is stage 1's
    stage1 = next(Path(cache_dir, "stage1").glob("*/model.pt"))
    before = load_checkpoint(stage1, restore_rng=False)["model"]
    after = load_checkpoint(tmp_path / "checkpoint.pt", restore_rng=False)["model"]
    for name in ("backbone.stem.0.0.weight", "rpn.head.conv.0.0.weight"):
        assert torch.equal(before[name], after[name]), name
    assert not torch.equal(
        before["roi_heads.box_head.fc6.weight"], after["roi_heads.box_head.fc6.weight"]
    )


@pytest.mark.slow
def test_decoupled_cached_trial_learns_and_reuses_stage1_and_cache(
    data: DataConfig,
    cache_dir: str,
    random_ap: float,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    train = StageConfig(
        loss="acsl",
        loss_params={"xi": 0.5},
        epochs=4,
        lr=0.01,
        batch_size=8,
        warmup_iters=4,
        finetune=("box_predictor",),
        use_feature_cache=True,
    )
    first = run_trial(decoupled(data, cache_dir, train), workdir=tmp_path / "a")
    assert_learned(first, random_ap, 4)
    stage1 = next(Path(cache_dir, "stage1").glob("*/model.pt"))
    manifests = sorted(Path(cache_dir, "features").glob("*/manifest.json"))
    assert len(manifests) == 1
    mtimes = [p.stat().st_mtime_ns for p in (stage1, *manifests)]

    import ltmodels.cache.build as feature_build

    calls: list[str] = []

    def counting(name, fn):
        def wrapped(*args, **kwargs):
            calls.append(name)
            return fn(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(schedules, "train_stage", counting("stage1", schedules.train_stage))
    monkeypatch.setattr(feature_build, "_build", counting("features", feature_build._build))
    second = run_trial(decoupled(data, cache_dir, train, seed=1), workdir=tmp_path / "b")
    assert calls == []
    assert [p.stat().st_mtime_ns for p in (stage1, *manifests)] == mtimes
    assert (
        second.timings["stage1"] < 0.5 and second.timings["cache"] < 0.5 * first.timings["cache"]
    )
    assert second.metrics["bbox/AP"] > random_ap
    assert second.metrics != first.metrics  # another seed: another predictor


def start_trial(cfg: TrialConfig, workdir: Path, tag: str) -> tuple[subprocess.Popen, Path]:
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / f"{tag}.json"
    config.write_text(json.dumps(trial_config_to_dict(cfg)))
    result = workdir / f"{tag}-result.json"
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "trial_proc.py"), str(config), str(workdir), str(result)],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    return proc, result


def test_config_round_trip(data: DataConfig, cache_dir: str) -> None:
    cfg = decoupled(data, cache_dir, replace(STAGE1, finetune=("box_predictor", "box_head")))
    back = trial_config_from_dict(json.loads(json.dumps(trial_config_to_dict(cfg))))
    assert back == cfg and isinstance(back.train.finetune, tuple)


@pytest.mark.slow
def test_concurrent_trials_train_stage1_and_build_the_cache_once(
    data: DataConfig, tmp_path: Path
) -> None:
    cfg = cached_ce_trial(data, tmp_path, epochs=2)
    procs = [start_trial(cfg, tmp_path / f"run{i}", "trial") for i in range(2)]
    logs = [p.communicate(timeout=300)[1] for p, _ in procs]
    for (p, _), log in zip(procs, logs, strict=True):
        assert p.returncode == 0, log
    text = "".join(logs)
    assert text.count("training stage 1") == 1, text
    assert text.count("feature cache") == 1 and "reusing" in text, text  # one built, one reused
    assert len(list((tmp_path / "cache" / "stage1").glob("*/model.pt"))) == 1
    results = [json.loads(r.read_text()) for _, r in procs]
    assert results[0]["metrics"] == results[1]["metrics"]  # same stage 1, cache and seed


@pytest.mark.slow
def test_killed_trial_resumes_exactly(data: DataConfig, tmp_path: Path) -> None:
    cfg = TrialConfig(
        data=data,
        train=StageConfig(
            loss="seesaw",
            epochs=3,
            lr=0.02,
            batch_size=4,
            warmup_iters=4,
            sampler="rfs",
            rfs_threshold=0.3,
        ),  # fmt: skip
        model=MODEL,
        seed=3,
        eval_masks=False,
        cache_dir=str(tmp_path / "cache"),
    )
    killed = tmp_path / "killed"
    proc, _ = start_trial(cfg, killed, "trial")
    ckpt = killed / "checkpoint.pt"
    deadline = time.monotonic() + 240
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    done = load_checkpoint(ckpt, restore_rng=False)["epoch"]
    assert 1 <= done < 3

    resumed_epochs: list[int] = []
    resumed = run_trial(cfg, workdir=killed, on_epoch=lambda e, s, d: resumed_epochs.append(e))
    assert resumed_epochs == list(range(done, 3))
    assert [e["epoch"] for e in resumed.epochs] == [0.0, 1.0, 2.0]

    straight = run_trial(cfg, workdir=tmp_path / "straight")
    a = load_checkpoint(ckpt, restore_rng=False)
    b = load_checkpoint(tmp_path / "straight" / "checkpoint.pt", restore_rng=False)
    assert a["epoch"] == b["epoch"] == 3
    for name, value in b["model"].items():
        assert torch.equal(a["model"][name], value), name
    assert [e["loss"] for e in resumed.epochs] == [e["loss"] for e in straight.epochs]
    assert resumed.metrics == straight.metrics


@pytest.mark.slow
def test_two_ddp_workers_on_half_batches_equal_one_process(synth: SynthPaths, tmp_path: Path):
    """2 gloo workers (``train_stage``, per-worker batch 2) vs 1 process (batch 4), 4 steps
    (``ddp_equivalence.ITERATIONS``: longer runs drift apart on some CPUs): same loss
    history, same EQLv2 gradient statistics, same weights up to float reduction order;
    the samplers' shards interleave to the single-process epoch (2 epochs of them)."""
    subprocess.run(
        [
            sys.executable,
            str(HERE / "ddp_equivalence.py"),
            str(synth.train_json),
            str(synth.root),
            str(tmp_path),
            "eqlv2",
        ],
        check=True,
        timeout=400,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    one = torch.load(tmp_path / "w1_r0.pt", weights_only=False)
    r0 = torch.load(tmp_path / "w2_r0.pt", weights_only=False)
    r1 = torch.load(tmp_path / "w2_r1.pt", weights_only=False)
    # the two workers hold identical replicas
    for name, value in r0["state"].items():
        assert torch.equal(value, r1["state"][name]), name
    for h1, h2 in zip(one["history"], r0["history"], strict=True):
        assert h1["images"] == 16 and h2["images"] == 8  # per worker: half of each batch
        assert h1["iterations"] == h2["iterations"] == 4
        for key in ("loss", "loss_cls", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"):
            assert h2[key] == pytest.approx(h1[key], rel=1e-5), key
    stats = ("pos_grad", "neg_grad", "num_updates")
    for name in (f"roi_heads.cls_loss.{s}" for s in stats):
        torch.testing.assert_close(r0["state"][name], one["state"][name], rtol=1e-5, atol=1e-4)
    assert int(one["state"]["roi_heads.cls_loss.num_updates"]) == 4
    moved = 0.0
    for name, value in one["state"].items():
        if value.is_floating_point():
            torch.testing.assert_close(r0["state"][name], value, rtol=1e-4, atol=1e-5)
            moved = max(moved, float((value - load_init(tmp_path)[name]).abs().max()))
    assert moved > 1e-2  # training changed the weights: the comparison is not vacuous
    for kind in ("random", "rfs"):
        for epoch, single in enumerate(one["shards"][kind]):
            s0, s1 = r0["shards"][kind][epoch], r1["shards"][kind][epoch]
            assert len(s0) == len(s1) == -(-len(single) // 2)
            assert [i for pair in zip(s0, s1, strict=True) for i in pair][: len(single)] == single
        assert one["shards"][kind][0] != one["shards"][kind][1]  # reshuffled per epoch
    assert len(one["shards"]["rfs"][0]) > 32  # rare images repeated


def load_init(out: Path) -> dict[str, torch.Tensor]:
    """The weights both runs started from (ddp_equivalence seeds the model with 0)."""
    return torch.load(out / "init.pt", weights_only=False)


def test_ddp_worker_rng_states_are_kept_per_rank(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Rank 0's RNG state is in the checkpoint; other ranks keep theirs next to it, and a
    resumed worker restores its own (a stale one, of another epoch, is not used)."""
    from ltmodels.trial import stages

    ckpt = tmp_path / "checkpoint.pt"
    monkeypatch.setattr(stages.dist_utils, "rank", lambda: 0)
    stages._save_worker_rng(ckpt, 2)
    assert list(tmp_path.iterdir()) == []  # rank 0: nothing besides the checkpoint
    monkeypatch.setattr(stages.dist_utils, "rank", lambda: 1)
    torch.manual_seed(11)
    stages._save_worker_rng(ckpt, 2)
    expected = torch.rand(5)
    torch.manual_seed(12)
    stages._restore_worker_rng(ckpt, 2)
    assert torch.equal(torch.rand(5), expected)
    torch.manual_seed(12)
    other = torch.rand(5)
    torch.manual_seed(12)
    stages._restore_worker_rng(ckpt, 3)  # the checkpoint is of epoch 3: file is stale
    assert torch.equal(torch.rand(5), other)
    assert "not exact" in caplog.text


@pytest.mark.slow
def test_cached_trial_full_eval_adds_segm_metrics(data: DataConfig, tmp_path: Path) -> None:
    """``full_eval``: the box metrics still come from the cache (equal with and without it,
    same seed); the whole model's pass adds the segm metrics and their per-category rows."""
    cfg = replace(
        cached_ce_trial(data, tmp_path, epochs=1),
        model={**MODEL, "masks": True},
        eval_masks=True,
        full_eval=True,
    )
    full = run_trial(cfg, workdir=tmp_path / "full")
    assert "segm/AP" in full.metrics and "full_eval" in full.timings
    assert {r["iou_type"] for r in full.categories} == {"bbox", "segm"}
    boxes_only = run_trial(replace(cfg, full_eval=False), workdir=tmp_path / "boxes")
    assert not any(k.startswith("segm/") for k in boxes_only.metrics)
    assert boxes_only.metrics["bbox/AP"] == full.metrics["bbox/AP"]
