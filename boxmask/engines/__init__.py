"""Box -> mask engines behind one interface (``Engine.segment``); ``create_engine`` builds one."""

from __future__ import annotations

from typing import Any

from .base import Engine, Prediction, SegmentRequest, default_inside_points

ENGINES = ("fused", "u2net", "grabcut", "iog", "box")
NETWORK_ENGINES = ("iog", "u2net", "fused")
"""Engines that run a network: they take ``weights``, ``precision`` and ``batch_size``."""


def create_engine(name: str, **options: Any) -> Engine:
    """Build the engine called ``name`` with its options (see each engine's constructor)."""
    if name == "grabcut":
        from .grabcut import GrabCutEngine

        return GrabCutEngine(**options)
    if name == "iog":
        from .iog import IOGEngine

        return IOGEngine(**options)
    if name == "u2net":
        from .u2net import U2NetEngine

        return U2NetEngine(**options)
    if name == "fused":
        from .fused import FusedEngine

        return FusedEngine(**options)
    if name == "box":
        from .box import BoxEngine

        return BoxEngine(**options)
    raise ValueError(f"unknown engine {name!r}; choose from {', '.join(ENGINES)}")


__all__ = ["ENGINES", "NETWORK_ENGINES", "Engine", "Prediction", "SegmentRequest", "create_engine",
           "default_inside_points"]
