"""Backbones of :mod:`ltmodels.modeling.detector`: torchvision ResNets with a 256-channel FPN,
optionally from a local ImageNet state dict, and the ~1M-parameter tiny conv stack of the
embedded data, optionally from a trained tiny backbone's state dict."""

from __future__ import annotations

import pickle
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torchvision.models import resnet
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops.misc import FrozenBatchNorm2d

from ltmodels.errors import ConfigError


def norm_layer(kind: str) -> Callable[[int], nn.Module]:
    if kind == "bn":
        return nn.BatchNorm2d
    if kind == "frozen_bn":
        return FrozenBatchNorm2d
    return lambda c: nn.GroupNorm(32 if c % 32 == 0 and c >= 128 else 8, c)


def _conv(cin: int, cout: int, stride: int, norm: Callable[[int], nn.Module]) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False), norm(cout), nn.ReLU(inplace=True)
    )


class TinyBackbone(nn.Module):
    """Conv stack (strides 4, 8, 16; 32/64/128 channels) with a 64-channel FPN.

    Forward: images ``[B, 3, H, W]`` -> ``OrderedDict`` "0", "1", "2" (strides 4, 8, 16)
    and "pool" (stride 32), each ``[B, 64, h, w]``.
    """

    out_channels = 64

    def __init__(self, norm: Callable[[int], nn.Module]) -> None:
        super().__init__()
        self.stem = nn.Sequential(_conv(3, 16, 2, norm), _conv(16, 32, 2, norm))
        self.stage2 = nn.Sequential(_conv(32, 64, 2, norm), _conv(64, 64, 1, norm))
        self.stage3 = nn.Sequential(_conv(64, 128, 2, norm), _conv(128, 128, 1, norm))
        self.fpn = FeaturePyramidNetwork([32, 64, 128], 64, extra_blocks=LastLevelMaxPool())
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3) and m.bias is None:
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        c2 = self.stem(x)
        c3 = self.stage2(c2)
        c4 = self.stage3(c3)
        return self.fpn(OrderedDict([("0", c2), ("1", c3), ("2", c4)]))


def _weights(file: str) -> dict[str, torch.Tensor]:
    """A plain tensor state dict from a local file (``model.backbone_weights``)."""
    path = Path(file)
    if not path.is_file():
        raise ConfigError(f"model.backbone_weights: no file {path}")
    try:  # weights_only: a file that holds code (a pickled object) is refused, not run
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(
            f"model.backbone_weights: {path} is not a plain tensor state_dict ({first}); "
            "save the weights with torch.save(model.state_dict(), path)"
        ) from None
    if not isinstance(state, dict):
        raise ConfigError(f"model.backbone_weights: {path} holds no state_dict")
    return state


def tiny_backbone(norm: str, weights: str | None = None) -> TinyBackbone:
    """The tiny backbone, from a state dict of a trained one when ``backbone_weights`` names
    one: the backbone's own keys, or a whole detector's (its ``backbone.`` keys are taken)."""
    backbone = TinyBackbone(norm_layer(norm))
    if weights is None:
        return backbone
    state = _weights(weights)
    if any(k.startswith("backbone.") for k in state):
        state = {
            k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")
        }
    own = backbone.state_dict()
    if set(state) != set(own) or any(state[k].shape != own[k].shape for k in own):
        missing = sorted(set(own) - set(state))[:3]
        raise ConfigError(
            f"model.backbone_weights: {weights} is not a state dict of the tiny "
            f"backbone with norm {norm!r} (missing or different: {missing or 'shapes'}); "
            "save TinyBackbone.state_dict() or the detector's state_dict()"
        )
    backbone.load_state_dict(state)
    return backbone


def resnet_fpn(
    backbone: str, norm: str, weights: str | None, trainable_layers: int
) -> BackboneWithFPN:
    """ResNet body (optionally ImageNet weights from a local file) with a 256-channel FPN."""
    name = backbone.removesuffix("_fpn")
    body = getattr(resnet, name)(weights=None, norm_layer=norm_layer(norm))
    if weights is not None:
        state = _weights(weights)
        body.load_state_dict(
            {k: v for k, v in state.items() if not k.startswith("fc.")}, strict=False
        )
    train = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable_layers]
    if trainable_layers == 5:
        train.append("bn1")
    for pname, p in body.named_parameters():
        if not any(pname.startswith(layer) for layer in train):
            p.requires_grad_(False)
    c = body.inplanes // 8  # 64 for BasicBlock nets, 256 for Bottleneck nets
    return BackboneWithFPN(
        body,
        {f"layer{i}": str(i - 1) for i in range(1, 5)},
        [c * 2 ** (i - 1) for i in range(1, 5)],
        256,
        extra_blocks=LastLevelMaxPool(),
        norm_layer=norm_layer(norm) if norm == "gn" else None,
    )


__all__ = ["TinyBackbone", "norm_layer", "resnet_fpn", "tiny_backbone"]
