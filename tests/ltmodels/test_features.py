"""RoI-feature cache: build, reuse without recomputing, rebuild of a truncated, stale or
bit-flipped cache, concurrent builders, the byte budget (pre-sampled views).

A tiny untrained detector (its predictor re-initialised with larger weights so that scores
are well spread) on the small synthetic dataset; builds use ``batch_size=1`` like the
reference ``engine.predict`` loader (GroupNorm features depend on batch padding). Training,
detection and evaluation from the cache are checked in ``test_cached_stage2.py``.
"""

from __future__ import annotations

import logging
import threading

import numpy as np
import pytest
import torch
from torch.utils.data import Subset
from torchvision.ops import box_iou

from ltmodels.cache import manifest
from ltmodels.cache.build import build_feature_cache
from ltmodels.cache.manifest import ArrayWriter, CacheError, validate, write_manifest
from ltmodels.cache.store import FeatureCache
from ltmodels.errors import ConfigError
from tests.ltmodels.cache_fixtures import probe_detector

TRAIN_IMAGES = 12


@pytest.fixture(scope="module")
def model(data):
    net = probe_detector(data[1].num_classes)
    net.calls = []
    net.roi_heads.box_head.register_forward_hook(lambda *_: net.calls.append(1))
    return net.eval()


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
