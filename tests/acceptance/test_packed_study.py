"""A study with packed trials (``resources.pack``), through the CLI, against the same study
unpacked, run after it in the same storage (so on the same stage 1 and feature cache, which
``build_threads: 1`` makes the same for both): every (configuration, seed) is its own row
with the same numbers, the rows name
their pack, a failing member is a failed row while its pack's other members go on, and
the exit code says a run failed.

Three configurations, two seeds, ``pack: 3``: seed 0 is one pack of all three, AHR with
12 clusters for 8 classes fails there (at train time: the class count is the dataset's);
seed 1 is one pack of the two that remain. ``LTSEARCH_PACK_WAIT_S`` makes the groups wait
for their members however slowly the trials start on a loaded machine.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator

import pandas as pd
import pytest
from workspace import run_cli

from ltsearch.store import ResultStore

pytestmark = [pytest.mark.acceptance, pytest.mark.slow]

STUDY = """\
name: {name}
dataset: {{kind: lvis, train: data/lvis_synth_train.json, val: data/lvis_synth_val.json, images: data}}
model: {{backbone: tiny, masks: false}}
training:
  schedule: decoupled
  stage1: {{loss: ce, epochs: 6, lr: 0.02, batch_size: 4, warmup_iters: 10}}
  stage2: {{epochs: 2, lr: 0.02, batch_size: 8, warmup_iters: 3, finetune: [box_predictor]}}
loss:
  choice:
    - {{name: acsl, params: {{xi: {{uniform: [0.05, 0.95]}}}}}}
    - {{name: ahr, params: {{num_clusters: {{int: [1, 16]}}}}}}
search:
  sampler: tpe
  objectives: [bbox/APr:max, bbox/AP:max]
  trials: 3
  seeds: [0, 1]
  reuse: {reuse}
  initial_points:
    - {{loss: acsl, xi: 0.7}}
    - {{loss: ahr, num_clusters: 12}}
    - {{loss: acsl, xi: 0.3}}
