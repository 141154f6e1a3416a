"""The embedded synthetic long-tail dataset: format, statistics, determinism, cache, CLI."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from lvis import LVIS
from PIL import Image

from ltmodels.data import synthetic
from ltmodels.data._synth_plan import fit_targets, group_sizes
from ltmodels.data.synthetic import (
    SynthConfig,
    SynthPaths,
    class_table,
    ensure_synthetic,
    write_synthetic,
)
from ltmodels.errors import ConfigError
from ltsearch.cli import main

TINY = SynthConfig(num_classes=6, train_images=12, val_images=6, image_size=64, seed=3)


@pytest.fixture(scope="module")
def synth_default(tmp_path_factory: pytest.TempPathFactory) -> SynthPaths:
    return write_synthetic(tmp_path_factory.mktemp("synth-default"), SynthConfig())


@pytest.fixture(params=["synth_small", "synth_default"])
def dataset(request: pytest.FixtureRequest) -> tuple[SynthPaths, dict, dict]:
    paths = request.getfixturevalue(request.param)
    train = json.loads(paths.train_json.read_text())
    val = json.loads(paths.val_json.read_text())
    return paths, train, val


def _images_per_class(data: dict) -> dict[int, set[int]]:
    out: dict[int, set[int]] = defaultdict(set)
    for a in data["annotations"]:
        out[a["category_id"]].add(a["image_id"])
    return out


def test_lvis_api_loads_both_splits(synth_small: SynthPaths) -> None:
    for path in (synth_small.train_json, synth_small.val_json):
        gt = LVIS(str(path))
        data = json.loads(path.read_text())
        assert len(gt.get_img_ids()) == len(data["images"]) > 0
        assert len(gt.get_ann_ids()) == len(data["annotations"]) > 0
        assert len(gt.get_cat_ids()) == 12


def test_default_has_lvis_group_shares(synth_default: SynthPaths) -> None:
    cats = json.loads(synth_default.train_json.read_text())["categories"]
    counts = {g: sum(c["frequency"] == g for c in cats) for g in "rcf"}
    assert counts == group_sizes(SynthConfig().num_classes) == {"r": 11, "c": 15, "f": 14}
    for g, share in (("r", 0.28), ("c", 0.38), ("f", 0.34)):
        assert abs(counts[g] / len(cats) - share) < 0.03
    # names come from the LVIS group they stand for
    assert all(c["lvis_group"] == c["frequency"] for c in cats)


def test_frequency_matches_train_image_count(dataset: tuple[SynthPaths, dict, dict]) -> None:
    _, train, val = dataset
    per_class = _images_per_class(train)
    instances = defaultdict(int)
    for a in train["annotations"]:
        instances[a["category_id"]] += 1
    for cat in train["categories"]:
        n = len(per_class[cat["id"]])
        assert cat["image_count"] == n >= 1
        assert cat["instance_count"] == instances[cat["id"]]
        assert cat["frequency"] == ("r" if n <= 10 else "c" if n <= 100 else "f")
    assert val["categories"] == train["categories"]


def test_small_config_has_no_frequent_class(synth_small: SynthPaths) -> None:
    cats = json.loads(synth_small.train_json.read_text())["categories"]
    assert {c["frequency"] for c in cats} <= {"r", "c"}
    assert any(c["lvis_group"] == "f" for c in cats)


def test_every_class_has_val_images(dataset: tuple[SynthPaths, dict, dict]) -> None:
    _, train, val = dataset
    per_class = _images_per_class(val)
    rare = [c["id"] for c in train["categories"] if c["frequency"] == "r"]
    assert rare
    for cat in train["categories"]:
        assert len(per_class[cat["id"]]) >= 2, cat["name"]


def test_geometry_polygons_boxes_areas(dataset: tuple[SynthPaths, dict, dict]) -> None:
    paths, _, val = dataset
    size = val["images"][0]["width"]
    for a in val["annotations"]:
        (seg,) = a["segmentation"]
        xs, ys = np.array(seg[0::2]), np.array(seg[1::2])
        assert len(seg) >= 6 and len(seg) % 2 == 0
        assert xs.min() >= 0 and ys.min() >= 0 and xs.max() <= size and ys.max() <= size
        x, y, w, h = a["bbox"]
        assert (x, y) == (xs.min(), ys.min())
        assert x + w == pytest.approx(xs.max(), abs=0.011)
        assert y + h == pytest.approx(ys.max(), abs=0.011)
        assert 0 < a["area"] <= w * h
    gt = LVIS(str(paths.val_json))
    big = [a for a in val["annotations"] if a["area"] > 150][:200]
    errors = [abs(gt.ann_to_mask(a).sum() / a["area"] - 1) for a in big]
    assert max(errors) < 0.2 and float(np.mean(errors)) < 0.05


def test_images_found_by_coco_url(synth_small: SynthPaths) -> None:
    for path in (synth_small.train_json, synth_small.val_json):
        for img in json.loads(path.read_text())["images"]:
            rel = "/".join(img["coco_url"].split("/")[-2:])
            assert rel == img["file_name"]
            with Image.open(synth_small.root / rel) as im:
                assert im.size == (img["width"], img["height"]) and im.mode == "RGB"


def test_neg_and_not_exhaustive_ids(synth_default: SynthPaths) -> None:
    for path in (synth_default.train_json, synth_default.val_json):
        data = json.loads(path.read_text())
        pos = defaultdict(set)
        for a in data["annotations"]:
            pos[a["image_id"]].add(a["category_id"])
        for img in data["images"]:
            assert pos[img["id"]], img["id"]
            assert not set(img["neg_category_ids"]) & pos[img["id"]]
            assert set(img["not_exhaustive_category_ids"]) <= pos[img["id"]]
        n_ne = sum(bool(i["not_exhaustive_category_ids"]) for i in data["images"])
        assert 0 < n_ne < 0.2 * len(data["images"])
        assert all(i["neg_category_ids"] for i in data["images"])


def test_lookalike_pairs_differ_in_one_attribute(synth_default: SynthPaths) -> None:
    cats = {c["id"]: c for c in json.loads(synth_default.train_json.read_text())["categories"]}
    pairs = {
        tuple(sorted((c["id"], c["lookalike_of"]))) for c in cats.values() if c["lookalike_of"]
    }
    assert len(pairs) == SynthConfig().num_classes // 6
    for a, b in pairs:
        ca, cb = cats[a], cats[b]
        assert ca["lookalike_of"] == b and cb["lookalike_of"] == a
        assert sorted([ca["frequency"], cb["frequency"]]) in (["c", "f"], ["f", "r"])
        differs = [k for k in ("shape", "colour", "texture") if ca[k] != cb[k]]
        assert differs == [ca["differs_in"]] == [cb["differs_in"]]
    looks = [(c["shape"], c["colour"], c["texture"]) for c in cats.values()]
    assert len(set(looks)) == len(looks)


def test_fit_targets_cuts_above_soft_floors_first() -> None:
    """Targets [5, 40, 200, 150], soft floors [5, 11, 110, 110], budget 365.

    Need 395 - 365 = 30 of the 29 + 90 + 40 = 159 above the soft floors: keep 1 - 30/159
    (0.811) of each excess, floored: 11 + 23, 110 + 73, 110 + 32 -> [5, 34, 183, 142] = 364.
    With budget 200 the soft floors (236) do not fit: hard floors [5, 1, 1, 1] take the rest.
    """
    t, soft, hard = [5, 40, 200, 150], [5, 11, 110, 110], [5, 1, 1, 1]
    assert fit_targets(t, soft, hard, 365) == [5, 34, 183, 142]
    assert fit_targets(t, soft, hard, 400) == t
    tight = fit_targets(t, soft, hard, 200)
    assert sum(tight) <= 200 and tight[0] == 5 and min(tight) >= 1


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("train_images", [520, 800])
def test_planned_counts_keep_lvis_groups(seed: int, train_images: int) -> None:
    for row in class_table(SynthConfig(train_images=train_images, seed=seed)):
        n = row["train_images"]
        assert ("r" if n <= 10 else "c" if n <= 100 else "f") == row["group"], row
        assert row["val_images"] >= 2


def test_class_table_matches_written_counts(synth_small: SynthPaths) -> None:
    data = json.loads(synth_small.val_json.read_text())
    table = class_table(SynthConfig(**data["info"]["config"]))
    per_val = _images_per_class(data)
    for row, cat in zip(table, data["categories"], strict=True):
        assert (row["id"], row["name"]) == (cat["id"], cat["name"])
        assert row["train_images"] == cat["image_count"]
        assert row["val_images"] == len(per_val[cat["id"]])


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_deterministic_bytes(tmp_path: Path) -> None:
    a = _tree(write_synthetic(tmp_path / "a", TINY).root)
    b = _tree(write_synthetic(tmp_path / "b", TINY).root)
    assert a.keys() == b.keys() and a == b
    other = write_synthetic(tmp_path / "c", replace(TINY, seed=4))
    assert other.train_json.read_bytes() != a["lvis_synth_train.json"]


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"num_classes": 2}, "num_classes"),
        ({"image_size": 32}, "image_size"),
        ({"train_images": 0}, "train_images"),
        ({"num_classes": 40, "val_images": 10}, "val_images"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_config_names_the_key(kwargs: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"^synthetic dataset: {key}=.*; use") as err:
        SynthConfig(**kwargs)
    assert "\n" not in str(err.value)


def test_write_refuses_a_foreign_directory(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="notes.txt"):
        write_synthetic(tmp_path, TINY)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_ensure_reuses_and_repairs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LTSEARCH_CACHE", str(tmp_path))
    first = ensure_synthetic(cfg=TINY)
    assert first.root == tmp_path / "synthetic" / TINY.digest()
    assert synthetic.is_complete(first.root, TINY)

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("regenerated a complete dataset")

    with monkeypatch.context() as m:
        m.setattr(synthetic, "write_synthetic", boom)
        assert ensure_synthetic(cfg=TINY) == first
    next(first.root.glob("val/*.png")).unlink()
    assert not synthetic.is_complete(first.root, TINY)
    assert ensure_synthetic(cfg=TINY) == first and synthetic.is_complete(first.root, TINY)
    assert [p.name for p in (tmp_path / "synthetic").iterdir()] == [TINY.digest()]


def test_summary_reports_groups_splits_and_paths(synth_small: SynthPaths) -> None:
    text = synth_small.summary()
    assert "classes: 12 (rare " in text
    assert "train: 60 images" in text and "val: 24 images" in text
    assert str(synth_small.train_json) in text and str(synth_small.val_json) in text


def test_cli_data_synth(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["data", "synth", "--out", str(tmp_path / "ds"), "--classes", "6"]
    args += ["--train-images", "12", "--val-images", "6", "--image-size", "64", "--seed", "3"]
    assert main(args) == 0
    assert "train: 12 images" in capsys.readouterr().out
    assert _tree(tmp_path / "ds") == _tree(write_synthetic(tmp_path / "ref", TINY).root)
    assert main(["data", "synth", "--out", str(tmp_path / "x"), "--classes", "2"]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("ltsearch: error: synthetic dataset: num_classes=2")
        and err.count("\n") == 1
    )
