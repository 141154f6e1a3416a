"""Hand-computed values and gradient checks for the baseline losses: ce, bce, eql, eqlv2,
seesaw. Each test's docstring holds the arithmetic."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from ltmodels.losses import LongTailLoss, build_loss

LOG2 = math.log(2.0)


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_ce_value() -> None:
    """C = 2, K = 3. RoI 0: logits 0 everywhere, label 0 -> -log(1/3) = log 3.
    RoI 1: logits (log 2, 0, 0), label 1 -> softmax (1/2, 1/4, 1/4) -> -log(1/4) = log 4.
    Mean over RoIs: (log 3 + log 4) / 2 = log(12) / 2."""
    loss = build_loss("ce", num_classes=2)
    logits = torch.tensor([[0.0, 0.0, 0.0], [LOG2, 0.0, 0.0]])
    out = loss(logits, torch.tensor([0, 1]))
    assert out["loss_cls"].item() == pytest.approx(math.log(12.0) / 2, rel=1e-6)
    assert torch.allclose(loss.scores(logits), torch.tensor([[1 / 3, 1 / 3], [0.25, 0.25]]))


def test_bce_value_sums_classes_and_averages_rois() -> None:
    """C = 2, K = 3, all logits 0: every entry's BCE is log 2 whatever its target.
    Two RoIs (labels 0 and 2): (3 + 3) log 2 summed over classes, / 2 RoIs = 3 log 2
    (a mean over all N * K entries would give log 2). Scores are sigmoid(0) = 1/2."""
    loss = build_loss("bce", num_classes=2)
    logits = torch.zeros(2, 3, requires_grad=True)
    out = loss(logits, torch.tensor([0, 2]))
    assert out["loss_cls"].item() == pytest.approx(3 * LOG2, rel=1e-6)
    out["loss_cls"].backward()
    # d/dz BCE = (sigmoid(z) - y) / N: +1/4 for negatives, -1/4 for the target column.
    expected = torch.tensor([[-0.25, 0.25, 0.25], [0.25, 0.25, -0.25]])
    assert torch.allclose(logits.grad, expected)
    assert torch.allclose(loss.scores(logits), torch.full((2, 2), 0.5))


def test_eql_value_ignores_rare_negatives_of_foreground_rois() -> None:
    """C = 3, K = 3 (no background column), 1000 images with class image counts
    (1, 10, 500): f = (0.001, 0.01, 0.5); only class 1 is below lambda = 1.76e-3.
    All logits 0, so every BCE entry is log 2; the weights are:
    RoI label 2 (fg): column of class 1 is a rare negative -> 0; others 1 -> 2 log 2.
    RoI label 0 (bg): E(r) = 0, every weight 1 -> 3 log 2.
    RoI label 1 (fg, the rare class itself): its own column is positive -> 1; 3 log 2.
    Sum over classes, mean over RoIs: (2 + 3 + 3) log 2 / 3."""
    loss = build_loss("eql", num_classes=3)
    loss.set_class_stats(torch.tensor([1, 10, 500]), 1000)
    logits = torch.zeros(3, 3, requires_grad=True)
    out = loss(logits, torch.tensor([2, 0, 1]))
    assert out["loss_cls"].item() == pytest.approx(8 / 3 * LOG2, rel=1e-6)
    out["loss_cls"].backward()
    assert logits.grad[0, 0] == 0  # rare negative of a foreground RoI: no gradient
    assert logits.grad[1, 0] > 0  # ... but background RoIs still suppress it
    assert logits.grad[2, 0] < 0  # and its own positives train it


def test_eql_lambda_zero_is_bce_without_background_column() -> None:
    """With lambda = 0 no class is rare, so EQL equals plain BCE over the C columns."""
    loss = build_loss("eql", num_classes=3, lambda_=0.0)
    loss.set_class_stats(torch.tensor([1, 10, 500]), 1000)
    logits = torch.randn(5, 3)
    labels = torch.tensor([0, 1, 2, 3, 0])
    target = F.one_hot(labels, 4)[:, 1:].float()
    expected = F.binary_cross_entropy_with_logits(logits, target, reduction="sum") / 5
    assert torch.allclose(loss(logits, labels)["loss_cls"], expected)


def test_eql_requires_class_stats() -> None:
    loss = build_loss("eql", num_classes=3)
    with pytest.raises(RuntimeError, match="set_class_stats"):
        loss(torch.zeros(2, 3), torch.tensor([0, 1]))
    with pytest.raises(ValueError):
        loss.set_class_stats(torch.tensor([1, 2]), 10)  # wrong length


def test_eqlv2_values_over_two_iterations() -> None:
    """C = 2, K = 3 (column 0 objectness), logits all 0, labels (1, 0), twice.

    Iteration 1: all weights 1 -> loss = 6 log 2 / 2 = 3 log 2. Gradient magnitudes
    |sigmoid(0) - y| = 1/2 everywhere. Class 1: positive from RoI 0 (1/2), negative from
    RoI 1 (1/2). Class 2: two negatives (1). So pos_grad = (1/2, 0), neg_grad = (1/2, 1),
    g = (1, 0).
    Iteration 2: r_1 = sigmoid(12 (1 - 0.8)) = sigmoid(2.4), q_1 = 1 + 4 (1 - r_1);
    r_2 = sigmoid(-9.6), q_2 unused (no positive of class 2). Weights per RoI:
    RoI 0 (label 1): objectness 1, q_1, r_2; RoI 1 (bg): objectness 1, r_1, r_2.
    loss = log 2 (2 + q_1 + r_1 + 2 r_2) / 2. Statistics then add 1/2 x weight:
    pos_grad = (1/2 + q_1/2, 0), neg_grad = (1/2 + r_1/2, 1 + r_2)."""
    loss = build_loss("eqlv2", num_classes=2)
    logits = torch.zeros(2, 3)
    labels = torch.tensor([1, 0])
    first = loss(logits, labels)["loss_cls"].item()
    assert first == pytest.approx(3 * LOG2, rel=1e-6)
    assert torch.allclose(loss.pos_grad, torch.tensor([0.5, 0.0]))
    assert torch.allclose(loss.neg_grad, torch.tensor([0.5, 1.0]))
    r1, r2 = _sigmoid(12 * 0.2), _sigmoid(-12 * 0.8)
    q1 = 1 + 4 * (1 - r1)
    second = loss(logits, labels)["loss_cls"].item()
    assert second == pytest.approx(LOG2 * (2 + q1 + r1 + 2 * r2) / 2, rel=1e-6)
    assert torch.allclose(loss.pos_grad, torch.tensor([0.5 + q1 / 2, 0.0]))
    assert torch.allclose(loss.neg_grad, torch.tensor([0.5 + r1 / 2, 1 + r2]))
    assert int(loss.num_updates) == 2


def test_eqlv2_first_iteration_weights_are_one_for_any_gamma() -> None:
    loss = build_loss("eqlv2", num_classes=4, gamma=0.5)
    pos_w, neg_w = loss.class_weights()
    assert torch.equal(pos_w, torch.ones(5)) and torch.equal(neg_w, torch.ones(5))


def test_eqlv2_eval_mode_keeps_statistics_and_scores_use_objectness() -> None:
    """Scores: sigmoid(z_j) * (1 - sigmoid(z_0)); z = 0 gives 1/2 * 1/2 = 1/4."""
    loss = build_loss("eqlv2", num_classes=2).eval()
    loss(torch.randn(4, 3), torch.tensor([0, 1, 2, 0]))
    assert int(loss.num_updates) == 0 and loss.pos_grad.sum() == 0
    assert torch.allclose(loss.scores(torch.zeros(1, 3)), torch.full((1, 2), 0.25))


def test_seesaw_mitigation_value() -> None:
    """C = 3, K = 5 (column 0 background objectness, 1..3 classes, 4 object objectness).
    Counts before the batch (10, 1, 0); the batch has one RoI of label 1 and one background,
    so counts become (11, 1, 0), clamped to (11, 1, 1) in the ratio. Class logits all 0:
    softmax 1/3 each, no compensation (ratios 1). Mitigation for class 1 (N = 11) against
    classes 2, 3: (1/11)^0.8 each. Class term: -log(1 / (1 + 2 * 11^-0.8)) / N with N = 2
    RoIs. Objectness logits 0: log 2 per RoI, 2 log 2 / 2 = log 2."""
    loss = build_loss("seesaw", num_classes=3)
    loss.cum_samples.copy_(torch.tensor([10, 1, 0]))
    out = loss(torch.zeros(2, 5), torch.tensor([1, 0]))
    assert torch.equal(loss.cum_samples, torch.tensor([11, 1, 0]))
    expected = math.log(1 + 2 * 11**-0.8) / 2
    assert out["loss_cls_classes"].item() == pytest.approx(expected, rel=1e-6)
    assert out["loss_cls_objectness"].item() == pytest.approx(LOG2, rel=1e-6)


def test_seesaw_compensation_value() -> None:
    """Counts equal after the update (5, 5, 5): no mitigation. One RoI of label 1 with
    class logits (0, log 2, 0): softmax (1/4, 1/2, 1/4); class 2 scores twice the own
    class, so C_12 = 2^2 = 4; class 3 ties (ratio 1, no factor). Seesaw probability
    1 / (1 + 4 * 2 + 1) = 1/10 -> class term log 10 (N = 1). Objectness: z_0 = 0,
    z_4 = log 3 -> p(object) = 3/4 -> -log(3/4) for a foreground RoI."""
    loss = build_loss("seesaw", num_classes=3)
    loss.cum_samples.copy_(torch.tensor([4, 5, 5]))
    logits = torch.tensor([[0.0, 0.0, LOG2, 0.0, math.log(3.0)]])
    out = loss(logits, torch.tensor([1]))
    assert out["loss_cls_classes"].item() == pytest.approx(math.log(10.0), rel=1e-6)
    assert out["loss_cls_objectness"].item() == pytest.approx(-math.log(0.75), rel=1e-6)
    # scores: class softmax x p(object) = (1/4, 1/2, 1/4) * 3/4
    expected = torch.tensor([[0.25, 0.5, 0.25]]) * 0.75
    assert torch.allclose(loss.scores(logits), expected)


def test_seesaw_without_foreground_trains_objectness_only() -> None:
    loss = build_loss("seesaw", num_classes=3)
    logits = torch.randn(4, 5, requires_grad=True)
    out = loss(logits, torch.zeros(4, dtype=torch.long))
    assert out["loss_cls_classes"].item() == 0.0
    out["loss_cls_objectness"].backward()
    assert (logits.grad[:, 1:4] == 0).all() and (logits.grad[:, [0, 4]] != 0).all()
    assert loss.cum_samples.sum() == 0


def test_bce_and_eql_match_the_explicit_weighted_bce() -> None:
    """The softplus/mat-vec forms equal weighted BCE on explicit one-hot targets
    (the released EQL code's form) on random batches."""
    torch.manual_seed(0)
    c = 7
    counts = torch.tensor([1, 2, 5, 30, 80, 400, 900])
    eql = build_loss("eql", num_classes=c)
    eql.set_class_stats(counts, 1000)
    bce = build_loss("bce", num_classes=c)
    for _ in range(3):
        labels = torch.randint(0, c + 1, (20,))
        z = torch.randn(20, c + 1) * 3
        target = F.one_hot(labels, c + 1).float()
        ref_bce = F.binary_cross_entropy_with_logits(z, target, reduction="sum") / 20
        assert torch.allclose(bce(z, labels)["loss_cls"], ref_bce, rtol=1e-5)
        zc, tc = z[:, 1:], target[:, 1:]
        e = (labels > 0).float()[:, None]
        t = (counts / 1000 < 1.76e-3).float()[None, :]
        w = 1 - e * t * (1 - tc)
        ref_eql = (F.binary_cross_entropy_with_logits(zc, tc, reduction="none") * w).sum() / 20
        assert torch.allclose(eql(zc, labels)["loss_cls"], ref_eql, rtol=1e-5)


def test_eqlv2_matches_the_reference_formulation() -> None:
    """Three iterations against MMDetection's EQLv2 written out directly (objectness column
    moved to index 0): pos_neg = pos_grad / (neg_grad + 1e-10) starting at 100, weighted
    BCE with explicit [N, K] weights, statistics from |sigmoid - y| * weight."""
    torch.manual_seed(0)
    c, gamma, mu, alpha = 6, 12.0, 0.8, 4.0
    loss = build_loss("eqlv2", num_classes=c)
    pos_grad, neg_grad = torch.zeros(c), torch.zeros(c)
    pos_neg = torch.full((c,), 100.0)
    for _ in range(3):
        labels = torch.randint(0, c + 1, (30,))
        z = torch.randn(30, c + 1) * 2
        target = F.one_hot(labels, c + 1).float()
        neg_w = torch.cat([torch.ones(1), 1 / (1 + torch.exp(-gamma * (pos_neg - mu)))])
        pos_w = 1 + alpha * (1 - neg_w)
        weight = pos_w * target + neg_w * (1 - target)
        bce = F.binary_cross_entropy_with_logits(z, target, reduction="none")
        expected = (bce * weight).sum() / 30
        grad = (torch.sigmoid(z) - target).abs()
        pos_grad += (grad * target * weight).sum(0)[1:]
        neg_grad += (grad * (1 - target) * weight).sum(0)[1:]
        pos_neg = pos_grad / (neg_grad + 1e-10)
        assert torch.allclose(loss(z, labels)["loss_cls"], expected, rtol=1e-5)
        assert torch.allclose(loss.pos_grad, pos_grad, rtol=1e-5)
        assert torch.allclose(loss.neg_grad, neg_grad, rtol=1e-5)


def test_seesaw_matches_the_reference_formulation() -> None:
    """Random batches against MMDetection's seesaw_ce_loss written out with its [C, C]
    sample-ratio matrix, with the objectness pair moved to columns 0 and C + 1."""
    torch.manual_seed(0)
    c, p, q, eps = 6, 0.8, 2.0, 1e-2
    loss = build_loss("seesaw", num_classes=c)
    cum = torch.zeros(c)
    for _ in range(3):
        labels = torch.randint(0, c + 1, (25,))
        labels[:10] = torch.randint(1, 3, (10,))  # frequent classes 1-2, so mitigation acts
        z = torch.randn(25, c + 2) * 2
        cum += torch.bincount(labels, minlength=c + 1)[1:].float()
        pos = labels > 0
        cls, y = z[pos, 1 : c + 1], labels[pos] - 1
        ratio = cum[None, :].clamp(min=1) / cum[:, None].clamp(min=1)
        mitigation = torch.where(ratio < 1, ratio.pow(p), torch.ones_like(ratio))[y]
        sm = F.softmax(cls, dim=1)
        own = sm[torch.arange(len(y)), y][:, None].clamp(min=eps)
        comp = torch.where(sm / own > 1, (sm / own).pow(q), torch.ones_like(sm))
        onehot = F.one_hot(y, c)
        adjusted = cls + (mitigation * comp).log() * (1 - onehot)
        expected_cls = F.cross_entropy(adjusted, y, reduction="sum") / 25
        obj = torch.stack([z[:, c + 1], z[:, 0]], dim=1)  # the code's (object, background)
        expected_obj = F.cross_entropy(obj, (labels == 0).long(), reduction="sum") / 25
        out = loss(z, labels)
        assert torch.equal(loss.cum_samples.float(), cum)
        assert torch.allclose(out["loss_cls_classes"], expected_cls, rtol=1e-5)
        assert torch.allclose(out["loss_cls_objectness"], expected_obj, rtol=1e-5)


def _seesaw_eval() -> LongTailLoss:
    # q = 0: the compensation factor depends on the logits but is a constant for autograd
    # (detached, as in the paper and the code), so finite differences would see it.
    loss = build_loss("seesaw", num_classes=4, q=0.0)
    loss.cum_samples.copy_(torch.tensor([50, 7, 1, 0]))
    return loss.eval()


def _eqlv2_eval() -> LongTailLoss:
    loss = build_loss("eqlv2", num_classes=4)
    loss(torch.randn(6, 5), torch.tensor([0, 1, 2, 0, 4, 1]))  # non-trivial statistics
    return loss.eval()


def _eql() -> LongTailLoss:
    loss = build_loss("eql", num_classes=4)
    loss.set_class_stats(torch.tensor([1, 3, 40, 900]), 1000)
    return loss


@pytest.mark.parametrize(
    "make",
    [
        lambda: build_loss("ce", num_classes=4),
        lambda: build_loss("bce", num_classes=4),
        _eql,
        _eqlv2_eval,
        _seesaw_eval,
    ],
    ids=["ce", "bce", "eql", "eqlv2", "seesaw"],
)
def test_gradcheck_float64(make: Callable[[], LongTailLoss]) -> None:
    torch.manual_seed(0)
    loss = make()
    k = loss.num_logits(4)
    labels = torch.tensor([0, 1, 2, 0, 4, 3, 1])
    logits = torch.randn(len(labels), k, dtype=torch.float64, requires_grad=True)

    def f(z: torch.Tensor) -> torch.Tensor:
        return sum(loss(z, labels).values())

    assert f(logits).dtype == torch.float64  # float64 is not downcast
    assert torch.autograd.gradcheck(f, (logits,), eps=1e-6, atol=1e-7)
