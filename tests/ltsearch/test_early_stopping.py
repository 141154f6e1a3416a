"""Early stopping without a cluster: the spec key, a trial climbing its rungs
(:func:`ltsearch.run.rungs.climb`), the scheduler's durable decisions
(:class:`ltsearch.run.rung_scheduler.RungScheduler`) and the searcher telling Optuna PRUNED.

Runs are stood in for by :class:`FakeRuns`, which "trains" by writing the epoch reached to
the run directory (as a checkpoint) and scores ``xi * epoch / 10``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from ltmodels.trial.config import TrialResult
from ltsearch.errors import SpecError
from ltsearch.run.records import choice_hash
from ltsearch.run.rung_scheduler import RungScheduler, make_scheduler
from ltsearch.run.rungs import climb
from ltsearch.run.trainable import ERROR_KEY, StudyContext
from ltsearch.rung_log import (
    CONFIG_KEY,
    LOG_FILE,
    RUNG_KEY,
    RUNS_KEY,
    RungRecord,
    append_log,
    read_log,
)
from ltsearch.spec.study import StudySpec, spec_from_dict
from ltsearch.store import ResultStore

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "acceptance"))
from workspace import run_cli  # noqa: E402

DATA = {"train_json": "t.json", "val_json": "v.json", "train_root": "img", "val_root": "img"}
STOP, CONTINUE = "STOP", "CONTINUE"  # ray.tune.schedulers.TrialScheduler's decisions


def make_spec(storage: Path, early: dict[str, Any] | None = None, **search: Any) -> StudySpec:
    raw: dict[str, Any] = {
        "name": "es",
        "dataset": {"kind": "synthetic"},
        "model": {"backbone": "tiny"},
        "training": {"schedule": "end_to_end", "epochs": 3},
        "loss": {"name": "acsl", "params": {"xi": {"uniform": [0.0, 1.0]}}},
        "search": {"sampler": "random", "trials": 4, "seeds": [0, 1], **search},
        "storage": str(storage),
    }
    if early is not None:
        raw["search"]["early_stopping"] = early
    return spec_from_dict(raw)


class FakeRuns:
    """``execute_trial`` without training: resumes from and writes ``fake.ckpt`` (the epoch
    reached) and refuses to go back, as ``train_stage`` does; records each call."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, int, int | None, int]] = []  # xi, seed, stop_at, start

    def __call__(self, cfg: Any, *, workdir: Path, resources: Any) -> TrialResult:
        workdir.mkdir(parents=True, exist_ok=True)
        ckpt = workdir / "fake.ckpt"
        start = int(ckpt.read_text()) if ckpt.exists() else 0
        end = cfg.train.epochs if cfg.stop_at_epoch is None else cfg.stop_at_epoch
        assert start <= end, (start, end)
        ckpt.write_text(str(end))
        xi = float(cfg.train.loss_params["xi"])
        self.calls.append((xi, cfg.seed, cfg.stop_at_epoch, start))
        v = xi * end / 10 + cfg.seed / 1000
        return TrialResult(
            metrics={"bbox/AP": v, "bbox/APr": v, "bbox/APf": v / 2},
            epochs=[{"epoch": float(e), "loss": 1.0 / (e + 1)} for e in range(end)],
            timings={"train": 0.0},
        )


def _ctx(spec: StudySpec) -> StudyContext:
    spec.study_dir.mkdir(parents=True, exist_ok=True)
    return StudyContext(spec=spec.to_dict(), study_dir=str(spec.study_dir), data=DATA)


def _climb(spec: StudySpec, xi: float, runs: FakeRuns, report: Any) -> None:
    choice = {"loss": "acsl", "loss_params": {"xi": xi}}
    climb(_ctx(spec), spec, choice, tune_trial_id="t", execute=runs, report=report)


