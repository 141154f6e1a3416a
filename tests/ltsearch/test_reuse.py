"""``ltsearch.run.reuse``: a run another study of the storage finished is copied only when it
was computed the same way (status, device, workers, code, packages, threads, no early
stopping), with its three parts and where it came from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from ltsearch.provenance import run_metadata
from ltsearch.run.reuse import copy_finished, find_finished
from ltsearch.spec.study import StudySpec, spec_from_dict
from ltsearch.status import StudyProgress
from ltsearch.store import ResultStore

STUDY = {
    "name": "ours",
    "dataset": {"kind": "synthetic", "classes": 8},
    "loss": {"name": "acsl", "params": {"xi": {"grid": [0.3, 0.7]}}},
    "search": {"sampler": "grid", "objectives": ["bbox/APr:max", "bbox/APf:max"]},
}
CHASH, SEED = "00000000000000aa", 1


def _spec(storage: Path, name: str = "ours", **search: Any) -> StudySpec:
    raw = {**STUDY, "name": name, "search": {**STUDY["search"], **search}}
    return spec_from_dict(raw).with_overrides(storage=storage)


def _row(**over: Any) -> dict[str, Any]:
    meta = run_metadata()
    return {"study": "theirs", "trial_id": CHASH, "tune_trial_id": "t9", "config_hash": CHASH,
            "loss": "acsl", "param.acsl.xi": 0.7, "seed": SEED, "status": "ok", "error": None,
            "device": "cpu", "workers": 1, "git_commit": meta["git_commit"],
            "versions": meta["versions"], "host": "h", "pid": 1, "bbox/APr": 0.25,
            "bbox/APf": 0.5, "time_train_s": 12.0, "started_at": "then",
            "finished_at": "later", **over}  # fmt: skip


def _ours() -> dict[str, Any]:
    """This study's row of the run before it runs (what ``base_row`` gives)."""
    meta = run_metadata()
    return {"study": "ours", "config_hash": CHASH, "seed": SEED, "device": "cpu", "workers": 1,
            "git_commit": meta["git_commit"], "versions": meta["versions"]}  # fmt: skip


def _other(storage: Path, name: str = "theirs", resources: Any = None, early: bool = False,
           **row: Any) -> Path:  # fmt: skip
    """A finished study ``name`` in ``storage`` holding the run (CHASH, SEED)."""
    d = storage / name
    d.mkdir(parents=True)
    raw: dict[str, Any] = {**STUDY, "name": name}
    if resources is not None:
        raw["resources"] = resources
    if early:
        raw["search"] = {**STUDY["search"], "early_stopping": {"rungs": [1, 3]}}
    (d / "spec.yaml").write_text(yaml.safe_dump(raw))
    store = ResultStore(d)
    store.write_epochs(CHASH, SEED, [{"epoch": 0, "loss": 1.5}, {"epoch": 1, "loss": 0.9}])
    store.write_categories(CHASH, SEED, [{"category_id": 3, "frequency": "r", "AP": 0.2}])
    store.write_trial(_row(study=name, **row))
    return d


def _find(storage: Path, **search: Any) -> Any:
    spec = _spec(storage, **search)
    return find_finished(spec, spec.study_dir, _ours())


def test_a_run_finished_alike_in_another_study_is_found(tmp_path: Path) -> None:
    other = _other(tmp_path)
    found = _find(tmp_path)
    assert found is not None and found.study_dir == other
    assert found.row["bbox/APr"] == 0.25 and [e["epoch"] for e in found.epochs] == [0, 1]
    assert found.categories[0]["AP"] == 0.2


