"""evaluate_lvis (vernier) against lvis-api, the oracle, on a small federated LVIS fixture."""

from __future__ import annotations

import copy
import json

import numpy as np
import pycocotools.mask as mask_utils
import pytest

from ltmodels.errors import ConfigError, DatasetError
from ltmodels.evaluation.lvis_api import lvis_api_evaluate, lvis_numpy_compat
from ltmodels.evaluation.metrics import METRIC_NAMES, evaluate_lvis, load_lvis_gt

TOL = 1e-4
# 15 categories, listed out of id order, ids not contiguous: 5 rare, 5 common, 5 frequent.
CATEGORY_IDS = [31, 2, 17, 5, 40, 8, 11, 23, 3, 29, 14, 37, 20, 26, 9]
FREQUENCY = dict(zip(CATEGORY_IDS, "rrrrrcccccfffff", strict=True))
NO_GT_CATEGORY = 40  # a rare category nobody annotated: its AP is -1
CAP_IMAGE = 1  # gets more than 300 detections


def _polygon(rng: np.random.Generator, x: float, y: float, w: float, h: float) -> list[float]:
    """A star-shaped polygon inscribed in the box (x, y, w, h)."""
    angles = np.sort(rng.uniform(0, 2 * np.pi, rng.integers(6, 11)))
    radius = rng.uniform(0.6, 1.0, angles.size)
    px = x + w / 2 + radius * np.cos(angles) * w / 2
    py = y + h / 2 + radius * np.sin(angles) * h / 2
    return np.stack([px, py], 1).ravel().round(2).tolist()


def _make_gt(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    weights = np.array([{"r": 0.3, "c": 1.0, "f": 3.0}[FREQUENCY[c]] for c in CATEGORY_IDS])
    weights[CATEGORY_IDS.index(NO_GT_CATEGORY)] = 0.0
    images, annotations = [], []
    for image_id in range(1, 21):
        width, height = int(rng.integers(160, 260)), int(rng.integers(160, 260))
        present: set[int] = set()
        for _ in range(int(rng.integers(1, 7))):
            cat = int(rng.choice(CATEGORY_IDS, p=weights / weights.sum()))
            side = float(np.exp(rng.uniform(np.log(12), np.log(190))))
            w, h = side * rng.uniform(0.7, 1.3), side * rng.uniform(0.7, 1.3)
            w, h = min(w, width - 2), min(h, height - 2)
            x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
            poly = _polygon(rng, x, y, w, h)
            rle = mask_utils.merge(mask_utils.frPyObjects([poly], height, width))
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": cat,
                    "segmentation": [poly],
                    "area": float(mask_utils.area(rle)),
                    "bbox": mask_utils.toBbox(rle).tolist(),
                }
            )
            present.add(cat)
        absent = [c for c in CATEGORY_IDS if c not in present]
        negatives = rng.choice(absent, 3, replace=False).tolist()
        # Not exhaustive: some of the annotated categories (LVIS lists annotated ones only).
        not_exhaustive = sorted(present)[: image_id % 3]
        images.append(
            {
                "id": image_id,
                "width": width,
                "height": height,
                "neg_category_ids": [int(c) for c in negatives],
                "not_exhaustive_category_ids": [int(c) for c in not_exhaustive],
            }
        )
    categories = [
        {"id": c, "name": f"cat_{c}", "synset": f"cat_{c}.n.01", "frequency": FREQUENCY[c]}
        for c in CATEGORY_IDS
    ]
    return {"images": images, "annotations": annotations, "categories": categories}


