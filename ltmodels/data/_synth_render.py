"""Drawing for the synthetic long-tail dataset: shapes, colours, textures, layout of one image.

A class is a (shape, colour, texture) triple. Shapes are unit polygons in [-1, 1]^2 (y down),
scaled, stretched, rotated and placed per instance. Textures are two-tone patterns in the
object's own frame (they rotate and scale with it). Each base attribute has one *subtle variant*
(circle vs octagon, red vs scarlet, stripes vs fine stripes) used only by look-alike classes.

Segmentation is amodal: an occluded instance keeps its full polygon. Placement keeps occlusion
mild (a later instance covers at most ``MAX_OCCLUSION`` of an earlier one's box), so amodal and
visible masks differ little. A ring is one polygon with a zero-width slit (outer ring, bridge,
inner ring reversed), which pycocotools rasterises as an annulus and whose shoelace area is the
annulus area.
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

MAX_OCCLUSION = 0.3
# Side of an instance as a fraction of the image side: small / medium / large buckets.
SIZE_BUCKETS = ((0.08, 0.14), (0.14, 0.28), (0.28, 0.5))
SIZE_PROBS = (0.3, 0.45, 0.25)


def _ngon(n: int, radius: float = 1.0, phase: float = -math.pi / 2) -> np.ndarray:
    a = phase + 2 * math.pi * np.arange(n) / n
    return np.stack([radius * np.cos(a), radius * np.sin(a)], axis=1)


def _star(points: int, inner: float) -> np.ndarray:
    outer = _ngon(points)
    inn = _ngon(points, inner, -math.pi / 2 + math.pi / points)
    return np.stack([outer, inn], axis=1).reshape(-1, 2)


def _cross(half_width: float) -> np.ndarray:
    w = half_width
    return np.array(
        [(-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w)]
        + [(w, 1), (-w, 1), (-w, w), (-1, w), (-1, -w), (-w, -w)],
        dtype=float,
    )


def _ring(inner: float) -> tuple[np.ndarray, np.ndarray]:
    return _ngon(32, 1.0, 0.0), _ngon(32, inner, 0.0)


_SQ = 0.88
# name -> (outer polygon, hole polygon or None)
SHAPES: dict[str, tuple[np.ndarray, np.ndarray | None]] = {
    "circle": (_ngon(32), None),
    "octagon": (_ngon(8, 1.0, math.pi / 8), None),
    "square": (np.array([(-_SQ, -_SQ), (_SQ, -_SQ), (_SQ, _SQ), (-_SQ, _SQ)]), None),
    "chamfered square": (
        np.array(
            [(-0.55, -_SQ), (0.55, -_SQ), (_SQ, -0.55), (_SQ, 0.55)]
            + [(0.55, _SQ), (-0.55, _SQ), (-_SQ, 0.55), (-_SQ, -0.55)]
        ),
        None,
    ),
    "triangle": (np.array([(0.0, -1.0), (1.0, 0.8), (-1.0, 0.8)]), None),
    "trapezoid": (np.array([(-0.3, -1.0), (0.3, -1.0), (1.0, 0.8), (-1.0, 0.8)]), None),
    "star": (_star(5, 0.45), None),
    "six-point star": (_star(6, 0.55), None),
    "ring": _ring(0.55),
    "thin ring": _ring(0.75),
    "cross": (_cross(0.34), None),
    "thin cross": (_cross(0.2), None),
    "hexagon": (_ngon(6), None),
    "pentagon": (_ngon(5), None),
}
SHAPE_VARIANT = {
    "circle": "octagon",
    "square": "chamfered square",
    "triangle": "trapezoid",
    "star": "six-point star",
    "ring": "thin ring",
    "cross": "thin cross",
    "hexagon": "pentagon",
}

# name -> hue in degrees (saturation 0.8, value 0.9); variants are 12 degrees away.
COLOURS = {"red": 0, "orange": 30, "yellow": 55, "green": 115, "teal": 170, "blue": 220}
COLOURS |= {"purple": 270, "magenta": 315}
_COLOUR_VARIANT_NAMES = ("scarlet", "amber", "chartreuse", "jade", "cyan", "indigo", "violet")
COLOUR_VARIANT = dict(zip(COLOURS, (*_COLOUR_VARIANT_NAMES, "fuchsia"), strict=True))
HUES = COLOURS | {COLOUR_VARIANT[c]: (h + 12) % 360 for c, h in COLOURS.items()}


def _bands(x: np.ndarray, n: float) -> np.ndarray:
    return (np.floor((x + 1.0) * n / 2.0).astype(np.int64) % 2).astype(bool)


def _dots(u: np.ndarray, v: np.ndarray, n: float, r: float) -> np.ndarray:
    fu = (u + 1.0) * n / 2.0 % 1.0 - 0.5
    fv = (v + 1.0) * n / 2.0 % 1.0 - 0.5
    return fu * fu + fv * fv < r * r


def _speckle(u: np.ndarray, v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return rng.random(u.shape) < 0.12


TextureFn = Callable[[np.ndarray, np.ndarray, np.random.Generator], np.ndarray]
TEXTURES: dict[str, TextureFn] = {
    "solid": lambda u, v, rng: np.zeros(u.shape, dtype=bool),
    "speckled": _speckle,
    "stripes": lambda u, v, rng: _bands(v, 5),
    "fine stripes": lambda u, v, rng: _bands(v, 8),
    "dots": lambda u, v, rng: _dots(u, v, 4, 0.3),
    "dense dots": lambda u, v, rng: _dots(u, v, 6, 0.3),
    "checker": lambda u, v, rng: _bands(u, 4) ^ _bands(v, 4),
    "fine checker": lambda u, v, rng: _bands(u, 7) ^ _bands(v, 7),
    "diagonal": lambda u, v, rng: _bands((u + v) / 2, 6),
    "antidiagonal": lambda u, v, rng: _bands((u - v) / 2, 6),
}
TEXTURE_VARIANT = {
    "solid": "speckled",
    "stripes": "fine stripes",
    "dots": "dense dots",
    "checker": "fine checker",
    "diagonal": "antidiagonal",
}
BASE_SHAPES = tuple(SHAPE_VARIANT)
BASE_COLOURS = tuple(COLOURS)
BASE_TEXTURES = tuple(TEXTURE_VARIANT)


@dataclass(frozen=True)
class Look:
    """Visual attributes of a class."""

    shape: str
    colour: str
    texture: str


@dataclass(frozen=True)
class Placed:
    """One drawn instance: class index, outline in image pixels and its pose."""

    label: int
    outer: np.ndarray  # [V, 2] (x, y)
    hole: np.ndarray | None
    center: tuple[float, float]
    half: tuple[float, float]
    theta: float

    def bbox(self) -> tuple[float, float, float, float]:
        x0, y0 = self.outer.min(axis=0)
        x1, y1 = self.outer.max(axis=0)
        return float(x0), float(y0), float(x1), float(y1)

    def segmentation(self) -> list[float]:
        """The polygon as LVIS's flat [x1, y1, x2, y2, ...] (a ring gets a slit)."""
        pts = self.outer
        if self.hole is not None:
            hole = self.hole[::-1]
            pts = np.concatenate([self.outer, self.outer[:1], hole[-1:], hole], axis=0)
        return [round(float(c), 2) for c in pts.reshape(-1)]


