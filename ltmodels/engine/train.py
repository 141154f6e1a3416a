"""The detector's training loop (torchvision ``references/detection`` style).

Plain functions: :func:`build_optimizer`, :class:`WarmupMultiStepLR`,
:func:`train_one_epoch`; inference and LVIS scoring are in :mod:`ltmodels.engine.evaluate`,
checkpoints in :mod:`ltmodels.engine.checkpoint`. A loader yields ``(images, targets)`` as
:func:`ltmodels.data.lvis.collate_fn` builds them: a list of ``[3, H, W]`` float images and a
list of torchvision target dicts with an ``image_id``.

A non-finite loss stops training with :class:`NonFiniteLossError` (iteration and every loss
term in the message). Under DDP the logged terms are averaged over workers first, so every
worker sees the same values and stops together.
"""

from __future__ import annotations

import logging
import math
import time
from bisect import bisect_right
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

from ltmodels.engine import distributed as dist_utils

log = logging.getLogger(__name__)

Batch = tuple[Sequence[torch.Tensor], Sequence[dict[str, Any]]]


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; carries where and the terms."""

    def __init__(self, epoch: int, iteration: int, terms: Mapping[str, float]) -> None:
        self.epoch, self.iteration, self.terms = epoch, iteration, dict(terms)
        shown = ", ".join(f"{k}={v:.4g}" for k, v in self.terms.items())
        super().__init__(f"non-finite loss at epoch {epoch}, iteration {iteration}: {shown}")


def build_optimizer(
    model: nn.Module,
    *,
    lr: float,
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
    params: Iterable[nn.Parameter] | None = None,
) -> torch.optim.SGD:
    """SGD with momentum over the trainable parameters (``params`` restricts them further,
    e.g. to the box predictor for decoupled stage 2)."""
    chosen = model.parameters() if params is None else params
    trainable = [p for p in chosen if p.requires_grad]
    if not trainable:
        raise ValueError("no trainable parameters to optimise")
    return torch.optim.SGD(trainable, lr=lr, momentum=momentum, weight_decay=weight_decay)


class WarmupMultiStepLR(LRScheduler):
    """Linear warm-up, then step decay at fractions of training; stepped every iteration.

    The papers' LVIS schedule (detectron2 / MMDetection 1x): decay by 10 at 2/3 and 8/9 of
    the iterations (60k and 80k of 90k), warm-up from 0.001 x lr. Fractions make the same
    schedule fit any number of epochs: pass ``total_iters = epochs * iterations_per_epoch``.

    Args:
        optimizer: the optimizer.
        total_iters: iterations of the whole run.
        milestones: fractions of ``total_iters`` in (0, 1] where the lr is multiplied by
            ``gamma``.
        gamma: decay factor.
        warmup_iters: length of the linear warm-up (clipped to ``total_iters``).
        warmup_factor: lr multiplier at iteration 0.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        total_iters: int,
        milestones: Sequence[float] = (2 / 3, 8 / 9),
        gamma: float = 0.1,
        warmup_iters: int = 500,
        warmup_factor: float = 0.001,
        last_epoch: int = -1,
    ) -> None:
        if total_iters < 1 or not all(0 < m <= 1 for m in milestones):
            raise ValueError("total_iters must be >= 1 and milestones fractions in (0, 1]")
        self.total_iters = int(total_iters)
        self.milestone_iters = sorted(round(m * total_iters) for m in milestones)
        self.gamma = float(gamma)
        self.warmup_iters = min(int(warmup_iters), self.total_iters)
        self.warmup_factor = float(warmup_factor)
        super().__init__(optimizer, last_epoch)

    def factor(self, it: int) -> float:
        """lr multiplier at iteration ``it`` (0-based)."""
        decay = self.gamma ** bisect_right(self.milestone_iters, it)
        if it >= self.warmup_iters:
            return decay
        alpha = it / self.warmup_iters
        return decay * (self.warmup_factor * (1 - alpha) + alpha)

    def get_lr(self) -> list[float]:  # type: ignore[override]
        f = self.factor(self.last_epoch)
        return [float(base) * f for base in self.base_lrs]


