"""The embedded synthetic long-tail dataset, written in LVIS v1 format.

Every class is a (shape, colour, texture) combination drawn with Pillow on a mildly noisy
background and named after an LVIS v1 class of the same frequency group. Class sizes follow
LVIS v1: the shares of rare / common / frequent classes are LVIS's (28 / 38 / 34 %), rare and
common classes keep the training-image count of the LVIS class whose name they carry (1-10 and
11-100: the group thresholds are absolute), and frequent classes are log-compressed from LVIS's
101-1977 images into 110 .. train_images / 4. Each category's ``frequency`` is recomputed from
its actual number of training images, so it is always consistent with LVIS's thresholds.

Defaults (40 classes, 800 train / 200 val images of 128 px): 14 frequent classes need
> 100 training images each. Images hold 2-6 classes (at most 3.6 on average); when the planned
counts exceed that, frequent classes shrink toward 110 and common ones toward 11 before any
class may leave its group, so all three groups hold from about 500 training images (rare
classes fixed, 15 common at >= 11, 14 frequent at >= 110). 800 gives frequent classes
120-190 images (measured: 3.6 classes, 5.0 instances per image). 128 px keeps a tiny
Mask R-CNN on 2 CPU cores at minutes per epoch. Smaller configs stay valid, but frequent
classes then fall below 101 images and are labelled common (a config with fewer than 101
training images has no frequent class at all). Generation at the default size takes about
6 s on one core.

Look-alikes: ``num_classes // 6`` frequent classes each have a rare or common partner that
differs in one subtle attribute (hue 12 degrees apart, finer texture, or a shape detail such
as circle vs octagon), recorded both ways as the category fields ``lookalike_of`` (the other
category id, else null) and ``differs_in``. Segmentation is amodal with mild occlusion (see
``_synth_render``). Images of a class marked not exhaustive hold instances of that class that
are drawn but not annotated, as in LVIS.

Instance sizes are drawn relative to the image (side 8-14 / 14-28 / 28-50 % of it). lvis-api's
area ranges are absolute (32^2, 96^2 px^2), so at 128 px APs covers most instances, APm the
largest ones and APl has none.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ltmodels.data._synth_plan import ClassPlan, plan_classes, plan_split
from ltmodels.data._synth_records import categories, write_split
from ltmodels.errors import ConfigError

GENERATOR_VERSION = 1
TRAIN_JSON = "lvis_synth_train.json"
VAL_JSON = "lvis_synth_val.json"
MANIFEST = "manifest.json"
_OWN_ENTRIES = {"train", "val", TRAIN_JSON, VAL_JSON, MANIFEST}


@dataclass(frozen=True)
class SynthConfig:
    """Size and seed of the synthetic dataset (defaults: see the module docstring)."""

    num_classes: int = 40
    train_images: int = 800
    val_images: int = 200
    image_size: int = 128
    seed: int = 0
    min_val_images: int = 2  # every class appears in at least this many val images
    not_exhaustive_rate: float = 0.05

    def __post_init__(self) -> None:
        checks = [
            (3 <= self.num_classes <= 200, "num_classes", "an integer in [3, 200]"),
            (self.image_size >= 64, "image_size", "at least 64 (px); shapes need room"),
            (self.image_size <= 1024, "image_size", "at most 1024 (px)"),
            (self.train_images >= 1, "train_images", "at least 1"),
            (self.val_images >= 1, "val_images", "at least 1"),
            (self.seed >= 0, "seed", "a non-negative integer"),
            (1 <= self.min_val_images <= 10, "min_val_images", "in [1, 10]"),
            (0.0 <= self.not_exhaustive_rate <= 0.5, "not_exhaustive_rate", "in [0, 0.5]"),
        ]
        for ok, key, need in checks:
            if not ok:
                raise ConfigError(
                    f"synthetic dataset: {key}={getattr(self, key)!r} is invalid; use {need}"
                )
        for key in ("train_images", "val_images"):
            if 2 * getattr(self, key) < self.num_classes:
                raise ConfigError(
                    f"synthetic dataset: {key}={getattr(self, key)} is too few for "
                    f"num_classes={self.num_classes}; use at least {-(-self.num_classes // 2)}"
                )

    def digest(self) -> str:
        """A short hash of the config and the generator version (the cache directory name)."""
        blob = json.dumps({"v": GENERATOR_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class SynthPaths:
    """Where a written synthetic dataset lives; image paths follow LVIS v1's coco_url rule."""

    root: Path
    train_json: Path
    val_json: Path

    @classmethod
    def at(cls, root: str | Path) -> SynthPaths:
        root = Path(root)
        return cls(root, root / TRAIN_JSON, root / VAL_JSON)

    def summary(self) -> str:
        """Classes per group, images and instances per split and group, file locations."""
        train = json.loads(self.train_json.read_text())
        val = json.loads(self.val_json.read_text())
        cats = train["categories"]
        freq = {c["id"]: c["frequency"] for c in cats}
        n = Counter(freq.values())
        pairs = sum(c["lookalike_of"] is not None for c in cats) // 2
        lines = [
            f"synthetic long-tail dataset (LVIS v1 format) in {self.root}",
            f"  classes: {len(cats)} (rare {n['r']}, common {n['c']}, frequent {n['f']}), "
            f"{pairs} look-alike pairs",
        ]
        for split, data, path in (("train", train, self.train_json), ("val", val, self.val_json)):
            g = Counter(freq[a["category_id"]] for a in data["annotations"])
            lines.append(
                f"  {split}: {len(data['images'])} images, {len(data['annotations'])} instances "
                f"(rare {g['r']}, common {g['c']}, frequent {g['f']}) -> {path}"
            )
        spans = []
        for grp, label in (("r", "rare"), ("c", "common"), ("f", "frequent")):
            counts = [c["image_count"] for c in cats if c["frequency"] == grp]
            if counts:
                spans.append(f"{label} {min(counts)}-{max(counts)}")
        lines.append(f"  train images per class: {', '.join(spans)}")
        lines.append(f"  images: {self.root / 'train'}/*.png, {self.root / 'val'}/*.png")
        return "\n".join(lines)


