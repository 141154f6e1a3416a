"""One Ray Tune trial: every seed of one configuration, each stored in parquet.

A Tune trial is one configuration (loss + hyperparameters). It runs the study's seeds in
turn; each finished (configuration, seed) is written to the study's parquet store at once,
so a crash loses at most the seed in flight, and a (configuration, seed) already stored
is never run again (a resumed study, or a sampler proposing a configuration twice, reads
it back instead). The trial then reports the mean over seeds of every metric to Tune.

A seed runs in-process when the study asks for one CPU worker (a ``TorchTrainer`` costs
~11.5 s of start-up, more than a cached decoupled trial); with several workers or GPUs it
runs as a Ray Train ``TorchTrainer`` (DDP: gloo on CPU, NCCL on GPU), see
:mod:`ltsearch.run.distributed`. With ``resources.pack`` K > 1 its seeds run in packs with
other trials' (:mod:`ltsearch.run.packing`).
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ltmodels.engine.atomic import disk_full
from ltmodels.errors import ConfigError
from ltsearch.errors import SpecError
from ltsearch.run.records import (
    base_row,
    choice_hash,
    execute_recorded,
    first_line,
    run_dir,
    stored_metrics,
)
from ltsearch.run.reuse import copy_finished, find_finished
from ltsearch.spec.paths import require_absolute
from ltsearch.spec.study import StudySpec, spec_from_dict
from ltsearch.store import ResultStore

CACHE_DIRNAME = "_cache"


@dataclass(frozen=True)
class PackSetup:
    """A packed study's broker actor (its Ray name) and pack size K."""

    broker: str
    size: int


@dataclass(frozen=True)
class StudyContext:
    """What every trial of a study needs, as plain picklable data."""

    spec: dict[str, Any]
    study_dir: str
    data: dict[str, str]  # ltmodels.trial.config.DataConfig fields, resolved before Ray starts

    pack: PackSetup | None = None

    @property
    def cache_dir(self) -> str:
        """Shared by every study under the same storage root (stage 1, feature caches)."""
        return str(Path(self.study_dir).parent / CACHE_DIRNAME)

    def study(self) -> StudySpec:
        return spec_from_dict(self.spec)


def resolve_data(spec: StudySpec) -> dict[str, str]:
    """Dataset paths of a spec; the synthetic dataset is generated (once) here.

    Every path it returns is absolute (the loader made the spec's paths absolute; a Ray
    Tune trial runs in a working directory of its own).

    Raises:
        SpecError: a missing LVIS file or directory, or synthetic-dataset settings the
            generator rejects (checked before anything is generated).
    """
    require_absolute(spec)
    ds = spec.dataset
    if ds.kind == "synthetic":
        from ltmodels.data.synthetic import SynthConfig, ensure_synthetic

        try:
            synth = SynthConfig(**ds.synth_kwargs())
        except ConfigError as exc:  # a bound the spec does not know (e.g. image_size >= 64)
            raise SpecError(str(exc), path=["dataset"]) from None
        cache = spec.study_dir.parent / CACHE_DIRNAME / "datasets"
        paths = ensure_synthetic(cache, synth)
        root = str(paths.root)
        return {
            "train_json": str(paths.train_json),
            "val_json": str(paths.val_json),
            "train_root": root,
            "val_root": root,
        }
    ds.check_paths()  # the deep check reads every image header: on request (--check-data)
    return {
        "train_json": ds.train,
        "val_json": ds.val,
        "train_root": ds.train_images or ds.images,
        "val_root": ds.val_images or ds.images,
    }


