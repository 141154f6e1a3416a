"""``ltsearch status`` on study directories made by hand: parquet parts and journal lines.

The journal lines are written as Optuna 5.1 writes them (``ltsearch.journal`` documents the
format; tests/ltsearch/test_journal.py checks it against Optuna's own replay): a study,
then per trial a CREATE_TRIAL and, once it ends, a SET_TRIAL_STATE_VALUES.

The finished study has 24 trials, all complete, over 23 configurations x 2 seeds: its
24th trial was a TPE suggestion of a stored configuration, read back without a new row.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from ltsearch import journal
from ltsearch.cli import main
from ltsearch.spec.study import spec_from_dict
from ltsearch.status import StudyProgress, status_text, study_progress
from ltsearch.store import ResultStore

SPEC: dict[str, Any] = {
    "name": "st",
    "dataset": {"kind": "synthetic", "classes": 8},
    "loss": {"name": "acsl", "params": {"xi": {"uniform": [0.05, 0.95]}}},
    "search": {"sampler": "tpe", "objectives": ["bbox/APr:max"], "trials": 24, "seeds": [0, 1]},
}


def make_study(root: Path, states: list[int], configs: int, failed: int = 0) -> Path:
    """A study dir: spec, journal trials in ``states``, ``configs`` ok configurations x 2
    seeds (APr 10 + i %), and ``failed`` configurations whose seed 0 failed."""
    spec = spec_from_dict({**SPEC, "storage": str(root)})
    study = root / "st"
    study.mkdir(parents=True)
    (study / "spec.yaml").write_text(yaml.safe_dump(spec.to_dict(), sort_keys=False))
    w = {"worker_id": "w-0"}
    logs: list[dict[str, Any]] = [
        {"op_code": journal.CREATE_STUDY, **w, "study_name": "st", "directions": [2]}
    ]
    for i, state in enumerate(states):
        create = {"op_code": journal.CREATE_TRIAL, **w, "study_id": 0, "datetime_start": ""}
        if state == journal.WAITING:  # an enqueued trial is created waiting
            create["state"] = state
        logs.append(create)
        if state not in (journal.RUNNING, journal.WAITING):
            logs.append(
                {"op_code": journal.SET_TRIAL_STATE_VALUES, **w, "trial_id": i, "state": state,
                 "values": [0.1] if state == journal.COMPLETE else None, "datetime_complete": ""}
            )  # fmt: skip
    text = "".join(json.dumps(log) + "\n" for log in logs)
    (study / "optuna.journal").write_text(text)
    store = ResultStore(study)
    for i in range(configs + failed):
        for seed in (0, 1) if i < configs else (0,):
            ok = i < configs
            store.write_trial(
                {"study": "st", "trial_id": f"t{i}", "config_hash": f"{i:016x}", "loss": "acsl",
                 "param.acsl.xi": 0.1 + 0.01 * i, "seed": seed, "status": "ok" if ok else "failed",
                 "error": None if ok else "RuntimeError: CUDA out of memory\nTraceback",
                 **({"bbox/APr": 0.10 + 0.01 * i} if ok else {})}
            )  # fmt: skip
    return study


def test_a_finished_study_with_a_repeated_configuration_is_complete(tmp_path: Path) -> None:
    study = make_study(tmp_path, [journal.COMPLETE] * 24, configs=23)
    p = study_progress(study)
    assert (p.trials_total, p.trials_finished, p.trials_running, p.trials_failed) == (24, 24, 0, 0)
    assert (p.configs_ok, p.repeated, p.rows_ok, p.rows_failed) == (23, 1, 46, 0)
    assert p.complete
    assert p.line() == "24/24 trials, study complete; 1 repeated configuration read back"
    text = status_text(study)
    assert "progress: 24/24 trials, study complete; 1 repeated configuration read back" in text
    assert "23/24" not in text
    assert "configurations: 23 with an ok run, 23 of them with every seed (23 started)" in text
    assert "runs (configuration x seed): 46 ok, 0 failed" in text
    assert "bbox/APr (max): 32.00  acsl(xi=0.32) [00000000, 2 seed(s)]" in text


def test_a_study_with_running_and_failed_trials_is_not_complete(tmp_path: Path) -> None:
    c, f, r, w = journal.COMPLETE, journal.FAIL, journal.RUNNING, journal.WAITING
    study = make_study(tmp_path, [c] * 10 + [f] + [c] * 6 + [r, r, w], configs=16, failed=1)
    p = study_progress(study)
    assert (p.trials_finished, p.trials_running, p.trials_failed, p.repeated) == (17, 2, 1, 0)
    assert (p.rows_ok, p.rows_failed) == (32, 1)
    assert not p.complete
    assert p.line() == (
        f"17/24 trials, 2 running, 1 failed; not complete: `ltsearch resume {study}` continues"
    )
    text = status_text(study)
    assert "runs (configuration x seed): 32 ok, 1 failed" in text
    assert "FAILED 00000000 acsl(xi=0.26) seed 0: RuntimeError: CUDA out of memory\n" in text


def test_line_wording() -> None:
    d = Path("/r/st")
    done = StudyProgress(d, 3, trials_finished=3, trials_complete=2, trials_failed=1, configs_ok=2)
    assert done.line() == "3/3 trials, 1 failed, study complete"
    twice = StudyProgress(d, 4, trials_finished=4, trials_complete=4, configs_ok=2)
    assert twice.line() == "4/4 trials, study complete; 2 repeated configurations read back"
    none = StudyProgress(d, 4, journal=False)
    assert none.line() == (
        "0/4 trials (no optuna.journal yet); not complete: `ltsearch resume /r/st` continues"
    )
    budget_met_but_running = StudyProgress(d, 2, trials_finished=2, trials_running=1)
    assert not budget_met_but_running.complete


def test_status_from_another_directory_with_a_relative_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    study = make_study(tmp_path / "results", [journal.COMPLETE] * 24, configs=23)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert main(["status", "../results/st"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"study st ({study})\n")
    assert "24/24 trials, study complete" in out
    assert study_progress("../results/st").study_dir == study


def test_no_run_yet(tmp_path: Path) -> None:
    study = make_study(tmp_path, [], configs=0)
    (study / "optuna.journal").unlink()
    text = status_text(study)
    assert "progress: 0/24 trials (no optuna.journal yet); not complete" in text
    assert text.endswith("no (configuration, seed) run finished yet")
