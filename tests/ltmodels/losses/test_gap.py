"""GAP (ltmodels/losses/gap.py): the Eq. 11 gradient by hand and against a transcription of
the released code's per-positive loop."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from ltmodels.errors import ConfigError
from ltmodels.losses import LOSSES, build_loss
from ltmodels.losses.gap import GAPLoss, gap_class_weight, gap_gradient

# Foreground logits (columns = labels 1, 2) of three RoIs labelled 1, 1, 0.
S = torch.tensor([[2.0, 0.0], [0.6, 0.3], [1.0, 0.8]])
LABELS = torch.tensor([1, 1, 0])


def bce_logits(fg: torch.Tensor) -> torch.Tensor:
    """bce layout: column 0 background (any value), columns 1..C the foreground."""
    return torch.cat([torch.full((fg.shape[0], 1), -1.0), fg], dim=1).requires_grad_()


def hand_gradient(r_own: float) -> torch.Tensor:
    """delta = 0.5, so H(i, j) = clamp(s_j - s_i + 1/2, 0, 1). Class 1 has positives
    i0 = 2.0 and i1 = 0.6; negatives are (0, c2) 0.0, (1, c2) 0.3, (2, c1) 1.0, (2, c2) 0.8.
    i0: every H against negatives is 0 (FP = 0): no update.
    i1: H = 0, 0.2, 0.9, 0.7, FP = 1.8; R+ = o + H(i1, i0) = o + 1; R = o + 2.8.
    Counts after the batch (1, 2, 0) -> w = (1/2, 1) / 1.5 * 2 = (2/3, 4/3); |C^| = 1,
    |P(1)| = 2: coefficient w_1 / 2 = 1/3. Eq. 11: i1 gets -1/3 * 1.8 / R, negative j
    gets 1/3 * H(i1, j) / R.
    """
    r = r_own + 2.8
    c = 1.0 / 3.0
    return torch.tensor([[0.0, 0.0], [-c * 1.8 / r, c * 0.2 / r], [c * 0.9 / r, c * 0.7 / r]])


def test_hand_computed_gradient_and_value_code_variant() -> None:
    """Own rank 1/2: R(i1) = 3.3. Value (no w, no lambda): (0 + 1.8 / 3.3) / 2 = 0.272727."""
    loss = build_loss("gap", num_classes=2, lambda_gap=2.0)
    logits = bce_logits(S)
    out = loss(logits, LABELS)
    assert set(out) == {"loss_cls", "loss_gap"}
    assert loss.counts.tolist() == [1, 2, 0]  # counted before the loss
    assert out["loss_gap"].item() == pytest.approx(1.8 / 3.3 / 2, rel=1e-6)
    out["loss_gap"].backward()
    assert torch.all(logits.grad[:, 0] == 0)
    torch.testing.assert_close(logits.grad[:, 1:], 2.0 * hand_gradient(0.5))


def test_hand_computed_gradient_own_rank_one() -> None:
    w = gap_class_weight(torch.tensor([2, 0]), 1.0).float()
    torch.testing.assert_close(w, torch.tensor([2 / 3, 4 / 3]))
    grad, error, norm = gap_gradient(S, LABELS, w, delta=0.5, own_rank=1.0)
    torch.testing.assert_close(grad, hand_gradient(1.0))
    torch.testing.assert_close(error, torch.tensor([0.0, 1.8 / 3.8]))
    torch.testing.assert_close(norm, torch.tensor([0.5, 0.5]))


def test_paper_variant_ranks_scores_and_chains_to_logits() -> None:
    loss = build_loss("gap", num_classes=2, variant="paper", lambda_gap=0.5)
    logits = bce_logits(S)
    out = loss(logits, LABELS)
    out["loss_gap"].backward()
    p = torch.sigmoid(S)
    w = loss.class_weight().float()
    grad_s, error, norm = gap_gradient(p, LABELS, w, delta=0.5, own_rank=1.0)
    torch.testing.assert_close(logits.grad[:, 1:], 0.5 * grad_s * p * (1 - p))
    value = 0.5 * (w[LABELS[LABELS > 0] - 1] * error * norm).sum()
    torch.testing.assert_close(out["loss_gap"], value)


def reference_gap(
    s: torch.Tensor,
    labels: torch.Tensor,
    counts: torch.Tensor,
    *,
    gamma: float,
    delta: float,
    exclude_fg: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A transcription of the released code's loop (one positive at a time, own term 1/2),
    in our layout (label j in column j - 1); returns (logged value, gradient).
    ``exclude_fg=False``: its negatives of m are every entry but the positives of m (the
    code's ``targets == 0`` becomes ``cls_targets == 0``, ROG Table 4 "Excl. FG" x)."""
    n, c = s.shape
    flat = s.reshape(-1)
    targets = torch.zeros(n, c)
    fg = labels > 0
    targets[fg, labels[fg] - 1] = 1
    targets = targets.reshape(-1)
    grads = torch.zeros(n * c)
    w = (1 / counts.clamp(min=1).float()) ** gamma
    w = w / (w.sum() + 1e-9) * c
    classes = torch.unique(labels[fg])
    total = torch.zeros(())
    for m in classes.tolist():
        cls_t = torch.zeros(n, c)
        cls_t[labels == m, m - 1] = 1
        pos = cls_t.reshape(-1) > 0
        pos_s = flat[pos]
        outside = (targets == 0) if exclude_fg else ~pos
        rel = outside & (flat >= pos_s.min() - delta)
        neg_s = flat[rel]
        neg_grad = torch.zeros(len(neg_s))
        err = torch.zeros(len(pos_s))
        pos_grad = torch.zeros(len(pos_s))
        for ii in torch.argsort(pos_s).tolist():
            pr = torch.clamp((pos_s - pos_s[ii]) / (2 * delta) + 0.5, 0, 1)
            nr = torch.clamp((neg_s - pos_s[ii]) / (2 * delta) + 0.5, 0, 1)
            rank = pr.sum() + nr.sum()
            err[ii] = nr.sum() / rank
            if nr.sum() > 1e-10:
                pos_grad[ii] -= nr.sum() / rank
                neg_grad += nr / rank
        total += err.mean() / len(classes)
        grads[pos] += pos_grad * w[m - 1] / (len(pos_s) * len(classes))
        grads[rel] += neg_grad * w[m - 1] / (len(pos_s) * len(classes))
    return total, grads.reshape(n, c)


