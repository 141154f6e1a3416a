"""Building blocks of a trial's schedule: data, loaders, one training stage, freezing.

Used by :mod:`ltmodels.trial`; every function is plain and Ray-free. Training images are
flipped at random by the dataset and resized by the model's own transform (``ModelSpec``
``min_size``, a tuple for multi-scale jitter), so images are resized exactly once.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from ltmodels.data import (
    LVISDetection,
    RandomHorizontalFlip,
    RepeatFactorSampler,
    ShardedRandomSampler,
    collate_fn,
)
from ltmodels.data.lvis import check_same_categories
from ltmodels.engine import distributed as dist_utils
from ltmodels.engine import phases
from ltmodels.engine.atomic import write_atomic
from ltmodels.engine.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from ltmodels.engine.ema import WeightEMA, load_ema, save_ema
from ltmodels.engine.train import (
    LinearCooldownLR,
    WarmupMultiStepLR,
    build_optimizer,
    train_one_epoch,
)
from ltmodels.errors import ConfigError
from ltmodels.trial.config import FINETUNE_PARTS, DataConfig, StageConfig

log = logging.getLogger(__name__)

EpochCallback = Callable[[int, dict[str, float], Path], None]


def datasets(data: DataConfig, *, masks: bool) -> tuple[LVISDetection, LVISDetection]:
    """Training set (random horizontal flip) and validation set (no transform)."""
    train = LVISDetection(
        data.train_json, data.train_root, transforms=RandomHorizontalFlip(0.5), with_masks=masks
    )
    val = LVISDetection(data.val_json, data.val_root, with_masks=False)
    check_same_categories(train, val)
    return train, val


def train_loader(
    dataset: LVISDetection, stage: StageConfig, *, seed: int, workers: int = 0
) -> DataLoader:
    """A loader over this worker's shard; ``stage.batch_size`` is the total over workers."""
    world = dist_utils.world_size()
    if stage.batch_size % world:
        raise ConfigError(
            f"batch_size {stage.batch_size} does not split over {world} workers; "
            "use a multiple of the number of workers"
        )
    sampler: RepeatFactorSampler | ShardedRandomSampler
    if stage.sampler == "rfs":
        sampler = RepeatFactorSampler(dataset, threshold=stage.rfs_threshold, seed=seed)
    else:
        sampler = ShardedRandomSampler(len(dataset), seed=seed)
    return DataLoader(
        dataset,
        batch_size=stage.batch_size // world,
        sampler=sampler,
        collate_fn=collate_fn,
        num_workers=workers,
        drop_last=False,
    )


def eval_loader(dataset: LVISDetection, *, batch_size: int = 4, workers: int = 0) -> DataLoader:
    sampler = ShardedRandomSampler(len(dataset), shuffle=False)
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate_fn, num_workers=workers
    )


def part_modules(model: nn.Module, part: str) -> list[nn.Module]:
    """The modules a ``finetune`` part names."""
    rh = model.roi_heads
    table: dict[str, list[Any]] = {
        "backbone": [model.backbone],
        "rpn": [model.rpn],
        "box_head": [rh.box_head],
        "box_predictor": [rh.box_predictor],
        "mask_head": [getattr(rh, "mask_head", None), getattr(rh, "mask_predictor", None)],
    }
    if part not in table:
        raise ConfigError(f"unknown finetune part {part!r}; use some of {FINETUNE_PARTS}")
    return [m for m in table[part] if m is not None]


