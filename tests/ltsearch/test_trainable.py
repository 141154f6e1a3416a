"""The per-trial aggregation over seeds (what Optuna receives as the objective values), and
the threads a trial lends to the study's shared builds."""

from __future__ import annotations

import math
from typing import Any

import pytest

from ltsearch.errors import SpecError
from ltsearch.run.trainable import build_threads, mean_metrics
from ltsearch.spec.study import StudySpec, spec_from_dict


def test_mean_over_seeds_skips_undefined_lvis_values() -> None:
    """bbox/APr: (0.2 + 0.4) / 2 = 0.3; bbox/APf: -1 (undefined) in seed 0 and 0.5 in seed 1
    -> 0.5, not (-1 + 0.5) / 2; segm/AP: -1 in both seeds stays -1; bbox/AP: NaN in seed 1
    and missing in nothing else -> 0.1 from seed 0 alone; bbox/APc only in seed 1 -> 0.6."""
    out = mean_metrics(
        [
            {"bbox/APr": 0.2, "bbox/APf": -1.0, "segm/AP": -1.0, "bbox/AP": 0.1},
            {
                "bbox/APr": 0.4,
                "bbox/APf": 0.5,
                "segm/AP": -1.0,
                "bbox/AP": math.nan,
                "bbox/APc": 0.6,
            },
        ]  # fmt: skip
    )
    assert math.isclose(out["bbox/APr"], 0.3)
    assert out["bbox/APf"] == 0.5
    assert out["segm/AP"] == -1.0
    assert out["bbox/AP"] == 0.1
    assert out["bbox/APc"] == 0.6


def test_metric_never_reported_is_nan() -> None:
    out = mean_metrics([{"bbox/AP": math.nan}])
    assert math.isnan(out["bbox/AP"])


def spec_with(resources: dict[str, Any]) -> StudySpec:
    return spec_from_dict(
        {"name": "s", "dataset": {"kind": "synthetic"}, "loss": {"name": "ce"},
         "search": {"trials": 2}, "resources": resources}
    )  # fmt: skip


def test_build_threads_follow_the_concurrent_trials(monkeypatch: pytest.MonkeyPatch) -> None:
    import ltmodels.engine.threads as threads

    monkeypatch.setattr(threads, "node_cpus", lambda: 2)
    assert build_threads(spec_with({"max_concurrent_trials": 2})) == 2
    assert build_threads(spec_with({"max_concurrent_trials": 8})) == 2  # the node's 2
    assert build_threads(spec_with({})) == 1
    assert build_threads(spec_with({"max_concurrent_trials": 2, "build_threads": 5})) == 5
    # DDP and GPU trials keep what Ray Train and CUDA set
    assert build_threads(spec_with({"workers": 2, "max_concurrent_trials": 2})) == 0
    assert build_threads(spec_with({"gpus_per_worker": 1, "max_concurrent_trials": 2})) == 0


def test_build_threads_below_one_is_refused() -> None:
    with pytest.raises(SpecError, match="build_threads"):
        spec_with({"build_threads": 0})
