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

A loss with a feature memory (LOCE's MFS, :mod:`ltmodels.losses.feature_sampling`) gets,
every iteration, the batch's positive RoIs pushed (cached features, labels, regression
targets: the cache holds no dense boxes, and its positives are the proposals around each
ground truth that the stage-1 RPN found, ground-truth boxes included), then one sample of
R <= k x m rows appended to the batch: they join the classification loss with
:func:`~ltmodels.losses.mfs.memory_gt_index` group ids and the box loss with their stored
targets, the normaliser becoming N + R, as in the full model.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ltmodels.cache.evaluate import classifier_logits
from ltmodels.cache.store import FeatureCache
from ltmodels.engine import phases
from ltmodels.engine.train import NonFiniteLossError, WarmupMultiStepLR
from ltmodels.errors import ConfigError
from ltmodels.losses.base import LongTailLoss
from ltmodels.losses.feature_sampling import MemoryAccess, bind_memory, memory_of
from ltmodels.losses.mfs import memory_gt_index
from ltmodels.modeling.roi_sampling import sample_balanced


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


def _box_loss(box_regression: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor):
    """torchvision's fastrcnn box loss: smooth L1 (beta 1/9) on positives, divided by N."""
    pos = torch.where(labels > 0)[0]
    deltas = box_regression.reshape(len(labels), -1, 4)[pos, labels[pos]]
    return F.smooth_l1_loss(deltas, targets[pos], beta=1 / 9, reduction="sum") / len(labels)


