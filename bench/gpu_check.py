"""GPU readiness check: four timed sections, recorded in one JSON file of figures.

- ``throughput``: CE training, ltmodels' ``train_one_epoch`` vs a plain torchvision Mask R-CNN
  loop (``bench_throughput.build_models`` and ``alternate_rounds``: median images/s);
- ``losses``: every registered loss at LVIS scale, C = 1203 (``bench_losses.bench_one``);
- ``cached``: a packed decoupled stage-2 trial: ``build_feature_cache`` of a fresh tiny detector
  on the synthetic dataset, then ``train_pack`` of two members (the ``--cached-loss`` and CE) and
  one ``evaluate_cached`` of both, as :mod:`ltmodels.trial.pack` runs them;
- ``ddp``: one stage-1 epoch through ``ltmodels.trial.stages.train_stage`` under DDP, spawned
  over every visible GPU, NCCL, with AMP (``train_stage``'s GradScaler on CUDA).

Each section records ``status`` (``ok``, or ``error`` with its traceback), seconds, images/s,
its memory peak (``torch.cuda.max_memory_allocated``; on the CPU VmHWM, else ``ru_maxrss``),
device and torch/CUDA/NCCL versions. A failed section does not stop the others; the exit status
is then 1. ``--out`` is rewritten atomically after each section. Without CUDA: exit 2, unless
``--dry-run`` (every section on the CPU at tiny sizes: gloo, DDP world size 2, AMP off).

    bash bench/gpu_check.sh [--out gpu_check.json]          # on a CUDA machine
    bash bench/gpu_check.sh --dry-run --out /tmp/check.json  # anywhere (~1 min on 2 cores)
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp
import torchvision
from gpu_sections import (
    DRY,
    FULL,
    Sizes,
    peak_memory,
    section_cached,
    section_ddp,
    section_losses,
    section_throughput,
    tiny_spec,
    versions,
)

from ltmodels.data.synthetic import SynthPaths, ensure_synthetic
from ltmodels.engine.atomic import write_atomic
from ltmodels.modeling.detector import ModelSpec

NO_CUDA = "no CUDA device; use --dry-run to check the script on CPU"


@dataclass
class Context:
    device: torch.device
    sizes: Sizes
    work: Path
    world: int
    cached_loss: str
    threads: int
    _paths: SynthPaths | None = field(default=None, repr=False)

    def dataset(self) -> SynthPaths:
        """The synthetic dataset, generated once per run under ``work``."""
        if self._paths is None:
            self._paths = ensure_synthetic(self.work / "datasets", self.sizes.synth)
        return self._paths

    def spec(self) -> ModelSpec:
        return tiny_spec(self.sizes.image_size)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    else:  # "5" resets the process's VmHWM (Linux >= 4.0); ru_maxrss cannot be reset
        with contextlib.suppress(OSError):
            Path("/proc/self/clear_refs").write_text("5")


SECTIONS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "throughput": section_throughput,
    "losses": section_losses,
    "cached": section_cached,
    "ddp": section_ddp,
}


def error_text(exc: BaseException) -> str:
    """One line: a spawned worker's own error line (its traceback is in the message)."""
    lines = [ln for ln in str(exc).splitlines() if ln.strip()]
    if isinstance(exc, mp.ProcessRaisedException) and lines:
        return f"rank {exc.error_index}: {lines[-1]}"
    return f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def run_section(name: str, ctx: Context) -> dict[str, Any]:
    reset_peak_memory(ctx.device)
    t0 = time.perf_counter()
    try:
        figures, status, error, trace = SECTIONS[name](ctx), "ok", None, None
    except Exception as exc:  # recorded; the other sections still run
        figures, status, error = {}, "error", error_text(exc)
        trace = traceback.format_exc().splitlines()[-40:]
    seconds = time.perf_counter() - t0
    base = {"status": status, "error": error, "seconds": seconds, **peak_memory(ctx.device)}
    return {**base, **figures, **versions(ctx.device), "traceback": trace}


def machine(device: torch.device) -> dict[str, Any]:
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return {
        **versions(device), "nproc": os.cpu_count(), "gpus": gpus,
        "torchvision": torchvision.__version__, "python": platform.python_version(),
        "host": platform.node(), "loadavg_start": os.getloadavg(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="gpu_check.json", help="the JSON of figures")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, gloo, 2 ranks")
    parser.add_argument("--sections", nargs="+", choices=list(SECTIONS), default=list(SECTIONS))
    parser.add_argument("--cached-loss", default="acsl", help="the cached stage-2 trial's loss")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per process")
    parser.add_argument("--work", default=None, help="kept work folder (default: a temp one)")
    args = parser.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print(NO_CUDA, file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    device = torch.device("cpu") if args.dry_run else torch.device("cuda", 0)
    out = Path(args.out).resolve()
    work = Path(args.work).resolve() if args.work else Path(tempfile.mkdtemp(prefix="gpu-check-"))
    world = 2 if args.dry_run else torch.cuda.device_count()
    sizes = DRY if args.dry_run else FULL
    ctx = Context(device, sizes, work, world, args.cached_loss, args.threads)
    report: dict[str, Any] = {
        "dry_run": args.dry_run, "complete": False, "ok": None, "machine": machine(device),
        "args": vars(args), "sizes": dataclasses.asdict(ctx.sizes),
        "sections": {n: {"status": "skipped"} for n in SECTIONS},
    }  # fmt: skip

    def save() -> None:
        write_atomic(out, lambda fh: fh.write(json.dumps(report, indent=1).encode()))

    try:
        for name in (n for n in SECTIONS if n in args.sections):
            print(f"gpu_check: {name} ...", file=sys.stderr, flush=True)
            result = report["sections"][name] = run_section(name, ctx)
            shown = result["error"] or f"{result['images_per_s']:.2f} images/s"
            print(f"gpu_check: {name} {result['status']} in {result['seconds']:.1f} s: {shown}",
                  file=sys.stderr, flush=True)  # fmt: skip
            save()
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    failed = [n for n, r in report["sections"].items() if r["status"] == "error"]
    report.update(complete=True, ok=not failed, loadavg_end=os.getloadavg())
    save()
    print(f"gpu_check: wrote {out}; failed sections: {', '.join(failed) or 'none'}",
          file=sys.stderr, flush=True)  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
