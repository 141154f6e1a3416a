"""Annotation files are parsed once per process while unchanged (``ltmodels.data.parsed``):
a second dataset or ground truth of the same file reuses the parse, a changed file is
parsed again, a failed parse keeps nothing, and the number of kept files is bounded."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import ltmodels.data.lvis as lvis_module
from ltmodels.data import LVISDetection, parsed
from ltmodels.errors import DatasetError
from ltmodels.evaluation import metrics
from tests.ltmodels.data.lvis_fixtures import make_lvis
from tests.ltmodels.test_evaluation import _make_gt


@pytest.fixture(autouse=True)
def _empty_memo():
    parsed.clear()
    yield
    parsed.clear()


@pytest.fixture
def json_loads(monkeypatch) -> list[str]:
    """The annotation files ``LVISDetection`` reads from disk, in order."""
    seen: list[str] = []
    real = lvis_module._load_json

    def counting(ann):
        seen.append(str(ann))
        return real(ann)

    monkeypatch.setattr(lvis_module, "_load_json", counting)
    return seen


def test_same_file_is_parsed_once(tmp_path: Path, json_loads: list[str]) -> None:
    ann, root, data = make_lvis(tmp_path)
    first = LVISDetection(ann, root, with_masks=True)
    again = LVISDetection(str(ann), root, with_masks=True)
    plain = LVISDetection(ann, root, with_masks=False)  # another index of the same parse
    assert json_loads == [str(ann)]
    assert again.image_ids == first.image_ids == plain.image_ids
    assert again.image_counts.tolist() == first.image_counts.tolist()
    assert "masks" in first[0][1] and "masks" not in plain[0][1]


def test_a_rewritten_file_is_parsed_again(tmp_path: Path, json_loads: list[str]) -> None:
    ann, root, data = make_lvis(tmp_path)
    assert len(LVISDetection(ann, root, with_masks=False)) == len(data["images"])
    fewer = {**data, "images": data["images"][:1]}
    fewer["annotations"] = [
        a for a in data["annotations"] if a["image_id"] == fewer["images"][0]["id"]
    ]
    ann.write_text(json.dumps(fewer))  # at once: within the timestamps' granularity
    assert len(LVISDetection(ann, root, with_masks=False)) == 1
    assert json_loads == [str(ann), str(ann)]


def test_a_failed_parse_keeps_nothing(tmp_path: Path, json_loads: list[str]) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{ not json")
    for _ in range(2):
        with pytest.raises(DatasetError, match="not valid JSON"):
            LVISDetection(bad, tmp_path)
    assert json_loads == [str(bad), str(bad)]
    with pytest.raises(DatasetError, match="not found"):
        LVISDetection(tmp_path / "missing.json", tmp_path)


def test_ground_truth_is_parsed_once_per_identity(tmp_path: Path) -> None:
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(_make_gt()))
    loaded = metrics.load_lvis_gt(path)
    assert metrics.load_lvis_gt(str(path)) is loaded
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert metrics.load_lvis_gt(path) is loaded  # touched, same bytes: the same parse
    changed = _make_gt()
    changed["categories"][0]["name"] = "renamed"
    path.write_text(json.dumps(changed))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # even with the old times
    reread = metrics.load_lvis_gt(path)
    assert reread is not loaded and "renamed" in str(reread.categories)


def test_the_memo_is_bounded(tmp_path: Path) -> None:
    built: list[int] = []
    paths = []
    for i in range(parsed.ENTRIES + 1):
        paths.append(tmp_path / f"f{i}")
        paths[-1].write_text(str(i))
    for i, path in enumerate(paths):
        assert parsed.memoised("text", path, lambda i=i: built.append(i) or i) == i
    assert parsed.memoised("text", paths[-1], lambda: -1) == parsed.ENTRIES  # kept
    assert parsed.memoised("text", paths[0], lambda: -1) == -1  # the oldest went out
    assert built == list(range(parsed.ENTRIES + 1))


def test_large_files_are_parsed_every_time(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "big"
    path.write_text("x" * 100)
    monkeypatch.setattr(parsed, "MAX_BYTES", 99)
    built: list[int] = []
    for _ in range(2):
        parsed.memoised("text", path, lambda: built.append(1))
    assert built == [1, 1]
