"""The Ray Tune callback that logs a study's rows to MLflow as its trials finish.

It runs on the driver: by the time Tune reports a trial complete (or failed), the trial
has written its rows to parquet, and :meth:`ltsearch.tracking.Tracker.sync` logs the ones
not logged yet. A pass never raises, so tracking cannot fail a trial or the study.
"""

from __future__ import annotations

from typing import Any

from ray.tune import Callback

from ltsearch.tracking import Tracker


class TrackingCallback(Callback):
    """Calls ``tracker.sync()`` whenever a trial ends, completed or errored."""

    def __init__(self, tracker: Tracker) -> None:
        self.tracker = tracker

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.tracker.sync()

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.tracker.sync()


def tracking_callbacks(tracker: Tracker | None) -> list[Callback]:
    """``[TrackingCallback(tracker)]``, or none for a study that does not track."""
    return [] if tracker is None else [TrackingCallback(tracker)]


__all__ = ["TrackingCallback", "tracking_callbacks"]
