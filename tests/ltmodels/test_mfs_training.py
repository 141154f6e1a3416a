"""LOCE's MFS in training: the RoI head (ltmodels/modeling/roi_mfs.py) and the cache's
stage-2 trainer (ltmodels/cache/train.py).

A spy (a forward hook with keyword arguments) records what the loss receives; the sampled
memory rows are recorded by wrapping the loss's ``FeatureSampling.sample``.
"""

from __future__ import annotations

import types
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection._utils import BoxCoder
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.ops import generalized_box_iou_loss

from ltmodels.cache.train import train_predictor_cached
from ltmodels.losses import LongTailLoss, build_loss
from ltmodels.losses.feature_sampling import memory_of
from ltmodels.losses.mfs import NUM_DENSE_BOXES, MemorySample, memory_gt_index
from ltmodels.modeling.detector import ModelSpec, build_detector
from ltmodels.modeling.heads import LinearPredictor
from ltmodels.modeling.roi_mfs import memory_box_loss

C, SIZE, ALPHA = 3, 64, 0.9
MFS = {"mfs": True, "mfs_size": 40, "mfs_k": 4, "mfs_m": 3}


def make_batch(seed: int) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """Two images, objects of labels 1 and 3 in each."""
    g = torch.Generator().manual_seed(seed)
    images = [torch.rand(3, SIZE, SIZE, generator=g) for _ in range(2)]
    boxes = torch.tensor([[4.0, 6.0, 30.0, 40.0], [28.0, 20.0, 60.0, 58.0]])
    target = {"boxes": boxes, "labels": torch.tensor([1, 3]), "masks": torch.zeros(2, SIZE, SIZE)}
    return images, [dict(target) for _ in images]


class Spy:
    """Records the loss's inputs and the memory rows drawn, per call."""

    def __init__(self, loss: nn.Module) -> None:
        self.calls: list[dict[str, Any]] = []
        self.rows: list[MemorySample] = []
        loss.register_forward_hook(self.hook, with_kwargs=True)
        sampling = getattr(loss, "feature_sampling", None)
        if sampling is not None:
            draw = sampling.sample

            def record(scores: torch.Tensor) -> MemorySample:
                self.rows.append(draw(scores))
                return self.rows[-1]

            sampling.sample = record

    def hook(self, module, args, kwargs, output) -> None:
        logits, labels = args
        self.calls.append({"logits": logits.detach(), "labels": labels, **kwargs})


class Hidden(LongTailLoss):
    """Delegates to another loss but hides the memory protocol: the code path from before."""

    name = "hidden"

    def __init__(self, inner: LongTailLoss) -> None:
        super().__init__(num_classes=inner.num_classes)
        self.inner = inner

    def num_logits(self, num_classes: int) -> int:  # type: ignore[override]
        return self.inner.num_logits(num_classes)

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        return self.inner.scores(logits)

    def forward(self, logits, labels, **context):  # type: ignore[override]
        return self.inner(logits, labels, **context)


def expected_mean_score(call: dict[str, Any], rows: MemorySample) -> torch.Tensor:
    """One EMA step from 0.01 (code update): an entry per batch object, one per sampled class."""
    n = len(call["labels"]) - len(rows.labels)
    labels, gt = call["labels"], call["gt_index"]
    p = call["logits"].softmax(1)[torch.arange(len(labels)), labels]
    entries: dict[int, list[float]] = {}
    for g in gt[:n][labels[:n] > 0].unique().tolist():
        group = gt[:n] == g
        entries.setdefault(int(labels[:n][group][0]), []).append(p[:n][group].mean().item())
    for c in rows.labels.unique().tolist():
        entries.setdefault(c, []).append(p[n:][rows.labels == c].mean().item())
    s = torch.full((C + 1,), 0.01)
    for c, values in entries.items():
        decay = ALPHA ** len(values)
        s[c] = decay * 0.01 + (1 - decay) * sum(values) / len(values)
    return s


def check_appended(call: dict[str, Any], rows: MemorySample, features: torch.Tensor) -> int:
    """The last R rows the loss sees are the memory rows; returns N."""
    r = len(rows.labels)
    n = len(call["labels"]) - r
    assert r > 0 and r % MFS["mfs_m"] == 0 and r <= MFS["mfs_k"] * MFS["mfs_m"]
    assert call["logits"].shape[0] == call["features"].shape[0] == n + r
    assert torch.equal(call["labels"][n:], rows.labels)
    assert torch.equal(call["gt_index"][n:], memory_gt_index(rows.labels, call["gt_index"][:n]))
    torch.testing.assert_close(features[n:], rows.features)
    return n


def full_model(loss: LongTailLoss, box_loss: str = "smooth_l1") -> nn.Module:
    torch.manual_seed(0)
    model = build_detector(
        ModelSpec.tiny(min_size=SIZE, max_size=SIZE, box_loss=box_loss), loss, C
    )
    for p in model.roi_heads.box_head.parameters():  # LOCE's stage 2: box head frozen
        p.requires_grad_(False)
    return model.train()


