"""FineNet: the multi-scale fusion ("RefineNet" of CPN) that yields IOG's fine logits.

Parameter layout matches the released checkpoints: ``cascade.{i}.{j}`` bottlenecks (``cascade.3``
has none), ``final_predict.0`` bottleneck, ``final_predict.1`` conv, ``final_predict.2`` BN.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class FineBottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 bottleneck with output ``2 * planes`` and an always-present 1x1 projection
    on the shortcut (also when the channel count does not change, as in the official model)."""

    def __init__(self, inplanes: int, planes: int = 128) -> None:
        super().__init__()
        outplanes = planes * 2
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, outplanes, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(outplanes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = nn.Sequential(
            nn.Conv2d(inplanes, outplanes, kernel_size=1, bias=False),
            nn.BatchNorm2d(outplanes),
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.downsample(x))


def _cascade(channels: int, blocks: int, out_size: int) -> nn.Sequential:
    layers: list[nn.Module] = [FineBottleneck(channels, channels // 2) for _ in range(blocks)]
    layers.append(nn.Upsample(size=(out_size, out_size), mode="bilinear", align_corners=True))
    return nn.Sequential(*layers)


class FineNet(nn.Module):
    """Refine the four CoarseNet maps (deepest first) with 3/2/1/0 bottlenecks, upsample each to
    ``out_size``, concatenate (4 x 256 channels) and predict ``[N, num_class, out_size, out_size]``
    logits (no sigmoid). Resampling is bilinear with ``align_corners=True``."""

    def __init__(self, channels: int = 256, out_size: int = 128, num_class: int = 1) -> None:
        super().__init__()
        self.cascade = nn.ModuleList(_cascade(channels, 3 - i, out_size) for i in range(4))
        self.final_predict = nn.Sequential(
            FineBottleneck(4 * channels, channels // 2),
            nn.Conv2d(channels, num_class, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(num_class),
        )

    def forward(self, f0: Tensor, f1: Tensor, f2: Tensor, f3: Tensor) -> Tensor:
        fused = torch.cat(
            [self.cascade[0](f0), self.cascade[1](f1), self.cascade[2](f2), self.cascade[3](f3)],
            dim=1,
        )
        return self.final_predict(fused)