def class_table(cfg: SynthConfig | None = None) -> list[dict]:
    """The planned classes: id, name, LVIS group, look, look-alike and planned image counts."""
    cfg = cfg or SynthConfig()
    plans = _plan_classes(cfg)
    return [
        {
            "id": p.index + 1,
            "name": p.name,
            "group": p.group,
            **asdict(p.look),
            "lookalike_of": None if p.lookalike_of is None else p.lookalike_of + 1,
            "differs_in": p.differs_in,
            "train_images": p.train_target,
            "val_images": p.val_target,
        }
        for p in plans
    ]


def _plan_classes(cfg: SynthConfig) -> list[ClassPlan]:
    rng = np.random.default_rng([cfg.seed, 0])
    return plan_classes(cfg.num_classes, cfg.train_images, cfg.val_images, cfg.min_val_images, rng)


def _prepare(root: Path) -> None:
    if root.exists():
        entries = {e.name for e in root.iterdir()}
        if not entries <= _OWN_ENTRIES:
            raise ConfigError(
                f"synthetic dataset: output directory {root} holds other files "
                f"({sorted(entries - _OWN_ENTRIES)[0]!r}, ...); choose an empty or new directory"
            )
        for name in entries:
            path = root / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    root.mkdir(parents=True, exist_ok=True)


