"""U²-Net engine: the salient object of a crop around each box, batched across images.

Boxes are library boxes ``(x0, y0, x1, y1)`` (0-based, inclusive pixel indices); points are
``(x, y)`` = (column, row) in image pixels. Defaults in brackets.

What one box goes through
-------------------------
1. **Window**: the box grown by ``context`` [0.25] of its width (left and right) and height (top
   and bottom), rounded outwards and clipped to the image (``context_window``).
2. **Input**: the window resized to ``input_size`` x ``input_size`` [320] (``cv2.INTER_AREA``
   when shrinking, bilinear when growing), divided by its maximum value, normalised with the
   ImageNet mean/std (the released weights' preprocessing), channels first.
3. **Network**: U²-Net's fused map (sigmoid probabilities, ``input_size`` squared);
   ``batch_size`` crops per forward, crops of different images stacked.
4. **Back**: the map resized bilinearly to the window size (``Saliency.prob``); the mask is
   ``prob > threshold`` [0.5] inside the box, as it is (keeping only the component under the
   inside point, or filling holes, measured no better on the dev sets: ``benchmarks/``).

Score: the mean of ``2 |p - 0.5|`` over the box (how decided the network is about every pixel, 1
for a map of only 0s and 1s), times how well the mask fits the box (``fit_score`` of ``main_fit``:
the tight box of the mask's largest component over the box, saturated at 0.6; see
``boxmask.engines.fusion``); 0 for an empty mask. The inside point is not used (it is recorded in
the clicks). ``extras``: ``confidence`` (the first factor), ``fit``, ``fill`` (mask area / box
area).

Options: ``weights`` (registry name ``u2net`` / ``u2netp`` or a state-dict path), ``device``,
``batch_size`` (default 32 on CUDA; on a CPU 1, or 4 with AMX), ``precision`` (``fp32``,
``bf16``, ``fp16``: autocast, refused where not native), ``channels_last`` [True],
``num_threads``, ``input_size`` (a multiple of 32 from 64 to 1024). Only ``weights``,
``context``, ``threshold``, ``input_size`` and ``precision`` change masks (``describe``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import cv2
import numpy as np
import torch

from ..boxes import int_box
from ..device import autocast, default_batch_size, runtime
from ..models.u2net import INPUT_SIZE, MEAN, STD, U2Net
from .base import Engine, Prediction, SegmentRequest, default_inside_points, iog_clicks
from .fusion import confidence, fit_score, main_fit

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = {"cpu": 1, "cpu-amx": 4, "cuda": 32}
"""Crops per forward by default (``boxmask.device.default_batch_size``). CPU: on a 2-core Zen 4
EPYC (AVX-512, no AMX) batch 1 took 0.69 s per 320² crop against 0.71 for batch 4 with 2
threads, 1.22 against 1.28 with one thread (``benchmarks/bench_u2net_speed.py``: 0.624 against
0.675); CPUs with AMX keep 4 (not measured)."""
DEFAULT_WEIGHTS = "u2net"
DEFAULT_CONTEXT = 0.25
"""Window margin as a fraction of the box side; 0.25 measured best of 0, 0.1, 0.2, 0.25, 0.4 and
0.6 on the dev sets with tight and padded boxes (``benchmarks/bench_engines.py``)."""


def context_window(box: Sequence[int], width: int, height: int,
                   context: float) -> tuple[int, int, int, int]:
    """Library box of the window around library ``box``: ``context`` x box width added left and
    right, ``context`` x box height above and below, rounded outwards, clipped to the image."""
    x0, y0, x1, y1 = (int(v) for v in box)
    mx = context * (x1 - x0 + 1)
    my = context * (y1 - y0 + 1)
    return (max(int(np.floor(x0 - mx)), 0), max(int(np.floor(y0 - my)), 0),
            min(int(np.ceil(x1 + mx)), width - 1), min(int(np.ceil(y1 + my)), height - 1))


def network_input(crop_rgb: np.ndarray, size: int = INPUT_SIZE) -> np.ndarray:
    """Float32 ``[3, size, size]`` U²-Net input of an ``h x w x 3`` uint8 RGB crop: resized,
    divided by its maximum (1 for an all-black crop), ImageNet mean/std normalised."""
    h, w = crop_rgb.shape[:2]
    interp = cv2.INTER_AREA if h * w > size * size else cv2.INTER_LINEAR
    x = cv2.resize(crop_rgb, (size, size), interpolation=interp).astype(np.float32)
    x /= max(float(x.max()), 1.0)
    normalised = (x - np.asarray(MEAN, np.float32)) / np.asarray(STD, np.float32)
    return np.ascontiguousarray(normalised.transpose(2, 0, 1))


@dataclass
class Saliency:
    """U²-Net's fused probability map over one box's window."""

    window: tuple[int, int, int, int]
    """The window as a library box in image pixels."""
    prob: np.ndarray
    """float32 ``(window h, window w)`` probabilities in [0, 1]."""

    def box_prob(self, box: Sequence[int]) -> np.ndarray:
        """The probabilities over library ``box`` (which lies inside the window)."""
        wx0, wy0 = self.window[:2]
        return self.prob[box[1] - wy0:box[3] - wy0 + 1, box[0] - wx0:box[2] - wx0 + 1]


class U2NetEngine(Engine):
    """Masks from U²-Net saliency inside each box; see the module docstring."""

    name = "u2net"
    CPU_PARALLEL = "processes"  # small convolutions: workers scale better than threads
    RUNTIME_OPTIONS = frozenset({"device", "batch_size", "num_threads", "channels_last"})

    def __init__(self, weights: str | Path | None = DEFAULT_WEIGHTS, *, device: str | None = "auto",
                 batch_size: int | None = None, precision: str = "fp32",
                 channels_last: bool = True, context: float = DEFAULT_CONTEXT,
                 threshold: float = 0.5, num_threads: int | None = None,
                 input_size: int = INPUT_SIZE) -> None:
        from ..hashing import sha256_file
        from ..models.u2net import load_u2net
        from ..weights import resolve_weights

        weights = weights or DEFAULT_WEIGHTS
        path = resolve_weights(weights)
        net = load_u2net(str(path))
        self._setup(net, weights=Path(str(weights)).name, sha256=sha256_file(path),
                    device=device, batch_size=batch_size, precision=precision,
                    channels_last=channels_last, context=context, threshold=threshold,
                    num_threads=num_threads, input_size=input_size)

    @classmethod
    def from_network(cls, net: torch.nn.Module, **options: Any) -> U2NetEngine:
        """An engine around an already built ``U2Net``; ``describe()`` then names no weights."""
        self = cls.__new__(cls)
        self._setup(net, weights=None, sha256=None, **options)
        return self

    def _setup(self, net: torch.nn.Module, *, weights: str | None, sha256: str | None,
               device: str | None = "auto", batch_size: int | None = None,
               precision: str = "fp32", channels_last: bool = True,
               context: float = DEFAULT_CONTEXT, threshold: float = 0.5,
               num_threads: int | None = None, input_size: int = INPUT_SIZE) -> None:
        if int(input_size) != input_size or not 64 <= input_size <= 1024 or input_size % 32:
            raise ValueError("input_size must be a multiple of 32 from 64 to 1024 (pixels)")
        if not 0.0 <= context <= 2.0:
            raise ValueError("context must be in [0, 2] (a fraction of the box side)")
        if not 0.0 < threshold < 1.0:
            raise ValueError("threshold must be in (0, 1)")
        self.device = runtime(device, precision, num_threads)
        self.weights, self.sha256 = weights, sha256
        self.variant = getattr(net, "variant", "u2net")
        self.precision, self.context, self.threshold = precision, float(context), float(threshold)
        self.channels_last = bool(channels_last)
        self.input_size = int(input_size)
        self.batch_size = int(batch_size or default_batch_size(DEFAULT_BATCH_SIZE, self.device))
        if self.batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        net = net.eval().to(self.device)
        if self.channels_last:
            net = net.to(memory_format=torch.channels_last)
        self.net = cast(U2Net, net)  # or any module with U2Net's forward_fused
        logger.info("U²-Net engine: %s on %s, %s, %d crops per forward", self.variant,
                    self.device, precision, self.batch_size)

    @property
    def batch_boxes(self) -> int:
        """Boxes to hand to one ``segment`` call (a few forward batches)."""
        return self.batch_size * 2

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "weights": self.weights, "weights_sha256": self.sha256,
                "architecture": self.variant, "precision": self.precision,
                "context": self.context, "threshold": self.threshold, "input_size": self.input_size}

    # -- network -----------------------------------------------------------------------------
    def forward_batch(self, x: torch.Tensor) -> torch.Tensor:
        """Fused probabilities ``[N, 1, S, S]`` (float32, CPU) of a prepared batch
        ``[N, 3, S, S]``."""
        x = x.to(self.device)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), autocast(self.precision, self.device):
            logits = self.net.forward_fused(x)
        return torch.sigmoid(logits.float()).cpu()

    def saliency(self, requests: Sequence[SegmentRequest]) -> list[list[Saliency]]:
        """U²-Net's map over the window of every box, per request, in box order."""
        windows: list[tuple[int, int, tuple[int, int, int, int]]] = []
        for r, req in enumerate(requests):
            h, w = req.image.shape[:2]
            for b, box in enumerate(req.boxes):
                windows.append((r, b, context_window(box, w, h, self.context)))
        out: list[list[Saliency | None]] = [[None] * len(req.boxes) for req in requests]
        for start in range(0, len(windows), self.batch_size):
            chunk = windows[start:start + self.batch_size]
            x = torch.from_numpy(np.stack([
                network_input(requests[r].image[wy0:wy1 + 1, wx0:wx1 + 1], self.input_size)
                for r, _, (wx0, wy0, wx1, wy1) in chunk]))
            probs = self.forward_batch(x)[:, 0].numpy()
            for (r, b, win), p in zip(chunk, probs, strict=True):
                size = (win[2] - win[0] + 1, win[3] - win[1] + 1)
                back = cv2.resize(p, size, interpolation=cv2.INTER_LINEAR)
                out[r][b] = Saliency(win, np.clip(back, 0.0, 1.0))
        return out  # type: ignore[return-value]

    def segment(self, requests: Sequence[SegmentRequest]) -> list[list[Prediction]]:
        maps = self.saliency(requests)
        results = []
        for req, req_maps in zip(requests, maps, strict=True):
            inside = req.inside if req.inside is not None else default_inside_points(req.boxes)
            preds = []
            for b, (box, sal) in enumerate(zip(req.boxes, req_maps, strict=True)):
                box_t = int_box(box)
                point = (float(inside[b, 0]), float(inside[b, 1]))
                preds.append(self.predict(req.image.shape[:2], box_t, point, sal))
            results.append(preds)
        return results

    def measure(self, box: Sequence[int], sal: Saliency) -> tuple[np.ndarray, float, float]:
        """``(mask, confidence, fit)`` of one library ``box`` from its saliency map: the
        box-local bool mask, U²-Net's decisiveness over the box and the mask's ``main_fit``."""
        p = sal.box_prob(box)
        mask = p > self.threshold
        return mask, confidence(p), main_fit(mask)

    def predict(self, image_hw: Sequence[int], box: tuple[int, int, int, int],
                inside: tuple[float, float], sal: Saliency) -> Prediction:
        """The prediction of one box from its saliency map (see the module doc)."""
        return self.prediction(image_hw, box, inside, *self.measure(box, sal))

    @staticmethod
    def prediction(image_hw: Sequence[int], box: tuple[int, int, int, int],
                   inside: tuple[float, float], mask: np.ndarray, conf: float,
                   fit: float) -> Prediction:
        """The ``Prediction`` of a ``measure``d box: the mask pasted into the image, score
        ``conf x fit_score(fit)`` (0 for an empty mask)."""
        full = np.zeros(tuple(image_hw), bool)
        full[box[1]:box[3] + 1, box[0]:box[2] + 1] = mask
        fill = float(mask.mean()) if mask.size else 0.0
        score = conf * fit_score(fit) if mask.any() else 0.0
        return Prediction(full, float(score), iog_clicks(box, inside),
                          {"confidence": round(conf, 6), "fit": round(fit, 6),
                           "fill": round(fill, 6)})