def _pose(label: int, shape: str, side: float, aspect: float, theta: float, center) -> Placed:
    outer, hole = SHAPES[shape]
    half = (side / 2 * math.sqrt(aspect), side / 2 / math.sqrt(aspect))
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])

    def tf(p: np.ndarray) -> np.ndarray:
        return (p * np.array(half)) @ rot.T + np.array(center)

    return Placed(label, tf(outer), None if hole is None else tf(hole), center, half, theta)


def _overlap(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return max(w, 0.0) * max(h, 0.0)


def place(
    labels: list[int], looks: list[Look], size: int, rng: np.random.Generator
) -> list[Placed]:
    """Poses for instances drawn in the given order (later ones on top).

    Sizes come from ``SIZE_BUCKETS``; a pose is redrawn (and shrunk after every 30 tries) while
    it would hide more than ``MAX_OCCLUSION`` of an earlier instance's box.
    """
    placed: list[Placed] = []
    for label in labels:
        lo, hi = SIZE_BUCKETS[rng.choice(len(SIZE_BUCKETS), p=SIZE_PROBS)]
        side = size * math.exp(rng.uniform(math.log(lo), math.log(hi)))
        aspect = math.exp(rng.uniform(-0.25, 0.25))
        theta = math.radians(rng.uniform(-12.0, 12.0))
        for attempt in range(90):
            if attempt and attempt % 30 == 0:
                side *= 0.8
            probe = _pose(label, looks[label].shape, side, aspect, theta, (0.0, 0.0))
            x0, y0, x1, y1 = probe.bbox()
            cx = rng.uniform(-x0 + 0.5, size - x1 - 0.5)
            cy = rng.uniform(-y0 + 0.5, size - y1 - 0.5)
            cand = _pose(label, looks[label].shape, side, aspect, theta, (cx, cy))
            box = cand.bbox()
            if all(_overlap(box, p.bbox()) <= MAX_OCCLUSION * _area(p.bbox()) for p in placed):
                break
        placed.append(cand)
    return placed


def _area(b: tuple[float, ...]) -> float:
    return (b[2] - b[0]) * (b[3] - b[1])


def _rgb(colour: str, rng: np.random.Generator) -> np.ndarray:
    hue = (HUES[colour] + rng.uniform(-3.0, 3.0)) / 360.0 % 1.0
    sat = 0.8 + rng.uniform(-0.06, 0.06)
    val = 0.9 + rng.uniform(-0.08, 0.06)
    return np.array(colorsys.hsv_to_rgb(hue, sat, val), dtype=np.float32) * 255.0


def background(size: int, rng: np.random.Generator) -> np.ndarray:
    """A dull, mildly blotchy background, float32 [H, W, 3]."""
    hue, sat, val = rng.random(), rng.uniform(0.05, 0.25), rng.uniform(0.3, 0.7)
    base = np.array(colorsys.hsv_to_rgb(hue, sat, val), dtype=np.float32) * 255.0
    cells = max(2, size // 16)
    blotch = (rng.normal(0.0, 12.0, (cells, cells, 3)) + 128.0).clip(0, 255).astype(np.uint8)
    smooth = np.asarray(Image.fromarray(blotch).resize((size, size), Image.Resampling.BILINEAR))
    return base + (smooth.astype(np.float32) - 128.0)


def draw(img: np.ndarray, inst: Placed, look: Look, rng: np.random.Generator) -> None:
    """Paint one instance into ``img`` (float32 [H, W, 3]) in place."""
    h, w = img.shape[:2]
    bx0, by0, bx1, by1 = inst.bbox()
    x0, y0 = max(int(math.floor(bx0)), 0), max(int(math.floor(by0)), 0)
    x1, y1 = min(int(math.ceil(bx1)) + 1, w), min(int(math.ceil(by1)) + 1, h)
    mask = Image.new("L", (x1 - x0, y1 - y0), 0)
    pen = ImageDraw.Draw(mask)
    off = np.array([x0, y0])
    pen.polygon([tuple(p) for p in (inst.outer - off).tolist()], fill=255)
    if inst.hole is not None:
        pen.polygon([tuple(p) for p in (inst.hole - off).tolist()], fill=0)
    m = np.asarray(mask) > 0
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32) + 0.5
    dx, dy = xx - inst.center[0], yy - inst.center[1]
    c, s = math.cos(inst.theta), math.sin(inst.theta)
    u = (c * dx + s * dy) / inst.half[0]
    v = (-s * dx + c * dy) / inst.half[1]
    pattern = TEXTURES[look.texture](u, v, rng)
    main = _rgb(look.colour, rng)
    shade = (1.0 - 0.08 * v)[..., None]
    rgb = np.where(pattern[..., None], main * 0.5, main) * shade
    region = img[y0:y1, x0:x1]
    region[m] = rgb[m]


def render(
    labels: list[int], looks: list[Look], size: int, rng: np.random.Generator
) -> tuple[np.ndarray, list[Placed]]:
    """Draw one image: background, instances in order, sensor noise. Returns uint8 [H, W, 3]."""
    img = background(size, rng)
    placed = place(labels, looks, size, rng)
    for inst in placed:
        draw(img, inst, looks[inst.label], rng)
    img += rng.normal(0.0, 3.0, img.shape).astype(np.float32)
    return img.clip(0, 255).astype(np.uint8), placed


def polygon_area(flat: list[float]) -> float:
    """Shoelace area of a flat [x1, y1, x2, y2, ...] polygon."""
    pts = np.asarray(flat, dtype=np.float64).reshape(-1, 2)
    x, y = pts[:, 0], pts[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2.0)
