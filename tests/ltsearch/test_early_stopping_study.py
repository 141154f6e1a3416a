"""Early stopping in whole studies on Ray Tune (:func:`ltsearch.run.driver.run_study`), with
runs stood in for by :func:`fake_run` so that the bookkeeping is what is checked: which
configurations are stopped where, their rows, the journal, and that a study without
``search.early_stopping`` runs exactly as before.

``fake_run`` "trains" by writing the epoch reached to the run directory (a checkpoint that
cannot go back) and scores ``APr = xi * epoch / 10 + seed / 1000``, ``APf = xi * epoch / 20``:
a larger ``xi`` dominates at every rung. The four configurations are asked in the order
0.9, 0.1, 0.5, 0.3 (``initial_points``), so with reduction 2 (keep ceil(n/2) of n):

- rung 1: 0.9 goes on (first), 0.1 stops (1 of 2), 0.5 goes on (2nd of 3), 0.3 stops (3rd of 4);
- rung 2: 0.9 goes on (first), 0.5 stops (1 of 2); 0.9 trains to epoch 3.

One Ray instance serves the module (``cluster.shutdown`` is a no-op here).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from ltmodels.trial.config import TrialResult
from ltsearch import journal
from ltsearch.run.driver import run_study
from ltsearch.rung_log import LOG_FILE, read_log
from ltsearch.spec.study import StudySpec, spec_from_dict
from ltsearch.store import ResultStore
from ltsearch.study_dir import JOURNAL_FILE

pytestmark = pytest.mark.slow
ORDER = [0.9, 0.1, 0.5, 0.3]
CALLS = "fake_calls.jsonl"


def fake_run(cfg: Any, *, workdir: Path, resources: Any) -> TrialResult:
    """``execute_trial`` without training (see the module doc); logs each call."""
    workdir.mkdir(parents=True, exist_ok=True)
    ckpt = workdir / "fake.ckpt"
    start = int(ckpt.read_text()) if ckpt.exists() else 0
    end = cfg.train.epochs if cfg.stop_at_epoch is None else cfg.stop_at_epoch
    if start > end:
        raise RuntimeError(f"checkpoint at epoch {start}, past {end}")
    ckpt.write_text(str(end))
    xi = float(cfg.train.loss_params["xi"])
    call = {"xi": xi, "seed": cfg.seed, "stop_at": cfg.stop_at_epoch, "start": start}
    with open(workdir.parent.parent / CALLS, "a") as f:
        f.write(json.dumps(call) + "\n")
    return TrialResult(
        metrics={"bbox/APr": xi * end / 10 + cfg.seed / 1000, "bbox/APf": xi * end / 20},
        epochs=[{"epoch": float(e), "loss": 1.0 / (e + 1)} for e in range(end)],
        categories=[{"category_id": 1, "name": "a", "frequency": "r", "AP": 0.1}],
        timings={"train": 0.0},
    )


@pytest.fixture(scope="module", autouse=True)
def one_ray() -> Any:
    import cloudpickle
    import ray

    from ltsearch.run import cluster

    patch = pytest.MonkeyPatch()
    patch.setattr(cluster, "shutdown", lambda: None)
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # fake_run, to the workers
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
    patch.undo()


def _spec(storage: Path, name: str, early: dict[str, Any] | None) -> StudySpec:
    search: dict[str, Any] = {
        "sampler": "random",
        "trials": len(ORDER),
        "seeds": [0, 1],
        "objectives": ["bbox/APr:max", "bbox/APf:max"],
        "initial_points": [{"xi": xi} for xi in ORDER],
    }
    if early is not None:
        search["early_stopping"] = early
    return spec_from_dict(
        {
            "name": name,
            "dataset": {
                "kind": "synthetic",
                "classes": 8,
                "train_images": 16,
                "val_images": 8,
                "image_size": 64,
            },  # fmt: skip
            "model": {"backbone": "tiny"},
            "training": {"schedule": "end_to_end", "epochs": 3},
            "loss": {"name": "acsl", "params": {"xi": {"uniform": [0.0, 1.0]}}},
            "search": search,
            "storage": str(storage),
        }
    )


def _run(spec: StudySpec) -> tuple[Any, Path]:
    outcome = run_study(spec, progress=False, execute=fake_run)
    return outcome, spec.study_dir


def _calls(study: Path) -> list[tuple[float, int, int | None, int]]:
    lines = (study / CALLS).read_text().splitlines()
    return [(c["xi"], c["seed"], c["stop_at"], c["start"]) for c in map(json.loads, lines)]


def _rows(study: Path) -> list[dict[str, Any]]:
    """The rows without what differs between two runs of one study (times, ids, host)."""
    volatile = ("study", "tune_trial_id", "started_at", "finished_at", "host", "pid")
    rows = ResultStore(study).trial_rows()
    clean = [{k: v for k, v in r.items() if k not in volatile and "time" not in k} for r in rows]
    return sorted(clean, key=lambda r: (r["param.acsl.xi"], r["seed"]))


def _states(study: Path, name: str) -> list[int]:
    return journal.trial_states(study / JOURNAL_FILE, name)


def test_without_rungs_a_study_runs_as_before(tmp_path: Path) -> None:
    plain, plain_dir = _run(_spec(tmp_path, "plain", None))
    # a rung at the last epoch is the end of training: the scheduler runs, decides nothing
    at_end, at_end_dir = _run(_spec(tmp_path, "at-end", {"rungs": [3], "reduction": 2}))
    for outcome, study in ((plain, plain_dir), (at_end, at_end_dir)):
        assert outcome.finished == 4 and outcome.failed == 0 and outcome.stopped is None
        # one run per (configuration, seed), straight to the end
        assert sorted(_calls(study)) == sorted((xi, s, None, 0) for xi in ORDER for s in (0, 1))
        assert _states(study, study.name) == [journal.COMPLETE] * 4
    assert not (plain_dir / LOG_FILE).exists() and not (at_end_dir / LOG_FILE).exists()
    assert _rows(plain_dir) == _rows(at_end_dir)
    assert {r["status"] for r in _rows(plain_dir)} == {"ok"}
    assert "rung_epoch" not in _rows(plain_dir)[0]


def test_configurations_are_stopped_at_their_rungs(tmp_path: Path) -> None:
    spec = _spec(tmp_path, "moasha", {"rungs": [1, 2], "reduction": 2})
    outcome, study = _run(spec)
    assert outcome.finished == 4 and outcome.failed == 0 and outcome.stopped is None
    decisions = [(r.label, r.rung, r.decision) for r in read_log(study)]
    assert decisions == [  # one trial at a time: each climbs as far as it goes
        ("acsl(xi=0.9)", 1, "continue"),
        ("acsl(xi=0.9)", 2, "continue"),
        ("acsl(xi=0.1)", 1, "stop"),
        ("acsl(xi=0.5)", 1, "continue"),
        ("acsl(xi=0.5)", 2, "stop"),
        ("acsl(xi=0.3)", 1, "stop"),
    ]
    rows = {(r["param.acsl.xi"], r["seed"]): r for r in _rows(study)}
    assert len(rows) == 8
    reached = {0.9: None, 0.1: 1, 0.5: 2, 0.3: 1}
    for (xi, seed), row in rows.items():
        rung = reached[xi]
        assert row["status"] == ("ok" if rung is None else "stopped")
        assert row.get("rung_epoch") == rung or (rung is None and row.get("rung_epoch") is None)
        epoch = 3 if rung is None else rung
        assert row["bbox/APr"] == pytest.approx(xi * epoch / 10 + seed / 1000)
    epochs = ResultStore(study).load_epochs().groupby(["trial_id", "seed"]).size()
    assert sorted(epochs) == [1, 1, 1, 1, 2, 2, 3, 3]
    # every seed resumed from its own checkpoint: each epoch was trained once
    calls = _calls(study)
    assert [c for c in calls if c[0] == 0.9] == [
        (0.9, 0, 1, 0), (0.9, 1, 1, 0), (0.9, 0, 2, 1), (0.9, 1, 2, 1),
        (0.9, 0, None, 2), (0.9, 1, None, 2),
    ]  # fmt: skip
    assert sum((c[2] or 3) - c[3] for c in calls) == 6 + 2 + 4 + 2  # of 24 without stopping
    states = _states(study, spec.name)
    assert sorted(states) == [journal.COMPLETE] + [journal.PRUNED] * 3

    again, _ = _run(spec)  # run again: nothing left to do, nothing re-run
    assert again.where == "nothing to run" and len(_calls(study)) == len(calls)
