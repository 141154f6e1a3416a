"""The ``training`` section of a study spec: the schedule and each stage's optimisation.

``end_to_end`` trains the whole detector with the trial's loss, using the optimisation keys
at the top of the section. ``decoupled`` trains ``stage1`` once per study (a baseline with
its own loss) and fine-tunes the parts ``stage2.finetune`` names with the trial's loss;
its optimisation keys live in the two stages only.

``lr_milestones`` lists the epochs of a stage at whose end the learning rate is divided by
10 (MMDetection's ``step``: ``[8, 11]`` for a 12-epoch 1x schedule); without it the engine
decays at 2/3 and 8/9 of the stage's iterations. ``iterations`` gives a stage's length in
optimizer steps instead of ``epochs`` (detectron2's ``MAX_ITER``: ``90000``); the stage then
trains as many epochs as that takes, the last one cut at the budget, and its
``lr_milestones`` are iterations (detectron2's ``STEPS``: ``[60000, 80000]``). Keys added
after studies recorded results (:data:`LATE_KEYS`) are left out of the configuration and
stage-1 hashes while unset, so those studies keep their hashes (resume, shared stage-1
caches).

``stage1.evaluate`` asks for one more row: the stage-1 model evaluated as is, the papers'
"before re-balancing" line (:mod:`ltsearch.run.baseline`). It says what the study reports,
not what any run trains, so no hash covers it (:meth:`Stage1.trained`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from pydantic import Field, StrictBool, model_validator

from ltmodels.errors import ConfigError
from ltmodels.losses.domains import DOMAINS
from ltsearch.errors import SpecError
from ltsearch.spec.loss import Float, Int, Strict
from ltsearch.spec.sections import PosFloat, PosInt

FinetunePart = Literal["box_predictor", "box_head", "rpn", "mask_head", "backbone"]
FINETUNE_PARTS: tuple[str, ...] = get_args(FinetunePart)

OPTIM_KEYS = (
    "epochs", "lr", "batch_size", "sampler", "rfs_threshold", "warmup_iters", "momentum",
    "weight_decay", "max_norm", "lr_milestones", "iterations",
)  # fmt: skip
LATE_KEYS = ("lr_milestones", "iterations")
"""Optimisation keys that are not hashed while unset (see the module docstring)."""


def hashed(settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` without the :data:`LATE_KEYS` that are unset (``None``)."""
    return {k: v for k, v in settings.items() if not (k in LATE_KEYS and v is None)}


class Optim(Strict):
    """How one training stage optimises (``batch_size`` is the total over all workers)."""

    epochs: PosInt = 12
    lr: PosFloat = 0.02
    batch_size: PosInt = 16
    sampler: Literal["random", "rfs"] = "random"
    rfs_threshold: Annotated[Float, Field(gt=0, le=1)] = 1e-3
    warmup_iters: Annotated[Int, Field(ge=0)] = 500
    momentum: Annotated[Float, Field(ge=0, lt=1)] = 0.9
    weight_decay: Annotated[Float, Field(ge=0)] = 1e-4
    max_norm: PosFloat | None = None
    # epochs (iterations, under an iteration budget) at whose end lr /= 10; [] = no decay;
    # None = at 2/3 and 8/9 of the stage
    lr_milestones: list[PosFloat] | None = None
    # the stage's length in optimizer steps instead of epochs (detectron2's MAX_ITER)
    iterations: PosInt | None = None

    def length(self) -> tuple[int, str]:
        """The stage's length as written: ``(n, "epochs")`` or ``(n, "iterations")``."""
        if self.iterations is not None:
            return self.iterations, "iterations"
        return self.epochs, "epochs"

    @model_validator(mode="after")
    def _budget(self) -> Optim:
        if self.iterations is not None and "epochs" in self.model_fields_set:
            raise SpecError(
                f"gives the stage's length twice (epochs {self.epochs}, iterations "
                f"{self.iterations}); keep one of the two",
                path=["iterations"],
            )
        return self

    @model_validator(mode="after")
    def _rfs(self) -> Optim:
        if "rfs_threshold" in self.model_fields_set and self.sampler != "rfs":
            raise SpecError(
                "applies to sampler: rfs only; set sampler: rfs or remove it",
                path=["rfs_threshold"],
            )
        return self

    @model_validator(mode="after")
    def _milestones(self) -> Optim:
        steps = self.lr_milestones
        if steps is None:
            return self
        increasing = all(a < b for a, b in zip(steps, steps[1:], strict=False))
        n, unit = self.length()
        if not increasing or any(m >= n for m in steps):
            shown = ", ".join(f"{m:g}" for m in steps)
            raise SpecError(
                f"[{shown}] are not increasing {unit} below {unit} ({n}); list them in order, "
                f"each below {n} (e.g. [{n * 2 / 3:.6g}, {n * 11 / 12:.6g}]), or remove the key "
                f"for decay at 2/3 and 8/9 of the {unit}",
                path=["lr_milestones"],
            )
        return self

    def optim(self) -> dict[str, Any]:
        """These settings as ``ltmodels.trial.config.StageConfig`` keyword arguments."""
        out = {k: getattr(self, k) for k in OPTIM_KEYS}
        if out["lr_milestones"] is not None:
            out["lr_milestones"] = tuple(out["lr_milestones"])
        return out


