"""The per-mask keys of one pass over a run (``LightKeys``) and the flags a sampled mask can carry.

Shared by the sampling (``boxmask.quality.sampling``, which builds the keys) and the run overview
(``boxmask.quality.summary``, which tabulates them). Scores and fill ratios are in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ..maskmetrics import FLAGS
from .metrics import ClassFillStats

FILL_OUTLIER = "fill_outlier"
"""The flag for a fill ratio that is an outlier within its class (added at sampling)."""
SAMPLE_FLAGS = (*FLAGS, FILL_OUTLIER)
"""Every flag a sampled item can carry; bit ``i`` of ``LightKeys.bits`` is ``SAMPLE_FLAGS[i]``."""

FLAG_BIT = {f: 1 << i for i, f in enumerate(SAMPLE_FLAGS)}
"""Bit mask of each of ``SAMPLE_FLAGS`` in ``LightKeys.bits``."""


@dataclass
class LightKeys:
    """Per-mask keys of one pass over a run, in stream order (row ``i`` = the i-th mask)."""

    label_ids: list[str]
    """Class index -> label id."""
    label_names: list[str]
    label: np.ndarray
    """int32 class index per mask."""
    score: np.ndarray
    """float32 engine score."""
    fill: np.ndarray
    """float32 fill ratio (NaN where the metrics have none)."""
    bits: np.ndarray
    """uint16 flag bits (``SAMPLE_FLAGS``), ``fill_outlier`` included."""
    check: np.ndarray
    """uint32 CRC-32 of ``image_id + NUL + box_id``: the second pass checks it."""
    where: np.ndarray
    """(N, 3) int32 ``Locator`` of each mask."""
    fill_stats: ClassFillStats
    flag_names: ClassVar[tuple[str, ...]] = SAMPLE_FLAGS
    """Bit ``i`` of ``bits`` is ``flag_names[i]``."""

    def __len__(self) -> int:
        return int(self.label.size)

    def flags(self, row: int) -> list[str]:
        b = int(self.bits[row])
        return [f for f in SAMPLE_FLAGS if b & FLAG_BIT[f]]
