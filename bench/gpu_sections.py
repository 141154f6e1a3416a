"""The four sections of ``bench/gpu_check.py`` (see its docstring) and how much each does.

A section takes the run's ``Context`` (``gpu_check.py``) and returns its figures (among them
``images_per_s``). The memory and version figures are measured here too, as every spawned DDP
rank records its own.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from bench_losses import bench_one, make_batch
from bench_throughput import alternate_rounds, build_models, identical_backbone_tensors
from torch.utils.data import DataLoader, Subset

from ltmodels.data import LVISDetection, collate_fn
from ltmodels.data.synthetic import SynthConfig, SynthPaths
from ltmodels.losses import LOSSES
from ltmodels.modeling.detector import ModelSpec
from ltmodels.trial.config import DataConfig, StageConfig

if TYPE_CHECKING:
    from gpu_check import Context

AMP_NOTE = "train_stage trains with a GradScaler and autocast on CUDA only"


@dataclass(frozen=True)
class Sizes:
    """How much each section does: ``FULL`` on a GPU, ``DRY`` for ``--dry-run`` on the CPU."""

    synth: SynthConfig
    image_size: int  # the model's min_size = max_size
    throughput_images: int
    throughput_rounds: int
    throughput_batch: int
    loss_images: int
    loss_rois_per_image: int
    loss_warmup: int
    loss_repeats: int
    loss_budget_s: float
    cached_epochs: int
    cached_batch: int
    ddp_batch_per_rank: int
    ddp_warmup_iters: int


FULL = Sizes(SynthConfig(), 128, 128, 3, 4, 16, 512, 2, 10, 20.0, 8, 8, 4, 100)
DRY = Sizes(
    SynthConfig(num_classes=12, train_images=24, val_images=12, image_size=64),
    64, 8, 1, 2, 1, 256, 1, 1, 2.0, 1, 4, 2, 4,
)  # fmt: skip


def tiny_spec(size: int) -> ModelSpec:
    """``ModelSpec.tiny`` (masks on) at one image size."""
    return ModelSpec.tiny(min_size=size, max_size=size)


def proc_value(path: str, key: str) -> str | None:
    """The value of the first ``key:`` line of a /proc file; None without one (not Linux)."""
    lines = Path(path).read_text().splitlines() if Path(path).exists() else []
    return next(
        (ln.split(":", 1)[1].strip() for ln in lines if ln.split(":")[0].strip() == key), None
    )


def versions(device: torch.device) -> dict[str, Any]:
    cuda = device.type == "cuda"
    cpu = proc_value("/proc/cpuinfo", "model name") or platform.machine()
    return {
        "device": torch.cuda.get_device_name(device) if cuda else cpu,
        "torch": torch.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "nccl": ".".join(map(str, torch.cuda.nccl.version())) if cuda else None,
    }  # fmt: skip


def peak_memory(device: torch.device) -> dict[str, Any]:
    """CUDA: ``max_memory_allocated``. CPU: the process's VmHWM (a spawned rank's own, where
    ``ru_maxrss`` would include its parent's peak), else ``getrusage``'s ``ru_maxrss``."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        mib = torch.cuda.max_memory_allocated(device) / 2**20
        return {"peak_memory_mib": mib, "memory_source": "torch.cuda.max_memory_allocated"}
    hwm = proc_value("/proc/self/status", "VmHWM")  # "123456 kB"
    if hwm:
        return {"peak_memory_mib": int(hwm.split()[0]) / 1024, "memory_source": "VmHWM"}
    mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"peak_memory_mib": mib, "memory_source": "getrusage ru_maxrss"}


def section_throughput(ctx: Context) -> dict[str, Any]:
    s = ctx.sizes
    paths = ctx.dataset()
    data = LVISDetection(str(paths.train_json), str(paths.root), with_masks=True)
    subset = Subset(data, range(min(s.throughput_images, len(data))))
    loader = DataLoader(subset, batch_size=s.throughput_batch, collate_fn=collate_fn)
    ours, plain = build_models(ctx.spec(), data, ctx.device)
    same = identical_backbone_tensors(ours, plain)
    rates = alternate_rounds(ours, plain, loader, s.throughput_rounds, ctx.device)
    med = {side: statistics.median(r) for side, r in rates.items()}
    return {
        "images_per_s": med["ltmodels"], "torchvision_images_per_s": med["torchvision"],
        "ltmodels_over_torchvision": med["ltmodels"] / med["torchvision"], "rounds": rates,
        "images_per_round": len(subset), "batch_size": s.throughput_batch, "amp": False,
        "identical_backbone_tensors": same,
    }  # fmt: skip


