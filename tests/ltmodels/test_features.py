"""RoI-feature cache: build/reuse/rebuild, cached stage-2 training, cached evaluation.

The key check: detections from the cache equal the full detector's on the same images.
A tiny untrained detector (its predictor re-initialised with larger weights so that scores
are well spread) on the small synthetic dataset; builds use ``batch_size=1`` like the
reference ``engine.predict`` loader (GroupNorm features depend on batch padding).
"""

from __future__ import annotations

import collections
import logging
import threading

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Subset
from torchvision.ops import box_iou

from ltmodels.cache import manifest
from ltmodels.cache.build import build_feature_cache
from ltmodels.cache.evaluate import evaluate_cached, predict_cached
from ltmodels.cache.manifest import ArrayWriter, CacheError, validate, write_manifest
from ltmodels.cache.store import FeatureCache
from ltmodels.cache.train import train_predictor_cached
from ltmodels.data.lvis import LVISDetection, collate_fn
from ltmodels.data.transforms import ResizeShortestEdge
from ltmodels.engine import evaluate as engine_eval
from ltmodels.errors import ConfigError
from ltmodels.losses import build_loss
from ltmodels.modeling.detector import ModelSpec, build_detector
from ltmodels.modeling.heads import CosinePredictor, LinearPredictor
from tests.ltmodels.cache_fixtures import cache_datasets, probe_detector
from tests.ltmodels.data.lvis_fixtures import make_lvis

TRAIN_IMAGES = 12


@pytest.fixture(scope="module")
def data(synth_small):
    return cache_datasets(synth_small, TRAIN_IMAGES)


@pytest.fixture(scope="module")
def model(data):
    net = probe_detector(data[1].num_classes)
    net.calls = []
    net.roi_heads.box_head.register_forward_hook(lambda *_: net.calls.append(1))
    return net.eval()


@pytest.fixture(scope="module")
def cache32(model, data, tmp_path_factory):
    root = tmp_path_factory.mktemp("fcache")
    return build_feature_cache(
        model, *data, root, key="f32", feature_dtype="float32", batch_size=1
    )


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


def test_cache_contents(model, data, cache32):
    train, val = data
    tr = cache32.train
    assert cache32.manifest["mode"] == "all_proposals"
    assert cache32.num_train_images == TRAIN_IMAGES and cache32.num_val_images == len(val)
    assert len(tr["view_flip"]) == 2 * TRAIN_IMAGES and tr["view_flip"].tolist()[:2] == [0, 1]
    coder = model.roi_heads.box_coder
    gt_seen = 0
    for i in range(3):
        _, target = train[i]
        gt = target["boxes"] * 128 / 96  # the model resizes 96 px images to 128
        for v, mirror in enumerate((False, True)):
            view = tr["image_views"][i] + v
            a, b = tr["view_offsets"][view], tr["view_offsets"][view + 1]
            boxes = torch.from_numpy(np.array(tr["boxes"][a:b]))
            labels = torch.from_numpy(np.array(tr["labels"][a:b])).long()
            gt_index = torch.from_numpy(np.array(tr["gt_index"][a:b])).long()
            g = gt.clone()
            if mirror:
                g = torch.stack([128 - gt[:, 2], gt[:, 1], 128 - gt[:, 0], gt[:, 3]], dim=1)
            torch.testing.assert_close(boxes[-len(g) :], g, atol=1e-4, rtol=0)  # gt appended
            iou = box_iou(boxes, g)
            pos = labels > 0
            assert bool((iou.max(1).values[pos] >= 0.5).all())
            assert bool((iou.max(1).values[~pos] < 0.5).all())
            assert bool((gt_index[~pos] == -1).all())
            matched = gt_index[pos] - gt_seen
            assert bool((labels[pos] == target["labels"][matched]).all())
            targets = torch.from_numpy(np.array(tr["targets"][a:b]))[pos]
            decoded = coder.decode_single(targets, boxes[pos])
            torch.testing.assert_close(decoded, g[matched], atol=1e-3, rtol=1e-4)
        gt_seen += len(gt)


def test_cache_reused_without_recompute(model, data, cache32):
    before = len(model.calls)
    mtime = (cache32.path / "manifest.json").stat().st_mtime_ns
    again = build_feature_cache(
        model, *data, cache32.path.parent, key="f32", feature_dtype="float32", batch_size=1
    )
    assert len(model.calls) == before
    assert (again.path / "manifest.json").stat().st_mtime_ns == mtime
    assert again.manifest == cache32.manifest


def test_truncated_or_stale_cache_is_rebuilt(model, data, tmp_path, caplog):
    train, val = Subset(data[0], range(2)), Subset(data[1], range(2))
    cache = build_feature_cache(model, train, val, tmp_path, key="k")
    rows = cache.manifest["num_train_rois"]
    features = tmp_path / "k" / "train" / "features.bin"
    with features.open("r+b") as f:
        f.truncate(features.stat().st_size - 256)
    with pytest.raises(CacheError, match="features.bin"):
        FeatureCache.open(tmp_path / "k")
    before = len(model.calls)
    with caplog.at_level(logging.WARNING, logger="ltmodels.cache.build"):
        rebuilt = build_feature_cache(model, train, val, tmp_path, key="k")
    assert len(model.calls) > before and "unusable" in caplog.text
    assert rebuilt.manifest["num_train_rois"] == rows
    rebuilt.verify(full=True)
    before = len(model.calls)
    stale = build_feature_cache(model, train, val, tmp_path, key="k", flip_views=False)
    assert len(model.calls) > before
    assert stale.manifest["views_per_image"] == 1 and len(stale.train["view_flip"]) == 2
    assert not list(tmp_path.glob(".k.tmp-*"))


