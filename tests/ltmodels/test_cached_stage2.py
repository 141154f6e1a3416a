"""Stage 2 from the RoI-feature cache: cached predictor training, cached detections and
cached evaluation.

The key check: detections from the cache equal the full detector's on the same images.
The cache is built as in ``test_features.py``: a tiny untrained detector (its predictor
re-initialised with larger weights so that scores are well spread) on the small synthetic
dataset, ``batch_size=1`` like the reference ``engine.predict`` loader (GroupNorm features
depend on batch padding).
"""

from __future__ import annotations

import collections

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Subset
from torchvision.ops import box_iou

from ltmodels.cache.build import build_feature_cache
from ltmodels.cache.evaluate import evaluate_cached, predict_cached
from ltmodels.cache.train import train_predictor_cached
from ltmodels.data.lvis import LVISDetection, collate_fn
from ltmodels.data.transforms import ResizeShortestEdge
from ltmodels.engine import evaluate as engine_eval
from ltmodels.losses import build_loss
from ltmodels.modeling.detector import ModelSpec, build_detector
from ltmodels.modeling.heads import CosinePredictor, LinearPredictor
from tests.ltmodels.data.lvis_fixtures import make_lvis

TRAIN_IMAGES = 12


def _by_image(dets):
    out = collections.defaultdict(list)
    for d in dets:
        out[d["image_id"]].append(d)
    return out


def _reference(model, val, predictor=None, loss=None):
    heads = model.roi_heads
    saved = heads.box_predictor, heads.cls_loss
    heads.box_predictor = predictor or saved[0]
    heads.cls_loss = loss or saved[1]
    try:
        loader = DataLoader(val, batch_size=1, collate_fn=collate_fn)
        return engine_eval.predict(
            model, loader, device="cpu", label_to_cat_id=val.label_to_cat_id, masks=False
        )
    finally:
        heads.box_predictor, heads.cls_loss = saved


def test_cached_training_reduces_loss_and_is_deterministic(cache32):
    def run(box_regression: bool, seed: int = 0):
        torch.manual_seed(0)
        pred = LinearPredictor(cache32.feature_dim, 13)
        loss = build_loss("ce", num_classes=12)
        hist = train_predictor_cached(
            pred,
            loss,
            cache32,
            epochs=4,
            lr=0.02,
            batch_images=4,
            rois_per_image=64,
            warmup_iters=2,
            train_box_regression=box_regression,
            seed=seed,
        )
        return pred, hist

    pred, hist = run(True)
    assert hist[-1]["loss"] < 0.7 * hist[0]["loss"]
    assert hist[-1]["loss_box_reg"] < hist[0]["loss_box_reg"]
    assert hist[0]["iterations"] == 3 and 0 < hist[0]["rois"] <= 4 * 64
    pred2, hist2 = run(True)
    for h in hist + hist2:
        del h["seconds"]
    assert hist == hist2
    torch.testing.assert_close(pred.state_dict(), pred2.state_dict(), rtol=0, atol=0)
    pred3, hist3 = run(False)
    assert "loss_box_reg" not in hist3[0]
    torch.manual_seed(0)
    init = LinearPredictor(cache32.feature_dim, 13)
    assert torch.equal(pred3.bbox_pred.weight, init.bbox_pred.weight)
    # the box loss does not reach the classifier: same RoIs, same classifier update
    assert not torch.equal(pred3.cls_score.weight, init.cls_score.weight)
    torch.testing.assert_close(pred3.cls_score.weight, pred.cls_score.weight)


def test_predict_cached_equals_full_model(model, data, cache32):
    """Same proposals -> same detections, for a linear (CE) and a cosine (C2AM) predictor
    scored through one read of the features."""
    val = data[1]
    torch.manual_seed(1)
    cosine = CosinePredictor(cache32.feature_dim, 13, scale=None, num_classes=12)
    torch.nn.init.normal_(cosine.bbox_pred.weight, std=0.05)
    c2am = build_loss("c2am", num_classes=12)
    heads = model.roi_heads
    pairs = [(heads.box_predictor, heads.cls_loss), (cosine, c2am)]
    cached = predict_cached(pairs, cache32, topk_candidates=None, images_per_chunk=5)
    for dets, (pred, loss) in zip(cached, pairs, strict=True):
        ref = _by_image(_reference(model, val, pred, loss))
        got = _by_image(dets)
        assert set(got) == set(ref) and sum(map(len, ref.values())) > 1000
        for image_id, r in ref.items():
            assert [d["category_id"] for d in got[image_id]] == [d["category_id"] for d in r]
            np.testing.assert_allclose(
                [d["bbox"] for d in got[image_id]], [d["bbox"] for d in r], atol=1e-3
            )
            np.testing.assert_allclose(
                [d["score"] for d in got[image_id]], [d["score"] for d in r], atol=1e-6
            )


