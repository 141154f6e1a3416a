"""Trial cost and stage-1 quality on the embedded synthetic dataset (CPU).

Two measurements, each a subcommand:

``stage1``: train the quickstart's stage 1 (tiny Mask R-CNN, softmax CE) end to end and
evaluate box AP (AP, APr, APc, APf) after every epoch: how many epochs stage 1 needs before
frequent classes clearly beat rare ones. The learning-rate schedule is that of the whole run
(``--epochs``), so intermediate epochs run at the full learning rate until 2/3 of the run.

``compare``: a decoupled trial of one loss (stage 2 = the box predictor trained on the
RoI-feature cache) against an end-to-end trial of the same loss, both evaluated the same
way (bbox metrics on the whole validation set). The decoupled trial is run twice: the first
run trains stage 1 and builds the feature cache (one-off costs, reported separately), the
second (another seed) reuses both; its ``train + eval`` time is compared with the
end-to-end trial's ``train + eval``. Stage 1 and the cache persist under ``--work``, so a
rerun skips them (delete the folder to measure them again).

    .venv/bin/python bench/bench_trial.py stage1 --epochs 8
    .venv/bin/python bench/bench_trial.py compare --loss acsl --epochs 6 [--stage1-epochs 2]

``--stage1-epochs`` sets stage 1's length apart from the end-to-end trial's (``--epochs``):
the cached trial's cost does not depend on it, only its accuracy does.

Defaults follow ``studies/quickstart.yaml`` (stage 1: 6 epochs, lr 0.02, batch 4, warm-up
100; stage 2: 8 epochs, lr 0.01, batch 8, warm-up 20) on ``SynthConfig()`` (40 classes,
800 train / 200 val images, 128 px).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

from ltmodels.data.synthetic import SynthConfig, ensure_synthetic
from ltmodels.trial.config import DataConfig, StageConfig, TrialConfig
from ltmodels.trial.run import run_trial

BOX_KEYS = ("bbox/AP", "bbox/APr", "bbox/APc", "bbox/APf")


def machine() -> dict[str, Any]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "loadavg": os.getloadavg(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def dataset(args: argparse.Namespace) -> DataConfig:
    synth = SynthConfig(
        num_classes=args.classes,
        train_images=args.train_images,
        val_images=args.val_images,
        image_size=args.image_size,
    )
    paths = ensure_synthetic(Path(args.work) / "datasets", synth)
    return DataConfig(str(paths.train_json), str(paths.val_json), str(paths.root), str(paths.root))


def model_overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {"backbone": "tiny", "masks": not args.no_masks}


def stage1_config(args: argparse.Namespace, epochs: int, loss: str = "ce") -> StageConfig:
    return StageConfig(
        loss=loss, epochs=epochs, lr=0.02, batch_size=4, warmup_iters=100, seed=args.seed
    )


def cmd_stage1(args: argparse.Namespace) -> dict[str, Any]:
    """End-to-end CE training with a bbox evaluation of every epoch's checkpoint."""
    from ltmodels.engine.checkpoint import load_checkpoint
    from ltmodels.trial.schedules import build_model, device_of, full_evaluation, model_spec
    from ltmodels.trial.stages import datasets

    data = dataset(args)
    cfg = TrialConfig(
        data=data,
        train=stage1_config(args, args.epochs),
        model=model_overrides(args),
        eval_masks=False,
        seed=args.seed,
        cache_dir=str(Path(args.work) / "cache"),
    )
    spec = model_spec(dict(cfg.model))
    device = device_of(cfg.device)
    train_set, val_set = datasets(cfg.data, masks=spec.masks)
    evaluator = build_model(spec, cfg.train, train_set, device)
    rows: list[dict[str, Any]] = []

    def on_epoch(epoch: int, stats: dict[str, float], ckpt_dir: Path) -> None:
        state = torch.get_rng_state()  # evaluation must not disturb training's RNG
        load_checkpoint(ckpt_dir / "checkpoint.pt", model=evaluator, restore_rng=False)
        t0 = time.perf_counter()
        metrics, _ = full_evaluation(evaluator, val_set, cfg, spec, device)
        torch.set_rng_state(state)
        row = {
            "epoch": epoch + 1,
            "loss": stats["loss"],
            "train_s": stats["seconds"],
            "images_per_s": stats["images_per_s"],
            "eval_s": time.perf_counter() - t0,
            **{k: metrics[k] for k in BOX_KEYS},
        }
        rows.append(row)
        print(json.dumps(row), flush=True)

    workdir = Path(args.work) / f"stage1-curve-e{args.epochs}-s{args.seed}-{time.time():.0f}"
    t0 = time.perf_counter()
    run_trial(cfg, workdir=workdir, on_epoch=on_epoch)
    return {"epochs": rows, "total_s": time.perf_counter() - t0}