def _unsampled_offset(size: int) -> int:
    """A byte offset of a file of ``size`` bytes that its sampled digest does not read."""
    mib, block = manifest._MIB, manifest._SAMPLE_BLOCK
    starts = np.linspace(mib, size - mib - block, manifest._SAMPLE_BLOCKS, dtype=np.int64)
    gap = int(np.argmax(np.diff(starts) - block))
    offset = int(starts[gap]) + block + (int(starts[gap + 1]) - int(starts[gap]) - block) // 2
    assert mib <= offset < size - mib and not any(s <= offset < s + block for s in starts)
    return offset


def _flip(path, offset: int) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ 0x04]))


def test_a_flipped_bit_outside_the_sampled_blocks_is_caught(tmp_path):
    """80 MiB: past the size up to which files were always hashed whole (64 MiB)."""
    root = tmp_path / "big"
    (root / "train").mkdir(parents=True)
    writer = ArrayWriter(root / "train" / "features.bin", "float16", (1024,))
    rows = np.ones((4096, 1024), dtype=np.float16)
    for _ in range(10):
        writer.append(rows)
    write_manifest(
        root, {"format": manifest.FORMAT, "files": {"train/features.bin": writer.close()}}
    )
    validate(root)
    features = root / "train" / "features.bin"
    _flip(features, _unsampled_offset(features.stat().st_size))
    validate(root, full=False)  # the sampled digest alone does not see it
    with pytest.raises(CacheError, match=r"features\.bin does not match its sha256"):
        validate(root)  # what opening a cache for reuse runs


def test_bit_flipped_cache_is_rebuilt_not_used(model, data, tmp_path, caplog, monkeypatch):
    """The sample is shrunk (1 KiB ends, 16-byte blocks) so that the small test cache is
    larger than it: a flip between its blocks must still be found and rebuilt."""
    monkeypatch.setattr(manifest, "_MIB", 1024)
    monkeypatch.setattr(manifest, "_SAMPLE_BLOCK", 16)
    train, val = Subset(data[0], range(2)), Subset(data[1], range(2))
    cache = build_feature_cache(model, train, val, tmp_path, key="k")
    expected = np.array(cache.train["features"])
    features = tmp_path / "k" / "train" / "features.bin"
    assert features.stat().st_size > 64 * manifest._MIB  # sampled unless verified whole
    _flip(features, _unsampled_offset(features.stat().st_size))
    validate(tmp_path / "k", full=False)
    before = len(model.calls)
    with caplog.at_level(logging.WARNING, logger="ltmodels.cache.build"):
        rebuilt = build_feature_cache(model, train, val, tmp_path, key="k")
    assert len(model.calls) > before
    assert "unusable" in caplog.text and "features.bin does not match its sha256" in caplog.text
    np.testing.assert_array_equal(np.array(rebuilt.train["features"]), expected)
    rebuilt.verify(full=True)


def test_concurrent_builders_build_once(model, data, tmp_path):
    train, val = Subset(data[0], range(2)), Subset(data[1], range(2))
    before = len(model.calls)
    build_feature_cache(model, train, val, tmp_path / "solo", key="k")
    one_build = len(model.calls) - before
    caches, start = [], threading.Barrier(2)

    def run():
        start.wait()
        caches.append(build_feature_cache(model, train, val, tmp_path, key="k"))

    before = len(model.calls)
    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(model.calls) - before == one_build
    assert caches[0].manifest == caches[1].manifest


def test_budget_keeps_presampled_views(model, data, tmp_path, caplog):
    train, val = Subset(data[0], range(4)), Subset(data[1], range(2))
    with pytest.raises(ConfigError, match="max_bytes"):
        build_feature_cache(model, train, val, tmp_path, key="tiny", max_bytes=10_000)
    # the planning bound: 2 val images x (300 proposals x (fp16 features + box) + 64 index
    # bytes), 4 train images x 64 index bytes, and room for exactly 3 views per train image
    # of 64 RoIs x (features + label, gt index, target, box) + 16 index bytes.
    budget = 2 * (300 * (2 * 128 + 16) + 64) + 4 * 64 + 3 * 4 * (64 * (2 * 128 + 40) + 16)
    with caplog.at_level(logging.INFO, logger="ltmodels.cache.build"):
        cache = build_feature_cache(
            model, train, val, tmp_path, key="b", max_bytes=budget, view_rois=64
        )
    m, tr = cache.manifest, cache.train
    assert m["mode"] == "sampled_views" and m["views_per_image"] == 3
    assert "3 pre-sampled views" in caplog.text
    assert m["total_bytes"] <= budget
    assert tr["image_view_count"].tolist() == [3] * 4
    assert tr["view_flip"].tolist() == [0, 1, 0] * 4
    for v in range(12):
        lab = tr["labels"][tr["view_offsets"][v] : tr["view_offsets"][v + 1]]
        assert len(lab) <= 64 and (lab > 0).sum() <= 16 and (lab < 0).sum() == 0
    # a budget that fits the planning bound of all proposals (300 per view) but not the
    # ground-truth boxes appended to them: the build notices and falls back to views
    bound = 4 * (2 * 300 * (2 * 128 + 40) + 64) + 2 * (300 * (2 * 128 + 16) + 64)
    with caplog.at_level(logging.INFO, logger="ltmodels.cache.build"):
        cache = build_feature_cache(model, train, val, tmp_path, key="edge", max_bytes=bound)
    assert cache.manifest["mode"] == "sampled_views"
    assert cache.manifest["total_bytes"] <= bound
    assert "passed max_bytes while building" in caplog.text


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