resources: {{workers: 1, cpus_per_worker: 1, build_threads: 1, {resources}}}
storage: results
"""  # noqa: E501
KEY = ["config_hash", "seed"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    root = tmp_path_factory.mktemp("packed") / "project"
    studies, work = root / "studies", root / "work"
    studies.mkdir(parents=True)
    work.mkdir()
    (studies / "packed.yaml").write_text(
        STUDY.format(name="packed", resources="max_concurrent_trials: 3, pack: 3", reuse="false")
    )
    (studies / "alone.yaml").write_text(
        STUDY.format(name="alone", resources="max_concurrent_trials: 1, pack: 1", reuse="false")
    )
    (studies / "again.yaml").write_text(  # the same design again, reusing what ran
        STUDY.format(name="again", resources="max_concurrent_trials: 1", reuse="true")
    )
    synth = ["--classes", "8", "--train-images", "32", "--val-images", "16", "--image-size", "64"]
    made = run_cli("data", "synth", "--out", "data", *synth, cwd=studies, timeout=300)
    assert made.rc == 0, made.describe()
    before = os.environ.get("LTSEARCH_PACK_WAIT_S")
    os.environ["LTSEARCH_PACK_WAIT_S"] = "300"
    try:
        packed = run_cli("run", "../studies/packed.yaml", cwd=work, timeout=1200)
        alone = run_cli("run", "../studies/alone.yaml", "--no-report", cwd=work, timeout=1200)
        again = run_cli("run", "../studies/again.yaml", "--no-report", cwd=work, timeout=1200)
    finally:
        if before is None:
            os.environ.pop("LTSEARCH_PACK_WAIT_S")
        else:
            os.environ["LTSEARCH_PACK_WAIT_S"] = before
    yield {
        "packed": packed, "alone": alone, "again": again,
        "packed_dir": work / "results" / "packed", "alone_dir": work / "results" / "alone",
        "again_dir": work / "results" / "again",
    }  # fmt: skip


def test_packed_runs_are_rows_that_name_their_pack(runs: dict) -> None:
    ran = runs["packed"]
    assert ran.rc == 1, ran.describe()  # a run failed: the exit code says so
    assert "packs of up to 3 runs" in ran.out, ran.describe()
    assert "4 ok, 1 failed" in ran.out, ran.describe()
    df = ResultStore(runs["packed_dir"]).load_trials()
    assert len(df) == 5 and not df.duplicated(KEY).any()
    seed0, seed1 = df[df["seed"] == 0], df[df["seed"] == 1]
    assert seed0["pack_id"].nunique() == 1 and (seed0["pack_size"] == 3).all()
    failed = df[df["status"] == "failed"]
    assert list(failed["loss"]) == ["ahr"] and list(failed["seed"]) == [0]
    assert "num_clusters" in str(failed["error"].iloc[0])
    assert set(seed1["loss"]) == {"acsl"} and (seed1["status"] == "ok").all()
    assert seed1["pack_id"].nunique() == 1 and (seed1["pack_size"] == 2).all()
    assert seed1["pack_id"].iloc[0] != seed0["pack_id"].iloc[0]
    assert not any(c == "time_pack_size_s" for c in df.columns)
    report = runs["packed_dir"] / "report.md"
    assert report.is_file() and "acsl" in report.read_text()


def test_packed_runs_equal_the_same_runs_alone(runs: dict) -> None:
    ran = runs["alone"]
    assert ran.rc == 1, ran.describe()
    assert "packs of up to" not in ran.out
    packed_store, alone_store = ResultStore(runs["packed_dir"]), ResultStore(runs["alone_dir"])
    alone = alone_store.load_trials()
    assert "pack_id" not in alone.columns or alone["pack_id"].isna().all()
    packed = packed_store.load_trials()
    both = packed.merge(alone, on=KEY, suffixes=("_packed", "_alone"))
    assert len(both) == 5
    assert (both["status_packed"] == both["status_alone"]).all()
    ok = both[both["status_packed"] == "ok"]
    metrics = [c[: -len("_packed")] for c in ok.columns if c.startswith("bbox/") and
               c.endswith("_packed")]  # fmt: skip
    assert "bbox/APr" in metrics and ok[[f"{m}_alone" for m in metrics]].notna().all().all()
    assert ok["bbox/AP_alone"].max() > 0  # something was learned to compare
    for m in metrics:
        for a, b in zip(ok[f"{m}_packed"], ok[f"{m}_alone"], strict=True):
            assert math.isclose(a, b, abs_tol=1e-6), (m, a, b)
    on = ["trial_id", "seed", "epoch"]  # trial_id is the configuration hash
    epochs = packed_store.load_epochs().merge(
        alone_store.load_epochs(), on=on, suffixes=("_p", "_a")
    )
    assert len(epochs) == 4 * 2  # 4 ok runs, 2 epochs each
    losses: pd.DataFrame = epochs[["loss_p", "loss_a"]]
    for a, b in losses.itertuples(index=False):
        assert math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6), (a, b)


def test_a_study_reuses_the_runs_other_studies_of_its_storage_finished(runs: dict) -> None:
    ran = runs["again"]
    assert ran.rc == 1, ran.describe()  # AHR's seed 0 is not reused: it ran, and failed again
    assert "4 ok (4 reused from other studies), 1 failed" in ran.out, ran.describe()
    again = ResultStore(runs["again_dir"]).load_trials()
    alone = ResultStore(runs["alone_dir"]).load_trials()
    both = again.merge(alone, on=KEY, suffixes=("", "_alone"))
    ok = both[both["status"] == "ok"]
    assert len(ok) == 4 and set(ok["reused_from"]) <= {"alone", "packed"}
    assert (ok["study"] == "again").all()
    for a, b in zip(ok["bbox/APr"], ok["bbox/APr_alone"], strict=True):
        assert math.isclose(a, b, abs_tol=1e-6), (a, b)
    failed = again[again["status"] == "failed"]
    assert list(failed["loss"]) == ["ahr"] and failed["reused_from"].isna().all()
    epochs = ResultStore(runs["again_dir"]).load_epochs()
    assert len(epochs) == 4 * 2  # each reused run's epochs were copied with it
