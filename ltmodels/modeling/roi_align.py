"""RoIAlign with a fast CPU backward pass, and the multi-scale pooler that uses it.

torchvision's CPU ``roi_align`` backward adds each output gradient to its 4 bilinear
neighbours for every sampling point, one scalar at a time: it was 48 % of a training step of
the tiny Mask R-CNN on one CPU core (the box and the mask pooler, 3 FPN levels each). Here the
forward pass stays torchvision's (the same values), and the backward pass uses that RoIAlign
with a fixed ``sampling_ratio`` is separable: with the bilinear weights of the sampling
points of output row ``ph`` summed into a ``[PH, H]`` matrix ``Wy`` (column ``pw``: ``[PW,
W]``, ``Wx``), each RoI's output is ``Wy X Wx^T`` per channel, so the gradient of the feature
map of an image is ``sum_r Wy_r^T G_r Wx_r``: two small matrix products per RoI over the
window of rows and columns its points touch, instead of ``C PH PW 16`` scalar updates. RoIs
whose window spans 32 or more rows or columns (near the map's size) keep torchvision's
backward, which costs less there. On the tiny Mask R-CNN's training step (one core) the
backward of both poolers went from 1.04 s to 0.36-0.45 s per 8 steps; the separable
forward, tried too, was slower than torchvision's and is not used.

The weights follow torchvision's kernel exactly (``aligned=False`` and ``True``): RoI sides of
at least one feature pixel (unaligned), ``sampling_ratio`` points per bin side at the bin's
sub-cell centres, a point outside ``[-1, H] x [-1, W]`` contributes nothing, one inside is
clamped at 0 and at the last row / column, the average divides by ``sampling_ratio ** 2``.
The gradients equal torchvision's up to float rounding (summation order); the tests compare
them. An adaptive ``sampling_ratio`` (<= 0: points per bin from the RoI size), CUDA tensors and
double precision take torchvision's own backward.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops import roi_align as tv_roi_align
from torchvision.ops.poolers import _convert_to_roi_format, _filter_input, _setup_scales

_LARGE_WINDOW = 32  # RoIs whose points span this many rows or columns: torchvision's backward


def _axis_points(
    start: Tensor, size: Tensor, bins: int, ratio: int, extent: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One axis of the RoIs' sampling points, ``[R, bins, ratio]`` each: the lower and upper
    neighbour rows (or columns), the weight of the upper one, and the point's weight
    (``1 / ratio``, 0 outside the map): torchvision's ``bilinear_interpolate`` rules."""
    dev, dt = start.device, start.dtype
    bin_size = size / bins  # [R]
    steps = torch.arange(bins, device=dev, dtype=dt)[:, None]  # [bins, 1]
    sub = (torch.arange(ratio, device=dev, dtype=dt) + 0.5)[None, :] / ratio  # [1, ratio]
    pos = start[:, None, None] + bin_size[:, None, None] * (steps + sub)[None]  # [R, bins, ratio]
    valid = (pos >= -1.0) & (pos <= extent)
    pos = pos.clamp(min=0.0)
    low = pos.floor().long()
    edge = low >= extent - 1
    low = torch.where(edge, torch.full_like(low, extent - 1), low)
    high = torch.where(edge, low, low + 1)
    pos = torch.where(edge, low.to(dt), pos)
    return low, high, pos - low.to(dt), valid.to(dt) / ratio


def _window_weights(
    low: Tensor, high: Tensor, frac: Tensor, weight: Tensor, first: Tensor, k: int
) -> Tensor:
    """``[R, bins, k]``: each bin's points' summed weights over the ``k`` rows (columns)
    from ``first [R]`` on."""
    w = torch.zeros(*low.shape[:2], k, device=low.device, dtype=frac.dtype)
    w.scatter_add_(2, low - first[:, None, None], (1.0 - frac) * weight)
    w.scatter_add_(2, high - first[:, None, None], frac * weight)
    return w


Groups = list[tuple[Tensor, Tensor, Tensor, Tensor]]


def _groups(
    rois: Tensor, shape: torch.Size, pooled: tuple[int, int], scale: float, ratio: int,
    aligned: bool, dtype: torch.dtype,
) -> Groups:  # fmt: skip
    """The RoIs grouped by the size of the window their points touch (powers of two ``K``,
    so that the many small RoIs of a detection batch cost ``K = 4`` or 8); per group: the
    RoI indices, ``Wy [n, PH, K]``, ``Wx [n, PW, K]`` and the window's flat cell indices
    ``[n, K, K]`` into the ``[B * H * W]`` map (a window past the map's edge repeats its
    last row or column there, where the weights are 0)."""
    _, _, height, width = shape
    r = rois.to(dtype)
    offset = 0.5 if aligned else 0.0
    x1, y1 = r[:, 1] * scale - offset, r[:, 2] * scale - offset
    w, h = r[:, 3] * scale - offset - x1, r[:, 4] * scale - offset - y1
    if not aligned:  # torchvision: force malformed RoIs to be 1x1
        w, h = w.clamp(min=1.0), h.clamp(min=1.0)
    ys = _axis_points(y1, h, pooled[0], ratio, height)
    xs = _axis_points(x1, w, pooled[1], ratio, width)
    top, left = ys[0].amin(dim=(1, 2)), xs[0].amin(dim=(1, 2))
    span = torch.maximum(ys[1].amax(dim=(1, 2)) - top, xs[1].amax(dim=(1, 2)) - left) + 1
    group = torch.ceil(torch.log2(span.clamp(min=4).double())).long()  # K = 2 ** group
    image = rois[:, 0].long()
    out = []
    for g in torch.unique(group).tolist():
        sel = torch.where(group == g)[0]
        k = 2**g
        wy = _window_weights(*(t[sel] for t in ys), top[sel], k)
        wx = _window_weights(*(t[sel] for t in xs), left[sel], k)
        steps = torch.arange(k, device=rois.device)
        rows = (top[sel, None] + steps).clamp(max=height - 1)
        cols = (left[sel, None] + steps).clamp(max=width - 1)
        cells = (image[sel, None, None] * height + rows[:, :, None]) * width + cols[:, None, :]
        out.append((sel, wy, wx, cells))
    return out


