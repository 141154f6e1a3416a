"""The command line on bad input: one ``ltsearch: error:`` line, exit 2, nothing started.

Every malformed study goes through ``validate`` and ``run``: exit code 2, exactly one line
on stderr naming the file and the key path, no traceback, Ray never started
(``ltsearch.run.cluster.connect`` fails the test if called) and nothing written (the storage
root, which already holds another study's directory, stays byte-identical).
"""

from __future__ import annotations

import os
import socket
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ltsearch.cli import main
from ltsearch.control import driver_lock
from ltsearch.run import driver as runner
from ltsearch.spec.study import load_spec
from ltsearch.study_dir import JOURNAL_FILE

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "studies" / "quickstart.yaml"

VALID = """\
name: cli-check
dataset: {kind: synthetic, classes: 8, train_images: 8, val_images: 4, image_size: 64}
model: {backbone: tiny, masks: false}
training:
  schedule: decoupled
  stage1: {loss: ce, epochs: 1, batch_size: 4, warmup_iters: 10}
  stage2: {epochs: 1, batch_size: 4, warmup_iters: 10, finetune: [box_predictor]}
loss: {name: acsl, params: {xi: {uniform: [0.1, 0.9]}}}
search: {sampler: tpe, objectives: [bbox/APr:max, bbox/APf:max], trials: 2, seeds: [0]}
"""


