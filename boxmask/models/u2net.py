"""U²-Net and U²-Netp: salient-object segmentation networks (Qin et al., Pattern Recognition
2020; upstream code and weights under the Apache-2.0 licence).

Six encoder stages (RSU-7, 6, 5, 4, 4F, 4F; 2x2 max-pooling between them), five decoder stages
(RSU-4F, 4, 5, 6, 7, each reading ``[upsampled deeper, skip]``), a 3x3 side head per decoder stage
and the deepest encoder stage, and a 1x1 fusion of the six side maps.

Input: ``[N, 3, H, W]`` float32, the RGB crop divided by its maximum and normalised with the
ImageNet mean/std (``boxmask.guidance``-style preprocessing lives in the engine, not here); the
released weights were trained at 320 x 320. ``forward`` returns the seven probability maps
``[fused, side1, ..., side6]``, each ``[N, 1, H, W]`` after the sigmoid (the ONNX files'
outputs, in their order); ``forward_fused`` returns the fused map's logits only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from .rsu import RSU, RSU4F, upsample_like

VARIANTS = ("u2net", "u2netp")
INPUT_SIZE = 320
"""Side of the square input the released weights were trained at."""
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class U2NetConfig:
    """Channel plan of one variant: per encoder stage ``(mid, out)``, per decoder stage
    ``(mid, out)`` (decoder stages listed from the deepest, stage 5d, to stage 1d)."""

    variant: str
    encoder: tuple[tuple[int, int], ...]
    decoder: tuple[tuple[int, int], ...]

    @classmethod
    def of(cls, variant: str) -> U2NetConfig:
        """The released architecture ``"u2net"`` (full, 44 M parameters) or ``"u2netp"``
        (small, 1.1 M)."""
        if variant == "u2net":
            return cls("u2net", ((32, 64), (32, 128), (64, 256), (128, 512), (256, 512),
                                 (256, 512)),
                       ((256, 512), (128, 256), (64, 128), (32, 64), (16, 64)))
        if variant == "u2netp":
            return cls("u2netp", ((16, 64),) * 6, ((16, 64),) * 5)
        raise ValueError(f"unknown U²-Net variant {variant!r}; choose from {', '.join(VARIANTS)}")

    def to_json(self) -> dict:
        return asdict(self)


_HEIGHTS = (7, 6, 5, 4)
"""RSU heights of encoder stages 1-4 (stages 5 and 6 are RSU-4F); the decoder mirrors them."""


class U2Net(nn.Module):
    """U²-Net (``U2Net("u2net")``) or U²-Netp (``U2Net("u2netp")``); see the module doc."""

    def __init__(self, variant: str = "u2net") -> None:
        super().__init__()
        self.config = U2NetConfig.of(variant)
        enc, dec = self.config.encoder, self.config.decoder
        stages: list[nn.Module] = []
        in_channels = 3
        for i, (mid, out) in enumerate(enc):
            stages.append(RSU(_HEIGHTS[i], in_channels, mid, out) if i < 4
                          else RSU4F(in_channels, mid, out))
            in_channels = out
        self.encoder = nn.ModuleList(stages)
        # decoder stage k (k = 0 is stage 5d) reads [deeper, skip of encoder stage 4 - k]
        blocks: list[nn.Module] = []
        deeper = enc[5][1]
        for k, (mid, out) in enumerate(dec):
            skip = enc[4 - k][1]
            blocks.append(RSU4F(deeper + skip, mid, out) if k == 0
                          else RSU(_HEIGHTS[4 - k], deeper + skip, mid, out))
            deeper = out
        self.decoder = nn.ModuleList(blocks)
        # side heads for decoder stages 1d..5d, then encoder stage 6
        side_in = [dec[4 - i][1] for i in range(5)] + [enc[5][1]]
        self.side = nn.ModuleList(nn.Conv2d(c, 1, 3, padding=1) for c in side_in)
        self.fuse = nn.Conv2d(6, 1, 1)

    @property
    def variant(self) -> str:
        return self.config.variant

    def side_logits(self, x: Tensor) -> list[Tensor]:
        """The seven logit maps ``[fused, side1, ..., side6]`` at the input's size."""
        feats = []
        h = x
        for i, stage in enumerate(self.encoder):
            if i > 0:
                h = nn.functional.max_pool2d(h, 2, 2, ceil_mode=True)
            h = stage(h)
            feats.append(h)
        decoded = [feats[5]]  # deepest first: stage 6, 5d, 4d, 3d, 2d, 1d
        h = feats[5]
        for k, block in enumerate(self.decoder):
            skip = feats[4 - k]
            h = block(torch.cat((upsample_like(h, skip), skip), 1))
            decoded.append(h)
        top = decoded[-1]
        sides = [self.side[0](top)]
        for i in range(1, 6):  # side i+1 reads decoder stage (i+1)d, side 6 the encoder stage 6
            sides.append(upsample_like(self.side[i](decoded[5 - i]), sides[0]))
        fused = self.fuse(torch.cat(sides, 1))
        return [fused, *sides]

    def forward_fused(self, x: Tensor) -> Tensor:
        """Logits ``[N, 1, H, W]`` of the fused map (what the engines threshold)."""
        return self.side_logits(x)[0]

    def forward(self, x: Tensor) -> list[Tensor]:
        """The seven probability maps ``[fused, side1, ..., side6]``, ``[N, 1, H, W]`` each."""
        return [torch.sigmoid(t) for t in self.side_logits(x)]


def build_u2net(variant: str = "u2net") -> U2Net:
    """A randomly initialised U²-Net of ``variant`` in ``eval()`` mode."""
    return U2Net(variant).eval()


def variant_of_state_dict(state: dict[str, Tensor]) -> str:
    """``"u2net"`` or ``"u2netp"`` from a state dict's first convolution (64 vs 16 mid
    channels in ``encoder.0.encoder.0``)."""
    try:
        mid = state["encoder.0.encoder.0.0.weight"].shape[0]
    except KeyError:
        raise ValueError("not a U²-Net state dict (no encoder.0.encoder.0.0.weight)") from None
    for variant in VARIANTS:
        if U2NetConfig.of(variant).encoder[0][0] == mid:
            return variant
    raise ValueError(f"not a released U²-Net variant (first stage has {mid} mid channels)")


def load_u2net(path: str, variant: str | None = None) -> U2Net:
    """A ``U2Net`` in ``eval()`` mode with the state dict saved at ``path`` (a plain
    ``{name: tensor}`` dict, read with ``torch.load(weights_only=True)``). ``variant`` defaults
    to what the state dict holds; a mismatch of names or shapes raises."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: not a state dict")
    model = U2Net(variant or variant_of_state_dict(state))
    model.load_state_dict(state, strict=True)
    return model.eval()
