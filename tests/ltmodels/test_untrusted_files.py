"""Files a study reads that someone else may have written (a checkpoint, backbone
weights) cannot run code: they are loaded with ``torch.load(weights_only=True)``, and a
file holding a pickled object is refused before anything in it runs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from ltmodels.engine.checkpoint import load_checkpoint, save_checkpoint
from ltmodels.errors import ConfigError
from ltmodels.losses import build_loss
from ltmodels.modeling.detector import ModelSpec, build_detector


class Payload:
    """Unpickling this would create the file ``target``: the proof that code ran."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[object, tuple[str, int]]:
        return (os.open, (str(self.target), os.O_CREAT | os.O_WRONLY))


def test_a_checkpoint_holding_code_is_refused_unrun(tmp_path: Path) -> None:
    proof = tmp_path / "code-ran"
    path = tmp_path / "ckpt.pt"
    torch.save({"format": "x", "model": Payload(proof)}, path)
    with pytest.raises(Exception, match="[Ww]eights only load failed|Unsupported global"):
        load_checkpoint(path, model=torch.nn.Linear(2, 2))
    assert not proof.exists()
    good = tmp_path / "good.pt"
    save_checkpoint(good, model=torch.nn.Linear(2, 2), epoch=0)
    assert load_checkpoint(good, model=torch.nn.Linear(2, 2))["epoch"] == 0


def test_backbone_weights_holding_code_are_one_line_unrun(tmp_path: Path) -> None:
    proof = tmp_path / "code-ran"
    path = tmp_path / "r18.pth"
    torch.save({"conv1.weight": Payload(proof)}, path)
    spec = ModelSpec(backbone="resnet18_fpn", backbone_weights=str(path), norm="gn")
    with pytest.raises(ConfigError, match=r"^model.backbone_weights: .*r18\.pth is not a plain"):
        build_detector(spec, build_loss("ce", num_classes=3), 3)
    assert not proof.exists()
