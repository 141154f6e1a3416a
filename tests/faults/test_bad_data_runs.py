"""Data that passes ``ltsearch run --check-data`` and is met only in training: odd but
valid annotations train; an image damaged past its header fails the rows that read it,
naming the file, and a systematic failure stops the study (exit 1). The project is
:mod:`bad_project`'s; the cases refused before anything runs are in :mod:`test_bad_input`."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
import records
from bad_project import RUN_CHECK, edit_json, study, to_jpeg
from workspace import run_cli

pytestmark = [pytest.mark.faults]


def data_project(tmp_path: Path, pristine: Path, text: str) -> Path:
    root = tmp_path / "project"
    shutil.copytree(pristine, root / "data")
    (root / "study.yaml").write_text(text)
    return root


def own_ray_tmp(monkeypatch: pytest.MonkeyPatch) -> Path:
    root = Path(tempfile.mkdtemp(prefix="ltrun", dir="/tmp"))
    monkeypatch.setenv("RAY_TMPDIR", str(root))
    return root


@pytest.mark.slow
def test_odd_but_valid_data_passes_the_check_and_trains(
    tmp_path: Path, pristine: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ltsearch.store import ResultStore

    ray_tmp = own_ray_tmp(monkeypatch)
    text = study("loss: {name: acsl, params: {xi: {grid: [0.3, 0.7]}}}", "loss: {name: ce}")
    root = data_project(tmp_path, pristine, text)

    def oddities(d: dict[str, Any]) -> None:
        d["annotations"] = [a for a in d["annotations"] if a["image_id"] != 2]  # no annotations
        d["annotations"][0]["bbox"] = [10.0, 10.0, 0.0, 5.0]  # zero area

    edit_json("lvis_synth_train.json", oddities)(root)
    ran = run_cli(*RUN_CHECK, cwd=root, timeout=600)
    try:
        assert ran.rc == 0, ran.describe()
        assert "Traceback" not in ran.out + ran.err, ran.describe()
        rows = ResultStore(root / "results" / "bad-input").load_trials()
        assert len(rows) == 1 and (rows["status"] == "ok").all(), rows
        # the Ray detector of the table works: a run that starts Ray leaves its folder there
        assert (ray_tmp / "ray").is_dir(), os.listdir(ray_tmp)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    for case, injected in (
        ("zero-area box", "an annotation with bbox [10, 10, 0, 5]"),
        ("image without annotations", "every annotation of train image 2 removed"),
    ):
        records.record(
            case=case,
            group="bad input",
            injected=f"{injected}; `ltsearch run --check-data`",
            promised="valid oddity: passes --check-data and trains",
            observed=f"exit 0, {len(rows)} row ok",
            refused_cleanly=0,
            trained=1,
        )


@pytest.mark.slow
def test_an_image_damaged_past_its_header_fails_rows_naming_it(
    tmp_path: Path, pristine: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The header reads (``--check-data`` passes); decoding in training fails. Every run
    reads that image, so the study stops after ``max_failures: 2`` alike failures."""
    from ltsearch.store import ResultStore

    ray_tmp = own_ray_tmp(monkeypatch)
    root = data_project(tmp_path, pristine, study("[0.3, 0.7]", "[0.1, 0.3, 0.5, 0.7]"))
    jpg = to_jpeg(root, lambda b: b[: len(b) // 2])
    try:
        ran = run_cli(*RUN_CHECK, cwd=root, timeout=600)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert ran.rc == 1, ran.describe()
    assert "stopped: the first 2 trials failed with the same error" in ran.out, ran.describe()
    rows = ResultStore(root / "results" / "bad-input").load_trials()
    assert 1 <= len(rows) <= 3 and (rows["status"] == "failed").all(), rows
    errors = rows["error"].astype(str)
    assert errors.str.contains(str(jpg), regex=False).all(), errors.tolist()
    assert errors.str.contains("cannot decode").all(), errors.tolist()
    last = ran.out.strip().splitlines()[-1]
    assert "failed" in last and "ltsearch status" in last, ran.describe()
    records.record(
        case="jpeg damaged past its header",
        group="bad input",
        injected="train image 1 a JPEG cut in half (header intact); `ltsearch run --check-data`",
        promised="found in training: failed rows naming the file; a systematic error stops "
        "the study after max_failures, exit 1",
        observed=f"exit 1, {len(rows)} failed row(s) naming {jpg.name}, study stopped",
        failed_rows=len(rows),
        rows_naming_file=int(errors.str.contains(str(jpg), regex=False).sum()),
        refused_cleanly=0,
    )
