"""Size settings of the IOG networks; the defaults are the official architecture.

``IOGConfig()`` builds exactly the released networks (``IOG_PASCAL_SBD.pth``: 918 state-dict
entries; the refinement network: 948). Other values give the same topology with fewer channels or
blocks, for tests and quick experiments on a CPU (``IOGConfig.preset("tiny")``); such networks
cannot load the released checkpoints, and their checkpoints carry the configuration
(``{"state_dict": ..., "config": IOGConfig.to_json()}``, see ``boxmask.models.checkpoint``).

Channel plan (``w`` = ``width``): backbone stages output ``4w, 8w, 16w, 32w`` channels
(256/512/1024/2048 at ``w = 64``), the PSP module projects ``32w`` (+ the guidance features for
the refinement network) to ``psp_features``, CoarseNet and FineNet work at ``decoder_channels``.
The coarse and fine heads predict at ``input_size / 4`` and the outputs are upsampled to
``input_size`` (fixed sizes, as in the official model, which therefore expects a
``input_size`` x ``input_size`` input).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from .. import dataclassjson

ARCHITECTURES = ("iog", "iog-refinement")


@dataclass(frozen=True)
class IOGConfig:
    """Architecture hyper-parameters; every default is the official value."""

    architecture: str = "iog"
    """``"iog"`` (5-channel input, 5 outputs) or ``"iog-refinement"`` (plus the click branch)."""
    in_channels: int = 5
    width: int = 64
    """Planes of the first backbone stage (the stages use ``w, 2w, 4w, 8w``, expansion 4)."""
    blocks: tuple[int, int, int, int] = (3, 4, 23, 3)
    """Bottlenecks per backbone stage (ResNet-101)."""
    psp_features: int = 512
    decoder_channels: int = 256
    guidance_widths: tuple[int, int, int, int] = (64, 128, 256, 256)
    """Channels of the four stride-2 convolutions of the refinement click branch."""
    guidance_features: int = 64
    """Channels the click branch adds to the deepest backbone features."""
    input_size: int = 512
    """Side of the square network input and of the output logit maps."""

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}, "
                             f"not {self.architecture!r}")
        if self.input_size % 32 or self.input_size < 64:
            raise ValueError(f"input_size must be a multiple of 32 and >= 64, not "
                             f"{self.input_size}")
        if len(self.blocks) != 4 or min(self.blocks) < 1:
            raise ValueError(f"blocks must be four positive counts, not {self.blocks}")
        if self.decoder_channels % 2:
            raise ValueError("decoder_channels must be even (FineNet bottlenecks use half)")

    @property
    def is_official(self) -> bool:
        """True when the network has the released checkpoints' layout."""
        return replace(self, architecture="iog") == IOGConfig()

    @property
    def refinement(self) -> bool:
        return self.architecture == "iog-refinement"

    def stage_channels(self) -> tuple[int, int, int, int]:
        """Output channels of backbone layer1..layer4."""
        w = self.width * 4
        return (w, 2 * w, 4 * w, 8 * w)

    def to_json(self) -> dict[str, Any]:
        return dataclassjson.to_json(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> IOGConfig:
        """Inverse of ``to_json``; keys that are not fields (e.g. ``task``) are ignored."""
        return dataclassjson.from_json(cls, d, {"blocks": int, "guidance_widths": int})

    @classmethod
    def preset(cls, name: str, architecture: str = "iog", **overrides: Any) -> IOGConfig:
        """``"official"`` (the released architecture), ``"small"`` (~1/4 of the channels,
        ResNet-26-like) or ``"tiny"`` (1/8 of the channels, one block per stage: fast enough
        to train on a CPU in seconds)."""
        if name not in PRESETS:
            raise ValueError(f"unknown model preset {name!r}; choose from {', '.join(PRESETS)}")
        return replace(cls(architecture=architecture, **PRESETS[name]), **overrides)


PRESETS: dict[str, dict[str, Any]] = {
    "official": {},
    "small": {"width": 16, "blocks": (2, 2, 2, 2), "psp_features": 128, "decoder_channels": 64,
              "guidance_widths": (16, 32, 64, 64), "guidance_features": 16},
    "tiny": {"width": 8, "blocks": (1, 1, 1, 1), "psp_features": 32, "decoder_channels": 32,
             "guidance_widths": (8, 16, 32, 32), "guidance_features": 8},
}
