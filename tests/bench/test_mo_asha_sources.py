"""``bench/mo_asha_subset.py`` and ``bench/mo_asha_rung_sources.py`` on a hand-made full run:
the rung values they read per seed (of the weights and of their average), averaged by hand."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from mo_asha_rung_sources import finals, rung_means  # noqa: E402
from mo_asha_subset import subset  # noqa: E402

from ltsearch.rung_log import RungRecord, append_log, read_log  # noqa: E402
from ltsearch.store import ResultStore  # noqa: E402

# (config, seed) -> (APr, APf) at rungs 1 and 2, then at the end
VALUES = {
    ("aaaa", 0): [(0.10, 0.20), (0.20, 0.40), (0.30, 0.50)],
    ("aaaa", 1): [(0.30, 0.40), (0.40, 0.60), (0.50, 0.70)],
    ("aaaa", 2): [(0.50, 0.60), (0.60, 0.80), (0.70, 0.90)],
    ("bbbb", 0): [(0.05, 0.10), (0.15, 0.30), (0.25, 0.45)],
    ("bbbb", 1): [(0.15, 0.20), (0.25, 0.40), (0.35, 0.55)],
    ("bbbb", 2): [(0.25, 0.30), (0.35, 0.50), (0.45, 0.65)],
}


def _full_run(root: Path, suffix: str = "") -> Path:
    study = root / "full"
    store = ResultStore(study)
    (study / "spec.yaml").parent.mkdir(parents=True, exist_ok=True)
    (study / "spec.yaml").write_text("name: full\n")
    for (chash, seed), values in VALUES.items():
        run = study / "runs" / f"{chash}-s{seed}"
        run.mkdir(parents=True)
        for rung, (apr, apf) in enumerate(values[:2], start=1):
            row = {"bbox/APr": apr, "bbox/APf": apf}
            (run / f"rung-{rung}{suffix}.json").write_text(json.dumps({"row": row}))
        apr, apf = values[2]
        store.write_trial({"study": "full", "trial_id": chash, "config_hash": chash,
                           "loss": "ce", "seed": seed, "status": "ok",
                           "bbox/APr": apr, "bbox/APf": apf})  # fmt: skip
    for chash in ("aaaa", "bbbb"):
        for rung in (1, 2):
            append_log(study, RungRecord(chash, rung, [0.0, 0.0], "continue", f"ce-{chash}"))
    return study


@pytest.mark.parametrize("suffix", ["", "-ema0.5"])
def test_rung_means_are_over_the_seeds_asked_in_percent(tmp_path: Path, suffix: str) -> None:
    study = _full_run(tmp_path, suffix)
    means = rung_means(study, ["aaaa", "bbbb"], [0, 1])
    assert means.loc[("aaaa", 1)].tolist() == pytest.approx([20.0, 30.0])
    assert means.loc[("bbbb", 2)].tolist() == pytest.approx([20.0, 35.0])
    assert list(rung_means(study, ["bbbb"], [2]).index) == [("bbbb", 1), ("bbbb", 2)]
    ends = finals(study)
    assert ends.loc[("aaaa", 2)].tolist() == pytest.approx([70.0, 90.0])


def test_a_subset_keeps_the_seeds_rows_and_rebuilds_the_rung_log(tmp_path: Path) -> None:
    study = _full_run(tmp_path)
    out = tmp_path / "cut"
    subset(study, out, [1, 2])
    rows = ResultStore(out).load_trials()
    assert sorted(rows["seed"].unique()) == [1, 2] and len(rows) == 4
    log = {(r.config_hash, r.rung): r for r in read_log(out)}
    assert log[("aaaa", 1)].values == pytest.approx([0.40, 0.50])  # means of seeds 1, 2
    assert log[("bbbb", 2)].values == pytest.approx([0.30, 0.45])
    assert log[("bbbb", 2)].label == "ce-bbbb" and len(log) == 4
    with pytest.raises(SystemExit, match="exists"):
        subset(study, out, [0])
