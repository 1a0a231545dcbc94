"""ResNet-101 backbone of IOG: DeepLab-style, output stride 16, multi-grid dilated last stage.

Parameter names equal torchvision's ``resnet101`` (``conv1``, ``bn1``, ``layerN.i.conv1..3``,
``bn1..3``, ``downsample.0/1``) with a 5-channel stem, so the released IOG checkpoints load under
the ``backbone.`` prefix without renaming.

At a 1 x 5 x 512 x 512 input the four stages return 256 x 128^2 (layer1, stride 4),
512 x 64^2 (layer2, stride 8), 1024 x 32^2 (layer3, stride 16) and 2048 x 32^2 (layer4, stride 16,
dilations 2/4/8 instead of a further stride).
"""

from __future__ import annotations

from torch import Tensor, nn


class Bottleneck(nn.Module):
    """ResNet bottleneck (1x1 -> 3x3 -> 1x1, expansion 4) with the stride on the 3x3 conv."""

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        dilation: int = 1,
        downsample: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(
            planes, planes, kernel_size=3, stride=stride, padding=dilation, dilation=dilation,
            bias=False,
        )
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample if downsample is not None else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.downsample(x))


def _downsample(inplanes: int, outplanes: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inplanes, outplanes, kernel_size=1, stride=stride, bias=False),
        nn.BatchNorm2d(outplanes),
    )


def _make_stage(
    inplanes: int, planes: int, dilations: list[int], stride: int
) -> tuple[nn.Sequential, int]:
    """A stage of ``len(dilations)`` bottlenecks; block 0 carries the stride and the projection."""
    outplanes = planes * Bottleneck.expansion
    blocks = [
        Bottleneck(inplanes, planes, stride, dilations[0], _downsample(inplanes, outplanes, stride))
    ]
    blocks += [Bottleneck(outplanes, planes, 1, d) for d in dilations[1:]]
    return nn.Sequential(*blocks), outplanes


MULTI_GRID = (1, 2, 4)
"""Dilation multipliers of the last stage's blocks (cycled when it has more than three)."""


class ResNetBackbone(nn.Module):
    """ResNet-101 (blocks 3/4/23/3), output stride 16, ``in_channels`` input planes.

    ``width`` (64) is the planes of the first stage and ``blocks`` the bottlenecks per stage; the
    defaults are the official network, other values give reduced variants of the same design.
    ``forward`` returns ``(layer4, layer3, layer2, layer1)``, deepest first (the official order).
    """

    def __init__(self, in_channels: int = 5, width: int = 64,
                 blocks: tuple[int, int, int, int] = (3, 4, 23, 3)) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1, ch = _make_stage(width, width, [1] * blocks[0], stride=1)
        self.layer2, ch = _make_stage(ch, 2 * width, [1] * blocks[1], stride=2)
        self.layer3, ch = _make_stage(ch, 4 * width, [1] * blocks[2], stride=2)
        # Multi-grid unit: base dilation 2 times the grid (1, 2, 4) and no stride (keeps stride 16).
        grid = [2 * MULTI_GRID[i % len(MULTI_GRID)] for i in range(blocks[3])]
        self.layer4, ch = _make_stage(ch, 8 * width, grid, stride=1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        l1 = self.layer1(x)
        l2 = self.layer2(l1)
        l3 = self.layer3(l2)
        l4 = self.layer4(l3)
        return l4, l3, l2, l1
