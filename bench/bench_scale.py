"""Cached stage-2 trials at LVIS shape: time per epoch, memory and disk against the number of
images and classes, fitted and projected to a full LVIS v1 stage 2.

Each cache is synthetic and written directly in the cache layout (``ShardWriter``, the
manifest of :mod:`ltmodels.cache.manifest`; no detector): per training image one view of
``--rois`` RoIs (the budget mode's ``sampled_views``, K = 1) with random fp16 features of
width ``--dim`` (R50-FPN's box head: 1024), 25% positive RoIs spread over ~12 objects per
image (LVIS v1 has 12.7 annotations per image) whose classes are drawn by LVIS v1 training
image count (``ltmodels/data/lvis_v1_categories.json``; fewer classes: an evenly spaced
subsample of the 1203 by id, which keeps the rare/common/frequent mix), and ``--val-images``
validation images of ``--val-proposals`` proposals. Arrays over ``--shard-mib`` are sharded.

Per (cache, loss): ``--warmup`` iterations, then ``--iters`` timed iterations, all through
:func:`ltmodels.cache.train.train_predictor_cached` (predictor from ``build_predictor``,
``set_class_stats`` fed the LVIS counts), each timed iteration a call on a window of one
batch of consecutive images at a random place of the cache: a bounded run of the trainer's
own iterations, the median kept (the 2 cores are shared: one thread by default, since two
threads measured 0.1-0.6 s for the same iteration here). The epoch time is
**extrapolated**: ``ceil(images / batch)`` iterations at the median; one whole epoch
(``--check-epoch``) is timed to test the extrapolation. Memory: peak
RSS of the timed loss (VmHWM, reset through ``/proc/self/clear_refs`` before each loss; it
counts the cache pages the loss read, which are shared page cache) and the anonymous
(private) RSS after it. Also timed per cache: the host side of an iteration alone
(``sample_batch`` + ``load_rows`` of random images: what a GPU does not remove), and once per
class count the cached evaluation (``predict_cached``, CE predictor) per validation image.

Fits (least squares): seconds per iteration against classes per loss, epoch seconds against
images, bytes on disk against images. Projection: LVIS v1 stage 2 (100,170 training images,
1203 classes, 12 epochs at ``--batch`` images per iteration, 19,809 validation images) on this
CPU from the measured per-iteration times; the GPU figure is an **estimate** from FLOPs and
bandwidth (assumptions in the JSON), not a measurement.

    .venv/bin/python bench/bench_scale.py [--quick] [--out scale.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import types
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scale_fit import LVIS, VARIANTS, machine, project, report  # bench/, the script's folder

from ltmodels.cache.evaluate import predict_cached
from ltmodels.cache.extract import open_writers
from ltmodels.cache.manifest import write_manifest
from ltmodels.cache.shards import manifest_format
from ltmodels.cache.store import FeatureCache
from ltmodels.cache.train import load_rows, sample_batch, train_predictor_cached
from ltmodels.losses import LOSSES, build_loss
from ltmodels.modeling.heads import build_predictor

OBJECTS_PER_IMAGE = 12.7
_POOL = 8192  # random rows that the features are cut from


def lvis_counts(classes: int) -> np.ndarray:
    """``[C]`` LVIS v1 training image counts: all 1203 classes, or an evenly spaced subsample."""
    text = resources.files("ltmodels.data").joinpath("lvis_v1_categories.json").read_text()
    cats = sorted(json.loads(text)["categories"], key=lambda c: c["id"])
    counts = np.array([c["train_image_count"] for c in cats], dtype=np.float64)
    if classes == len(counts):
        return counts
    return counts[np.linspace(0, len(counts) - 1, classes).astype(int)]


def write_cache(root: Path, images: int, classes: int, args: argparse.Namespace) -> FeatureCache:
    """A synthetic cache of ``images`` training images in the cache layout (see the top)."""
    rng = np.random.default_rng(images * 7919 + classes)
    r, d, pos, nval = args.rois, args.dim, args.rois // 4, args.val_proposals
    pool = rng.standard_normal((_POOL + max(r, nval), d), np.float32).astype(args.dtype)
    xy = rng.uniform(0, 600, (len(pool), 2))
    boxes = np.concatenate([xy, xy + rng.uniform(8, 200, (len(pool), 2))], 1)
    targets = rng.standard_normal((len(pool), 4)) * 0.1
    root.mkdir(parents=True)
    w = open_writers(root, args.dtype, d, args.shard_mib << 20)
    objects = np.minimum(pos, 1 + rng.poisson(OBJECTS_PER_IMAGE - 1, images))
    p = lvis_counts(classes)
    labels_all = rng.choice(classes, size=int(objects.sum()), p=p / p.sum()) + 1
    first = np.concatenate([[0], np.cumsum(objects)])
    for i in range(images):
        s = int(rng.integers(0, _POOL))
        obj = first[i] + np.arange(pos) % objects[i]
        labels, gt = np.zeros(r, np.int32), np.full(r, -1, np.int32)
        labels[:pos], gt[:pos] = labels_all[obj], obj
        w["train/features"].append(pool[s : s + r])
        w["train/targets"].append(targets[s : s + r])
        w["train/boxes"].append(boxes[s : s + r])
        w["train/labels"].append(labels)
        w["train/gt_index"].append(gt)
        w["train/view_rows"].append(np.array([r]))
        w["train/view_flip"].append(np.zeros(1))
        w["train/image_view_count"].append(np.array([1]))
        for name in w:
            if name.startswith("train/"):
                w[name].end_unit()
    w["train/image_ids"].append_units(np.arange(1, images + 1))
    for _ in range(args.val_images):
        s = int(rng.integers(0, _POOL))
        w["val/features"].append(pool[s : s + nval])
        w["val/boxes"].append(boxes[s : s + nval])
        w["val/rows"].append(np.array([nval]))
        w["val/input_size"].append(np.array([[800, 1333]]))
        for name in w:
            if name.startswith("val/"):
                w[name].end_unit()
    w["val/image_ids"].append_units(np.arange(1, args.val_images + 1))
    w["val/orig_size"].append_units(np.tile([[480, 800]], (args.val_images, 1)))
    files = {f"{name}.bin": writer.close() for name, writer in w.items()}
    manifest = {
        "format": manifest_format(files),
        "mode": "sampled_views",
        "views_per_image": 1,
        "feature_dim": d,
        "num_classes": classes,
        "label_to_cat_id": list(range(classes + 1)),
        "box_coder": {"weights": [10.0, 10.0, 5.0, 5.0], "bbox_xform_clip": math.log(1000 / 16)},
        "total_bytes": sum(f["bytes"] for f in files.values()),
        "files": files,
        "synthetic": "bench/bench_scale.py",
    }
    write_manifest(root, manifest)
    return FeatureCache.open(root, full=False)


def _status_kib(field: str) -> int:
    found = re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text())
    return int(found.group(1)) if found else 0


def reset_peak() -> bool:
    """Reset the peak RSS (Linux); False where it cannot (then the process peak is used)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mib(reset_ok: bool) -> float:
    if reset_ok:
        return _status_kib("VmHWM") / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def window(cache: FeatureCache, start: int, images: int) -> types.SimpleNamespace:
    """The cache seen as its ``images`` training images from ``start`` on (what
    ``train_predictor_cached`` reads: classes, image count, training arrays)."""
    train = dict(cache.train)
    train["image_views"] = cache.train["image_views"][start : start + images + 1]
    return types.SimpleNamespace(
        train=train, num_classes=cache.num_classes, num_train_images=images
    )


