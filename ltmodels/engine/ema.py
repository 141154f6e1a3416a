"""An exponential moving average of a model's weights, for evaluating a run mid-schedule.

Early stopping (``search.early_stopping``) ranks configurations at rungs early in their
schedule, while the learning rate is still at its peak: the weights there oscillate around
where the annealed run would settle, and the rung's metrics rank that noise as well as the
configurations. An average of the recent iterates is what the annealing would approach
(Polyak averaging; the weights averaged over the last part of a high learning rate rank
like the decayed run does), at the cost of one ``lerp`` per parameter and step.

The average is bias-corrected as Adam's moments are: starting from zeros,
``m_t = beta m_{t-1} + (1 - beta) w_t`` and the average is ``m_t / (1 - beta^t)``, an
exponentially weighted mean of the weights after each of the ``t`` steps with no weight
on the initialisation. ``beta`` is set from a half-life in steps: ``beta = 0.5 **
(1 / half_life)``.

Only the trainable parameters are averaged; buffers (running statistics, a loss's class
counts) and frozen parameters are the current model's. Training never reads the average:
a run with it trains exactly as one without.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ltmodels.engine.atomic import write_atomic


class WeightEMA:
    """Bias-corrected exponential moving average of ``model``'s trainable parameters.

    Args:
        model: the model trained (unwrapped: its parameter names are the keys).
        half_life: steps after which a step's weight in the average has halved (> 0).
    """

    def __init__(self, model: nn.Module, half_life: float) -> None:
        if not half_life > 0:
            raise ValueError(f"half_life must be > 0 steps, got {half_life}")
        self.beta = 0.5 ** (1.0 / float(half_life))
        self.steps = 0
        self._params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        self._moments = {
            n: torch.zeros_like(p, dtype=torch.float32) for n, p in self._params.items()
        }

    @torch.no_grad()
    def update(self) -> None:
        """Take the parameters as they are after one more step."""
        self.steps += 1
        for name, p in self._params.items():
            self._moments[name].lerp_(p.detach().float(), 1.0 - self.beta)

    @torch.no_grad()
    def averaged(self) -> dict[str, torch.Tensor]:
        """The average of each trainable parameter (its current value before any step)."""
        if self.steps == 0:
            return {n: p.detach().clone() for n, p in self._params.items()}
        correction = 1.0 - self.beta**self.steps
        return {n: (self._moments[n] / correction).to(p.dtype) for n, p in self._params.items()}

    @contextmanager
    def applied(self) -> Iterator[None]:
        """The model holds the averaged parameters inside the block, its own after it."""
        saved = {n: p.detach().clone() for n, p in self._params.items()}
        with torch.no_grad():
            for name, value in self.averaged().items():
                self._params[name].copy_(value)
        try:
            yield
        finally:
            with torch.no_grad():
                for name, value in saved.items():
                    self._params[name].copy_(value)

    def state_dict(self) -> dict[str, Any]:
        return {"beta": self.beta, "steps": self.steps, "moments": dict(self._moments)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Raises ValueError: the state is of another half-life or other parameters."""
        if abs(float(state["beta"]) - self.beta) > 1e-12:
            raise ValueError(f"the saved average has beta {state['beta']}, not {self.beta}")
        moments = state["moments"]
        if set(moments) != set(self._moments) or any(
            moments[n].shape != m.shape for n, m in self._moments.items()
        ):
            raise ValueError("the saved average is of other parameters than this model's")
        for name, value in moments.items():
            self._moments[name].copy_(value)
        self.steps = int(state["steps"])


def ema_path(ckpt_path: Path) -> Path:
    """Where a stage's average is kept beside its checkpoint."""
    return ckpt_path.with_name(f"{ckpt_path.name}.ema")


def save_ema(ckpt_path: Path, ema: WeightEMA, epoch: int) -> None:
    """Write the average as of the end of ``epoch`` (epochs done), atomically."""
    payload = {"epoch": int(epoch), **ema.state_dict()}
    write_atomic(ema_path(ckpt_path), lambda fh: torch.save(payload, fh))


def load_ema(ckpt_path: Path, ema: WeightEMA, epoch: int) -> bool:
    """Restore the average saved at ``epoch`` epochs; False (``ema`` untouched) when there
    is none of that epoch, of that half-life and of these parameters."""
    path = ema_path(ckpt_path)
    if not path.is_file():
        return False
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        if int(payload["epoch"]) != epoch:
            return False
        ema.load_state_dict(payload)
    except (ValueError, KeyError, RuntimeError, EOFError):
        return False
    return True


__all__ = ["WeightEMA", "ema_path", "load_ema", "save_ema"]
