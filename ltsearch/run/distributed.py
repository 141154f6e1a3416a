"""One seed of a trial as a Ray Train ``TorchTrainer`` (DDP over several workers or GPUs).

Every worker runs :func:`ltmodels.trial.run.run_trial` with ``torch.distributed`` initialised by
Ray Train (gloo on CPU, NCCL on GPU); the samplers shard per worker and loss statistics are
all-reduced (``ltmodels.engine.distributed``). Rank 0 reports each epoch's metrics together with
the run's checkpoint directory (Train V2 keeps only metrics reported with a checkpoint) and
writes the final :class:`~ltmodels.trial.config.TrialResult` as JSON into the run directory, which
must be on storage every node sees (the study's storage). A restarted run resumes from the
checkpoint ``run_trial`` keeps in that directory.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

RESULT_FILE = "trial_result.json"
CHECKPOINT_FILE = "checkpoint.pt"  # what run_trial keeps in its workdir
STORAGE_NAME = "train"  # Ray Train's run folder inside the trial's workdir


def _train_loop(loop_config: dict[str, Any]) -> None:
    import ray.train
    from ray.train import Checkpoint

    from ltmodels.engine.distributed import rank
    from ltmodels.trial.config import trial_config_from_dict
    from ltmodels.trial.run import run_trial

    cfg = trial_config_from_dict(loop_config["trial"])
    workdir = Path(loop_config["workdir"])
    if rank() == 0 and loop_config.get("live"):  # rank 0 shows the trial's phases
        from ltmodels.engine import phases
        from ltsearch.live.state import PhaseFile

        phases.add_listener(PhaseFile.from_dict(loop_config["live"]))

    def on_epoch(epoch: int, metrics: dict[str, float], ckpt_dir: Path) -> None:
        # Every rank reports (Train V2 waits for all); rank 0 attaches the checkpoint file
        # alone, from a folder of its own: the workdir also holds Ray's storage folder.
        if rank() != 0:
            ray.train.report({"epoch": epoch, **metrics}, checkpoint=None)
            return
        with tempfile.TemporaryDirectory(prefix="ltsearch-ckpt-") as tmp:
            shutil.copy2(ckpt_dir / CHECKPOINT_FILE, Path(tmp) / CHECKPOINT_FILE)
            ckpt = Checkpoint.from_directory(tmp)
            ray.train.report({"epoch": epoch, **metrics}, checkpoint=ckpt)

    result = run_trial(cfg, workdir=workdir, on_epoch=on_epoch)
    if rank() == 0:
        tmp = workdir / (RESULT_FILE + ".tmp")
        tmp.write_text(json.dumps(result.to_dict()))
        tmp.replace(workdir / RESULT_FILE)


def run_distributed(cfg: Any, *, workdir: Path, resources: Any) -> Any:
    """Run ``cfg`` on ``resources.workers`` Ray Train workers; return its TrialResult."""
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from ltmodels.trial.config import TrialResult, trial_config_to_dict
    from ltsearch.live.state import active

    live = active()
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / RESULT_FILE).unlink(missing_ok=True)  # never return a previous run's result
    use_gpu = resources.gpus_per_worker > 0
    per_worker = {"CPU": resources.cpus_per_worker}
    if use_gpu:
        per_worker["GPU"] = resources.gpus_per_worker
    trainer = TorchTrainer(
        _train_loop,
        train_loop_config={
            "trial": trial_config_to_dict(cfg),
            "workdir": str(workdir),
            "live": None if live is None else live.to_dict(),
        },
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=resources.workers, use_gpu=use_gpu, resources_per_worker=per_worker
        ),
        run_config=RunConfig(
            name=STORAGE_NAME,
            storage_path=str(workdir),
            checkpoint_config=CheckpointConfig(num_to_keep=1),
        ),
    )
    trainer.fit()
    return TrialResult.from_dict(json.loads((workdir / RESULT_FILE).read_text()))