def make_member(name: str, classes: int, dim: int) -> tuple[torch.nn.Module, Any]:
    """A predictor (seeded initialisation) and its loss, fed LVIS v1's class counts."""
    base, params = VARIANTS.get(name, (name, {}))
    loss = build_loss(base, num_classes=classes, **params)
    loss.set_class_stats(torch.as_tensor(lvis_counts(classes)), LVIS["train_images"])
    torch.manual_seed(0)
    predictor = build_predictor(
        "auto",
        dim,
        num_logits=loss.num_logits(classes),
        num_classes=classes,
        loss_predictor=loss.predictor,
        cosine_scale=20.0,
    )
    return predictor, loss


def isolated(name: str, path: Path) -> dict[str, Any]:
    """:func:`time_loss` in a fresh process: its peak RSS is this loss's trial alone."""
    argv = [sys.executable, __file__, *sys.argv[1:], "--child", name, "--child-cache", str(path)]
    ran = subprocess.run(argv, capture_output=True, text=True, check=True)
    return json.loads(ran.stdout.splitlines()[-1])


def time_loss(name: str, path: Path, args: argparse.Namespace) -> dict[str, Any]:
    """``--warmup`` iterations, then ``--iters`` timed ones, each its own trainer call on a
    window of one batch at a random place (the loss and predictor carry on): the median
    wall and process CPU seconds per iteration. The cache is opened afresh, so that the
    peak RSS counts the pages this loss maps, not those of the losses before it."""
    cache = FeatureCache.open(path, full=False)
    predictor, loss = make_member(name, cache.num_classes, cache.feature_dim)
    rng = np.random.default_rng(1)
    n, b = cache.num_train_images, args.batch
    run = {"lr": 0.01, "batch_images": b, "rois_per_image": args.rois, "device": args.device}
    reset_ok = not args.child and reset_peak()
    wall, cpu = [], []
    for iters in [args.warmup] + [1] * args.iters:
        view = window(cache, int(rng.integers(0, n - iters * b + 1)), iters * b)
        t0, c0 = time.perf_counter(), time.process_time()
        train_predictor_cached(predictor, loss, view, epochs=1, seed=len(wall), **run)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    per_iter = float(np.median(wall[1:]))
    return {
        "loss": name,
        "images": n,
        "classes": cache.num_classes,
        "warmup_s": wall[0],
        "s_per_iter": per_iter,
        "s_per_iter_min_max": [min(wall[1:]), max(wall[1:])],
        "cpu_s_per_iter": float(np.median(cpu[1:])),
        "epoch_s_extrapolated": math.ceil(n / b) * per_iter,
        "peak_rss_mib": peak_rss_mib(reset_ok),
        "peak_rss_since": "loss start" if reset_ok else "process start",
        "anon_rss_mib": _status_kib("RssAnon") / 1024,
    }


