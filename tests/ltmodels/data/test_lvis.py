"""LVISDetection on the tiny fixture of lvis_fixtures.py (both layouts)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ltmodels.data import LVISDetection, collate_fn
from ltmodels.errors import DatasetError
from tests.ltmodels.data.lvis_fixtures import expected_pixels, image_relpath, make_lvis


@pytest.fixture(params=["v1", "v0.5"])
def lvis(request, tmp_path: Path):
    return make_lvis(tmp_path, layout=request.param)


def test_images_and_layout(lvis) -> None:
    ann_path, image_root, data = lvis
    ds = LVISDetection(ann_path, image_root)
    assert ds.layout == ("v0.5" if "file_name" in data["images"][0] else "v1")
    assert len(ds) == 4 and ds.image_ids == [101, 102, 103, 104]
    for i, iid in enumerate(ds.image_ids):
        image, target = ds[i]
        assert image.dtype == torch.float32 and image.shape[0] == 3
        expected = torch.from_numpy(expected_pixels(iid)).permute(2, 0, 1).float() / 255
        assert torch.equal(image, expected)
        assert target["image_id"] == iid


def test_categories_groups_and_counts(tmp_path: Path) -> None:
    ann_path, image_root, _ = make_lvis(tmp_path)
    ds = LVISDetection(ann_path, image_root)
    assert ds.cat_ids == [3, 7, 11] and ds.num_classes == 3
    assert ds.cat_id_to_label == {3: 1, 7: 2, 11: 3}
    assert ds.label_to_cat_id == {1: 3, 2: 7, 3: 11}
    assert ds.class_names == ["cat_f", "cat_c", "cat_r"]
    assert ds.groups.tolist() == [2, 1, 0] and ds.groups.dtype == torch.long
    assert ds.image_counts.tolist() == [500, 50, 5]  # the categories' image_count fields


def test_image_counts_counted_without_field(tmp_path: Path) -> None:
    ann_path, image_root, _ = make_lvis(tmp_path, image_count=False)
    ds = LVISDetection(ann_path, image_root)
    # cat 3 on images 101, 102, 104; cat 7 only on 102 (its box on 101 is degenerate); cat 11 101
    assert ds.image_counts.tolist() == [3, 1, 1]


def test_targets(lvis) -> None:
    ds = LVISDetection(lvis[0], lvis[1])
    _, t = ds[0]
    assert t["boxes"].dtype == torch.float32 and t["labels"].dtype == torch.int64
    assert t["boxes"].tolist() == [[4, 4, 20, 16], [24, 10, 40, 20]]  # degenerate ann 3 skipped
    assert t["labels"].tolist() == [1, 3]
    assert t["area"].tolist() == [192, 160] and t["iscrowd"].tolist() == [0, 0]
    masks = t["masks"]
    assert masks.dtype == torch.uint8 and masks.shape == (2, 32, 48)
    expected_rle = torch.zeros(32, 48, dtype=torch.uint8)
    expected_rle[10:20, 24:40] = 1
    assert torch.equal(masks[1], expected_rle)  # compressed RLE decodes exactly
    ys, xs = torch.nonzero(masks[0], as_tuple=True)  # polygon of box [4, 4, 20, 16]
    assert abs(int(masks[0].sum()) - 16 * 12) <= 16 + 12 + 1
    assert 4 <= xs.min() <= 5 and 19 <= xs.max() <= 20 and 4 <= ys.min() <= 5

    _, t = ds[1]
    expected_unc = torch.zeros(40, 40, dtype=torch.uint8)
    expected_unc[0:5, 0:10] = 1
    assert torch.equal(t["masks"][1], expected_unc)  # uncompressed RLE
    _, t = ds[2]  # no annotation
    assert t["boxes"].shape == (0, 4) and t["labels"].shape == (0,)
    assert t["masks"].shape == (0, 24, 36)
    _, t = ds[3]
    assert t["boxes"].tolist() == [[0.0, 2.0, 9.5, 12.0]]  # clipped at x = 0


def test_image_labels_match_targets(lvis) -> None:
    ds = LVISDetection(lvis[0], lvis[1], with_masks=False)
    assert [ds.image_labels(i) for i in range(len(ds))] == [{1, 3}, {1, 2}, set(), {1}]
    for i in range(len(ds)):
        assert ds.image_labels(i) == set(ds[i][1]["labels"].tolist())


def test_dict_input_without_masks_and_transforms(tmp_path: Path) -> None:
    _, image_root, data = make_lvis(tmp_path)
    for ann in data["annotations"]:
        del ann["segmentation"]  # not needed without masks

    def halve(image, target):
        return image * 0.5, {**target, "boxes": target["boxes"] / 2}

    ds = LVISDetection(data, image_root, with_masks=False, transforms=halve)
    image, target = ds[0]
    assert "masks" not in target
    assert target["boxes"].tolist() == [[2, 2, 10, 8], [12, 5, 20, 10]]
    assert float(image.max()) <= 0.5
    with pytest.raises(DatasetError, match="annotation id 1 .*segmentation"):
        LVISDetection(data, image_root, with_masks=True)


def test_collate_fn(tmp_path: Path) -> None:
    ds = LVISDetection(*make_lvis(tmp_path)[:2])
    images, targets = collate_fn([ds[0], ds[1]])
    assert isinstance(images, list) and isinstance(targets, list)
    assert [t["image_id"] for t in targets] == [101, 102] and images[1].shape == (3, 40, 40)


def test_missing_image_file(lvis) -> None:
    ann_path, image_root, data = lvis
    layout = "v0.5" if "file_name" in data["images"][0] else "v1"
    ds = LVISDetection(ann_path, image_root)
    ds.check(files=True, sizes=True)  # intact
    missing = image_root / image_relpath(102, layout)
    missing.unlink()
    (image_root / image_relpath(104, layout)).unlink()
    with pytest.raises(DatasetError, match=f"image id 102: file not found: {missing}"):
        ds[1]
    with pytest.raises(DatasetError, match=r"image id 102: .*\(2 of 4 images missing\)"):
        LVISDetection(ann_path, image_root).check(files=True)
    assert ds[0][1]["image_id"] == 101  # the others still load


def test_v05_coco2014_name_falls_back_to_2017_name(tmp_path: Path) -> None:
    ann_path, image_root, _ = make_lvis(tmp_path, layout="v0.5")
    (image_root / "COCO_val2014_000000000101.png").rename(image_root / "000000000101.png")
    ds = LVISDetection(ann_path, image_root)
    ds.check(files=True)
    assert ds.image_path(0) == image_root / "000000000101.png"


def test_image_size_mismatch(tmp_path: Path) -> None:
    _, image_root, data = make_lvis(tmp_path)
    data["images"][2]["width"] = 50  # image 103 has no annotation to contradict this
    ds = LVISDetection(data, image_root)
    with pytest.raises(DatasetError, match="image id 103: .* is 36x24 but the JSON says 50x24"):
        ds[2]
    with pytest.raises(DatasetError, match="image id 103"):
        ds.check(sizes=True)


def _unknown_category(d):
    d["annotations"][0]["category_id"] = 99


def _box_outside(d):
    d["annotations"][3]["bbox"] = [30, 12, 11.5, 8]  # image 102 is 40 px wide


def _no_frequency(d):
    del d["categories"][1]["frequency"]


def _missing_image(d):
    d["annotations"][4]["image_id"] = 555


def _no_annotations_key(d):
    del d["annotations"]


def _bad_polygon(d):
    d["annotations"][0]["segmentation"] = [[1, 2, 3, 4]]


def _rle_wrong_size(d):
    d["annotations"][1]["segmentation"]["size"] = [10, 10]


def _duplicate_image(d):
    d["images"].append(dict(d["images"][0]))


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (_unknown_category, "annotation id 1 \\(image 101\\) has unknown category_id 99"),
        (_box_outside, "annotation id 4 \\(image 102\\) has bbox .* outside its 40x40 image"),
        (_no_frequency, "category id 3 \\('cat_f'\\) has frequency None"),
        (_missing_image, "annotation id 5 \\(image 555\\) refers to a missing image"),
        (_no_annotations_key, "missing top-level list\\(s\\) 'annotations'"),
        (_bad_polygon, "annotation id 1 \\(image 101\\) has a polygon"),
        (_rle_wrong_size, "annotation id 2 \\(image 101\\) has an RLE of size \\[10, 10\\]"),
        (_duplicate_image, "image id 101 appears twice"),
    ],
)
def test_inconsistent_json_names_the_record(tmp_path: Path, corrupt, message) -> None:
    ann_path, image_root, data = make_lvis(tmp_path)
    bad = copy.deepcopy(data)
    corrupt(bad)
    ann_path.write_text(json.dumps(bad))
    with pytest.raises(DatasetError, match=f"{ann_path}: {message}"):
        LVISDetection(ann_path, image_root)


def test_box_within_tolerance_is_accepted(tmp_path: Path) -> None:
    _, image_root, data = make_lvis(tmp_path)
    data["annotations"][3]["bbox"] = [30, 12, 10.9, 8]  # ends 0.9 px past the 40-px edge
    _, t = LVISDetection(data, image_root)[1]
    assert t["boxes"][0].tolist() == [30, 12, 40, 20]


def test_unreadable_annotation_files(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="annotation file not found"):
        LVISDetection(tmp_path / "nope.json", tmp_path)
    broken = tmp_path / "broken.json"
    broken.write_text('{"images": [')
    with pytest.raises(DatasetError, match="broken.json: not valid JSON"):
        LVISDetection(broken, tmp_path)
    listed = tmp_path / "list.json"
    listed.write_text("[]")
    with pytest.raises(DatasetError, match="top level is a list"):
        LVISDetection(listed, tmp_path)


def test_path_and_dict_inputs_agree(tmp_path: Path) -> None:
    ann_path, image_root, data = make_lvis(tmp_path)
    a, b = LVISDetection(ann_path, image_root), LVISDetection(data, image_root)
    for i in range(len(a)):
        ta, tb = a[i][1], b[i][1]
        assert torch.equal(ta["boxes"], tb["boxes"]) and torch.equal(ta["masks"], tb["masks"])
    assert np.array_equal(a.image_counts.numpy(), b.image_counts.numpy())