def _body(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


# name -> (file text, or None for "no file"; substrings the error line must contain)
BAD: dict[str, tuple[str | bytes | None, list[str]]] = {
    "yaml-syntax": (VALID.replace("{kind: synthetic,", "{kind: synthetic"), ["line ", "YAML"]),
    "typo-key": (VALID.replace("trials: 2", "trails: 2"), ["search.trails", "unknown key"]),
    "wrong-type": (VALID.replace("trials: 2", "trials: many"), ["search.trials", "'many'"]),
    "unknown-loss": (VALID.replace("name: acsl", "name: acls"), ["loss.name", "'acls'"]),
    "acsl-xi-out-of-range": (
        VALID.replace("{xi: {uniform: [0.1, 0.9]}}", "{xi: 1.5}"),
        ["loss.params.xi", "1.5", "[0, 1]"],
    ),
    "unknown-metric": (
        VALID.replace("bbox/APf:max", "bbox/APx:max"),
        ["search.objectives.1", "'bbox/APx'"],
    ),
    "empty-file": ("", ["empty"]),
    "missing-file": (None, ["file not found"]),
    "zero-trials": (VALID.replace("trials: 2", "trials: 0"), ["search.trials", "greater than 0"]),
    "python-object-tag": (
        VALID.replace("name: cli-check", "name: !!python/object/apply:os.system ['touch PWNED']"),
        ["line 1", "!!python/object/apply:os.system", "not allowed"],
    ),
    "decoupled-without-stage1": (
        VALID.replace("  stage1: {loss: ce, epochs: 1, batch_size: 4, warmup_iters: 10}\n", ""),
        ["training.stage1", "missing"],
    ),
    "feature-cache-with-rpn": (
        VALID.replace("finetune: [box_predictor]", "finetune: [rpn], use_feature_cache: true"),
        ["training.stage2.use_feature_cache", "rpn"],
    ),
    "duplicate-key": (VALID + "loss: {name: ce}\n", ["duplicate key 'loss'", "line 10"]),
    "ahr-negative-lambda-m": (
        VALID.replace(
            "name: acsl, params: {xi: {uniform: [0.1, 0.9]}}",
            "name: ahr, params: {lambda_m: -1.0}",
        ),
        ["loss.params.lambda_m", "-1.0"],
    ),  # fmt: skip
    "top-level-list": ("- name: x\n- loss: ce\n", ["top level is a list"]),
    "initial-point-outside-space": (
        VALID.replace("seeds: [0]", "seeds: [0], initial_points: [{xi: 0.95}]"),
        ["search.initial_points.0.xi", "outside"],
    ),
    "grid-budget-too-large": (
        VALID.replace("{uniform: [0.1, 0.9]}", "{grid: [0.1, 0.9]}")
        .replace("tpe", "grid")
        .replace("trials: 2", "trials: 3"),
        ["search.trials", "exceeds the 2 grid points"],
    ),
    "segm-objective-without-masks": (
        VALID.replace("bbox/APf:max", "segm/APf:max"),
        ["search.objectives.1", "masks"],
    ),
    "loss-listed-twice": (
        VALID.replace(
            "loss: {name: acsl, params: {xi: {uniform: [0.1, 0.9]}}}",
            "loss: {choice: [{name: ce}, {name: ce}]}",
        ),
        ["loss.choice.1", "twice"],
    ),
    "unknown-dataset-kind": (VALID.replace("kind: synthetic", "kind: coco"), ["dataset.kind"]),
    "bad-smoke-block": (VALID + "smoke: {search: {seeds: []}}\n", ["smoke.search.seeds"]),
    "not-utf8": (b"name: \xff\xfe\n", ["UTF-8"]),
}


@pytest.fixture
def no_ray(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fail the test if anything tries to connect to (or start) Ray."""

    def connect(*args: Any, **kwargs: Any) -> str:
        raise AssertionError("Ray was started for a study that should have been rejected")

    monkeypatch.setattr("ltsearch.run.cluster.connect", connect)
    yield
    if "ray" in sys.modules:
        assert not sys.modules["ray"].is_initialized()


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``root`` with its bytes and mtime (empty when ``root`` is absent)."""
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def storage(tmp_path: Path) -> Path:
    """A results root that already holds one study directory (spec, parts, journal)."""
    root = tmp_path / "results"
    spec = load_spec(write(tmp_path, VALID, "existing.yaml")).with_overrides(storage=root)
    study_dir = spec.study_dir
    runner._write_spec(spec, study_dir)
    (study_dir / "trials").mkdir()
    (study_dir / "trials" / "part-0123-s0.parquet").write_bytes(b"not really parquet")
    (study_dir / JOURNAL_FILE).write_text('{"op_code": 0}\n')
    return root


def write(tmp_path: Path, text: str | bytes, name: str = "study.yaml") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line_error(rc: int, err: str, *needles: str) -> str:
    assert rc == 2, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith("ltsearch: error: "), line
    assert "Traceback" not in err
    for needle in needles:
        assert needle in line, (needle, line)
    return line


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_study_is_one_line_and_starts_nothing(
    case: str,
    tmp_path: Path,
    storage: Path,
    no_ray: None,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)  # a YAML tag that ran a command would leave PWNED here
    text, needles = BAD[case]
    path = tmp_path / "study.yaml" if text is None else write(tmp_path, text)
    before = snapshot(storage)
    fresh = tmp_path / "fresh-storage"
    for argv in (
        ["validate", str(path)],
        ["validate", str(path), "--smoke"],
        ["run", str(path), "--storage", str(storage), "--no-report"],
        ["run", str(path), "--smoke", "--storage", str(fresh), "--no-report"],
    ):
        rc, out, err = run_cli(capsys, *argv)
        assert_one_line_error(rc, err, str(path), *needles)
        assert out == ""
    assert snapshot(storage) == before
    assert not fresh.exists()
    assert not (tmp_path / "PWNED").exists()


def test_run_time_data_errors_name_the_file_and_write_nothing(
    tmp_path: Path, storage: Path, no_ray: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """Checks that need the dataset run before anything is written (validate skips them
    unless --check-data)."""
    lvis = VALID.replace(
        "{kind: synthetic, classes: 8, train_images: 8, val_images: 4, image_size: 64}",
        f"{{kind: lvis, train: {tmp_path}/no/train.json, val: {tmp_path}/no/val.json, "
        f"images: {tmp_path}/no}}",
    )
    lvis = lvis.replace("name: cli-check", "name: cli-data")
    path = write(tmp_path, lvis)
    rc, _, err = run_cli(capsys, "validate", str(path))
    assert rc == 0, err
    rc, _, err = run_cli(capsys, "validate", str(path), "--check-data")
    assert_one_line_error(rc, err, str(path), "dataset.train", "does not exist")
    before = snapshot(storage)
    rc, _, err = run_cli(capsys, "run", str(path), "--storage", str(storage), "--no-report")
    assert_one_line_error(rc, err, str(path), "dataset.train", "does not exist")
    assert snapshot(storage) == before

    small = VALID.replace("image_size: 64", "image_size: 40").replace("cli-check", "cli-small")
    # (the spec allows image_size >= 32, the generator needs >= 64)
    path = write(tmp_path, small, "small.yaml")
    rc, _, err = run_cli(capsys, "run", str(path), "--storage", str(storage), "--no-report")
    assert_one_line_error(rc, err, str(path), "dataset", "image_size")
    assert snapshot(storage) == before


def test_a_different_study_in_the_directory_is_refused(
    tmp_path: Path, storage: Path, no_ray: None, capsys: pytest.CaptureFixture[str]
) -> None:
    other = write(tmp_path, VALID.replace("trials: 2", "trials: 3"), "other.yaml")
    before = snapshot(storage)
    rc, _, err = run_cli(capsys, "run", str(other), "--storage", str(storage), "--no-report")
    assert_one_line_error(rc, err, "spec.yaml", "already holds a different study", "resume")
    assert snapshot(storage) == before


def test_a_second_driver_of_one_study_is_refused(
    tmp_path: Path, storage: Path, no_ray: None, capsys: pytest.CaptureFixture[str]
) -> None:
    study = write(tmp_path, VALID, "same.yaml")
    study_dir = storage / "cli-check"
    with driver_lock(study_dir) as holder:
        rc, _, err = run_cli(capsys, "run", str(study), "--storage", str(storage), "--no-report")
        assert_one_line_error(rc, err, str(study_dir), "another ltsearch driver", "running")
        who = f"pid {os.getpid()} on {socket.gethostname()}, started {holder.started_at}"
        assert who in err, err
        rc, _, err = run_cli(capsys, "resume", str(study_dir), "--no-report")
        assert_one_line_error(rc, err, "another ltsearch driver")


def test_resume_and_status_need_a_study_directory(
    tmp_path: Path, no_ray: None, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nowhere"
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "notes.txt").write_text("not a study")
    for argv, needle in (
        (["resume", str(missing)], "no such directory"),
        (["resume", str(plain)], "not a study directory"),
        (["status", str(missing)], "no such directory"),
        (["status", str(plain)], "not a study directory"),
    ):
        rc, out, err = run_cli(capsys, *argv)
        assert_one_line_error(rc, err, argv[1], needle)
        assert out == ""
    assert not missing.exists()
    assert sorted(p.name for p in plain.iterdir()) == ["notes.txt"]


def test_validate_prints_the_ok_line(
    tmp_path: Path, no_ray: None, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, err = run_cli(capsys, "validate", str(QUICKSTART))
    assert (rc, err) == (0, "")
    assert out.startswith(f"{QUICKSTART}: ok")
    assert "study 'quickstart', 24 configuration(s) x 2 seed(s)" in out
    assert "losses ce, acsl, ebl, c2am, gap, ahr, schedule decoupled" in out
    assert out.rstrip().endswith(str(Path("runs") / "quickstart"))

    rc, out, err = run_cli(capsys, "validate", str(QUICKSTART), "--smoke")
    assert (rc, err) == (0, "")
    assert "study 'quickstart-smoke', 2 configuration(s) x 1 seed(s)" in out
    assert out.rstrip().endswith(str(Path("runs") / "quickstart-smoke"))
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("where", ["a-file", "under-a-file", "virtual-fs"])
def test_storage_that_cannot_hold_results_is_one_line_before_ray(
    where: str, tmp_path: Path, no_ray: None, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "notes.txt"
    blocker.write_text("keep me\n")
    target = {
        "a-file": blocker,
        "under-a-file": blocker / "results",
        "virtual-fs": Path("/proc/ltsearch-results"),  # mkdir fails there, root or not
    }[where]
    path = write(tmp_path, VALID)
    rc, out, err = run_cli(capsys, "run", str(path), "--storage", str(target), "--no-report")
    why = "cannot write results" if where == "virtual-fs" else "is a file, not a directory"
    assert_one_line_error(rc, err, str(path), "storage: ", why, "--storage DIR")
    assert out == "" and blocker.read_text() == "keep me\n"
    assert not [p for p in tmp_path.rglob(".ltsearch-probe-*")]


def test_a_refused_token_is_named_in_the_cluster_error() -> None:
    """Ray buries the refusal in a long message, or raises it as the cause of a generic
    ConnectionError; the one line ltsearch prints names it either way."""
    from ltsearch.run.cluster import _cause_line

    buried = RuntimeError(
        "Failed to connect to GCS. Last connection error: " + "x" * 400 + "\nUnauthenticated: "
        "RPC error: InvalidAuthToken: Authentication token is missing or incorrect. more"
    )
    assert _cause_line(buried) == (
        "authentication refused: Unauthenticated: RPC error: InvalidAuthToken: "
        "Authentication token is missing or incorrect"
    )
    try:
        try:
            raise PermissionError("RPC error: InvalidAuthToken: token is missing or incorrect.")
        except PermissionError as cause:
            raise ConnectionError("Failed to connect to Ray cluster at 10.0.0.1:6379") from cause
    except ConnectionError as exc:
        assert "InvalidAuthToken: token is missing or incorrect" in _cause_line(exc)
    assert _cause_line(ConnectionError("Failed to connect\nno route to host")) == (
        "no route to host"
    )
