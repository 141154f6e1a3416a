"""The Optuna journal rebuilt from parquet rows (ltsearch.run.rebuild): what each
configuration becomes, what a resumed run then plans, and when a journal is kept or replaced.

Rows are written by hand through :class:`ltsearch.store.ResultStore`, as
``ltsearch.run.trainable.run_seed`` writes them (config hash, ``param.<loss>.<name>``
columns with fixed values included, status, metrics, ``started_at``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import TrialState

from ltsearch import journal
from ltsearch.errors import StoreError
from ltsearch.run.rebuild import configurations, reconcile_journal
from ltsearch.run.search import journal_storage, make_searcher, plan_study
from ltsearch.spec.hashing import config_hash
from ltsearch.spec.study import StudySpec, spec_from_dict
from ltsearch.store import ResultStore
from ltsearch.study_dir import JOURNAL_FILE

STUDY = """\
name: rebuild-check
dataset: {kind: synthetic, classes: 8}
loss:
  choice:
    - {name: acsl, params: {xi: {uniform: [0.05, 0.95]}}}
    - {name: ahr, params: {num_clusters: {int: [2, 8]}, lambda_m: 2.0}}
search:
  objectives: [bbox/APr:max, bbox/APf:max]
  trials: 6
  seeds: [0, 1]
  initial_points: [{loss: acsl, xi: 0.7}]
