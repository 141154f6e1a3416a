"""Planning for the synthetic long-tail dataset: classes, look-alikes, who appears where.

Nothing here draws; everything is decided by one seeded generator so that the same config
always gives the same plan. Counts are *exact*: a class planned into ``t`` training images
appears in exactly ``t`` of them (with at least one annotated instance in each).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from importlib import resources

import numpy as np

from ltmodels.data._synth_render import (
    BASE_COLOURS,
    BASE_SHAPES,
    BASE_TEXTURES,
    COLOUR_VARIANT,
    SHAPE_VARIANT,
    TEXTURE_VARIANT,
    Look,
)

# LVIS v1 shares of rare / common / frequent classes (337 / 461 / 405 of 1203).
GROUP_SHARES = {"r": 0.28, "c": 0.38, "f": 0.34}
FREQUENT_MIN_TARGET = 110  # a margin above LVIS's 100-image threshold
CLASSES_PER_IMAGE = (2, 6)  # per-image capacity is drawn uniformly from this range
FILL = 0.9  # planned image-class pairs never exceed this share of the total capacity


@dataclass(frozen=True)
class ClassPlan:
    """One synthetic class: an LVIS name, its visual look and planned image counts."""

    index: int
    name: str
    synset: str
    lvis_id: int
    lvis_train_image_count: int
    group: str  # the LVIS group its name was drawn from; the JSON frequency is recomputed
    look: Look
    lookalike_of: int | None
    differs_in: str | None
    train_target: int
    val_target: int


@dataclass
class ImagePlan:
    """Which classes one image holds: instances per class, how many are left unannotated."""

    counts: dict[int, int]
    unannotated: dict[int, int] = field(default_factory=dict)
    neg: list[int] = field(default_factory=list)


def lvis_categories() -> list[dict]:
    """The shipped LVIS v1 category table (id, name, synset, frequency, train_image_count)."""
    text = resources.files("ltmodels.data").joinpath("lvis_v1_categories.json").read_text()
    return json.loads(text)["categories"]


def group_sizes(num_classes: int) -> dict[str, int]:
    """Classes per LVIS group for ``num_classes`` (each group gets at least one)."""
    n_r = max(1, round(GROUP_SHARES["r"] * num_classes))
    n_f = max(1, round(GROUP_SHARES["f"] * num_classes))
    return {"r": n_r, "c": num_classes - n_r - n_f, "f": n_f}


def _train_targets(groups: list[str], counts: list[int], n_train: int) -> list[int]:
    """Planned training-image counts: rare and common keep their LVIS counts (the group
    thresholds are absolute); frequent ones are log-compressed into [110, 25% of the images]."""
    f_hi = max(FREQUENT_MIN_TARGET, n_train // 4)
    span = math.log(max(c for g, c in zip(groups, counts, strict=True) if g == "f") / 101)
    out = []
    for g, c in zip(groups, counts, strict=True):
        if g == "f":
            u = math.log(c / 101) / span if span > 0 else 0.0
            c = round(FREQUENT_MIN_TARGET + u * (f_hi - FREQUENT_MIN_TARGET))
        out.append(min(c, n_train))
    return out


def fit_targets(targets: list[int], soft: list[int], hard: list[int], budget: float) -> list[int]:
    """Shrink targets until their sum fits ``budget``, keeping groups where possible.

    Amounts above the soft floors are cut first (proportionally), and only if that is not
    enough the amounts above the hard floors. With soft floors at the group minimum (11 for
    common, 110 for frequent) and rare classes fixed, a fit that needs only the first step
    leaves every class in its LVIS group.
    """
    out = list(targets)
    for floors in (soft, hard):
        floors = [min(f, t) for f, t in zip(floors, out, strict=True)]
        need = sum(out) - budget
        excess = sum(t - f for t, f in zip(out, floors, strict=True))
        if need <= 0 or excess <= 0:
            continue
        keep = max(0.0, 1.0 - need / excess)
        out = [f + int((t - f) * keep) for t, f in zip(out, floors, strict=True)]
    return out


def _looks(n: int, n_pairs: int, rng: np.random.Generator) -> tuple[list[Look], list[str]]:
    """``n - n_pairs`` distinct base looks, then ``n_pairs`` look-alikes of the first ones."""
    combos = [(s, c, t) for s in BASE_SHAPES for c in BASE_COLOURS for t in BASE_TEXTURES]
    picks = rng.permutation(len(combos))[: n - n_pairs]
    looks = [Look(*combos[i]) for i in picks]
    kinds = []
    for i in range(n_pairs):
        base = looks[i]
        kind = ("colour", "texture", "shape")[i % 3]
        if kind == "colour":
            looks.append(Look(base.shape, COLOUR_VARIANT[base.colour], base.texture))
        elif kind == "texture":
            looks.append(Look(base.shape, base.colour, TEXTURE_VARIANT[base.texture]))
        else:
            looks.append(Look(SHAPE_VARIANT[base.shape], base.colour, base.texture))
        kinds.append(kind)
    return looks, kinds


def _choose_lvis(num_classes: int, rng: np.random.Generator) -> tuple[list[dict], int]:
    """LVIS categories for the classes, ordered: the ``n_pairs`` paired frequent ones first,
    then the other frequent, rare and common ones, then the partners of the paired ones in
    pair order (rare and common alternating while both last). Returns (ordered, n_pairs)."""
    sizes = group_sizes(num_classes)
    by_group: dict[str, list[dict]] = {"r": [], "c": [], "f": []}
    for cat in lvis_categories():
        by_group[cat["frequency"]].append(cat)
    chosen = {
        g: [by_group[g][i] for i in rng.permutation(len(by_group[g]))[:k]]
        for g, k in sizes.items()
    }
    n_pairs = min(sizes["f"], sizes["r"] + sizes["c"], max(1, num_classes // 6))
    partners = []
    r_left, c_left = list(chosen["r"]), list(chosen["c"])
    for i in range(n_pairs):
        take_r = (i % 2 == 0 and r_left) or not c_left
        partners.append(r_left.pop(0) if take_r else c_left.pop(0))
    return chosen["f"] + r_left + c_left + partners, n_pairs


def _targets(
    ordered: list[dict], n_train: int, n_val: int, min_val: int
) -> tuple[list[int], list[int]]:
    """Planned train and val image counts per class, fitted to the splits' capacities."""
    groups = [c["frequency"] for c in ordered]
    train = _train_targets(groups, [c["train_image_count"] for c in ordered], n_train)
    soft = [
        t if g == "r" else 11 if g == "c" else FREQUENT_MIN_TARGET
        for g, t in zip(groups, train, strict=True)
    ]
    hard = [t if g == "r" else 1 for g, t in zip(groups, train, strict=True)]
    train = fit_targets(train, soft, hard, FILL * n_train * sum(CLASSES_PER_IMAGE) / 2)
    val = [min(n_val, max(min_val, round(t * n_val / n_train))) for t in train]
    floor = [min(min_val, n_val)] * len(val)
    val = fit_targets(val, floor, floor, FILL * n_val * sum(CLASSES_PER_IMAGE) / 2)
    return train, val


