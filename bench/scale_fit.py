"""Fits and the LVIS v1 projection of ``bench/bench_scale.py`` (imported by it), its report
tables and machine record."""

from __future__ import annotations

import argparse
import math
import os
import platform
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ltmodels.losses import build_loss

LVIS = {"train_images": 100_170, "val_images": 19_809, "classes": 1203, "epochs": 12}
VARIANTS = {"ebl+mfs": ("ebl", {"mfs": True})}  # loss variants besides the registered ones
GPU = {  # the estimate's assumptions (H100 SXM class; fp32 matmuls, PyTorch's default: no TF32)
    "matmul_tflops_achieved": 30.0,
    "hbm_gb_s": 3000.0,
    "loss_passes_over_logits": 20,
    "host_to_device_gb_s": 10.0,
}


def linfit(x: list[float], y: list[float]) -> dict[str, float]:
    """Least squares ``y = a + b x`` with ``a, b >= 0`` (a cost): a, b, R^2 and the largest
    relative residual. Noise can tilt a free fit below zero; then the best fit with one of
    ``a``, ``b`` at 0 is taken (the non-negative least-squares solution)."""
    xs, ys = np.asarray(x, np.float64), np.asarray(y, np.float64)
    candidates = [(float(ys.mean()), 0.0), (0.0, float(xs @ ys / (xs @ xs)))]
    if len(set(x)) > 1:
        b, a = np.polyfit(xs, ys, 1)
        candidates.append((float(a), float(b)))
    feasible = [(a, b) for a, b in candidates if a >= 0 and b >= 0]
    a, b = min(feasible, key=lambda ab: float(((ys - ab[0] - ab[1] * xs) ** 2).sum()))
    fit = a + b * xs
    ss = float(((ys - ys.mean()) ** 2).sum())
    r2 = 1 - float(((ys - fit) ** 2).sum()) / ss if ss > 0 else float("nan")
    worst = float(np.max(np.abs(ys - fit) / ys))
    return {"a": a, "b": b, "r2": r2, "max_rel_residual": worst}


def _gpu_estimate(
    loss: str, t_iter: float, t_ce: float, read_s: float, cpu_gb_s: float, args
) -> dict[str, float]:
    """Seconds per iteration on a GPU: the host side measured here (sampling and reading
    the batch, which a GPU does not remove), the copy to the GPU, the matmuls from FLOPs,
    CE-like loss passes over the logits from HBM bandwidth, and what the loss costs beyond
    CE on this CPU scaled by HBM / this CPU's measured copy bandwidth (:data:`GPU`)."""
    c, n_rows, dim = LVIS["classes"], args.batch * args.rois, args.dim
    k = build_loss(VARIANTS.get(loss, (loss, {}))[0], num_classes=c).num_logits(c)
    flops = 6 * n_rows * dim * k + 6 * (n_rows // 4) * dim * 4  # classifier; positives' boxes
    parts = {
        "flops_per_iter": float(flops),
        "host_read_s": read_s,
        "copy_s": n_rows * (dim * 4 + 24) / (GPU["host_to_device_gb_s"] * 1e9),  # as fp32
        "matmul_s": flops / (GPU["matmul_tflops_achieved"] * 1e12),
        "loss_s": GPU["loss_passes_over_logits"] * n_rows * k * 4 / (GPU["hbm_gb_s"] * 1e9),
        "loss_extra_s": max(0.0, t_iter - t_ce) * cpu_gb_s / GPU["hbm_gb_s"],
    }
    parts["s_per_iter"] = sum(v for key, v in parts.items() if key.endswith("_s"))
    return parts


def _at_lvis(mine: list[dict[str, Any]], fit: dict[str, float]) -> tuple[float, str]:
    """Seconds per iteration at 1203 classes: measured (mean over caches) or fitted."""
    at = [r["s_per_iter"] for r in mine if r["classes"] == LVIS["classes"]]
    if at:
        return float(np.mean(at)), "measured"
    return fit["a"] + fit["b"] * LVIS["classes"], "fit"


def project(results: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Fits over the measured points and the LVIS v1 projection."""
    runs, caches = results["runs"], results["caches"]
    iters = math.ceil(LVIS["train_images"] / args.batch) * LVIS["epochs"]
    c = LVIS["classes"]
    bytes_fit = linfit([k["images"] for k in caches], [k["train_bytes"] for k in caches])
    evals = [k for k in caches if "eval_s_per_image" in k]
    eval_fit = linfit([k["classes"] for k in evals], [k["eval_s_per_image"] for k in evals])
    read_s = float(np.mean([k["read_s_per_iter"] for k in caches]))
    fits: dict[str, Any] = {}
    at_lvis = {}
    for loss in dict.fromkeys(r["loss"] for r in runs):
        mine = [r for r in runs if r["loss"] == loss]
        per_c = linfit([r["classes"] for r in mine], [r["s_per_iter"] for r in mine])
        by_n = {}
        for cls in sorted({r["classes"] for r in mine}):
            pts = [r for r in mine if r["classes"] == cls]
            by_n[cls] = linfit(
                [r["images"] for r in pts], [r["epoch_s_extrapolated"] for r in pts]
            )
        fits[loss] = {"s_per_iter_vs_classes": per_c, "epoch_s_vs_images": by_n}
        at_lvis[loss] = _at_lvis(mine, per_c)
    per_loss = {}
    t_ce = at_lvis.get("ce", (0.0, ""))[0]
    for loss, (t_iter, source) in at_lvis.items():
        gpu = _gpu_estimate(loss, t_iter, t_ce, read_s, results["cpu_copy_gb_s"], args)
        per_loss[loss] = {
            "cpu_s_per_iter_at_1203": t_iter,
            "source": source,
            "cpu_gflops_achieved": gpu["flops_per_iter"] / t_iter / 1e9,
            "cpu_train_hours": iters * t_iter / 3600,
            "gpu_estimate": gpu,
            "gpu_estimate_train_hours": iters * gpu["s_per_iter"] / 3600,
        }
    fits["train_bytes_vs_images"] = bytes_fit
    fits["eval_s_per_image_vs_classes"] = eval_fit
    train_bytes = bytes_fit["a"] + bytes_fit["b"] * LVIS["train_images"]
    val_row = args.dim * np.dtype(args.dtype).itemsize + 16
    val_bytes = LVIS["val_images"] * (args.val_proposals * val_row + 32)
    return {
        "fits": fits,
        "projection": {
            "setting": {**LVIS, "batch_images": args.batch, "iterations": iters},
            "train_cache_gb": train_bytes / 1e9,
            "cache_gb": (train_bytes + val_bytes) / 1e9,
            "cpu_eval_hours": LVIS["val_images"] * (eval_fit["a"] + eval_fit["b"] * c) / 3600,
            "host_read_s_per_iter_measured": read_s,
            "per_loss": per_loss,
            "gpu_assumptions": {**GPU, "label": "ESTIMATE from FLOPs and bandwidth, not measured"},
        },
    }


def machine(args: argparse.Namespace, load: list[float]) -> dict[str, Any]:
    """This machine, the torch build and the run's load averages."""
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), "")
    memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30
    return {
        "cpu": cpu or platform.processor(),
        "nproc": os.cpu_count(),
        "mem_gib": round(memory, 1),
        "torch": torch.__version__,
        "threads": args.threads,
        "device": args.device,
        "load_avg_start_end": load,
    }


