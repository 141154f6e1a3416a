"""``run_trial``: one trial of a study, independent of Ray: configuration in, metrics out.

``ltsearch`` builds a :class:`~ltmodels.trial.config.TrialConfig` from a study spec and
runs :func:`run_trial` in-process (one CPU worker) or inside each Ray Train worker (DDP).
"""

from __future__ import annotations

from pathlib import Path

from ltmodels.trial.config import TrialConfig, TrialResult
from ltmodels.trial.pack import packable, run_pack
from ltmodels.trial.schedules import run_schedule
from ltmodels.trial.stages import EpochCallback


def run_trial(
    cfg: TrialConfig, *, workdir: str | Path, on_epoch: EpochCallback | None = None
) -> TrialResult:
    """Train and evaluate one (configuration, seed); resumable from ``workdir``.

    Args:
        cfg: the trial.
        workdir: this run's directory (checkpoints); a rerun resumes from its checkpoint.
        on_epoch: called after each epoch with ``(epoch, stats, checkpoint_dir)``.

    Returns:
        Final metrics (``bbox/AP``, ``bbox/APr``, ..., ``segm/...`` when masks are
        evaluated), per-epoch history, per-category AP rows and timings (``train``,
        ``eval``, ``stage1``, ``cache``).
    """
    if packable(cfg):  # a feature-cache stage 2: a pack of one (ltmodels.trial.pack)
        [result] = run_pack([cfg])
        assert isinstance(result, TrialResult)  # a pack of one raises its failure
        return result
    return run_schedule(cfg, Path(workdir), on_epoch)


__all__ = ["run_trial"]