class LinearCooldownLR(LRScheduler):
    """The learning rate decaying linearly from ``start_lrs`` (one per parameter group) to 0
    over ``steps`` iterations: ``start * (1 - it / steps)`` at iteration ``it`` (0-based), so
    the first step is at ``start`` and the last at ``start / steps``."""

    def __init__(
        self, optimizer: torch.optim.Optimizer, start_lrs: Sequence[float], steps: int
    ) -> None:
        if steps < 1 or len(start_lrs) != len(optimizer.param_groups):
            raise ValueError("steps must be >= 1, with one start lr per parameter group")
        self.start_lrs = [float(lr) for lr in start_lrs]
        self.steps = int(steps)
        super().__init__(optimizer)

    def get_lr(self) -> list[float]:  # type: ignore[override]
        f = max(0.0, 1.0 - self.last_epoch / self.steps)
        return [lr * f for lr in self.start_lrs]


def _to_device(batch: Batch, device: torch.device) -> Batch:
    images, targets = batch
    moved = [
        {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in t.items()}
        for t in targets
    ]
    return [im.to(device, non_blocking=True) for im in images], moved


def _set_epoch(loader: Iterable[Any], epoch: int) -> None:
    for sampler in (
        getattr(loader, "sampler", None),
        getattr(getattr(loader, "batch_sampler", None), "sampler", None),
    ):
        set_epoch = getattr(sampler, "set_epoch", None)
        if set_epoch is not None:
            set_epoch(epoch)


def _synced_values(terms: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Loss terms as floats, averaged over DDP workers (one all-reduce)."""
    stacked = torch.stack([v.detach().float() for v in terms.values()])
    stacked = dist_utils.all_reduce_sum(stacked) / dist_utils.world_size()
    return dict(zip(terms, stacked.tolist(), strict=True))


def _backward_step(
    loss: torch.Tensor,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    max_norm: float | None,
) -> None:
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        if max_norm is not None:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        scaler.step(optimizer)
        scaler.update()
        return
    loss.backward()
    if max_norm is not None:
        nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    optimizer.step()


def train_one_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: Iterable[Batch],
    *,
    scheduler: LRScheduler | None,
    device: torch.device | str,
    epoch: int,
    scaler: torch.amp.GradScaler | None = None,
    max_norm: float | None = None,
    log_every: int = 50,
    on_step: Callable[[dict[str, float]], None] | None = None,
    max_steps: int | None = None,
) -> dict[str, float]:
    """Train one pass over ``loader`` (the scheduler steps every iteration), or its first
    ``max_steps`` iterations (the last epoch of an iteration budget).

    Mixed precision (``torch.autocast``) is on when a ``scaler`` is given and the device is
    CUDA. The sampler's ``set_epoch(epoch)`` is called when it has one.

    Args:
        on_step: called after each iteration with ``epoch``, ``iteration`` (within the
            epoch), ``lr``, ``loss`` and every loss term.

    Returns:
        Mean ``loss`` and terms over the epoch, last ``lr``, ``iterations``, ``images``,
        ``seconds`` and ``images_per_s``.

    Raises:
        NonFiniteLossError: the summed loss is NaN or infinite (before any update with it).
    """
    device = torch.device(device)
    amp = scaler is not None and device.type == "cuda"
    model.train()
    _set_epoch(loader, epoch)
    sums: dict[str, float] = {}
    images_seen = iterations = 0
    start = time.perf_counter()
    for it, batch in enumerate(loader):
        if max_steps is not None and it >= max_steps:
            break
        images, targets = _to_device(batch, device)
        with torch.autocast(device.type, enabled=amp):
            terms = model(images, targets)
        loss = sum(terms.values())
        values = _synced_values(terms)
        values["loss"] = sum(values.values())
        if not math.isfinite(values["loss"]):
            raise NonFiniteLossError(epoch, it, values)
        _backward_step(loss, model, optimizer, scaler, max_norm)
        values["lr"] = optimizer.param_groups[0]["lr"]
        if scheduler is not None:
            scheduler.step()
        for k, v in values.items():
            sums[k] = sums.get(k, 0.0) + v
        images_seen += len(images)
        iterations += 1
        if on_step is not None:
            on_step({"epoch": float(epoch), "iteration": float(it), **values})
        if log_every and it % log_every == 0:
            log.info(
                "epoch %d iter %d: loss %.4f lr %.3g", epoch, it, values["loss"], values["lr"]
            )
    seconds = time.perf_counter() - start
    out = {k: v / max(iterations, 1) for k, v in sums.items() if k != "lr"}
    out["lr"] = optimizer.param_groups[0]["lr"]
    out.update(
        iterations=float(iterations),
        images=float(images_seen),
        seconds=seconds,
        images_per_s=images_seen / seconds if seconds > 0 else 0.0,
    )
    return out


__all__ = [
    "Batch",
    "LinearCooldownLR",
    "NonFiniteLossError",
    "WarmupMultiStepLR",
    "build_optimizer",
    "train_one_epoch",
]
