"""MFS as a component of a loss (LOCE Sec. 3.3), and how trainers reach it.

Not a registered loss: :class:`FeatureSampling` is a submodule of a loss that samples memory
features (``ebl`` with ``mfs: true``). It holds the settings (memory size M, k, m), the
:class:`~ltmodels.losses.mfs.FeatureMemory` once the feature width D is known, and a
per-worker sampler. Its buffers are the loss's, so they are checkpointed and reset per trial.

Protocol between such a loss and the code that trains it (the RoI head, the cached stage-2
trainer), so that both stay loss-agnostic. The loss defines two methods:

- ``bind_memory(feature_dim)``: allocate the memory for ``[D]`` features. Whoever pairs the
  loss with a predictor calls it, through :func:`bind_memory`, before training (and before
  loading a checkpoint, though a load into an unbound loss allocates the memory too).
- ``feature_memory()``: a :class:`MemoryAccess` (push, sample) or ``None`` when MFS is off.
  Trainers call :func:`memory_of`; a loss without the methods has no memory.

Each training iteration a trainer with a memory pushes positive features (with labels and
``[4]`` box regression targets, the box coder's encoding), then appends one sample of at most
``k x m`` rows to the batch with :func:`~ltmodels.losses.mfs.memory_gt_index` group ids.

The memory stores box-head outputs (``[D]``, what the RoI-feature cache holds too). The
released code stores RoI-Align outputs and runs the shared FCs on them every iteration; the
two agree when the box head is frozen, as in LOCE's fine-tuning stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ltmodels.engine.distributed import rank
from ltmodels.losses.mfs import FeatureMemory, MemorySample

_RANK_STRIDE = 0x9E3779B97F4A7C15  # odd, so the seeds of different ranks differ


class FeatureSampling(nn.Module):
    """The MFS state and settings a loss owns.

    Args:
        num_classes: C.
        size: M, queue length per class.
        k: classes drawn per iteration and worker.
        m: rows drawn per chosen class.
    """

    memory: FeatureMemory | None

    def __init__(self, num_classes: int, *, size: int = 80, k: int = 8, m: int = 4) -> None:
        super().__init__()
        if num_classes < 1 or size < 1 or k < 0 or m < 1:
            raise ValueError(f"FeatureSampling: bad C={num_classes}, M={size}, k={k}, m={m}")
        self.num_classes, self.size, self.k, self.m = int(num_classes), int(size), int(k), int(m)
        self.register_module("memory", None)

    def bind(self, feat_dim: int, target_dim: int = 4, *, device: Any = None) -> None:
        """Allocate the memory for ``feat_dim``-wide features (idempotent for the same width).

        Raises:
            ValueError: already bound to another feature or target width.
        """
        if self.memory is None:
            mem = FeatureMemory(self.num_classes, feat_dim, size=self.size, target_dim=target_dim)
            self.memory = mem.to(device)
        elif (self.memory.feat_dim, self.memory.target_dim) != (feat_dim, target_dim):
            raise ValueError(
                f"FeatureSampling: memory holds [{self.memory.feat_dim}] features and "
                f"[{self.memory.target_dim}] targets, asked for [{feat_dim}] and [{target_dim}]"
            )

    def bound_memory(self) -> FeatureMemory:
        """The memory; raises ``RuntimeError`` before :meth:`bind`."""
        if self.memory is None:
            raise RuntimeError(
                "the MFS memory is not allocated: call bind_memory(loss, feature_dim) when "
                "pairing the loss with its predictor (LongTailRoIHeads and "
                "train_predictor_cached do)"
            )
        return self.memory

    @torch.no_grad()
    def sample(self, mean_scores: torch.Tensor) -> MemorySample:
        """At most ``k x m`` rows, classes drawn with ``p_c ~ 1 / s_c`` (Eq. 7-8).

        The draw uses a generator seeded from one draw of torch's global CPU RNG (seeded per
        trial, restored by checkpoints: runs and resumes are reproducible) mixed with the DDP
        rank, so workers holding the same memory still draw different rows, as the paper's
        per-GPU k and m intend.
        """
        seed = int(torch.randint(2**62, ()).item()) + _RANK_STRIDE * rank()
        gen = torch.Generator().manual_seed(seed % 2**63)
        return self.bound_memory().sample(mean_scores, self.k, self.m, generator=gen)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        # A checkpoint with a memory restores into an unbound component: allocate it first.
        features = state_dict.get(prefix + "memory.features")
        targets = state_dict.get(prefix + "memory.targets")
        if self.memory is None and features is not None and targets is not None:
            self.bind(features.shape[-1], targets.shape[-1], device=features.device)
        super()._load_from_state_dict(state_dict, prefix, *args)

    def extra_repr(self) -> str:
        return f"size={self.size}, k={self.k}, m={self.m}"


@dataclass(frozen=True)
class MemoryAccess:
    """A loss's MFS with the score vector that guides its sampler; made per request."""

    sampling: FeatureSampling
    mean_scores: torch.Tensor  # [C + 1], entry 0 background

    def push(self, features: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor) -> None:
        """Enqueue ``[P, D]`` features, ``[P]`` labels (0 ignored), ``[P, 4]`` targets (Eq. 6).

        A collective under DDP: every worker calls it every iteration, ``P`` may be 0.
        """
        self.sampling.bound_memory().push(features, labels, targets)

    def sample(self) -> MemorySample:
        """Rows for the weak classes (Eq. 7-8): ``[R, D]``, ``[R]`` labels, ``[R, 4]``."""
        return self.sampling.sample(self.mean_scores)

    def fill(self) -> torch.Tensor:
        """``[C]`` valid rows per class."""
        return self.sampling.bound_memory().fill()


def bind_memory(loss: nn.Module, feature_dim: int) -> None:
    """Tell a loss the width D of the features it would store (no-op for other losses)."""
    bind = getattr(loss, "bind_memory", None)
    if callable(bind):
        bind(int(feature_dim))


def memory_of(loss: nn.Module) -> MemoryAccess | None:
    """The loss's MFS memory, or ``None`` when it has none (see the module's protocol)."""
    get = getattr(loss, "feature_memory", None)
    return get() if callable(get) else None


__all__ = ["FeatureSampling", "MemoryAccess", "bind_memory", "memory_of"]