def section_losses(ctx: Context) -> dict[str, Any]:
    s = ctx.sizes
    args = argparse.Namespace(
        classes=1203, dim=1024, fg_fraction=0.25, logits="untrained", warmup=s.loss_warmup,
        repeats=s.loss_repeats, budget_s=s.loss_budget_s,
    )  # fmt: skip
    num_rois = s.loss_images * s.loss_rois_per_image
    batch = make_batch(num_rois, args.classes, args.dim, args.fg_fraction, ctx.device)
    rows: dict[str, dict[str, Any]] = {}
    for name in ["ce"] + sorted(set(LOSSES) - {"ce"}):
        t_f, t_fb, runs, terms = bench_one(name, batch, args, ctx.device)
        rows[name] = {
            "forward_ms": t_f * 1e3, "forward_backward_ms": t_fb * 1e3,
            "over_ce": t_fb / (rows["ce"]["forward_backward_ms"] / 1e3) if rows else 1.0,
            "images_per_s": s.loss_images / t_fb, "timed_runs": runs, "terms": terms,
        }  # fmt: skip
    slowest = max(rows, key=lambda n: rows[n]["forward_backward_ms"])
    return {
        "images_per_s": rows[slowest]["images_per_s"],
        "images_per_s_is": f"forward+backward of the slowest loss ({slowest}), loss only",
        "classes": args.classes,
        "rois": num_rois,
        "images": s.loss_images,
        "logits": args.logits,
        "losses": rows,
    }


