"""Detection transforms keep boxes, masks and images consistent."""

from __future__ import annotations

import pytest
import torch

from ltmodels.data import (
    Compose,
    RandomHorizontalFlip,
    ResizeShortestEdge,
    build_transforms,
)
from ltmodels.data.transforms import resized_shape
from ltmodels.errors import ConfigError


def _sample(height: int = 20, width: int = 40):
    """Image [3, H, W] with distinct pixels; two boxes with their rectangle masks."""
    image = torch.arange(3 * height * width, dtype=torch.float32).reshape(3, height, width)
    boxes = torch.tensor([[2.0, 4.0, 10.0, 12.0], [20.0, 0.0, 36.0, 8.0]])
    masks = torch.zeros(2, height, width, dtype=torch.uint8)
    for m, (x1, y1, x2, y2) in zip(masks, boxes.long().tolist(), strict=True):
        m[y1:y2, x1:x2] = 1
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    target = {"boxes": boxes, "masks": masks, "area": area, "labels": torch.tensor([1, 2])}
    return image, target


def _mask_box(mask: torch.Tensor) -> list[int]:
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


def test_flip_by_hand_and_twice_is_identity() -> None:
    image, target = _sample()
    flip = RandomHorizontalFlip(p=1.0)
    f_image, f_target = flip(image, target)
    # width 40: x1' = 40 - x2, x2' = 40 - x1
    assert f_target["boxes"].tolist() == [[30, 4, 38, 12], [4, 0, 20, 8]]
    assert [_mask_box(m) for m in f_target["masks"]] == f_target["boxes"].long().tolist()
    assert torch.equal(f_image[:, :, 0], image[:, :, -1])
    assert torch.equal(f_target["labels"], target["labels"])
    b_image, b_target = flip(f_image, f_target)
    assert torch.equal(b_image, image)
    assert torch.equal(b_target["boxes"], target["boxes"])
    assert torch.equal(b_target["masks"], target["masks"])


def test_flip_never_with_p_zero_and_about_half_by_default() -> None:
    image, target = _sample()
    out_image, out_target = RandomHorizontalFlip(p=0.0)(image, target)
    assert out_image is image and out_target is target
    torch.manual_seed(0)
    flip = RandomHorizontalFlip()
    flipped = sum(flip(image, target)[1]["boxes"][0, 0].item() != 2.0 for _ in range(200))
    assert 70 < flipped < 130


def test_resize_scales_boxes_masks_and_area() -> None:
    image, target = _sample(height=20, width=40)
    out_image, out = ResizeShortestEdge((10,), max_size=100)(image, target)
    assert out_image.shape == (3, 10, 20)
    assert out["boxes"].tolist() == [[1, 2, 5, 6], [10, 0, 18, 4]]
    assert out["area"].tolist() == [16, 32]
    assert out["masks"].shape == (2, 10, 20) and out["masks"].dtype == torch.uint8
    assert [_mask_box(m) for m in out["masks"]] == out["boxes"].long().tolist()
    assert target["boxes"][0, 2].item() == 10.0  # input not modified


def test_resize_caps_the_long_edge() -> None:
    # short edge 30 would make the long edge 60 > 50: scale 50 / 40 = 1.25 instead
    assert resized_shape(20, 40, 30, 50) == (25, 50)
    image, target = _sample(height=20, width=40)
    out_image, out = ResizeShortestEdge((30,), max_size=50)(image, target)
    assert out_image.shape == (3, 25, 50)
    assert out["boxes"][0].tolist() == [2.5, 5.0, 12.5, 15.0]


def test_resize_without_annotations() -> None:
    image = torch.rand(3, 12, 16)
    target = {"boxes": torch.zeros(0, 4), "masks": torch.zeros(0, 12, 16, dtype=torch.uint8)}
    out_image, out = ResizeShortestEdge((24,), max_size=1000)(image, target)
    assert out_image.shape == (3, 24, 32)
    assert out["boxes"].shape == (0, 4) and out["masks"].shape == (0, 24, 32)


def test_scale_jitter_draws_every_size() -> None:
    torch.manual_seed(0)
    resize = ResizeShortestEdge((8, 10, 12), max_size=1000)
    image, target = _sample(height=20, width=40)
    heights = {resize(image, target)[0].shape[1] for _ in range(60)}
    assert heights == {8, 10, 12}


def test_build_transforms() -> None:
    image, target = _sample(height=20, width=40)
    evaluation = build_transforms(False, (8, 10), max_size=1000)
    for _ in range(10):
        out_image, out = evaluation(image, target)  # one size, no flip: deterministic
        assert out_image.shape == (3, 10, 20)
        assert out["boxes"][0].tolist() == [1, 2, 5, 6]
    train = build_transforms(True, (8, 10), max_size=1000)
    assert isinstance(train, Compose)
    assert [type(t) for t in train.transforms] == [ResizeShortestEdge, RandomHorizontalFlip]


@pytest.mark.parametrize(("min_sizes", "max_size"), [((), 10), ((0,), 10), ((10,), 0)])
def test_invalid_sizes(min_sizes, max_size) -> None:
    with pytest.raises(ConfigError, match="positive sizes"):
        ResizeShortestEdge(min_sizes, max_size)
    with pytest.raises(ConfigError, match="positive sizes"):
        build_transforms(False, min_sizes, max_size)
