"""Mask inference on CPU: each detection's own class channel against the predictor's all.

At 300 detections per image (LVIS's limit), Mask R-CNN's evaluation on CPU is mostly the
mask branch. Its last layer is a 1x1 convolution to C + 1 class channels, of which inference
reads one per detection: ``ltmodels.modeling.detections.own_class_mask_logits`` computes
that one alone. This script times ``ltmodels.engine.evaluate.predict`` with masks on a
trained stage-1 model both ways, in alternating rounds (so that load from other processes
hits both alike), checks that every detection's RLE is the same both ways and scores both.

It reads what ``make quickstart`` left: the stage-1 model and the dataset under
``STORAGE/_cache`` (the newest stage-1 model there).

    .venv/bin/python bench/bench_mask_inference.py --storage runs [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from ltmodels.data import LVISDetection
from ltmodels.engine.checkpoint import load_checkpoint
from ltmodels.engine.evaluate import predict, score_detections
from ltmodels.modeling import detections, roi_heads
from ltmodels.trial.config import StageConfig
from ltmodels.trial.schedules import build_model, model_spec
from ltmodels.trial.stages import eval_loader

PATHS = ("own", "all")


def timed_predict(model: torch.nn.Module, val: LVISDetection, path: str) -> tuple[float, list]:
    """Seconds of ``predict`` with masks over ``val`` and its detections, by ``path``:
    ``own`` (the fast path) or ``all`` (every class channel, as torchvision computes it)."""
    own = detections.own_class_mask_logits
    if path == "all":
        roi_heads.own_class_mask_logits = lambda *args: None  # type: ignore[assignment]
    try:
        t0 = time.perf_counter()
        dets = predict(
            model, eval_loader(val), device="cpu", label_to_cat_id=val.label_to_cat_id, masks=True
        )
        return time.perf_counter() - t0, dets
    finally:
        roi_heads.own_class_mask_logits = own


def compare_paths(
    model: torch.nn.Module, val: LVISDetection, val_json: str, rounds: int
) -> dict[str, Any]:
    """Per path its seconds per round; whether every RLE and every segm metric is equal."""
    seconds: dict[str, list[float]] = {p: [] for p in PATHS}
    dets: dict[str, list] = {}
    for r in range(rounds):
        for path in PATHS if r % 2 == 0 else PATHS[::-1]:
            s, dets[path] = timed_predict(model, val, path)
            seconds[path].append(s)
    rles = [[d["segmentation"]["counts"] for d in dets[p]] for p in PATHS]
    metrics = [score_detections(dets[p], val_json, iou_types=("segm",))[0] for p in PATHS]
    return {
        "seconds": seconds,
        "detections": len(dets["own"]),
        "identical_rles": rles[0] == rles[1],
        "equal_segm_metrics": metrics[0] == metrics[1],
        "segm/AP": metrics[0]["segm/AP"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", type=Path, default=Path("runs"))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cache = args.storage.resolve() / "_cache"
    weights = max((cache / "stage1").glob("*/model.pt"), key=lambda p: p.stat().st_mtime)
    meta = json.loads((weights.parent / "stage1.json").read_text())
    [data] = (cache / "datasets" / "synthetic").glob("*/lvis_synth_val.json")
    root = data.parent
    train = LVISDetection(root / "lvis_synth_train.json", root, with_masks=False)
    val = LVISDetection(data, root, with_masks=True)
    spec = model_spec({**meta["model"], "masks": True})
    model = build_model(spec, StageConfig(loss=meta["stage1"]["loss"]), train, torch.device("cpu"))
    load_checkpoint(weights, model=model, restore_rng=False)
    out = compare_paths(model, val, str(data), args.rounds)
    mean = {p: sum(s) / len(s) for p, s in out["seconds"].items()}
    print(json.dumps({"weights": str(weights), "images": len(val), **out}, default=str))
    print(
        f"{len(val)} images, {out['detections']} detections: own class {mean['own']:.1f} s, "
        f"all classes {mean['all']:.1f} s ({mean['all'] / mean['own']:.2f}x); RLEs identical: "
        f"{out['identical_rles']}, segm metrics equal: {out['equal_segm_metrics']}"
    )


if __name__ == "__main__":
    main()