def test_full_model_pushes_dense_features_and_appends_rows() -> None:
    loss = build_loss("ebl", num_classes=C, **MFS)
    model = full_model(loss)
    spy = Spy(loss)
    images, targets = make_batch(0)
    terms = model(images, targets)
    assert all(torch.isfinite(v) for v in terms.values())
    sum(terms.values()).backward()
    memory = memory_of(loss)
    per_class = 2 * NUM_DENSE_BOXES  # two objects of each of labels 1 and 3
    assert memory.fill().tolist() == [per_class, 0, per_class]
    call, rows = spy.calls[0], spy.rows[0]
    check_appended(call, rows, call["features"])
    assert set(rows.labels.tolist()) <= {1, 3}  # label 2 has no stored rows
    torch.testing.assert_close(loss.mean_score, expected_mean_score(call, rows))
    model(*make_batch(1))
    assert memory.fill().tolist() == [40, 0, 40] and len(spy.rows) == 2
    # the filled memory is in the model's state and restores into a fresh model
    state = model.state_dict()
    assert state["roi_heads.cls_loss.feature_sampling.memory.count"].tolist() == [64, 0, 64]
    fresh = full_model(build_loss("ebl", num_classes=C, **MFS))
    fresh.load_state_dict(state)
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_full_model_mfs_off_draws_and_regresses_like_torchvision() -> None:
    """mfs off, same seed: the head draws the same random numbers and RoIs as torchvision's
    ``RoIHeads.forward`` (the code path it extends) and its box and mask losses agree."""
    ebl = build_loss("ebl", num_classes=C)
    ours, theirs = full_model(ebl), full_model(build_loss("ebl", num_classes=C))
    theirs.roi_heads.forward = types.MethodType(RoIHeads.forward, theirs.roi_heads)
    spy = Spy(ebl)
    runs = []
    for model in (ours, theirs):
        torch.manual_seed(1)
        runs.append((model(*make_batch(0)), torch.get_rng_state()))
    (a, rng_a), (b, rng_b) = runs
    assert torch.equal(rng_a, rng_b)
    for key in ("loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"):
        torch.testing.assert_close(a[key], b[key], rtol=1e-6, atol=1e-9)
    # torchvision's classifier term is softmax CE on the same RoIs' raw logits
    call = spy.calls[0]
    ce = F.cross_entropy(call["logits"], call["labels"])
    torch.testing.assert_close(ce, b["loss_classifier"], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("box_loss", ["smooth_l1", "giou"])
def test_full_model_mfs_off_is_the_path_without_memory(box_loss: str) -> None:
    """Same seed: ``ebl`` (mfs off) gives bit-identical steps to the loss behind a wrapper
    that hides the protocol (the head's code path before MFS)."""
    runs = []
    for wrap in (False, True):
        ebl = build_loss("ebl", num_classes=C)
        model = full_model(Hidden(ebl) if wrap else ebl, box_loss)
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
        steps = []
        for seed in range(2):
            terms = model(*make_batch(seed))
            opt.zero_grad()
            sum(terms.values()).backward()
            opt.step()
            steps.append({k: v.detach() for k, v in terms.items()})
        runs.append((steps, model.roi_heads.box_predictor.state_dict(), ebl.mean_score))
    (steps_a, pred_a, s_a), (steps_b, pred_b, s_b) = runs
    for a, b in zip(steps_a, steps_b, strict=True):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert all(torch.equal(pred_a[k], pred_b[k]) for k in pred_a)
    assert torch.equal(s_a, s_b)


def test_full_model_batch_without_objects() -> None:
    loss = build_loss("ebl", num_classes=C, **MFS)
    model = full_model(loss)
    images, targets = make_batch(0)
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}
    empty["masks"] = torch.zeros(0, SIZE, SIZE)
    terms = model(images, [empty, empty])  # nothing to push, nothing stored to sample
    assert all(torch.isfinite(v) for v in terms.values())
    assert memory_of(loss).fill().tolist() == [0, 0, 0]
    model(images, [targets[0], empty])
    assert memory_of(loss).fill().tolist() == [NUM_DENSE_BOXES, 0, NUM_DENSE_BOXES]


def test_memory_giou_equals_giou_on_the_real_boxes() -> None:
    """Rows keep encoded targets only: decoding against a shared unit box gives the GIoU of
    the real proposal's boxes, and smooth L1 is on the deltas themselves."""
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(5, 2, generator=g) * 50
    proposals = torch.cat([xy, xy + 5 + torch.rand(5, 2, generator=g) * 40], 1)
    gt = proposals + torch.randn(5, 4, generator=g) * 3
    labels = torch.tensor([1, 2, 3, 1, 2])
    regression = torch.randn(5, 4 * (C + 1), generator=g) * 0.3
    rows = MemorySample(torch.zeros(5, 2), labels, coder.encode_single(gt, proposals))
    deltas = regression.reshape(5, -1, 4)[torch.arange(5), labels]
    pred = coder.decode_single(deltas, proposals)
    want = generalized_box_iou_loss(pred, gt, reduction="sum") * 10.0
    got = memory_box_loss(coder, regression, rows, box_loss="giou", giou_weight=10.0)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    l1 = memory_box_loss(coder, regression, rows, box_loss="smooth_l1", giou_weight=10.0)
    want_l1 = F.smooth_l1_loss(deltas, rows.targets, beta=1 / 9, reduction="sum")
    torch.testing.assert_close(l1, want_l1)


