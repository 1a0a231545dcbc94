"""Neural networks (``nn.Module`` only) and checkpoint loading; the stage-1 network at inference
(``boxmask.models.stage1``: inside points from boxes alone).

``build_iog()`` gives the IOG network of ``IOG_PASCAL_SBD.pth`` / ``IOG_PASCAL.pth``;
``build_iog(refinement=True)`` the refinement network of ``IOG_PASCAL_SBD_REFINEMENT.pth``.
``build_from_checkpoint(path)`` builds whichever of the two a checkpoint holds and loads it.
"""

from __future__ import annotations

from .checkpoint import (
    CheckpointError,
    build_from_checkpoint,
    build_model,
    detect_architecture,
    export_checkpoint,
    infer_config,
    load_checkpoint,
    read_checkpoint,
    sha256_file,
)
from .config import ARCHITECTURES, PRESETS, IOGConfig
from .iog import IOGNetwork, IOGNetworkBase
from .refinement import IOGRefinementNetwork


def build_iog(refinement: bool = False,
              config: IOGConfig | None = None) -> IOGNetworkBase:
    """A randomly initialised IOG network in ``eval()`` mode; load weights with ``load_checkpoint``.

    ``refinement=False``: ``IOGNetwork`` (``forward(x) -> [coarse0..3, fine]``, ``forward_fine``).
    ``refinement=True``: ``IOGRefinementNetwork`` (``backbone_features``, ``decode``, ``forward``).
    ``config``: sizes (default: the official architecture; see ``IOGConfig``).
    """
    model = IOGRefinementNetwork(config) if refinement else IOGNetwork(config)
    return model.eval()


__all__ = [
    "ARCHITECTURES",
    "PRESETS",
    "CheckpointError",
    "IOGConfig",
    "IOGNetwork",
    "IOGNetworkBase",
    "IOGRefinementNetwork",
    "build_from_checkpoint",
    "build_iog",
    "build_model",
    "detect_architecture",
    "export_checkpoint",
    "infer_config",
    "load_checkpoint",
    "read_checkpoint",
    "sha256_file",
]
