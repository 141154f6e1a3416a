"""One box predictor trained on cached features: its loss, optimizer, schedule and RNG.

A :class:`Member` is what :func:`ltmodels.cache.train.train_pack` advances by one SGD step on
each batch it reads. Everything that makes a (configuration, seed) run what it is stays the
member's own: the predictor and loss (with their state: EBL scores, GAP / Seesaw counts,
EQLv2 statistics, AHR clusters, an MFS memory), the SGD optimizer and its warm-up /
multi-step schedule, the running means of the loss terms, and torch's global CPU RNG state
(MFS draws its samples from it): the member's state is swapped in around each of its steps,
so K members trained on one pass over the cache draw exactly what each would draw alone.

A member whose step raises (a non-finite loss, a fault in its loss) keeps the exception in
:attr:`Member.error` and takes no further step; the others go on.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ltmodels.cache.store import FeatureCache
from ltmodels.engine.train import NonFiniteLossError, WarmupMultiStepLR
from ltmodels.errors import ConfigError
from ltmodels.losses.base import LongTailLoss
from ltmodels.losses.feature_sampling import MemoryAccess, bind_memory, memory_of
from ltmodels.losses.mfs import memory_gt_index

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class Optim:
    """A member's SGD and schedule.

    Attributes:
        lr, momentum, weight_decay: SGD.
        warmup_iters, milestones: linear warm-up, x0.1 at the milestone fractions of all
            iterations (:class:`~ltmodels.engine.train.WarmupMultiStepLR`, stepped every
            iteration).
        train_box_regression: also train ``bbox_pred`` with the box loss; ``False`` trains
            the classifier only (ACSL) and leaves ``bbox_pred`` untouched.
    """

    lr: float
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iters: int = 500
    milestones: Sequence[float] = (2 / 3, 8 / 9)
    train_box_regression: bool = True


def box_loss(deltas: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """torchvision's fastrcnn box loss: smooth L1 (beta 1/9) on positives, divided by N.

    Args:
        deltas: ``[P, 4]`` regression of the positive rows for their own class.
        labels: ``[N]`` all rows' labels (N is the normaliser). targets: ``[P, 4]``.
    """
    return F.smooth_l1_loss(deltas, targets, beta=1 / 9, reduction="sum") / len(labels)


def _class_deltas(predictor: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``[P, 4]``: the predictor's regression of each row for its label."""
    box_deltas = getattr(predictor, "box_deltas", None)
    if callable(box_deltas):
        return box_deltas(x, labels)
    return predictor(x)[1].reshape(len(labels), -1, 4)[torch.arange(len(labels)), labels]


def _with_memory(memory: MemoryAccess, batch: Batch) -> Batch:
    """Push the batch's positives to ``memory``, append one sample: ``[N + R]`` rows."""
    features, labels, gt_index, targets = batch
    pos = labels > 0
    memory.push(features[pos], labels[pos], targets[pos])
    rows = memory.sample()
    return (
        torch.cat([features, rows.features.to(features.dtype)]),
        torch.cat([labels, rows.labels]),
        torch.cat([gt_index, memory_gt_index(rows.labels, gt_index)]),
        torch.cat([targets, rows.targets.to(targets.dtype)]),
    )


