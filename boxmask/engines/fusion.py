"""Pure measures the learned engines share: box fit and decisiveness of a probability map.

Masks and maps here are box-local arrays (``box h x box w``).
"""

from __future__ import annotations

import numpy as np

from .grabcut import keep_components


def box_fit(mask: np.ndarray) -> float:
    """Area of the mask's tight box over the area of the array (the box): 1 when the mask touches
    all four box sides, 0 for an empty mask."""
    if not mask.any():
        return 0.0
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return float((rows[-1] - rows[0] + 1) * (cols[-1] - cols[0] + 1)) / mask.size


def confidence(prob: np.ndarray) -> float:
    """Mean of ``2 |p - 0.5|``: 1 when every probability is 0 or 1, 0 when all are 0.5."""
    if prob.size == 0:
        return 0.0
    return float(np.mean(np.abs(prob.astype(np.float32) - 0.5)) * 2.0)


def main_fit(mask: np.ndarray) -> float:
    """``box_fit`` of the mask's largest 8-connected component: how far the main thing found
    spans the box, not lifted by specks near the sides."""
    if not mask.any():
        return 0.0
    return box_fit(keep_components(mask, [], "largest"))
