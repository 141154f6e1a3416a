"""C2AM loss (Eq. 5-7): hand-computed values, reductions, gradients."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ltmodels.errors import ConfigError
from ltmodels.losses import LOSSES, build_loss
from ltmodels.losses.c2am import C2AMLoss, c2am_margins

BIG = math.exp(math.pi**2 / 3)  # alpha / pi * log(BIG / 1) = pi / 6 for alpha = 0.5


def _hand_case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two RoIs, C = 2 (K = 3), weight norms [BIG, BIG, 1]."""
    cos = torch.tensor([[0.0, 0.5, 0.5], [0.5, 0.5, 0.0]])
    labels = torch.tensor([1, 0])
    weight = torch.tensor([[BIG, 0.0], [0.0, BIG], [1.0, 0.0]])
    return cos, labels, weight


def test_hand_computed_value() -> None:
    """alpha = 0.5, s = 2, norms ||W|| = [e^{pi^2/3}, e^{pi^2/3}, 1]:
    m_12 = m_02 = 0.5 / pi * pi^2 / 3 = pi / 6, every other margin is 0.

    RoI 1 (label 1), cos = [0, 1/2, 1/2]: column 2 becomes cos(pi/3 + pi/6) = 0, so
    s * z = [0, 1, 0] and the loss is -log(e / (e + 2)) = log(1 + 2 / e).
    RoI 0 (label 0), cos = [1/2, 1/2, 0]: column 2 becomes cos(pi/2 + pi/6) = -1/2, so
    s * z = [1, 1, -1] and the loss is -log(e / (2e + e^-1)) = log(2 + e^-2).
    The loss is the mean of the two.
    """
    cos, labels, weight = _hand_case()
    loss = build_loss("c2am", num_classes=2, s=2.0, alpha=0.5)
    out = loss(cos, labels, weight=weight)
    expected = (math.log(1 + 2 / math.e) + math.log(2 + math.exp(-2))) / 2
    assert set(out) == {"loss_cls"}
    assert out["loss_cls"].item() == pytest.approx(expected, rel=1e-5)


def test_hand_computed_without_background_margin() -> None:
    """As above, but m_02 = 0: RoI 0 keeps s * z = [1, 1, 0], loss log(2 + e^-1)."""
    cos, labels, weight = _hand_case()
    loss = build_loss("c2am", num_classes=2, s=2.0, alpha=0.5, background_margin=False)
    expected = (math.log(1 + 2 / math.e) + math.log(2 + math.exp(-1))) / 2
    assert loss(cos, labels, weight=weight)["loss_cls"].item() == pytest.approx(expected, 1e-5)


def test_fixed_margin_hand_computed() -> None:
    """margin = fixed, m = pi/6 on every non-target column, s = 2.

    RoI 1, cos = [0, 1/2, 1/2]: cos(pi/2 + pi/6) = -1/2, cos(pi/3 + pi/6) = 0 ->
    s * z = [-1, 1, 0], loss -log(e / (e^-1 + e + 1)) = log(1 + e^-1 + e^-2).
    """
    loss = build_loss("c2am", num_classes=2, s=2.0, margin="fixed", fixed_margin=math.pi / 6)
    cos = torch.tensor([[0.0, 0.5, 0.5]])
    expected = math.log(1 + math.exp(-1) + math.exp(-2))
    out = loss(cos, torch.tensor([1]))  # fixed margins need no weight
    assert out["loss_cls"].item() == pytest.approx(expected, rel=1e-5)


def test_alpha_zero_is_cosine_softmax() -> None:
    """Eq. 6 with alpha = 0 is exactly Eq. 5: cross-entropy of s * cos."""
    g = torch.Generator().manual_seed(0)
    cos = torch.rand(16, 6, generator=g) * 2 - 1
    labels = torch.randint(0, 6, (16,), generator=g)
    weight = torch.randn(6, 8, generator=g) * torch.arange(1, 7)[:, None]
    loss = build_loss("c2am", num_classes=5, s=30.0, alpha=0.0)
    got = loss(cos, labels, weight=weight)["loss_cls"]
    assert torch.equal(got, F.cross_entropy(30.0 * cos, labels))