# -- the spec key -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("early", "training", "message"),
    [
        ({"rungs": [1, 3, 3]}, {}, "rungs.2: rungs must be strictly increasing"),
        ({"rungs": [0, 3]}, {}, "rungs.0: got 0; input should be greater than 0"),
        ({"rungs": [1, 4]}, {}, "rungs: the last rung 4 is past training.epochs 3"),
        ({"rungs": [1], "reduction": 1}, {}, "reduction: got 1; input should be greater"),
        ({"rungs": [1], "halving": 2}, {}, "halving: unknown key"),
        ({"rungs": [1], "promotion": "best"}, {}, "promotion: got 'best'; input should be"),
        ({"rungs": [1], "ema_half_life": 0}, {}, "ema_half_life: got 0; input should be"),
        ({"rungs": [1], "cooldown": 1.5}, {}, "cooldown: got 1.5; input should be less"),
        (
            {"rungs": [1], "cooldown": 0.5, "ema_half_life": 0.5},
            {},
            "early_stopping.cooldown: ema_half_life and cooldown both change what a rung",
        ),
        (
            {"rungs": [1]},
            {"schedule": "decoupled", "stage1": {}, "stage2": {}},
            "search.early_stopping: applies to training.schedule: end_to_end only",
        ),
    ],
)
def test_bad_early_stopping_is_one_line_naming_the_key(
    tmp_path: Path, early: dict[str, Any], training: dict[str, Any], message: str
) -> None:
    raw = make_spec(tmp_path).to_dict()
    raw["search"]["early_stopping"] = early
    if training:
        raw["training"] = training
    with pytest.raises(SpecError) as err:
        spec_from_dict(raw, file="study.yaml")
    text = str(err.value)
    assert text.startswith("study.yaml: search.early_stopping") and message in text, text
    assert "\n" not in text


def test_validate_names_the_key_and_the_fix(tmp_path: Path) -> None:
    raw = make_spec(Path("runs")).to_dict()
    raw["search"]["early_stopping"] = {"rungs": [1, 9]}
    (tmp_path / "study.yaml").write_text(json.dumps(raw))
    ran = run_cli("validate", "study.yaml", cwd=tmp_path, timeout=120)
    assert ran.rc == 2, ran.describe()
    assert ran.err.strip() == (
        "ltsearch: error: study.yaml: search.early_stopping.rungs: the last rung 9 is past "
        "training.epochs 3; use rungs up to 3 (a rung at 3 is the end of training)"
    ), ran.describe()


def test_smoke_variant_drops_early_stopping(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, {"rungs": [1, 2]})
    assert spec.search.early_stopping is not None
    assert spec.smoked().search.early_stopping is None  # 1 epoch: nothing to stop


# -- a trial climbing its rungs -----------------------------------------------------------


def test_without_early_stopping_a_trial_climbs_nothing(tmp_path: Path) -> None:
    spec = make_spec(tmp_path)
    runs, reports = FakeRuns(), []
    _climb(spec, 0.5, runs, reports.append)
    assert runs.calls == [] and reports == []
    assert make_scheduler(spec, spec.study_dir) is None  # Tune's FIFO, as before
    rungs_at_end = make_spec(tmp_path, {"rungs": [3]})  # a rung at the last epoch: none
    _climb(rungs_at_end, 0.5, runs, reports.append)
    assert runs.calls == [] and reports == []


def test_a_trial_trains_each_seed_up_to_each_rung_and_reports_the_mean(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, {"rungs": [1, 2, 3]})
    runs, reports = FakeRuns(), []
    _climb(spec, 0.5, runs, reports.append)
    # seed by seed up to epoch 1, then up to 2 from their checkpoints; 3 is the end (no rung)
    assert runs.calls == [(0.5, 0, 1, 0), (0.5, 1, 1, 0), (0.5, 0, 2, 1), (0.5, 1, 2, 1)]
    assert [r[RUNG_KEY] for r in reports] == [1, 2]
    assert reports[0]["bbox/APr"] == pytest.approx((0.05 + 0.051) / 2)
    chash = choice_hash({"loss": "acsl", "loss_params": {"xi": 0.5}}, spec)
    assert {r[CONFIG_KEY] for r in reports} == {chash}
    stopped = json.loads(reports[1][RUNS_KEY])
    assert [s["row"]["seed"] for s in stopped] == [0, 1]
    row = stopped[1]["row"]
    assert row["status"] == "stopped" and row[RUNG_KEY] == 2 and row["config_hash"] == chash
    assert row["bbox/APr"] == pytest.approx(0.101)
    assert len(stopped[1]["epochs"]) == 2
    assert not (spec.study_dir / "trials").exists()  # rows are the scheduler's to write


