"""The study runner: resume planning from the journal (fast), and end to end on Ray
(slow): run, run again, a failing trial, kill -9 of the driver and resume.

The studies are tiny (8 classes, 16 training images, 1 epoch, masks off) so that a trial
costs about a second on 2 cores; what is checked is the bookkeeping: one parquet row per
(configuration, seed), nothing re-run, failures recorded, exactly-once after a crash.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from ltsearch.cli import main
from ltsearch.store import ResultStore
from ltsearch.study_dir import JOURNAL_FILE

REPO = Path(__file__).resolve().parents[2]
METRICS = ("bbox/AP", "bbox/AP50", "bbox/APr", "bbox/APc", "bbox/APf")

# A decoupled study on an LVIS-format dataset (written by `ltsearch data synth`), so that
# the dataset's class count is unknown when the spec loads: AHR with 12 clusters for 8
# classes is then a legitimate configuration that fails at train time (ConfigError).
RUNNER_STUDY = """\
name: runner-check
dataset: {data}
model: {{backbone: tiny, masks: false}}
training:
  schedule: decoupled
  stage1: {{loss: ce, epochs: 1, batch_size: 4, warmup_iters: 10}}
  stage2: {{epochs: 1, batch_size: 4, warmup_iters: 10, finetune: [box_predictor]}}
loss:
  choice:
    - {{name: acsl, params: {{xi: {{uniform: [0.05, 0.95]}}}}}}
    - {{name: ahr, params: {{num_clusters: {{int: [1, 16]}}}}}}
search:
  sampler: tpe
  objectives: [bbox/APr:max, bbox/APf:max]
  trials: 3
  seeds: [0, 1]
  initial_points: &points
    - {{loss: acsl, xi: 0.7}}
    - {{loss: ahr, num_clusters: 12}}
    - {{loss: acsl, xi: 0.3}}
smoke:
  dataset: {data}
  search: {{trials: 3, seeds: [0, 1], initial_points: *points}}
"""

# End to end (no shared stage 1), so each seed trains for about a second: slow enough to
# kill the driver between two trials, fast enough for the whole study to take seconds.
KILL_STUDY = """\
name: kill-check
dataset: {kind: synthetic, classes: 8, train_images: 16, val_images: 8, image_size: 64}
model: {backbone: tiny, masks: false}
training: {schedule: end_to_end, epochs: 1, batch_size: 4, warmup_iters: 10}
loss: {name: acsl, params: {xi: {uniform: [0.05, 0.95]}}}
search:
  sampler: tpe
  objectives: [bbox/APr:max, bbox/APf:max]
  trials: 4
  seeds: [0, 1]
  initial_points: [{xi: 0.7}, {xi: 0.3}, {xi: 0.5}]
resources: {workers: 1, cpus_per_worker: 1, max_concurrent_trials: 1}
"""


def parts(study_dir: Path) -> dict[str, int]:
    """Trial part files and their mtimes."""
    return {p.name: p.stat().st_mtime_ns for p in (study_dir / "trials").glob("*.parquet")}


def journal_trials(study_dir: Path, name: str) -> list[Any]:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(study_dir / JOURNAL_FILE)))
    return optuna.load_study(study_name=name, storage=storage).get_trials()


def same_point(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.keys() == b.keys() and all(
        math.isclose(a[k], b[k]) if isinstance(a[k], float) else a[k] == b[k] for k in a
    )


@pytest.fixture(scope="module")
def runner_study(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Run the smoke variant of RUNNER_STUDY once, then once more; keep what each left."""
    root = tmp_path_factory.mktemp("runner")
    data_dir = root / "data"
    synth = ["--classes", "8", "--train-images", "16", "--val-images", "8", "--image-size", "64"]
    assert main(["data", "synth", "--out", str(data_dir), *synth]) == 0
    data = (
        f"{{kind: lvis, train: {data_dir}/lvis_synth_train.json, "
        f"val: {data_dir}/lvis_synth_val.json, images: {data_dir}}}"
    )
    study = root / "runner.yaml"
    study.write_text(RUNNER_STUDY.format(data=data))
    storage = root / "results"
    argv = ["run", str(study), "--smoke", "--storage", str(storage), "--no-report", "--quiet"]
    t0 = time.perf_counter()
    rc_first = main(argv)
    first_s = time.perf_counter() - t0
    study_dir = storage / "runner-check-smoke"
    first = {
        "parts": parts(study_dir),
        "rows": ResultStore(study_dir).load_trials(),
        "journal": (study_dir / JOURNAL_FILE).read_bytes(),
    }
    t0 = time.perf_counter()
    rc_again = main(argv)
    again_s = time.perf_counter() - t0
    print(f"runner study: first run {first_s:.1f} s, second run {again_s:.1f} s")
    return {
        "dir": study_dir, "rc": rc_first, "rc_again": rc_again, "first": first,
        "first_s": first_s, "again_s": again_s,
    }  # fmt: skip


