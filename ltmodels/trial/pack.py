"""Packed feature-cache trials: K (configuration, seed) runs on one pass over the cache.

A decoupled trial whose stage 2 trains only the box predictor on the RoI-feature cache
(``use_feature_cache``) spends its time drawing and reading batches of cached RoIs, taking
SGD steps and evaluating. Runs that agree on everything but their loss and its parameters
(:func:`pack_key`: data, model, stage 1, seed, stage-2 epochs, batch, device, cache) draw the
same batches, so :func:`run_pack` trains them together: stage 1, the datasets and the cache
are opened once, each batch is drawn and read once and every member steps on it
(:func:`ltmodels.cache.train.train_pack`), and one read of the validation features scores
every member (:func:`ltmodels.cache.evaluate.evaluate_cached`).

Each member's result equals that of the same configuration run alone (:func:`run_pack` of a
single configuration is what :func:`ltmodels.trial.run.run_trial` runs for such a trial):
its model is built and seeded as alone and its torch RNG state is its own. A member that
fails (a loss that cannot be built, a non-finite loss, an evaluation fault) is returned as
its exception; the other members go on.

Timings of a member (``TrialResult.timings``): ``stage1`` and ``cache`` are the pack's,
``train`` is its own steps plus its share (1/K) of the batch drawing and reading, ``eval`` its
share of the pack's evaluation; ``pack_size`` is K.

Memory: each member holds a whole detector (its stage-2 model) while the pack trains. A pack
whose members would hold more than :data:`MEMORY_SHARE` of the memory available when it
starts trains in chunks of as many members as fit (:func:`members_that_fit`), one after the
other, on the same stage 1 and cache; a member's result does not depend on its chunk.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ltmodels.cache.build import build_feature_cache
from ltmodels.cache.evaluate import evaluate_cached
from ltmodels.cache.member import Member, Optim
from ltmodels.cache.train import PackTimes, train_pack
from ltmodels.engine import phases
from ltmodels.engine.checkpoint import recorded_sha256
from ltmodels.engine.threads import torch_threads
from ltmodels.trial.config import TrialConfig, TrialResult, pack_key, packable
from ltmodels.trial.schedules import (
    device_of,
    ensure_stage1,
    full_evaluation,
    model_spec,
    stage2_model,
)
from ltmodels.trial.stages import Timer, datasets

log = logging.getLogger(__name__)

MEMORY_SHARE = 0.25
"""Of the memory available when a pack starts, the share its members' models may hold."""


def available_memory() -> int | None:
    """Bytes of memory available to new allocations (Linux ``MemAvailable``); ``None``
    where it cannot be read."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def member_bytes(spec: Any, num_classes: int) -> int:
    """Bytes one member holds: its detector's parameters and buffers (fp32), plus gradient
    and momentum of the box predictor it trains. The detector is built on the ``meta``
    device (no memory, a few milliseconds)."""
    from ltmodels.losses import build_loss
    from ltmodels.modeling.detector import build_detector

    with torch.device("meta"):
        model = build_detector(spec, build_loss("ce", num_classes=num_classes), num_classes)
    held = sum(t.numel() for t in (*model.parameters(), *model.buffers()))
    trained = sum(p.numel() for p in model.roi_heads.box_predictor.parameters())
    return 4 * (held + 2 * trained)


def members_that_fit(per_member: int, k: int, available: int | None) -> int:
    """How many of ``k`` members one chunk trains: all of them, unless they would hold more
    than :data:`MEMORY_SHARE` of ``available`` bytes (``None``: unknown, no bound); at
    least 1."""
    if available is None or per_member <= 0:
        return k
    return max(1, min(k, int(MEMORY_SHARE * available) // per_member))


def _optim(cfg: TrialConfig) -> Optim:
    s = cfg.train
    fractions = s.milestone_fractions()
    if fractions is None:
        return Optim(s.lr, s.momentum, s.weight_decay, s.warmup_iters)
    return Optim(s.lr, s.momentum, s.weight_decay, s.warmup_iters, fractions)


def run_pack(
    cfgs: Sequence[TrialConfig], *, times: PackTimes | None = None
) -> list[TrialResult | Exception]:
    """Train and evaluate the members of one pack; per member its result or its exception.

    A pack of one raises its exception instead (as a trial run alone does). ``times`` is
    filled with the pack's phase times (:class:`~ltmodels.cache.train.PackTimes`).

    Raises:
        ValueError: the configurations do not share one :func:`pack_key`.
    """
    if not cfgs or len({pack_key(c) for c in cfgs}) != 1:
        raise ValueError("a pack needs one or more configurations with the same pack_key")
    first = cfgs[0]
    device = device_of(first.device)
    spec = model_spec(dict(first.model))
    phases.report("data")
    train_set, val_set = datasets(first.data, masks=spec.masks)
    timer = Timer()
    with timer("stage1", report=False):  # ensure_stage1 reports what it does
        weights, key = ensure_stage1(first, spec, train_set, device)
    per = 1  # a run alone (every unpacked trial) skips the estimate
    if len(cfgs) > 1:
        per_member = member_bytes(spec, train_set.num_classes)
        per = members_that_fit(per_member, len(cfgs), available_memory())
    if per < len(cfgs):
        log.info("pack of %d: in chunks of %d (memory)", len(cfgs), per)
    out: list[TrialResult | Exception] = []
    for lo in range(0, len(cfgs), per):
        chunk_times = PackTimes()
        out += _run_chunk(
            cfgs[lo : lo + per], len(cfgs) == 1, (train_set, val_set), key, weights,
            _copy(timer), chunk_times,
        )  # fmt: skip
        if times is not None:
            times.sample += chunk_times.sample
            times.read += chunk_times.read
            times.step = [*(times.step if lo else []), *chunk_times.step]
    return out


def _copy(timer: Timer) -> Timer:
    """A timer that starts from ``timer``'s totals (each chunk adds its own phases)."""
    out = Timer()
    out.totals.update(timer.totals)
    return out