def _det(rng, image, cat, box, with_mask, str_counts, polygon=None) -> dict:
    """One detection of `cat` around `box`; its mask is `polygon` moved like the box."""
    x0, y0, w0, h0 = box
    x, y = x0 + rng.normal(0, 0.1 * w0), y0 + rng.normal(0, 0.1 * h0)
    w, h = w0 * rng.uniform(0.8, 1.2), h0 * rng.uniform(0.8, 1.2)
    x, y = float(np.clip(x, 0, image["width"] - 2)), float(np.clip(y, 0, image["height"] - 2))
    w, h = float(min(w, image["width"] - x)), float(min(h, image["height"] - y))
    score = float(rng.uniform(0.01, 1.0))
    det = {
        "image_id": image["id"],
        "category_id": int(cat),
        "bbox": [x, y, w, h],
        # Ties (two decimals) exercise the stable sort orders of both evaluators.
        "score": round(score, 2) if rng.random() < 0.3 else score,
    }
    if with_mask:
        if polygon is None:
            polygon = _polygon(rng, x0, y0, w0, h0)
        xy = np.reshape(polygon, (-1, 2))
        xy = (xy - [x0, y0]) * [w / max(w0, 1e-6), h / max(h0, 1e-6)] + [x, y]
        polys = mask_utils.frPyObjects([xy.ravel().tolist()], image["height"], image["width"])
        binary = np.asfortranarray(mask_utils.decode(mask_utils.merge(polys)))
        rle = mask_utils.encode(binary)
        if str_counts:
            rle["counts"] = rle["counts"].decode("ascii")
        det["segmentation"] = rle
        det["bbox"] = mask_utils.toBbox(rle).tolist()
    return det


def _make_detections(gt: dict, with_mask: bool, seed: int = 1) -> list[dict]:
    """True-ish positives, confusions, and the federated kinds of false positives."""
    rng = np.random.default_rng(seed)
    images = {img["id"]: img for img in gt["images"]}
    dets = []
    for ann in gt["annotations"]:
        image = images[ann["image_id"]]
        for _ in range(int(rng.integers(1, 5))):
            cat = ann["category_id"] if rng.random() < 0.75 else rng.choice(CATEGORY_IDS)
            polygon = ann["segmentation"][0]
            dets.append(_det(rng, image, cat, ann["bbox"], with_mask, len(dets) % 2 == 0, polygon))
    for image in gt["images"]:
        present = {a["category_id"] for a in gt["annotations"] if a["image_id"] == image["id"]}
        listed = (
            present | set(image["neg_category_ids"]) | set(image["not_exhaustive_category_ids"])
        )
        unlisted = [c for c in CATEGORY_IDS if c not in listed]
        n_extra = 330 if image["id"] == CAP_IMAGE else 6
        kinds = [image["neg_category_ids"], image["not_exhaustive_category_ids"], unlisted]
        for i in range(n_extra):
            cats = kinds[i % 3] or image["neg_category_ids"]
            side = float(rng.uniform(10, 120))
            box = [rng.uniform(0, image["width"] - side), rng.uniform(0, image["height"] - side)]
            box += [side, side]
            dets.append(_det(rng, image, rng.choice(cats), box, with_mask, i % 2 == 1))
    return dets


@pytest.fixture(scope="module")
def gt() -> dict:
    return _make_gt()


@pytest.fixture(scope="module")
def dets(gt: dict) -> dict[str, list[dict]]:
    return {"bbox": _make_detections(gt, False), "segm": _make_detections(gt, True)}


def _assert_same(ours: dict, ref: dict) -> None:
    for name in METRIC_NAMES:
        assert ours[name] == pytest.approx(ref[name], abs=TOL), name
    assert [r["category_id"] for r in ours["per_category"]] == [
        r["category_id"] for r in ref["per_category"]
    ]
    for mine, theirs in zip(ours["per_category"], ref["per_category"], strict=True):
        assert mine == {**theirs, "AP": pytest.approx(theirs["AP"], abs=TOL)}


def test_lvis_api_needs_the_numpy_shim(gt: dict, dets: dict, tmp_path) -> None:
    from lvis import LVIS, LVISEval, LVISResults

    assert not hasattr(np, "float")  # NumPy >= 1.24: the alias lvis 0.5.3 uses is gone
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    lvis_gt = LVIS(str(path))
    results = LVISResults(lvis_gt, copy.deepcopy(dets["bbox"][:50]))
    evaluator = LVISEval(lvis_gt, results, iou_type="bbox")
    evaluator.evaluate()
    with pytest.raises(AttributeError, match="float"):
        evaluator.accumulate()
    with lvis_numpy_compat():
        evaluator.accumulate()
    evaluator.summarize()
    assert 0 < evaluator.results["AP"] < 1


