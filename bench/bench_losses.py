"""Forward and forward+backward time of every registered loss at LVIS scale, against plain CE.

Default scale: 16 images x 512 RoIs = 8192 RoIs, 25% foreground, C = 1203 (LVIS v1), D = 1024
box-head features. Foreground labels are drawn in proportion to LVIS v1's training image
counts (``ltmodels/data/lvis_v1_categories.json``), which also feed ``set_class_stats``.
Each loss gets the context the RoI head gives (``features``, ``weight``, ``gt_index``) and
logits consistent with it (cosines for cosine-predictor losses); only the loss is timed,
not the classifier's matmul. Two warm-up iterations (which also take one-off costs such as
AHR's K-Means on the first forward) precede the timed ones; the median is reported, over
fewer runs for a loss whose warm-up says the repeats would exceed ``--budget-s``.

    .venv/bin/python bench/bench_losses.py [--device cuda] [--repeats 10] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from ltmodels.losses import LOSSES, LongTailLoss, build_loss

CATEGORIES = Path(__file__).resolve().parents[1] / "ltmodels/data/lvis_v1_categories.json"
LVIS_V1_TRAIN_IMAGES = 100_170


def lvis_image_counts(num_classes: int) -> torch.Tensor:
    cats = json.loads(CATEGORIES.read_text())["categories"]
    counts = torch.tensor([c["train_image_count"] for c in sorted(cats, key=lambda c: c["id"])])
    if num_classes == len(counts):
        return counts
    return counts[torch.linspace(0, len(counts) - 1, num_classes).long()]


def make_batch(
    num_rois: int, num_classes: int, dim: int, fg_fraction: float, device: torch.device
) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    counts = lvis_image_counts(num_classes).double()
    num_fg = int(num_rois * fg_fraction)
    # objects of long-tail-drawn classes, 4 positive RoIs each
    objects = torch.multinomial(counts, num_fg // 4 + 1, replacement=True, generator=g) + 1
    labels = torch.zeros(num_rois, dtype=torch.long)
    labels[:num_fg] = objects.repeat_interleave(4)[:num_fg]
    gt_index = torch.full((num_rois,), -1, dtype=torch.long)
    gt_index[:num_fg] = torch.arange(num_fg) // 4
    features = torch.randn(num_rois, dim, generator=g)
    return {
        "labels": labels.to(device),
        "gt_index": gt_index.to(device),
        "features": features.to(device),
    }


def loss_inputs(
    loss: LongTailLoss, batch: dict[str, torch.Tensor], dim: int, trained: bool = False
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    device = batch["features"].device
    k = loss.num_logits(loss.num_classes)
    g = torch.Generator().manual_seed(1)
    weight = (torch.randn(k, dim, generator=g) * 0.01).to(device).requires_grad_()
    with torch.no_grad():
        if loss.predictor == "cosine":
            logits = F.normalize(batch["features"], dim=1) @ F.normalize(weight, dim=1).T
        else:
            logits = batch["features"] @ weight.T
        if trained:  # a trained classifier: the labelled column high, the others low
            rows = torch.arange(logits.shape[0], device=device)
            cols = batch["labels"].clamp(max=k - 1)
            logits = logits * 4 - 4 * loss_scale(loss)
            logits[rows, cols] += 8 * loss_scale(loss)
    context = {"features": batch["features"], "weight": weight, "gt_index": batch["gt_index"]}
    return logits.requires_grad_(), context


def loss_scale(loss: LongTailLoss) -> float:
    """Cosine losses receive cosines in [-1, 1]: shift them less."""
    return 0.1 if loss.predictor == "cosine" else 1.0


def timed(
    fn: Callable[[], None], device: torch.device, warmup: int, repeats: int, budget_s: float
) -> tuple[float, int]:
    """Median seconds of ``fn`` after ``warmup`` runs, and how many runs it is over.

    Fewer than ``repeats`` runs are timed when the last warm-up run says they would take
    more than ``budget_s`` (at least one always is).
    """
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    last = 0.0
    for _ in range(warmup):
        t0 = time.perf_counter()
        fn()
        sync()
        last = time.perf_counter() - t0
    runs = max(1, min(repeats, int(budget_s / last))) if last > 0 else repeats
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), runs


def bench_one(
    name: str, batch: dict[str, torch.Tensor], args: argparse.Namespace, device: torch.device
) -> tuple[float, float, int, str]:
    loss = build_loss(name, num_classes=args.classes).to(device)
    loss.set_class_stats(lvis_image_counts(args.classes), LVIS_V1_TRAIN_IMAGES)
    logits, context = loss_inputs(loss, batch, args.dim, args.logits == "trained")
    labels = batch["labels"]
    terms: list[str] = []

    def forward() -> None:
        with torch.no_grad():
            loss(logits, labels, **context)

    def forward_backward() -> None:
        logits.grad = None
        context["weight"].grad = None
        out = loss(logits, labels, **context)
        sum(out.values()).backward()
        terms[:] = sorted(out)

    t_fb, runs = timed(forward_backward, device, args.warmup, args.repeats, args.budget_s)
    t_f, _ = timed(forward, device, args.warmup, args.repeats, args.budget_s)
    return t_f, t_fb, runs, ", ".join(terms)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--rois-per-image", type=int, default=512)
    parser.add_argument("--classes", type=int, default=1203)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--fg-fraction", type=float, default=0.25)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument(
        "--budget-s", type=float, default=20.0, help="time budget per loss and pass"
    )
    parser.add_argument("--losses", nargs="*", default=None, help="default: all registered")
    parser.add_argument(
        "--logits",
        choices=("untrained", "trained"),
        default="untrained",
        help="untrained: every logit near 0 (GAP's worst case: all negatives within delta of "
        "the positives); trained: the labelled column high, the others low",
    )
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    num_rois = args.images * args.rois_per_image
    batch = make_batch(num_rois, args.classes, args.dim, args.fg_fraction, device)
    names = args.losses or sorted(LOSSES)
    names = ["ce"] + [n for n in names if n != "ce"]
    print(
        f"{num_rois} RoIs ({args.images} images x {args.rois_per_image}), C = {args.classes}, "
        f"{args.fg_fraction:.0%} foreground, device {device}, {args.threads} thread(s), "
        f"{args.logits} logits, median of {args.repeats} after {args.warmup} warm-up, "
        f"torch {torch.__version__}"
    )
    print(flush=True)
    print("| loss | terms | forward (ms) | forward+backward (ms) | fwd+bwd / ce | timed runs |")
    print("|---|---|---|---|---|---|", flush=True)
    base = None
    for name in names:
        t_f, t_fb, runs, terms = bench_one(name, batch, args, device)
        base = base or t_fb
        print(
            f"| {name} | {terms} | {t_f * 1e3:.1f} | {t_fb * 1e3:.1f} | {t_fb / base:.2f}x "
            f"| {runs} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