def fake_cache(d: int = 8) -> types.SimpleNamespace:
    """What train_predictor_cached reads of a FeatureCache: 4 images, 2 views of 12 RoIs;
    positives are labels 1 and 3 (one object per image and label), label 2 never occurs."""
    rng = np.random.default_rng(0)
    views, per = 8, 12
    labels = np.tile(np.array([1, 1, 3, 3, 3] + [0] * 7, dtype=np.int32), views)
    image = np.repeat(np.arange(views) // 2, per)
    gt = np.where(labels > 0, image * 4 + labels, -1).astype(np.int32)
    train = {
        "features": rng.standard_normal((views * per, d)).astype(np.float32),
        "labels": labels,
        "gt_index": gt,
        "targets": (rng.standard_normal((views * per, 4)) * 0.1).astype(np.float32),
        "image_views": np.arange(0, views + 1, 2),
        "view_offsets": np.arange(0, views * per + 1, per),
    }
    return types.SimpleNamespace(train=train, num_classes=C, num_train_images=4)


def train_cached(loss: LongTailLoss, epochs: int = 1, batch_images: int = 4):
    torch.manual_seed(0)
    predictor = LinearPredictor(8, C + 1)
    inputs: list[torch.Tensor] = []
    predictor.cls_score.register_forward_hook(lambda m, a, out: inputs.append(a[0].detach()))
    history = train_predictor_cached(
        predictor,
        loss,
        fake_cache(),
        epochs=epochs,
        lr=0.05,
        batch_images=batch_images,
        rois_per_image=8,
        warmup_iters=1,
        seed=0,
    )
    return predictor, history, inputs


def test_cached_stage2_pushes_positives_and_appends_rows() -> None:
    loss = build_loss("ebl", num_classes=C, **MFS)
    spy = Spy(loss)
    _, history, inputs = train_cached(loss)  # one iteration of all 4 images
    call, rows = spy.calls[0], spy.rows[0]
    n = check_appended(call, rows, inputs[0])
    pushed = torch.bincount(call["labels"][:n], minlength=C + 1)[1:]
    assert memory_of(loss).fill().tolist() == pushed.tolist()
    assert pushed[0] > 0 and pushed[1] == 0 and pushed[2] > 0
    torch.testing.assert_close(loss.mean_score, expected_mean_score(call, rows))
    assert history[0]["memory_rows"] == len(rows.labels) and history[0]["rois"] == n
    # three iterations: the memory holds every positive pushed (fewer than M per class)
    loss = build_loss("ebl", num_classes=C, **MFS)
    spy = Spy(loss)
    _, history, _ = train_cached(loss, epochs=3)
    pushed = sum(
        torch.bincount(c["labels"][: len(c["labels"]) - len(r.labels)], minlength=C + 1)
        for c, r in zip(spy.calls, spy.rows, strict=True)
    )
    assert len(spy.rows) == 3 and memory_of(loss).fill().tolist() == pushed[1:].tolist()
    again = train_cached(build_loss("ebl", num_classes=C, **MFS), epochs=3)[1]
    for h in history + again:
        del h["seconds"]
    assert history == again


def test_cached_stage2_mfs_off_is_the_path_without_memory() -> None:
    """As before MFS: the loss sees the sampled RoIs only and no torch random number is
    drawn after the trainer seeds torch; the same as with the protocol hidden."""
    ebl, inner = build_loss("ebl", num_classes=C), build_loss("ebl", num_classes=C)
    spy = Spy(ebl)
    pred_a, hist_a, _ = train_cached(ebl, epochs=2, batch_images=2)
    assert torch.equal(torch.get_rng_state(), torch.manual_seed(0).get_state())
    seen = [len(c["labels"]) for c in spy.calls]
    assert len(seen) == 4 and [h["rois"] for h in hist_a] == [sum(seen[:2]) / 2, sum(seen[2:]) / 2]
    pred_b, hist_b, _ = train_cached(Hidden(inner), epochs=2, batch_images=2)
    for h in hist_a + hist_b:
        del h["seconds"]
    assert hist_a == hist_b and "memory_rows" not in hist_a[0]
    assert all(torch.equal(v, pred_b.state_dict()[k]) for k, v in pred_a.state_dict().items())
    assert torch.equal(ebl.mean_score, inner.mean_score)


def test_trainable_box_head_warns() -> None:
    """The memory keeps box-head outputs: stale if the head trains (LOCE freezes it)."""
    loss = build_loss("ebl", num_classes=C, **MFS)
    model = full_model(loss)
    model.roi_heads.box_head.requires_grad_(True)
    with pytest.warns(UserWarning, match="trainable box head"):
        model(*make_batch(0))