def test_shim_is_local_and_restored_on_error() -> None:
    import lvis.eval

    with pytest.raises(RuntimeError), lvis_numpy_compat():
        assert lvis.eval.np.float is float
        assert lvis.eval.np.cumsum is np.cumsum
        assert not hasattr(np, "float")
        raise RuntimeError
    assert lvis.eval.np is np


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
@pytest.mark.parametrize("max_dets", [300, 40])
def test_matches_lvis_api(gt: dict, dets: dict, iou_type: str, max_dets: int) -> None:
    detections = dets[iou_type]
    per_image = np.bincount([d["image_id"] for d in detections])
    assert per_image[CAP_IMAGE] > 300
    ours = evaluate_lvis(gt, detections, iou_type, max_dets=max_dets)
    _assert_same(ours, lvis_api_evaluate(gt, detections, iou_type, max_dets=max_dets))
    # The fixture is not degenerate: every frequency group and area range is defined.
    assert all(0 < ours[name] < 1 for name in METRIC_NAMES)
    aps = {r["category_id"]: r["AP"] for r in ours["per_category"]}
    assert aps[NO_GT_CATEGORY] == -1.0 and sum(ap > 0 for ap in aps.values()) >= 12


def test_segm_results_without_boxes_use_mask_areas(gt: dict, dets: dict) -> None:
    boxless = [{k: v for k, v in d.items() if k != "bbox"} for d in dets["segm"]]
    ours = evaluate_lvis(gt, boxless, "segm")
    _assert_same(ours, lvis_api_evaluate(gt, boxless, "segm"))
    assert ours["APs"] != evaluate_lvis(gt, dets["segm"], "segm")["APs"]


def test_cap_and_federated_rules_change_what_they_should(gt: dict, dets: dict) -> None:
    detections = dets["bbox"]
    base = evaluate_lvis(gt, detections)
    assert evaluate_lvis(gt, detections, max_dets=10_000)["AP"] != base["AP"]
    images = {img["id"]: img for img in gt["images"]}
    present = {(a["image_id"], a["category_id"]) for a in gt["annotations"]}

    def without(pred) -> list[dict]:
        return [d for d in detections if not pred(d, images[d["image_id"]])]

    def unlisted(d, img) -> bool:
        listed = img["neg_category_ids"] + img["not_exhaustive_category_ids"]
        return (d["image_id"], d["category_id"]) not in present and d["category_id"] not in listed

    def negative(d, img) -> bool:
        return d["category_id"] in img["neg_category_ids"]

    # Detections on images other than the cap image do not compete for its 300 slots.
    kept = [d for d in without(unlisted) if d["image_id"] != CAP_IMAGE]
    ref = [d for d in detections if d["image_id"] != CAP_IMAGE]
    _assert_same(evaluate_lvis(gt, kept), evaluate_lvis(gt, ref))
    exhaustive = copy.deepcopy(gt)
    for img in exhaustive["images"]:
        img["not_exhaustive_category_ids"] = []
    assert evaluate_lvis(exhaustive, detections)["AP"] < base["AP"]
    assert evaluate_lvis(gt, without(negative))["AP"] > base["AP"]


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_zero_detections(gt: dict, iou_type: str) -> None:
    ours = evaluate_lvis(gt, [], iou_type)
    _assert_same(ours, lvis_api_evaluate(gt, [], iou_type))
    assert all(ours[name] == 0.0 for name in METRIC_NAMES)
    annotated = {a["category_id"] for a in gt["annotations"]}
    aps = {r["category_id"]: r["AP"] for r in ours["per_category"]}
    assert {c: 0.0 if c in annotated else -1.0 for c in CATEGORY_IDS} == aps
    assert NO_GT_CATEGORY not in annotated


def test_undefined_groups_are_minus_one(gt: dict, dets: dict) -> None:
    small = copy.deepcopy(gt)
    small["annotations"] = [
        a for a in small["annotations"] if a["area"] < 32**2 and FREQUENCY[a["category_id"]] != "r"
    ]
    for img in small["images"]:  # LVIS lists only annotated categories as not exhaustive
        kept = {a["category_id"] for a in small["annotations"] if a["image_id"] == img["id"]}
        img["not_exhaustive_category_ids"] = [
            c for c in img["not_exhaustive_category_ids"] if c in kept
        ]
    ours = evaluate_lvis(small, dets["bbox"])
    _assert_same(ours, lvis_api_evaluate(small, dets["bbox"]))
    assert ours["APm"] == ours["APl"] == ours["APr"] == -1.0
    assert ours["APs"] > 0 and ours["APc"] > 0


