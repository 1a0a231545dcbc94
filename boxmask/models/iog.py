"""The IOG network (Inside-Outside Guidance, CVPR 2020): ResNet-101 + PSP + CoarseNet + FineNet.

Input: float32 ``[N, 5, H, W]`` with channels ``[R, G, B, inside, outside]``, all in 0..255 (RGB
order, no mean/std normalisation; the two guidance heatmaps scaled to 0..255), normally the
512 x 512 resized crop of a box relaxed by 30 px. Outputs are logits (no sigmoid) at
``out_size`` x ``out_size`` (512), upsampled bilinearly with ``align_corners=True`` from 128 x 128.

Attribute names and ``nn.Sequential`` index layouts reproduce the official implementation, so the
released checkpoints (``IOG_PASCAL_SBD.pth``, ``IOG_PASCAL.pth``) load with ``strict=True`` and no
key conversion (see ``boxmask.models.checkpoint``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .coarse import CoarseNet
from .config import IOGConfig
from .fine import FineNet
from .psp import PSPModule
from .resnet import ResNetBackbone


class IOGNetworkBase(nn.Module):
    """Modules shared by the IOG and IOG-refinement networks, in the official registration order
    (which fixes the ``state_dict`` order): ``Coarse_net``, ``Fine_net``, ``backbone``, ``psp4``,
    ``upsample``.

    ``config`` sets the sizes (default: the official network, ``IOGConfig()``). ``psp_extra`` is
    the number of channels concatenated to layer4 before the PSP module (0 for IOG, the guidance
    features for the refinement network).
    """

    def __init__(self, config: IOGConfig | None = None, psp_extra: int = 0) -> None:
        super().__init__()
        cfg = config if config is not None else IOGConfig()
        l1, l2, l3, l4 = cfg.stage_channels()
        head = cfg.input_size // 4
        self.Coarse_net = CoarseNet((cfg.psp_features, l3, l2, l1), out_size=head,
                                    channels=cfg.decoder_channels)
        self.Fine_net = FineNet(cfg.decoder_channels, out_size=head)
        self.backbone = ResNetBackbone(cfg.in_channels, cfg.width, cfg.blocks)
        self.psp4 = PSPModule(l4 + psp_extra, cfg.psp_features)
        self.upsample = nn.Upsample(
            size=(cfg.input_size, cfg.input_size), mode="bilinear", align_corners=True
        )
        self.config = cfg

    @torch.jit.export
    def backbone_features(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(layer4, layer3, layer2, layer1)`` of the 5-channel input ``x``; at a 512^2 input
        2048 x 32^2, 1024 x 32^2, 512 x 64^2 and 256 x 128^2."""
        return self.backbone(x)

    def fine_logits(self, x: Tensor, guidance: Tensor | None = None) -> Tensor:
        """The forward contract of every IOG-family network: N x 1 x S x S fine logits of the
        N x 5 x S x S input ``x`` (``guidance``: the refinement network's extra-click maps)."""
        raise NotImplementedError

    def _decode_all(self, deep: Tensor, l3: Tensor, l2: Tensor, l1: Tensor) -> list[Tensor]:
        """``[coarse0, coarse1, coarse2, coarse3, fine]`` logits at ``out_size``^2."""
        fms, coarse = self.Coarse_net(self.psp4(deep), l3, l2, l1)
        fine = self.Fine_net(fms[0], fms[1], fms[2], fms[3])
        return [
            self.upsample(coarse[0]),
            self.upsample(coarse[1]),
            self.upsample(coarse[2]),
            self.upsample(coarse[3]),
            self.upsample(fine),
        ]

    def _decode_fine(self, deep: Tensor, l3: Tensor, l2: Tensor, l1: Tensor) -> Tensor:
        """Fine logits at ``out_size``^2 only: the coarse prediction heads are not evaluated."""
        fms = self.Coarse_net.features(self.psp4(deep), l3, l2, l1)
        return self.upsample(self.Fine_net(fms[0], fms[1], fms[2], fms[3]))


class IOGNetwork(IOGNetworkBase):
    """IOG with 5 input channels (RGB + inside + outside heatmaps); with the default config the
    architecture of ``IOG_PASCAL_SBD.pth`` and ``IOG_PASCAL.pth`` (918 state-dict entries)."""

    def __init__(self, config: IOGConfig | None = None) -> None:
        cfg = config if config is not None else IOGConfig()
        if cfg.refinement:
            raise ValueError("IOGNetwork needs an 'iog' config; use IOGRefinementNetwork")
        super().__init__(cfg)

    def forward(self, x: Tensor) -> list[Tensor]:
        """``x``: float32 ``[N, 5, 512, 512]`` (see module doc). Returns the five official outputs
        ``[coarse0, coarse1, coarse2, coarse3, fine]``, each ``[N, 1, 512, 512]`` logits;
        inference uses ``fine`` (index 4)."""
        l4, l3, l2, l1 = self.backbone(x)
        return self._decode_all(l4, l3, l2, l1)

    def fine_logits(self, x: Tensor, guidance: Tensor | None = None) -> Tensor:
        """The forward contract of every IOG network family: fine logits ``[N, 1, S, S]`` of the
        input ``x``. This network has no click branch: ``guidance`` must be None."""
        if guidance is not None:
            raise ValueError("the IOG network takes no click maps; use IOGRefinementNetwork")
        return self.forward_fine(x)

    @torch.jit.export
    def forward_fine(self, x: Tensor) -> Tensor:
        """``forward(x)[4]`` (fine logits ``[N, 1, 512, 512]``) without computing the coarse
        outputs."""
        l4, l3, l2, l1 = self.backbone(x)
        return self._decode_fine(l4, l3, l2, l1)