def test_a_resumed_trial_skips_the_rungs_it_passed_and_reevaluates_nothing(
    tmp_path: Path,
) -> None:
    spec = make_spec(tmp_path, {"rungs": [1, 2]})
    runs, reports = FakeRuns(), []
    _climb(spec, 0.5, runs, reports.append)
    assert len(runs.calls) == 4
    # the driver died before deciding: the rungs are reported again from the kept
    # evaluations (a seed's checkpoint is past rung 1 by then: it could not be re-run)
    _climb(spec, 0.5, runs, reports.append)
    assert len(runs.calls) == 4 and [r[RUNG_KEY] for r in reports] == [1, 2, 1, 2]
    assert reports[2] == reports[0]
    chash = reports[0][CONFIG_KEY]
    append_log(spec.study_dir, RungRecord(chash, 1, [0.05, 0.025], "continue"))
    _climb(spec, 0.5, runs, reports.append)  # rung 1 passed: only rung 2 is reported
    assert len(runs.calls) == 4 and [r[RUNG_KEY] for r in reports[4:]] == [2]
    append_log(spec.study_dir, RungRecord(chash, 2, [0.1, 0.05], "continue"))
    _climb(spec, 0.5, runs, reports.append)  # every rung passed: on to the end at once
    assert len(runs.calls) == 4 and len(reports) == 5


def test_rungs_evaluate_the_weight_average_when_asked_and_again_when_it_changes(
    tmp_path: Path,
) -> None:
    runs = FakeRuns()
    seen: list[Any] = []

    def execute(cfg: Any, **kw: Any) -> TrialResult:
        seen.append((cfg.stop_at_epoch, cfg.rung_ema))
        return runs(cfg, **kw)

    choice = {"loss": "acsl", "loss_params": {"xi": 0.5}}
    spec = make_spec(tmp_path, {"rungs": [1], "ema_half_life": 0.5})
    climb(_ctx(spec), spec, choice, tune_trial_id="t", execute=execute, report=lambda r: None)
    assert seen == [(1, 0.5), (1, 0.5)]
    workdirs = sorted((spec.study_dir / "runs").iterdir())
    assert [sorted(p.name for p in d.glob("rung-*")) for d in workdirs] == [
        ["rung-1-ema0.5.json"]
    ] * 2
    # the same study with another half-life does not read those evaluations back (the fake
    # run would refuse to go back to epoch 1, so drop its checkpoints as a new run has none)
    for d in workdirs:
        (d / "fake.ckpt").unlink()
    other = make_spec(tmp_path, {"rungs": [1], "ema_half_life": 2.0})
    climb(_ctx(other), other, choice, tune_trial_id="t", execute=execute, report=lambda r: None)
    assert seen[2:] == [(1, 2.0), (1, 2.0)]
    assert sorted((spec.study_dir / "runs").iterdir()) == workdirs  # the same runs
    assert all((d / "rung-1-ema2.json").is_file() for d in workdirs)


def test_rungs_evaluate_a_cooled_down_copy_when_asked(tmp_path: Path) -> None:
    runs = FakeRuns()
    seen: list[Any] = []

    def execute(cfg: Any, **kw: Any) -> TrialResult:
        seen.append((cfg.stop_at_epoch, cfg.rung_cooldown, cfg.rung_ema))
        return runs(cfg, **kw)

    choice = {"loss": "acsl", "loss_params": {"xi": 0.5}}
    spec = make_spec(tmp_path, {"rungs": [1], "cooldown": 0.25})
    climb(_ctx(spec), spec, choice, tune_trial_id="t", execute=execute, report=lambda r: None)
    # the rung's runs ask for the cooldown; the runs to the end do not get one
    assert seen[:2] == [(1, 0.25, None), (1, 0.25, None)]
    workdirs = sorted((spec.study_dir / "runs").iterdir())
    assert [sorted(p.name for p in d.glob("rung-*")) for d in workdirs] == [
        ["rung-1-cool0.25.json"]
    ] * 2


