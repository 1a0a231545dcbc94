"""Box -> mask engines behind one interface (``Engine.segment``); ``create_engine`` builds one."""

from __future__ import annotations

from importlib import import_module
from typing import Any

from .base import Engine, Prediction, SegmentRequest, default_inside_points

ENGINES = ("fused", "u2net", "grabcut", "iog", "box")
NETWORK_ENGINES = ("iog", "u2net", "fused")
"""Engines that run a network: they take ``weights``, ``precision`` and ``batch_size``."""


def engine_class(name: str) -> type[Engine]:
    """The class of engine ``name`` (imported on first use: network engines pull in torch)."""
    if name not in _CLASSES:
        raise ValueError(f"unknown engine {name!r}; choose from {', '.join(ENGINES)}")
    module, cls = _CLASSES[name]
    return getattr(import_module(module, __name__), cls)


def create_engine(name: str, **options: Any) -> Engine:
    """Build the engine called ``name`` with its options (see each engine's constructor)."""
    return engine_class(name)(**options)


_CLASSES = {"fused": (".fused", "FusedEngine"), "u2net": (".u2net", "U2NetEngine"),
            "grabcut": (".grabcut", "GrabCutEngine"), "iog": (".iog", "IOGEngine"),
            "box": (".box", "BoxEngine")}


__all__ = ["ENGINES", "NETWORK_ENGINES", "Engine", "Prediction", "SegmentRequest", "create_engine",
           "engine_class",
           "default_inside_points"]