@pytest.mark.parametrize("exclude_fg", [True, False], ids=["excl_fg", "other_fg_negative"])
@pytest.mark.parametrize("ties", [False, True], ids=["continuous", "ties_on_ramp_ends"])
def test_matches_the_released_code(ties: bool, exclude_fg: bool) -> None:
    """The sorted prefix-sum sums equal the released code's pairwise loop, also when many
    scores sit exactly on the ends of the ramp (scores on a 0.25 grid, delta 0.5); without
    Excl. FG, the loop with the positives of other classes among the negatives."""
    g = torch.Generator().manual_seed(0)
    n, c = 40, 5
    s = torch.randn(n, c, generator=g)
    if ties:
        s = torch.round(s * 4) / 4
    labels = torch.randint(0, c + 1, (n,), generator=g)
    labels[:5] = torch.tensor([0, 1, 1, 3, 3])
    counts = torch.randint(0, 50, (c,), generator=g)
    counts[1] = 0
    value, grad = reference_gap(s, labels, counts, gamma=1.5, delta=0.5, exclude_fg=exclude_fg)
    w = gap_class_weight(counts, 1.5).float()
    ours, error, norm = gap_gradient(s, labels, w, delta=0.5, own_rank=0.5, exclude_fg=exclude_fg)
    torch.testing.assert_close(ours, grad, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close((error * norm).sum(), value)


def test_no_foreground_skips_the_term() -> None:
    loss = build_loss("gap", num_classes=2)
    logits = bce_logits(torch.randn(4, 2))
    out = loss(logits, torch.zeros(4, dtype=torch.long))
    assert out["loss_gap"].item() == 0.0
    out["loss_gap"].backward()
    assert torch.all(logits.grad == 0)
    assert loss.counts.tolist() == [4, 0, 0]


def test_counts_accumulate_in_training_only() -> None:
    loss = build_loss("gap", num_classes=2)
    loss(bce_logits(S), LABELS)
    loss(bce_logits(S), torch.tensor([2, 2, 1]))
    assert loss.counts.tolist() == [1, 3, 2]
    loss.eval()
    loss(bce_logits(S), LABELS)
    assert loss.counts.tolist() == [1, 3, 2]


@pytest.mark.parametrize("base", ["bce", "seesaw", "eqlv2", "ce"])
def test_delegates_layout_to_the_base(base: str) -> None:
    c = 3
    loss = build_loss("gap", num_classes=c, base=base)
    ref = build_loss(base, num_classes=c)
    k = ref.num_logits(c)
    assert loss.num_logits(c) == k
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, k, generator=g, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    torch.testing.assert_close(loss.scores(logits), ref.scores(logits))
    out = loss(logits, labels)
    assert set(ref(logits, labels)) | {"loss_gap"} == set(out)
    out["loss_gap"].backward()
    other = torch.ones(k, dtype=torch.bool)
    other[1 : c + 1] = False  # the foreground columns of all four bases
    assert torch.all(logits.grad[:, other] == 0) and logits.grad[:, 1 : c + 1].abs().sum() > 0
    with pytest.raises(ValueError):
        loss(torch.randn(6, k + 1), labels)


def test_class_level_width_is_the_default_base() -> None:
    assert GAPLoss.num_logits(5) == LOSSES["bce"].num_logits(5) == 6
    assert LOSSES["gap"].params["base"].default == "bce"


@pytest.mark.parametrize(
    "params",
    [
        {"delta": 0.0},
        {"gamma": -1.0},
        {"lambda_gap": -0.5},
        {"base": "acsl"},
        {"variant": "both"},
        {"online": 1},
        {"exclude_fg": "no"},
    ],
)
def test_bad_parameters_raise_config_error(params: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        build_loss("gap", num_classes=3, **params)
