"""MFS (ltmodels/losses/mfs.py): dense boxes, the per-class ring buffer and the sampler."""

from __future__ import annotations

import threading

import pytest
import torch

from ltmodels.losses import mfs
from ltmodels.losses.mfs import (
    MFS_PARAMS,
    NUM_DENSE_BOXES,
    FeatureMemory,
    dense_boxes,
    memory_gt_index,
)


def test_dense_boxes_follow_eq5() -> None:
    """Box b of a ground truth moves coordinate i by sign_i(b) * eta * (w or h) / 6 with
    eta in [0, 1]; the 16 boxes cover the 16 sign patterns."""
    gt = torch.tensor([[10.0, 20.0, 70.0, 50.0], [0.0, 0.0, 12.0, 6.0]])
    boxes, index = dense_boxes(gt, generator=torch.Generator().manual_seed(0))
    assert boxes.shape == (2 * NUM_DENSE_BOXES, 4)
    assert index.tolist() == [0] * 16 + [1] * 16
    scale = torch.tensor([[60.0, 30.0, 60.0, 30.0], [12.0, 6.0, 12.0, 6.0]]) / 6
    offset = (boxes.reshape(2, 16, 4) - gt[:, None]) / scale[:, None]
    assert bool((offset.abs() <= 1).all())
    patterns = {tuple(row) for row in (offset[0] > 0).int().tolist()}
    assert len(patterns) == 16
    assert bool((boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all())


def test_dense_boxes_clip_and_repeat() -> None:
    gt = torch.tensor([[0.0, 0.0, 30.0, 60.0]])
    boxes, _ = dense_boxes(gt, image_size=(60, 30), generator=torch.Generator().manual_seed(1))
    assert bool((boxes >= 0).all() and (boxes[:, 0::2] <= 30).all())
    assert bool((boxes[:, 1::2] <= 60).all())
    again, _ = dense_boxes(gt, image_size=(60, 30), generator=torch.Generator().manual_seed(1))
    assert torch.equal(boxes, again)
    empty, idx = dense_boxes(torch.zeros(0, 4))
    assert empty.shape == (0, 4) and idx.numel() == 0


def rows(labels: list[int], first: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Feature = (label, serial number), target = serial number repeated."""
    lab = torch.tensor(labels)
    serial = torch.arange(len(labels), dtype=torch.float32) + first
    return torch.stack([lab.float(), serial], 1), lab, serial[:, None].repeat(1, 4)


def test_push_is_a_per_class_fifo_ring() -> None:
    mem = FeatureMemory(3, 2, size=3)
    mem.push(*rows([1, 2, 0, 1], first=0))  # serials 0, 1, (2 is background), 3
    assert mem.fill().tolist() == [2, 1, 0]
    assert mem.features[0, :2, 1].tolist() == [0.0, 3.0]
    mem.push(*rows([1, 1], first=10))  # class 1 now 0, 3, 10 then 11 overwrites 0
    assert mem.count.tolist() == [4, 1, 0] and mem.fill().tolist() == [3, 1, 0]
    assert mem.features[0, :, 1].tolist() == [11.0, 3.0, 10.0]
    assert mem.targets[0, :, 0].tolist() == [11.0, 3.0, 10.0]
    # A push with more than M rows of a class keeps its first M (the code's slicing).
    mem.push(*rows([2, 2, 2, 2, 2], first=20))
    assert sorted(mem.features[1, :, 1].tolist()) == [20.0, 21.0, 22.0]


def test_sample_prefers_low_mean_scores_and_skips_empty_queues() -> None:
    mem = FeatureMemory(3, 2, size=4)
    mem.push(*rows([1, 1, 2, 2, 2], first=0))  # class 3 stays empty
    g = torch.Generator().manual_seed(0)
    scores = torch.tensor([0.01, 0.001, 0.999, 1e-4])  # class 3 most likely but empty
    out = mem.sample(scores, k=200, m=3, generator=g)
    assert out.features.shape[0] == out.labels.numel() == out.targets.shape[0]
    assert out.features.shape[0] % 3 == 0 and out.features.shape[0] < 200 * 3
    assert torch.equal(out.features[:, 0].long(), out.labels)  # rows come from their class
    assert set(out.labels.tolist()) <= {1, 2}
    # p_1 / p_2 = 0.999 / 0.001 among the non-empty classes.
    assert (out.labels == 1).sum() > 0.9 * out.labels.numel()
    assert set(out.features[out.labels == 1, 1].tolist()) <= {0.0, 1.0}


def test_sample_probabilities_are_inverse_mean_scores() -> None:
    mem = FeatureMemory(2, 1, size=2)
    mem.push(torch.zeros(2, 1), torch.tensor([1, 2]))
    out = mem.sample(
        torch.tensor([0.01, 0.2, 0.6]), k=20_000, m=1, generator=torch.Generator().manual_seed(0)
    )
    frac = (out.labels == 1).float().mean().item()
    assert frac == pytest.approx(0.75, abs=0.015)  # (1 / 0.2) / (1 / 0.2 + 1 / 0.6)


def test_sample_edge_cases() -> None:
    mem = FeatureMemory(2, 3, size=2)
    out = mem.sample(torch.full((3,), 0.01), k=8, m=4)
    assert out.features.shape == (0, 3) and out.labels.numel() == 0
    mem.push(torch.ones(1, 3), torch.tensor([2]))
    assert mem.sample(torch.full((3,), 0.01), k=0, m=4).labels.numel() == 0
    with pytest.raises(ValueError):
        mem.sample(torch.full((2,), 0.01), k=1, m=1)
    with pytest.raises(ValueError):
        mem.push(torch.ones(1, 4), torch.tensor([1]))


def test_state_dict_round_trip() -> None:
    mem = FeatureMemory(3, 2, size=3)
    mem.push(*rows([1, 2, 3, 3], first=0))
    other = FeatureMemory(3, 2, size=3)
    other.load_state_dict(mem.state_dict())
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    s = torch.full((4,), 0.01)
    a, b = mem.sample(s, 4, 2, g1), other.sample(s, 4, 2, g2)
    assert torch.equal(a.features, b.features) and torch.equal(a.labels, b.labels)


def test_memory_gt_index_gives_one_group_per_class() -> None:
    ids = memory_gt_index(torch.tensor([3, 3, 1]), torch.tensor([0, 4, -1]))
    assert ids.tolist() == [8, 8, 6]
    assert memory_gt_index(torch.tensor([2]), torch.tensor([-1, -1])).tolist() == [2]


def test_params_match_the_paper() -> None:
    assert {k: p.default for k, p in MFS_PARAMS.items()} == {"size": 80, "k": 8, "m": 4}


def test_pushes_are_gathered_so_workers_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two workers (threads with an in-memory all_gather) pushing the two halves of a batch
    end with the memory of one process pushing the whole batch."""
    barrier = threading.Barrier(2, timeout=60)
    slots: list[torch.Tensor] = [torch.empty(0)] * 2
    rank = threading.local()

    def gather(t: torch.Tensor) -> torch.Tensor:
        slots[rank.value] = t
        barrier.wait()
        out = torch.cat(slots)
        barrier.wait()
        return out

    g = torch.Generator().manual_seed(0)
    feats = torch.randn(2, 30, 5, generator=g)
    labels = torch.randint(0, 4, (2, 30), generator=g)
    single = FeatureMemory(3, 5, size=4)
    for step in range(2):
        single.push(feats[step], labels[step])
    monkeypatch.setattr(mfs, "all_gather_cat", gather)
    workers = [FeatureMemory(3, 5, size=4) for _ in range(2)]

    def run(r: int) -> None:
        rank.value = r
        for step in range(2):
            half = slice(15 * r, 15 * (r + 1))
            workers[r].push(feats[step, half], labels[step, half])

    threads = [threading.Thread(target=run, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for w in workers:
        for key, buf in single.state_dict().items():
            assert torch.equal(w.state_dict()[key], buf), key
