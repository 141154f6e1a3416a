"""Predictors, RoI heads and the detector builder, over every registered loss."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
import torch
from torch import nn
from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor
from torchvision.models.detection.roi_heads import maskrcnn_inference

from ltmodels.errors import ConfigError
from ltmodels.losses import LOSSES, LongTailLoss, build_loss
from ltmodels.modeling import roi_heads
from ltmodels.modeling.detections import own_class_mask_logits
from ltmodels.modeling.detector import ModelSpec, build_detector
from ltmodels.modeling.heads import CosinePredictor, LinearPredictor, build_predictor
from ltmodels.modeling.roi_heads import mask_probs, matched_gt_index, select_detections

C = 3
SIZE = 64


def make_batch(n_images: int = 2, size: int = SIZE, seed: int = 0) -> tuple[list, list]:
    """Random images with 2 boxes each (labels 1 and 3) and their box masks."""
    g = torch.Generator().manual_seed(seed)
    images = [torch.rand(3, size, size, generator=g) for _ in range(n_images)]
    targets = []
    for _ in range(n_images):
        boxes = torch.tensor([[4.0, 6.0, 30.0, 40.0], [28.0, 20.0, 60.0, 58.0]])
        masks = torch.zeros(2, size, size, dtype=torch.uint8)
        for j, (x0, y0, x1, y1) in enumerate(boxes.int().tolist()):
            masks[j, y0:y1, x0:x1] = 1
        targets.append({"boxes": boxes, "labels": torch.tensor([1, 3]), "masks": masks})
    return images, targets


def tiny(**kw: Any) -> ModelSpec:
    return ModelSpec.tiny(min_size=SIZE, max_size=SIZE, **kw)


def loss_for(name: str) -> LongTailLoss:
    loss = build_loss(name, num_classes=C)
    loss.set_class_stats(torch.tensor([20, 5, 1]), 30)
    return loss


class RecordingCE(LongTailLoss):
    """Softmax CE that records the context the RoI head passes (not registered)."""

    name: ClassVar[str] = "recording_ce"

    def __init__(self, *, num_classes: int) -> None:
        super().__init__(num_classes=num_classes)
        self.seen: dict[str, Any] = {}

    @classmethod
    def num_logits(cls, num_classes: int) -> int:
        return num_classes + 1

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.softmax(-1)[:, 1:]

    def forward(self, logits, labels, **context):  # type: ignore[override]
        self.seen = {"logits": logits, "labels": labels, **context}
        return {"loss_cls": torch.nn.functional.cross_entropy(logits, labels)}


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_loss_trains_and_infers(name: str) -> None:
    torch.manual_seed(0)
    loss = loss_for(name)
    model = build_detector(tiny(), loss, C)
    assert model.roi_heads.cls_loss is loss
    assert model.roi_heads.box_predictor.cls_weight.shape[0] == loss.num_logits(C)
    images, targets = make_batch()
    model.train()
    terms = model(images, targets)
    assert {"loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"} <= set(terms)
    assert all(torch.isfinite(v) and v.dim() == 0 for v in terms.values()), terms
    sum(terms.values()).backward()
    grad = model.roi_heads.box_predictor.cls_weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        out = model(images)
    for det in out:
        n = len(det["boxes"])
        assert 0 < n <= 300
        assert det["boxes"].shape == (n, 4) and det["masks"].shape == (n, 1, SIZE, SIZE)
        assert det["labels"].min() >= 1 and det["labels"].max() <= C
        assert (det["scores"] > 1e-4).all() and (det["scores"] <= 1).all()
        assert (det["scores"][:-1] >= det["scores"][1:]).all()


def test_roi_head_passes_context_with_batch_unique_gt_index() -> None:
    torch.manual_seed(0)
    loss = RecordingCE(num_classes=C)
    model = build_detector(tiny(), loss, C).train()
    images, targets = make_batch(n_images=2)
    targets[1]["labels"] = torch.tensor([2, 2])
    model(images, targets)
    seen = loss.seen
    n = len(seen["labels"])
    assert seen["logits"].shape == (n, C + 1) and seen["features"].shape == (n, 128)
    assert seen["weight"] is model.roi_heads.box_predictor.cls_weight
    gt, labels = seen["gt_index"], seen["labels"]
    assert ((gt == -1) == (labels == 0)).all()
    all_labels = torch.cat([t["labels"] for t in targets])  # gt objects 0..3 of the batch
    fg = labels > 0
    assert (all_labels[gt[fg]] == labels[fg]).all()
    assert set(gt[fg].tolist()) == {0, 1, 2, 3}  # GT boxes are proposals: every object hit


def test_matched_gt_index_by_hand() -> None:
    # image 0 has 2 objects, image 1 has 3: image 1's indices are offset by 2.
    matched = [torch.tensor([1, 0, 0]), torch.tensor([2, 0, 1])]
    labels = [torch.tensor([5, 0, 2]), torch.tensor([1, 0, 4])]
    got = matched_gt_index(matched, labels, [2, 3])
    assert got.tolist() == [1, -1, 0, 4, -1, 3]


def test_select_detections_threshold_nms_topk() -> None:
    # Two RoIs, two classes. Class 1: RoI boxes overlap (IoU 0.81) -> NMS keeps the best.
    # Class 2: scores 1e-5 and 0.3, the first below the threshold.
    box_a, box_b = [0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 9.0]
    boxes = torch.tensor([[box_a, box_a], [box_b, box_b]])  # [R=2, C=2, 4]
    scores = torch.tensor([[0.9, 1e-5], [0.8, 0.3]])
    kw = {"score_thresh": 1e-4, "nms_thresh": 0.5}
    b, s, lab = select_detections(boxes, scores, (20, 20), detections_per_img=300, **kw)
    assert s.tolist() == pytest.approx([0.9, 0.3])
    assert lab.tolist() == [1, 2]
    assert b.tolist() == [box_a, box_b]
    _, s, _ = select_detections(boxes, scores, (20, 20), detections_per_img=1, **kw)
    assert s.tolist() == pytest.approx([0.9])
    _, s, _ = select_detections(
        boxes, scores, (20, 20), detections_per_img=9, pre_nms_top_k=1, **kw
    )
    assert s.tolist() == pytest.approx([0.9])


def test_postprocess_scores_come_from_the_loss() -> None:
    """A sigmoid loss's per-class scores (not a softmax) reach the detections."""
    loss = loss_for("bce") if "bce" in LOSSES else RecordingCE(num_classes=C)
    heads = build_detector(tiny(masks=False), loss, C).roi_heads
    k = loss.num_logits(C)
    logits = torch.linspace(-3, 3, 2 * k).reshape(2, k)
    proposals = [torch.tensor([[0.0, 0.0, 10.0, 10.0], [30.0, 30.0, 50.0, 50.0]])]
    deltas = torch.zeros(2, 4 * (C + 1))
    boxes, scores, labels = heads.postprocess_detections(logits, deltas, proposals, [(64, 64)])
    expected = loss.scores(logits)  # [2, C]
    assert len(scores[0]) == 2 * C  # disjoint boxes: nothing suppressed
    want = sorted(expected.flatten().tolist(), reverse=True)
    assert scores[0].tolist() == pytest.approx(want)
    roi = (boxes[0][:, 0] > 20).long()  # which proposal each detection came from
    assert torch.allclose(scores[0], expected[roi, labels[0] - 1])