def test_predict_cached_maps_to_lvis_coordinates(tmp_path):
    """Non-square images of several sizes, resized by the dataset (short edge 40) and again
    by the model (128), with non-contiguous category ids: same LVIS results as the full
    model through ``engine.predict``."""
    ann, image_root, _ = make_lvis(tmp_path)
    data = LVISDetection(
        ann, image_root, with_masks=False, transforms=ResizeShortestEdge((40,), 100)
    )
    torch.manual_seed(2)
    net = build_detector(ModelSpec.tiny(masks=False), build_loss("ce", num_classes=3), 3)
    torch.nn.init.normal_(net.roi_heads.box_predictor.cls_score.weight, std=0.3)
    torch.nn.init.normal_(net.roi_heads.box_predictor.bbox_pred.weight, std=0.05)
    net.eval()
    cache = build_feature_cache(
        net, data, data, tmp_path / "c", key="k", feature_dtype="float32", batch_size=1
    )
    assert cache.val["input_size"].tolist() == [[128, 192], [128, 128], [128, 192], [128, 128]]
    pairs = [(net.roi_heads.box_predictor, net.roi_heads.cls_loss)]
    got = _by_image(predict_cached(pairs, cache, topk_candidates=None)[0])
    ref = _by_image(_reference(net, data))
    assert set(got) == set(ref) == {101, 102, 103, 104}
    for image_id, r in ref.items():
        assert {d["category_id"] for d in r} <= {3, 7, 11}
        assert [d["category_id"] for d in got[image_id]] == [d["category_id"] for d in r]
        np.testing.assert_allclose(
            [d["bbox"] for d in got[image_id]], [d["bbox"] for d in r], atol=1e-3
        )


def test_topk_candidates_keep_the_best(cache32):
    heads_pair = [(LinearPredictor(cache32.feature_dim, 13), build_loss("ce", num_classes=12))]
    torch.nn.init.normal_(heads_pair[0][0].cls_score.weight, std=0.3)
    full = _by_image(predict_cached(heads_pair, cache32, topk_candidates=None)[0])
    top = _by_image(predict_cached(heads_pair, cache32, topk_candidates=50)[0])
    for image_id, dets in top.items():
        assert 0 < len(dets) <= 50
        assert dets[0] == full[image_id][0]  # the best candidate always survives


def test_float16_cache_close_to_full_model(model, data, tmp_path):
    val = data[1]
    cache = build_feature_cache(model, Subset(data[0], range(2)), val, tmp_path, key="h")
    got = _by_image(
        predict_cached(
            [(model.roi_heads.box_predictor, model.roi_heads.cls_loss)],
            cache,
            topk_candidates=None,
        )[0]
    )
    ref = _by_image(_reference(model, val))
    matched = total = 0
    for image_id, r in ref.items():
        r = r[:50]
        g = got[image_id][:100]
        iou = box_iou(_xyxy([d["bbox"] for d in r]), _xyxy([d["bbox"] for d in g]))
        same = torch.tensor([[a["category_id"] == b["category_id"] for b in g] for a in r])
        close = torch.tensor([[abs(a["score"] - b["score"]) < 1e-2 for b in g] for a in r])
        matched += int(((iou > 0.95) & same & close).any(1).sum())
        total += len(r)
    assert matched >= 0.95 * total


def _xyxy(xywh) -> torch.Tensor:
    b = torch.tensor(xywh, dtype=torch.float32).reshape(-1, 4)
    return torch.cat([b[:, :2], b[:, :2] + b[:, 2:]], dim=1)


def test_evaluate_cached_equals_engine_metrics(model, data, cache32, synth_small):
    val = data[1]
    heads = model.roi_heads
    [(metrics, per_category)] = evaluate_cached(
        [(heads.box_predictor, heads.cls_loss)],
        cache32,
        synth_small.val_json,
        topk_candidates=None,
    )
    loader = DataLoader(val, batch_size=1, collate_fn=collate_fn)
    ref = engine_eval.evaluate(
        model,
        loader,
        synth_small.val_json,
        device="cpu",
        label_to_cat_id=val.label_to_cat_id,
        iou_types=("bbox",),
    )
    assert metrics.keys() == ref.keys()
    for k, v in ref.items():
        assert metrics[k] == pytest.approx(v, abs=1e-6), k
    assert len(per_category) == val.num_classes
