"""Sharded samplers: shards partition the single-worker epoch, RFS repeats rare images."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import pytest
import torch

from ltmodels.data import LVISDetection, RepeatFactorSampler, ShardedRandomSampler
from ltmodels.data.samplers import repeat_factors
from ltmodels.errors import ConfigError
from tests.ltmodels.data.lvis_fixtures import make_lvis

# 10 images: class 1 everywhere, class 2 on image 0 only (f = 0.1), class 3 on images 0-4.
LABELS = [{1, 2, 3}, {1, 3}, {1, 3}, {1, 3}, {1, 3}, {1}, {1}, {1}, {1}, set()]


def _make(kind: str, **kw):
    if kind == "rfs":
        return RepeatFactorSampler(LABELS, threshold=0.4, **kw)
    return ShardedRandomSampler(len(LABELS), **kw)


@pytest.mark.parametrize("kind", ["rfs", "random"])
@pytest.mark.parametrize("workers", [1, 2, 3, 4])
def test_shards_partition_the_single_worker_epoch(kind: str, workers: int) -> None:
    single = _make(kind, seed=5, num_replicas=1, rank=0)
    single.set_epoch(3)
    epoch = list(single)
    shards = []
    for r in range(workers):
        s = _make(kind, seed=5, num_replicas=workers, rank=r)
        s.set_epoch(3)
        shards.append(list(s))
    assert len({len(s) for s in shards}) == 1  # every worker yields the same number
    pad = len(shards[0]) * workers - len(epoch)
    assert 0 <= pad < workers
    union = Counter(i for s in shards for i in s)
    assert union == Counter(epoch) + Counter(epoch[:pad])  # padding wraps around


@pytest.mark.parametrize("kind", ["rfs", "random"])
def test_len_matches_iteration_on_every_rank(kind: str) -> None:
    for epoch in range(5):
        for r in range(3):
            s = _make(kind, seed=1, num_replicas=3, rank=r)
            s.set_epoch(epoch)
            assert len(s) == len(list(s))


@pytest.mark.parametrize("kind", ["rfs", "random"])
def test_deterministic_for_seed_and_epoch(kind: str) -> None:
    def order(seed: int, epoch: int) -> list[int]:
        s = _make(kind, seed=seed, num_replicas=1, rank=0)
        s.set_epoch(epoch)
        return list(s)

    assert order(0, 2) == order(0, 2)
    assert order(0, 2) != order(0, 3)
    assert order(1, 0) != order(0, 1)  # (seed, epoch) is mixed, not added


def test_sequential_evaluation_sharding() -> None:
    shards = [list(ShardedRandomSampler(5, num_replicas=2, rank=r, shuffle=False)) for r in (0, 1)]
    assert shards == [[0, 2, 4], [1, 3, 0]]


def test_repeat_factors_by_hand() -> None:
    """t = 0.4: r(1) = max(1, sqrt(0.4 / 1.0)) = 1; r(2) = sqrt(0.4 / 0.1) = 2;
    r(3) = max(1, sqrt(0.4 / 0.5)) = 1; image 0 has classes {1, 2, 3}: max = 2; the empty
    image 9 gets 1."""
    r = repeat_factors(LABELS, threshold=0.4)
    assert r.tolist() == [2.0] + [1.0] * 9
    r = repeat_factors(LABELS, threshold=0.9)  # r(3) = sqrt(0.9 / 0.5), r(2) = 3
    assert r[0].item() == pytest.approx(3.0)
    assert r[1].item() == pytest.approx(math.sqrt(1.8))
    assert r[5].item() == 1.0 and r[9].item() == 1.0


def test_rare_images_repeated_in_expectation() -> None:
    """100 images, class 2 on image 0 only (f = 0.01); t = 0.0625 gives r = sqrt(6.25) = 2.5,
    so image 0 appears 2 or 3 times per epoch, 2.5 on average; every other image once."""
    labels = [{1, 2}] + [{1}] * 99
    sampler = RepeatFactorSampler(labels, threshold=0.0625, num_replicas=1, rank=0)
    assert sampler.repeat_factors[0].item() == pytest.approx(2.5)
    counts = []
    for epoch in range(400):
        sampler.set_epoch(epoch)
        c = Counter(sampler)
        assert all(c[i] == 1 for i in range(1, 100))
        assert c[0] in (2, 3)
        counts.append(c[0])
    assert sum(counts) / len(counts) == pytest.approx(2.5, abs=0.1)


def test_rfs_from_dataset(tmp_path: Path) -> None:
    ds = LVISDetection(*make_lvis(tmp_path)[:2], with_masks=False)
    # labels per image: {1, 3}, {1, 2}, {}, {1}; f = 3/4, 1/4, 1/4 for labels 1, 2, 3;
    # t = 1: r(1) = sqrt(4 / 3), r(2) = r(3) = 2; the empty image 2 gets 1
    sampler = RepeatFactorSampler(ds, threshold=1.0, num_replicas=1, rank=0)
    assert sampler.repeat_factors.tolist() == pytest.approx([2, 2, 1, 2 / math.sqrt(3)])
    counts = Counter(sampler)
    assert (counts[0], counts[1], counts[2]) == (2, 2, 1) and counts[3] in (1, 2)


def test_invalid_arguments() -> None:
    with pytest.raises(ConfigError, match="threshold"):
        RepeatFactorSampler(LABELS, threshold=0.0)
    with pytest.raises(ValueError, match="rank 2 for 2 replicas"):
        ShardedRandomSampler(4, num_replicas=2, rank=2)


def test_defaults_to_single_process() -> None:
    s = ShardedRandomSampler(7)
    assert (s.num_replicas, s.rank) == (1, 0)
    assert sorted(s) == list(range(7))
    assert torch.is_tensor(RepeatFactorSampler(LABELS).repeat_factors)
