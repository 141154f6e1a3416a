"""Sharded feature caches: the same cache in many shards reads, trains and evaluates exactly
as in one file; a damaged shard is a CacheError naming it, found at open or on first read.

The caches are built as in ``test_features.py``: the tiny untrained detector (predictor
re-initialised with larger weights) on the small synthetic dataset, ``batch_size=1``.
"""

from __future__ import annotations

import gc
import shutil
import weakref

import numpy as np
import pytest
import torch
from torch.utils.data import Subset

from ltmodels.cache import manifest
from ltmodels.cache.build import build_feature_cache
from ltmodels.cache.evaluate import evaluate_cached
from ltmodels.cache.manifest import CacheError, validate
from ltmodels.cache.shards import ShardedArray, ShardWriter
from ltmodels.cache.store import FeatureCache
from ltmodels.cache.train import load_rows, sample_batch, train_predictor_cached
from ltmodels.losses import build_loss
from ltmodels.modeling.heads import build_predictor

TRAIN_IMAGES = 6
SMALL_SHARDS = 4096  # bytes: one image per shard of the features and labels, 24 val shards


@pytest.fixture(scope="module")
def pair(model, data, tmp_path_factory):
    """The same cache in one file per array (default) and in many shards."""
    root = tmp_path_factory.mktemp("shards")
    one = build_feature_cache(model, *data, root, key="one", batch_size=1)
    many = build_feature_cache(
        model, *data, root, key="many", batch_size=1, shard_bytes=SMALL_SHARDS
    )
    return one, many


def test_writer_cuts_between_units_and_reads_back(tmp_path):
    rng = np.random.default_rng(0)
    units = [rng.standard_normal((int(n), 3)).astype(np.float32) for n in rng.integers(1, 9, 40)]
    writer = ShardWriter(tmp_path, "a", "float32", (3,), shard_bytes=10 * 12)
    for u in units:
        for part in np.array_split(u, 2):  # a unit may come in several appends
            writer.append(part)
        writer.end_unit()
    entry = writer.close()
    whole = np.concatenate(units)
    assert entry["shape"] == [len(whole), 3] and entry["bytes"] == whole.nbytes
    parts = [np.fromfile(tmp_path / s["file"], np.float32).reshape(-1, 3) for s in entry["shards"]]
    assert len(parts) > 5 and not (tmp_path / "a.bin").exists()
    ends = np.cumsum([0] + [len(u) for u in units]).tolist()
    cuts = np.cumsum([0] + [len(p) for p in parts]).tolist()
    assert set(cuts) <= set(ends)  # only between units
    for a, b in zip(cuts[:-1], cuts[1:], strict=True):  # within the bound, or one unit
        assert (b - a) * 12 <= 120 or ends.index(b) - ends.index(a) == 1
    arr = ShardedArray(parts, [s["file"] for s in entry["shards"]])
    np.testing.assert_array_equal(np.asarray(arr), whole)
    n = len(whole)
    for _ in range(20):
        idx = rng.integers(-n, n, size=int(rng.integers(0, 50)))
        np.testing.assert_array_equal(arr[idx], whole[idx])
        np.testing.assert_array_equal(arr[np.sort(idx)], whole[np.sort(idx)])
        a, b = sorted(rng.integers(-n - 3, n + 3, 2).tolist())
        for key in (slice(a, b), slice(b, a, -2), slice(a, None, 3), slice(None, b)):
            np.testing.assert_array_equal(arr[key], whole[key])
    mask = rng.random(n) < 0.3
    np.testing.assert_array_equal(arr[mask], whole[mask])
    np.testing.assert_array_equal(arr[idx.reshape(-1, 1), 1], whole[idx.reshape(-1, 1), 1])
    assert arr[-1].tolist() == whole[-1].tolist() and arr[3, 2] == whole[3, 2]
    assert (len(arr), arr.shape, arr.dtype, arr.ndim) == (n, whole.shape, whole.dtype, 2)
    assert arr.max() == whole.max() and arr.min() == whole.min()
    assert arr.tolist() == whole.tolist() and [r.tolist() for r in arr] == whole.tolist()
    with pytest.raises(IndexError):
        arr[np.array([n])]
    with pytest.raises(IndexError):
        arr[idx, idx]
    per_row = ShardWriter(tmp_path, "b", "int64", (), shard_bytes=24)
    per_row.append_units(np.arange(10))
    assert [s["shape"][0] for s in per_row.close()["shards"]] == [3, 3, 3, 1]


def test_sharded_cache_equals_one_file(pair, data):
    one, many = pair
    assert (
        one.manifest["format"] == 1 and "shards" not in one.manifest["files"]["train/features.bin"]
    )
    assert (one.path / "train" / "features.bin").is_file()
    assert many.manifest["format"] == 2
    tr = many.train
    assert isinstance(tr["features"], ShardedArray) and tr["features"].num_shards == TRAIN_IMAGES
    assert isinstance(many.val["features"], ShardedArray)
    assert many.val["features"].num_shards == len(data[1])
    sharded = {k for k, v in tr.items() if isinstance(v, ShardedArray)}
    assert sharded == {"features", "labels", "gt_index", "targets", "boxes"}
    for split in ("train", "val"):
        a, b = getattr(one, split), getattr(many, split)
        assert a.keys() == b.keys()
        for name in a:
            np.testing.assert_array_equal(np.asarray(a[name]), np.asarray(b[name]), err_msg=name)
    rng = np.random.default_rng(1)
    n = len(one.train["features"])
    for _ in range(10):
        idx = rng.integers(0, n, size=300)
        for name in ("features", "labels", "targets"):
            np.testing.assert_array_equal(one.train[name][idx], many.train[name][idx])
        a, b = sorted(rng.integers(0, n, 2).tolist())
        np.testing.assert_array_equal(one.train["features"][a:b], many.train["features"][a:b])
    for seed in range(3):
        images = np.random.default_rng(seed).permutation(TRAIN_IMAGES)[:4]
        rows = [
            sample_batch(
                c, images, np.random.default_rng(seed), rois_per_image=64, positive_fraction=0.25
            )
            for c in pair
        ]
        np.testing.assert_array_equal(rows[0], rows[1])
        for x, y in zip(*(load_rows(c, rows[0], torch.device("cpu")) for c in pair), strict=True):
            assert torch.equal(x, y)


