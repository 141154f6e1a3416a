"""The per-trial aggregation over seeds (what Optuna receives as the objective values)."""

from __future__ import annotations

import math

from ltsearch.run.trainable import mean_metrics


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