class Stage1(Optim):
    """Stage 1 of a decoupled schedule: the baseline every trial fine-tunes from.
    ``evaluate``: also evaluate it as is, once per study: a ``stage1`` row in the results,
    the papers' "before re-balancing" line."""

    loss: str = "ce"
    loss_params: dict[str, Any] = Field(default_factory=dict)
    evaluate: StrictBool = False

    def trained(self, mode: Literal["python", "json"] = "python") -> dict[str, Any]:
        """What stage 1 trains (what the configuration and stage-1 hashes cover): every
        field but ``evaluate``, :data:`LATE_KEYS` left out while unset."""
        return hashed(self.model_dump(mode=mode, exclude={"evaluate"}))

    @model_validator(mode="after")
    def _loss(self) -> Stage1:
        if self.loss not in DOMAINS:
            raise SpecError(
                f"unknown loss {self.loss!r}; valid losses: {', '.join(sorted(DOMAINS))}",
                path=["loss"],
            )
        domains = DOMAINS[self.loss]
        checked = {}
        for k, v in self.loss_params.items():
            if k not in domains:
                raise SpecError(
                    f"unknown parameter of loss {self.loss!r}; valid: {', '.join(domains)}",
                    path=["loss_params", k],
                )
            try:
                checked[k] = domains[k].check(self.loss, k, v)
            except ConfigError as exc:
                raise SpecError(str(exc), path=["loss_params", k]) from None
        self.loss_params = checked
        return self


def _predictor_only() -> list[FinetunePart]:
    return ["box_predictor"]


class Stage2(Optim):
    """Stage 2 of a decoupled schedule: fine-tunes ``finetune`` with the trial's loss.
    ``use_feature_cache`` defaults to true exactly when only the box predictor trains."""

    finetune: list[FinetunePart] = Field(default_factory=_predictor_only, min_length=1)
    use_feature_cache: StrictBool | None = None
    # feature-cache trials report box metrics from the cache; full_eval also runs the whole
    # model over the validation set (masks, segm metrics): slower, for the trials that matter
    full_eval: StrictBool = False
    # after the trials, the Pareto front's (configuration, seed) runs again with full_eval:
    # segm numbers where they matter, at a whole-model pass per front run (not hashed)
    segm_front: StrictBool = False

    @model_validator(mode="after")
    def _cache(self) -> Stage2:
        if len(set(self.finetune)) != len(self.finetune):
            raise SpecError("lists a part twice; list each once", path=["finetune"])
        if self.use_feature_cache and self.finetune != ["box_predictor"]:
            raise SpecError(
                f"the feature cache freezes everything but the box predictor, but finetune is "
                f"{self.finetune}; set use_feature_cache: false or finetune: [box_predictor]",
                path=["use_feature_cache"],
            )
        for key in ("full_eval", "segm_front"):
            if getattr(self, key) and not self.feature_cache:
                raise SpecError(
                    "applies to feature-cache trials only (other trials always evaluate the "
                    "whole model); remove it or use finetune: [box_predictor]",
                    path=[key],
                )
        if self.segm_front and self.full_eval:
            raise SpecError(
                "full_eval already evaluates every trial with segm; drop one of the two",
                path=["segm_front"],
            )
        return self

    @property
    def feature_cache(self) -> bool:
        """Whether stage 2 trains on cached box-head features."""
        if self.use_feature_cache is None:
            return self.finetune == ["box_predictor"]
        return self.use_feature_cache


class TrainingSpec(Optim):
    """``end_to_end`` uses the optimisation keys here; ``decoupled`` needs ``stage1`` and
    ``stage2`` and takes its optimisation keys from them only."""

    schedule: Literal["end_to_end", "decoupled"] = "end_to_end"
    stage1: Stage1 | None = None
    stage2: Stage2 | None = None

    @model_validator(mode="after")
    def _schedule(self) -> TrainingSpec:
        if self.schedule == "end_to_end":
            for key in ("stage1", "stage2"):
                if getattr(self, key) is not None:
                    raise SpecError(
                        "applies to schedule: decoupled only; remove it or set that schedule",
                        path=[key],
                    )
            return self
        for key in ("stage1", "stage2"):
            if getattr(self, key) is None:
                raise SpecError(
                    f"missing; schedule decoupled needs it, e.g. {key}: {{epochs: 12, lr: 0.02}}",
                    path=[key],
                )
        for key in OPTIM_KEYS:
            if key in self.model_fields_set:
                raise SpecError(
                    "is set per stage under schedule: decoupled; move it into stage1 or stage2",
                    path=[key],
                )
        return self

    @property
    def stage1_row(self) -> bool:
        """Whether the study stores a stage-1 row (``stage1.evaluate``)."""
        return self.stage1 is not None and self.stage1.evaluate

    def effective(self) -> dict[str, Any]:
        """The settings that define training (what a configuration hash covers)."""
        if self.schedule == "end_to_end":
            return {"schedule": self.schedule, **hashed(self.optim())}
        assert self.stage1 is not None and self.stage2 is not None
        stage2 = {
            **self.stage2.model_dump(exclude={"segm_front"}),  # evaluation only: not hashed
            "use_feature_cache": self.stage2.feature_cache,
        }
        return {
            "schedule": self.schedule,
            "stage1": self.stage1.trained(),
            "stage2": hashed(stage2),
        }


__all__ = [
    "FINETUNE_PARTS", "LATE_KEYS", "OPTIM_KEYS", "Optim", "Stage1", "Stage2", "TrainingSpec",
    "hashed",
]  # fmt: skip
