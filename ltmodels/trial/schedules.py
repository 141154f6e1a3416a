"""The two schedules a trial can follow: ``end_to_end`` and ``decoupled``; and
``stage1_only``, a decoupled study's stage-1 model evaluated as is (the papers' "before
re-balancing" row): no training of its own, the cached stage 1 (trained here if missing).

``decoupled`` trains stage 1 once per stage-1 spec: the weights are cached under
``<cache_dir>/stage1/<key>/model.pt`` (key = hash of the stage-1 config, model spec and
dataset files) behind a file lock, so concurrent trials wait for the one producer and
later studies reuse it. Stage 2 either fine-tunes the named parts of the whole model, or,
when only the box predictor trains, trains it on the RoI-feature cache of that stage-1
checkpoint (:mod:`ltmodels.cache`): predictor training + NMS + evaluation only.

Cached checkpoints (stage 1's ``model.pt`` and ``train.pt``, a trial's ``checkpoint.pt``)
are checked against their sha256 before use; a damaged one is discarded with one log line
and rebuilt (stage 1 retrains, a trial restarts its training). The feature cache records
the sha256 of the stage-1 weights it was built from, so new weights rebuild it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ltmodels.cache.store import exclusive_lock
from ltmodels.data import LVISDetection
from ltmodels.engine import distributed as dist_utils
from ltmodels.engine import phases
from ltmodels.engine.checkpoint import (
    checkpoint_problem,
    drop_damaged,
    load_checkpoint,
    save_checkpoint,
)
from ltmodels.engine.ema import WeightEMA
from ltmodels.engine.evaluate import predict, score_detections
from ltmodels.engine.threads import torch_threads
from ltmodels.losses import build_loss
from ltmodels.modeling.detector import ModelSpec, build_detector
from ltmodels.trial.config import StageConfig, TrialConfig, TrialResult, stage_key_fields
from ltmodels.trial.stages import (
    EpochCallback,
    Timer,
    cool_down,
    datasets,
    eval_loader,
    freeze_except,
    load_matching,
    train_loader,
    train_stage,
)

log = logging.getLogger(__name__)


def model_spec(overrides: dict[str, Any]) -> ModelSpec:
    """``ModelSpec.tiny`` for the tiny backbone, ``ModelSpec.paper`` otherwise, then the
    study's overrides."""
    preset = ModelSpec.tiny if overrides.get("backbone") == "tiny" else ModelSpec.paper
    return preset(**overrides)


def device_of(name: str) -> torch.device:
    if name == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("the trial asks for a GPU but CUDA is not available here")
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def build_model(
    spec: ModelSpec, stage: StageConfig, train_set: LVISDetection, device: torch.device
) -> nn.Module:
    loss = build_loss(stage.loss, num_classes=train_set.num_classes, **dict(stage.loss_params))
    model = build_detector(
        spec,
        loss,
        train_set.num_classes,
        image_counts=train_set.image_counts,
        num_images=len(train_set),
    )
    return model.to(device)


