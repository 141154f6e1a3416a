"""MFS as a loss component (ltmodels/losses/feature_sampling.py) and its ``ebl`` parameters."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ltmodels.errors import ConfigError
from ltmodels.losses import build_loss, feature_sampling
from ltmodels.losses.feature_sampling import FeatureSampling, bind_memory, memory_of

C, D = 3, 5


def loce(**params) -> torch.nn.Module:
    return build_loss("ebl", num_classes=C, mfs=True, **params)


def filled(loss: torch.nn.Module) -> torch.nn.Module:
    """Bind, push rows of classes 1 and 3 twice, and take one mean-score update."""
    bind_memory(loss, D)
    g = torch.Generator().manual_seed(0)
    memory = memory_of(loss)
    assert memory is not None
    for _ in range(2):
        memory.push(torch.randn(6, D, generator=g), torch.tensor([1, 3, 3, 0, 1, 3]), None)
    loss(torch.randn(4, C + 1, generator=g), torch.tensor([1, 2, 0, 3]))
    return loss


def test_ebl_alone_has_no_memory() -> None:
    """``ebl`` is Table 1's EBL row by default: no MFS state, nothing for trainers."""
    loss = build_loss("ebl", num_classes=C)
    bind_memory(loss, D)
    assert memory_of(loss) is None
    assert list(loss.state_dict()) == ["mean_score"]
    assert memory_of(build_loss("ce", num_classes=C)) is None  # no protocol at all


def test_mfs_parameters_reach_the_memory() -> None:
    loss = loce(mfs_size=7, mfs_k=2, mfs_m=3)
    with pytest.raises(RuntimeError, match="bind_memory"):
        memory_of(loss)
    bind_memory(loss, D)
    bind_memory(loss, D)  # idempotent
    mem = loss.feature_sampling.memory
    assert (mem.size, mem.feat_dim, mem.target_dim) == (7, D, 4)
    assert (loss.feature_sampling.k, loss.feature_sampling.m) == (2, 3)
    with pytest.raises(ValueError, match="asked for"):
        bind_memory(loss, D + 1)
    with pytest.raises(ConfigError, match="mfs_m"):
        loce(mfs_m=0)


def test_filled_memory_round_trips_through_state_dict() -> None:
    """Into a bound loss and into an unbound one (the load allocates the memory)."""
    trained = filled(loce(mfs_size=4, mfs_k=6, mfs_m=2))
    state = trained.state_dict()
    assert state["feature_sampling.memory.count"].tolist() == [4, 0, 6]
    assert trained.mean_score[1] != 0.01
    bound = loce(mfs_size=4, mfs_k=6, mfs_m=2)
    bind_memory(bound, D)
    unbound = loce(mfs_size=4, mfs_k=6, mfs_m=2)
    draws = []
    for restored in (bound, unbound):
        restored.load_state_dict(state)
        assert restored.state_dict().keys() == state.keys()
        for key, value in state.items():
            assert torch.equal(restored.state_dict()[key], value), key
        torch.manual_seed(3)
        draws.append(memory_of(restored).sample())
    torch.manual_seed(3)
    ref = memory_of(trained).sample()
    assert ref.labels.numel() > 0 and set(ref.labels.tolist()) <= {1, 3}
    for got in draws:
        assert torch.equal(got.features, ref.features) and torch.equal(got.labels, ref.labels)


def test_sampling_is_reproducible_and_differs_by_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    """The draw follows torch's global seed; another DDP rank draws other rows."""
    loss = filled(loce(mfs_size=4, mfs_k=16, mfs_m=4))
    memory = memory_of(loss)

    def draw(rank: int) -> torch.Tensor:
        monkeypatch.setattr(feature_sampling, "rank", lambda: rank)
        torch.manual_seed(0)
        return memory.sample().features

    assert torch.equal(draw(0), draw(0))
    assert not torch.equal(draw(0), draw(1))


def test_margin_off_is_softmax_ce_with_tracked_scores() -> None:
    """``margin: false`` (Table 1's MFS-only row): plain CE, same mean-score update."""
    g = torch.Generator().manual_seed(1)
    z, y, gt = torch.randn(6, C + 1, generator=g), torch.tensor([0, 1, 1, 2, 3, 0]), None
    plain, margin = (
        build_loss("ebl", num_classes=C, margin=False),
        build_loss("ebl", num_classes=C),
    )
    out = plain(z, y, gt_index=gt)["loss_cls"]
    with_margin = margin(z, y, gt_index=gt)["loss_cls"]
    torch.testing.assert_close(out, F.cross_entropy(z, y))
    assert not torch.isclose(out, with_margin)
    assert torch.equal(plain.mean_score, margin.mean_score)


def test_component_checks_its_settings() -> None:
    with pytest.raises(ValueError):
        FeatureSampling(C, size=0)
    with pytest.raises(ValueError):
        FeatureSampling(C, k=-1)
    assert "k=8, m=4" in repr(FeatureSampling(C))