def test_inputs_untouched_and_sources_agree(gt: dict, dets: dict, tmp_path) -> None:
    gt_before, dets_before = copy.deepcopy(gt), copy.deepcopy(dets["segm"])
    by_dict = evaluate_lvis(gt, dets["segm"], "segm")
    lvis_api_evaluate(gt, dets["segm"], "segm")
    assert gt == gt_before and dets["segm"] == dets_before
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    loaded = load_lvis_gt(path)
    assert by_dict == evaluate_lvis(str(path), dets["segm"], "segm")
    assert by_dict == evaluate_lvis(loaded, dets["segm"], "segm")
    assert loaded.category_ids.tolist() == sorted(CATEGORY_IDS)


def _bad_gt(gt: dict, edit) -> dict:
    bad = copy.deepcopy(gt)
    edit(bad)
    return bad


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda g: g["categories"][0].pop("frequency"), "frequency"),
        (lambda g: g["images"][3].pop("neg_category_ids"), "neg_category_ids"),
        (lambda g: g.pop("annotations"), "annotations"),
        (
            lambda g: g["images"][0]["neg_category_ids"].append(
                g["annotations"][0]["category_id"]
            ),
            "neg_category_ids",
        ),
        (lambda g: g["images"][0]["not_exhaustive_category_ids"].append(40), "not_exhaustive"),
    ],
)
def test_bad_ground_truth(gt: dict, edit, match: str) -> None:
    with pytest.raises(DatasetError, match=match):
        evaluate_lvis(_bad_gt(gt, edit), [])


def test_bad_files(tmp_path) -> None:
    with pytest.raises(DatasetError, match="not found"):
        evaluate_lvis(tmp_path / "missing.json", [])
    with pytest.raises(DatasetError, match="not found"):
        lvis_api_evaluate(str(tmp_path / "missing.json"), [])
    broken = tmp_path / "broken.json"
    broken.write_text("{ not json")
    with pytest.raises(DatasetError, match="not valid JSON"):
        evaluate_lvis(broken, [])


def test_bad_detections(gt: dict, dets: dict) -> None:
    good = dets["bbox"][:5]
    for iou_type in ("keypoints", "mask"):
        with pytest.raises(ConfigError, match="iou_type"):
            evaluate_lvis(gt, good, iou_type)
    with pytest.raises(ConfigError, match="iou_type"):
        lvis_api_evaluate(gt, good, "boundary")
    with pytest.raises(ConfigError, match="max_dets"):
        evaluate_lvis(gt, good, max_dets=0)
    with pytest.raises(DatasetError, match="category_id 999"):
        evaluate_lvis(gt, good + [{**good[0], "category_id": 999}])
    with pytest.raises(DatasetError, match="image_id 77"):
        evaluate_lvis(gt, good + [{**good[0], "image_id": 77}])
    with pytest.raises(ConfigError, match="detection 5 needs an integer 'category_id'"):
        evaluate_lvis(gt, good + [{k: v for k, v in good[0].items() if k != "category_id"}])
    with pytest.raises(ConfigError, match="detection 5 needs an integer 'image_id'"):
        evaluate_lvis(gt, good + [{**good[0], "image_id": 1.5}])
    with pytest.raises(ConfigError, match="bbox"):
        evaluate_lvis(gt, good + [{k: v for k, v in good[0].items() if k != "bbox"}])
    with pytest.raises(ConfigError, match="segmentation"):
        evaluate_lvis(gt, good, "segm")
    mixed = dets["segm"][:2] + [{k: v for k, v in dets["segm"][2].items() if k != "bbox"}]
    with pytest.raises(ConfigError, match="all of them a box or none"):
        evaluate_lvis(gt, mixed, "segm")
    with pytest.raises(ConfigError, match="list of LVIS result dicts"):
        evaluate_lvis(gt, good[0])
