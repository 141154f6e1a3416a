"""GAP's ROG Table 4 switches (ltmodels/losses/gap.py): ``exclude_fg`` and ``online`` by
hand, and the defaults giving exactly the outputs of the loss before the switches existed."""

from __future__ import annotations

import pytest
import torch

from ltmodels.losses import build_loss
from ltmodels.losses.gap import gap_gradient

# Foreground logits (columns = labels 1, 2) of three RoIs labelled 1, 1, 2.
S = torch.tensor([[2.0, 0.0], [0.6, 0.3], [1.0, 0.8]], dtype=torch.float64)
LABELS = torch.tensor([1, 1, 2])


def bce_logits(fg: torch.Tensor) -> torch.Tensor:
    """bce layout: column 0 background (any value), columns 1..C the foreground."""
    return torch.cat([torch.full((fg.shape[0], 1), -1.0, dtype=fg.dtype), fg], 1).requires_grad_()


def test_other_classes_positives_as_negatives_by_hand() -> None:
    """delta 0.5: H(i, j) = clamp(s_j - s_i + 1/2, 0, 1); own rank 1/2 (code).

    Positives: class 1 i0 = 2.0, i1 = 0.6; class 2 k = 0.8. N (positives of no class):
    0.0, 0.3 (column 2) and 1.0 (column 1). Counts (0, 2, 1), gamma 1: w = (2/3, 4/3);
    |C^| = 2, so coef = w_m / (|P(m)| |C^|) = 1/6 for class 1 and 2/3 for class 2.
    With Excl. FG: FP(i0) = 0, FP(i1) = 0.2 + 0.9 = 1.1, FP(k) = 0.7.
    Without it the other class's positives join: i1 against k adds 0.7 (FP 1.8), k against
    i0 and i1 adds 1 + 0.3 (FP 2.0), i0 against k adds 0. R+ = 1/2 + 1 for i1, 1/2 for k:
    R(i1) = 3.3, R(k) = 2.5. Eq. 11, a positive entry also takes its negative update:
    i0 = 2/3 * 1/2.5, i1 = -1/6 * 1.8/3.3 + 2/3 * 0.3/2.5, k = -2/3 * 2/2.5 + 1/6 * 0.7/3.3.
    """
    w = torch.tensor([2 / 3, 4 / 3], dtype=torch.float64)
    a1, a2 = (1 / 6) / 3.3, (2 / 3) / 2.5  # coef / R of i1 and k
    expected = torch.tensor(
        [
            [a2 * 1.0, 0.0],
            [-(1 / 6) * 1.8 / 3.3 + a2 * 0.3, a1 * 0.2],
            [a1 * 0.9 + a2 * 0.7, -(2 / 3) * 2.0 / 2.5 + a1 * 0.7],
        ],
        dtype=torch.float64,
    )
    grad, error, _ = gap_gradient(S, LABELS, w, delta=0.5, own_rank=0.5, exclude_fg=False)
    torch.testing.assert_close(grad, expected)
    torch.testing.assert_close(error, torch.tensor([0.0, 1.8 / 3.3, 2.0 / 2.5], dtype=S.dtype))
    _, kept, _ = gap_gradient(S, LABELS, w, delta=0.5, own_rank=0.5)
    torch.testing.assert_close(kept, torch.tensor([0.0, 1.1 / 2.6, 0.7 / 1.2], dtype=S.dtype))


def test_exclude_fg_false_in_the_loss() -> None:
    """Logged value (code): 1/|C^| sum_m 1/|P(m)| sum_i error = ((0 + 1.8/3.3) / 2 + 0.8) / 2."""
    loss = build_loss("gap", num_classes=2, exclude_fg=False)
    logits = bce_logits(S)
    out = loss(logits, LABELS)
    assert out["loss_gap"].item() == pytest.approx((1.8 / 3.3 / 2 + 0.8) / 2, rel=1e-12)
    out["loss_gap"].backward()
    w = loss.class_weight()
    grad, _, _ = gap_gradient(S, LABELS, w, delta=0.5, own_rank=0.5, exclude_fg=False)
    torch.testing.assert_close(logits.grad[:, 1:], grad)


def test_offline_class_sizes_come_from_the_dataset() -> None:
    """Dataset image counts (10, 40), gamma 1: w is (1/10, 1/40) normalised to sum C = 2,
    (1.6, 0.4); training does not move the sizes."""
    loss = build_loss("gap", num_classes=2, online=False)
    with pytest.raises(RuntimeError, match="set_class_stats"):
        loss(bce_logits(S), LABELS)
    loss.set_class_stats(torch.tensor([10, 40]), 50)
    torch.testing.assert_close(loss.class_weight(), torch.tensor([1.6, 0.4], dtype=S.dtype))
    logits = bce_logits(S)
    out = loss(logits, LABELS)
    assert loss.counts.tolist() == [0, 10, 40]
    out["loss_gap"].backward()
    w = torch.tensor([1.6, 0.4], dtype=torch.float64)
    grad, _, _ = gap_gradient(S, LABELS, w, delta=0.5, own_rank=0.5)
    torch.testing.assert_close(logits.grad[:, 1:], grad)
    online = build_loss("gap", num_classes=2)
    online.set_class_stats(torch.tensor([10, 40]), 50)
    online(bce_logits(S), LABELS)
    assert online.counts.tolist() == [0, 2, 1]  # counted, the dataset's sizes unused


# (value, sum of grad * position, sum of |grad|) per step, from the loss before the switches
# existed (git HEAD b3fc72e), float64: the defaults must reproduce them.
GOLDEN = {
    "code": [
        (0.9578280609047533, 0.5757403192551749, 1.9287015027982477),
        (0.9750345287654385, -8.350922605800564, 1.9507132083506398),
        (0.9609171972299526, -23.639443489610287, 1.9291380142840915),
    ],
    "paper": [
        (0.9670624440704128, 0.7726729295400876, 0.4086851092254757),
        (0.9710188980021838, -3.728343940558694, 0.4058153639596973),
        (0.9659367542351692, -5.9203680609931535, 0.4050375024663083),
    ],
}


@pytest.mark.parametrize("explicit", [False, True], ids=["defaults", "switches_on"])
@pytest.mark.parametrize("variant", ["code", "paper"])
def test_defaults_reproduce_the_loss_before_the_switches(variant: str, explicit: bool) -> None:
    switches = {"online": True, "exclude_fg": True} if explicit else {}
    loss = build_loss("gap", num_classes=6, variant=variant, gamma=1.5, **switches)
    g = torch.Generator().manual_seed(3)
    for value, weighted, total in GOLDEN[variant]:
        logits = torch.randn(50, 7, generator=g, dtype=torch.float64, requires_grad=True)
        labels = torch.randint(0, 7, (50,), generator=g)
        out = loss(logits, labels)
        out["loss_gap"].backward()
        position = torch.arange(logits.numel(), dtype=torch.float64).reshape(logits.shape)
        assert out["loss_gap"].item() == pytest.approx(value, rel=1e-12)
        assert (logits.grad * position).sum().item() == pytest.approx(weighted, rel=1e-12)
        assert logits.grad.abs().sum().item() == pytest.approx(total, rel=1e-12)
    assert loss.counts.tolist() == [17, 15, 25, 28, 23, 19, 23]
