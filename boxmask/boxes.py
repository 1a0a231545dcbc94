"""Pure box geometry: conversions at the edges, validation, clipping, simple measures.

Library convention: ``(x0, y0, x1, y1)``, 0-based, inclusive integer pixel indices (see
``boxmask.records``). "Edge" coordinates are continuous: pixel ``i`` spans ``[i, i + 1)``, so the
inclusive box ``(x0, .., x1, ..)`` has edges ``x0`` and ``x1 + 1``. Conversions from edges use
``floor`` for the left/top edge and ``ceil - 1`` for the right/bottom edge (the box covers every
pixel the edge box touches), with a small tolerance against float noise in normalised inputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .records import BoxXYXY

_EPS = 1e-6


def _floor(v: float) -> int:
    return math.floor(v + _EPS)


def _ceil(v: float) -> int:
    return math.ceil(v - _EPS)


def from_edges(x0: float, y0: float, x1: float, y1: float) -> BoxXYXY:
    """Edge coordinates in pixels (right/bottom exclusive) -> library box.

    A box of zero or negative extent on an axis comes out inverted (``x1 < x0``), which
    ``validate`` rejects.
    """
    return (_floor(x0), _floor(y0), _ceil(x1) - 1, _ceil(y1) - 1)


def from_voc(xmin: float, ymin: float, xmax: float, ymax: float) -> BoxXYXY:
    """PASCAL VOC / ILSVRC XML ``<bndbox>`` (1-based, inclusive) -> library box."""
    return (round(xmin) - 1, round(ymin) - 1, round(xmax) - 1, round(ymax) - 1)


def to_voc(box: BoxXYXY) -> tuple[int, int, int, int]:
    """Library box -> 1-based inclusive VOC coordinates."""
    x0, y0, x1, y1 = box
    return (x0 + 1, y0 + 1, x1 + 1, y1 + 1)


def from_xywh(x: float, y: float, w: float, h: float) -> BoxXYXY:
    """COCO ``bbox`` ``[x, y, w, h]`` (floats on pixel edges) -> library box."""
    return from_edges(x, y, x + w, y + h)


def to_xywh(box: BoxXYXY) -> list[float]:
    """Library box -> COCO ``[x, y, w, h]`` on pixel edges."""
    x0, y0, x1, y1 = box
    return [float(x0), float(y0), float(x1 - x0 + 1), float(y1 - y0 + 1)]


def from_normalized(x0: float, y0: float, x1: float, y1: float, width: int, height: int) -> BoxXYXY:
    """Normalised edges in [0, 1] (Open Images ``XMin, YMin, XMax, YMax``) -> library box."""
    return from_edges(x0 * width, y0 * height, x1 * width, y1 * height)


def to_normalized(box: BoxXYXY, width: int, height: int) -> tuple[float, float, float, float]:
    """Library box -> normalised edges ``(x0, y0, x1, y1)`` in [0, 1] (right/bottom exclusive)."""
    x0, y0, x1, y1 = box
    return (x0 / width, y0 / height, (x1 + 1) / width, (y1 + 1) / height)


def rescale(box: BoxXYXY, from_wh: tuple[int, int], to_wh: tuple[int, int]) -> BoxXYXY:
    """Map a box from an image of size ``from_wh`` to the same image resized to ``to_wh``."""
    sx = to_wh[0] / from_wh[0]
    sy = to_wh[1] / from_wh[1]
    x0, y0, x1, y1 = box
    return from_edges(x0 * sx, y0 * sy, (x1 + 1) * sx, (y1 + 1) * sy)


def width_height(box: BoxXYXY) -> tuple[int, int]:
    x0, y0, x1, y1 = box
    return (x1 - x0 + 1, y1 - y0 + 1)


def area(box: BoxXYXY) -> int:
    w, h = width_height(box)
    return max(w, 0) * max(h, 0)


def center(box: BoxXYXY) -> tuple[float, float]:
    """Centre ``(x, y)`` of the box in pixel coordinates (pixel centres are integers)."""
    x0, y0, x1, y1 = box
    return ((x0 + x1) / 2.0, (y0 + y1) / 2.0)


def clip(box: BoxXYXY, width: int, height: int) -> BoxXYXY | None:
    """Intersect with the image; ``None`` when nothing of the box lies inside it."""
    x0, y0, x1, y1 = box
    cx0, cy0 = max(x0, 0), max(y0, 0)
    cx1, cy1 = min(x1, width - 1), min(y1, height - 1)
    if cx1 < cx0 or cy1 < cy0:
        return None
    return (cx0, cy0, cx1, cy1)


def iou(a: BoxXYXY, b: BoxXYXY) -> float:
    """Intersection over union of two library boxes (pixel counts, inclusive)."""
    ix0, iy0 = max(a[0], b[0]), max(a[1], b[1])
    ix1, iy1 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(ix1 - ix0 + 1, 0) * max(iy1 - iy0 + 1, 0)
    union = area(a) + area(b) - inter
    return inter / union if union > 0 else 0.0


def mask_to_box(mask: np.ndarray) -> BoxXYXY | None:
    """Tight library box of the non-zero pixels of a 2-D mask; ``None`` for an empty mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return (int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1]))


@dataclass(frozen=True)
class Checked:
    """Outcome of ``validate``: a usable box (maybe clipped) and a note, or an error reason."""

    box: BoxXYXY | None
    error: str | None = None
    warning: str | None = None


def validate(box: BoxXYXY, width: int, height: int, min_side: int = 2) -> Checked:
    """Check a library box against an image of ``width`` x ``height`` pixels.

    Inverted boxes, boxes smaller than ``min_side`` pixels on a side and boxes entirely outside
    the image are errors; a box partly outside is clipped to the image, with a warning.
    """
    x0, y0, x1, y1 = box
    if x1 < x0 or y1 < y0:
        return Checked(None, error=f"inverted or zero-area box {list(box)} (x1 < x0 or y1 < y0)")
    clipped = clip(box, width, height)
    if clipped is None:
        return Checked(None, error=f"box {list(box)} lies entirely outside the {width}x{height} image")
    w, h = width_height(clipped)
    if w < min_side or h < min_side:
        return Checked(None, error=f"box {list(box)} is {w}x{h} px inside the image, "
                                   f"smaller than the minimum side of {min_side} px")
    warning = None
    if clipped != tuple(box):
        warning = f"box {list(box)} extends outside the {width}x{height} image; clipped to {list(clipped)}"
    return Checked(clipped, warning=warning)
