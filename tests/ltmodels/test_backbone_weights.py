"""``model.backbone_weights`` for the tiny backbone: a trained backbone's (or a whole tiny
detector's) state dict starts a detector, and a state dict of another network is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ltmodels.errors import ConfigError
from ltmodels.losses import build_loss
from ltmodels.modeling.detector import ModelSpec, build_detector

C = 3


def detector(weights: Path | None = None, norm: str = "gn") -> torch.nn.Module:
    spec = ModelSpec.tiny(min_size=64, max_size=64, norm=norm, masks=False,
                          backbone_weights=None if weights is None else str(weights))  # fmt: skip
    return build_detector(spec, build_loss("ce", num_classes=C), C)


def backbone_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.backbone.state_dict(), b.backbone.state_dict()  # type: ignore[union-attr]
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("whole", [False, True], ids=["backbone-state", "detector-state"])
def test_tiny_detector_starts_from_saved_backbone(tmp_path: Path, whole: bool) -> None:
    torch.manual_seed(1)
    trained = detector()
    with torch.no_grad():  # weights no fresh initialisation draws
        for p in trained.backbone.parameters():
            p.add_(0.5)
    state = trained.state_dict() if whole else trained.backbone.state_dict()
    torch.save(state, tmp_path / "w.pt")
    torch.manual_seed(2)
    assert not backbone_equal(detector(), trained)
    started = detector(tmp_path / "w.pt")
    assert backbone_equal(started, trained)
    # only the backbone comes from the file: the heads are initialised as without it
    torch.manual_seed(2)
    fresh = detector()
    torch.manual_seed(2)
    again = detector(tmp_path / "w.pt")
    rpn_a, rpn_b = fresh.rpn.state_dict(), again.rpn.state_dict()  # type: ignore[union-attr]
    assert all(torch.equal(rpn_a[k], rpn_b[k]) for k in rpn_a)


def test_a_state_dict_of_another_network_is_refused_in_one_line(tmp_path: Path) -> None:
    torch.save(torch.nn.Linear(2, 2).state_dict(), tmp_path / "linear.pt")
    with pytest.raises(ConfigError, match=r"^model.backbone_weights: .*linear\.pt is not a state "
                       r"dict of the tiny backbone"):  # fmt: skip
        detector(tmp_path / "linear.pt")
    torch.save(detector(norm="bn").backbone.state_dict(), tmp_path / "bn.pt")
    with pytest.raises(ConfigError, match="norm 'gn'"):
        detector(tmp_path / "bn.pt")
    with pytest.raises(ConfigError, match="no file"):
        detector(tmp_path / "absent.pt")