def trial_config(ctx: StudyContext, spec: StudySpec, choice: Mapping[str, Any], seed: int):
    """The ``ltmodels.trial.config.TrialConfig`` of one (configuration, seed)."""
    from ltmodels.trial.config import DataConfig, StageConfig, TrialConfig

    t = spec.training
    loss = {"loss": choice["loss"], "loss_params": dict(choice["loss_params"])}
    full_eval = t.stage2 is not None and t.stage2.full_eval
    device = "cuda" if spec.resources.gpus_per_worker > 0 else "cpu"
    if t.schedule == "end_to_end":
        train = StageConfig(**t.optim(), **loss, seed=seed)
        stage1 = None
    else:
        assert t.stage1 is not None and t.stage2 is not None
        s1, s2 = t.stage1, t.stage2
        stage1 = StageConfig(**s1.optim(), loss=s1.loss, loss_params=dict(s1.loss_params))
        train = StageConfig(
            **s2.optim(),
            **loss,
            finetune=tuple(s2.finetune),
            use_feature_cache=s2.feature_cache,
            seed=seed,
        )
    return TrialConfig(
        build_threads=build_threads(spec),
        data=DataConfig(**ctx.data),
        train=train,
        stage1=stage1,
        model=spec.model.overrides(),
        schedule=t.schedule,
        seed=seed,
        eval_masks=bool(spec.model.masks if spec.model.masks is not None else True),
        device=device,
        cache_dir=ctx.cache_dir,
        full_eval=full_eval,
    )


def build_threads(spec: StudySpec) -> int:
    """Threads for a shared build (stage 1, the feature cache) in a one-CPU-worker trial:
    ``resources.build_threads``, else the CPUs of the study's concurrent trials (which all
    wait for that build) that this node has; 0 (the process's own) for DDP or GPU trials."""
    r = spec.resources
    if r.workers != 1 or r.gpus_per_worker > 0:
        return 0
    if r.build_threads is not None:
        return r.build_threads
    from ltmodels.engine.threads import build_threads_for, node_cpus

    return build_threads_for(r.max_concurrent_trials, r.cpus_per_worker, node_cpus())


def run_seed(
    ctx: StudyContext,
    spec: StudySpec,
    choice: Mapping[str, Any],
    seed: int,
    *,
    tune_trial_id: str,
    execute: Callable[..., Any],
) -> dict[str, float]:
    """Run (or read back) one seed; write its parquet parts; raise if it failed."""
    store = ResultStore(ctx.study_dir)
    chash = choice_hash(choice, spec)
    stored = stored_metrics(store, chash, seed)
    if stored is not None:
        return stored
    cfg = trial_config(ctx, spec, choice, seed)
    workdir = run_dir(ctx, chash, seed)
    t0 = time.perf_counter()
    row = base_row(spec, choice, chash, seed, tune_trial_id, cfg.device)
    found = find_finished(spec, Path(ctx.study_dir), row)
    if found is not None:  # another study of this storage ran it: copied, not trained
        return copy_finished(found, store, row)
    bind = getattr(execute, "bind", None)  # a packed run names its pack in the row
    if bind is not None:  # per trial: two trials may run the same configuration at once
        bind(f"{tune_trial_id}:{chash}-s{seed}", row)
    scale = ctx.pack.size if ctx.pack is not None else 1
    result = execute_recorded(spec, store, row, t0, cfg, workdir, execute, timeout_scale=scale)
    timings = {k: v for k, v in result.timings.items() if k != "pack_size"}
    row.update(
        status="ok",
        error=None,
        **result.metrics,
        **{f"time_{k}_s": v for k, v in timings.items()},
        time_total_s=time.perf_counter() - t0,
        finished_at=datetime.now(timezone.utc).isoformat(),
    )
    store.write_epochs(chash, seed, result.epochs)
    store.write_categories(chash, seed, result.categories)
    store.write_trial(row)  # last: its presence means the seed is complete
    return dict(result.metrics)


ERROR_KEY = "ltsearch_error"  # a trial's result when one of its runs failed
STOP_KEY = "ltsearch_stop"  # ... when the storage is full: the study stops, resumable


def mean_metrics(per_seed: list[dict[str, float]]) -> dict[str, float]:
    """Mean of every metric over the seeds where it is defined.

    LVIS reports -1 for a metric it cannot define (e.g. APf without frequent classes in the
    validation set); such values, NaN and missing keys are left out of the mean, and a
    metric undefined in every seed stays -1 (NaN when no seed reported it at all).
    """
    keys = sorted({k for m in per_seed for k in m})
    out = {}
    for k in keys:
        seen = [m[k] for m in per_seed if k in m and not math.isnan(m[k])]
        vals = [v for v in seen if v >= 0]
        out[k] = sum(vals) / len(vals) if vals else (-1.0 if seen else float("nan"))
    return out