@pytest.mark.parametrize("loss_name, params", [("ce", {}), ("ebl", {"mfs": True})])
def test_sharded_cache_trains_and_evaluates_the_same(pair, synth_small, loss_name, params):
    runs = []
    for cache in pair:
        loss = build_loss(loss_name, num_classes=cache.num_classes, **params)
        torch.manual_seed(3)
        predictor = build_predictor(
            "auto",
            cache.feature_dim,
            num_logits=loss.num_logits(cache.num_classes),
            num_classes=cache.num_classes,
            loss_predictor=loss.predictor,
            cosine_scale=20.0,
        )
        history = train_predictor_cached(
            predictor,
            loss,
            cache,
            epochs=2,
            lr=0.02,
            batch_images=2,
            rois_per_image=64,
            warmup_iters=2,
            seed=5,
        )
        for h in history:
            del h["seconds"]
        [(metrics, per_category)] = evaluate_cached(
            [(predictor, loss)], cache, synth_small.val_json, topk_candidates=100
        )
        runs.append((history, predictor.state_dict(), metrics, per_category))
    (h1, s1, m1, p1), (h2, s2, m2, p2) = runs
    assert h1 == h2 and len(h1) == 2 and h1[0]["iterations"] == TRAIN_IMAGES / 2
    assert s1.keys() == s2.keys() and all(torch.equal(s1[k], s2[k]) for k in s1)
    assert m1 == m2 and p1 == p2


def _flip(path, offset: int) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ 0x10]))


def test_a_damaged_shard_is_named_at_open(pair, tmp_path):
    many = pair[1]
    copy = tmp_path / "many"
    shutil.copytree(many.path, copy)
    shard = copy / "train" / "features.00002.bin"
    _flip(shard, shard.stat().st_size // 2)
    with pytest.raises(CacheError, match=r"train/features\.00002\.bin does not match its sha256"):
        FeatureCache.open(copy)
    shard.unlink()
    with pytest.raises(CacheError, match=r"train/features\.00002\.bin is missing"):
        FeatureCache.open(copy, full=False)


def _unsampled_offset(size: int) -> int:
    """A byte offset that the (shrunk) sampled digest of a file of ``size`` bytes skips."""
    mib, block = manifest._MIB, manifest._SAMPLE_BLOCK
    starts = np.linspace(mib, size - mib - block, manifest._SAMPLE_BLOCKS, dtype=np.int64)
    return int(starts[100]) + block + (int(starts[101]) - int(starts[100]) - block) // 2


def test_large_shards_are_checked_whole_on_first_read(model, data, tmp_path, monkeypatch):
    """The sample is shrunk (1 KiB ends, 16-byte blocks) so that the features array is
    "large" (over 64 x 1 KiB) and its shards larger than their sampled digest."""
    monkeypatch.setattr(manifest, "_MIB", 1024)
    monkeypatch.setattr(manifest, "_SAMPLE_BLOCK", 16)
    train, val = Subset(data[0], range(3)), Subset(data[1], range(2))
    build_feature_cache(model, train, val, tmp_path, key="k", batch_size=1, shard_bytes=1)
    hashed: list[str] = []
    real = manifest.full_digest
    monkeypatch.setattr(manifest, "full_digest", lambda p: hashed.append(p.name) or real(p))
    cache = FeatureCache.open(tmp_path / "k")
    assert not any(name.startswith("features.") for name in hashed)  # sampled at open only
    features, starts = cache.train["features"], cache.train["features"].starts
    rows = np.arange(starts[1], starts[1] + 5)
    np.testing.assert_array_equal(
        features[rows],
        np.fromfile(tmp_path / "k" / "train" / "features.00001.bin", np.float16).reshape(
            -1, cache.feature_dim
        )[:5],
    )
    features[rows]
    assert [n for n in hashed if n.startswith("features.")] == ["features.00001.bin"]
    shard = tmp_path / "k" / "train" / "features.00000.bin"
    _flip(shard, _unsampled_offset(shard.stat().st_size))
    again = build_feature_cache(model, train, val, tmp_path, key="k", batch_size=1)
    again.train["features"][int(starts[2])]  # other shards still read
    with pytest.raises(CacheError, match=r"train/features\.00000\.bin does not match its sha256"):
        again.train["features"][np.array([0, int(starts[2])])]
    with pytest.raises(CacheError, match=r"features\.00000\.bin does not match its sha256"):
        validate(tmp_path / "k")  # the eager check (verify, cache_problem) sees it at once


def test_a_sharded_cache_is_freed_without_the_garbage_collector(pair):
    """No reference cycle (the shards' verify callback does not hold the cache): dropping
    the last reference unmaps the shards at once, so a deleted cache frees its disk."""
    again = FeatureCache.open(pair[1].path)
    ref = weakref.ref(again)
    gc.disable()
    try:
        del again
        assert ref() is None
    finally:
        gc.enable()
