"""Training checkpoints: model (loss buffers included), optimizer, scheduler, RNG states.

A checkpoint is one ``torch.save`` file written atomically (a temporary file in the same
folder, flushed and fsync'ed, then ``os.replace``), so a reader sees the old checkpoint or the
new one, never half of one. It loads with ``weights_only=True``: everything in it is tensors
and plain Python values (``extra`` must be too: numbers, strings, lists, dicts).

Its sha256, computed while it is written, goes to the sidecar ``<file>.sha256`` (``sha256sum``
format) written after it; :func:`load_checkpoint` checks it before ``torch.load``, because
torch does not check the CRCs of its zip archive: a flipped bit in a tensor loads silently.
A mismatch or an unreadable file is :class:`CheckpointError` naming the file; callers whose
file is a cache (:func:`drop_damaged`) discard it and rebuild. A file without a sidecar
(written before checksums) still loads, unverified. A crash between the file and its
sidecar leaves a mismatch: the checkpoint is then treated as damaged, never used unchecked.

The loss is a submodule of the RoI heads, so EMA vectors and counters (EQLv2, Seesaw, GAP,
EBL) are in ``model.state_dict()``. The RNG states (torch CPU and CUDA, NumPy, Python
``random``) are the saving process's; restoring them makes a resumed run draw the same RoI
samples, flips and shuffles as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ltmodels.engine.atomic import write_atomic
from ltmodels.errors import LTUserError

log = logging.getLogger(__name__)

FORMAT = 1
SIDECAR = ".sha256"


class CheckpointError(LTUserError, RuntimeError):
    """A checkpoint does not match its recorded sha256 or cannot be read; names the file."""


class _HashingWriter:
    """A binary file that hashes what is written to it (so the file is not read again)."""

    def __init__(self, fh: Any) -> None:
        self.fh, self.sha = fh, hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        return self.fh.write(data)

    def flush(self) -> None:
        self.fh.flush()


def sidecar(path: str | Path) -> Path:
    """Where the sha256 of the checkpoint ``path`` is recorded: ``<path>.sha256``."""
    path = Path(path)
    return path.with_name(path.name + SIDECAR)


def file_sha256(path: str | Path) -> str:
    """sha256 of a whole file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(16 << 20):
            h.update(chunk)
    return h.hexdigest()


def recorded_sha256(path: str | Path) -> str | None:
    """The sha256 recorded for ``path`` at save time; None for a file without a sidecar.

    Raises:
        CheckpointError: the sidecar is there but holds no sha256.
    """
    side = sidecar(path)
    try:
        text = side.read_text(encoding="ascii", errors="replace").split()
    except FileNotFoundError:
        return None
    digest = text[0] if text else ""
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise CheckpointError(f"{side}: damaged checksum file; delete {path} and {side}")
    return digest


def verify_checkpoint(path: str | Path) -> None:
    """Check ``path`` against its recorded sha256 (nothing to check without a sidecar).

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: the file's sha256 differs from the recorded one.
    """
    expected = recorded_sha256(path)
    if expected is None:
        return
    if file_sha256(path) != expected:
        raise CheckpointError(
            f"{path}: damaged checkpoint (its sha256 differs from the one recorded in "
            f"{sidecar(path).name} when it was saved)"
        )


def checkpoint_problem(path: str | Path) -> str | None:
    """Why the checkpoint at ``path`` cannot be used (None when it can or is absent).

    A file with a sidecar is checked against it; one without (written before checksums)
    is loaded once to see that it is whole.
    """
    path = Path(path)
    if not path.exists():
        return None
    try:
        if recorded_sha256(path) is not None:
            verify_checkpoint(path)
        else:
            _torch_load(path, "cpu")
    except CheckpointError as err:
        return str(err)
    return None


def drop_damaged(path: str | Path, consequence: str) -> bool:
    """Delete the cached checkpoint ``path`` (and its sidecar) if it is damaged, logging one
    line that ends with ``consequence`` (what the caller does instead); True if dropped."""
    problem = checkpoint_problem(path)
    if problem is None:
        return False
    log.warning("%s; discarding it: %s", problem, consequence)
    Path(path).unlink(missing_ok=True)
    sidecar(path).unlink(missing_ok=True)
    return True


def _torch_load(path: Path, map_location: str | torch.device) -> Any:
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path}: unreadable checkpoint ({first})") from None


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
    """Write a checkpoint atomically, then its sha256 to ``<path>.sha256``.

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
    writer: list[_HashingWriter] = []

    def write(fh: Any) -> None:
        writer.append(_HashingWriter(fh))
        torch.save(payload, writer[0])

    write_atomic(path, write)
    line = f"{writer[0].sha.hexdigest()}  {path.name}\n".encode()
    write_atomic(sidecar(path), lambda fh: fh.write(line))
    return path


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
        CheckpointError: the file differs from its recorded sha256, or cannot be read
            (truncated, not a checkpoint, holds code).
        ValueError: an unknown checkpoint format, or a part was requested that the file
            does not hold.
    """
    path = Path(path)
    verify_checkpoint(path)
    payload = _torch_load(path, map_location)
    found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
    if found != FORMAT:
        raise ValueError(f"{path}: not an ltmodels checkpoint (format {found})")
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


__all__ = [
    "CheckpointError",
    "checkpoint_problem",
    "drop_damaged",
    "file_sha256",
    "load_checkpoint",
    "recorded_sha256",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
    "sidecar",
    "unwrap",
    "verify_checkpoint",
]
