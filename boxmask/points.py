"""Inside-point policies: where the IOG inside click goes when a dataset has only boxes.

A policy owns the call to the engine, because some policies run it more than once (the inside point
of the second pass comes from the first pass's mask). Every policy returns one prediction per box,
and records itself in the plan and the sidecar (``inside_policy``).

* ``center``: the box centre (the baseline).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

from .engines.base import Engine, Prediction, SegmentRequest, default_inside_points

POLICIES = ("center",)


class InsidePointPolicy(ABC):
    name: str = "policy"

    def describe(self) -> dict[str, Any]:
        return {"name": self.name}

    @abstractmethod
    def segment(self, engine: Engine, requests: Sequence[SegmentRequest]) -> list[list[Prediction]]:
        """Choose inside points for boxes without one, run ``engine``, return its predictions."""


class CenterPolicy(InsidePointPolicy):
    """The inside point is the box centre ``((x0 + x1) / 2, (y0 + y1) / 2)``."""

    name = "center"

    def segment(self, engine: Engine, requests: Sequence[SegmentRequest]) -> list[list[Prediction]]:
        for r in requests:
            if r.inside is None:
                r.inside = default_inside_points(r.boxes)
        return engine.segment(requests)


def create_policy(name: str, **options: Any) -> InsidePointPolicy:
    if name == "center":
        return CenterPolicy(**options)
    raise ValueError(f"unknown inside-point policy {name!r}; choose from {', '.join(POLICIES)}")
