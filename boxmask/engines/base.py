"""The engine interface: box (+ clicks) -> one mask and a score per box, many images per call.

Engines see decoded RGB images and validated boxes in the library convention (0-based inclusive
pixel ``(x0, y0, x1, y1)``, already clipped to the image). They never touch files: the worker
decodes images and writers encode masks. Taking many images per call lets a network engine stack
crops from several images into one forward pass.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..records import Click


@dataclass
class SegmentRequest:
    """All boxes of one image to segment."""

    image: np.ndarray
    """H x W x 3 uint8 RGB."""
    boxes: np.ndarray
    """(N, 4) int64 boxes, library convention, inside the image."""
    inside: np.ndarray | None = None
    """(N, 2) float64 inside points ``(x, y)`` in image pixels; None = the engine's default
    (the box centre). Set by an inside-point policy (``boxmask.points``)."""
    extra_clicks: list[list[Click]] | None = None
    """Per box, additional user clicks (refinement); None or empty lists for none."""

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.int64).reshape(-1, 4)
        if self.inside is not None:
            self.inside = np.asarray(self.inside, dtype=np.float64).reshape(-1, 2)
            if len(self.inside) != len(self.boxes):
                raise ValueError("inside points and boxes differ in number")


@dataclass
class Prediction:
    """One box's mask."""

    mask: np.ndarray
    """H x W bool, full-image coordinates."""
    score: float
    """Confidence in [0, 1]; each engine documents what it measures."""
    clicks: list[Click] = field(default_factory=list)
    """The clicks the engine actually used (inside point, corners, extra clicks)."""
    extras: dict[str, Any] = field(default_factory=dict)
    """Engine-specific diagnostics recorded in the sidecar (e.g. ``stability``)."""


class Engine(ABC):
    """A box -> mask strategy. Subclasses set ``name`` and implement ``segment``.

    What the job machinery needs to know of an engine is declared here, so that workers and the
    planner never name one: ``RUNTIME_OPTIONS`` (constructor options that change speed, not
    masks: a worker may choose them and they stay out of the plan contract), ``SIZE_HINT`` (the
    constructor option that receives the job's number of boxes, or None), ``batch_boxes`` (how
    many boxes to hand to one ``segment`` call) and ``CPU_PARALLEL``: how the engine uses several
    CPU cores best, ``"threads"`` (one worker, intra-op threads on every core) or
    ``"processes"`` (one single-threaded worker per core; ``benchmarks/bench_scaling.py``).
    """

    name: str = "engine"
    RUNTIME_OPTIONS: frozenset[str] = frozenset()
    SIZE_HINT: str | None = None
    CPU_PARALLEL: str = "threads"

    @property
    def batch_boxes(self) -> int:
        """Boxes to hand to one ``segment`` call (network engines batch their crops)."""
        return 1

    def describe(self) -> dict[str, Any]:
        """Settings that determine the output (recorded in the plan and the manifest).

        Two engines with equal descriptions must produce identical masks on identical input.
        """
        return {"name": self.name}

    @abstractmethod
    def segment(self, requests: Sequence[SegmentRequest]) -> list[list[Prediction]]:
        """One list of predictions per request, one prediction per box, in box order."""

    def expect(self, crops: int) -> None:  # noqa: B027 - optional hook
        """Hear the job's number of boxes before the first ``segment`` (what ``SIZE_HINT``
        passes to a new engine), for an engine built before the plan was known."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (worker threads, GPU memory)."""


def default_inside_points(boxes: np.ndarray) -> np.ndarray:
    """Box centres ``(x, y)`` for (N, 4) library boxes: the baseline inside point."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.stack([(boxes[:, 0] + boxes[:, 2]) / 2.0, (boxes[:, 1] + boxes[:, 3]) / 2.0], axis=1)


def iog_clicks(box: tuple[int, int, int, int], inside: tuple[float, float]) -> list[Click]:
    """The clicks IOG receives for a box: the inside point (positive) and the four box corners
    (negative) in IOG's order LT, LB, RT, RB, in image pixels."""
    x0, y0, x1, y1 = (int(v) for v in box)
    corners = ((x0, y0), (x0, y1), (x1, y0), (x1, y1))
    return [Click(float(inside[0]), float(inside[1]), True, "inside")] + [
        Click(float(x), float(y), False, "corner") for x, y in corners]
