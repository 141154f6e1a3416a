"""Intra-op threads for the work that trials share: :func:`torch_threads`.

A one-CPU trial runs torch on one thread (Ray sets ``OMP_NUM_THREADS`` to the trial's CPUs).
In a decoupled study every trial needs the same stage 1 and the same feature cache; the
first trial builds them while the others block on the build's file lock, their cores idle.
:func:`torch_threads` lets the builder use those cores for the length of the build and
gives the process its own setting back afterwards.

The number of threads changes floating-point summation order (a 2-thread stage 1 differs
from a 1-thread one by ~1e-4 after a few steps), so it is a fixed number that the caller
decides from the study's resources (:func:`build_threads_for`), never from how many trials
happen to be waiting: the same study on the same machine builds the same weights.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager


def node_cpus() -> int:
    """CPUs this process may run on (its affinity mask, which containers and ``taskset``
    narrow), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def build_threads_for(concurrent_trials: int, cpus_per_trial: float, cpus: int) -> int:
    """Threads a shared build uses: the CPUs of the trials that wait for it (all the
    study's concurrent trials need it), no more than the node has; at least 1."""
    return max(1, min(int(concurrent_trials * cpus_per_trial), cpus))


@contextmanager
def torch_threads(n: int) -> Iterator[int]:
    """Run the block with ``n`` intra-op threads (``n <= 0``: the process's setting), then
    restore the previous count, also when the block raises. Yields the count in effect."""
    import torch  # here: the study driver reads node_cpus without importing torch

    before = torch.get_num_threads()
    if n <= 0 or n == before:
        yield before
        return
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(before)


__all__ = ["build_threads_for", "node_cpus", "torch_threads"]