def write_synthetic(out_dir: str | Path, cfg: SynthConfig | None = None) -> SynthPaths:
    """Write the dataset into ``out_dir`` (created; a previous synthetic dataset is replaced).

    Byte-identical output for the same config. Raises:
        ConfigError: ``out_dir`` holds files that are not a synthetic dataset.
    """
    cfg = cfg or SynthConfig()
    root = Path(out_dir)
    _prepare(root)
    plans = _plan_classes(cfg)
    looks = [p.look for p in plans]
    mates = [p.lookalike_of for p in plans]
    data: dict[str, tuple[list[dict], list[dict]]] = {}
    last_ids = (0, 0)
    for split_no, split in ((1, "train"), (2, "val")):
        n = cfg.train_images if split == "train" else cfg.val_images
        targets = [p.train_target if split == "train" else p.val_target for p in plans]
        rng = np.random.default_rng([cfg.seed, split_no])
        layout = plan_split(targets, n, mates, cfg.not_exhaustive_rate, rng)
        images, anns = write_split(
            root,
            split,
            layout,
            looks,
            size=cfg.image_size,
            seeds=(cfg.seed, 3, split_no),
            first_ids=last_ids,
        )
        data[split] = images, anns
        last_ids = (images[-1]["id"], anns[-1]["id"] if anns else last_ids[1])
    _write_json(root, cfg, data, categories(plans, data["train"][1]))
    return SynthPaths.at(root)


def _write_json(
    root: Path, cfg: SynthConfig, data: dict[str, tuple[list[dict], list[dict]]], cats: list
) -> None:
    """The two LVIS JSON files (compact, key order fixed), then the manifest last."""
    info = {
        "description": "ltsearch synthetic long-tail dataset",
        "version": GENERATOR_VERSION,
        "config": asdict(cfg),
    }
    digests = {}
    for split, name in (("train", TRAIN_JSON), ("val", VAL_JSON)):
        images, anns = data[split]
        doc = {
            "info": info,
            "licenses": [],
            "images": images,
            "annotations": anns,
            "categories": cats,
        }
        blob = json.dumps(doc, separators=(",", ":")).encode()
        (root / name).write_bytes(blob)
        digests[name] = hashlib.sha256(blob).hexdigest()
    manifest = {
        "version": GENERATOR_VERSION,
        "config": asdict(cfg),
        "sha256": digests,
        "images": {"train": cfg.train_images, "val": cfg.val_images},
    }
    (root / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))


def is_complete(root: str | Path, cfg: SynthConfig) -> bool:
    """True when ``root`` holds a finished dataset for ``cfg`` (manifest, checksums, images)."""
    root = Path(root)
    try:
        manifest = json.loads((root / MANIFEST).read_text())
        if manifest["version"] != GENERATOR_VERSION or manifest["config"] != asdict(cfg):
            return False
        for name, digest in manifest["sha256"].items():
            if hashlib.sha256((root / name).read_bytes()).hexdigest() != digest:
                return False
        return all(
            sum(1 for _ in (root / split).glob("*.png")) == n
            for split, n in manifest["images"].items()
        )
    except (OSError, ValueError, KeyError, TypeError):
        return False


def default_cache_dir() -> Path:
    """``$LTSEARCH_CACHE`` if set, else ``~/.cache/ltsearch``."""
    env = os.environ.get("LTSEARCH_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "ltsearch"


def ensure_synthetic(
    cache_dir: str | Path | None = None, cfg: SynthConfig | None = None
) -> SynthPaths:
    """The dataset for ``cfg`` under ``<cache>/synthetic/<cfg.digest()>/``, generated once.

    Generation writes into a temporary sibling directory and renames it into place, so
    concurrent callers (trials, test workers) never see a partial dataset; a broken or stale
    directory (no manifest, bad checksum) is regenerated.
    """
    cfg = cfg or SynthConfig()
    final = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    final = final / "synthetic" / cfg.digest()
    if is_complete(final, cfg):
        return SynthPaths.at(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    try:
        write_synthetic(tmp, cfg)
        if final.exists() and not is_complete(final, cfg):
            shutil.rmtree(final)
        try:
            os.rename(tmp, final)
        except OSError:
            if not is_complete(final, cfg):  # another process won the race, or a real error
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return SynthPaths.at(final)


__all__ = [
    "SynthConfig",
    "SynthPaths",
    "class_table",
    "default_cache_dir",
    "ensure_synthetic",
    "is_complete",
    "write_synthetic",
]