def time_reads(cache: FeatureCache, args: argparse.Namespace, repeats: int = 8) -> float:
    """Seconds of ``sample_batch`` + ``load_rows`` for one batch of random images."""
    rng = np.random.default_rng(2)
    t0 = time.perf_counter()
    for _ in range(repeats):
        images = rng.choice(cache.num_train_images, args.batch, replace=False)
        rows = sample_batch(cache, images, rng, rois_per_image=args.rois, positive_fraction=0.25)
        load_rows(cache, rows, torch.device("cpu"))
    return (time.perf_counter() - t0) / repeats


def check_epoch(name: str, cache: FeatureCache, args, results) -> dict[str, float]:
    """One whole epoch of ``name`` on the cache, against its extrapolation from the window."""
    predictor, loss = make_member(name, cache.num_classes, cache.feature_dim)
    run = {"lr": 0.01, "batch_images": args.batch, "rois_per_image": args.rois}
    t0 = time.perf_counter()
    train_predictor_cached(predictor, loss, cache, epochs=1, device=args.device, **run)
    measured = time.perf_counter() - t0
    [timed] = [r for r in results["runs"][::-1] if r["loss"] == name][:1]
    return {
        "loss": name,
        "measured_s": measured,
        "extrapolated_s": timed["epoch_s_extrapolated"],
        "iterations": math.ceil(cache.num_train_images / args.batch),
    }


def copy_bandwidth(mib: int = 256) -> float:
    """GB/s of a numpy copy (read + write counted) on this machine, best of 3."""
    src, dst = np.ones(mib << 18, np.float32), np.empty(mib << 18, np.float32)
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t0)
    return 2 * src.nbytes / best / 1e9