def cmd_compare(args: argparse.Namespace) -> dict[str, Any]:
    data = dataset(args)
    cache_dir = str(Path(args.work) / "cache")
    stage2 = StageConfig(
        loss=args.loss,
        epochs=args.stage2_epochs,
        lr=0.01,
        batch_size=8,
        warmup_iters=20,
        finetune=("box_predictor",),
        use_feature_cache=True,
    )
    out: dict[str, Any] = {}
    for seed in (0, 1):
        cfg = TrialConfig(
            data=data,
            train=stage2,
            stage1=stage1_config(args, args.stage1_epochs or args.epochs),
            schedule="decoupled",
            model=model_overrides(args),
            eval_masks=False,
            seed=seed,
            cache_dir=cache_dir,
        )
        t0 = time.perf_counter()
        res = run_trial(cfg, workdir=Path(args.work) / f"cached-{args.loss}-s{seed}")
        wall = time.perf_counter() - t0
        out[f"cached_seed{seed}"] = {
            "wall_s": wall,
            "timings": res.timings,
            **{k: res.metrics[k] for k in BOX_KEYS},
        }
        print(json.dumps(out[f"cached_seed{seed}"]), flush=True)
    e2e = TrialConfig(
        data=data,
        train=stage1_config(args, args.epochs, loss=args.loss),
        model=model_overrides(args),
        eval_masks=False,
        seed=0,
        cache_dir=cache_dir,
    )
    t0 = time.perf_counter()
    res = run_trial(e2e, workdir=Path(args.work) / f"e2e-{args.loss}-{time.time():.0f}")
    out["end_to_end"] = {
        "wall_s": time.perf_counter() - t0,
        "timings": res.timings,
        **{k: res.metrics[k] for k in BOX_KEYS},
    }
    print(json.dumps(out["end_to_end"]), flush=True)
    cached = out["cached_seed1"]["timings"]
    cached_s = cached["train"] + cached["eval"]
    e2e_s = res.timings["train"] + res.timings["eval"]
    out["ratio_e2e_over_cached"] = e2e_s / cached_s
    out["cached_train_eval_s"] = cached_s
    out["e2e_train_eval_s"] = e2e_s
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=("stage1", "compare"))
    parser.add_argument("--epochs", type=int, default=6, help="stage-1 / end-to-end epochs")
    parser.add_argument(
        "--stage1-epochs", type=int, default=None, help="compare: stage 1 (default --epochs)"
    )
    parser.add_argument("--stage2-epochs", type=int, default=8)
    parser.add_argument("--loss", default="acsl", help="compare: the trial's loss")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--classes", type=int, default=SynthConfig.num_classes)
    parser.add_argument("--train-images", type=int, default=SynthConfig.train_images)
    parser.add_argument("--val-images", type=int, default=SynthConfig.val_images)
    parser.add_argument("--image-size", type=int, default=SynthConfig.image_size)
    parser.add_argument("--no-masks", action="store_true", help="Faster R-CNN (no mask head)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work", default="/tmp/ltsearch-bench-trial")
    parser.add_argument("--out", default=None, help="also write the result JSON here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    info = {"machine": machine(), "args": vars(args)}
    print(json.dumps(info), flush=True)
    result = cmd_stage1(args) if args.command == "stage1" else cmd_compare(args)
    result = {**info, **result, "loadavg_end": os.getloadavg()}
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
