"""Per-mask metrics and flags: how well a mask agrees with the box it was made from.

Every function here is pure (arrays in, numbers out), and the module imports nothing above
``boxes`` and ``records``: the conversion computes these right after the engine, and the quality
tools read them back from the sidecar. ``mask_metrics`` runs on every mask of a
conversion right after the engine, so it works on a crop: the union of the input box and the
mask's tight box (plus a one-pixel zero ring where topology needs it), never the full image
beyond one ``any`` reduction per axis.

Boxes use the library convention: ``(x0, y0, x1, y1)``, 0-based, inclusive pixel indices
(``boxmask.records``). Areas are pixel counts.

Flags and their thresholds
--------------------------
The thresholds are module constants, chosen so that ground-truth masks with their own tight boxes
raise few flags. Measured on the 63 real GT instances in ``tests/data`` (``coco_mval``: 40 COCO
instances, ``davis``: 21 frames, ``voc2012``: the 2 objects of 2007_000063, void excluded):

* fill ratio (mask pixels inside the box / box area): min 0.133 (a DAVIS kitesurfer with thin kite
  lines), 5th percentile 0.27, median 0.63. ``TINY_FILL = 0.05`` sits well below every GT
  value: a mask covering under 5 % of its box is almost always a failed segmentation, while thin
  diagonal objects (forks, bats, poles) stay above it.
* tightness (IoU of the mask's tight box with the input box): 1.0 for GT with tight boxes by
  construction; 10 px of padding on every side brings 12 of 61 COCO/DAVIS masks below 0.7 (the
  small ones). ``LOOSE_TIGHTNESS = 0.7``: e.g. a mask missing 30 % of the box's extent on one
  axis, beyond annotation noise.
* leakage (mask pixels outside the box / mask area): 0 for GT with tight boxes.
  ``LEAKS_FRACTION = 0.05`` tolerates the few pixels an engine's soft edge spills over a side.
* fragmentation (8-connected components): GT masks have up to 17 components (occluded or
  thin-structured objects, most pieces specks), and the largest holds >= 0.51 of the mask.
  ``fragmented`` needs both ``components > FRAGMENTED_MIN_COMPONENTS = 2`` and
  ``largest_component_ratio < FRAGMENTED_LARGEST = 0.5``: many pieces *and* no dominant one.
  No GT mask has both.
* holes (enclosed background regions, 4-connected, any size): 19 of 63 GT masks have at least one
  (gaps between thin parts and the body, annotation slivers, an occluder in front).
  Only holes of at least ``HOLE_MIN_FRACTION = 0.05`` of the mask area raise ``holes``
  (reported as ``large_holes``); 2 of 63 GT masks have such a hole (the DAVIS kitesurfer between
  its lines, the VOC chair behind the dog), both real.
* sides touched (some mask pixel inside the box lies within ``touch_tolerance`` px of the side):
  a box drawn for an object touches it on every side save where it is occluded;
  ``untouched_sides`` fires when fewer than ``MIN_SIDES_TOUCHED = 3`` sides are reached. The
  tolerance is absolute: padding the 61 COCO/DAVIS tight boxes by 2 px raises no
  ``untouched_sides``, by 3 px raises it on 60 (all but one box clipped by the image border).
  Raise ``touch_tolerance`` for sources whose boxes are drawn loosely.
* ``low_score``: the engine's confidence below ``LOW_SCORE = 0.5`` (only where the score is known).

Flag rate on the 63 GT masks with their tight boxes: 2 of 63 masks flagged (``holes`` twice),
checked by ``tests/quality/test_metrics.py``. ``mask_metrics`` took ~0.6-0.9 ms per mask on those
images (640x480 and 854x480, a shared 2-core machine: noisy).
"""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np

from .boxes import area as box_area_of
from .boxes import clip as clip_box
from .boxes import int_box
from .boxes import iou as box_iou
from .records import BoxXYXY

TINY_FILL = 0.05
"""``tiny``: fewer than this fraction of the box's pixels belong to the mask."""
LOOSE_TIGHTNESS = 0.7
"""``loose``: the mask's tight box has an IoU with the input box below this."""
LEAKS_FRACTION = 0.05
"""``leaks``: more than this fraction of the mask lies outside the input box."""
FRAGMENTED_MIN_COMPONENTS = 2
"""``fragmented``: more than this many 8-connected components ..."""
FRAGMENTED_LARGEST = 0.5
"""... and the largest holds less than this fraction of the mask."""
HOLE_MIN_FRACTION = 0.05
"""``holes``: an enclosed background region of at least this fraction of the mask area."""
MIN_SIDES_TOUCHED = 3
"""``untouched_sides``: the mask reaches fewer than this many box sides."""
LOW_SCORE = 0.5
"""``low_score``: the engine's score (in [0, 1]) is below this."""

FLAGS = ("empty", "tiny", "loose", "leaks", "fragmented", "holes", "untouched_sides", "low_score")
"""Every flag ``flags_for`` can raise, in the order it lists them."""

SIDES = ("left", "top", "right", "bottom")

RATIO_DIGITS = 4
"""Ratios in the metrics dict are rounded to this many decimals."""


def rounded(v: float) -> float:
    """``v`` as a float rounded to ``RATIO_DIGITS`` decimals."""
    return round(float(v), RATIO_DIGITS)


def _empty_metrics(box_area: int) -> dict[str, Any]:
    return {
        "area": 0,
        "box_area": box_area,
        "tightness_iou": 0.0,
        "side_touch": {s: False for s in SIDES},
        "sides_touched": 0,
        "fill_ratio": 0.0,
        "leakage": 0.0,
        "components": 0,
        "largest_component_ratio": 0.0,
        "holes": 0,
        "large_holes": 0,
    }