class Member:
    """A (predictor, loss) pair and its own optimizer, schedule, RNG and running means.

    Args:
        predictor: a box predictor (``(logits [N, K], boxes [N, 4 (C + 1)])``,
            ``cls_weight``; ``classify`` / ``box_deltas`` are used when it has them).
        loss: the run's loss.
        optim: its SGD and schedule.
        rng_state: torch's CPU RNG state the run starts from (``None``: it draws from the
            global RNG, as a run alone does, until :meth:`own_rng`).
        name: shown in errors and logs.
    """

    def __init__(
        self,
        predictor: nn.Module,
        loss: LongTailLoss,
        optim: Optim,
        *,
        rng_state: torch.Tensor | None = None,
        name: str = "",
    ) -> None:
        self.predictor, self.loss, self.optim, self.name = predictor, loss, optim, name
        self._rng = rng_state
        self.error: BaseException | None = None
        self.history: list[dict[str, float]] = []
        self._sums: dict[str, float] = {}
        self._done = 0
        self._memory: MemoryAccess | None = None

    def start(self, cache: FeatureCache, total_iters: int, seed: int, device: torch.device):
        """Bind the loss to the cache's width, build the optimizer and schedule, seed torch's
        RNG with ``seed`` (after the MFS memory's allocation, which draws from it)."""
        if self.loss.num_classes != cache.num_classes:
            raise ConfigError(
                f"loss built for {self.loss.num_classes} classes, the feature cache has "
                f"{cache.num_classes}"
            )
        with self._own_rng():
            bind_memory(self.loss, self.predictor.cls_weight.shape[1])
            torch.manual_seed(seed)
        self.predictor.to(device).train()
        self.loss.to(device).train()
        self._memory = memory_of(self.loss)
        named = list(self.predictor.named_parameters()) + list(self.loss.named_parameters())
        boxes = self.optim.train_box_regression
        params = [
            p for n, p in named if p.requires_grad and (boxes or not n.startswith("bbox_pred."))
        ]
        if not params:
            raise ValueError("no trainable parameters in the predictor")
        o = self.optim
        self.optimizer = torch.optim.SGD(
            params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay
        )
        self.scheduler = WarmupMultiStepLR(
            self.optimizer,
            total_iters=total_iters,
            milestones=o.milestones,
            warmup_iters=o.warmup_iters,
        )

    @property
    def active(self) -> bool:
        return self.error is None

    def own_rng(self) -> None:
        """Keep an RNG state of its own from now on (a copy of the global state if it has
        none yet); a member without one draws from the global RNG (a run alone)."""
        if self._rng is None:
            self._rng = torch.get_rng_state()

    @contextlib.contextmanager
    def _own_rng(self) -> Iterator[None]:
        """Swap torch's global CPU RNG state for the member's own while inside."""
        if self._rng is None:
            yield
            return
        outer = torch.get_rng_state()
        if self._rng is not None:
            torch.set_rng_state(self._rng)
        try:
            yield
        finally:
            self._rng = torch.get_rng_state()
            torch.set_rng_state(outer)

    def step(self, batch: Batch, *, epoch: int, iteration: int) -> None:
        """One SGD step on ``batch`` (from :func:`~ltmodels.cache.train.load_rows`).

        Raises:
            NonFiniteLossError: a NaN or infinite loss (before the update with it).
        """
        with self._own_rng():
            values = self._step(batch)
        if not math.isfinite(values["loss"]):
            raise NonFiniteLossError(epoch, iteration, values)
        self._done += 1
        for k, v in values.items():
            self._sums[k] = self._sums.get(k, 0.0) + v

    def _step(self, batch: Batch) -> dict[str, float]:
        extra: dict[str, float] = {"rois": float(len(batch[1]))}
        if self._memory is not None:
            batch = _with_memory(self._memory, batch)
            extra["memory_rows"] = float(len(batch[1])) - extra["rois"]
        features, labels, gt_index, targets = batch
        p = self.predictor
        logits = p.classify(features) if hasattr(p, "classify") else p(features)[0]
        terms = self.loss(
            logits.float(), labels, features=features, weight=p.cls_weight, gt_index=gt_index
        )
        if self.optim.train_box_regression:
            pos = torch.where(labels > 0)[0]
            deltas = _class_deltas(p, features[pos], labels[pos]).float()
            terms = {**terms, "loss_box_reg": box_loss(deltas, labels, targets[pos])}
        total = sum(terms.values())
        values = {k: float(v.detach()) for k, v in terms.items()}
        values["loss"] = float(total.detach())
        if math.isfinite(values["loss"]):
            self.optimizer.zero_grad(set_to_none=True)
            total.backward()
            self.optimizer.step()
        return {**values, **extra}

    def end_epoch(self, epoch: int, seconds: float) -> dict[str, Any]:
        """Close the epoch (means of the terms over its steps); returns its summary."""
        summary: dict[str, Any] = {k: v / max(self._done, 1) for k, v in self._sums.items()}
        summary.update(
            epoch=float(epoch),
            lr=self.optimizer.param_groups[0]["lr"],
            iterations=float(self._done),
            seconds=seconds,
        )
        self._sums, self._done = {}, 0
        self.history.append(summary)
        return summary


__all__ = ["Member", "Optim", "box_loss"]
