"""The versions of the software that made an output, recorded with it so that a difference
between two runs can be traced (GrabCut's masks depend on the OpenCV build, IOG's on torch's
kernels, the training augmentations on OpenCV's warps)."""

from __future__ import annotations

import functools
import platform
from importlib import metadata
from typing import Any

from . import __version__

_PACKAGES = {"torch": "torch", "torchvision": "torchvision", "numpy": "numpy",
             "pycocotools": "pycocotools", "pillow": "pillow"}
"""Version key -> distribution name (OpenCV is asked of its module: several wheels provide it)."""


@functools.cache
def software_versions() -> dict[str, Any]:
    """``{"boxmask", "python", "torch", "torchvision", "numpy", "opencv", "pycocotools",
    "pillow"}`` -> version strings (None for a package that is not installed): the installed
    distributions' versions (so without importing torch; ``torch.__version__`` may add a local
    build tag such as ``+cu130``), OpenCV's from the module itself, whichever wheel provides it."""
    versions: dict[str, Any] = {"boxmask": __version__, "python": platform.python_version()}
    for key, dist in _PACKAGES.items():
        try:
            versions[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[key] = None
    try:
        import cv2

        versions["opencv"] = cv2.__version__
    except ImportError:
        versions["opencv"] = None
    return versions


__all__ = ["software_versions"]