def plan_classes(
    num_classes: int, n_train: int, n_val: int, min_val: int, rng: np.random.Generator
) -> list[ClassPlan]:
    """Draw LVIS names by group, give each class a look, pair look-alikes, set targets.

    Look-alike pairs: ``num_classes // 6`` frequent classes (at least one) each get a rare or
    common partner that differs in exactly one attribute (colour hue, texture scale or shape
    detail). Classes are sorted by name and numbered 1..C, as in LVIS.
    """
    ordered, n_pairs = _choose_lvis(num_classes, rng)
    looks, kinds = _looks(num_classes, n_pairs, rng)
    train, val = _targets(ordered, n_train, n_val, min_val)
    rank = sorted(range(num_classes), key=lambda i: ordered[i]["name"])
    new_index = {old: new for new, old in enumerate(rank)}
    mate: dict[int, tuple[int, str]] = {}
    for i in range(n_pairs):
        a, b = new_index[i], new_index[num_classes - n_pairs + i]
        mate[a], mate[b] = (b, kinds[i]), (a, kinds[i])
    plans = []
    for new, old in enumerate(rank):
        cat = ordered[old]
        other, kind = mate.get(new, (None, None))
        plans.append(
            ClassPlan(
                index=new,
                name=cat["name"],
                synset=cat["synset"],
                lvis_id=cat["id"],
                lvis_train_image_count=cat["train_image_count"],
                group=cat["frequency"],
                look=looks[old],
                lookalike_of=other,
                differs_in=kind,
                train_target=train[old],
                val_target=val[old],
            )
        )
    return plans


