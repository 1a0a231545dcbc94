"""The overview of a run for its review report, gathered in the same pass as the sampling keys.

Streaming and bounded: counters and fixed-bin histograms while the masks go by; the per-class table
is computed at the end from the sampling keys (``boxmask.quality.keys.LightKeys``), which
already hold class, score, fill ratio and flags of every mask.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .keys import LightKeys
    from .runmasks import RunSnapshot

HIST_BINS = 20
"""Bins of every histogram, equal width over [0, 1]."""
HISTOGRAMS = {
    "score": "engine score",
    "fill_ratio": "fill ratio (mask in box / box area)",
    "tightness_iou": "tightness (IoU of mask box and input box)",
    "leakage": "leakage (mask outside box / mask area)",
}
"""Histogrammed values (all in [0, 1]) and their titles."""


def _bin(value: float) -> int:
    return min(HIST_BINS - 1, max(0, int(value * HIST_BINS)))


class SummaryCollector:
    """Counts, engine/policy tallies and histograms over a stream of ``masks.jsonl`` dicts."""

    def __init__(self) -> None:
        self.masks = 0
        self.images_with_masks = 0
        self._image: tuple[Any, Any] | None = None
        self.engines: Counter[str] = Counter()
        self.policies: Counter[str] = Counter()
        self.errors_by_stage: Counter[str] = Counter()
        self.hist = {k: [0] * HIST_BINS for k in HISTOGRAMS}

    def add(self, m: dict[str, Any]) -> None:
        self.masks += 1
        image = (m.get("image_id"), m.get("image_path"))
        if image != self._image:  # a run lists the masks of an image together
            self.images_with_masks += 1
            self._image = image
        self.engines[str(m.get("engine"))] += 1
        self.policies[str(m.get("inside_policy"))] += 1
        metrics = m.get("metrics") or {}
        for key in HISTOGRAMS:
            v = m.get("score") if key == "score" else metrics.get(key)
            if v is not None and np.isfinite(v):
                self.hist[key][_bin(float(v))] += 1

    def add_error(self, e: dict[str, Any]) -> None:
        self.errors_by_stage[str(e.get("stage", "unknown"))] += 1

    def finish(self, keys: LightKeys, src: RunSnapshot) -> dict[str, Any]:
        """The JSON-able summary (see ``boxmask.quality.gallery`` for how it is shown)."""
        n = len(keys)
        flagged = keys.bits != 0
        flags = {f: int(np.count_nonzero(keys.bits & np.uint16(1 << i)))
                 for i, f in enumerate(keys.flag_names)}
        return {
            "run": str(src.run_dir),
            "read_from": src.kind,
            "masks": n,
            "images": src.images,
            "images_with_masks": self.images_with_masks,
            "errors": sum(self.errors_by_stage.values()),
            "errors_by_stage": dict(sorted(self.errors_by_stage.items())),
            "engines": dict(sorted(self.engines.items())),
            "inside_policies": dict(sorted(self.policies.items())),
            "flagged": int(np.count_nonzero(flagged)),
            "flags": flags,
            "histograms": {k: {"title": t, "range": [0.0, 1.0], "counts": self.hist[k]}
                           for k, t in HISTOGRAMS.items()},
            "classes": class_table(keys),
        }


def class_table(keys: LightKeys) -> list[dict[str, Any]]:
    """Per class (most masks first): masks, mean score, flagged masks and rate, the median fill
    ratio and the most frequent flag."""
    n_cls = len(keys.label_ids)
    if not n_cls:
        return []
    count = np.bincount(keys.label, minlength=n_cls)
    finite = np.isfinite(keys.score)
    score_sum = np.bincount(keys.label[finite], keys.score[finite].astype(np.float64), n_cls)
    score_n = np.bincount(keys.label[finite], minlength=n_cls)
    flagged = np.bincount(keys.label, (keys.bits != 0).astype(np.float64), n_cls)
    per_flag = np.stack([np.bincount(keys.label, ((keys.bits >> i) & 1).astype(np.float64), n_cls)
                         for i in range(len(keys.flag_names))], axis=1)
    order = np.lexsort((keys.fill, keys.label))  # by class, then fill (NaN last)
    starts = np.concatenate([[0], np.cumsum(count)])
    rows = []
    for k in np.argsort(-count, kind="stable"):
        fills = keys.fill[order[starts[k]:starts[k + 1]]]
        fills = fills[np.isfinite(fills)]
        top = int(per_flag[k].argmax())
        rows.append({
            "label": keys.label_ids[k],
            "name": keys.label_names[k],
            "masks": int(count[k]),
            "mean_score": round(float(score_sum[k] / score_n[k]), 4) if score_n[k] else None,
            "flagged": int(flagged[k]),
            "flag_rate": round(float(flagged[k] / count[k]), 4),
            "fill_median": round(float(np.median(fills)), 4) if fills.size else None,
            "top_flag": keys.flag_names[top] if per_flag[k, top] else None,
        })
    return rows
