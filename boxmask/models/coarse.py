"""CoarseNet: the FPN-like ("GlobalNet") decoder of IOG that fuses PSP and backbone features.

Parameter layout matches the released checkpoints: ``laterals.{i}.{0,1}``,
``upsamples.{i}.{1,2}`` (index 0 is the parameter-free upsampling) and
``predict.{i}.{0,1,3,5}`` (ReLU at 2 and the upsampling at 4 have no parameters).
``upsamples.0`` exists in the checkpoints but is never called by the official forward; it is kept
(and likewise never called) so that its weights load.
"""

from __future__ import annotations

from torch import Tensor, nn


def _lateral(in_channels: int, channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, channels, kernel_size=1, bias=False),
        nn.BatchNorm2d(channels),
        nn.ReLU(inplace=True),
    )


def _upsample(channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
        nn.Conv2d(channels, channels, kernel_size=1, bias=False),
        nn.BatchNorm2d(channels),
    )


def _predict(channels: int, out_size: int, num_class: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(channels, channels, kernel_size=1, bias=False),
        nn.BatchNorm2d(channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(channels, num_class, kernel_size=3, padding=1, bias=False),
        nn.Upsample(size=(out_size, out_size), mode="bilinear", align_corners=True),
        nn.BatchNorm2d(num_class),
    )


class CoarseNet(nn.Module):
    """Top-down fusion of ``[psp, layer3, layer2, layer1]`` (deepest first) into four 256-channel
    maps.

    At a 512 x 512 network input the inputs are 512 x 32^2, 1024 x 32^2, 512 x 64^2 and 256 x 128^2;
    ``features`` returns 256-channel maps at 32^2, 32^2, 64^2 and 128^2, and ``predict`` turns each
    into a ``[N, num_class, out_size, out_size]`` logit map (no sigmoid).
    """

    def __init__(
        self,
        channel_settings: tuple[int, ...] = (512, 1024, 512, 256),
        out_size: int = 128,
        num_class: int = 1,
        channels: int = 256,
    ) -> None:
        super().__init__()
        self.laterals = nn.ModuleList(_lateral(c, channels) for c in channel_settings)
        self.upsamples = nn.ModuleList(_upsample(channels) for _ in range(3))
        self.predict = nn.ModuleList(
            _predict(channels, out_size, num_class) for _ in channel_settings
        )

    def features(
        self, psp: Tensor, layer3: Tensor, layer2: Tensor, layer1: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The four fused feature maps (what FineNet consumes), without the prediction heads."""
        f0 = self.laterals[0](psp)
        f1 = self.laterals[1](layer3) + f0  # same resolution: no upsampling (official behaviour)
        f2 = self.laterals[2](layer2) + self.upsamples[1](f1)
        f3 = self.laterals[3](layer1) + self.upsamples[2](f2)
        return f0, f1, f2, f3

    def heads(
        self, f0: Tensor, f1: Tensor, f2: Tensor, f3: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Coarse logit maps ``[N, num_class, out_size, out_size]`` of the four fused maps."""
        return self.predict[0](f0), self.predict[1](f1), self.predict[2](f2), self.predict[3](f3)

    def forward(
        self, psp: Tensor, layer3: Tensor, layer2: Tensor, layer1: Tensor
    ) -> tuple[tuple[Tensor, Tensor, Tensor, Tensor], tuple[Tensor, Tensor, Tensor, Tensor]]:
        """``(features, coarse logits)``, each a 4-tuple ordered deepest first."""
        fms = self.features(psp, layer3, layer2, layer1)
        return fms, self.heads(fms[0], fms[1], fms[2], fms[3])