def test_margins_eq7() -> None:
    """m_ij = max(0, alpha/pi log(|W_i|/|W_j|)): norms [1, e^pi, 1] with alpha = 1 give
    m_10 = m_12 = 1 and zero elsewhere."""
    w = torch.tensor([[1.0, 0.0], [0.0, math.exp(math.pi)], [0.0, -1.0]])
    m = c2am_margins(w, alpha=1.0)
    expected = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(m, expected)
    assert c2am_margins(w, alpha=1.0, background_margin=False)[1, 0] == 0.0


def test_margin_never_raises_a_logit() -> None:
    """theta_j + m is capped at pi: with cos_j = -0.999 and m = 0.3, uncapped cos(theta+m)
    would be -0.968 > -0.999 and the loss would exceed the plain cosine softmax."""
    cos = torch.tensor([[-0.999, 0.1]])
    labels = torch.tensor([1])
    loss = build_loss("c2am", num_classes=1, s=5.0, margin="fixed", fixed_margin=0.3)
    plain = F.cross_entropy(5.0 * cos, labels)
    with_margin = loss(cos, labels)["loss_cls"]
    assert with_margin <= plain
    # Row by row the margin can only lower non-target logits, so the loss never increases.
    g = torch.Generator().manual_seed(1)
    cos = torch.rand(64, 5, generator=g) * 2 - 1
    labels = torch.randint(0, 5, (64,), generator=g)
    weight = torch.randn(5, 4, generator=g) * torch.rand(5, 1, generator=g) * 10
    adaptive = build_loss("c2am", num_classes=4, alpha=2.0)
    assert adaptive(cos, labels, weight=weight)["loss_cls"] <= F.cross_entropy(30 * cos, labels)


def test_gradcheck_float64() -> None:
    g = torch.Generator().manual_seed(2)
    cos = (torch.rand(6, 4, generator=g, dtype=torch.float64) * 1.8 - 0.9).requires_grad_()
    labels = torch.tensor([0, 1, 2, 3, 1, 0])
    weight = torch.randn(4, 3, generator=g, dtype=torch.float64) * torch.tensor(
        [[1.0], [3.0], [0.5], [2.0]], dtype=torch.float64
    )
    loss = C2AMLoss(num_classes=3, s=5.0, alpha=0.7)
    assert torch.autograd.gradcheck(
        lambda x: loss(x, labels, weight=weight)["loss_cls"], (cos,), eps=1e-6, atol=1e-5
    )


def test_margins_detached_and_finite_at_unit_cosines() -> None:
    cos = torch.tensor([[1.0, -1.0, 1.0], [-1.0, 1.0, -1.0]], requires_grad=True)
    weight = torch.tensor([[3.0, 0.0], [0.0, 1.0], [0.1, 0.1]], requires_grad=True)
    out = build_loss("c2am", num_classes=2)(cos, torch.tensor([0, 1]), weight=weight)
    out["loss_cls"].backward()
    assert torch.isfinite(out["loss_cls"])
    assert cos.grad is not None and torch.isfinite(cos.grad).all()
    assert weight.grad is None  # Sec. 3.2: margins use detached norms


def test_scores_and_width() -> None:
    loss = build_loss("c2am", num_classes=3, s=10.0)
    cos = torch.tensor([[0.5, 0.1, -0.2, 0.3]])
    expected = torch.softmax(10.0 * cos, dim=1)[:, 1:]
    torch.testing.assert_close(loss.scores(cos), expected)
    assert C2AMLoss.num_logits(3) == 4 and loss.predictor == "cosine"


def test_adaptive_needs_weight_and_empty_batch() -> None:
    loss = build_loss("c2am", num_classes=2)
    with pytest.raises(ValueError, match="weight"):
        loss(torch.zeros(1, 3), torch.tensor([1]))
    empty = torch.zeros(0, 3, requires_grad=True)
    out = loss(empty, torch.zeros(0, dtype=torch.long), weight=torch.ones(3, 2))
    assert out["loss_cls"].item() == 0.0
    out["loss_cls"].backward()


def test_params_match_constructor_and_domains() -> None:
    cls = LOSSES["c2am"]
    loss = build_loss("c2am", num_classes=4)
    for name, p in cls.params.items():
        assert getattr(loss, name) == p.default
    with pytest.raises(ConfigError):
        build_loss("c2am", num_classes=4, alpha=-0.1)
    with pytest.raises(ConfigError):
        build_loss("c2am", num_classes=4, margin="cosface")
