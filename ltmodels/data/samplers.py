"""Distributed training samplers: repeat-factor sampling (LVIS) and plain random sharding.

Both samplers build one epoch's index list the same way on every worker (seeded by
``(seed, epoch)``), pad it by wrapping around to a multiple of the number of workers W, as
``torch.utils.data.DistributedSampler`` does, and give worker ``rank`` every W-th index
starting at ``rank``. So every worker yields the same number of indices and the union of the W
shards is the single-worker epoch plus the padding. Call ``set_epoch(e)`` before each epoch.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch.utils.data import Sampler

from ltmodels.engine import distributed
from ltmodels.errors import ConfigError


@runtime_checkable
class HasImageLabels(Protocol):
    """A dataset that lists the labels of image ``i`` without loading it (LVISDetection)."""

    def __len__(self) -> int: ...

    def image_labels(self, i: int) -> set[int]: ...


def repeat_factors(image_labels: Sequence[Iterable[int]], threshold: float) -> torch.Tensor:
    """Per-image repeat factors of repeat-factor sampling (Gupta et al., LVIS, 2019).

    r(c) = max(1, sqrt(t / f(c))) with f(c) the fraction of the images that contain class c;
    r(image) = max of r(c) over its classes, 1 for an image without annotations. This is
    detectron2's ``RepeatFactorTrainingSampler.repeat_factors_from_category_frequency``.

    Args:
        image_labels: per image, the labels present on it.
        threshold: t; classes in fewer than a fraction t of the images are over-sampled.

    Returns:
        float64 tensor [N] of repeat factors >= 1.
    """
    if not threshold > 0:
        raise ConfigError(f"repeat-factor threshold must be > 0, got {threshold}")
    labels = [set(ls) for ls in image_labels]
    counts: dict[int, int] = {}
    for ls in labels:
        for c in ls:
            counts[c] = counts.get(c, 0) + 1
    n = max(len(labels), 1)
    per_class = {c: max(1.0, math.sqrt(threshold / (k / n))) for c, k in counts.items()}
    return torch.tensor(
        [max((per_class[c] for c in ls), default=1.0) for ls in labels], dtype=torch.float64
    )


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A torch generator seeded from (seed, epoch) through NumPy's SeedSequence.

    Mixing the pair (unlike ``seed + epoch``) keeps seed 1's epoch 0 from being seed 0's
    epoch 1, so trials run with seeds 0, 1, 2 do not see shifted copies of one order.
    """
    state = np.random.SeedSequence([int(seed), int(epoch)]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


class _ShardedSampler(Sampler[int]):
    """Shared epoch bookkeeping, padding and sharding; subclasses build the epoch's list."""

    def __init__(
        self, *, seed: int, num_replicas: int | None, rank: int | None, shuffle: bool
    ) -> None:
        self.num_replicas = distributed.world_size() if num_replicas is None else num_replicas
        self.rank = distributed.rank() if rank is None else rank
        if self.num_replicas < 1 or not 0 <= self.rank < self.num_replicas:
            raise ValueError(f"invalid rank {self.rank} for {self.num_replicas} replicas")
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self._cache: tuple[int, list[int]] | None = None

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order the next iteration yields."""
        self.epoch = epoch

    def _epoch_indices(self, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def _shard(self) -> list[int]:
        if self._cache is not None and self._cache[0] == self.epoch:
            return self._cache[1]
        indices = self._epoch_indices(epoch_generator(self.seed, self.epoch)).tolist()
        if indices:
            total = math.ceil(len(indices) / self.num_replicas) * self.num_replicas
            repeats = math.ceil(total / len(indices))
            indices = (indices * repeats)[:total]
        shard = indices[self.rank :: self.num_replicas]
        self._cache = (self.epoch, shard)
        return shard

    def __iter__(self) -> Iterator[int]:
        return iter(self._shard())

    def __len__(self) -> int:
        return len(self._shard())


class ShardedRandomSampler(_ShardedSampler):
    """A random permutation of range(n) per epoch (or range(n) in order), sharded over workers.

    With ``shuffle=False`` (evaluation) worker ``rank`` takes indices rank, rank + W, ...;
    the padding repeats the first indices, so drop duplicate image ids when gathering results.
    """

    def __init__(
        self,
        n: int,
        *,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
        shuffle: bool = True,
    ) -> None:
        super().__init__(seed=seed, num_replicas=num_replicas, rank=rank, shuffle=shuffle)
        self.n = n

    def _epoch_indices(self, generator: torch.Generator) -> torch.Tensor:
        if self.shuffle:
            return torch.randperm(self.n, generator=generator)
        return torch.arange(self.n)


class RepeatFactorSampler(_ShardedSampler):
    """LVIS repeat-factor sampling (RFS), sharded over workers.

    Each epoch, image i appears floor(r_i) times plus once more with probability
    r_i - floor(r_i) (stochastic rounding drawn per epoch), then the list is shuffled and
    sharded; so the epoch's length varies a little between epochs (``len`` is exact for the
    current epoch). See :func:`repeat_factors` for r_i.

    Args:
        dataset_or_image_labels: a dataset with ``image_labels(i)`` (LVISDetection), or per
            image the labels present on it.
        threshold: t of r(c) = max(1, sqrt(t / f(c))); 0.001 for LVIS.
        seed: with the epoch, seeds the rounding and the shuffle.
        num_replicas, rank: W workers and this worker's index; default from torch.distributed.
        shuffle: shuffle the repeated list (keep True for training).
    """

    def __init__(
        self,
        dataset_or_image_labels: HasImageLabels | Sequence[Iterable[int]],
        *,
        threshold: float = 0.001,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
        shuffle: bool = True,
    ) -> None:
        super().__init__(seed=seed, num_replicas=num_replicas, rank=rank, shuffle=shuffle)
        source = dataset_or_image_labels
        if isinstance(source, HasImageLabels):
            labels: Sequence[Iterable[int]] = [source.image_labels(i) for i in range(len(source))]
        else:
            labels = source
        self.threshold = threshold
        self.repeat_factors = repeat_factors(labels, threshold)

    def _epoch_indices(self, generator: torch.Generator) -> torch.Tensor:
        floor = self.repeat_factors.floor()
        extra = torch.rand(len(floor), generator=generator, dtype=torch.float64)
        reps = (floor + (extra < self.repeat_factors - floor).double()).long()
        indices = torch.repeat_interleave(torch.arange(len(reps)), reps)
        if self.shuffle:
            indices = indices[torch.randperm(len(indices), generator=generator)]
        return indices


__all__ = [
    "HasImageLabels",
    "RepeatFactorSampler",
    "ShardedRandomSampler",
    "epoch_generator",
    "repeat_factors",
]
