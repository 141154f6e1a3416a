"""The project the bad-input cases type their commands in: a study file over a small
LVIS-format dataset in ``data/`` (a fresh copy of ``ltsearch data synth`` output), and the
helpers that break one thing in it. Shared by :mod:`test_bad_input` (refused in one line)
and :mod:`test_bad_data_runs` (odd or damaged data that only training meets)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

STUDY = """\
name: bad-input
dataset: {kind: lvis, train: data/lvis_synth_train.json, val: data/lvis_synth_val.json,
          images: data}
model: {backbone: tiny, masks: true}
training: {schedule: end_to_end, epochs: 1, lr: 0.02, batch_size: 2, warmup_iters: 2}
loss: {name: acsl, params: {xi: {grid: [0.3, 0.7]}}}
search: {sampler: grid, objectives: [bbox/AP:max], seeds: [0], max_failures: 2}
resources: {workers: 1, cpus_per_worker: 1, max_concurrent_trials: 1}
storage: results
"""
SYNTH = ("--classes", "4", "--train-images", "6", "--val-images", "3", "--image-size", "64")
RUN = ("run", "study.yaml", "--no-report")
CHECK = ("validate", "study.yaml", "--check-data")
RUN_CHECK = (*RUN, "--check-data")


def study(old: str, new: str) -> str:
    assert old in STUDY, old
    return STUDY.replace(old, new, 1)


def edit_json(name: str, fn: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    def apply(root: Path) -> None:
        path = root / "data" / name
        d = json.loads(path.read_text())
        fn(d)
        path.write_text(json.dumps(d))

    return apply


def write_bytes(rel: str, data: bytes) -> Callable[[Path], None]:
    def apply(root: Path) -> None:
        (root / rel).write_bytes(data)

    return apply


def to_jpeg(root: Path, keep: Callable[[bytes], bytes]) -> Path:
    """Turn train image 1 into a JPEG (its JSON record renamed), bytes cut by ``keep``."""
    from PIL import Image

    data = root / "data"
    png = data / "train" / "000000000001.png"
    jpg = png.with_suffix(".jpg")
    Image.open(png).convert("RGB").save(jpg, quality=90)
    png.unlink()
    jpg.write_bytes(keep(jpg.read_bytes()))
    edit_json(
        "lvis_synth_train.json",
        lambda d: d["images"][0].update(
            file_name="train/000000000001.jpg", coco_url="https://x.invalid/train/000000000001.jpg"
        ),
    )(root)
    return jpg
