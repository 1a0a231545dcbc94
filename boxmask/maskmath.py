"""Pure measures on masks and score maps, one version of each: IoU, stability, depth.

Masks are bool (or 0/1) numpy arrays of equal shape; rows are ``y``, columns ``x``.

**Stability** (SAM's stability score): the IoU of a score map cut at two levels,
``count(values > upper) / count(values > lower)`` (the stricter mask lies inside the looser one).
The levels are in the map's own units: probabilities, or logits (``sigmoid_cuts`` turns
``0.5 -+ delta`` on the sigmoid into logit levels). ``stability`` is the numpy reference for one
map; ``stability_torch`` is its batched twin for maps already on a torch device (the GPU path), and
needs no torch import here.

**The empty-mask rule, everywhere:** a measure with nothing to measure is 0.0. The IoU of two
masks whose union is empty is 0.0, and the stability of a map with no pixel above the lower cut is
0.0: an empty prediction is neither a match nor a stable result, so it never ranks above a real
one. ``deepest_pixel`` of an empty mask is None.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


def mask_iou(a: np.ndarray, b: np.ndarray, void: np.ndarray | None = None) -> float:
    """IoU of two masks in pixels; ``void`` pixels count in neither term; 0.0 when the union
    (outside the void) is empty."""
    a = np.asarray(a, dtype=bool)
    b = np.asarray(b, dtype=bool)
    inter = a & b
    union = a | b
    if void is not None:
        inter &= ~void
        union &= ~void
    u = int(np.count_nonzero(union))
    return int(np.count_nonzero(inter)) / u if u else 0.0


def stability(values: np.ndarray, lower: float, upper: float) -> float:
    """``count(values > upper) / count(values > lower)`` for ``lower <= upper``: the IoU of the
    masks cut at the two levels (the stricter one lies inside the looser one); 0.0 when nothing
    exceeds ``lower``."""
    x = np.asarray(values)
    union = int(np.count_nonzero(x > lower))
    return float(np.count_nonzero(x > upper)) / union if union else 0.0


def stability_torch(values: torch.Tensor, lower: float, upper: float) -> torch.Tensor:
    """Batched twin of ``stability``: ``(N, ...)`` maps -> ``(N,)`` float32, each map counted over
    all its elements; 0.0 where nothing exceeds ``lower``. Runs on the maps' device."""
    flat = values.reshape(values.shape[0], -1)
    union = (flat > lower).sum(dim=1)
    inter = (flat > upper).sum(dim=1)  # <= union, so 0 / 1 = 0.0 where the union is empty
    return (inter / union.clamp(min=1)).float()


def sigmoid_cuts(delta: float, center: float = 0.5) -> tuple[float, float]:
    """``(lower, upper)`` logit levels for the probability cuts ``center -+ delta``, for
    ``stability`` on logits; both cuts must lie strictly inside (0, 1)."""
    return _logit(center - delta), _logit(center + delta)


def _logit(p: float) -> float:
    if not 0.0 < p < 1.0:
        raise ValueError(f"stability thresholds must lie in (0, 1), got {p}")
    return math.log(p / (1.0 - p))


def depth(mask: np.ndarray, sampling: Sequence[float] | None = None,
          border_is_background: bool = True) -> np.ndarray:
    """Euclidean distance of every mask pixel to the nearest background pixel (0 off the mask).

    ``sampling``: the pixel pitch ``(row, column)`` (distances in those units; default 1, 1).
    ``border_is_background``: the array's outside counts as background (a mask touching the
    border is shallow there), as for an object cut at a crop's edge.
    """
    from scipy.ndimage import distance_transform_edt  # slow to import: only when needed

    m = np.asarray(mask, dtype=bool)
    if not border_is_background:
        return distance_transform_edt(m, sampling=sampling)
    return distance_transform_edt(np.pad(m, 1), sampling=sampling)[1:-1, 1:-1]


def deepest_pixel(mask: np.ndarray, sampling: Sequence[float] | None = None,
                  border_is_background: bool = True) -> tuple[int, int] | None:
    """``(row, col)`` of the first (row-major) maximum of ``depth``; None for an empty mask.
    This is the official IOG/DEXTR rule for the inside click and the corrective click."""
    m = np.asarray(mask, dtype=bool)
    if not m.any():
        return None
    d = depth(m, sampling, border_is_background)
    row, col = np.unravel_index(int(np.argmax(d)), d.shape)
    return int(row), int(col)