@pytest.mark.parametrize("box_loss", ["smooth_l1", "giou"])
def test_box_loss_zero_on_exact_boxes_positive_otherwise(box_loss: str) -> None:
    heads = build_detector(tiny(masks=False, box_loss=box_loss), RecordingCE(num_classes=C), C)
    heads = heads.roi_heads
    gt = torch.tensor([[4.0, 4.0, 20.0, 30.0]])
    targets = [{"boxes": gt, "labels": torch.tensor([2])}]
    args = ([torch.tensor([2, 0])], [torch.tensor([0, 0])], targets)  # labels, matched
    logits, feats = torch.zeros(2, C + 1), torch.zeros(2, 128)
    exact = heads.box_losses(logits, torch.zeros(2, 4 * (C + 1)), feats, [gt.repeat(2, 1)], *args)
    assert exact["loss_box_reg"].item() == pytest.approx(0.0, abs=1e-6)
    shifted = gt + torch.tensor([3.0, 3.0, 3.0, 3.0])
    off = heads.box_losses(
        logits, torch.zeros(2, 4 * (C + 1)), feats, [torch.cat([shifted, gt])], *args
    )
    assert off["loss_box_reg"].item() > 0.01


def test_cosine_predictor_outputs_cosines_and_scaled_cosines() -> None:
    raw = CosinePredictor(4, 3, scale=None)
    with torch.no_grad():
        raw.weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 2.0, 0, 0], [-3.0, 0, 0, 0]]))
    x = torch.tensor([[5.0, 0, 0, 0], [1.0, 1.0, 0, 0]])
    logits, boxes = raw(x)
    s = 2**-0.5
    assert torch.allclose(logits, torch.tensor([[1, 0, -1], [s, s, -s]]), atol=1e-6)
    assert boxes.shape == (2, 12) and raw.cls_weight.shape == (3, 4)
    scaled = CosinePredictor(4, 3, scale=20.0)
    scaled.load_state_dict(raw.state_dict())
    assert torch.allclose(scaled(x)[0], 20 * logits)


