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


FIT_SATURATION = 0.6
"""Box fit from which a mask counts as spanning its box in the scores (``fit_score``)."""


def fit_score(fit: float) -> float:
    """The box-fit factor of the learned engines' scores: ``min(1, fit / FIT_SATURATION)``.

    A mask of a tight box spans it (fit near 1), but boxes of other datasets are looser, and
    there a correct mask fits less: saturating at 0.6 keeps the score ranking masks by quality on
    tight and on padded boxes alike (Spearman with the true IoU 0.54-0.76 on the dev sets with
    boxes padded by 0, 5 and 15 %, where the raw fit falls to 0.1 on the loosest;
    ``benchmarks/bench_engines.py``)."""
    return min(1.0, max(fit, 0.0) / FIT_SATURATION)
