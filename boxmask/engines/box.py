"""The box engine: the mask is the filled box. A baseline for evaluation tables (what a box alone
scores against ground truth) and a near-zero-cost engine for measuring the job machinery."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .base import Engine, Prediction, SegmentRequest, default_inside_points, iog_clicks


class BoxEngine(Engine):
    """Mask = every pixel of the box; score = 1 (no evidence either way)."""

    name = "box"
    batch_boxes = 64

    def describe(self) -> dict[str, Any]:
        return {"name": self.name}

    def segment(self, requests: Sequence[SegmentRequest]) -> list[list[Prediction]]:
        out = []
        for r in requests:
            h, w = r.image.shape[:2]
            inside = r.inside if r.inside is not None else default_inside_points(r.boxes)
            preds = []
            for (x0, y0, x1, y1), (cx, cy) in zip(r.boxes.tolist(), inside.tolist(), strict=True):
                mask = np.zeros((h, w), dtype=bool)
                mask[y0:y1 + 1, x0:x1 + 1] = True
                preds.append(Prediction(mask=mask, score=1.0,
                                        clicks=iog_clicks((x0, y0, x1, y1), (cx, cy))))
            out.append(preds)
        return out