def test_build_predictor_choices() -> None:
    kw = {"num_logits": 4, "num_classes": 3, "cosine_scale": 20.0}
    assert isinstance(build_predictor("auto", 8, loss_predictor="linear", **kw), LinearPredictor)
    cos = build_predictor("cosine", 8, loss_predictor="linear", **kw)
    assert isinstance(cos, CosinePredictor) and cos.scale == 20.0
    assert build_predictor("auto", 8, loss_predictor="cosine", **kw).scale is None
    with pytest.raises(ConfigError, match="cosine"):
        build_predictor("linear", 8, loss_predictor="cosine", **kw)
    sigmoid = build_predictor("linear", 8, loss_predictor="linear", **{**kw, "num_logits": 3})
    assert sigmoid(torch.zeros(2, 8))[1].shape == (2, 16)  # boxes: 4 * (C + 1)


@pytest.mark.parametrize(
    "bad",
    [
        {"backbone": "vgg"},
        {"norm": "ln"},
        {"cls_head": "mlp"},
        {"box_loss": "l1"},
        {"norm": "frozen_bn"},
        {"trainable_backbone_layers": 6},
        {"min_size": 0},
        {"min_size": (128, 512)},
    ],
)
def test_model_spec_rejects_bad_values(bad: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        ModelSpec.tiny(**bad)


def test_loss_state_is_in_the_model_state_dict() -> None:
    loss = RecordingCE(num_classes=C)
    loss.register_buffer("counts", torch.arange(C, dtype=torch.float32))
    model = build_detector(tiny(), loss, C)
    assert torch.equal(model.state_dict()["roi_heads.cls_loss.counts"], torch.arange(3.0))
    with pytest.raises(ConfigError, match="classes"):
        build_detector(tiny(), RecordingCE(num_classes=5), C)


def test_class_stats_reach_the_loss() -> None:
    class Stats(RecordingCE):
        def set_class_stats(self, image_counts: torch.Tensor, num_images: int) -> None:
            self.stats = (image_counts.tolist(), num_images)

    loss = Stats(num_classes=C)
    build_detector(tiny(), loss, C, image_counts=torch.tensor([4, 2, 1]), num_images=6)
    assert loss.stats == ([4, 2, 1], 6)


def test_resnet18_fpn_faster_rcnn_runs() -> None:
    spec = ModelSpec.paper(
        backbone="resnet18_fpn", masks=False, min_size=64, max_size=64, rpn_post_nms_top_n_train=64
    )
    torch.manual_seed(0)
    model = build_detector(spec, RecordingCE(num_classes=C), C)
    images, targets = make_batch(n_images=1)
    terms = model(images, [{k: v for k, v in targets[0].items() if k != "masks"}])
    assert "loss_mask" not in terms and torch.isfinite(sum(terms.values()))
    assert (
        ModelSpec.paper().min_size[-1] == 800 and ModelSpec.paper().box_detections_per_img == 300
    )


def test_mask_probs_equal_torchvision_inference() -> None:
    logits = torch.randn(5, C + 1, 4, 4, generator=torch.Generator().manual_seed(0))
    labels = [torch.tensor([1, 3]), torch.tensor([], dtype=torch.long), torch.tensor([2, 2, 1])]
    ours = mask_probs(logits, labels)
    ref = maskrcnn_inference(logits, labels)
    assert [t.shape for t in ours] == [t.shape for t in ref]
    assert all(torch.equal(a, b) for a, b in zip(ours, ref, strict=True))


def test_own_class_mask_logits_equal_the_predictors_channel() -> None:
    torch.manual_seed(0)
    pred = MaskRCNNPredictor(8, 8, C + 1)
    feats = torch.randn(5, 8, 7, 7)
    labels = [torch.tensor([1, 3]), torch.tensor([], dtype=torch.long), torch.tensor([2, 2, 1])]
    own = own_class_mask_logits(pred, feats, labels)
    assert own is not None and own.shape == (5, 1, 14, 14)
    full = pred(feats)[torch.arange(5), torch.cat(labels)]
    torch.testing.assert_close(own[:, 0], full, atol=1e-5, rtol=1e-5)
    assert own_class_mask_logits(nn.Identity(), feats, labels) is None  # others: the full path


def test_mask_inference_equals_the_full_predictors(monkeypatch: pytest.MonkeyPatch) -> None:
    model = build_detector(tiny(), loss_for("ce"), C).eval()
    images, _ = make_batch(n_images=2)
    with torch.no_grad():
        fast = model(images)
    monkeypatch.setattr(roi_heads, "own_class_mask_logits", lambda *args: None)
    with torch.no_grad():
        full = model(images)
    for a, b in zip(fast, full, strict=True):
        assert len(a["labels"]) > 0 and torch.equal(a["labels"], b["labels"])
        torch.testing.assert_close(a["masks"], b["masks"], atol=1e-5, rtol=0)


def test_box_only_inference_skips_masks() -> None:
    model = build_detector(tiny(), RecordingCE(num_classes=C), C).eval()
    images, _ = make_batch(n_images=1)
    model.roi_heads.infer_masks = False
    with torch.no_grad():
        assert "masks" not in model(images)[0]


@pytest.mark.parametrize("box_loss", ["smooth_l1", "giou"])
def test_batch_with_an_unannotated_image_and_no_positives(box_loss: str) -> None:
    torch.manual_seed(0)
    model = build_detector(tiny(box_loss=box_loss), RecordingCE(num_classes=C), C).train()
    images, targets = make_batch(n_images=2)
    empty = {
        "boxes": torch.zeros(0, 4),
        "labels": torch.zeros(0, dtype=torch.long),
        "masks": torch.zeros(0, SIZE, SIZE, dtype=torch.uint8),
    }
    terms = model(images, [targets[0], empty])
    assert all(torch.isfinite(v) for v in terms.values())
    gt = model.roi_heads.cls_loss.seen["gt_index"]
    assert gt.max() <= 1  # only image 0's two objects can be matched
    terms = model(images[1:], [empty])  # no foreground RoI in the whole batch
    assert terms["loss_box_reg"].item() == 0.0 and terms["loss_mask"].item() == 0.0
