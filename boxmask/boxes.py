"""Pure box geometry: conversions at the edges, validation, clipping, simple measures.

Library convention: ``(x0, y0, x1, y1)``, 0-based, inclusive integer pixel indices (see
``boxmask.records``). "Edge" coordinates are continuous: pixel ``i`` spans ``[i, i + 1)``, so the
inclusive box ``(x0, .., x1, ..)`` has edges ``x0`` and ``x1 + 1``. Conversions from edges use
``floor`` for the left/top edge and ``ceil - 1`` for the right/bottom edge (the box covers every
pixel the edge box touches), after snapping values that lie within float noise of a whole pixel
onto it (for normalised inputs the noise allowed grows with the image size, see
``from_normalized``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from .records import Box, BoxXYXY

_EPS = 1e-6
"""Absolute snapping tolerance in pixels for edge coordinates."""

NORMALIZED_DIGITS = 6
"""Decimal digits of normalised coordinates in Open Images CSVs (``0.195312``)."""


def _finite(values: Sequence[float], what: str) -> None:
    if not all(math.isfinite(float(v)) for v in values):
        raise ValueError(f"{what} {list(values)} has a NaN or infinite coordinate")


def _snap(v: float, tol: float) -> float:
    r = round(v)
    return float(r) if abs(v - r) <= tol else v


def from_edges(x0: float, y0: float, x1: float, y1: float, tol: float = _EPS) -> BoxXYXY:
    """Edge coordinates in pixels (right/bottom exclusive) -> library box.

    Values within ``tol`` pixels of a whole number are snapped onto it first. A box of zero or
    negative extent on an axis comes out inverted (``x1 < x0``), which ``validate`` rejects.
    Raises ``ValueError`` for NaN or infinite coordinates.
    """
    _finite((x0, y0, x1, y1), "edge box")
    x0, y0, x1, y1 = (_snap(float(v), tol) for v in (x0, y0, x1, y1))
    return (math.floor(x0), math.floor(y0), math.ceil(x1) - 1, math.ceil(y1) - 1)


def _nearest(v: float) -> int:
    """Round half up (``round`` rounds half to even, which would treat 1.5 and 2.5 differently)."""
    return math.floor(float(v) + 0.5)


def from_voc(xmin: float, ymin: float, xmax: float, ymax: float, origin: int = 1) -> BoxXYXY:
    """XML ``<bndbox>`` (inclusive pixel indices counted from ``origin``) -> library box.

    PASCAL VOC counts from 1 (``origin=1``, the default). The ILSVRC-LOC XMLs count from 0: real
    files hold ``xmin=0`` and right edges at ``width - 1`` but never at ``width`` (see
    ``boxmask.readers.ilsvrc``). Fractional values (some tools write them) are rounded to the
    nearest pixel, halves up. Raises ``ValueError`` for NaN or infinite coordinates.
    """
    if origin not in (0, 1):
        raise ValueError(f"origin must be 0 or 1, not {origin!r}")
    _finite((xmin, ymin, xmax, ymax), "VOC box")
    return (_nearest(xmin) - origin, _nearest(ymin) - origin, _nearest(xmax) - origin,
            _nearest(ymax) - origin)


def to_voc(box: BoxXYXY) -> tuple[int, int, int, int]:
    """Library box -> 1-based inclusive VOC coordinates ``(xmin, ymin, xmax, ymax)``."""
    x0, y0, x1, y1 = (int(v) for v in box)
    return (x0 + 1, y0 + 1, x1 + 1, y1 + 1)


def from_xywh(x: float, y: float, w: float, h: float) -> BoxXYXY:
    """COCO ``bbox`` ``[x, y, w, h]`` (floats on pixel edges) -> library box (covering pixels)."""
    _finite((x, y, w, h), "COCO box")
    return from_edges(x, y, x + w, y + h)


def to_xywh(box: BoxXYXY) -> list[float]:
    """Library box -> COCO ``[x, y, w, h]`` on pixel edges (``w = x1 - x0 + 1``)."""
    x0, y0, x1, y1 = box
    return [float(x0), float(y0), float(x1 - x0 + 1), float(y1 - y0 + 1)]


def normalized_tolerance(size: int) -> float:
    """Snapping tolerance in pixels for a normalised coordinate scaled by ``size`` pixels.

    A value printed with ``NORMALIZED_DIGITS`` decimals is off by up to ``0.5e-6``, i.e.
    ``0.5e-6 * size`` pixels after scaling (``0.195312 * 640 = 124.99968`` for the edge 125).
    Twice that bound is allowed; it stays far below half a pixel for any realistic image size.
    """
    return max(_EPS, 10.0 ** -NORMALIZED_DIGITS * size)


def from_normalized(x0: float, y0: float, x1: float, y1: float, width: int, height: int) -> BoxXYXY:
    """Normalised edges in [0, 1] (Open Images ``XMin, YMin, XMax, YMax``) -> library box.

    ``width`` x ``height`` is the pixel size of the image the box is resolved in. Edges within the
    rounding error of the CSV's six decimals of a pixel edge are snapped onto it.
    """
    _finite((x0, y0, x1, y1), "normalised box")
    tx, ty = normalized_tolerance(width), normalized_tolerance(height)
    left, right = (_snap(v * width, tx) for v in (x0, x1))
    top, bottom = (_snap(v * height, ty) for v in (y0, y1))
    return from_edges(left, top, right, bottom)


def to_normalized(box: BoxXYXY, width: int, height: int) -> tuple[float, float, float, float]:
    """Library box -> normalised edges ``(x0, y0, x1, y1)`` in [0, 1] (right/bottom exclusive).

    Exact ratios, for computing; text outputs write ``normalized_edge_text`` instead.
    """
    x0, y0, x1, y1 = box
    return (x0 / width, y0 / height, (x1 + 1) / width, (y1 + 1) / height)


EDGE_MAX_DIGITS = 7
"""Most decimals ``normalized_edges`` writes."""

EDGE_MAX_SIZE = 999_999
"""Largest image side (pixels) ``normalized_edges`` accepts: its offset stays below half a
pixel."""


def normalized_edges(edges: npt.ArrayLike, sizes: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Pixel edges -> the decimals to write for them as normalised coordinates, exactly readable.

    ``edges`` (integers, ``0 <= edge <= size``) are pixel edges: the left/top edge of a library
    box is ``x0``, its right/bottom edge ``x1 + 1``. ``sizes`` is the image side in pixels
    (``width`` for x, ``height`` for y), broadcast against ``edges``. Returns ``(numerator,
    decimals)``, int64 arrays of the broadcast shape: the value to write is
    ``numerator / 10**decimals`` (``normalized_edge_text`` spells it).

    The value ``v`` is the shortest decimal, with at most ``EDGE_MAX_DIGITS`` decimals, in
    ``(edge / size, edge / size + 5e-7]`` (0 and 1 for edges on the image border). So a reader
    gets the edge back whichever way it rounds ``v * size`` after parsing ``v`` as a float64:

    * ``int(v * size) == edge`` and ``floor``: ``v * size`` exceeds ``edge`` by at least
      ``1e-7`` px (some 600 times float64's rounding error on it, parse and product, at
      ``size = EDGE_MAX_SIZE``; 7000 times at 65,535) and by at most ``5e-7 * size`` < 0.5 px;
    * ``round(v * size) == edge``: the offset is below half a pixel;
    * ``ceil(v * size) - 1`` (a right edge): ``boxmask.boxes.from_normalized`` snaps anything
      within ``1e-6 * size`` px of a pixel edge onto it, twice the offset.

    Writing ``edge / size`` with six decimals instead misses ``int(v * size) == edge`` for about
    half of all pairs (``0.29 * 100 = 28.999999999999996``).
    Raises ``ValueError`` for an edge outside ``[0, size]`` or a size outside
    ``[1, EDGE_MAX_SIZE]``.
    """
    e, n = np.broadcast_arrays(np.asarray(edges, dtype=np.int64),
                               np.asarray(sizes, dtype=np.int64))
    if e.size and (n.min() < 1 or n.max() > EDGE_MAX_SIZE):
        raise ValueError(f"image sizes must lie in [1, {EDGE_MAX_SIZE}] pixels")
    if e.size and ((e < 0).any() or (e > n).any()):
        raise ValueError("pixel edges must lie in [0, size]")
    inner = (e > 0) & (e < n)
    scale = 10 ** EDGE_MAX_DIGITS
    # EDGE_MAX_DIGITS decimals always fit: the smallest such value above edge / size exceeds it
    # by at most 1e-7 * size px. A shorter one fits too when it lies in the window; if d
    # decimals fit, so do d + 1, so look for fewer only among those that fit.
    numerator = np.where(inner, (e * scale) // n + 1, e // n)
    decimals = np.where(inner, EDGE_MAX_DIGITS, 0).astype(np.int64)
    num_flat, dec_flat = numerator.reshape(-1), decimals.reshape(-1)
    todo = np.flatnonzero(inner)
    e, n = e.reshape(-1)[todo], n.reshape(-1)[todo]
    for d in range(EDGE_MAX_DIGITS - 1, 0, -1):
        scale = 10 ** d
        candidate = (e * scale) // n + 1  # the smallest d-decimal value above edge / size
        excess = candidate * n - e * scale  # (v * size - edge) * 10**d, in (0, size]
        ok = excess * 10 ** (EDGE_MAX_DIGITS - d) <= 5 * n  # offset <= 5e-7 * size px
        todo, e, n = todo[ok], e[ok], n[ok]
        if not todo.size:
            break
        num_flat[todo] = candidate[ok]
        dec_flat[todo] = d
    return numerator, decimals


def normalized_edge_text(edge: int, size: int) -> str:
    """The text of one normalised edge (see ``normalized_edges``): ``"0"``, ``"1"`` or
    decimals such as ``"0.2900001"``. For many edges, call ``normalized_edges`` once and spell
    each with ``decimal_text``."""
    numerator, decimals = normalized_edges(edge, size)
    return decimal_text(int(numerator), int(decimals))


def decimal_text(numerator: int, decimals: int) -> str:
    """``numerator / 10**decimals`` (a value in [0, 1]) spelt out: ``(2900001, 7)`` ->
    ``"0.2900001"``, ``(1, 0)`` -> ``"1"``."""
    if decimals == 0:
        return str(numerator)
    return f"0.{numerator:0{decimals}d}"


def rescale(box: BoxXYXY, from_wh: tuple[int, int], to_wh: tuple[int, int]) -> BoxXYXY:
    """Map a box from an image of size ``from_wh`` to the same image resized to ``to_wh``.

    Sizes are ``(width, height)`` in pixels. The result covers every target pixel the source box's
    edges touch; the arithmetic is exact (integers), so a box touching the border of the source
    touches the border of the target and never crosses it.
    """
    (fw, fh), (tw, th) = from_wh, to_wh
    if min(fw, fh, tw, th) <= 0:
        raise ValueError(f"image sizes must be positive, got {from_wh} -> {to_wh}")
    x0, y0, x1, y1 = (int(v) for v in box)
    # floor(a * t / f) for the left/top edge, ceil((b + 1) * t / f) - 1 for the right/bottom.
    return ((x0 * tw) // fw, (y0 * th) // fh, -((-(x1 + 1) * tw) // fw) - 1,
            -((-(y1 + 1) * th) // fh) - 1)


def resolve_box(box: Box, width: int, height: int,
                declared_size: tuple[int, int] | None = None) -> BoxXYXY:
    """The library box of a record's ``Box`` in the decoded image of ``width`` x ``height``.

    Normalised boxes (``xyxy_norm``) are scaled by the decoded size. Pixel boxes (``xyxy``) are in
    the frame of ``declared_size`` (the record's ``width, height``) when given, and are rescaled
    when it differs from the decoded size. The result is not validated (see ``validate``).
    """
    if box.xyxy_norm is not None:
        return from_normalized(*box.xyxy_norm, width, height)
    if box.xyxy is None:
        raise ValueError(f"box {box.box_id!r} has neither pixel nor normalised coordinates")
    xyxy = int_box(box.xyxy)
    if declared_size is not None and tuple(declared_size) != (width, height):
        dw, dh = declared_size
        return rescale(xyxy, (int(dw), int(dh)), (width, height))
    return xyxy


def int_box(values: Sequence[float] | np.ndarray) -> BoxXYXY:
    """Four coordinates (a list read from JSON, an array row) as a library box of ints.

    Each value is truncated by ``int``; raises ``ValueError`` unless there are exactly four.
    """
    x0, y0, x1, y1 = (int(v) for v in values)
    return (x0, y0, x1, y1)


def width_height(box: BoxXYXY) -> tuple[int, int]:
    """``(width, height)`` in pixels of an inclusive box (``x1 - x0 + 1``; <= 0 when inverted)."""
    x0, y0, x1, y1 = box
    return (x1 - x0 + 1, y1 - y0 + 1)


def area(box: BoxXYXY) -> int:
    """Number of pixels the box covers (0 for an inverted box)."""
    w, h = width_height(box)
    return max(w, 0) * max(h, 0)


def center(box: BoxXYXY) -> tuple[float, float]:
    """Centre ``(x, y)`` of the box in pixel coordinates (pixel centres are integers)."""
    x0, y0, x1, y1 = box
    return ((x0 + x1) / 2.0, (y0 + y1) / 2.0)


def clip(box: BoxXYXY, width: int, height: int) -> BoxXYXY | None:
    """Intersect with the ``width`` x ``height`` image; ``None`` when no pixel of it is inside."""
    x0, y0, x1, y1 = box
    cx0, cy0 = max(x0, 0), max(y0, 0)
    cx1, cy1 = min(x1, width - 1), min(y1, height - 1)
    if cx1 < cx0 or cy1 < cy0:
        return None
    return (cx0, cy0, cx1, cy1)


def iou(a: BoxXYXY, b: BoxXYXY) -> float:
    """Intersection over union of two library boxes, counting pixels (inclusive boxes)."""
    ix0, iy0 = max(a[0], b[0]), max(a[1], b[1])
    ix1, iy1 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(ix1 - ix0 + 1, 0) * max(iy1 - iy0 + 1, 0)
    union = area(a) + area(b) - inter
    return inter / union if union > 0 else 0.0


def mask_to_box(mask: np.ndarray) -> BoxXYXY | None:
    """Tight library box of the non-zero pixels of a 2-D (H x W) mask; ``None`` if it is empty."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (H x W), got shape {mask.shape}")
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


def _as_int_box(box: Sequence[float]) -> BoxXYXY | None:
    try:
        values = [float(v) for v in box]
    except (TypeError, ValueError):
        return None
    if len(values) != 4 or not all(math.isfinite(v) and v.is_integer() for v in values):
        return None
    x0, y0, x1, y1 = (int(v) for v in values)
    return (x0, y0, x1, y1)


def validate(box: BoxXYXY, width: int, height: int, min_side: int = 2) -> Checked:
    """Check a library box against an image of ``width`` x ``height`` pixels.

    Errors: coordinates that are not four whole numbers, inverted or zero-area boxes
    (``x1 < x0`` or ``y1 < y0``), boxes entirely outside the image, and boxes whose part inside
    the image is narrower or shorter than ``min_side`` pixels. A box partly outside the image is
    clipped to it, with a warning. The returned box is made of Python ints.
    """
    b = _as_int_box(box)
    if b is None:
        return Checked(None, error=f"box {list(box)} is not four whole pixel coordinates")
    x0, y0, x1, y1 = b
    if x1 < x0 or y1 < y0:
        return Checked(None, error=f"inverted or zero-area box {list(b)} (x1 < x0 or y1 < y0)")
    clipped = clip(b, width, height)
    if clipped is None:
        return Checked(None, error=f"box {list(b)} lies entirely outside the "
                                   f"{width}x{height} image")
    w, h = width_height(clipped)
    if w < min_side or h < min_side:
        return Checked(None, error=f"box {list(b)} is {w}x{h} px inside the image, "
                                   f"smaller than the minimum side of {min_side} px")
    warning = None
    if clipped != b:
        warning = (f"box {list(b)} extends outside the {width}x{height} image; "
                   f"clipped to {list(clipped)}")
    return Checked(clipped, warning=warning)
