"""Decoupled stage 2 on cached box-head features: train only the box predictor.

Shape shorthand: B images per iteration, N RoIs sampled for them, D feature channels,
K = ``loss.num_logits(C)`` classifier outputs, C foreground classes.

Every iteration draws B training images (a fresh permutation per epoch), one cached view per
image (the image or its mirror, or one of the budget mode's pre-sampled views) and samples
that view's RoIs afresh with torchvision's rule (``rois_per_image``, ``positive_fraction``;
:func:`~ltmodels.modeling.roi_sampling.sample_balanced`, vectorised over the batch). The loss sees
exactly what :class:`~ltmodels.modeling.roi_heads.LongTailRoIHeads` gives it in end-to-end
training: ``loss(logits, labels, features=, weight=predictor.cls_weight, gt_index=)``, plus
torchvision's smooth-L1 box loss (beta 1/9, summed over positives, divided by N) when the
box regressor trains. ``gt_index`` is the dataset-wide ground-truth index, unique in a batch.
SGD with momentum, :class:`~ltmodels.engine.train.WarmupMultiStepLR` stepped every iteration.
The box loss computes each positive RoI's regression for its own class only
(:func:`~ltmodels.modeling.heads.class_deltas`: the 4 outputs the loss reads, not 4 (C + 1)).

Packed runs (:func:`train_pack`): K (configuration, seed) members that share the sampling
(seed, epochs, images per batch, RoI sampling) train together on one pass over the cache: each
batch is drawn and read once, then every member takes its own step on it
(:class:`~ltmodels.cache.member.Member`: its loss, state, optimizer, schedule and RNG). A member
gets the same batches, draws and updates as alone, so its result is the same (the
``test_pack`` tests hold every loss to it); a member that fails stops alone.

A loss with a feature memory (LOCE's MFS, :mod:`ltmodels.losses.feature_sampling`) gets,
every iteration, the batch's positive RoIs pushed (cached features, labels, regression
targets: the cache holds no dense boxes, and its positives are the proposals around each
ground truth that the stage-1 RPN found, ground-truth boxes included), then one sample of
R <= k x m rows appended to the batch: they join the classification loss with
:func:`~ltmodels.losses.mfs.memory_gt_index` group ids and the box loss with their stored
targets, the normaliser becoming N + R, as in the full model.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ltmodels.cache.member import Member, Optim
from ltmodels.cache.store import FeatureCache
from ltmodels.engine import phases
from ltmodels.losses.base import LongTailLoss
from ltmodels.modeling.roi_sampling import sample_balanced

log = logging.getLogger(__name__)


def sample_batch(
    cache: FeatureCache,
    images: np.ndarray,
    rng: np.random.Generator,
    *,
    rois_per_image: int,
    positive_fraction: float,
) -> np.ndarray:
    """Rows of the cache's training arrays for one iteration.

    Args:
        images: ``[B]`` training image indices.
        rng: draws the view of each image and the RoIs.

    Returns:
        ``[N]`` sorted int64 row indices (images' rows stay contiguous).
    """
    tr = cache.train
    first, last = tr["image_views"][images], tr["image_views"][images + 1]
    views = first + (rng.random(len(images)) * (last - first)).astype(np.int64)
    offsets = tr["view_offsets"]
    return sample_balanced(
        tr["labels"],
        offsets[views],
        offsets[views + 1],
        rng,
        rois_per_image=rois_per_image,
        positive_fraction=positive_fraction,
    )


def load_rows(
    cache: FeatureCache, rows: np.ndarray, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Features ``[N, D]`` (float32), labels ``[N]``, gt index ``[N]`` (int64) and regression
    targets ``[N, 4]`` of cache rows, on ``device``."""
    tr = cache.train

    def get(name: str, dtype: torch.dtype) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(tr[name][rows])).to(device, dtype)

    return (
        get("features", torch.float32),
        get("labels", torch.int64),
        get("gt_index", torch.int64),
        get("targets", torch.float32),
    )


@dataclass
class PackTimes:
    """Wall-clock seconds of a pack's phases, summed over its epochs: ``sample`` (drawing
    the batches' RoIs), ``read`` (reading them from the cache onto the device) and, per
    member, ``step`` (its forward, loss, backward and update)."""

    sample: float = 0.0
    read: float = 0.0
    step: list[float] = field(default_factory=list)


