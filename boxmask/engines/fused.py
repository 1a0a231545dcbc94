"""Fused engine: U²-Net where it found the boxed object, IOG-seeded GrabCut where it did not.

U²-Net (``boxmask.engines.u2net``) segments the most salient thing in a window around the box. On
isolated objects that is the object, with better boundaries than any colour model; in clutter it
is often something else in the window (a neighbour, a part, a printed pattern) and then its mask
covers only a small part of the box. GrabCut (``boxmask.engines.grabcut``) is seeded with the box
itself, so it always goes for what fills the box, but leaks into look-alike background.

The choice per box uses the one thing a box annotation promises: the object spans the box. The
**box fit** of a mask is the area of the mask's tight box over the box area (1 when the mask
touches all four sides; ``boxmask.engines.fusion.box_fit``); for U²-Net it is measured on the
mask's largest component (``main_fit``), so that specks near the sides do not count. U²-Net's
mask (all of it) is kept unless it is empty or its fit is below ``fit_ratio`` [0.5] times the fit
of GrabCut's mask of the same box:
U²-Net then found something much smaller than what fills the box. Comparing the two fits rather
than using U²-Net's fit alone keeps the rule working for loose boxes, where every mask fits less.
Because a fit never exceeds 1, GrabCut only runs for boxes whose U²-Net fit is below
``fit_ratio``: most boxes cost one U²-Net forward only.

Score: ``confidence x fit_score(fit)`` of the chosen mask, where confidence is U²-Net's
decisiveness over the box (mean ``2 |p - 0.5|``) or GrabCut's colour-model agreement
(``boxmask.engines.grabcut``), and ``fit_score`` saturates the fit at 0.6 so that loose boxes do
not drag correct masks down (``boxmask.engines.fusion.fit_score``).
``extras``: ``chosen`` (``"u2net"`` or ``"grabcut"``), ``fit_u2net``, ``fit_grabcut`` (when
GrabCut ran), ``confidence``, ``fill``.

Tried on the dev sets and not kept (``benchmarks/bench_engines.py`` figures, mean IoU):
U²-Net's probabilities as GrabCut's initial labels (COCO-MVal 0.61, DAVIS 0.78: the colour models
undo U²-Net's edges), keeping only U²-Net's component under the inside point or filling its
holes (within 0.01 either way), and a second U²-Net pass on the box alone where the first missed
(+0.001).

Boxes with user clicks (``request.extra_clicks``) go to GrabCut with those clicks, since U²-Net
takes none. Options: ``weights``, ``context`` [0.25], ``threshold``, ``device``, ``batch_size``,
``precision``, ``channels_last``, ``num_threads``, ``input_size`` go to the U²-Net engine;
``fit_ratio``; every ``grabcut_*`` option goes to the GrabCut engine without its prefix (e.g.
``grabcut_iterations``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..boxes import int_box
from .base import Engine, Prediction, SegmentRequest, default_inside_points
from .fusion import box_fit, fit_score
from .grabcut import GrabCutEngine
from .u2net import DEFAULT_CONTEXT, DEFAULT_WEIGHTS, Saliency, U2NetEngine
from .u2net import INPUT_SIZE as U2NET_INPUT_SIZE


class FusedEngine(Engine):
    """U²-Net, or GrabCut where U²-Net missed the boxed object; see the module docstring."""

    name = "fused"
    CPU_PARALLEL = "processes"
    RUNTIME_OPTIONS = U2NetEngine.RUNTIME_OPTIONS

    @property
    def device(self) -> Any:
        """The U²-Net network's ``torch.device``."""
        return self.u2net.device

    def __init__(self, weights: str | Path | None = DEFAULT_WEIGHTS, *,
                 context: float = DEFAULT_CONTEXT, threshold: float = 0.5,
                 fit_ratio: float = 0.5, device: str | None = "auto",
                 batch_size: int | None = None, precision: str = "fp32",
                 channels_last: bool = True, num_threads: int | None = None,
                 input_size: int = U2NET_INPUT_SIZE, u2net: U2NetEngine | None = None,
                 **grabcut_options: Any) -> None:
        if not 0.0 <= fit_ratio <= 1.0:
            raise ValueError("fit_ratio must be in [0, 1]")
        unknown = [k for k in grabcut_options if not k.startswith("grabcut_")]
        if unknown:
            raise TypeError(f"unknown fused-engine options: {', '.join(sorted(unknown))}")
        self.u2net = u2net or U2NetEngine(
            weights, device=device, batch_size=batch_size, precision=precision,
            channels_last=channels_last, context=context, threshold=threshold,
            num_threads=num_threads, input_size=input_size)
        self.grabcut = GrabCutEngine(**{k[len("grabcut_"):]: v
                                        for k, v in grabcut_options.items()})
        self.fit_ratio = float(fit_ratio)

    @property
    def batch_boxes(self) -> int:
        return self.u2net.batch_boxes

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "fit_ratio": self.fit_ratio,
                "u2net": self.u2net.describe(), "grabcut": self.grabcut.describe()}

    def segment(self, requests: Sequence[SegmentRequest]) -> list[list[Prediction]]:
        maps = self.u2net.saliency(requests)
        results = []
        for req, req_maps in zip(requests, maps, strict=True):
            inside = req.inside if req.inside is not None else default_inside_points(req.boxes)
            preds = []
            for b, (box, sal) in enumerate(zip(req.boxes, req_maps, strict=True)):
                extra = req.extra_clicks[b] if req.extra_clicks and b < len(req.extra_clicks) \
                    else None
                preds.append(self.segment_box(req.image, int_box(box),
                                              (float(inside[b, 0]), float(inside[b, 1])),
                                              sal, extra or ()))
            results.append(preds)
        return results

    def segment_box(self, image: np.ndarray, box: tuple[int, int, int, int],
                    inside: tuple[float, float], sal: Saliency,
                    extra: Sequence[Any] = ()) -> Prediction:
        """The fused prediction of one library ``box`` given its U²-Net map ``sal``."""
        x0, y0, x1, y1 = box
        mask_u, conf_u, fit_u = self.u2net.measure(box, sal)
        extras: dict[str, Any] = {"fit_u2net": round(fit_u, 6)}
        if not extra and mask_u.any() and fit_u >= self.fit_ratio:
            return self._u2net(image.shape[:2], box, inside, mask_u, conf_u, fit_u, extras)
        cut = self.grabcut.segment_box(image, box, inside, extra)
        mask_g = cut.mask[y0:y1 + 1, x0:x1 + 1]
        fit_g = box_fit(mask_g)
        extras["fit_grabcut"] = round(fit_g, 6)
        if not extra and mask_u.any() and fit_u >= self.fit_ratio * fit_g:
            return self._u2net(image.shape[:2], box, inside, mask_u, conf_u, fit_u, extras)
        extras.update({k: v for k, v in cut.extras.items() if k not in extras})
        extras.update(chosen="grabcut", confidence=round(cut.score, 6),
                      fill=round(float(mask_g.mean()), 6))
        return Prediction(cut.mask, float(cut.score * fit_score(fit_g)), cut.clicks, extras)

    def _u2net(self, image_hw: Sequence[int], box: tuple[int, int, int, int],
               inside: tuple[float, float], mask_u: np.ndarray, conf: float, fit: float,
               extras: dict[str, Any]) -> Prediction:
        pred = self.u2net.prediction(image_hw, box, inside, mask_u, conf, fit)
        own = pred.extras  # confidence, fit (already in extras as fit_u2net), fill
        pred.extras = {**extras, "chosen": "u2net", "confidence": own["confidence"],
                       "fill": own["fill"]}
        return pred

    def close(self) -> None:
        self.u2net.close()
        self.grabcut.close()
