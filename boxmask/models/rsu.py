"""The residual U-blocks (RSU) that U²-Net is built from (Qin et al., Pattern Recognition 2020).

An RSU block is a small U-Net with a residual connection: an input convolution maps ``in`` to
``out`` channels (``x_in``), an encoder of 3x3 convolutions at ``mid`` channels halves the
resolution ``height - 2`` times (2x2 max-pooling, ``ceil_mode``), a dilated convolution (dilation 2)
sits at the bottom, and a decoder concatenates ``[deeper, skip]`` along the channels, convolves and
upsamples (bilinear, ``align_corners=False``) back; the block returns ``decoder + x_in``.
``RSU4F`` keeps the resolution and grows the dilation instead (1, 2, 4, 8).

Every convolution is 3x3 with ``padding = dilation`` and is followed by a ReLU. Upstream trains
Conv-BatchNorm-ReLU; the released weights have the BatchNorm folded into the convolution (as in
the exported ONNX graphs they are read from), so a unit here is Conv(+bias)-ReLU.
Feature maps are ``[N, C, H, W]``; any ``H, W`` works (odd sizes are handled by ``ceil_mode``
pooling and upsampling to the skip's exact size).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ConvReLU(nn.Sequential):
    """3x3 convolution (``padding = dilation``, with bias) and ReLU."""

    def __init__(self, in_channels: int, out_channels: int, dilation: int = 1) -> None:
        super().__init__(nn.Conv2d(in_channels, out_channels, 3, padding=dilation,
                                   dilation=dilation), nn.ReLU(inplace=True))


def upsample_like(x: Tensor, like: Tensor) -> Tensor:
    """``x`` resized bilinearly (``align_corners=False``) to the spatial size of ``like``."""
    if x.shape[-2:] == like.shape[-2:]:
        return x
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)


def _pool(x: Tensor) -> Tensor:
    return F.max_pool2d(x, 2, 2, ceil_mode=True)


class RSU(nn.Module):
    """RSU-``height`` (``height`` in 4..7): a U-Net of ``height - 1`` encoder levels.

    ``encoder[0]`` maps ``out -> mid``; ``encoder[1:]`` are ``mid -> mid`` and ``bottom`` is the
    dilated ``mid -> mid``; ``decoder[k]`` maps ``2 mid -> mid`` except ``decoder[0]``
    (``2 mid -> out``), applied deepest first.
    """

    def __init__(self, height: int, in_channels: int, mid_channels: int,
                 out_channels: int) -> None:
        super().__init__()
        if height < 3:
            raise ValueError("an RSU block needs a height of at least 3")
        self.height = height
        self.conv_in = ConvReLU(in_channels, out_channels)
        self.encoder = nn.ModuleList(
            [ConvReLU(out_channels, mid_channels)]
            + [ConvReLU(mid_channels, mid_channels) for _ in range(height - 2)])
        self.bottom = ConvReLU(mid_channels, mid_channels, dilation=2)
        self.decoder = nn.ModuleList(
            [ConvReLU(2 * mid_channels, out_channels)]
            + [ConvReLU(2 * mid_channels, mid_channels) for _ in range(height - 2)])

    def forward(self, x: Tensor) -> Tensor:
        x_in = self.conv_in(x)
        skips = []
        h = x_in
        for level, conv in enumerate(self.encoder):
            if level > 0:
                h = _pool(h)
            h = conv(h)
            skips.append(h)
        h = self.bottom(h)
        for level in range(len(self.decoder) - 1, -1, -1):
            h = self.decoder[level](torch.cat((h, skips[level]), 1))
            if level > 0:
                h = upsample_like(h, skips[level - 1])
        return h + x_in


class RSU4F(nn.Module):
    """RSU-4F: the resolution-keeping block of the deepest stages (dilations 1, 2, 4, 8)."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv_in = ConvReLU(in_channels, out_channels)
        self.encoder = nn.ModuleList(
            [ConvReLU(out_channels, mid_channels, 1), ConvReLU(mid_channels, mid_channels, 2),
             ConvReLU(mid_channels, mid_channels, 4)])
        self.bottom = ConvReLU(mid_channels, mid_channels, dilation=8)
        self.decoder = nn.ModuleList(
            [ConvReLU(2 * mid_channels, out_channels, 1),
             ConvReLU(2 * mid_channels, mid_channels, 2),
             ConvReLU(2 * mid_channels, mid_channels, 4)])

    def forward(self, x: Tensor) -> Tensor:
        x_in = self.conv_in(x)
        skips = []
        h = x_in
        for conv in self.encoder:
            h = conv(h)
            skips.append(h)
        h = self.bottom(h)
        for level in range(len(self.decoder) - 1, -1, -1):
            h = self.decoder[level](torch.cat((h, skips[level]), 1))
        return h + x_in
