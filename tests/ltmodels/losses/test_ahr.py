"""AHR loss (AHRL Eq. 3-14): clusters, coarse targets, margins, hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ltmodels.errors import ConfigError
from ltmodels.losses import LOSSES, build_loss
from ltmodels.losses.ahr import AHRLoss, adaptive_margins, kmeans_clusters

S3 = math.sqrt(3.0)
# Normalised class weights at 0, 60 and 180 degrees: K-Means (n = 2) groups {0, 1} | {2}.
W = torch.tensor([[2.0, 0.0], [0.5, S3 / 2], [-3.0, 0.0]])


def _sp(x: float) -> float:
    """softplus(x) = -log(sigmoid(-x)) = BCE of logit -x against target 1."""
    return math.log1p(math.exp(x))


def _hand_loss(**kw: object) -> AHRLoss:
    loss = build_loss(
        "ahr", num_classes=3, num_clusters=2, lambda_m=2.0, lambda_c=2.0, lambda_p=2 * S3, **kw
    )
    assert isinstance(loss, AHRLoss)
    loss.fit_clusters(W)
    return loss


COS = torch.tensor([[0.5, 0.0, 0.0], [0.0, 0.0, 0.0]])
LABELS = torch.tensor([1, 0])


def test_hand_computed_value() -> None:
    """Clusters {col 0, col 1} and {col 2}; lambda_m = 2, lambda_c = 2, lambda_p = 2 sqrt(3).

    Margins (Eq. 10-12): M[0, 1] = M[1, 0] = 2 * max(0, cos 60deg) = 1, all others 0.
    RoI 0 (label 1 = col 0), cos = [1/2, 0, 0]: fine logits 2 * cos + M[0] = [1, 1, 0],
    target [1, 0, 0]: fine = sp(-1) + sp(1) + log 2 (sp = softplus).
    Prototype norms ||w0 + w1|| = ||(3/2, sqrt3/2)|| = sqrt3 and 1, so the coarse logits
    are 2 sqrt3 * [(1/2 + 0) / sqrt3, 0 / 1] = [1, 0], target [1, 0]: coarse = sp(-1) + log 2.
    RoI 1 (background), cos = 0: fine = 3 log 2, coarse = 2 log 2 (all targets 0).
    normalization = num_rois divides each sum by N = 2; lambda = 1.
    """
    out = _hand_loss(eql=False)(COS, LABELS, weight=W)
    fine = (_sp(-1) + _sp(1) + math.log(2) + 3 * math.log(2)) / 2
    coarse = (_sp(-1) + math.log(2) + 2 * math.log(2)) / 2
    assert set(out) == {"loss_fine", "loss_coarse"}
    assert out["loss_fine"].item() == pytest.approx(fine, rel=1e-5)
    assert out["loss_coarse"].item() == pytest.approx(coarse, rel=1e-5)


def test_hand_computed_num_elements_and_lambda() -> None:
    """Same sums as above divided by N * C = 6 and N * n = 4; lambda = 0.5 scales coarse."""
    out = _hand_loss(eql=False, normalization="num_elements", lambda_=0.5)(COS, LABELS, weight=W)
    fine = (_sp(-1) + _sp(1) + 4 * math.log(2)) / 6
    coarse = 0.5 * (_sp(-1) + 3 * math.log(2)) / 4
    assert out["loss_fine"].item() == pytest.approx(fine, rel=1e-5)
    assert out["loss_coarse"].item() == pytest.approx(coarse, rel=1e-5)


def test_hand_computed_eq13() -> None:
    """Col 1 is a tail class (f = 1/1000 < 1.76e-3); cols 0 and 2 are not.

    text (EQL): the foreground RoI drops its col-1 negative (weight 1 - 1 * 1 = 0):
        fine = (sp(-1) + log 2 + 3 log 2) / 2; background RoIs keep every negative.
    printed: negatives weighted by E(r) T(f): RoI 0 keeps only col 1, the background RoI
        keeps nothing: fine = (sp(-1) + sp(1)) / 2. The coarse term is unchanged.
    """
    counts, num_images = torch.tensor([500, 1, 300]), 1000
    text = _hand_loss()
    text.set_class_stats(counts, num_images)
    printed = _hand_loss(eq13="printed")
    printed.set_class_stats(counts, num_images)
    got_text = text(COS, LABELS, weight=W)["loss_fine"].item()
    got_printed = printed(COS, LABELS, weight=W)["loss_fine"].item()
    assert got_text == pytest.approx((_sp(-1) + 4 * math.log(2)) / 2, rel=1e-5)
    assert got_printed == pytest.approx((_sp(-1) + _sp(1)) / 2, rel=1e-5)


def test_clusters_deterministic_for_a_seed() -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(40, 8, generator=g)
    a = kmeans_clusters(w, 6, seed=3)
    b = kmeans_clusters(w.clone(), 6, seed=3)
    assert torch.equal(a, b)
    assert a[0] == 0 and set(a.tolist()) == set(range(6))  # relabelled by first appearance
    # Normalised first (Sec. 3.3): rescaling a class weight does not move it.
    scaled = w * torch.rand(40, 1, generator=g).add(0.1) * 10
    assert torch.equal(kmeans_clusters(scaled, 6, seed=3), a)


def test_fit_clusters_groups_by_direction() -> None:
    loss = _hand_loss(eql=False)
    assert loss.cluster.tolist() == [0, 0, 1]
    assert bool(loss.fitted)


def test_coarse_labels() -> None:
    loss = build_loss("ahr", num_classes=5, num_clusters=3, eql=False)
    assert isinstance(loss, AHRLoss)
    loss.cluster.copy_(torch.tensor([0, 1, 0, 2, 1]))
    got = loss.coarse_targets(torch.tensor([0, 1, 2, 3, 4, 5]))
    expected = torch.tensor(
        [[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 1], [0, 1, 0]], dtype=got.dtype
    )
    assert torch.equal(got, expected)


def test_margins_from_pairwise_cosine() -> None:
    """M[i, j] = lambda_m * max(0, cos(w_i, w_j)) inside a cluster, 0 elsewhere."""
    g = torch.Generator().manual_seed(1)
    w = torch.randn(6, 4, generator=g) * torch.rand(6, 1, generator=g).add(0.5)
    cluster = torch.tensor([0, 0, 1, 1, 0, 2])
    m = adaptive_margins(w, cluster, lambda_m=1.5)
    sim = F.cosine_similarity(w[:, None], w[None, :], dim=2)
    for i in range(6):
        for j in range(6):
            same = i != j and cluster[i] == cluster[j]
            expected = 1.5 * max(0.0, sim[i, j].item()) if same else 0.0
            assert m[i, j].item() == pytest.approx(expected, abs=1e-6)


def test_margins_follow_the_current_weight() -> None:
    """M is recomputed every step (Sec. 3.3): moving w_1 onto w_0 raises M[0, 1] to 2."""
    loss = _hand_loss(eql=False)
    moved = W.clone()
    moved[1] = torch.tensor([1.0, 0.0])
    base = loss(COS, LABELS, weight=W)["loss_fine"]
    after = loss(COS, LABELS, weight=moved)["loss_fine"]
    expected = (_sp(-1) + _sp(2) + 4 * math.log(2)) / 2  # col-1 logit 0 + M = 2
    assert after.item() == pytest.approx(expected, rel=1e-5) and after > base
    assert loss.cluster.tolist() == [0, 0, 1]  # the hierarchy itself stays fixed


def test_coarse_logits_equal_eq6_from_features() -> None:
    """Eq. 6 with the prototypes of Eq. 3 (mean of normalised weights), from features."""
    g = torch.Generator().manual_seed(2)
    x, w = torch.randn(7, 5, generator=g), torch.randn(4, 5, generator=g)
    loss = build_loss("ahr", num_classes=4, num_clusters=2, lambda_p=20.0, eql=False)
    assert isinstance(loss, AHRLoss)
    loss.cluster.copy_(torch.tensor([1, 0, 1, 1]))
    wn = F.normalize(w, dim=1)
    cos = F.normalize(x, dim=1) @ wn.T
    protos = torch.stack([wn[[1]].mean(0), wn[[0, 2, 3]].mean(0)])
    literal = 20.0 * F.normalize(x, dim=1) @ F.normalize(protos, dim=1).T
    torch.testing.assert_close(loss.coarse_logits(cos, w), literal)


def test_gradcheck_float64() -> None:
    g = torch.Generator().manual_seed(3)
    cos = (torch.rand(5, 4, generator=g, dtype=torch.float64) * 1.8 - 0.9).requires_grad_()
    w = torch.randn(4, 3, generator=g, dtype=torch.float64).requires_grad_()
    labels = torch.tensor([0, 1, 2, 3, 4])
    for margin_grad in (False, True):
        loss = AHRLoss(num_classes=4, num_clusters=2, lambda_c=3.0, lambda_p=3.0, eql=False,
                       margin_grad=margin_grad)  # fmt: skip
        loss.fit_clusters(w.detach())

        def total(c: torch.Tensor, weight: torch.Tensor, loss: AHRLoss = loss) -> torch.Tensor:
            return sum(loss(c, labels, weight=weight).values())  # type: ignore[return-value]

        # Detached margins make the weight's analytic gradient differ from finite
        # differences, so the weight is checked only when margins carry gradient.
        inputs = (cos, w) if margin_grad else (cos,)
        fn = total if margin_grad else (lambda c: total(c, w.detach()))
        assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5)


def test_detached_margins_give_weight_no_gradient() -> None:
    """lambda = 0 removes the coarse term; with detached margins the fine loss alone
    sends no gradient to the weight (it only sees the cosines)."""
    w = W.clone().requires_grad_()
    for margin_grad, any_grad in ((False, False), (True, True)):
        w.grad = None
        loss = _hand_loss(eql=False, lambda_=0.0, margin_grad=margin_grad)
        sum(loss(COS, LABELS, weight=w).values()).backward()  # type: ignore[union-attr]
        assert w.grad is not None and bool(w.grad.abs().sum() > 0) == any_grad


def test_fallback_fits_on_first_forward() -> None:
    loss = build_loss("ahr", num_classes=3, num_clusters=2, eql=False)
    assert isinstance(loss, AHRLoss) and not bool(loss.fitted)
    loss(COS, LABELS, weight=W)
    assert bool(loss.fitted) and torch.equal(loss.cluster, kmeans_clusters(W, 2, seed=0))
    loss(COS, LABELS, weight=torch.tensor([[1.0, 0.0], [-1.0, 0.0], [-1.0, 0.1]]))
    assert loss.cluster.tolist() == [0, 0, 1]  # fitted once, not refitted


def test_state_round_trip() -> None:
    a = _hand_loss()
    a.set_class_stats(torch.tensor([5, 1, 3]), 10)
    b = build_loss(
        "ahr", num_classes=3, num_clusters=2, lambda_m=2.0, lambda_c=2.0, lambda_p=2 * S3
    )
    assert not bool(b.fitted)
    b.load_state_dict(a.state_dict())
    assert set(a.state_dict()) == {"cluster", "fitted", "image_freq"}
    assert torch.equal(b.cluster, a.cluster) and bool(b.fitted)
    torch.testing.assert_close(b(COS, LABELS, weight=W), a(COS, LABELS, weight=W))


def test_errors() -> None:
    with pytest.raises(ConfigError, match="more clusters than the 3 classes"):
        build_loss("ahr", num_classes=3, num_clusters=4)
    with pytest.raises(ConfigError):
        build_loss("ahr", num_classes=3, num_clusters=2, lambda_m=-1.0)
    eql = build_loss("ahr", num_classes=3, num_clusters=2)
    with pytest.raises(RuntimeError, match="set_class_stats"):
        eql(COS, LABELS, weight=W)
    with pytest.raises(ValueError, match="weight"):
        build_loss("ahr", num_classes=3, num_clusters=2, eql=False)(COS, LABELS)


def test_scores_width_and_params() -> None:
    loss = build_loss("ahr", num_classes=3, num_clusters=2, lambda_c=10.0)
    torch.testing.assert_close(loss.scores(COS), torch.sigmoid(10.0 * COS))
    assert AHRLoss.num_logits(3) == 3 and loss.predictor == "cosine"
    default = AHRLoss(num_classes=300)
    for name, p in LOSSES["ahr"].params.items():
        assert getattr(default, name) == p.default


def test_default_cluster_count_follows_table3_ratio() -> None:
    """num_clusters = 0: round(C * 200 / 1230), at least 1; an explicit value is kept."""
    assert AHRLoss(num_classes=1230).n_clusters == 200
    assert AHRLoss(num_classes=1203).n_clusters == 196
    assert AHRLoss(num_classes=6).n_clusters == 1
    assert AHRLoss(num_classes=6, num_clusters=4).n_clusters == 4
