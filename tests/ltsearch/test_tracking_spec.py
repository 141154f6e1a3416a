"""The ``tracking`` section of a study and ``--mlflow``: where a URI points, what is refused
(one line naming the file, the key and the fix), and that tracking is not part of what a
study is (a study run again with another tracking URI is the same study). Fast: no
training, no MLflow server (tests/ltsearch/test_tracking.py logs for real)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from ltsearch.errors import SpecError
from ltsearch.run import driver
from ltsearch.spec.paths import require_absolute, tracking_uri
from ltsearch.spec.study import load_spec, spec_from_dict
from ltsearch.tracking import open_tracker
from ltsearch.tracking.spec_file import record_descriptive
from ltsearch.tracking.state import TrackingState, save_state, status_line

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "acceptance"))
from workspace import run_cli  # noqa: E402

STUDY = {
    "name": "track-spec",
    "dataset": {"kind": "synthetic", "classes": 8},
    "loss": {"name": "acsl", "params": {"xi": {"uniform": [0.1, 0.9]}}},
    "search": {"trials": 2},
}


def write_study(directory: Path, **extra: object) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "s.yaml"
    path.write_text(yaml.safe_dump({**STUDY, **extra}, sort_keys=False))
    return path


@pytest.mark.parametrize(
    ("uri", "resolved"),
    [
        ("mlruns", "/base/mlruns"),
        ("./a/../mlruns", "/base/mlruns"),
        ("/abs/mlruns", "/abs/mlruns"),
        ("file:mlruns", "file:///base/mlruns"),
        ("file:///abs/mlruns", "file:///abs/mlruns"),
        ("sqlite:///m.db", "sqlite:////base/m.db"),
        ("sqlite:////abs/m.db", "sqlite:////abs/m.db"),
        ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
        ("postgresql://u@host/db", "postgresql://u@host/db"),
        ("databricks", "databricks"),
    ],
)
def test_a_local_store_is_made_absolute_a_server_is_left_alone(uri: str, resolved: str) -> None:
    assert tracking_uri(uri, "/base") == resolved


def test_the_study_file_directory_anchors_the_file_and_the_cwd_anchors_the_flag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    studies, work = tmp_path / "studies", tmp_path / "work"
    path = write_study(studies, tracking={"mlflow": "sqlite:///track/m.db"})
    work.mkdir()
    monkeypatch.chdir(work)
    spec = load_spec(path)
    assert spec.tracking is not None
    assert spec.tracking.mlflow == f"sqlite:///{studies}/track/m.db"
    require_absolute(spec)
    flagged = spec.with_overrides(mlflow="mlruns")  # --mlflow: relative to where you are
    assert flagged.tracking is not None and flagged.tracking.mlflow == str(work / "mlruns")
    with pytest.raises(AssertionError, match="tracking.mlflow='mlruns'"):
        require_absolute(spec_from_dict({**STUDY, "tracking": {"mlflow": "mlruns"}}))


@pytest.mark.parametrize(
    ("tracking", "needles"),
    [
        ({"mlfow": "mlruns"}, ["tracking.mlfow", "unknown key"]),
        ({"mlflow": "ftp://host/x"}, ["tracking.mlflow", "scheme 'ftp'", "http(s)://HOST:PORT"]),
        ({"mlflow": "http://:5000"}, ["tracking.mlflow", "names no host"]),
        ({"mlflow": "sqlite://"}, ["tracking.mlflow", "sqlite:///FILE.db"]),
        ({"mlflow": 5}, ["tracking.mlflow", "valid string"]),
        ("mlruns", ["tracking", "valid dictionary"]),
    ],
)
def test_a_bad_tracking_section_is_one_located_line(tracking: object, needles: list[str]) -> None:
    with pytest.raises(SpecError) as info:
        spec_from_dict({**STUDY, "tracking": tracking}, file="s.yaml")
    text = str(info.value)
    assert text.startswith("s.yaml: ") and "\n" not in text, text
    for needle in needles:
        assert needle in text, (needle, text)


def test_the_cli_refuses_a_bad_key_and_a_bad_flag_in_one_line(tmp_path: Path) -> None:
    write_study(tmp_path / "studies", tracking={"mlfow": "mlruns"})
    ran = run_cli("validate", "studies/s.yaml", cwd=tmp_path)
    assert ran.rc == 2, ran.describe()
    lines = ran.err.strip().splitlines()
    assert len(lines) == 1, ran.describe()
    assert lines[0].startswith("ltsearch: error: studies/s.yaml: tracking.mlfow: unknown key")
    write_study(tmp_path / "studies", storage="out")
    ran = run_cli("run", "studies/s.yaml", "--mlflow", "ftp://host/x", cwd=tmp_path)
    assert ran.rc == 2, ran.describe()
    lines = ran.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ltsearch: error: --mlflow: scheme 'ftp'")
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_another_tracking_uri_is_the_same_study_and_is_recorded(tmp_path: Path) -> None:
    spec = load_spec(write_study(tmp_path, storage=str(tmp_path / "out")))
    driver._write_spec(spec, spec.study_dir)
    tracked = spec.with_overrides(mlflow="http://127.0.0.1:5000")
    driver._check_spec_dir(tracked, spec.study_dir)  # not "a different study"
    record_descriptive(tracked, spec.study_dir)
    stored = yaml.safe_load((spec.study_dir / "spec.yaml").read_text())
    assert stored["tracking"] == {"mlflow": "http://127.0.0.1:5000"}
    assert {k: v for k, v in stored.items() if k != "tracking"} == spec.to_dict()
    record_descriptive(spec, spec.study_dir)  # the study file without tracking: it stops
    assert "tracking" not in yaml.safe_load((spec.study_dir / "spec.yaml").read_text())
    other = spec_from_dict({**spec.to_dict(), "search": {"trials": 3}})
    with pytest.raises(SpecError, match="already holds a different study"):
        driver._check_spec_dir(other, spec.study_dir)


def test_reworded_profile_rules_are_the_same_study_and_are_recorded(tmp_path: Path) -> None:
    """An embedded study stored by a version that worded a rule and its description
    otherwise, with a reference since removed: run again, it is the same study, and
    ``spec.yaml`` takes the current words; another profile source, or another budget, is
    still a different study."""
    path = write_study(tmp_path)
    spec = load_spec(path).embedded_variant(cwd=tmp_path)  # results in tmp_path/runs
    assert spec.study_dir.is_relative_to(tmp_path)
    assert spec.profile is not None and spec.profile.rules
    driver._write_spec(spec, spec.study_dir)
    stored_path = spec.study_dir / "spec.yaml"
    old = yaml.safe_load(stored_path.read_text())
    old["profile"]["rules"] = ["an older wording", *old["profile"]["rules"][1:]]
    old["description"] = "an older description"
    old["reference"] = {"source": "a paper", "rows": [{"xi": 0.5, "APr": 1.0}]}
    stored_path.write_text(yaml.safe_dump(old, sort_keys=False))
    driver._check_spec_dir(spec, spec.study_dir)  # not "a different study"
    record_descriptive(spec, spec.study_dir)
    assert yaml.safe_load(stored_path.read_text()) == spec.to_dict()
    raw = spec.to_dict()
    for other in (
        {**raw, "profile": {**raw["profile"], "source": "elsewhere.yaml"}},
        {**raw, "training": {**raw["training"], "epochs": 5}},
    ):
        with pytest.raises(SpecError, match="already holds a different study"):
            driver._check_spec_dir(spec_from_dict(other), spec.study_dir)


def test_a_tracking_study_without_mlflow_installed_is_a_user_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = load_spec(write_study(tmp_path, tracking={"mlflow": "mlruns"}))
    assert open_tracker(spec.with_overrides(mlflow=None)) is not None
    assert open_tracker(spec_from_dict({**STUDY, "storage": str(tmp_path)})) is None
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a)
    )
    with pytest.raises(SpecError, match=r"tracking\.mlflow: needs the mlflow package"):
        open_tracker(spec)


def test_status_line_counts_runs_errors_and_rows_left(tmp_path: Path) -> None:
    rows = [
        {"trial_id": "a", "seed": 0, "finished_at": "t0"},
        {"trial_id": "a", "seed": 1, "finished_at": "t1"},
        {"trial_id": "b", "seed": 0, "finished_at": "t2"},
    ]
    assert status_line(tmp_path, None, rows) is None  # never tracked: no line
    assert status_line(tmp_path, "mlruns", rows) == (
        "mlflow: 0 runs logged, 0 errors; mlruns; 3 not logged yet (the next run, resume or "
        "report logs them)"
    )
    state = TrackingState(uri="mlruns", errors=1, last_error="OSError: gone")
    state.runs = {"a-s0": {"run_id": "r", "finished_at": "t0"}, "a-s1": {"finished_at": "t"}}
    save_state(tmp_path, state)
    line = status_line(tmp_path, "mlruns", rows)
    assert line is not None and line.startswith(
        "mlflow: 2 runs logged, 1 error (last: OSError: gone); mlruns; 2 not logged yet"
    )  # a-s1 was replaced since (another finished_at), b-s0 is new
    assert status_line(tmp_path, None, rows) == line  # tracking turned off: the last state
    assert status_line(tmp_path, "http://h:1", rows).startswith("mlflow: 0 runs logged")
