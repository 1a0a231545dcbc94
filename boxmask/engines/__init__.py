"""Box -> mask engines behind one interface (``Engine.segment``); ``create_engine`` builds one."""

from __future__ import annotations

from typing import Any

from ..registry import Registry
from .base import Engine, Prediction, SegmentRequest, default_inside_points

ENGINE_CLASSES: Registry[Engine] = Registry("engine", "boxmask.engines", {
    "fused": ".fused:FusedEngine",
    "u2net": ".u2net:U2NetEngine",
    "grabcut": ".grabcut:GrabCutEngine",
    "iog": ".iog:IOGEngine",
    "box": ".box:BoxEngine",
})
"""Engine name -> class, imported on first use (network engines pull in torch)."""

ENGINES = ENGINE_CLASSES.names
NETWORK_ENGINES = ("iog", "u2net", "fused")
"""Engines that run a network: they take ``weights``, ``precision`` and ``batch_size``."""


def engine_class(name: str) -> type[Engine]:
    """The class of engine ``name`` (imported on first use: network engines pull in torch)."""
    return ENGINE_CLASSES.get(name)


def create_engine(name: str, **options: Any) -> Engine:
    """Build the engine called ``name`` with its options (see each engine's constructor)."""
    return ENGINE_CLASSES.create(name, **options)


__all__ = ["ENGINES", "ENGINE_CLASSES", "NETWORK_ENGINES", "Engine", "Prediction", "SegmentRequest",
           "create_engine", "default_inside_points", "engine_class"]
