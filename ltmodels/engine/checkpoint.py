"""Training checkpoints: model (loss buffers included), optimizer, scheduler, RNG states.

A checkpoint is one ``torch.save`` file written atomically (a temporary file in the same
folder, flushed and fsync'ed, then ``os.replace``), so a reader sees the old checkpoint or the
new one, never half of one. It loads with ``weights_only=True``: everything in it is tensors
and plain Python values (``extra`` must be too: numbers, strings, lists, dicts).

The loss is a submodule of the RoI heads, so EMA vectors and counters (EQLv2, Seesaw, GAP,
EBL) are in ``model.state_dict()``. The RNG states (torch CPU and CUDA, NumPy, Python
``random``) are the saving process's; restoring them makes a resumed run draw the same RoI
samples, flips and shuffles as an uninterrupted one.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ltmodels.engine.atomic import write_atomic

FORMAT = 1


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel`` wrapper (or the model itself)."""
    inner = getattr(model, "module", None)
    return inner if isinstance(inner, nn.Module) else model


def rng_state() -> dict[str, Any]:
    """Every RNG state a training step draws from, as tensors and plain values."""
    np_state: tuple[Any, ...] = np.random.get_state(legacy=True)  # type: ignore[assignment]
    keys, pos, has_gauss, cached = np_state[1:]
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured (CUDA states only if CUDA is in use)."""
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    path: str | Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    scaler: torch.amp.GradScaler | None = None,
    epoch: int,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint atomically.

    Args:
        path: target file; its folder is created.
        model: the detector (a DDP wrapper is unwrapped).
        optimizer, scheduler, scaler: saved when given.
        epoch: number of completed epochs.
        extra: plain-Python payload returned by :func:`load_checkpoint` (metrics, config).

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload: dict[str, Any] = {
        "format": FORMAT,
        "epoch": int(epoch),
        "model": unwrap(model).state_dict(),
        "optimizer": None if optimizer is None else optimizer.state_dict(),
        "scheduler": None if scheduler is None else scheduler.state_dict(),
        "scaler": None if scaler is None else scaler.state_dict(),
        "rng": rng_state(),
        "extra": dict(extra or {}),
    }
    return write_atomic(path, lambda fh: torch.save(payload, fh))


def load_checkpoint(
    path: str | Path,
    *,
    model: nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    scaler: torch.amp.GradScaler | None = None,
    restore_rng: bool = True,
    map_location: str | torch.device = "cpu",
    strict: bool = True,
) -> dict[str, Any]:
    """Load a checkpoint into the given objects.

    Args:
        path: a file written by :func:`save_checkpoint`.
        model, optimizer, scheduler, scaler: loaded in place when given.
        restore_rng: restore the saved RNG states (exact resume); off to only read weights.
        map_location: where tensors are loaded.
        strict: passed to ``model.load_state_dict``.

    Returns:
        The whole payload (``epoch``, ``extra``, ``model`` state, ...).

    Raises:
        FileNotFoundError: no such file.
        ValueError: an unknown checkpoint format, or a part was requested that the file
            does not hold.
    """
    payload = torch.load(Path(path), map_location=map_location, weights_only=True)
    if payload.get("format") != FORMAT:
        raise ValueError(f"{path}: not an ltmodels checkpoint (format {payload.get('format')})")
    if model is not None:
        unwrap(model).load_state_dict(payload["model"], strict=strict)
    for name, obj in (("optimizer", optimizer), ("scheduler", scheduler), ("scaler", scaler)):
        if obj is None:
            continue
        if payload[name] is None:
            raise ValueError(f"{path}: the checkpoint has no {name} state")
        obj.load_state_dict(payload[name])
    if restore_rng:
        set_rng_state(payload["rng"])
    return payload


__all__ = ["load_checkpoint", "rng_state", "save_checkpoint", "set_rng_state", "unwrap"]
