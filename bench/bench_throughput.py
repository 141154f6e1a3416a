"""Training throughput: ltmodels' ``train_one_epoch`` (CE) vs a plain torchvision loop.

Both train the same tiny Mask R-CNN (``ModelSpec.tiny``: the tiny GroupNorm backbone and FPN,
the same anchors, RoI pools, box and mask heads, 600/300 RPN proposals, 128 RoIs per image)
from the same initial weights on the same images in the same order:

- ltmodels: ``build_detector`` with the ``ce`` loss (``LongTailRoIHeads``: the loss object,
  its scores) trained by ``ltmodels.engine.train.train_one_epoch`` (warm-up/step scheduler stepped
  every iteration, loss terms synced and checked for finiteness);
- torchvision: ``torchvision.models.detection.MaskRCNN`` built from the same parts with its
  standard ``RoIHeads`` and ``FastRCNNPredictor``, trained by a plain loop (forward, sum,
  ``.item()`` of the loss as torchvision's reference script logs it, zero_grad, backward,
  SGD step, and the same warm-up/step learning-rate schedule through ``LambdaLR``).

The two alternate in rounds of ``--images`` images each (one epoch of the subset), after a
warm-up round each, so that load from other processes hits both alike; the median
images/s per side over ``--rounds`` rounds is reported, and their ratio.

    .venv/bin/python bench/bench_throughput.py --images 64 --rounds 5

``build_models`` and ``alternate_rounds`` also run, on a GPU, as the ``throughput`` section of
``bench/gpu_check.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Subset
from torchvision.models.detection import FasterRCNN, MaskRCNN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor

from ltmodels.data import LVISDetection, collate_fn
from ltmodels.data.synthetic import SynthConfig, ensure_synthetic
from ltmodels.engine.train import WarmupMultiStepLR, _to_device, build_optimizer, train_one_epoch
from ltmodels.losses import build_loss
from ltmodels.modeling.detector import ModelSpec, _parts, build_detector


def torchvision_model(spec: ModelSpec, num_classes: int) -> MaskRCNN:
    parts = _parts(spec, num_classes)
    rep = parts.pop("representation_size")
    return MaskRCNN(
        parts.pop("backbone"),
        min_size=spec.min_size,
        max_size=spec.max_size,
        rpn_pre_nms_top_n_train=spec.rpn_pre_nms_top_n_train,
        rpn_pre_nms_top_n_test=spec.rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_train=spec.rpn_post_nms_top_n_train,
        rpn_post_nms_top_n_test=spec.rpn_post_nms_top_n_test,
        box_predictor=FastRCNNPredictor(rep, num_classes + 1),
        box_batch_size_per_image=spec.box_batch_size_per_image,
        box_positive_fraction=spec.box_positive_fraction,
        box_score_thresh=spec.box_score_thresh,
        box_detections_per_img=spec.box_detections_per_img,
        **parts,
    )


def plain_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler,
    loader,
    device: torch.device | str = "cpu",
) -> float:
    model.train()
    images_seen = 0
    start = time.perf_counter()
    for batch in loader:
        images, targets = _to_device(batch, torch.device(device))
        loss_dict = model(images, targets)
        losses = sum(loss_dict.values())
        if not torch.isfinite(losses).item():
            raise RuntimeError(f"non-finite loss {losses.item()}")
        optimizer.zero_grad()
        losses.backward()
        optimizer.step()
        scheduler.step()
        images_seen += len(images)
    return images_seen / (time.perf_counter() - start)


def build_models(
    spec: ModelSpec, data: LVISDetection, device: torch.device | str = "cpu"
) -> tuple[FasterRCNN, MaskRCNN]:
    """The ltmodels detector (``ce``) and the torchvision one, from the same initial weights."""
    c = data.num_classes
    torch.manual_seed(0)
    ours = build_detector(
        spec, build_loss("ce", num_classes=c), c, image_counts=data.image_counts,
        num_images=len(data),
    )  # fmt: skip
    torch.manual_seed(0)
    plain = torchvision_model(spec, c)
    return ours.to(device), plain.to(device)


def identical_backbone_tensors(ours: FasterRCNN, plain: FasterRCNN) -> str:
    same = sum(
        torch.equal(a, b)
        for (na, a), (nb, b) in zip(
            ours.backbone.state_dict().items(), plain.backbone.state_dict().items(), strict=True
        )
    )
    return f"{same}/{len(ours.backbone.state_dict())}"


def alternate_rounds(
    ours: torch.nn.Module,
    plain: torch.nn.Module,
    loader,
    rounds: int,
    device: torch.device | str = "cpu",
    report: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, list[float]]:
    """Images/s of each side per round after a warm-up round 0; the order alternates."""
    opt_ours = build_optimizer(ours, lr=0.02)
    total = (rounds + 1) * len(loader)
    sched = WarmupMultiStepLR(opt_ours, total_iters=total, warmup_iters=len(loader))
    opt_plain = torch.optim.SGD(
        [p for p in plain.parameters() if p.requires_grad], lr=0.02, momentum=0.9,
        weight_decay=1e-4,
    )  # fmt: skip
    sched_plain = torch.optim.lr_scheduler.LambdaLR(opt_plain, sched.factor)  # same schedule
    rates: dict[str, list[float]] = {"ltmodels": [], "torchvision": []}
    for r in range(rounds + 1):  # round 0 is warm-up
        order = ("ltmodels", "torchvision") if r % 2 == 0 else ("torchvision", "ltmodels")
        for side in order:
            if side == "ltmodels":
                stats = train_one_epoch(
                    ours, opt_ours, loader, scheduler=sched, device=device, epoch=r, log_every=0
                )
                rate = stats["images_per_s"]
            else:
                rate = plain_epoch(plain, opt_plain, sched_plain, loader, device)
            if r > 0:
                rates[side].append(rate)
            if report is not None:
                report({"round": r, "side": side, "images_per_s": rate})
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=64, help="training images per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--no-masks", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work", default="/tmp/ltsearch-bench-throughput")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    paths = ensure_synthetic(Path(args.work) / "datasets", SynthConfig())
    masks = not args.no_masks
    data = LVISDetection(paths.train_json, paths.root, with_masks=masks)
    subset = Subset(data, range(min(args.images, len(data))))
    loader = DataLoader(subset, batch_size=args.batch_size, shuffle=False, collate_fn=collate_fn)
    ours, plain = build_models(ModelSpec.tiny(masks=masks), data)
    info = {
        "nproc": os.cpu_count(),
        "loadavg_start": os.getloadavg(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "args": vars(args),
        "identical_backbone_tensors": identical_backbone_tensors(ours, plain),
    }
    print(json.dumps(info), flush=True)
    rates = alternate_rounds(
        ours, plain, loader, args.rounds, report=lambda row: print(json.dumps(row), flush=True)
    )
    med = {k: statistics.median(v) for k, v in rates.items()}
    out = {
        **info,
        "median_images_per_s": med,
        "ltmodels_over_torchvision": med["ltmodels"] / med["torchvision"],
        "rounds": rates,
        "loadavg_end": os.getloadavg(),
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