@pytest.mark.slow
def test_smoke_study_runs_to_completion_with_one_row_per_run(
    runner_study: dict[str, Any],
) -> None:
    # the study completes, but one of its runs failed: the exit code says so
    assert runner_study["rc"] == 1
    df: pd.DataFrame = runner_study["first"]["rows"]
    # 3 configurations: two ok with both seeds, AHR failed at its first seed (and stopped)
    assert not df.duplicated(["config_hash", "seed"]).any()
    ok = df[df["status"] == "ok"]
    assert sorted(ok.groupby("config_hash")["seed"].apply(sorted).tolist()) == [[0, 1], [0, 1]]
    assert sorted(ok["param.acsl.xi"].unique().tolist()) == [0.3, 0.7]
    assert set(ok["loss"]) == {"acsl"}
    for col in (*METRICS, "time_total_s", "started_at", "finished_at", "git_commit", "versions"):
        assert col in df.columns, col
        assert ok[col].notna().all(), col
    assert ok["bbox/AP"].between(0, 100).all()
    assert (ok["study"] == "runner-check-smoke").all()
    assert ok["error"].isna().all()
    store = ResultStore(runner_study["dir"])
    for kind in ("epochs", "categories"):
        got = getattr(store, f"load_{kind}")()
        assert set(zip(got["trial_id"], got["seed"], strict=True)) == set(
            zip(ok["trial_id"], ok["seed"], strict=True)
        )


@pytest.mark.slow
def test_a_failing_trial_is_recorded_and_the_study_goes_on(runner_study: dict[str, Any]) -> None:
    df: pd.DataFrame = runner_study["first"]["rows"]
    failed = df[df["status"] == "failed"]
    assert len(failed) == 1
    row = failed.iloc[0]
    assert row["loss"] == "ahr" and row["param.ahr.num_clusters"] == 12 and row["seed"] == 0
    assert "ConfigError" in row["error"] and "num_clusters=12" in row["error"]
    assert math.isnan(row.get("bbox/AP", math.nan))
    # the study went on past it: the third starting point ran after the failure
    ok = df[df["status"] == "ok"]
    assert (ok[ok["param.acsl.xi"] == 0.3]["started_at"] > row["finished_at"]).all()
    states = [t.state.name for t in journal_trials(runner_study["dir"], "runner-check-smoke")]
    assert states == ["COMPLETE", "FAIL", "COMPLETE"]


