"""The IOG interactive-refinement network (the "lightweight branch" for extra clicks).

Same backbone, CoarseNet and FineNet as ``IOGNetwork``; a guidance branch (``iog_points``) encodes
a 2-channel click map (positive, negative; values 0..255, 512 x 512) to 64 x 32^2 features that are
concatenated to layer4 before the PSP module. The backbone runs once per image; each new set of
clicks only re-runs the decoder. Architecture of ``IOG_PASCAL_SBD_REFINEMENT.pth`` (948 state-dict
entries).
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor, nn

from .config import IOGConfig
from .iog import IOGNetworkBase

GUIDANCE_FEATURES = 64


def guidance_branch(in_channels: int = 2, out_channels: int = GUIDANCE_FEATURES,
                    widths: tuple[int, ...] = (64, 128, 256, 256)) -> nn.Sequential:
    """Four stride-2 3x3 conv/BN/ReLU blocks (``widths``: 64, 128, 256, 256 channels) and a 1x1
    conv/BN/ReLU to ``out_channels``: ``[N, 2, 512, 512]`` -> ``[N, 64, 32, 32]``. Indices 0..14 as
    in the checkpoint (``iog_points.{0,3,6,9,12}`` convs, ``iog_points.{1,4,7,10,13}`` BNs)."""
    layers: list[nn.Module] = []
    channels = in_channels
    for width in widths:
        layers += [
            nn.Conv2d(channels, width, kernel_size=3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        ]
        channels = width
    layers += [
        nn.Conv2d(channels, out_channels, kernel_size=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]
    return nn.Sequential(*layers)


class IOGRefinementNetwork(IOGNetworkBase):
    """IOG with a click-guidance branch.

    ``backbone_features(x)`` once per image (``x`` as for ``IOGNetwork``), then
    ``decode(features, guidance)`` per click map: ``guidance`` float32 ``[N, 2, 512, 512]``,
    channel 0 = positive clicks, channel 1 = negative clicks, Gaussian heatmaps in 0..255.
    """

    def __init__(self, config: IOGConfig | None = None) -> None:
        cfg = config if config is not None else IOGConfig(architecture="iog-refinement")
        if not cfg.refinement:  # the same sizes with the click branch
            cfg = replace(cfg, architecture="iog-refinement")
        super().__init__(cfg, psp_extra=cfg.guidance_features)
        self.iog_points = guidance_branch(2, cfg.guidance_features, cfg.guidance_widths)

    def _deep(self, layer4: Tensor, guidance: Tensor) -> Tensor:
        return torch.cat([layer4, self.iog_points(guidance)], dim=1)

    @torch.jit.export
    def decode(
        self, features: tuple[Tensor, Tensor, Tensor, Tensor], guidance: Tensor
    ) -> list[Tensor]:
        """``[coarse0, coarse1, coarse2, coarse3, fine]`` logits, each ``[N, 1, 512, 512]``."""
        l4, l3, l2, l1 = features
        return self._decode_all(self._deep(l4, guidance), l3, l2, l1)

    @torch.jit.export
    def decode_fine(
        self, features: tuple[Tensor, Tensor, Tensor, Tensor], guidance: Tensor
    ) -> Tensor:
        """``decode(features, guidance)[4]`` without computing the coarse outputs."""
        l4, l3, l2, l1 = features
        return self._decode_fine(self._deep(l4, guidance), l3, l2, l1)

    def fine_logits(self, x: Tensor, guidance: Tensor | None = None) -> Tensor:
        """The forward contract of every IOG network family: fine logits ``[N, 1, S, S]`` of the
        input ``x`` with the click maps ``guidance`` (default: the input's own heatmaps
        ``x[:, 3:5]``, i.e. no extra click)."""
        return self.decode_fine(self.backbone(x), x[:, 3:5] if guidance is None else guidance)

    def forward(self, x: Tensor, guidance: Tensor) -> list[Tensor]:
        """``decode(backbone_features(x), guidance)``."""
        return self.decode(self.backbone(x), guidance)