def mask_metrics(mask: np.ndarray, box: BoxXYXY, *, touch_tolerance: int = 2,
                 score: float | None = None) -> dict[str, Any]:
    """Box-consistency and shape metrics of one full-image mask, with flags.

    Args:
        mask: H x W bool (or 0/1) mask in full-image coordinates.
        box: the input box, library convention (0-based inclusive pixels); clipped to the image.
        touch_tolerance: a side counts as touched when some mask pixel inside the box lies at most
            this many pixels from it.
        score: the engine's score in [0, 1], when known (adds ``low_score``).

    Returns a JSON-able dict: ``area`` and ``box_area`` (px), ``tightness_iou``, ``side_touch``
    (``{left, top, right, bottom}`` -> bool), ``sides_touched``, ``fill_ratio`` (mask pixels
    inside the box / box area), ``leakage`` (mask pixels outside the box / mask area),
    ``components`` (8-connected), ``largest_component_ratio``, ``holes`` (enclosed background
    regions, any size), ``large_holes`` (those >= ``HOLE_MIN_FRACTION`` of the area) and
    ``flags`` (see ``flags_for``). Ratios are rounded to 4 decimals.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    if mask.dtype != bool:
        mask = mask != 0
    h, w = mask.shape
    b = clip_box(int_box(box), w, h)
    box_area = box_area_of(b) if b is not None else 0

    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        m = _empty_metrics(box_area)
        m["flags"] = flags_for(m, score)
        return m
    cols = np.flatnonzero(mask[rows[0]:rows[-1] + 1].any(axis=0))
    tight = (int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1]))

    # the crop: union of the tight box and the (clipped) input box
    ref = b if b is not None else tight
    cx0, cy0 = min(tight[0], ref[0]), min(tight[1], ref[1])
    cx1, cy1 = max(tight[2], ref[2]), max(tight[3], ref[3])
    crop = mask[cy0:cy1 + 1, cx0:cx1 + 1]
    area = int(np.count_nonzero(crop))

    side_touch = {s: False for s in SIDES}
    inside = 0
    if b is not None:
        inner = crop[b[1] - cy0:b[3] - cy0 + 1, b[0] - cx0:b[2] - cx0 + 1]
        inside = int(np.count_nonzero(inner))
        if inside:
            ic = np.flatnonzero(inner.any(axis=0))
            ir = np.flatnonzero(inner.any(axis=1))
            bw, bh = inner.shape[1], inner.shape[0]
            side_touch = {
                "left": bool(ic[0] <= touch_tolerance),
                "top": bool(ir[0] <= touch_tolerance),
                "right": bool(ic[-1] >= bw - 1 - touch_tolerance),
                "bottom": bool(ir[-1] >= bh - 1 - touch_tolerance),
            }

    # topology on the mask's own tight crop
    tcrop = crop[tight[1] - cy0:tight[3] - cy0 + 1, tight[0] - cx0:tight[2] - cx0 + 1]
    n, _, stats, _ = cv2.connectedComponentsWithStats(tcrop.view(np.uint8), connectivity=8)
    comp_areas = stats[1:, cv2.CC_STAT_AREA]
    holes_all, holes_large = _holes(tcrop, max(1, math.ceil(HOLE_MIN_FRACTION * area)))

    m = {
        "area": area,
        "box_area": box_area,
        "tightness_iou": rounded(box_iou(tight, b)) if b is not None else 0.0,
        "side_touch": side_touch,
        "sides_touched": sum(side_touch.values()),
        "fill_ratio": rounded(inside / box_area) if box_area else 0.0,
        "leakage": rounded((area - inside) / area),
        "components": int(n - 1),
        "largest_component_ratio": rounded(comp_areas.max() / area),
        "holes": holes_all,
        "large_holes": holes_large,
    }
    m["flags"] = flags_for(m, score)
    return m


def _holes(tight_crop: np.ndarray, min_area: int) -> tuple[int, int]:
    """(all holes, holes of at least ``min_area`` px) of a mask cropped to its tight box."""
    inv = np.pad(~tight_crop, 1, constant_values=True).view(np.uint8)
    n, _, stats, _ = cv2.connectedComponentsWithStats(inv, connectivity=4)
    if n <= 2:
        return 0, 0
    # label 1 is the region holding the padded corner (0, 0): the outside; the rest are holes
    areas = stats[2:, cv2.CC_STAT_AREA]
    return int(areas.size), int(np.count_nonzero(areas >= min_area))


def flags_for(metrics: dict[str, Any], score: float | None = None) -> list[str]:
    """Flags for a ``mask_metrics`` dict (and the engine's score, when known), in ``FLAGS`` order.

    An empty mask gets ``empty`` alone (plus ``low_score``): the shape flags would only restate it.
    """
    flags: list[str] = []
    if metrics["area"] == 0:
        flags.append("empty")
    else:
        if metrics["fill_ratio"] < TINY_FILL:
            flags.append("tiny")
        if metrics["tightness_iou"] < LOOSE_TIGHTNESS:
            flags.append("loose")
        if metrics["leakage"] > LEAKS_FRACTION:
            flags.append("leaks")
        if (metrics["components"] > FRAGMENTED_MIN_COMPONENTS
                and metrics["largest_component_ratio"] < FRAGMENTED_LARGEST):
            flags.append("fragmented")
        if metrics.get("large_holes", metrics["holes"]) > 0:
            flags.append("holes")
        if metrics["sides_touched"] < MIN_SIDES_TOUCHED:
            flags.append("untouched_sides")
    if score is not None and score < LOW_SCORE:
        flags.append("low_score")
    return flags
