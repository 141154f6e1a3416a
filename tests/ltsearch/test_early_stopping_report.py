"""A study whose configurations early stopping cut short, read back: the report's
early-stopping section, ``ltsearch status``, and a journal rebuilt from parquet.

The hand-made study: A and B trained to the end (3 epochs, 2 seeds), C stopped at epoch 1,
D at epoch 2. D's rung-2 APr beats every fully trained configuration's, so counted at
its rung it would join the front: the report must not rank it with the others.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from ltsearch import journal
from ltsearch.report.document import write_report
from ltsearch.run.rebuild import PRUNED, configurations, write_journal
from ltsearch.rung_log import RungRecord, append_log
from ltsearch.spec.hashing import config_hash
from ltsearch.spec.study import StudySpec, spec_from_dict
from ltsearch.status import status_text
from ltsearch.store import ResultStore

# xi -> (status, rung reached, APr, APf)
CONFIGS = {
    0.1: ("ok", 3, 0.30, 0.30),
    0.2: ("ok", 3, 0.10, 0.50),
    0.3: ("stopped", 1, 0.05, 0.05),
    0.4: ("stopped", 2, 0.45, 0.02),
}
# the scheduler's decisions, in order: (xi, rung, APr, APf, decision)
DECISIONS = [
    (0.1, 1, 0.10, 0.10, "continue"),
    (0.2, 1, 0.03, 0.20, "continue"),
    (0.3, 1, 0.05, 0.05, "stop"),
    (0.4, 1, 0.12, 0.01, "continue"),
    (0.1, 2, 0.25, 0.25, "continue"),
    (0.2, 2, 0.08, 0.45, "continue"),
    (0.4, 2, 0.45, 0.02, "stop"),
]


def _hash(spec: StudySpec, xi: float) -> str:
    return config_hash({"loss": "acsl", "acsl.xi": xi}, spec)


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, StudySpec]:
    root = tmp_path_factory.mktemp("es-report")
    spec = spec_from_dict(
        {
            "name": "es",
            "dataset": {"kind": "synthetic"},
            "training": {"schedule": "end_to_end", "epochs": 3},
            "loss": {"name": "acsl", "params": {"xi": {"grid": list(CONFIGS)}}},
            "search": {
                "sampler": "grid",
                "seeds": [0, 1],
                "early_stopping": {"rungs": [1, 2, 3], "reduction": 2},
            },
            "storage": str(root),
        }
    )
    study = spec.study_dir
    study.mkdir(parents=True)
    (study / "spec.yaml").write_text(yaml.safe_dump(spec.to_dict(), sort_keys=False))
    store = ResultStore(study)
    for xi, (status, rung, apr, apf) in CONFIGS.items():
        h = _hash(spec, xi)
        for seed in (0, 1):
            row: dict[str, Any] = {
                "study": "es", "trial_id": h, "config_hash": h, "loss": "acsl",
                "param.acsl.xi": xi, "seed": seed, "status": status,
                "bbox/APr": apr + seed / 1000, "bbox/APf": apf, "bbox/AP": 0.2,
                "started_at": f"2025-01-01T00:0{seed}:00+00:00",
            }  # fmt: skip
            if status == "stopped":
                row["rung_epoch"] = rung
            store.write_trial(row)
    for xi, rung, apr, apf, decision in DECISIONS:
        append_log(study, RungRecord(_hash(spec, xi), rung, [apr, apf], decision, f"xi={xi}"))
    return study, spec


@pytest.fixture(scope="module")
def report(study: tuple[Path, StudySpec]) -> str:
    return write_report(study[0]).read_text()


def _section(text: str, heading: str) -> str:
    return text.split(f"## {heading}", 1)[1].split("\n## ", 1)[0]


def test_summary_counts_stopped_runs_apart_from_failures(report: str) -> None:
    assert (
        "- runs (configuration \u00d7 seed): 4 ok, 0 failed, 4 stopped early, 8 planned" in report
    )
    assert "## Failed runs" not in report


def test_the_front_ranks_fully_trained_configurations_only(
    study: tuple[Path, StudySpec], report: str
) -> None:
    dir_, spec = study
    front = _section(report, "Pareto front")
    for xi in (0.3, 0.4):
        assert _hash(spec, xi)[:8] not in front
    configs = pd.read_csv(dir_ / "report" / "configs.csv")
    assert sorted(configs["param.acsl.xi"]) == [0.1, 0.2]


def test_the_section_lists_each_rung_and_both_fronts(
    study: tuple[Path, StudySpec], report: str
) -> None:
    _, spec = study
    text = _section(report, "Early stopping (MO-ASHA)")
    assert "Rungs at epochs [1, 2, 3] of 3, reduction 2" in text
    assert "(promotion: front)" in text  # the default rule
    assert "Values are means over seeds at the rung, in %." in text  # of the weights
    # 2 configurations x 2 seeds x 3 epochs, plus C's 2 x 1 and D's 2 x 2, of 4 x 2 x 3
    assert "Epochs trained (configuration \u00d7 seed): **18** of the 24" in text
    assert "(75%); 2 of 4 configurations stopped early." in text
    rows = re.findall(r"^\| (\d) \| (\w*) \| ([^|]*) \|.*\| ([^|]*) \|$", text, re.MULTILINE)
    decided = [(int(r), h, v.strip()) for r, h, _, v in rows if h]
    expect = [
        (rung, _hash(spec, xi)[:8], "went on" if d == "continue" else "**stopped**")
        for xi, rung, _, _, d in DECISIONS
    ]
    assert decided == expect
    assert "| 1 |  | 3 of 4 went on |" in text and "| 2 |  | 2 of 3 went on |" in text
    trained, counted = (ln for ln in text.splitlines() if ln.startswith("- "))
    assert trained.startswith("- fully trained only: 2 on the front")
    assert counted.startswith("- stopped ones counted too: 3 on the front")
    assert f"{_hash(spec, 0.4)[:8]} acsl(xi=0.4) (stopped at epoch 2)" in counted
    assert "stopped at" not in trained


def test_status_counts_stopped_runs_as_neither_ok_nor_failed(
    study: tuple[Path, StudySpec],
) -> None:
    text = status_text(study[0])
    assert "runs (configuration x seed): 4 ok, 0 failed, 4 stopped early" in text
    assert "FAILED" not in text


def test_a_rebuilt_journal_has_the_stopped_configurations_pruned(
    study: tuple[Path, StudySpec], tmp_path: Path
) -> None:
    dir_, spec = study
    configs = configurations(spec, ResultStore(dir_).trial_rows())
    assert [c.state for c in configs].count(PRUNED) == 2
    path = tmp_path / "optuna.journal"
    write_journal(spec, configs, path)
    states = journal.trial_states(path, spec.name)
    assert sorted(states) == [journal.COMPLETE] * 2 + [journal.PRUNED] * 2


def test_the_section_says_when_rungs_evaluated_a_weight_average(
    study: tuple[Path, StudySpec],
) -> None:
    from ltsearch.report.early import early_stopping_md

    dir_, spec = study
    raw = spec.to_dict()
    raw["search"]["early_stopping"]["ema_half_life"] = 0.5
    averaged = spec_from_dict(raw)
    runs = ResultStore(dir_).load_trials()
    text = early_stopping_md(averaged, dir_, runs.iloc[:0], _EmptySummary(), 100.0)
    assert (
        "Values are means over seeds at the rung, in %, of an exponential moving average of "
        "the weights (half-life 0.5 epochs; the fully trained rows are of the weights)."
    ) in text
    del raw["search"]["early_stopping"]["ema_half_life"]
    raw["search"]["early_stopping"]["cooldown"] = 0.25
    cooled = spec_from_dict(raw)
    text = early_stopping_md(cooled, dir_, runs.iloc[:0], _EmptySummary(), 100.0)
    assert (
        "Values are means over seeds at the rung, in %, of a copy trained 0.25 epochs further "
        "with the learning rate decaying linearly to 0, then dropped (the trials went on "
        "from the rung's own weights; the fully trained rows are of those)."
    ) in text


class _EmptySummary:
    objectives: list[Any] = []
    configs = pd.DataFrame()
