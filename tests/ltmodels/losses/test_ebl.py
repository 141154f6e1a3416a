"""EBL (ltmodels/losses/ebl.py): the mean-score update and the equilibrium loss by hand."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from ltmodels.errors import ConfigError
from ltmodels.losses import LongTailLoss, build_loss
from ltmodels.losses.mfs import memory_gt_index

# Spawned DDP workers import the harness by module name (as test_ddp.py does).
sys.path.insert(0, str(Path(__file__).parent))
import ddp_harness  # noqa: E402

LN2 = math.log(2.0)
# RoI a: label 1, z = (0, ln2, 0): softmax (1/4, 1/2, 1/4), entry 1/2.
# RoI b: label 1, z = 0: softmax 1/3 each, entry 1/3. RoI c: background, z = 0.
LOGITS = torch.tensor([[0.0, LN2, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
LABELS = torch.tensor([1, 1, 0])


def make(**params: Any) -> LongTailLoss:
    return build_loss("ebl", num_classes=2, **params)


def test_hand_computed_value_code_update() -> None:
    """alpha = 0.5, a and b are two objects (gt 0, 1): n_1 = 2, mean (1/2 + 1/3) / 2 = 5/12,
    s_1 = 0.5**2 * 0.01 + (1 - 0.5**2) * 5/12 = 0.0025 + 0.3125 = 0.315; s_0 = s_2 = 0.01.
    Loss on z + log s (sum_j s_j e^{z_j}: a 0.01 + 0.63 + 0.01 = 0.65, b and c 0.335):
      a: -log(0.63 / 0.65), b: -log(0.315 / 0.335), c: -log(0.01 / 0.335); mean of three.
    """
    loss = make(alpha=0.5)
    out = loss(LOGITS, LABELS, gt_index=torch.tensor([0, 1, -1]))["loss_cls"]
    torch.testing.assert_close(loss.mean_score, torch.tensor([0.01, 0.315, 0.01]))
    expected = (math.log(0.65 / 0.63) + math.log(0.335 / 0.315) + math.log(33.5)) / 3
    assert out.item() == pytest.approx(expected, rel=1e-6)


def test_paper_update_is_one_ema_step_per_entry() -> None:
    """Entries in gt order, a (1/2) then b (1/3): s <- 0.5 * 0.01 + 0.5 * 1/2 = 0.255,
    s <- 0.5 * 0.255 + 0.5 * 1/3 = 0.294167 (the code's fold gives 0.315)."""
    loss = make(alpha=0.5, update="paper")
    loss(LOGITS, LABELS, gt_index=torch.tensor([0, 1, -1]))
    assert loss.mean_score[1].item() == pytest.approx(0.1275 + 1 / 6, rel=1e-6)
    assert loss.mean_score[2].item() == pytest.approx(0.01)


def test_rois_of_one_object_make_one_entry() -> None:
    """a and b both match gt 7: one entry 5/12, s_1 = 0.5 * 0.01 + 0.5 * 5/12 = 0.213333.
    Without gt_index every foreground RoI is an entry (as two objects: 0.315)."""
    loss = make(alpha=0.5)
    loss(LOGITS, LABELS, gt_index=torch.tensor([7, 7, -1]))
    assert loss.mean_score[1].item() == pytest.approx(0.005 + 5 / 24, rel=1e-6)
    loss = make(alpha=0.5)
    loss(LOGITS, LABELS)
    assert loss.mean_score[1].item() == pytest.approx(0.315, rel=1e-6)


def test_memory_rows_count_once_per_class() -> None:
    """Two MFS rows of class 2 (scores 1/4, 1/2) and one object of class 2 (score 1/3):
    entries 3/8 (rows) and 1/3 (object), n_2 = 2: s_2 = 0.0025 + 0.75 * 17/48."""
    batch_logits = torch.zeros(2, 3)
    batch_labels = torch.tensor([2, 0])
    gt = torch.tensor([0, -1])
    # softmax (1/4, 1/2, 1/4) and (1/4, 1/4, 1/2): class-2 scores 1/4 and 1/2.
    mem_logits = torch.tensor([[0.0, LN2, 0.0], [0.0, 0.0, LN2]])
    mem_labels = torch.tensor([2, 2])
    loss = make(alpha=0.5)
    loss(
        torch.cat([batch_logits, mem_logits]),
        torch.cat([batch_labels, mem_labels]),
        gt_index=torch.cat([gt, memory_gt_index(mem_labels, gt)]),
    )
    assert loss.mean_score[2].item() == pytest.approx(0.0025 + 0.75 * 17 / 48, rel=1e-6)


def test_equals_eq3_with_eq4_margins() -> None:
    """log(1 + sum_{y' != y} exp(z_y' - z_y + log(s_y' / s_y))) averaged over RoIs."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(8, 5, generator=g)
    y = torch.tensor([0, 1, 2, 3, 4, 0, 2, 2])
    loss = build_loss("ebl", num_classes=4).eval()  # eval: no update, s as set here
    loss.mean_score.copy_(torch.tensor([0.01, 0.3, 0.02, 0.5, 0.07]))
    s = loss.mean_score
    margin = z - z.gather(1, y[:, None]) + (s[None, :] / s[y][:, None]).log()
    mask = torch.ones_like(z, dtype=torch.bool).scatter(1, y[:, None], False)
    expected = torch.log1p((margin.exp() * mask).sum(1)).mean()
    torch.testing.assert_close(loss(z, y)["loss_cls"], expected)


def test_gradcheck_float64() -> None:
    g = torch.Generator().manual_seed(1)
    z = torch.randn(6, 4, generator=g, dtype=torch.float64).requires_grad_()
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    loss = build_loss("ebl", num_classes=3)
    loss(z.detach(), y)  # one update, so s is not uniform
    loss.eval()
    assert torch.autograd.gradcheck(lambda t: loss(t, y)["loss_cls"], (z,))


def test_background_entry_and_eval_mode() -> None:
    loss = make(background_score=0.001)
    assert loss.mean_score.tolist() == pytest.approx([0.001, 0.01, 0.01])
    loss(torch.randn(4, 3), torch.tensor([0, 1, 2, 1]))
    assert loss.mean_score[0].item() == pytest.approx(0.001)
    before = loss.mean_score.clone()
    loss.eval()
    loss(torch.randn(4, 3), torch.tensor([0, 1, 2, 1]))
    assert torch.equal(loss.mean_score, before)
    assert not loss.mean_score.requires_grad


def test_scores_are_plain_softmax() -> None:
    loss = make()
    loss.mean_score.copy_(torch.tensor([0.01, 0.9, 0.001]))
    torch.testing.assert_close(loss.scores(LOGITS[:1]), torch.tensor([[0.5, 0.25]]))


def test_inconsistent_groups_raise() -> None:
    with pytest.raises(ValueError, match="different labels"):
        make()(torch.zeros(2, 3), torch.tensor([1, 2]), gt_index=torch.tensor([0, 0]))
    with pytest.raises(ValueError, match="gt_index -1"):
        make()(torch.zeros(2, 3), torch.tensor([1, 0]), gt_index=torch.tensor([-1, -1]))


@pytest.mark.parametrize(
    "params",
    [{"alpha": 1.1}, {"alpha": -0.1}, {"background_score": 0.0}, {"update": "ema"}],
)
def test_bad_parameters_raise_config_error(params: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        build_loss("ebl", num_classes=2, **params)


@pytest.mark.slow
def test_paper_update_matches_across_two_workers(tmp_path: Path) -> None:
    """The default update is covered by test_ddp.py; the sequential one depends on entry
    order, which rank-ordered gathering keeps (whole images per worker, gt ids by image)."""
    c = 8
    batches = ddp_harness.make_batches(c)
    params = {"update": "paper", "alpha": 0.7}
    single = ddp_harness.run_single("ebl", batches, c, params)
    per_rank = ddp_harness.run_ddp(["ebl"], batches, tmp_path, c, params={"ebl": params})
    assert not torch.allclose(single["mean_score"], torch.full((c + 1,), 0.01))
    for bufs in per_rank["ebl"]:
        torch.testing.assert_close(bufs["mean_score"], single["mean_score"])