@pytest.mark.parametrize(
    "why",
    ["failed", "gpu", "two workers", "other code", "other packages", "threads", "early",
     "reuse off", "we stop early", "damaged"],
)  # fmt: skip
def test_a_run_computed_otherwise_is_not_reused(tmp_path: Path, why: str) -> None:
    kw: dict[str, Any] = {
        "failed": {"status": "failed", "error": "boom"},
        "gpu": {"device": "cuda"},
        "two workers": {"workers": 2},
        "other code": {"git_commit": "0123456"},
        "other packages": {"versions": '{"torch": "1.0"}'},
        "threads": {"resources": {"cpus_per_worker": 2}},
        "early": {"early": True},
    }.get(why, {})
    other = _other(tmp_path, **kw)
    search: dict[str, Any] = {"reuse": False} if why == "reuse off" else {}
    if why == "we stop early":
        search = {"early_stopping": {"rungs": [1, 3]}}
    if why == "damaged":
        part = next((other / "trials").glob("*.parquet"))
        data = bytearray(part.read_bytes())
        data[len(data) // 2] ^= 0x10
        part.write_bytes(bytes(data))
    assert _find(tmp_path, **search) is None


def test_its_own_study_and_folders_that_are_no_study_are_passed_over(tmp_path: Path) -> None:
    _other(tmp_path, name="ours")  # this study's own row: the resume path reads it, not reuse
    (tmp_path / "_cache").mkdir()
    assert _find(tmp_path) is None
    _other(tmp_path, name="z-later")
    assert _find(tmp_path).study_dir.name == "z-later"


def test_copied_parts_are_this_studys_run_naming_where_it_was_trained(tmp_path: Path) -> None:
    _other(tmp_path)
    found = _find(tmp_path)
    spec = _spec(tmp_path)
    store = ResultStore(spec.study_dir)
    ours = {"study": "ours", "trial_id": CHASH, "tune_trial_id": "t1", "config_hash": CHASH,
            "loss": "acsl", "param.acsl.xi": 0.7, "seed": SEED, "device": "cpu",
            "workers": 1, "started_at": "now", "git_commit": "x", "versions": "y",
            "host": "me", "pid": 2}  # fmt: skip
    metrics = copy_finished(found, store, ours)
    assert metrics == {"bbox/APr": 0.25, "bbox/APf": 0.5}
    row = store.run_rows("trials", CHASH, SEED)[0]
    assert (row["study"], row["tune_trial_id"], row["reused_from"]) == ("ours", "t1", "theirs")
    assert (row["status"], row["time_train_s"], row["host"]) == ("ok", 12.0, "h")
    assert row["started_at"] == "now" and row["finished_at"] not in ("then", "later")
    assert [r["loss"] for r in store.run_rows("epochs", CHASH, SEED)] == [1.5, 0.9]
    assert store.run_rows("categories", CHASH, SEED)[0]["frequency"] == "r"
    # a third study finds ours first (by name) and names the study that trained it
    (spec.study_dir / "spec.yaml").write_text(yaml.safe_dump(STUDY))
    third_spec = _spec(tmp_path, name="third")
    again = find_finished(third_spec, third_spec.study_dir, _ours())
    assert again is not None and again.study_dir.name == "ours"
    third = ResultStore(tmp_path / "third")
    copy_finished(again, third, {**ours, "study": "third"})
    assert third.run_rows("trials", CHASH, SEED)[0]["reused_from"] == "theirs"


def test_the_runs_line_counts_reused_rows() -> None:
    p = StudyProgress(study_dir=Path("x"), trials_total=2, rows_ok=4, rows_failed=1,
                      rows_reused=3)  # fmt: skip
    assert (
        p.runs_line()
        == "runs (configuration x seed): 4 ok (3 reused from other studies), 1 failed"
    )
    assert "reused" not in StudyProgress(study_dir=Path("x"), trials_total=2).runs_line()


def test_a_studys_summed_run_time_leaves_reused_runs_out() -> None:
    import pandas as pd

    from ltsearch.report.sections import wall_time

    runs = pd.DataFrame({
        "status": ["ok", "ok", "ok"], "reused_from": [None, "theirs", None],
        "started_at": ["2026-12-07T10:00:00+00:00"] * 3,
        "finished_at": ["2026-12-07T10:01:00+00:00"] * 3,
        "time_total_s": [60.0, 3600.0, 30.0], "time_train_s": [50.0, 3000.0, 20.0],
    })  # fmt: skip
    text = wall_time(runs)
    assert "run time summed 0h01m30s (train 0h01m10s)" in text, text
    assert text.endswith("1 run(s) reused from other studies, not counted")
    assert "reused" not in wall_time(runs.drop(columns="reused_from"))
