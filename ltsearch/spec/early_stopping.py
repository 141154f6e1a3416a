"""``search.early_stopping``: multi-objective asynchronous successive halving (MO-ASHA).

::

    search:
      early_stopping: {rungs: [1, 3, 9], reduction: 3}

Every configuration trains (each seed in turn) up to the first rung epoch and is evaluated
there; it goes on to the next rung only if it is among the best ``1/reduction`` of the
configurations that reached that rung so far, by non-dominated sorting on the study's
objectives (:mod:`ltsearch.run.moasha`), or if it is on the rung's first front (no
configuration at the rung beats it in every objective), however many share that front
(``promotion: front``, the default; ``promotion: ranked`` is the quota alone, MOASHA as
published: it stopped trade-off points for crowding, BENCHMARKS.md). A rung at
``training.epochs`` is the end of training (no decision there). End-to-end studies only: a
decoupled trial's stage 2 is short, and its feature-cache path trains in one go. Without the
key every configuration trains to the end.

``ema_half_life`` (epochs, optional): a rung evaluates an exponential moving average of the
weights (half-life in epochs; :mod:`ltmodels.engine.ema`) instead of the weights at that
step. A rung early in the schedule is at the peak learning rate, where the weights
oscillate around what the annealed run settles to; the average ranks closer to the end.
Training and every final evaluation are the same with or without it.

``cooldown`` (epochs, at most 1, optional): a rung evaluates a copy of the model trained
``cooldown`` epochs further with the learning rate decaying linearly from its value at the
rung to 0 (the "decay" branch of a warmup-stable-decay schedule), then thrown away; the
trial goes on from the rung's own checkpoint. It asks what the configuration would reach if
its schedule ended here, at ``cooldown`` epochs' cost per rung and seed. Exclusive with
``ema_half_life``. Training and every final evaluation are the same with or without it.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from ltsearch.errors import SpecError
from ltsearch.spec.loss import Int, Strict

PosInt = Annotated[Int, Field(gt=0)]


class EarlyStopping(Strict):
    """Rungs (epochs, strictly increasing), the reduction factor (``1/reduction`` of the
    configurations at a rung go on) and the promotion rule: ``ranked`` keeps that quota by
    non-dominated rank and crowding distance, ``front`` (the default) also every point of
    the rung's first front; ``ema_half_life``: rungs evaluate a moving average of the
    weights with this half-life in epochs (none: the weights themselves); ``cooldown``:
    rungs evaluate a copy annealed that many epochs further."""

    rungs: list[PosInt] = Field(min_length=1)
    reduction: Annotated[Int, Field(ge=2)] = 3
    promotion: Literal["ranked", "front"] = "front"
    ema_half_life: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None
    cooldown: Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)] | None = None

    @field_validator("rungs")
    @classmethod
    def _increasing(cls, value: list[int]) -> list[int]:
        for i in range(1, len(value)):
            if value[i] <= value[i - 1]:
                raise SpecError(
                    f"rungs must be strictly increasing epochs, but {value[i]} follows "
                    f"{value[i - 1]}; e.g. [1, 3, 9]",
                    path=[i],
                )
        return value

    @model_validator(mode="after")
    def _one_rung_source(self) -> EarlyStopping:
        if self.ema_half_life is not None and self.cooldown is not None:
            raise SpecError(
                "ema_half_life and cooldown both change what a rung evaluates; keep one",
                path=["cooldown"],
            )
        return self

    def decision_rungs(self, epochs: int) -> list[int]:
        """The rungs where a configuration may be stopped: those before ``epochs``."""
        return [r for r in self.rungs if r < epochs]


def check_early_stopping(
    early: EarlyStopping | None, schedule: str, epochs: int, iterations: int | None = None
) -> None:
    """The checks that need the training section (called by the study's cross-checks).

    Raises:
        SpecError: early stopping under a decoupled schedule or an iteration budget, or a
            rung past the epochs.
    """
    if early is None:
        return
    if iterations is not None:
        raise SpecError(
            f"rungs are epochs, but training gives iterations ({iterations}); give "
            "training.epochs instead, or remove early_stopping",
            path=["search", "early_stopping"],
        )
    if schedule != "end_to_end":
        raise SpecError(
            "applies to training.schedule: end_to_end only (a decoupled trial's stage 2 is "
            "short); remove it or train end to end",
            path=["search", "early_stopping"],
        )
    if early.rungs[-1] > epochs:
        raise SpecError(
            f"the last rung {early.rungs[-1]} is past training.epochs {epochs}; use rungs "
            f"up to {epochs} (a rung at {epochs} is the end of training)",
            path=["search", "early_stopping", "rungs"],
        )


__all__ = ["EarlyStopping", "check_early_stopping"]