def train_pack(
    members: Sequence[Member],
    cache: FeatureCache,
    *,
    epochs: int,
    batch_images: int,
    iterations: int | None = None,
    rois_per_image: int = 512,
    positive_fraction: float = 0.25,
    seed: int = 0,
    device: torch.device | str = "cpu",
    isolate_failures: bool = True,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    times: PackTimes | None = None,
) -> None:
    """Train every member on one pass over the cache per epoch (see the module docstring).

    Deterministic for ``seed``: it seeds the sampling generator, and each member's torch
    RNG after its MFS memory is allocated (a member's ``rng_state``, else the global state,
    is what that allocation draws from).

    Args:
        members: their histories (one summary per epoch: mean ``loss`` and terms, ``lr``,
            ``iterations``, ``rois``, ``seconds``; ``memory_rows`` with a feature memory)
            and errors are left on them.
        epochs: passes over the training images; an epoch has ``ceil(n / batch_images)``
            iterations.
        batch_images: B, images per iteration.
        iterations: an iteration budget instead of ``epochs``: as many epochs as it takes,
            the last one cut at the budget (the schedule spans the budget).
        rois_per_image, positive_fraction: torchvision's RoI sampling.
        isolate_failures: a member whose step raises keeps the exception (``error``) and
            stops while the others go on; ``False`` raises it.
        on_epoch: called with ``(member index, epoch summary)``.
        times: filled with the phases' wall-clock seconds.

    Raises:
        ConfigError: a loss has another number of classes than the cache.
    """
    device = torch.device(device)
    n = cache.num_train_images
    per_epoch = max(1, math.ceil(n / batch_images))
    if iterations is not None:
        epochs = math.ceil(iterations / per_epoch)
    total_iters = max(1, epochs * per_epoch if iterations is None else iterations)
    for m in members:
        if len(members) > 1:  # else a member alone may use the global RNG
            m.own_rng()
        m.start(cache, total_iters, seed, device)
    times = times if times is not None else PackTimes()
    times.step = [0.0] * len(members)
    rng = np.random.default_rng(seed)
    sampling = {"rois_per_image": rois_per_image, "positive_fraction": positive_fraction}
    for epoch in range(epochs):
        start = time.perf_counter()
        order = rng.permutation(n)
        for it, i in enumerate(range(0, n, batch_images)):
            if not any(m.active for m in members) or epoch * per_epoch + it >= total_iters:
                break
            t0 = time.perf_counter()
            rows = sample_batch(cache, order[i : i + batch_images], rng, **sampling)
            t1 = time.perf_counter()
            batch = load_rows(cache, rows, device) if rows.size else None
            times.sample += t1 - t0
            times.read += time.perf_counter() - t1
            for k, m in enumerate(members):
                if not m.active:
                    continue
                t0 = time.perf_counter()
                if batch is not None:  # else no image of the batch has a cached RoI
                    try:
                        m.step(batch, epoch=epoch, iteration=it)
                    except Exception as exc:
                        if not isolate_failures:
                            raise
                        m.error = exc
                        log.warning("pack member %s failed: %s", m.name or k, exc)
                        continue
                m.scheduler.step()
                times.step[k] += time.perf_counter() - t0
        seconds = time.perf_counter() - start
        for k, m in enumerate(members):
            if m.active:
                summary = m.end_epoch(epoch, seconds)
                if on_epoch is not None:
                    on_epoch(k, summary)
        phases.epoch_done(epoch + 1, epochs)


def train_predictor_cached(
    predictor: nn.Module,
    loss: LongTailLoss,
    cache: FeatureCache,
    *,
    epochs: int,
    lr: float,
    batch_images: int,
    rois_per_image: int = 512,
    positive_fraction: float = 0.25,
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
    warmup_iters: int = 500,
    milestones: Sequence[float] = (2 / 3, 8 / 9),
    train_box_regression: bool = True,
    seed: int = 0,
    device: torch.device | str = "cpu",
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> list[dict[str, float]]:
    """Fine-tune a box predictor on the cache's training RoIs: a pack of one member.

    The predictor and the loss are moved to ``device`` and trained in place. Deterministic
    for ``seed``: it seeds the sampling generator and torch's global RNG (MFS draws its
    samples from it); the predictor's initialisation is the caller's.

    Args:
        predictor: a box predictor (``(logits [N, K], boxes [N, 4 (C + 1)])``, ``cls_weight``).
        loss: the trial's loss.
        cache: from :func:`~ltmodels.cache.build.build_feature_cache`.
        lr, momentum, weight_decay, warmup_iters, milestones, train_box_regression:
            :class:`~ltmodels.cache.member.Optim`.
        epochs, batch_images, rois_per_image, positive_fraction: as :func:`train_pack`.
        on_epoch: called with each epoch's summary.

    Returns:
        One summary per epoch (:func:`train_pack`).

    Raises:
        ConfigError: the loss has another number of classes than the cache.
        NonFiniteLossError: a NaN or infinite loss (before the update with it).
    """
    optim = Optim(lr, momentum, weight_decay, warmup_iters, milestones, train_box_regression)
    member = Member(predictor, loss, optim)
    train_pack(
        [member],
        cache,
        epochs=epochs,
        batch_images=batch_images,
        rois_per_image=rois_per_image,
        positive_fraction=positive_fraction,
        seed=seed,
        device=device,
        isolate_failures=False,
        on_epoch=None if on_epoch is None else lambda _k, summary: on_epoch(summary),
    )
    return member.history


__all__ = ["PackTimes", "load_rows", "sample_batch", "train_pack", "train_predictor_cached"]