def _run_chunk(
    cfgs: Sequence[TrialConfig],
    alone: bool,
    sets: tuple[Any, Any],
    key: str,
    weights: Path,
    timer: Timer,
    times: PackTimes,
) -> list[TrialResult | Exception]:
    first = cfgs[0]
    device = device_of(first.device)
    spec = model_spec(dict(first.model))
    train_set = sets[0]
    out: list[TrialResult | Exception | None] = [None] * len(cfgs)
    built: list[tuple[int, nn.Module, Member]] = []
    for i, cfg in enumerate(cfgs):
        try:
            model = stage2_model(cfg, spec, train_set, weights, device)
        except Exception as exc:
            if alone:
                raise
            out[i] = exc
            continue
        rh = model.roi_heads
        member = Member(
            rh.box_predictor,
            rh.cls_loss,
            _optim(cfg),
            rng_state=torch.get_rng_state(),
            name=f"{cfg.train.loss}#{i}",
        )
        built.append((i, model, member))
    if built:
        results = _train_and_evaluate(cfgs, built, sets, key, weights, timer, times, alone)
        for i, result in results.items():
            out[i] = result
    return [r if r is not None else RuntimeError("no result") for r in out]


def _train_and_evaluate(
    cfgs: Sequence[TrialConfig],
    built: list[tuple[int, nn.Module, Member]],
    sets: tuple[Any, Any],
    key: str,
    weights: Path,
    timer: Timer,
    times: PackTimes,
    alone: bool,
) -> dict[int, TrialResult | Exception]:
    from ltmodels.data import LVISDetection

    first = cfgs[0]
    device = device_of(first.device)
    spec = model_spec(dict(first.model))
    plain_train = LVISDetection(first.data.train_json, first.data.train_root, with_masks=False)
    lend = first.build_threads if device.type == "cpu" else 0
    with timer("cache"), torch_threads(lend):  # the waiting trials' cores build it too
        cache = build_feature_cache(
            built[0][1],
            plain_train,
            sets[1],
            Path(first.cache_dir) / "features",
            key=key,
            source_sha256=recorded_sha256(weights),
        )
    members = [m for _, _, m in built]
    with timer("train"):
        train_pack(
            members,
            cache,
            epochs=first.train.epochs,
            batch_images=first.train.batch_size,
            iterations=first.train.iterations,
            rois_per_image=spec.box_batch_size_per_image,
            positive_fraction=spec.box_positive_fraction,
            seed=first.seed,
            device=device,
            isolate_failures=not alone,
            times=times,
        )
    live = [(i, model, m) for i, model, m in built if m.active]
    with timer("eval"):
        scored = _evaluate(live, cache, first, spec, device, alone)
    k = len(built)
    shared = (times.sample + times.read) / k
    out: dict[int, TrialResult | Exception] = {}
    for j, (i, model, m) in enumerate(built):
        if m.error is not None:
            out[i] = m.error if isinstance(m.error, Exception) else RuntimeError(str(m.error))
            continue
        result = scored[i]
        if isinstance(result, Exception):
            out[i] = result
            continue
        metrics, per_cat = result
        rows = [{**r, "iou_type": "bbox"} for r in per_cat]
        cfg = cfgs[i]
        full_eval = 0.0
        if cfg.full_eval:
            t0 = time.perf_counter()
            full, rows = full_evaluation(model, sets[1], cfg, spec, device)
            full_eval = time.perf_counter() - t0
            metrics = {**metrics, **{k2: v for k2, v in full.items() if k2.startswith("segm/")}}
        timings = dict(timer.totals)
        timings["train"] = times.step[j] + shared
        timings["eval"] = timer.totals["eval"] / max(len(live), 1)
        if cfg.full_eval:
            timings["full_eval"] = full_eval
        if k > 1:
            timings["pack_size"] = float(k)
        out[i] = TrialResult(metrics, m.history, rows, timings)
    return out


def _evaluate(
    live: list[tuple[int, nn.Module, Member]],
    cache: Any,
    cfg: TrialConfig,
    spec: Any,
    device: torch.device,
    alone: bool,
) -> dict[int, tuple[dict[str, float], list[dict[str, Any]]] | Exception]:
    """Every live member's bbox metrics from one read of the validation features; if that
    fails, each member alone, so that one member's fault fails that member only."""
    opts = {
        "score_thresh": spec.box_score_thresh,
        "detections_per_img": spec.box_detections_per_img,
        "device": device,
    }
    pairs = [(m.predictor, m.loss) for _, _, m in live]
    try:
        return {
            i: r
            for (i, _, _), r in zip(
                live, evaluate_cached(pairs, cache, cfg.data.val_json, **opts), strict=True
            )
        }
    except Exception:
        if alone or len(live) == 1:
            raise
        log.warning("the pack's evaluation failed; evaluating its members one by one")
    out: dict[int, tuple[dict[str, float], list[dict[str, Any]]] | Exception] = {}
    for (i, _, _), pair in zip(live, pairs, strict=True):
        try:
            [out[i]] = evaluate_cached([pair], cache, cfg.data.val_json, **opts)
        except Exception as exc:
            out[i] = exc
    return out


__all__ = ["pack_key", "packable", "run_pack"]
