"""Tiny helpers around torch.distributed that are no-ops in a single process.

Loss statistics (EQLv2 gradient sums, Seesaw/GAP counts, EBL mean scores) go through these
so that 2 DDP workers on two halves of a batch end in the same state as 1 worker on the
whole batch.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all workers (returns a new tensor; input untouched)."""
    out = tensor.detach().clone()
    if is_distributed():
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def all_gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate along dim 0 the tensors of all workers; their first dims may differ.

    The result is ordered by rank, so every worker gets the same tensor.
    """
    if not is_distributed():
        return tensor.detach()
    t = tensor.detach().contiguous()
    n = torch.tensor([t.shape[0]], device=t.device, dtype=torch.long)
    sizes = [torch.zeros_like(n) for _ in range(world_size())]
    dist.all_gather(sizes, n)
    counts = [int(s.item()) for s in sizes]
    longest = max(counts)
    padded = t.new_zeros((longest, *t.shape[1:]))
    padded[: t.shape[0]] = t
    bufs = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(bufs, padded)
    return torch.cat([b[:c] for b, c in zip(bufs, counts, strict=True)], dim=0)


__all__ = ["all_gather_cat", "all_reduce_sum", "is_distributed", "rank", "world_size"]