@pytest.mark.slow
def test_running_a_finished_study_again_reruns_nothing(
    runner_study: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    study_dir: Path = runner_study["dir"]
    first = runner_study["first"]
    assert runner_study["rc_again"] == 1  # the failed run still stands in the results
    assert parts(study_dir) == first["parts"]  # no part rewritten, none added
    again = ResultStore(study_dir).load_trials()
    cols = ["config_hash", "seed", "status", "started_at"]
    pd.testing.assert_frame_equal(
        again[cols].sort_values(cols).reset_index(drop=True),
        first["rows"][cols].sort_values(cols).reset_index(drop=True),
    )
    assert (study_dir / JOURNAL_FILE).read_bytes() == first["journal"]  # no new trial
    assert main(["status", str(study_dir)]) == 0
    out = capsys.readouterr().out
    assert "progress: 3/3 trials, 1 failed, study complete" in out
    assert "configurations: 2 with an ok run, 2 of them with every seed (3 started)" in out
    assert "runs (configuration x seed): 4 ok, 1 failed" in out
    assert "FAILED" in out and "num_clusters=12" in out


@pytest.mark.slow
def test_resume_after_kill_9_runs_every_configuration_once(
    tmp_path: Path, ray_nodes: Any, capfd: pytest.CaptureFixture[str]
) -> None:
    t_start = time.perf_counter()
    ray_nodes.start_head(num_cpus=4, dashboard=False)
    study = tmp_path / "kill.yaml"
    study.write_text(KILL_STUDY)
    storage = tmp_path / "results"
    study_dir = storage / "kill-check"
    cli = [sys.executable, "-m", "ltsearch"]
    log = open(tmp_path / "driver.log", "w")  # noqa: SIM115 (closed below)
    # Ray Tune saves its experiment state at most every 10 s (here: only at the start), so
    # the driver dies with Tune's state behind the journal, as a long study's driver does.
    env = {**ray_nodes.env, "TUNE_GLOBAL_CHECKPOINT_S": "3600"}
    driver = subprocess.Popen(
        [*cli, "run", str(study), "--storage", str(storage), "--address", ray_nodes.address,
         "--no-report"],
        env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:  # kill it once the first configuration is done and the second one has started
        deadline = time.monotonic() + 240
        while len(parts(study_dir)) < 3 and driver.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
        assert len(parts(study_dir)) >= 3, "the study did not get going within 240 s"
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
        log.close()
    at_kill = parts(study_dir)
    assert 3 <= len(at_kill) < 8, at_kill  # killed mid-study
    t_killed = time.perf_counter()

    # without RAY_AUTH_MODE: with a token here, ltsearch turns token mode on by itself
    env = {k: v for k, v in ray_nodes.env.items() if k != "RAY_AUTH_MODE"}
    resumed = subprocess.run(
        [*cli, "resume", str(study_dir), "--address", ray_nodes.address, "--no-report"],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    last = resumed.stdout.strip().splitlines()[-1]
    assert last.startswith("kill-check: 4/4 trials, study complete"), resumed.stdout[-3000:]
    assert last.endswith("runs (configuration x seed): 8 ok, 0 failed"), resumed.stdout[-3000:]
    t_resumed = time.perf_counter()

    df = ResultStore(study_dir).load_trials()
    assert len(df) == 8 and (df["status"] == "ok").all()
    assert not df.duplicated(["config_hash", "seed"]).any()
    assert df["config_hash"].nunique() == 4
    assert sorted(df.groupby("config_hash")["seed"].apply(sorted).tolist()) == [[0, 1]] * 4
    after = parts(study_dir)
    assert {k: after[k] for k in at_kill} == at_kill  # what finished before the kill stayed

    trials = journal_trials(study_dir, "kill-check")
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4
    xis = sorted(t.params["acsl.xi"] for t in trials)
    assert sorted(df.drop_duplicates("config_hash")["param.acsl.xi"]) == pytest.approx(xis)
    for xi in (0.7, 0.3, 0.5):
        point = {"loss": "acsl", "acsl.xi": xi}
        enqueued = [t for t in trials if same_point(t.system_attrs.get("fixed_params", {}), point)]
        assert len(enqueued) == 1, (xi, [t.number for t in enqueued])
    print(
        f"kill -9 test: head + run until the first part {t_killed - t_start:.1f} s, "
        f"resume {t_resumed - t_killed:.1f} s ({len(at_kill)} of 8 parts at the kill)"
    )


PLAN_STUDY = """\
name: plan-check
dataset: {kind: synthetic, classes: 8}
loss: {name: acsl, params: {xi: {uniform: [0.05, 0.95]}}}
search:
  objectives: [bbox/APr:max, bbox/APf:max]
  trials: 5
  initial_points: [{xi: 0.7}, {xi: 0.3}, {xi: 0.5}]
"""


def killed_journal(tmp_path: Path) -> tuple[Any, Any, Path]:
    """A journal as a driver killed mid-study leaves it: point 0.7 complete, 0.3 asked
    (RUNNING), 0.5 still enqueued (WAITING), plus a cut-off last line and a stale lock."""
    import optuna

    from ltsearch.run.search import journal_storage
    from ltsearch.spec.study import spec_from_dict

    spec = spec_from_dict(yaml.safe_load(PLAN_STUDY)).with_overrides(storage=tmp_path)
    study_dir = spec.study_dir
    study_dir.mkdir(parents=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=spec.name, storage=journal_storage(study_dir),
        directions=["maximize", "maximize"],
    )  # fmt: skip
    for xi in (0.7, 0.3, 0.5):
        study.enqueue_trial({"loss": "acsl", "acsl.xi": xi})
    for _ in range(2):
        trial = study.ask()
        trial.suggest_categorical("loss", ["acsl"])
        trial.suggest_float("acsl.xi", 0.05, 0.95)
    study.tell(0, [1.0, 2.0])
    journal = study_dir / JOURNAL_FILE
    with open(journal, "ab") as f:
        f.write(b'{"op_code": 5, "worker_id": "cut-o')  # a write cut short by the kill
    (study_dir / (JOURNAL_FILE + ".lock")).symlink_to(study_dir / "gone")
    return spec, study, study_dir


def test_a_resumed_study_plans_from_the_journal(tmp_path: Path) -> None:
    from ltsearch.run.search import journal_storage, plan_study, repair_journal

    spec, _, study_dir = killed_journal(tmp_path)
    repair_journal(study_dir)
    assert (study_dir / JOURNAL_FILE).read_bytes().endswith(b"\n")
    assert not (study_dir / (JOURNAL_FILE + ".lock")).is_symlink()
    storage = journal_storage(study_dir)
    plan = plan_study(spec, storage)
    assert (plan.finished, plan.failed, plan.trials_in_journal) == (1, 0, 3)
    assert len(plan.adopt) == 1  # the 0.3 trial in flight
    assert plan.points == []  # every starting point is in the journal already
    assert plan.to_run == 4  # the adopted trial, the waiting 0.5 and two new ones

    from ltsearch.run.search import make_searcher

    searcher = make_searcher(spec, storage, plan).searcher
    assert searcher.suggest("a") == {"loss": "acsl", "acsl.xi": 0.3}  # adopted, not re-asked
    assert searcher.suggest("b") == {"loss": "acsl", "acsl.xi": 0.5}  # the waiting point
    new = searcher.suggest("c")
    assert new["loss"] == "acsl" and 0.05 <= new["acsl.xi"] <= 0.95
    searcher.on_trial_complete("a", {"bbox/APr": 3.0, "bbox/APf": 4.0})
    trials = journal_trials(study_dir, spec.name)
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE", "RUNNING", "RUNNING"]
    assert trials[1].values == [3.0, 4.0]
    for xi in (0.7, 0.3, 0.5):
        point = {"loss": "acsl", "acsl.xi": xi}
        assert sum(same_point(t.system_attrs.get("fixed_params", {}), point) for t in trials) == 1
    later = plan_study(spec, storage)  # a second resume: 2 done, 2 in flight, 1 to add
    assert (later.finished, len(later.adopt), later.to_run) == (2, 2, 3)


def test_a_fresh_study_enqueues_its_starting_points_once(tmp_path: Path) -> None:
    from ltsearch.run.search import journal_storage, plan_study
    from ltsearch.spec.study import spec_from_dict

    spec = spec_from_dict(yaml.safe_load(PLAN_STUDY)).with_overrides(storage=tmp_path)
    plan = plan_study(spec, journal_storage(tmp_path))
    assert (plan.finished, plan.adopt, plan.to_run) == (0, [], 5)
    assert [p["acsl.xi"] for p in plan.points] == [0.7, 0.3, 0.5]
