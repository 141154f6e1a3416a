"""Run registered losses on 2 gloo workers (each on half of every batch) and on 1 process
(on the whole batch), and return their buffers, so tests can check that the statistics a
loss keeps are reduced across workers (DESIGN.md: 2 workers on half-batches end in the same
state as 1 worker on the whole batch).

A batch is a list of images; each worker gets a contiguous block of whole images, so the
RoIs of one ground-truth object never straddle workers (as in real DDP) and
``all_gather_cat`` (rank order) sees the whole batch's rows in the single-process order.
Logits are made from ``features`` and a fixed ``weight`` as the RoI head makes them
(cosines for ``predictor == "cosine"``). Each worker runs every requested loss, so one
process-group start-up (the slow part, ~2-4 s on 2 cores) serves all of them.

Usage (see test_ddp.py)::

    batches = make_batches(num_classes=8)
    single = {name: run_single(name, batches) for name in names}
    per_rank = run_ddp(names, batches, tmp_dir)  # {name: [buffers of rank 0, rank 1]}
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from ltmodels.losses import LongTailLoss, build_loss

Batch = dict[str, torch.Tensor]
NUM_IMAGES = 10_000
D = 8


def image_counts(num_classes: int) -> torch.Tensor:
    """Image counts spanning rare, common and frequent classes (out of ``NUM_IMAGES``)."""
    return torch.logspace(0, 3.5, num_classes).round().long()


def make_batches(
    num_classes: int,
    *,
    iterations: int = 3,
    images: int = 4,
    rois_per_image: int = 6,
    seed: int = 0,
) -> list[Batch]:
    """Random batches: ``features`` [N, D], ``labels`` [N] (~1/3 foreground), ``gt_index``
    [N] and ``image`` [N] (which image a RoI comes from; ``images`` must be even)."""
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(iterations):
        n = images * rois_per_image
        labels = torch.randint(1, num_classes + 1, (n,), generator=g)
        labels[torch.rand(n, generator=g) < 0.67] = 0
        image = torch.arange(images).repeat_interleave(rois_per_image)
        # one object per (image, label): unique across the batch, -1 for background
        key = image * (num_classes + 1) + labels
        gt_index = torch.unique(key, return_inverse=True)[1]
        gt_index[labels == 0] = -1
        features = torch.randn(n, D, generator=g)
        batches.append(
            {"features": features, "labels": labels, "gt_index": gt_index, "image": image}
        )
    return batches


def _new_loss(name: str, num_classes: int, params: dict[str, Any]) -> LongTailLoss:
    loss = build_loss(name, num_classes=num_classes, **params)
    loss.set_class_stats(image_counts(num_classes), NUM_IMAGES)
    return loss


def _step(loss: LongTailLoss, batch: Batch, rows: torch.Tensor | slice) -> None:
    k = loss.num_logits(loss.num_classes)
    weight = torch.randn(k, D, generator=torch.Generator().manual_seed(1)).requires_grad_()
    features = batch["features"][rows].clone().requires_grad_()
    if loss.predictor == "cosine":
        logits = F.normalize(features, dim=1) @ F.normalize(weight, dim=1).T
    else:
        logits = features @ weight.T
    torch.manual_seed(0)  # losses that sample negatives draw the same numbers everywhere
    context = {"features": features, "weight": weight, "gt_index": batch["gt_index"][rows]}
    out = loss(logits, batch["labels"][rows], **context)
    sum(out.values()).backward()


def _buffers(loss: LongTailLoss) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in loss.named_buffers()}


def run_single(
    name: str, batches: list[Batch], num_classes: int, params: dict[str, Any] | None = None
) -> dict[str, torch.Tensor]:
    """Buffers of ``name`` after one process ran every whole batch."""
    loss = _new_loss(name, num_classes, params or {})
    for batch in batches:
        _step(loss, batch, slice(None))
    return _buffers(loss)


def _worker(
    rank: int,
    world_size: int,
    init_file: str,
    names: list[str],
    batches: list[Batch],
    num_classes: int,
    params: dict[str, dict[str, Any]],
    out_dir: str,
) -> None:
    torch.set_num_threads(1)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # one machine: loopback is enough
    # A loss that raises on one rank leaves the other waiting in a collective: mp.spawn
    # then stops it, and the timeout bounds any other hang.
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=world_size,
        timeout=timedelta(seconds=120),
    )
    try:
        results = {}
        for name in names:
            loss = _new_loss(name, num_classes, params.get(name, {}))
            for batch in batches:
                num_images = int(batch["image"].max()) + 1
                per_rank = -(-num_images // world_size)
                rows = batch["image"] // per_rank == rank
                _step(loss, batch, rows)
            results[name] = _buffers(loss)
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def run_ddp(
    names: list[str],
    batches: list[Batch],
    tmp_dir: Path,
    num_classes: int,
    *,
    params: dict[str, dict[str, Any]] | None = None,
    world_size: int = 2,
) -> dict[str, list[dict[str, torch.Tensor]]]:
    """Buffers of every loss in ``names`` on each of ``world_size`` gloo workers.

    Returns:
        ``{name: [buffers of rank 0, rank 1, ...]}``.
    """
    tmp_dir = Path(tmp_dir)
    tmp_dir.mkdir(parents=True, exist_ok=True)
    init_file = tmp_dir / "dist_init"
    init_file.unlink(missing_ok=True)
    mp.spawn(
        _worker,
        args=(world_size, str(init_file), names, batches, num_classes, params or {}, str(tmp_dir)),
        nprocs=world_size,
        join=True,
    )
    ranks = [torch.load(tmp_dir / f"rank{r}.pt") for r in range(world_size)]
    return {name: [r[name] for r in ranks] for name in names}