def test_a_stop_ends_the_trial_at_its_report(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, {"rungs": [1, 2]})
    runs = FakeRuns()

    def stopped(result: dict[str, Any]) -> None:
        raise SystemExit(0)  # what ray.tune.report does when the scheduler stops a trial

    with pytest.raises(SystemExit):
        _climb(spec, 0.5, runs, stopped)
    assert [c[2] for c in runs.calls] == [1, 1]


# -- the scheduler ------------------------------------------------------------------------


def _trial(xi: float) -> Any:
    return SimpleNamespace(trial_id=f"t{xi}", config={"loss": "acsl", "acsl.xi": xi})


def _rung_result(spec: StudySpec, xi: float, rung: int, apr: float, apf: float) -> dict:
    choice = {"loss": "acsl", "loss_params": {"xi": xi}}
    chash = choice_hash(choice, spec)
    runs = [
        {
            "row": {
                "study": spec.name, "trial_id": chash, "config_hash": chash, "loss": "acsl",
                "param.acsl.xi": xi, "seed": seed, "status": "stopped", RUNG_KEY: rung,
                "bbox/APr": apr, "bbox/APf": apf,
            },
            "epochs": [{"epoch": float(e), "loss": 1.0} for e in range(rung)],
        }
        for seed in spec.search.seeds
    ]  # fmt: skip
    return {"bbox/APr": apr, "bbox/APf": apf, RUNG_KEY: rung, CONFIG_KEY: chash,
            RUNS_KEY: json.dumps(runs)}  # fmt: skip


def test_scheduler_decides_by_pareto_rank_and_writes_stopped_rows(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, {"rungs": [1, 2], "reduction": 2})
    spec.study_dir.mkdir(parents=True)
    sched = RungScheduler(spec, spec.study_dir)
    on = sched.on_trial_result
    assert on(None, _trial(0.1), _rung_result(spec, 0.1, 1, 0.30, 0.30)) == CONTINUE
    assert on(None, _trial(0.2), _rung_result(spec, 0.2, 1, 0.20, 0.20)) == STOP  # dominated
    # a trade-off (worse APr, better APf) goes on where single-objective ASHA would stop it
    assert on(None, _trial(0.3), _rung_result(spec, 0.3, 1, 0.10, 0.50)) == CONTINUE
    assert on(None, _trial(0.1), {"bbox/APr": 0.4, "bbox/APf": 0.4}) == CONTINUE  # final
    assert on(None, _trial(0.4), {ERROR_KEY: "RuntimeError: boom"}) == CONTINUE
    log = read_log(spec.study_dir)
    assert [(r.label, r.rung, r.decision) for r in log] == [
        ("acsl(xi=0.1)", 1, "continue"),
        ("acsl(xi=0.2)", 1, "stop"),
        ("acsl(xi=0.3)", 1, "continue"),
    ]
    rows = ResultStore(spec.study_dir).load_trials()
    assert sorted(rows["seed"]) == [0, 1] and set(rows["status"]) == {"stopped"}
    assert set(rows["param.acsl.xi"]) == {0.2} and set(rows[RUNG_KEY]) == {1}
    assert len(ResultStore(spec.study_dir).load_epochs()) == 2  # one epoch per seed


