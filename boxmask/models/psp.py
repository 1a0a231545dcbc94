"""Pyramid pooling module (PSPNet) on the deepest backbone features of IOG.

Parameter layout (``stages.{i}.1`` conv, ``stages.{i}.2`` BN, ``bottleneck.0/1``) matches the
released checkpoints: index 0 of every stage is the pooling layer, which has no parameters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class PSPModule(nn.Module):
    """Pool at ``sizes`` bins, project each to ``in_features // len(sizes)`` channels, upsample
    back, concatenate ``[pooled..., feats]`` (``2 * in_features`` channels) and fuse to
    ``out_features``.

    Input ``[N, in_features, h, w]`` -> output ``[N, out_features, h, w]``. Resampling is bilinear
    with ``align_corners=True``. The official module applies a second ReLU after the fusion; it is a
    no-op and omitted.
    """

    def __init__(
        self,
        in_features: int = 2048,
        out_features: int = 512,
        sizes: tuple[int, ...] = (1, 2, 3, 6),
    ) -> None:
        super().__init__()
        stage_features = in_features // len(sizes)
        self.stages = nn.ModuleList(
            nn.Sequential(
                nn.AdaptiveAvgPool2d(size),
                nn.Conv2d(in_features, stage_features, kernel_size=1, bias=False),
                nn.BatchNorm2d(stage_features),
                nn.ReLU(inplace=True),
            )
            for size in sizes
        )
        self.bottleneck = nn.Sequential(
            nn.Conv2d(in_features + stage_features * len(sizes), out_features, 1, bias=False),
            nn.BatchNorm2d(out_features),
            nn.ReLU(inplace=True),
        )

    def forward(self, feats: Tensor) -> Tensor:
        size = (feats.shape[-2], feats.shape[-1])
        priors: list[Tensor] = []
        for stage in self.stages:
            pooled = stage(feats)
            priors.append(F.interpolate(pooled, size=size, mode="bilinear", align_corners=True))
        priors.append(feats)
        return self.bottleneck(torch.cat(priors, dim=1))
