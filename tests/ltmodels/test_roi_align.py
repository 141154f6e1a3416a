"""The separable CPU backward of RoIAlign against torchvision's kernel."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops import roi_align as tv_roi_align

from ltmodels.modeling.roi_align import FastMultiScaleRoIAlign, roi_align


def random_rois(n: int, images: int, h: int, w: int, scale: float, seed: int) -> torch.Tensor:
    """RoIs in image coordinates: most small, some large, some partly or wholly outside the
    map, some degenerate (zero width or height)."""
    g = torch.Generator().manual_seed(seed)
    size = torch.tensor([w / scale, h / scale])
    xy = torch.rand(n, 2, generator=g) * size * 1.2 - 0.1 * size
    wh = torch.rand(n, 2, generator=g) ** 3 * size
    rois = torch.cat([torch.randint(0, images, (n, 1), generator=g).float(), xy, xy + wh], 1)
    rois[: n // 10, 3:] = rois[: n // 10, 1:3]  # degenerate
    rois[n // 10 : n // 5, 1:] = torch.tensor([-50.0, -50.0, -20.0, -20.0])  # outside
    return rois


def close(got: torch.Tensor, want: torch.Tensor) -> None:
    """Equal up to float32 rounding of sums of many terms (another summation order)."""
    torch.testing.assert_close(got, want, rtol=1e-5, atol=2e-6 * float(want.abs().max()))


CASES = [  # images, channels, H, W, RoIs, output size, spatial scale, sampling ratio
    (2, 8, 32, 32, 300, (7, 7), 0.25, 2),
    (3, 4, 16, 24, 120, (14, 14), 0.125, 2),
    (2, 5, 10, 13, 60, (3, 5), 0.5, 1),
    (1, 3, 9, 7, 40, (4, 4), 1.0, 3),
]


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("case", CASES)
def test_forward_is_torchvisions_and_gradient_equals_its(case, aligned: bool) -> None:
    b, c, h, w, n, size, scale, ratio = case
    torch.manual_seed(n)
    x = torch.randn(b, c, h, w)
    rois = random_rois(n, b, h, w, scale, seed=n)
    grad = torch.randn(n, c, *size)
    x_tv, x_ours = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_tv = tv_roi_align(x_tv, rois, size, scale, ratio, aligned)
    out_ours = roi_align(x_ours, rois, size, scale, ratio, aligned)
    assert torch.equal(out_tv, out_ours)
    (out_tv * grad).sum().backward()
    (out_ours * grad).sum().backward()
    assert x_ours.grad is not None and x_tv.grad is not None
    assert x_tv.grad.abs().sum() > 0
    close(x_ours.grad, x_tv.grad)


def test_no_rois_and_an_image_without_rois() -> None:
    x = torch.randn(3, 4, 8, 8, requires_grad=True)
    empty = torch.zeros(0, 5)
    roi_align(x, empty, (2, 2), 1.0, 2).sum().backward()
    assert x.grad is not None and torch.equal(x.grad, torch.zeros_like(x))
    x.grad = None
    rois = torch.tensor([[2.0, 1.0, 1.0, 5.0, 6.0]])  # image 2 only
    roi_align(x, rois, (2, 2), 1.0, 2).sum().backward()
    assert x.grad is not None and x.grad[:2].abs().sum() == 0 and x.grad[2].abs().sum() > 0


def test_adaptive_sampling_and_no_grad_use_torchvision_as_is() -> None:
    x = torch.randn(2, 4, 12, 12)
    rois = random_rois(30, 2, 12, 12, 0.5, seed=1)
    x_tv, x_ours = x.clone().requires_grad_(), x.clone().requires_grad_()
    tv_roi_align(x_tv, rois, (3, 3), 0.5, -1).sum().backward()
    roi_align(x_ours, rois, (3, 3), 0.5, -1).sum().backward()
    assert torch.equal(x_ours.grad, x_tv.grad)  # type: ignore[arg-type]
    assert torch.equal(roi_align(x, rois, 3, 0.5, 2), tv_roi_align(x, rois, 3, 0.5, 2))


def test_multiscale_pooler_equals_torchvisions() -> None:
    torch.manual_seed(0)
    shapes = {"0": (32, 48), "1": (16, 24), "2": (8, 12)}
    feats = OrderedDict((k, torch.randn(2, 6, *hw)) for k, hw in shapes.items())
    g = torch.Generator().manual_seed(0)
    boxes = []
    for _ in range(2):
        xy = torch.rand(80, 2, generator=g) * torch.tensor([150.0, 100.0])
        wh = 2 + torch.rand(80, 2, generator=g) ** 2 * 120
        boxes.append(torch.cat([xy, xy + wh], 1))
    sizes = [(128, 192)] * 2
    grads = torch.randn(160, 6, 7, 7)
    outs, feature_grads = [], []
    for pooler in (
        MultiScaleRoIAlign(["0", "1", "2"], 7, 2),
        FastMultiScaleRoIAlign(["0", "1", "2"], 7, 2),
    ):
        leaves = OrderedDict((k, v.clone().requires_grad_()) for k, v in feats.items())
        out = pooler(leaves, boxes, sizes)
        (out * grads).sum().backward()
        outs.append(out)
        feature_grads.append([v.grad for v in leaves.values()])
    assert torch.equal(outs[0], outs[1])
    for a, b in zip(*feature_grads, strict=True):
        close(b, a)