def full_evaluation(
    model: nn.Module, val_set: LVISDetection, cfg: TrialConfig, spec: ModelSpec, device
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Whole-model LVIS evaluation: bbox, plus segm when the model has masks and the trial
    asks for them; per-category rows carry their IoU type."""
    iou_types = ("bbox", "segm") if spec.masks and cfg.eval_masks else ("bbox",)
    dets = predict(
        model,
        eval_loader(val_set, workers=cfg.loader_workers),
        device=device,
        label_to_cat_id=val_set.label_to_cat_id,
        masks="segm" in iou_types,
    )
    metrics, per_cat = score_detections(dets, cfg.data.val_json, iou_types=iou_types)
    rows = [{**r, "iou_type": t} for t, table in per_cat.items() for r in table]
    return metrics, rows


def _file_sig(path: str) -> dict[str, Any]:
    p = Path(path)
    return {"path": str(p.resolve()), "size": p.stat().st_size}


def stage1_key(cfg: TrialConfig, spec: ModelSpec) -> str:
    """Hash of what stage 1 trains on and how: reused by every trial and study that agree."""
    assert cfg.stage1 is not None
    payload = {
        "stage1": stage_key_fields(cfg.stage1),
        "model": asdict(spec),
        "train": _file_sig(cfg.data.train_json),
        "val": _file_sig(cfg.data.val_json),
        "format": 1,
    }
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def ensure_stage1(
    cfg: TrialConfig, spec: ModelSpec, train_set: LVISDetection, device: torch.device
) -> tuple[Path, str]:
    """Train stage 1 unless its weights are cached; return (weights path, key).

    One producer: the first caller holds ``<key>.lock`` and trains (checkpointing each epoch,
    so an interrupted stage 1 resumes); the others block on the lock, then reuse it.
    Under DDP rank 0 alone takes the lock and decides; every worker trains when it says so
    (the training all-reduces), and all wait until rank 0 has written the weights. Damaged
    weights or a damaged ``train.pt`` are discarded (one log line) and stage 1 retrained.
    """
    assert cfg.stage1 is not None
    key = stage1_key(cfg, spec)
    root = Path(cfg.cache_dir) / "stage1"
    final = root / key / "model.pt"
    root.mkdir(parents=True, exist_ok=True)
    distributed = dist_utils.is_distributed()
    if not distributed and final.exists() and checkpoint_problem(final) is None:
        return final, key
    leader = dist_utils.rank() == 0
    phases.report("stage1_wait")  # until the lock is ours, or another trial has trained it
    with exclusive_lock(root / f".{key}.lock") if leader else nullcontext():
        if leader:  # checked again under the lock: another trial may have rebuilt it
            drop_damaged(final, f"training stage 1 ({key}) again")
        train = not final.exists() if leader else False
        if train:
            drop_damaged(final.parent / "train.pt", "stage 1 starts from its first epoch")
        if distributed:
            flag = [train]
            torch.distributed.broadcast_object_list(flag, src=0)
            train = bool(flag[0])
        if train:
            lend = cfg.build_threads if device.type == "cpu" and not distributed else 0
            with torch_threads(lend):
                _train_stage1(cfg, spec, train_set, device, final, key)
        if distributed:
            torch.distributed.barrier()
        if train and leader:  # the weights are final: drop the resumable training state
            for leftover in final.parent.glob("train.pt*"):
                leftover.unlink(missing_ok=True)
    return final, key


def _train_stage1(
    cfg: TrialConfig,
    spec: ModelSpec,
    train_set: LVISDetection,
    device: torch.device,
    final: Path,
    key: str,
) -> None:
    stage = cfg.stage1
    assert stage is not None
    phases.report("stage1")  # only when it trains: a cached stage 1 is no phase of the run
    torch.manual_seed(stage.seed)
    model = build_model(spec, stage, train_set, device)
    loader = train_loader(train_set, stage, seed=stage.seed, workers=cfg.loader_workers)
    threads = torch.get_num_threads()
    log.info("training stage 1 (%s) into %s, %d thread(s)", stage.loss, final.parent, threads)

    n_epochs = stage.budget(len(loader))[0]

    def progress(epoch: int, stats: dict[str, float], _ckpt: Path) -> None:
        log.info(
            "stage 1 (%s): epoch %d/%d, loss %.3f, %.0f s",
            stage.loss,
            epoch + 1,
            n_epochs,
            stats["loss"],
            stats["seconds"],
        )

    train_stage(
        model, stage, loader, device=device, ckpt_path=final.parent / "train.pt", on_epoch=progress
    )
    if dist_utils.rank() == 0:
        final.parent.mkdir(parents=True, exist_ok=True)
        (final.parent / "stage1.json").write_text(
            json.dumps(
                {"stage1": asdict(stage), "model": asdict(spec), "threads": threads}, default=str
            )
        )
        save_checkpoint(final, model=model, epoch=n_epochs, extra={"key": key})


def stage2_model(
    cfg: TrialConfig, spec: ModelSpec, train_set: LVISDetection, weights: Path, device
) -> nn.Module:
    """The trial's detector, initialised from stage 1 (a classifier of another width or
    kind starts fresh), AHR clusters fitted on the stage-1 class weights."""
    torch.manual_seed(cfg.seed)
    model = build_model(spec, cfg.train, train_set, device)
    state = load_checkpoint(weights, restore_rng=False)["model"]
    # the trial's loss keeps its own fresh state (stage 1's loss statistics are not its own)
    weights_only = {k: v for k, v in state.items() if not k.startswith("roi_heads.cls_loss.")}
    skipped = [k for k in load_matching(model, weights_only) if "cls_loss." not in k]
    if skipped:
        log.debug("stage 2 starts these from scratch (shape differs from stage 1): %s", skipped)
    loss = model.roi_heads.cls_loss
    if hasattr(loss, "fit_clusters"):
        assert cfg.stage1 is not None
        prefix = "roi_heads.box_predictor."
        w = state.get(prefix + "cls_score.weight", state.get(prefix + "weight"))
        if w is None:
            raise RuntimeError(f"stage-1 checkpoint {weights} has no classifier weight")
        w = w.to(device)
        s1 = build_loss(cfg.stage1.loss, num_classes=train_set.num_classes)
        loss.fit_clusters(s1.foreground_logits(w.t()).t().float())
    return model


def stage1_only(
    cfg: TrialConfig, spec: ModelSpec, train_set: LVISDetection, val_set: LVISDetection, device
) -> TrialResult:
    """The stage-1 model, exactly as every trial starts from it, evaluated on the whole
    validation set (bbox, and segm when ``cfg.eval_masks``)."""
    assert cfg.stage1 is not None
    timer = Timer()
    with timer("stage1", report=False):  # ensure_stage1 reports what it does
        weights, _key = ensure_stage1(cfg, spec, train_set, device)
    model = build_model(spec, cfg.stage1, train_set, device)
    load_checkpoint(weights, model=model, restore_rng=False)
    with timer("eval"):
        metrics, rows = full_evaluation(model, val_set, cfg, spec, device)
    return TrialResult(metrics, [], rows, dict(timer.totals))


def run_schedule(cfg: TrialConfig, workdir: Path, on_epoch: EpochCallback | None) -> TrialResult:
    """See :func:`ltmodels.trial.run.run_trial`."""
    timer = Timer()
    device = device_of(cfg.device)
    spec = model_spec(dict(cfg.model))
    phases.report("data")
    train_set, val_set = datasets(cfg.data, masks=spec.masks)
    workdir.mkdir(parents=True, exist_ok=True)
    if cfg.schedule == "stage1_only":
        return stage1_only(cfg, spec, train_set, val_set, device)
    if cfg.schedule == "end_to_end":
        torch.manual_seed(cfg.seed)
        model = build_model(spec, cfg.train, train_set, device)
    elif cfg.schedule == "decoupled":
        with timer("stage1", report=False):  # ensure_stage1 reports what it does
            weights, _key = ensure_stage1(cfg, spec, train_set, device)
        if cfg.train.use_feature_cache:
            raise ValueError("feature-cache trials run through ltmodels.trial.pack.run_pack")
        model = stage2_model(cfg, spec, train_set, weights, device)
        freeze_except(model, cfg.train.finetune)
    else:
        raise ValueError(f"unknown schedule {cfg.schedule!r}")
    loader = train_loader(train_set, cfg.train, seed=cfg.seed, workers=cfg.loader_workers)
    ckpt = workdir / "checkpoint.pt"
    if dist_utils.rank() == 0:
        drop_damaged(ckpt, "the trial trains from its first epoch")
    if dist_utils.is_distributed():
        torch.distributed.barrier()
    ema = rung_average(cfg, model, len(loader))
    with timer("train"):
        history = train_stage(
            model,
            cfg.train,
            loader,
            device=device,
            ckpt_path=ckpt,
            on_epoch=on_epoch,
            stop_at=cfg.stop_at_epoch,
            ema=ema,
        )
    evaluated = model
    if cfg.rung_cooldown is not None and at_a_rung(cfg, len(loader)):
        with timer("cooldown"):
            evaluated = cool_down(
                model, cfg.train, loader, device=device, ckpt_path=ckpt, epochs=cfg.rung_cooldown
            )
    with timer("eval"), ema.applied() if ema is not None else nullcontext():
        metrics, rows = full_evaluation(evaluated, val_set, cfg, spec, device)
    return TrialResult(metrics, history, rows, dict(timer.totals))


def at_a_rung(cfg: TrialConfig, steps_per_epoch: int) -> bool:
    """Whether this run stops at a rung before the end of its schedule (then a rung's
    average or cooldown applies; a run trained to its end is evaluated on its weights)."""
    if cfg.stop_at_epoch is None:
        return False
    return cfg.stop_at_epoch < cfg.train.budget(steps_per_epoch)[0]


def rung_average(
    cfg: TrialConfig, model: torch.nn.Module, steps_per_epoch: int
) -> WeightEMA | None:
    """The weight average a rung evaluates (``cfg.rung_ema``), or None: no average asked
    for, or the run trains to its end this time (its final evaluation is of its weights)."""
    if cfg.rung_ema is None or not at_a_rung(cfg, steps_per_epoch):
        return None
    return WeightEMA(model, cfg.rung_ema * steps_per_epoch)
