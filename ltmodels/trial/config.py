"""The configuration of one trial, as plain data: what every other trial module imports.

It imports nothing of ``ltmodels`` (no torch either), so the modules that train
(:mod:`~ltmodels.trial.stages`, :mod:`~ltmodels.trial.schedules`) and the entry point
(:mod:`ltmodels.trial.run`) all depend on it and never on each other in a circle.

A trial trains (or fine-tunes) a Mask R-CNN with one loss and one seed and evaluates it
with the LVIS metrics. ``ltsearch`` builds a :class:`TrialConfig` from a study spec and
runs :func:`ltmodels.trial.run.run_trial` in-process (one CPU worker) or inside each Ray
Train worker (DDP).

Schedules:
    ``end_to_end``: the whole detector trains with the trial's loss (C2AM, ROG).
    ``decoupled``: stage 1 (``TrialConfig.stage1``: baseline loss and sampler) is trained
    once, cached under a hash of its spec and reused by every trial; stage 2
    (``TrialConfig.train``) fine-tunes only the parts named in ``finetune``.
    ``stage1_only``: no trial stage; the (cached) stage-1 model of ``TrialConfig.stage1``
    evaluated as is, the "before re-balancing" row of a decoupled study (``train`` is
    not used).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

FINETUNE_PARTS = ("backbone", "rpn", "box_head", "box_predictor", "mask_head")


@dataclass(frozen=True)
class DataConfig:
    """Where an LVIS-format dataset lives (the synthetic one is written in this format)."""

    train_json: str
    val_json: str
    train_root: str
    val_root: str


@dataclass(frozen=True)
class StageConfig:
    """How one training stage runs.

    Attributes:
        loss, loss_params: registered loss name and its (validated) parameters.
        epochs, lr, batch_size: batch size is the total over all workers.
        sampler: ``"random"`` or ``"rfs"`` (Repeat Factor Sampling, threshold
            ``rfs_threshold``).
        finetune: parts that train (subset of :data:`FINETUNE_PARTS`); empty = all.
        use_feature_cache: stage 2 trains the box predictor on cached box-head features.
        seed: seed of this stage (stage 1 keeps its own, so all trials share it).
        lr_milestones: epochs (increasing, below ``epochs``) at whose end the lr is
            multiplied by 0.1; ``None``: at 2/3 and 8/9 of the iterations (the engine's
            default); ``()``: no decay. See :meth:`milestone_fractions`.
        iterations: the stage's length in optimizer steps instead of ``epochs`` (a
            detectron2-style budget, e.g. 90k): it trains whole epochs and cuts the last
            one at the budget; ``lr_milestones`` are then iterations. ``None``: epochs.
    """

    loss: str = "ce"
    loss_params: Mapping[str, Any] = field(default_factory=dict)
    epochs: int = 12
    lr: float = 0.02
    batch_size: int = 16
    sampler: str = "random"
    rfs_threshold: float = 1e-3
    warmup_iters: int = 500
    momentum: float = 0.9
    weight_decay: float = 1e-4
    max_norm: float | None = None
    finetune: tuple[str, ...] = ()
    use_feature_cache: bool = False
    seed: int = 0
    lr_milestones: tuple[float, ...] | None = None
    iterations: int | None = None

    def milestone_fractions(self) -> tuple[float, ...] | None:
        """``lr_milestones`` as fractions of the stage's iterations (what
        ``ltmodels.engine.train.WarmupMultiStepLR`` takes); ``None`` when unset."""
        if self.lr_milestones is None:
            return None
        length = self.epochs if self.iterations is None else self.iterations
        return tuple(m / length for m in self.lr_milestones)

    def budget(self, steps_per_epoch: int) -> tuple[int, int]:
        """``(epochs, iterations)`` this stage trains with ``steps_per_epoch`` iterations an
        epoch: ``epochs`` whole epochs, or under an iteration budget as many epochs as it
        takes, the last one cut short."""
        steps = max(1, steps_per_epoch)
        if self.iterations is None:
            return self.epochs, self.epochs * steps
        return math.ceil(self.iterations / steps), self.iterations


@dataclass(frozen=True)
class TrialConfig:
    """Everything one (configuration, seed) run needs.

    Attributes:
        data: dataset paths.
        model: keyword overrides of :class:`ltmodels.modeling.detector.ModelSpec`.
        schedule: ``"end_to_end"``, ``"decoupled"`` or ``"stage1_only"``.
        train: the trial's own stage (whole training, or stage 2), with the trial's loss.
        stage1: the shared baseline stage when ``schedule == "decoupled"``.
        seed: the trial's seed (data order, initialisation of what it trains).
        eval_masks: also compute segm metrics (a full-model pass).
        device: ``"cpu"`` or ``"cuda"``; AMP is used on CUDA only.
        cache_dir: where stage-1 checkpoints and feature caches are shared.
        loader_workers: DataLoader worker processes (0 on a 2-core CPU machine).
        full_eval: for a feature-cache trial, also run the whole model (masks, segm
            metrics) after the cached box evaluation.
        stop_at_epoch: train the trial's own stage only up to this epoch (checkpointed as
            usual), evaluate and return; a later call with a later epoch (or ``None``: all
            of ``train.epochs``) resumes from that checkpoint, exactly as an uninterrupted
            run would have gone on (the rungs of early stopping, ``ltsearch.run.rungs``).
            The learning-rate schedule always spans ``train.epochs``. Not for a
            feature-cache stage 2 (``use_feature_cache``), which trains in one go.
        rung_ema: with ``stop_at_epoch`` before the end, evaluate there an exponential moving
            average of the trained weights (:mod:`ltmodels.engine.ema`) instead of the
            weights themselves; the value is its half-life in epochs. The average is kept
            beside the checkpoint so that the next rung goes on with it; training and the
            run's final evaluation are the same with or without it.
        rung_cooldown: with ``stop_at_epoch`` before the end, evaluate there a copy of the
            model trained this many epochs further (at most 1) with the learning rate
            decaying linearly to 0 (:func:`ltmodels.trial.stages.cool_down`); the copy is
            then dropped, and the checkpoint the next rung goes on from is the rung's own.
        build_threads: torch threads for building what the study's trials share (the
            stage-1 model, the feature cache) on CPU while they wait for it
            (:mod:`ltmodels.engine.threads`); 0 keeps the process's own setting.
    """

    data: DataConfig
    train: StageConfig
    model: Mapping[str, Any] = field(default_factory=dict)
    schedule: str = "end_to_end"
    stage1: StageConfig | None = None
    seed: int = 0
    eval_masks: bool = True
    device: str = "cpu"
    cache_dir: str = ""
    loader_workers: int = 0
    full_eval: bool = False
    stop_at_epoch: int | None = None
    rung_ema: float | None = None
    rung_cooldown: float | None = None
    build_threads: int = 0


@dataclass
class TrialResult:
    """What a trial returns: final metrics, per-epoch history, per-category AP, timings."""

    metrics: dict[str, float]
    epochs: list[dict[str, Any]] = field(default_factory=list)
    categories: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrialResult:
        return cls(**dict(data))


def stage_key_fields(stage: StageConfig) -> dict[str, Any]:
    """A stage's fields for the keys that name cached work (stage 1's cache, packs): an
    unset ``lr_milestones`` or ``iterations`` is left out, so the keys made before they
    existed stay valid."""
    out = asdict(stage)
    for late in ("lr_milestones", "iterations"):
        if out[late] is None:
            del out[late]
    return out


def packable(cfg: TrialConfig) -> bool:
    """A decoupled trial whose stage 2 trains the box predictor on the feature cache."""
    return cfg.schedule == "decoupled" and cfg.train.use_feature_cache and cfg.stage1 is not None


def pack_key(cfg: TrialConfig) -> str:
    """What members of one pack share: everything but the stage-2 loss, its parameters and
    its optimiser settings (lr schedule included). Raises ValueError for a trial that
    cannot be packed."""
    if not packable(cfg):
        raise ValueError("only decoupled feature-cache trials can be packed")
    optim = {"lr": 0.0, "momentum": 0.0, "weight_decay": 0.0, "lr_milestones": None}
    shared = replace(cfg.train, loss="", loss_params={}, **optim)
    payload = {
        "data": asdict(cfg.data),
        "model": dict(cfg.model),
        "stage1": stage_key_fields(cfg.stage1) if cfg.stage1 is not None else None,
        "train": stage_key_fields(shared),
        "seed": cfg.seed,
        "device": cfg.device,
        "cache_dir": cfg.cache_dir,
    }
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def trial_config_to_dict(cfg: TrialConfig) -> dict[str, Any]:
    """Plain data (JSON-able) for shipping a config to Ray Train workers."""
    return asdict(cfg)


def trial_config_from_dict(data: Mapping[str, Any]) -> TrialConfig:
    d = dict(data)
    d["data"] = DataConfig(**d["data"])
    d["train"] = _stage(d["train"])
    d["stage1"] = None if d.get("stage1") is None else _stage(d["stage1"])
    return TrialConfig(**d)


def _stage(data: Mapping[str, Any]) -> StageConfig:
    d = dict(data)
    d["finetune"] = tuple(d.get("finetune", ()))
    if d.get("lr_milestones") is not None:
        d["lr_milestones"] = tuple(d["lr_milestones"])
    return StageConfig(**d)
