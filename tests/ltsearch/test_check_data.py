"""``ltsearch validate --check-data`` on broken LVIS-format data: one line naming the file
and what is wrong, exit 2; data that is odd but valid (an image without annotations, a
zero-area box) passes. The data is ``ltsearch data synth`` output, broken
one way per case."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ltsearch.cli import main

STUDY = """\
name: check-data
dataset: {kind: lvis, train: data/lvis_synth_train.json, val: data/lvis_synth_val.json,
          images: data}
model: {backbone: tiny, masks: true}
training: {schedule: end_to_end, epochs: 1, batch_size: 2, warmup_iters: 2}
loss: {name: ce}
search: {sampler: grid, objectives: [bbox/AP:max], seeds: [0]}
"""


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "data"
    synth = ["--classes", "4", "--train-images", "6", "--val-images", "3", "--image-size", "64"]
    assert main(["data", "synth", "--out", str(out), *synth]) == 0
    return out


def edit_json(name: str, fn: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    def apply(data: Path) -> None:
        path = data / name
        d = json.loads(path.read_text())
        fn(d)
        path.write_text(json.dumps(d))

    return apply


def first_image(data: Path, split: str = "train") -> Path:
    return sorted((data / split).iterdir())[0]


def drop_last_category(d: dict[str, Any]) -> None:
    """A validation file of another class subset: one category fewer, consistently."""
    gone = d["categories"].pop()["id"]
    d["annotations"] = [a for a in d["annotations"] if a["category_id"] != gone]


def truncate(data: Path) -> None:
    path = data / "lvis_synth_train.json"
    path.write_bytes(path.read_bytes()[:300])


BROKEN: dict[str, tuple[Callable[[Path], None], str, list[str]]] = {
    "truncated-json": (truncate, "lvis_synth_train.json", ["not valid JSON"]),
    "not-lvis": (
        lambda d: (d / "lvis_synth_val.json").write_text('{"images": []}'),
        "lvis_synth_val.json",
        ["'images', 'annotations' and 'categories'"],
    ),
    "val-categories-differ": (
        edit_json("lvis_synth_val.json", drop_last_category),
        "lvis_synth_val.json",
        ["categories differ from", "only in train"],
    ),
    "unknown-category-id": (
        edit_json("lvis_synth_train.json", lambda d: d["annotations"][0].update(category_id=999)),
        "lvis_synth_train.json",
        ["999"],
    ),
    "missing-image": (
        lambda d: first_image(d).unlink(),
        "lvis_synth_train.json",
        ["file not found", "000000000001"],
    ),
    "corrupt-image": (
        lambda d: first_image(d, "val").write_bytes(b"\x89PNG not an image at all"),
        "lvis_synth_val.json",
        ["cannot read", "as an image"],
    ),
    "box-outside-the-image": (
        edit_json(
            "lvis_synth_train.json",
            lambda d: d["annotations"][0].update(bbox=[50.0, 50.0, 100.0, 100.0]),
        ),
        "lvis_synth_train.json",
        ["outside its 64x64 image"],
    ),
    "wrong-image-size": (
        edit_json("lvis_synth_train.json", lambda d: d["images"][0].update(width=65)),
        "lvis_synth_train.json",
        ["but the JSON says 65x"],
    ),
}

VALID_ODDITIES: dict[str, Callable[[Path], None]] = {
    "image-without-annotations": edit_json(
        "lvis_synth_train.json",
        lambda d: d.update(annotations=[a for a in d["annotations"] if a["image_id"] != 1]),
    ),
    "zero-area-box": edit_json(  # left out of the training targets (_lvis_index.is_degenerate)
        "lvis_synth_train.json",
        lambda d: d["annotations"][0].update(bbox=[10.0, 10.0, 0.0, 5.0]),
    ),
}


def study_with(pristine: Path, tmp_path: Path, breaking: Callable[[Path], None]) -> Path:
    shutil.copytree(pristine, tmp_path / "data")
    breaking(tmp_path / "data")
    study = tmp_path / "study.yaml"
    study.write_text(STUDY)
    return study


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_data_is_one_line_naming_the_file(
    case: str, pristine: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    breaking, file, needles = BROKEN[case]
    study = study_with(pristine, tmp_path, breaking)
    assert main(["validate", str(study)]) == 0  # without --check-data the data is not read
    capsys.readouterr()
    rc = main(["validate", str(study), "--check-data"])
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ltsearch: error: "), err
    assert str(tmp_path / "data" / file) in lines[0], err
    for needle in needles:
        assert needle in lines[0], (needle, err)


@pytest.mark.parametrize("case", sorted(VALID_ODDITIES))
def test_odd_but_valid_data_passes(
    case: str, pristine: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    study = study_with(pristine, tmp_path, VALID_ODDITIES[case])
    rc = main(["validate", str(study), "--check-data"])
    assert rc == 0, capsys.readouterr().err