"""


@pytest.fixture
def spec(tmp_path: Path) -> StudySpec:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return spec_from_dict(yaml.safe_load(STUDY)).with_overrides(storage=tmp_path)


def write_seed(
    spec: StudySpec, params: dict[str, Any], seed: int, status: str, when: str, **metrics: float
) -> str:
    """Store one (configuration, seed) row as run_seed does; returns the config hash."""
    loss = params["loss"]
    named = {f"{loss}.{k}": v for k, v in params.items() if k != "loss"}
    chash = config_hash({"loss": loss, **named}, spec)
    row = {
        "study": spec.name, "trial_id": chash, "config_hash": chash, "loss": loss,
        **{f"param.{loss}.{k}": v for k, v in params.items() if k != "loss"},
        "seed": seed, "status": status, "started_at": when, **metrics,
    }  # fmt: skip
    ResultStore(spec.study_dir).write_trial(row)
    return chash


def three_configurations(spec: StudySpec) -> dict[str, str]:
    """acsl 0.7: both seeds ok; ahr 4 clusters: seed 0 failed; acsl 0.3: seed 0 ok only."""
    acsl7, acsl3 = {"loss": "acsl", "xi": 0.7}, {"loss": "acsl", "xi": 0.3}
    ahr4 = {"loss": "ahr", "num_clusters": 4, "lambda_m": 2.0}  # as stored: fixed one too
    return {
        "complete": write_seed(spec, acsl7, 0, "ok", "t1", **{"bbox/APr": 0.2, "bbox/APf": 0.5}),
        "failed": write_seed(spec, ahr4, 0, "failed", "t3"),
        "waiting": write_seed(spec, acsl3, 0, "ok", "t4", **{"bbox/APr": 0.1, "bbox/APf": 0.2}),
        "_": write_seed(spec, acsl7, 1, "ok", "t2", **{"bbox/APr": 0.4, "bbox/APf": -1.0}),
    }


def trials_of(spec: StudySpec) -> list[Any]:
    storage = journal_storage(spec.study_dir)
    return optuna.load_study(study_name=spec.name, storage=storage).get_trials()


def test_each_configuration_becomes_one_trial(spec: StudySpec) -> None:
    hashes = three_configurations(spec)
    configs = configurations(spec, ResultStore(spec.study_dir).trial_rows())
    assert [c.config_hash for c in configs] == [
        hashes[k] for k in ("complete", "failed", "waiting")
    ]
    done, failed, waiting = configs
    assert (done.state, failed.state, waiting.state) == ("complete", "fail", "waiting")
    assert done.values == pytest.approx([0.3, 0.5])  # APf -1 (undefined) is left out
    assert done.params == {"loss": "acsl", "acsl.xi": 0.7}
    assert failed.params == {"loss": "ahr", "ahr.num_clusters": 4}  # fixed lambda_m left out


def test_a_deleted_journal_is_rebuilt_and_the_resume_plans_from_it(spec: StudySpec) -> None:
    three_configurations(spec)
    line = reconcile_journal(spec, spec.study_dir)
    assert line is not None and "missing; rebuilt it from the parquet parts" in line
    assert "1 complete, 1 failed, 1 to finish" in line
    trials = trials_of(spec)
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.WAITING]
    assert trials[0].values == pytest.approx([0.3, 0.5])
    assert trials[0].distributions == {
        "loss": optuna.distributions.CategoricalDistribution(["acsl", "ahr"]),
        "acsl.xi": FloatDistribution(0.05, 0.95),
    }
    assert trials[1].distributions["ahr.num_clusters"] == IntDistribution(2, 8)
    assert journal.trial_states(spec.study_dir / JOURNAL_FILE, spec.name) == [1, 3, 4]

    plan = plan_study(spec, journal_storage(spec.study_dir))
    assert (plan.finished, plan.failed, plan.adopt) == (2, 1, [])
    assert plan.points == []  # the starting point acsl 0.7 ran already
    assert plan.to_run == 4  # the waiting acsl 0.3 first, then three new ones
    searcher = make_searcher(spec, journal_storage(spec.study_dir), plan).searcher
    assert searcher.suggest("a") == {"loss": "acsl", "acsl.xi": 0.3}
    new = searcher.suggest("b")  # TPE samples with the rebuilt trials as its history
    assert new["loss"] in ("acsl", "ahr")
    assert reconcile_journal(spec, spec.study_dir) is None  # it now agrees with parquet


def test_an_intact_journal_is_kept(spec: StudySpec) -> None:
    three_configurations(spec)
    reconcile_journal(spec, spec.study_dir)
    before = (spec.study_dir / JOURNAL_FILE).read_bytes()
    assert reconcile_journal(spec, spec.study_dir) is None
    assert (spec.study_dir / JOURNAL_FILE).read_bytes() == before
    assert reconcile_journal(spec, spec.study_dir / "elsewhere") is None  # no rows: nothing


@pytest.mark.parametrize("damage", ["not json", "a part deleted", "no study"])
def test_a_journal_that_disagrees_with_parquet_is_set_aside_and_rebuilt(
    spec: StudySpec, damage: str
) -> None:
    hashes = three_configurations(spec)
    reconcile_journal(spec, spec.study_dir)
    path = spec.study_dir / JOURNAL_FILE
    if damage == "not json":
        lines = path.read_bytes().splitlines(keepends=True)
        lines[2] = lines[2].replace(b'"', b"'", 1)
        path.write_bytes(b"".join(lines))
        reason = "line 3 is not JSON"
    elif damage == "a part deleted":  # as the store's message for a damaged part says
        (spec.study_dir / "trials" / f"part-{hashes['complete']}-s1.parquet").unlink()
        reason = "trial 0 is COMPLETE there but not every seed of it is in trials/"
    else:
        path.write_bytes(b"")
        reason = "missing"
    old = path.read_bytes()
    line = reconcile_journal(spec, spec.study_dir)
    assert line is not None and reason in line, line
    if old:
        assert (spec.study_dir / f"{JOURNAL_FILE}.damaged-1").read_bytes() == old
        assert f"kept as {JOURNAL_FILE}.damaged-1" in line
    states = [t.state.name for t in trials_of(spec)]
    expect = ["FAIL", "WAITING", "WAITING"] if damage == "a part deleted" else None
    assert states == (expect or ["COMPLETE", "FAIL", "WAITING"])


def test_a_damaged_part_stops_the_resume_with_one_line(spec: StudySpec) -> None:
    three_configurations(spec)
    ResultStore(spec.study_dir).write_epochs("x", 0, [{"epoch": 1, "loss": 0.5}])
    part = spec.study_dir / "epochs" / "part-x-s0.parquet"
    part.write_bytes(part.read_bytes()[:-20])
    with pytest.raises(StoreError, match=r"part-x-s0\.parquet: not a readable parquet part") as e:
        reconcile_journal(spec, spec.study_dir)
    assert "\n" not in str(e.value) and not (spec.study_dir / JOURNAL_FILE).exists()