def _clock(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def section_cached(ctx: Context) -> dict[str, Any]:  # lazy imports: a broken one fails it alone
    from ltmodels.cache.build import build_feature_cache
    from ltmodels.cache.evaluate import evaluate_cached
    from ltmodels.cache.member import Member, Optim
    from ltmodels.cache.train import train_pack
    from ltmodels.trial.schedules import build_model

    s, device, spec, paths = ctx.sizes, ctx.device, ctx.spec(), ctx.dataset()
    train = LVISDetection(str(paths.train_json), str(paths.root), with_masks=False)
    val = LVISDetection(str(paths.val_json), str(paths.root), with_masks=False)
    torch.manual_seed(0)
    model = build_model(spec, StageConfig(loss=ctx.cached_loss), train, device)
    shutil.rmtree(ctx.work / "features", ignore_errors=True)  # always time a fresh build
    t0 = _clock(device)
    cache = build_feature_cache(model, train, val, ctx.work / "features", key="gpu")
    t1 = _clock(device)
    other = build_model(spec, StageConfig(loss="ce"), train, device)  # a pack of 2 members
    members = [
        Member(m.roi_heads.box_predictor, m.roi_heads.cls_loss, Optim(0.01, warmup_iters=20),
               rng_state=torch.get_rng_state(), name=name)
        for m, name in ((model, ctx.cached_loss), (other, "ce"))
    ]  # fmt: skip
    train_pack(
        members, cache, epochs=s.cached_epochs, batch_images=s.cached_batch,
        rois_per_image=spec.box_batch_size_per_image, positive_fraction=spec.box_positive_fraction,
        seed=0, device=device, isolate_failures=False,
    )  # fmt: skip
    history = members[0].history
    t2 = _clock(device)
    pairs = [(m.predictor, m.loss) for m in members]
    [(metrics, _), _] = evaluate_cached(
        pairs, cache, str(paths.val_json), score_thresh=spec.box_score_thresh,
        detections_per_img=spec.box_detections_per_img, device=device,
    )  # fmt: skip
    t3 = _clock(device)
    n_train, n_val = cache.num_train_images, cache.num_val_images
    return {
        "images_per_s": 2 * s.cached_epochs * n_train / (t2 - t1),
        "images_per_s_is": "stage-2 training images per second on the cache, over a pack of 2",
        "pack_size": 2,
        "loss": ctx.cached_loss, "epochs": s.cached_epochs, "final_loss": history[-1]["loss"],
        "train_images": n_train, "val_images": n_val, "cache_mode": cache.manifest["mode"],
        "cache_mib": cache.manifest["total_bytes"] / 2**20, "cache_build_s": t1 - t0,
        "cache_build_images_per_s": (n_train + n_val) / (t1 - t0),
        "train_s": t2 - t1, "eval_s": t3 - t2, "eval_images_per_s": n_val / (t3 - t2),
        **{k: v for k, v in metrics.items() if k in ("bbox/AP", "bbox/APr", "bbox/APf")},
    }  # fmt: skip


def ddp_epoch(rank: int, job: dict[str, Any]) -> dict[str, Any]:
    """One stage-1 epoch on this rank (process group already initialised)."""
    from ltmodels.trial.schedules import build_model
    from ltmodels.trial.stages import datasets, train_loader, train_stage

    device = torch.device("cuda", rank) if job["cuda"] else torch.device("cpu")
    sizes: Sizes = job["sizes"]
    paths = SynthPaths.at(job["root"])
    data = DataConfig(str(paths.train_json), str(paths.val_json), job["root"], job["root"])
    train_set, _ = datasets(data, masks=True)
    stage = StageConfig(
        loss="ce", epochs=1, lr=0.02, batch_size=sizes.ddp_batch_per_rank * job["world"],
        warmup_iters=sizes.ddp_warmup_iters, seed=0,
    )  # fmt: skip
    torch.manual_seed(0)
    model = build_model(tiny_spec(sizes.image_size), stage, train_set, device)
    loader = train_loader(train_set, stage, seed=0)
    ckpt = Path(job["dir"]) / "stage1.pt"
    [stats] = train_stage(model, stage, loader, device=device, ckpt_path=ckpt)
    return {"rank": rank, **stats, **peak_memory(device), "device": versions(device)["device"]}


def _ddp_worker(rank: int, job: dict[str, Any]) -> None:
    torch.set_num_threads(job["threads"])
    if job["cuda"]:
        torch.cuda.set_device(rank)
    init = f"file://{job['dir']}/rendezvous"
    dist.init_process_group(job["backend"], init_method=init, rank=rank, world_size=job["world"])
    try:
        result = ddp_epoch(rank, job)
        Path(job["dir"], f"rank{rank}.json").write_text(json.dumps(result))
    except Exception as exc:  # noted with its time: the first rank to fail is the cause
        line = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}"
        note = {"rank": rank, "error": line, "time": time.time()}
        Path(job["dir"], f"rank{rank}.error.json").write_text(json.dumps(note))
        raise
    finally:
        dist.destroy_process_group()


def section_ddp(ctx: Context) -> dict[str, Any]:
    cuda = ctx.device.type == "cuda"
    paths = ctx.dataset()
    run_dir = ctx.work / "ddp"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    job = {
        "cuda": cuda, "backend": "nccl" if cuda else "gloo", "world": ctx.world,
        "threads": ctx.threads, "dir": str(run_dir), "root": str(paths.root), "sizes": ctx.sizes,
    }  # fmt: skip
    try:
        mp.spawn(_ddp_worker, args=(job,), nprocs=ctx.world, join=True)
    except Exception as exc:  # the others fail after the first (a closed connection): name it
        notes = sorted(
            (json.loads(p.read_text()) for p in run_dir.glob("rank*.error.json")),
            key=lambda n: n["time"],
        )
        if not notes:
            raise
        first = notes[0]
        raise RuntimeError(f"rank {first['rank']} failed first: {first['error']}") from exc
    ranks = [json.loads((run_dir / f"rank{r}.json").read_text()) for r in range(ctx.world)]
    epoch_s = max(r["seconds"] for r in ranks)
    images = sum(r["images"] for r in ranks)
    return {
        "images_per_s": images / epoch_s,
        "images_per_s_is": "images of all ranks / the slowest rank's epoch seconds",
        "world_size": ctx.world, "backend": job["backend"], "amp": cuda, "amp_note": AMP_NOTE,
        "epoch_s": epoch_s, "images": images, "loss": ranks[0]["loss"],
        "batch_size": ctx.sizes.ddp_batch_per_rank * ctx.world,
        "peak_memory_mib": max(r["peak_memory_mib"] for r in ranks),
        "memory_source": f"max over ranks of {ranks[0]['memory_source']}",
        "ranks": ranks,
    }  # fmt: skip