def _with_memory(
    memory: MemoryAccess,
    features: torch.Tensor,
    labels: torch.Tensor,
    gt_index: torch.Tensor,
    targets: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Push the batch's positives to ``memory``, append one sample: ``[N + R]`` rows."""
    pos = labels > 0
    memory.push(features[pos], labels[pos], targets[pos])
    rows = memory.sample()
    return (
        torch.cat([features, rows.features.to(features.dtype)]),
        torch.cat([labels, rows.labels]),
        torch.cat([gt_index, memory_gt_index(rows.labels, gt_index)]),
        torch.cat([targets, rows.targets.to(targets.dtype)]),
    )


def _trainable(predictor: nn.Module, loss: nn.Module, box_regression: bool) -> list[nn.Parameter]:
    named = list(predictor.named_parameters()) + list(loss.named_parameters())
    params = [p for n, p in named if box_regression or not n.startswith("bbox_pred.")]
    return [p for p in params if p.requires_grad]


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
    """Fine-tune a box predictor on the cache's training RoIs.

    The predictor and the loss are moved to ``device`` and trained in place. Deterministic
    for ``seed``: it seeds the sampling generator and torch's global RNG (losses with random
    masks, e.g. ACSL's background subsets, draw from it); the predictor's initialisation is
    the caller's.

    Args:
        predictor: a box predictor (``(logits [N, K], boxes [N, 4 (C + 1)])``, ``cls_weight``).
        loss: the trial's loss.
        cache: from :func:`~ltmodels.cache.build.build_feature_cache`.
        epochs: passes over the training images; an epoch has ``ceil(n / batch_images)``
            iterations.
        lr, momentum, weight_decay: SGD.
        batch_images: B, images per iteration.
        rois_per_image, positive_fraction: torchvision's RoI sampling.
        warmup_iters, milestones: the schedule (linear warm-up, x0.1 at the milestone
            fractions of all iterations).
        train_box_regression: also train ``bbox_pred`` with the box loss; ``False`` trains
            the classifier only (ACSL) and leaves ``bbox_pred`` untouched.
        on_epoch: called with each epoch's summary.

    Returns:
        One summary per epoch: ``epoch``, mean ``loss`` and terms, ``lr`` (last),
        ``iterations``, ``rois`` (mean per iteration), ``seconds``; with a feature memory
        also ``memory_rows`` (mean sampled rows per iteration).

    Raises:
        ConfigError: the loss has another number of classes than the cache.
        NonFiniteLossError: a NaN or infinite loss (before the update with it).
    """
    if loss.num_classes != cache.num_classes:
        raise ConfigError(
            f"loss built for {loss.num_classes} classes, the feature cache has {cache.num_classes}"
        )
    device = torch.device(device)
    bind_memory(loss, predictor.cls_weight.shape[1])
    predictor.to(device).train()
    loss.to(device).train()
    memory = memory_of(loss)
    params = _trainable(predictor, loss, train_box_regression)
    if not params:
        raise ValueError("no trainable parameters in the predictor")
    optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    n = cache.num_train_images
    scheduler = WarmupMultiStepLR(
        optimizer,
        total_iters=max(1, epochs * math.ceil(n / batch_images)),
        milestones=milestones,
        warmup_iters=warmup_iters,
    )
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    sampling = {"rois_per_image": rois_per_image, "positive_fraction": positive_fraction}
    history = []
    for epoch in range(epochs):
        start = time.perf_counter()
        order = rng.permutation(n)
        batches = [order[i : i + batch_images] for i in range(0, n, batch_images)]
        summary = _epoch(
            predictor,
            loss,
            optimizer,
            scheduler,
            cache,
            batches,
            rng,
            sampling,
            device,
            epoch=epoch,
            box_regression=train_box_regression,
            memory=memory,
        )
        summary["seconds"] = time.perf_counter() - start
        history.append(summary)
        phases.epoch_done(epoch + 1, epochs)
        if on_epoch is not None:
            on_epoch(summary)
    return history


def _epoch(
    predictor: nn.Module,
    loss: LongTailLoss,
    optimizer: torch.optim.Optimizer,
    scheduler: WarmupMultiStepLR,
    cache: FeatureCache,
    batches: list[np.ndarray],
    rng: np.random.Generator,
    sampling: dict[str, Any],
    device: torch.device,
    *,
    epoch: int,
    box_regression: bool,
    memory: MemoryAccess | None,
) -> dict[str, float]:
    """One pass over ``batches`` of image indices; returns the epoch's mean terms."""
    sums: dict[str, float] = {}
    done = 0
    for it, images in enumerate(batches):
        rows = sample_batch(cache, images, rng, **sampling)
        if rows.size:  # else no image of the batch has a cached RoI
            values = _step(
                predictor, loss, optimizer, load_rows(cache, rows, device), box_regression, memory
            )
            if not math.isfinite(values["loss"]):
                raise NonFiniteLossError(epoch, it, values)
            values["rois"] = float(rows.size)
            done += 1
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + v
        scheduler.step()
    summary = {k: v / max(done, 1) for k, v in sums.items()}
    summary.update(epoch=float(epoch), lr=optimizer.param_groups[0]["lr"], iterations=float(done))
    return summary


def _step(
    predictor: nn.Module,
    loss: LongTailLoss,
    optimizer: torch.optim.Optimizer,
    batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    box_regression: bool,
    memory: MemoryAccess | None,
) -> dict[str, Any]:
    """One SGD step on a batch of :func:`load_rows`; returns the loss terms as floats
    (``loss``: sum; ``memory_rows`` with a memory).

    A non-finite loss is returned without updating (the caller raises)."""
    features, labels, gt_index, targets = batch
    extra: dict[str, float] = {}
    if memory is not None:
        n = len(labels)
        features, labels, gt_index, targets = _with_memory(
            memory, features, labels, gt_index, targets
        )
        extra["memory_rows"] = float(len(labels) - n)
    if box_regression:
        logits, boxes = predictor(features)
    else:
        logits = classifier_logits(predictor, features)
    terms = loss(
        logits.float(),
        labels,
        features=features,
        weight=predictor.cls_weight,
        gt_index=gt_index,
    )
    if box_regression:
        terms = {**terms, "loss_box_reg": _box_loss(boxes.float(), labels, targets)}
    total = sum(terms.values())
    values = {k: float(v.detach()) for k, v in terms.items()}
    values["loss"] = float(total.detach())
    values.update(extra)
    if math.isfinite(values["loss"]):
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
    return values


__all__ = ["load_rows", "sample_batch", "train_predictor_cached"]