def freeze_except(model: nn.Module, parts: tuple[str, ...]) -> int:
    """Freeze every parameter outside ``parts`` (all train when empty); return how many
    parameters stay trainable. BatchNorm layers left wholly frozen keep their running
    statistics (momentum 0; they still normalise with batch statistics in training mode, as
    in stage 1); GroupNorm, the default, has no such state."""
    if not parts:
        return sum(p.numel() for p in model.parameters() if p.requires_grad)
    for p in model.parameters():
        p.requires_grad_(False)
    training: set[int] = set()
    for part in parts:
        for m in part_modules(model, part):
            training.update(id(sub) for sub in m.modules())
            for p in m.parameters():
                p.requires_grad_(True)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and id(m) not in training:
            m.momentum = 0.0
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def load_matching(model: nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """Load the entries of ``state`` whose name and shape match; return those skipped
    (a stage-2 loss whose classifier differs in width or kind keeps a fresh classifier)."""
    own = model.state_dict()
    keep = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    skipped = sorted(set(own) - set(keep))
    model.load_state_dict(keep, strict=False)
    return skipped


def wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """DDP wrapper when torch.distributed is initialised (Ray Train sets it up)."""
    if not dist_utils.is_distributed():
        return model
    ids = [device.index] if device.type == "cuda" else None
    # No buffer broadcast: loss statistics are already all-reduced by the losses themselves
    # (identical on every worker), and an MFS memory at LVIS scale is ~400 MB that DDP would
    # otherwise send from rank 0 on every forward. GroupNorm (the default) has no buffers.
    return nn.parallel.DistributedDataParallel(
        model, device_ids=ids, find_unused_parameters=True, broadcast_buffers=False
    )


def train_stage(
    model: nn.Module,
    stage: StageConfig,
    loader: DataLoader,
    *,
    device: torch.device,
    ckpt_path: Path,
    on_epoch: EpochCallback | None = None,
    stop_at: int | None = None,
    ema: WeightEMA | None = None,
) -> list[dict[str, float]]:
    """Train ``stage.epochs`` epochs (or ``stage.iterations`` steps, the last epoch cut at
    the budget), checkpointing each epoch; resume from ``ckpt_path`` if a checkpoint of this
    stage is there (exact: optimizer, scheduler, RNG states).

    ``stop_at``: return after that epoch instead (the schedule still spans the whole
    stage), so that a later call goes on exactly as one uninterrupted run.

    Raises:
        RuntimeError: the checkpoint is already past ``stop_at`` (the model could not be
            the one of epoch ``stop_at``).
    """
    # under RFS an epoch's length varies: an iteration budget is counted in steps taken
    n_epochs, total = stage.budget(len(loader))
    end = n_epochs if stop_at is None else min(stop_at, n_epochs)
    ddp = wrap_ddp(model, device)
    optimizer = build_optimizer(
        model, lr=stage.lr, momentum=stage.momentum, weight_decay=stage.weight_decay
    )
    total = max(1, total)
    fractions = stage.milestone_fractions()
    decay = {} if fractions is None else {"milestones": fractions}
    scheduler = WarmupMultiStepLR(
        optimizer, total_iters=total, warmup_iters=stage.warmup_iters, **decay
    )
    scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" else None
    history: list[dict[str, float]] = []
    start = 0
    if ckpt_path.exists():
        payload = load_checkpoint(
            ckpt_path, model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler
        )
        start = int(payload["epoch"])
        history = list(payload["extra"].get("history", []))
        _restore_worker_rng(ckpt_path, start)
        log.info("resumed %s at epoch %d", ckpt_path, start)
    if ema is not None and start > 0 and not load_ema(ckpt_path, ema, start):
        log.warning(
            "no weight average of epoch %d beside %s: it averages from here on", start, ckpt_path
        )
    if start > end:
        raise RuntimeError(f"{ckpt_path} is at epoch {start}, past the epoch {end} asked for")
    epoch = start
    while _more(stage, epoch, end, stop_at, scheduler.last_epoch, total):
        stats = train_one_epoch(
            ddp,
            optimizer,
            loader,
            scheduler=scheduler,
            device=device,
            epoch=epoch,
            scaler=scaler,
            max_norm=stage.max_norm,
            max_steps=None if stage.iterations is None else total - scheduler.last_epoch,
            on_step=None if ema is None else lambda _values: ema.update(),
        )
        history.append({"epoch": float(epoch), **stats})
        if dist_utils.rank() == 0:
            save_checkpoint(
                ckpt_path,
                model=model,
                optimizer=optimizer,
                scheduler=scheduler,
                scaler=scaler,
                epoch=epoch + 1,
                extra={"history": history},
            )
            if ema is not None:
                save_ema(ckpt_path, ema, epoch + 1)
        _save_worker_rng(ckpt_path, epoch + 1)
        phases.epoch_done(epoch + 1, n_epochs)
        if on_epoch is not None:
            on_epoch(epoch, stats, ckpt_path.parent)
        epoch += 1
    return history


def cool_down(
    model: nn.Module,
    stage: StageConfig,
    loader: DataLoader,
    *,
    device: torch.device,
    ckpt_path: Path,
    epochs: float,
) -> nn.Module:
    """A copy of ``model`` trained ``epochs`` (at most one) further from its checkpoint
    ``ckpt_path``, with the learning rate decaying linearly from the checkpoint's to 0: what
    the run would reach if its schedule ended here (the decay branch of a warmup-stable-decay
    schedule). The batches are the first of the next epoch's order. ``model`` is left as it
    is, nothing is written, and the process's RNG states are put back afterwards, so the run
    goes on from its checkpoint exactly as without this.

    Raises:
        ValueError: ``epochs`` outside (0, 1].
    """
    if not 0 < epochs <= 1:
        raise ValueError(f"a cooldown is in (0, 1] epochs, got {epochs}")
    steps = max(1, round(epochs * len(loader)))
    if dist_utils.is_distributed():
        torch.distributed.barrier()  # rank 0 has written the checkpoint
    saved_rng = rng_state()
    fork = copy.deepcopy(model)
    optimizer = build_optimizer(
        fork, lr=stage.lr, momentum=stage.momentum, weight_decay=stage.weight_decay
    )
    scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" else None
    payload = load_checkpoint(
        ckpt_path, model=fork, optimizer=optimizer, scaler=scaler, restore_rng=False
    )
    start_lrs = [float(g["lr"]) for g in optimizer.param_groups]
    scheduler = LinearCooldownLR(optimizer, start_lrs, steps)
    try:
        train_one_epoch(
            wrap_ddp(fork, device),
            optimizer,
            loader,
            scheduler=scheduler,
            device=device,
            epoch=int(payload["epoch"]),
            scaler=scaler,
            max_norm=stage.max_norm,
            max_steps=steps,
        )
    finally:
        set_rng_state(saved_rng)
    log.info("cooled %s down for %d steps from lr %g", ckpt_path, steps, start_lrs[0])
    return fork


def _more(
    stage: StageConfig, epoch: int, end: int, stop_at: int | None, steps: int, total: int
) -> bool:
    """Whether another epoch trains: below ``end`` epochs; under an iteration budget, while
    steps are left (however many epochs that takes) and before ``stop_at``."""
    if stage.iterations is None:
        return epoch < end
    return steps < total and (stop_at is None or epoch < stop_at)


def _worker_rng_path(ckpt_path: Path, rank: int) -> Path:
    return ckpt_path.with_name(f"{ckpt_path.name}.rank{rank}.rng")


def _save_worker_rng(ckpt_path: Path, epoch: int) -> None:
    """Under DDP, workers other than rank 0 keep their own RNG states next to the checkpoint
    (which holds rank 0's), so a resumed run draws what each worker would have drawn."""
    r = dist_utils.rank()
    if r == 0:
        return
    state = {"epoch": epoch, "rng": rng_state()}
    write_atomic(_worker_rng_path(ckpt_path, r), lambda fh: torch.save(state, fh))


def _restore_worker_rng(ckpt_path: Path, epoch: int) -> None:
    r = dist_utils.rank()
    if r == 0:
        return
    path = _worker_rng_path(ckpt_path, r)
    saved = torch.load(path, weights_only=True) if path.exists() else None
    if saved is None or int(saved["epoch"]) != epoch:
        log.warning("rank %d: no RNG state of epoch %d (using rank 0's): not exact", r, epoch)
        return
    set_rng_state(saved["rng"])


class Timer:
    """Accumulates named wall-clock durations (``timings`` of a TrialResult)."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = {}

    def __call__(self, name: str, *, report: bool = True) -> _Span:
        """A span named ``name``; ``report``: also enter the phase ``name``
        (:mod:`ltmodels.engine.phases`) on entering it."""
        return _Span(self, name, report)


class _Span:
    def __init__(self, timer: Timer, name: str, report: bool) -> None:
        self.timer, self.name, self.report = timer, name, report

    def __enter__(self) -> None:
        if self.report:
            phases.report(self.name)
        self.t0 = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        dt = time.perf_counter() - self.t0
        self.timer.totals[self.name] = self.timer.totals.get(self.name, 0.0) + dt
