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
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor

from ltmodels.data import LVISDetection, collate_fn
from ltmodels.data.synthetic import SynthConfig, ensure_synthetic
from ltmodels.engine.train import WarmupMultiStepLR, build_optimizer, train_one_epoch
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
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler, loader
) -> float:
    model.train()
    images_seen = 0
    start = time.perf_counter()
    for images, targets in loader:
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
    spec = ModelSpec.tiny(masks=masks)
    c = data.num_classes

    torch.manual_seed(0)
    ours = build_detector(
        spec, build_loss("ce", num_classes=c), c, image_counts=data.image_counts,
        num_images=len(data),
    )  # fmt: skip
    torch.manual_seed(0)
    plain = torchvision_model(spec, c)
    same = sum(
        torch.equal(a, b)
        for (na, a), (nb, b) in zip(
            ours.backbone.state_dict().items(), plain.backbone.state_dict().items(), strict=True
        )
    )
    opt_ours = build_optimizer(ours, lr=0.02)
    total = (args.rounds + 1) * len(loader)
    sched = WarmupMultiStepLR(opt_ours, total_iters=total, warmup_iters=len(loader))
    opt_plain = torch.optim.SGD(
        [p for p in plain.parameters() if p.requires_grad], lr=0.02, momentum=0.9,
        weight_decay=1e-4,
    )  # fmt: skip
    sched_plain = torch.optim.lr_scheduler.LambdaLR(opt_plain, sched.factor)  # same schedule

    info = {
        "nproc": os.cpu_count(),
        "loadavg_start": os.getloadavg(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "args": vars(args),
        "identical_backbone_tensors": f"{same}/{len(ours.backbone.state_dict())}",
    }
    print(json.dumps(info), flush=True)
    rates: dict[str, list[float]] = {"ltmodels": [], "torchvision": []}
    for r in range(args.rounds + 1):  # round 0 is warm-up
        order = ("ltmodels", "torchvision") if r % 2 == 0 else ("torchvision", "ltmodels")
        for side in order:
            if side == "ltmodels":
                stats = train_one_epoch(
                    ours, opt_ours, loader, scheduler=sched, device="cpu", epoch=r, log_every=0
                )
                rate = stats["images_per_s"]
            else:
                rate = plain_epoch(plain, opt_plain, sched_plain, loader)
            if r > 0:
                rates[side].append(rate)
            print(json.dumps({"round": r, "side": side, "images_per_s": rate}), flush=True)
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