def execute_trial(cfg: Any, *, workdir: Path, resources: Any) -> Any:
    """Run one seed here (one CPU worker) or as a Ray Train job (several workers/GPUs)."""
    if resources.workers == 1 and resources.gpus_per_worker == 0:
        from ltmodels.trial.run import run_trial

        return run_trial(cfg, workdir=workdir)
    from ltsearch.run.distributed import run_distributed

    return run_distributed(cfg, workdir=workdir, resources=resources)


def run_pack_here(cfgs: Any) -> list[Any]:
    """The members of a pack, trained in this process (:func:`ltmodels.trial.pack.run_pack`)."""
    from ltmodels.trial.pack import run_pack

    return run_pack(cfgs)


def _log_to_driver() -> None:
    """Show ltmodels' progress lines (stage 1 epochs, cache builds) on the driver: Ray
    forwards a worker's stdout there, prefixed with the trial's process."""
    logger = logging.getLogger("ltmodels")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def make_trial_fn(
    ctx: StudyContext,
    execute: Callable[..., Any] = execute_trial,
    execute_pack: Callable[[Any], list[Any]] = run_pack_here,
):
    """The Tune function trainable of a study (``config`` holds the flat Optuna params);
    ``execute_pack`` trains a pack when this trial leads one (``ctx.pack``)."""

    def trial_fn(config: dict[str, Any]) -> None:
        from ray import tune

        from ltmodels.engine import phases
        from ltsearch.live.state import PhaseFile, activate
        from ltsearch.rows import config_label
        from ltsearch.run.rungs import climb
        from ltsearch.space import params_to_config

        _log_to_driver()
        spec = ctx.study()
        choice = params_to_config(config)
        tid = tune.get_context().get_trial_id() or "local"
        per_seed = []
        label = config_label(choice["loss"], choice["loss_params"])
        live = PhaseFile(ctx.study_dir, tid, label, len(spec.search.seeds))
        unlisten = phases.add_listener(live)
        activate(live)  # a DDP trial's rank 0 writes it on (run.distributed)
        broker = None
        try:
            seed_execute = execute
            if ctx.pack is not None:
                import ray

                from ltsearch.run.packing import PackedExecute, find_broker

                broker = find_broker(ctx.pack.broker)
                ray.get(broker.enter.remote(tid))
                seed_execute = PackedExecute(broker, tid, execute_pack, execute)
            # early stopping: up the rungs first (returns at once without them)
            climb(ctx, spec, choice, tune_trial_id=tid, execute=execute, report=tune.report,
                  on_seed=live.seed)  # fmt: skip
            for i, seed in enumerate(spec.search.seeds):
                live.seed(i, seed)
                per_seed.append(
                    run_seed(ctx, spec, choice, seed, tune_trial_id=tid, execute=seed_execute)
                )
        except Exception as exc:  # its failed row is written (run_seed)
            # reported, not raised: Ray Tune would retry a raised error as if the process
            # had died (search.max_retries); a run's own error is final for its seed
            full = disk_full(exc)
            if full:
                tune.report({STOP_KEY: full, "seeds_done": 0})
            else:
                tune.report({ERROR_KEY: first_line(f"{type(exc).__name__}: {exc}")})
            return
        finally:
            if broker is not None:
                broker.leave.remote(tid)
            unlisten()
            activate(None)
            live.close()
        tune.report({**mean_metrics(per_seed), "seeds_done": len(per_seed)})

    return trial_fn


__all__ = [
    "ERROR_KEY", "STOP_KEY", "PackSetup", "StudyContext", "build_threads", "execute_trial",
    "make_trial_fn", "mean_metrics", "resolve_data", "run_pack_here", "run_seed", "trial_config",
]  # fmt: skip