def _input_grad(grad: Tensor, groups: Groups, shape: torch.Size) -> Tensor:
    """``sum_r Wy_r^T G_r Wx_r`` at each RoI's window: the gradient of the input."""
    b, c, height, width = shape
    out = grad.new_zeros((b * height * width, c))  # channels last: a window's cells are rows
    for sel, wy, wx, cells in groups:
        n, ph, k = wy.shape
        pw = wx.shape[1]
        t = torch.bmm(grad[sel].reshape(n, c * ph, pw), wx)  # [n, C * PH, Kx]
        t = t.reshape(n, c, ph, k).transpose(1, 2).reshape(n, ph, c * k)
        u = torch.bmm(wy.transpose(1, 2), t).reshape(n, k, c, k).transpose(2, 3)  # [n,Ky,Kx,C]
        out.index_add_(0, cells.reshape(-1), u.reshape(-1, c))
    return out.reshape(b, height, width, c).permute(0, 3, 1, 2)


class _RoIAlign(torch.autograd.Function):
    """torchvision's forward; the separable backward of this module."""

    @staticmethod
    def forward(
        ctx: Any, x: Tensor, rois: Tensor, pooled: tuple[int, int], scale: float, ratio: int,
        aligned: bool,
    ) -> Tensor:  # fmt: skip
        ctx.save_for_backward(rois)
        ctx.args = (x.shape, pooled, scale, ratio, aligned)
        return tv_roi_align(x, rois, pooled, scale, ratio, aligned)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        (rois,) = ctx.saved_tensors
        shape, pooled, scale, ratio, aligned = ctx.args
        grad = grad.contiguous()
        groups = _groups(rois, shape, pooled, scale, ratio, aligned, grad.dtype)
        small = [g for g in groups if g[1].shape[2] < _LARGE_WINDOW]
        gx = _input_grad(grad, small, shape)
        large = [g[0] for g in groups if g[1].shape[2] >= _LARGE_WINDOW]
        if large:  # windows near the map's size: torchvision's scalar loop costs less
            sel = torch.cat(large)
            b, c, h, w = shape
            gx = gx + torch.ops.torchvision._roi_align_backward(
                grad[sel], rois[sel], scale, *pooled, b, c, h, w, ratio, aligned
            )
        return gx, None, None, None, None, None


def roi_align(
    x: Tensor,
    rois: Tensor,
    output_size: int | tuple[int, int] | list[int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> Tensor:
    """``torchvision.ops.roi_align`` (``rois`` as an ``[R, 5]`` tensor), whose CPU backward
    is the separable one of this module when ``sampling_ratio > 0`` and ``x`` is float32."""
    pooled = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
    fast = (
        x.requires_grad and x.device.type == "cpu" and x.dtype == torch.float32
        and sampling_ratio > 0
    )  # fmt: skip
    if not fast:
        return tv_roi_align(x, rois, pooled, spatial_scale, sampling_ratio, aligned)
    return _RoIAlign.apply(x, rois, pooled, float(spatial_scale), int(sampling_ratio), aligned)


class FastMultiScaleRoIAlign(MultiScaleRoIAlign):
    """torchvision's ``MultiScaleRoIAlign`` (same levels, scales and values) on
    :func:`roi_align`."""

    def forward(
        self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]
    ) -> Tensor:
        feats = _filter_input(x, self.featmap_names)
        if self.scales is None or self.map_levels is None:
            self.scales, self.map_levels = _setup_scales(
                feats, image_shapes, self.canonical_scale, self.canonical_level
            )
        rois = _convert_to_roi_format(boxes)
        size, ratio = self.output_size, self.sampling_ratio
        if len(feats) == 1:
            return roi_align(feats[0], rois, size, self.scales[0], ratio)
        levels = self.map_levels(boxes)
        first = feats[0]
        result = first.new_zeros((len(rois), first.shape[1], *size))
        for level, (feat, scale) in enumerate(zip(feats, self.scales, strict=True)):
            idx = torch.where(levels == level)[0]
            result[idx] = roi_align(feat, rois[idx], size, scale, ratio).to(result.dtype)
        return result


__all__ = ["FastMultiScaleRoIAlign", "roi_align"]
