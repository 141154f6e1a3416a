"""LVIS v1 records for the synthetic dataset: images, annotations, categories."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from ltmodels.data._synth_plan import ClassPlan, ImagePlan
from ltmodels.data._synth_render import Look, polygon_area, render

# Not fetchable (.invalid is reserved); its last two components are the image's relative path.
URL_PREFIX = "https://ltsearch.invalid/synthetic"


def annotate(
    plan: ImagePlan, looks: list[Look], size: int, rng: np.random.Generator
) -> tuple[np.ndarray, list[dict]]:
    """Render one image; returns pixels and its annotations (without ids)."""
    labels = [k for k, n in sorted(plan.counts.items()) for _ in range(n)]
    labels = [labels[i] for i in rng.permutation(len(labels))]
    pixels, placed = render(labels, looks, size, rng)
    skip = dict(plan.unannotated)
    anns = []
    for inst in placed:
        if skip.get(inst.label, 0) > 0:
            skip[inst.label] -= 1
            continue
        seg = inst.segmentation()
        xs, ys = seg[0::2], seg[1::2]
        x0, y0 = min(xs), min(ys)
        bbox = [x0, y0, round(max(xs) - x0, 2), round(max(ys) - y0, 2)]
        area = round(polygon_area(seg), 2)
        anns.append(
            {"category_id": inst.label + 1, "segmentation": [seg], "bbox": bbox, "area": area}
        )
    return pixels, anns


def write_split(
    root: Path,
    split: str,
    plans: list[ImagePlan],
    looks: list[Look],
    *,
    size: int,
    seeds: tuple[int, ...],
    first_ids: tuple[int, int],
) -> tuple[list[dict], list[dict]]:
    """Render and save the PNGs of one split; returns its LVIS image and annotation records.

    Image ``j`` is drawn from its own generator seeded ``(*seeds, j)``; ids start after
    ``first_ids`` = (last image id, last annotation id) of the previous split.
    """
    (root / split).mkdir()
    images: list[dict] = []
    annotations: list[dict] = []
    ann_id = first_ids[1]
    for j, plan in enumerate(plans):
        image_id = first_ids[0] + j + 1
        pixels, anns = annotate(plan, looks, size, np.random.default_rng([*seeds, j]))
        rel = f"{split}/{image_id:012d}.png"
        Image.fromarray(pixels).save(root / rel, compress_level=1)
        images.append(
            {
                "id": image_id,
                "width": size,
                "height": size,
                "file_name": rel,
                "coco_url": f"{URL_PREFIX}/{rel}",
                "neg_category_ids": [k + 1 for k in plan.neg],
                "not_exhaustive_category_ids": [k + 1 for k in sorted(plan.unannotated)],
            }
        )
        for ann in anns:
            ann_id += 1
            annotations.append({"id": ann_id, "image_id": image_id, **ann})
    return images, annotations


def frequency(image_count: int) -> str:
    """LVIS's group for a class with ``image_count`` training images."""
    return "r" if image_count <= 10 else "c" if image_count <= 100 else "f"


def categories(plans: list[ClassPlan], train_anns: list[dict]) -> list[dict]:
    """LVIS category records; counts and ``frequency`` come from the training annotations."""
    images: dict[int, set[int]] = {p.index + 1: set() for p in plans}
    instances: Counter[int] = Counter()
    for a in train_anns:
        images[a["category_id"]].add(a["image_id"])
        instances[a["category_id"]] += 1
    cats = []
    for p in plans:
        cid, look = p.index + 1, p.look
        article = "an" if look.colour[0] in "aeiou" else "a"
        text = f"{article} {look.colour} {look.shape} with {look.texture} texture"
        mate = None if p.lookalike_of is None else p.lookalike_of + 1
        if p.lookalike_of is not None:
            text += f"; look-alike of {plans[p.lookalike_of].name} (differs in {p.differs_in})"
        cats.append(
            {
                "id": cid,
                "name": p.name,
                "synset": p.synset,
                "synonyms": [p.name],
                "def": text,
                "frequency": frequency(len(images[cid])),
                "image_count": len(images[cid]),
                "instance_count": instances[cid],
                "shape": look.shape,
                "colour": look.colour,
                "texture": look.texture,
                "lookalike_of": mate,
                "differs_in": p.differs_in,
                "lvis_id": p.lvis_id,
                "lvis_group": p.group,
            }
        )
    return cats
