"""Where a study's relative paths point: storage from the working directory, data and
weights from the study file's directory (README "Writing a study")."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ltsearch.spec.paths import require_absolute, resolve_raw
from ltsearch.spec.study import load_spec, spec_from_dict

LVIS = {"kind": "lvis", "train": "d/train.json", "val": "d/val.json", "images": "d/img"}


def study(dataset: dict, **extra: object) -> dict:
    return {
        "name": "paths", "dataset": dataset,
        "loss": {"name": "ce"}, "search": {"sampler": "grid"}, **extra,
    }  # fmt: skip


def test_storage_is_relative_to_cwd_and_data_to_the_study_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    studies, work = tmp_path / "studies", tmp_path / "work"
    studies.mkdir()
    work.mkdir()
    path = studies / "s.yaml"
    path.write_text(yaml.safe_dump(study(LVIS, storage="out")))
    monkeypatch.chdir(work)
    spec = load_spec(path)
    assert spec.storage == str(work / "out")
    assert spec.dataset.train == str(studies / "d" / "train.json")
    assert spec.dataset.images == str(studies / "d" / "img")
    require_absolute(spec)


def test_a_relative_study_file_path_resolves_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "studies").mkdir()
    (tmp_path / "studies" / "s.yaml").write_text(yaml.safe_dump(study(LVIS)))
    monkeypatch.chdir(tmp_path)
    spec = load_spec("studies/s.yaml")
    assert spec.storage == str(tmp_path / "runs")
    assert spec.dataset.val == str(tmp_path / "studies" / "d" / "val.json")


def test_synthetic_counts_absolute_paths_and_home_are_left_right(tmp_path: Path) -> None:
    raw = study(
        {"kind": "synthetic", "train_images": 16, "val_images": 8},
        storage="~/runs", model={"backbone_weights": "/w/r50.pth"},
        smoke={"storage": "smoke-runs"},
    )  # fmt: skip
    out = resolve_raw(raw, spec_dir=tmp_path / "s", cwd=tmp_path / "c")
    assert out["dataset"] == {"kind": "synthetic", "train_images": 16, "val_images": 8}
    assert out["storage"] == str(Path("~/runs").expanduser())
    assert out["model"]["backbone_weights"] == "/w/r50.pth"
    assert out["smoke"]["storage"] == str(tmp_path / "c" / "smoke-runs")
    assert raw["storage"] == "~/runs"  # the input is not modified
    assert resolve_raw("not a mapping", spec_dir=tmp_path) == "not a mapping"


def test_a_spec_built_in_code_must_be_resolved_before_it_runs(tmp_path: Path) -> None:
    spec = spec_from_dict(study(LVIS))
    with pytest.raises(AssertionError, match="dataset.train='d/train.json'"):
        require_absolute(spec)
    resolved = spec.resolved(tmp_path, tmp_path / "cwd")
    require_absolute(resolved)
    assert resolved.dataset.train == str(tmp_path / "d" / "train.json")
