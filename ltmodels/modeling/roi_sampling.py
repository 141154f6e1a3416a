"""Vectorised balanced RoI sampling over many images at once (torchvision's rule).

torchvision's ``BalancedPositiveNegativeSampler`` takes, per image, ``min(#positives,
int(n * f))`` random positives (label >= 1) and fills up to ``n`` with random negatives
(label 0); ignored RoIs (label -1) are never taken. :func:`sample_balanced` draws the same
distribution for a whole batch of images with one sort, no Python loop over images or RoIs.
"""

from __future__ import annotations

import numpy as np


def ranges_to_index(starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate row ranges ``[starts[b], ends[b])``.

    Returns:
        index ``[T]`` int64 (the rows, range after range) and segment ``[T]`` (the ``b`` of
        each row).
    """
    starts = np.asarray(starts, dtype=np.int64)
    counts = np.asarray(ends, dtype=np.int64) - starts
    seg = np.repeat(np.arange(len(counts)), counts)
    first = np.cumsum(counts) - counts
    index = np.arange(int(counts.sum()), dtype=np.int64) - first[seg] + starts[seg]
    return index, seg


def sample_balanced(
    labels: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    rng: np.random.Generator,
    *,
    rois_per_image: int,
    positive_fraction: float,
) -> np.ndarray:
    """Sample RoIs of B images: per image at most ``rois_per_image``, positives capped.

    Args:
        labels: ``[R]`` labels of all RoIs (any integer array or memmap; only the rows in
            the ranges are read): ``>= 1`` positive, ``0`` negative, ``< 0`` ignored.
        starts, ends: ``[B]`` row range of each image in ``labels``.
        rng: the random generator (the draw is a function of its state).
        rois_per_image: n, RoIs per image (fewer when the image has fewer).
        positive_fraction: f, at most ``int(n * f)`` positives per image.

    Returns:
        ``[S]`` int64 sorted row indices into ``labels`` of the sampled RoIs.
    """
    index, seg = ranges_to_index(starts, ends)
    if index.size == 0:
        return index
    lab = np.asarray(labels[index])
    group = np.where(lab > 0, 0, np.where(lab == 0, 1, 2))  # positive, negative, ignored
    order = np.lexsort((rng.random(index.size), group, seg))
    key = (seg * 3 + group)[order]
    first_of_group = np.searchsorted(key, key, side="left")
    rank = np.arange(index.size) - first_of_group
    num_images = len(starts)
    n_pos = np.bincount(seg[group == 0], minlength=num_images)
    n_neg = np.bincount(seg[group == 1], minlength=num_images)
    take_pos = np.minimum(n_pos, int(rois_per_image * positive_fraction))
    take_neg = np.minimum(n_neg, rois_per_image - take_pos)
    limit = np.stack([take_pos, take_neg, np.zeros_like(take_pos)], axis=1)
    keep = rank < limit[seg[order], group[order]]
    return np.sort(index[order[keep]])


__all__ = ["ranges_to_index", "sample_balanced"]
