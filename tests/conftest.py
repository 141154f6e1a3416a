"""Shared test set-up: quiet Ray, one torch thread (the CI machine has 2 cores)."""

from __future__ import annotations

import os

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import torch  # noqa: E402

torch.set_num_threads(1)