def report(res: dict[str, Any]) -> None:
    """Markdown tables of the runs, the caches and the projection."""
    print("\n| loss | images | classes | s/iter | epoch (extrapolated) | peak RSS | anon RSS |")
    print("|---|---|---|---|---|---|---|")
    for r in res["runs"]:
        print(
            f"| {r['loss']} | {r['images']} | {r['classes']} | {r['s_per_iter']:.3f} s | "
            f"{r['epoch_s_extrapolated']:.0f} s | {r['peak_rss_mib']:.0f} MiB | "
            f"{r['anon_rss_mib']:.0f} MiB |"
        )
    print(
        "\n| images | classes | on disk | feature shards | write | host read/iter | eval/image |"
    )
    print("|---|---|---|---|---|---|---|")
    for k in res["caches"]:
        ev = f"{k['eval_s_per_image'] * 1e3:.0f} ms" if "eval_s_per_image" in k else ""
        print(
            f"| {k['images']} | {k['classes']} | {k['disk_bytes'] / 2**30:.2f} GiB | "
            f"{k['feature_shards']} | {k['write_s']:.1f} s | "
            f"{k['read_s_per_iter'] * 1e3:.1f} ms | {ev} |"
        )
    p = res["projection"]
    print(
        f"\nLVIS v1 stage 2, {p['setting']['iterations']} iterations; cache "
        f"{p['cache_gb']:.0f} GB; CPU evaluation {p['cpu_eval_hours']:.1f} h"
    )
    print("| loss | s/iter = a + b C (R^2) | CPU s/iter, C=1203 | CPU train | GPU ESTIMATE |")
    print("|---|---|---|---|---|")
    for loss, q in p["per_loss"].items():
        f = res["fits"][loss]["s_per_iter_vs_classes"]
        print(
            f"| {loss} | {f['a']:.3f} + {f['b'] * 1e3:.3f}e-3 C ({f['r2']:.3f}) | "
            f"{q['cpu_s_per_iter_at_1203']:.2f} s ({q['source']}) | "
            f"{q['cpu_train_hours']:.1f} h | {q['gpu_estimate_train_hours']:.2f} h |"
        )
