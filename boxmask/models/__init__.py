"""Neural networks (``nn.Module`` only) and checkpoint loading.

``build_iog()`` gives the IOG network of ``IOG_PASCAL_SBD.pth`` / ``IOG_PASCAL.pth``;
``build_iog(refinement=True)`` the refinement network of ``IOG_PASCAL_SBD_REFINEMENT.pth``.
``build_from_checkpoint(path)`` builds whichever of the two a checkpoint holds and loads it.
"""

from __future__ import annotations

from torch import nn

from .checkpoint import (
    CheckpointError,
    build_from_checkpoint,
    detect_architecture,
    load_checkpoint,
    sha256_file,
)
from .iog import IOGNetwork
from .refinement import IOGRefinementNetwork

ARCHITECTURES = ("iog", "iog-refinement")


def build_iog(refinement: bool = False) -> nn.Module:
    """A randomly initialised IOG network in ``eval()`` mode; load weights with ``load_checkpoint``.

    ``refinement=False``: ``IOGNetwork`` (``forward(x) -> [coarse0..3, fine]``, ``forward_fine``).
    ``refinement=True``: ``IOGRefinementNetwork`` (``backbone_features``, ``decode``, ``forward``).
    """
    model = IOGRefinementNetwork() if refinement else IOGNetwork()
    return model.eval()


__all__ = [
    "ARCHITECTURES",
    "CheckpointError",
    "IOGNetwork",
    "IOGRefinementNetwork",
    "build_from_checkpoint",
    "build_iog",
    "detect_architecture",
    "load_checkpoint",
    "sha256_file",
]