def time_eval(cache: FeatureCache, args: argparse.Namespace) -> float:
    """Seconds per validation image of ``predict_cached`` (an untrained CE predictor)."""
    predictor, loss = make_member("ce", cache.num_classes, cache.feature_dim)
    t0 = time.perf_counter()
    predict_cached([(predictor.to(args.device), loss)], cache, device=args.device)
    return (time.perf_counter() - t0) / max(cache.num_val_images, 1)


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", default="1000,2000,3500", help="training images per cache")
    ap.add_argument("--classes", default="40,150,300,600,1203")
    ap.add_argument("--grid-losses", default="ce,eqlv2,seesaw", help="losses on every cache")
    ap.add_argument("--all-at", default="1000x1203", help="IMAGESxCLASSES: every loss there")
    ap.add_argument(
        "--check-epoch", default="1000x1203:ce", help="IMAGESxCLASSES:LOSS: one whole epoch"
    )
    ap.add_argument("--rois", type=int, default=512, help="RoIs per image")
    ap.add_argument("--dim", type=int, default=1024, help="D, feature channels")
    ap.add_argument("--dtype", default="float16", choices=("float16", "float32"))
    ap.add_argument("--batch", type=int, default=16, help="images per iteration")
    ap.add_argument("--warmup", type=int, default=2, help="untimed iterations per loss")
    ap.add_argument("--iters", type=int, default=8, help="timed iterations per loss and cache")
    ap.add_argument("--val-images", type=int, default=32)
    ap.add_argument("--val-proposals", type=int, default=1000)
    ap.add_argument("--shard-mib", type=int, default=512, help="shard bound of the caches")
    ap.add_argument("--max-cache-gb", type=float, default=4.0, help="refuse larger caches")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (see the top)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--work", default=None, help="parent folder of the caches (deleted after)")
    ap.add_argument("--out", default=None, help="JSON file")
    ap.add_argument("--isolate", action="store_true", help="each loss in a fresh process")
    ap.add_argument("--quick", action="store_true", help="smoke-test sizes (< 60 s)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--child-cache", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.quick:
        args.images, args.classes, args.grid_losses, args.all_at = "64,128", "40,80", "ce", "64x80"
        args.check_epoch, args.rois, args.dim, args.batch = "64x80:ce", 128, 256, 4
        args.warmup, args.iters = 1, 2
        args.val_images, args.val_proposals, args.shard_mib = 4, 100, 1
    return args


def measure_cache(n: int, c: int, losses: list[str], work: Path, args, results) -> None:
    """Write one cache, time its losses, its host-side reads (and evaluation), delete it."""
    t0 = time.perf_counter()
    cache = write_cache(work / f"n{n}-c{c}", n, c, args)
    files = cache.manifest["files"]
    info: dict[str, Any] = {
        "images": n,
        "classes": c,
        "write_s": time.perf_counter() - t0,
        "disk_bytes": sum(f.stat().st_blocks * 512 for f in cache.path.rglob("*.bin")),
        "train_bytes": sum(e["bytes"] for k, e in files.items() if k.startswith("train/")),
        "feature_shards": len(files["train/features.bin"].get("shards", [None])),
    }
    path = cache.path
    del cache  # unmapped: each loss maps the cache afresh
    if not results["runs"]:  # once: the process's first steps pay one-off costs
        time_loss(losses[0], path, args)
        time_eval(FeatureCache.open(path, full=False), args)
    for name in losses:
        r = isolated(name, path) if args.isolate else time_loss(name, path, args)
        results["runs"].append(r)
        print(
            f"{name:>8} n={n:>5} C={c:>4}: {r['s_per_iter']:.3f} s/iter, epoch "
            f"{r['epoch_s_extrapolated']:.0f} s (extrapolated), "
            f"peak RSS {r['peak_rss_mib']:.0f} MiB",
            flush=True,
        )
    cache = FeatureCache.open(path, full=False)
    if f"{n}x{c}" == args.check_epoch.split(":")[0]:
        info["epoch_check"] = check_epoch(args.check_epoch.split(":")[1], cache, args, results)
    info["read_s_per_iter"] = time_reads(cache, args)
    if args.val_images and not any(k["classes"] == c for k in results["caches"]):
        info["eval_s_per_image"] = time_eval(cache, args)
    results["caches"].append(info)
    shutil.rmtree(cache.path)


def main() -> None:
    args = parse()
    torch.set_num_threads(args.threads)
    if args.child:  # one loss for isolated(), its record on the last line
        print(json.dumps(time_loss(args.child, Path(args.child_cache), args)))
        return
    images = [int(x) for x in args.images.split(",")]
    classes = [int(x) for x in args.classes.split(",")]
    all_at = tuple(int(x) for x in args.all_at.lower().split("x"))
    every = sorted(LOSSES) + sorted(VARIANTS)
    per_image = args.rois * (args.dim * np.dtype(args.dtype).itemsize + 40)
    if max(images) * per_image > args.max_cache_gb * 1e9:
        raise SystemExit(f"{max(images)} images make a cache over {args.max_cache_gb} GB")
    if min(images) < max(args.warmup, args.iters) * args.batch:
        raise SystemExit("every cache needs at least max(warmup, iters) x batch images")
    work = Path(tempfile.mkdtemp(prefix="bench_scale-", dir=args.work))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # still delete the caches
    results: dict[str, Any] = {"started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    results |= {"runs": [], "caches": []}
    load = [os.getloadavg()[0]]
    try:
        for c in classes:
            for n in images:
                losses = every if (n, c) == all_at else args.grid_losses.split(",")
                measure_cache(n, c, losses, work, args, results)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["cpu_copy_gb_s"] = copy_bandwidth()
    results |= project(results, args)
    results["machine"] = machine(args, load + [os.getloadavg()[0]])
    results["args"] = vars(args)
    report(results)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