def allocate(targets: list[int], n_images: int, rng: np.random.Generator) -> list[list[int]]:
    """Assign each class to exactly ``targets[k]`` distinct images.

    Every image draws a capacity from ``CLASSES_PER_IMAGE``; classes, largest target first,
    go to the images with the lowest fill ratio (random tie-break), so all targets are met
    whenever they fit the capacity. An image left empty gets one class of the largest target.
    """
    cap = rng.integers(CLASSES_PER_IMAGE[0], CLASSES_PER_IMAGE[1] + 1, n_images).astype(float)
    load = np.zeros(n_images)
    members: list[list[int]] = [[] for _ in range(n_images)]
    for k in sorted(range(len(targets)), key=lambda k: (-targets[k], k)):
        key = load / cap + rng.random(n_images) * 1e-3
        for i in np.argsort(key, kind="stable")[: min(targets[k], n_images)]:
            members[i].append(k)
            load[i] += 1
    biggest = sorted(range(len(targets)), key=lambda k: (-targets[k], k))
    for i in range(n_images):
        if not members[i]:
            members[i].append(biggest[int(rng.integers(0, min(3, len(biggest))))])
    return [sorted(m) for m in members]


def plan_split(
    targets: list[int],
    n_images: int,
    lookalike: list[int | None],
    not_exhaustive_rate: float,
    rng: np.random.Generator,
) -> list[ImagePlan]:
    """Per-image instance counts, not-exhaustive classes and verified-absent (neg) classes.

    Each image holds its allocated classes with 2-8 instances in all (one per class, extra
    ones spread at random). A class with several instances in an image is, with probability
    ``not_exhaustive_rate``, marked not exhaustive there and some of its instances are drawn
    but left unannotated. Negatives: 1-4 absent classes, plus the absent look-alike of a
    present class with probability 1/2 (annotators check the confusable class).
    """
    num_classes = len(targets)
    plans = []
    for members in allocate(targets, n_images, rng):
        total = min(8, max(2, len(members) + int(rng.integers(0, 4))))
        counts = dict.fromkeys(members, 1)
        for k in rng.choice(members, size=max(0, total - len(members))):
            counts[int(k)] += 1
        plan = ImagePlan(counts)
        for k, n in counts.items():
            if n >= 2 and rng.random() < not_exhaustive_rate:
                plan.unannotated[k] = int(rng.integers(1, n))
        absent = [k for k in range(num_classes) if k not in counts]
        wanted = {lookalike[k] for k in counts if lookalike[k] is not None}
        neg = {k for k in absent if k in wanted and rng.random() < 0.5}
        n_neg = min(len(absent), int(rng.integers(1, 5)))
        neg |= {int(k) for k in rng.choice(absent, size=n_neg, replace=False)} if absent else set()
        plan.neg = sorted(neg)
        plans.append(plan)
    return plans