@pytest.mark.parametrize(("promotion", "middle"), [("ranked", STOP), ("front", CONTINUE)])
def test_the_scheduler_applies_the_study_s_promotion(
    tmp_path: Path, promotion: str, middle: str
) -> None:
    """Three trade-offs on one front, reduction 2 (2 of 3 go on): the crowded middle one
    is stopped by ``ranked`` and kept by ``front``."""
    spec = make_spec(tmp_path, {"rungs": [1, 2], "reduction": 2, "promotion": promotion})
    spec.study_dir.mkdir(parents=True)
    on = RungScheduler(spec, spec.study_dir).on_trial_result
    assert on(None, _trial(0.1), _rung_result(spec, 0.1, 1, 0.10, 0.90)) == CONTINUE
    assert on(None, _trial(0.2), _rung_result(spec, 0.2, 1, 0.90, 0.10)) == CONTINUE
    assert on(None, _trial(0.3), _rung_result(spec, 0.3, 1, 0.45, 0.45)) == middle


def test_decisions_outlive_the_driver(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, {"rungs": [1, 2], "reduction": 2})
    spec.study_dir.mkdir(parents=True)
    first = RungScheduler(spec, spec.study_dir)
    first.on_trial_result(None, _trial(0.1), _rung_result(spec, 0.1, 1, 0.30, 0.30))
    first.on_trial_result(None, _trial(0.2), _rung_result(spec, 0.2, 1, 0.20, 0.20))
    part = next((spec.study_dir / "trials").glob("*.parquet"))
    written = part.stat().st_mtime_ns
    (spec.study_dir / LOG_FILE).open("ab").write(b'{"config_hash": "torn')  # killed mid-line

    again = RungScheduler(spec, spec.study_dir)  # a resumed driver reads the decisions back
    # the stopped configuration reports its rung again (adopted, or suggested twice): the
    # same answer, its rows left as they were, no second decision
    assert again.on_trial_result(None, _trial(0.2), _rung_result(spec, 0.2, 1, 0.9, 0.9)) == STOP
    assert part.stat().st_mtime_ns == written
    # a newcomer is compared with the configurations recorded before the kill
    assert again.on_trial_result(None, _trial(0.5), _rung_result(spec, 0.5, 1, 0.15, 0.1)) == STOP
    assert [r.decision for r in read_log(spec.study_dir)] == ["continue", "stop", "stop"]


def test_undefined_objectives_rank_last(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, {"rungs": [1], "reduction": 2})
    spec.study_dir.mkdir(parents=True)
    sched = RungScheduler(spec, spec.study_dir)
    sched.on_trial_result(None, _trial(0.1), _rung_result(spec, 0.1, 1, 0.01, 0.01))
    # lvis-api's -1 (no rare category in the validation set): never ahead of a real value
    assert sched.on_trial_result(None, _trial(0.2), _rung_result(spec, 0.2, 1, -1, 0.9)) == STOP
    assert read_log(spec.study_dir)[1].values[0] != read_log(spec.study_dir)[1].values[0]


# -- Optuna sees a stopped trial as pruned ------------------------------------------------


def test_a_stopped_trial_is_pruned_and_an_interrupted_one_stays_running(tmp_path: Path) -> None:
    import optuna

    from ltsearch.run.search import journal_storage, make_searcher, plan_study

    spec = make_spec(tmp_path, {"rungs": [1, 2], "reduction": 2})
    spec.study_dir.mkdir(parents=True)
    storage = journal_storage(spec.study_dir)
    searcher = make_searcher(spec, storage, plan_study(spec, storage)).searcher
    configs = [searcher.suggest(tid) for tid in ("a", "b")]
    results = {}
    for tid, config, decision in zip(("a", "b"), configs, ("stop", "continue"), strict=True):
        chash = choice_hash({"loss": "acsl", "loss_params": {"xi": config["acsl.xi"]}}, spec)
        append_log(spec.study_dir, RungRecord(chash, 1, [0.1, 0.1], decision))
        results[tid] = {"bbox/APr": 0.1, "bbox/APf": 0.2, RUNG_KEY: 1, CONFIG_KEY: chash}
        searcher.on_trial_complete(tid, result=results[tid])
    trials = optuna.load_study(study_name=spec.name, storage=storage).get_trials()
    assert [t.state.name for t in trials] == ["PRUNED", "RUNNING"]
    assert trials[0].user_attrs == {
        RUNG_KEY: 1,
        "rung_values": {"bbox/APr": 0.1, "bbox/APf": 0.2},
    }
