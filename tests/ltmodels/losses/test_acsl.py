"""ACSL (ltmodels/losses/acsl.py): hand-computed values, the xi rule, background draws."""

from __future__ import annotations

import math

import pytest
import torch

from ltmodels.errors import ConfigError
from ltmodels.losses import build_loss
from ltmodels.losses.acsl import COMMON, FREQUENT, RARE, lvis_frequency_groups

LN2, LN3 = math.log(2.0), math.log(3.0)


def make(**params):
    loss = build_loss("acsl", num_classes=3, **params)
    loss.set_groups(torch.tensor([RARE, COMMON, FREQUENT]))
    return loss


def test_hand_computed_value_code_and_paper() -> None:
    """C = 3, xi = 0.5; columns (bg, c1, c2, c3); classes 1 rare, 2 common, 3 frequent.

    RoI A, label 2, z = (ln3, -ln3, 0, -ln3), p = (3/4, 1/4, 1/2, 1/4):
      code keeps bg (p 3/4 >= xi): -log(1 - 3/4) = ln4, and the target: -log(1/2) = ln2;
      c1, c3 have p < xi: dropped.                           A = 3 ln2 (paper: ln2).
    RoI B, background, z = (0, ln3, ln3, ln3): one background RoI, so floor(0.01) =
      floor(0.1) = 0 draws: only frequent c3 as negative, -log(1 - 3/4) = ln4, plus the
      bg target -log(1/2) = ln2 (code).                      B = 3 ln2 (paper: 2 ln2).
    Loss = (A + B) / 2: code 3 ln2, paper 1.5 ln2.
    """
    logits = torch.tensor([[LN3, -LN3, 0.0, -LN3], [0.0, LN3, LN3, LN3]])
    labels = torch.tensor([2, 0])
    code = make(xi=0.5)(logits, labels)["loss_cls"]
    paper = make(xi=0.5, background="paper")(logits, labels)["loss_cls"]
    assert code.item() == pytest.approx(3 * LN2, rel=1e-6)
    assert paper.item() == pytest.approx(1.5 * LN2, rel=1e-6)


def test_gradient_is_eq7() -> None:
    """dL/dz_i = (p_k - 1) at the target, w_i p_i elsewhere (Eq. 7), divided by N."""
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(6, 4, generator=g) * 2).requires_grad_()
    labels = torch.tensor([1, 2, 3, 3, 1, 2])
    loss = make(xi=0.3)
    loss(logits, labels)["loss_cls"].backward()
    p = torch.sigmoid(logits.detach())
    target = torch.nn.functional.one_hot(labels, 4).bool()
    w = (p >= 0.3) | target
    expected = torch.where(target, p - 1, w * p) / 6
    torch.testing.assert_close(logits.grad, expected)


def test_gradcheck_float64() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(12, 4, generator=g, dtype=torch.float64)
    # Keep p away from xi so that the 0/1 weights are locally constant.
    p = torch.sigmoid(logits)
    logits = torch.where((p - 0.6).abs() < 0.05, logits + 0.5, logits).requires_grad_()
    labels = torch.tensor([0, 0, 0, 0, 0, 1, 2, 3, 0, 1, 0, 0])
    loss = make(xi=0.6)

    def fn(z: torch.Tensor) -> torch.Tensor:
        loss.draws.zero_()  # the same background draws at every evaluation
        return loss(z, labels)["loss_cls"]

    assert torch.autograd.gradcheck(fn, (logits,))


@pytest.mark.parametrize("background", ["code", "paper"])
def test_background_rois_keep_frequent_and_drawn_rare_common(background: str) -> None:
    """100 background RoIs, all logits 0: each kept term is ln2. Kept: 100 frequent
    negatives, floor(0.1 * 100) = 10 common, floor(0.01 * 100) = 1 rare, plus (code) the
    100 background targets: 211 (code) or 111 (paper) terms over 100 RoIs."""
    loss = make(background=background)
    out = loss(torch.zeros(100, 4), torch.zeros(100, dtype=torch.long))["loss_cls"]
    kept = 211 if background == "code" else 111
    assert out.item() == pytest.approx(kept * LN2 / 100, rel=1e-6)
    loss.draws.zero_()
    w = loss.weights(torch.zeros(100, 4), torch.zeros(100, dtype=torch.long))
    assert w[:, 3].all()
    assert int(w[:, 2].sum()) == 10 and int(w[:, 1].sum()) == 1
    assert bool(w[:, 0].all()) is (background == "code")


def test_xi_rule_applies_to_the_background_column_only_in_code() -> None:
    logits = torch.tensor([[2.0, 2.0, -2.0, 0.1]])  # p = .88, .88, .12, .52
    labels = torch.tensor([2])
    assert make(xi=0.5).weights(logits, labels).tolist() == [[True, True, True, True]]
    assert make(xi=0.5, background="paper").weights(logits, labels).tolist() == [
        [False, True, True, True]
    ]
    assert make(xi=0.9).weights(logits, labels).tolist() == [[False, False, True, False]]
    assert make(xi=0.0).weights(logits, labels).all()


def test_draws_are_reproducible_and_advance() -> None:
    labels = torch.zeros(200, dtype=torch.long)
    z = torch.zeros(200, 4)
    a, b = make(seed=3), make(seed=3)
    first = a.weights(z, labels)[:, 2]
    assert torch.equal(first, b.weights(z, labels)[:, 2])
    second = a.weights(z, labels)[:, 2]
    assert int(a.draws) == 2 and not torch.equal(first, second)
    assert not torch.equal(first, make(seed=4).weights(z, labels)[:, 2])
    a.draws.zero_()
    assert torch.equal(first, a.weights(z, labels)[:, 2])


def test_groups_from_image_counts() -> None:
    counts = torch.tensor([1, 10, 11, 100, 101, 5000])
    assert lvis_frequency_groups(counts).tolist() == [0, 0, 1, 1, 2, 2]
    loss = build_loss("acsl", num_classes=6)
    loss.set_class_stats(counts, num_images=10_000)
    assert loss.groups.tolist() == [0, 0, 1, 1, 2, 2]
    with pytest.raises(ValueError):
        loss.set_groups(torch.tensor([0, 1, 2]))


def test_unset_groups_warn_and_count_as_frequent() -> None:
    loss = build_loss("acsl", num_classes=3)
    with pytest.warns(UserWarning, match="set_class_stats"):
        loss(torch.zeros(100, 4), torch.zeros(100, dtype=torch.long))
    assert loss.weights(torch.zeros(100, 4), torch.zeros(100, dtype=torch.long)).all()


def test_scores_are_foreground_sigmoids() -> None:
    z = torch.tensor([[5.0, 0.0, LN3, -LN3]])
    torch.testing.assert_close(make().scores(z), torch.tensor([[0.5, 0.75, 0.25]]))


@pytest.mark.parametrize(
    "params",
    [{"xi": -0.1}, {"xi": 1.5}, {"background": "both"}, {"seed": -1}, {"seed": 0.5}],
)
def test_bad_parameters_raise_config_error(params: dict) -> None:
    with pytest.raises(ConfigError):
        build_loss("acsl", num_classes=3, **params)
