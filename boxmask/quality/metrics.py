"""Quality metrics of a run: the per-class fill-ratio outliers over a run's sidecar records.

The per-mask metrics and flags are ``boxmask.maskmetrics`` (``mask_metrics``, ``flags_for`` and
``FLAGS`` are re-exported here); fill ratios are in [0, 1].
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..maskmetrics import FLAGS, flags_for, mask_metrics, rounded

__all__ = ["FLAGS", "MAD_TO_SIGMA", "MEANAD_TO_SIGMA", "MIN_CLASS_COUNT", "ClassFillStats",
           "fill_outliers", "flags_for", "mask_metrics"]

MAD_TO_SIGMA = 0.6745
"""Iglewicz & Hoaglin's modified z-score: ``0.6745 * (x - median) / MAD``."""
MEANAD_TO_SIGMA = 1.253314
"""Fallback when MAD = 0 (over half the values equal): ``(x - median) / (1.2533 * meanAD)``."""
MIN_CLASS_COUNT = 20
"""Classes with fewer masks than this get no outlier flags (too few for a robust spread)."""


@dataclass
class ClassFillStats:
    """Streaming collection of fill ratios per class; robust (median/MAD) z-scores at the end.

    Memory: 4 bytes per mask (``array('f')`` per class), so a 600k-mask run needs ~2.4 MB.
    """

    min_count: int = MIN_CLASS_COUNT
    fills: dict[str, array] = field(default_factory=dict)

    def add(self, label: str, fill_ratio: float) -> None:
        self.fills.setdefault(label, array("f")).append(float(fill_ratio))

    def center_scale(self, label: str) -> tuple[float, float] | None:
        """``(median, scale)`` of the class so that ``z = (x - median) / scale``; ``None`` when the
        class has fewer than ``min_count`` masks or no spread at all."""
        values = self.fills.get(label)
        if values is None or len(values) < self.min_count:
            return None
        v = np.frombuffer(values, dtype=np.float32).astype(np.float64)
        med = float(np.median(v))
        mad = float(np.median(np.abs(v - med)))
        if mad > 0:
            return med, mad / MAD_TO_SIGMA
        mean_ad = float(np.mean(np.abs(v - med)))
        if mean_ad > 0:
            return med, MEANAD_TO_SIGMA * mean_ad
        return None

    def zscore(self, label: str, fill_ratio: float) -> float | None:
        """Robust z-score of one fill ratio within its class; ``None`` where the class has none."""
        cs = self.center_scale(label)
        if cs is None:
            return None
        return (float(fill_ratio) - cs[0]) / cs[1]

    def summary(self) -> dict[str, dict[str, float]]:
        """Per class: ``count``, ``median`` and robust ``scale`` (absent when too few masks)."""
        out: dict[str, dict[str, float]] = {}
        for label, values in sorted(self.fills.items()):
            row: dict[str, float] = {"count": len(values)}
            cs = self.center_scale(label)
            if cs is not None:
                row["median"], row["scale"] = rounded(cs[0]), rounded(cs[1])
            out[label] = row
        return out


def _fill_of(record: dict[str, Any]) -> float | None:
    fill = (record.get("metrics") or {}).get("fill_ratio")
    return None if fill is None else float(fill)


def fill_outliers(records_iterable: Iterable[dict[str, Any]] | Callable[[], Iterable[dict]],
                  z: float = 3.5, *, min_count: int = MIN_CLASS_COUNT) -> set[tuple[str, str]]:
    """``(image_id, box_id)`` of masks whose fill ratio is an outlier within their class.

    ``records_iterable``: sidecar records (``masks.jsonl`` lines as dicts with ``image_id``,
    ``box_id``, ``label`` and ``metrics.fill_ratio``; records without a fill ratio are skipped).
    Pass a re-iterable (a list) or a callable returning a fresh iterator to get two streaming
    passes; a one-shot iterator is buffered as compact tuples. An outlier has
    ``|robust z| > z`` (3.5 is Iglewicz & Hoaglin's cut); classes with fewer than ``min_count``
    masks yield none.
    """
    if callable(records_iterable):
        passes: Callable[[], Iterable[dict]] = records_iterable
    elif iter(records_iterable) is records_iterable:
        buffered = [
            {"image_id": r["image_id"], "box_id": r["box_id"], "label": r.get("label", ""),
             "metrics": {"fill_ratio": f}}
            for r in records_iterable if (f := _fill_of(r)) is not None
        ]
        passes = lambda: buffered  # noqa: E731
    else:
        passes = lambda: records_iterable  # noqa: E731

    stats = ClassFillStats(min_count=min_count)
    for r in passes():
        fill = _fill_of(r)
        if fill is not None:
            stats.add(str(r.get("label", "")), fill)
    scales = {label: stats.center_scale(label) for label in stats.fills}
    out: set[tuple[str, str]] = set()
    for r in passes():
        fill = _fill_of(r)
        cs = scales.get(str(r.get("label", "")))
        if fill is None or cs is None:
            continue
        if abs(fill - cs[0]) / cs[1] > z:
            out.add((str(r["image_id"]), str(r["box_id"])))
    return out

