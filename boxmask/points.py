"""Inside-point policies: where the IOG inside click goes when a dataset has only boxes.

A policy owns the call to the engine, because some policies run it more than once (the inside point
of the second pass comes from the first pass's mask). Every policy returns one prediction per box,
and records itself in the plan and the sidecar (``inside_policy``). A request that already carries
inside points (a user's click, ``SegmentRequest.inside``) keeps them: every policy then runs the
engine once with them.

Boxes are library boxes ``(x0, y0, x1, y1)`` (0-based, inclusive pixel indices); points are
``(x, y)`` = (column, row) in image pixels, integers at pixel centres.

Policies (``create_policy(name, **options)``)
---------------------------------------------
* ``center``: the box centre (the baseline).
* ``iterate`` (options ``max_rounds`` [3], ``tolerance`` [2.0]): run the engine with the centre,
  move the point to the interior point of the predicted mask (``interior_point``), run again with
  it; a box stops when its point would move less than ``tolerance`` network pixels or less than
  one image pixel (stable), when its mask is empty (the point stays), or after ``max_rounds``
  engine runs. The prediction returned is the last run's, made with the last point. Only boxes
  still moving are run again. Works with any engine.
* ``grabcut`` (option ``grabcut_options`` [{}], ``GrabCutEngine`` settings): a GrabCut pass with
  the centre picks the point (the interior point of its mask), then the configured engine runs
  once with it.
* ``stage1`` (options ``weights`` (required), ``device`` ["auto"], ``batch_size`` [8]): a
  stage-1 network (``boxmask train --task stage1``) predicts a box-only mask and the point is its
  interior point (``boxmask.models.stage1.stage1_inside_points``); then the engine runs once.

The interior point
------------------
The inside click IOG is trained with is the maximum of the Euclidean distance transform (EDT) of
the object mask in the network's 512 x 512 input, i.e. in the crop box +- 30 px resized to a
square, with the crop border counting as background (``guidance.clicks_from_mask``).
``interior_point`` uses the same rule on a predicted mask: the mask is cut to the box (outside the
box counts as background, like the crop border), and distances are measured in **network pixels**
(image pixels scaled by ``512 / crop width`` across and ``512 / crop height`` down, via the EDT's
per-axis sampling), so the point is the one IOG's click simulation would pick for that mask. The
point is an image pixel. A rectangle has a whole ridge of equally deep points, so among the points
within ``TIE_MARGIN`` network pixels of the maximum depth the one nearest to the current point wins
(the official rule takes the first in row-major order, an arbitrary end of the ridge); this keeps a
filled box on its centre and an already good point where it is.

Why ``tolerance`` = 2 network pixels: the IOG engine rounds the inside point to a network pixel,
and its click heatmap is a Gaussian with a full width at half maximum of 10 network pixels
(``guidance.SIGMA``); a move of 2 px changes the heatmap by at most ~10 % of its peak, and the
GrabCut engine's inside disk (radius 10 % of the box's short side, i.e. >= 30 network pixels)
changes even less. A smaller step does not change the next mask in a way worth another run. A move
of less than one image pixel is stable whatever the box size: the point of a mask cannot be placed
more finely than its pixels (the box centre lies between pixels when a side is even).

Diagnostics
-----------
Policies other than ``center`` add to each ``Prediction.extras`` (they land in the sidecar's
``metrics``): ``inside_moved_px`` (distance in image pixels from the box centre to the inside
point used; 0 for given points) and ``inside_source`` (``"given"``: the request's own point,
``"center"``: the box centre was kept, ``"mask"``: the interior point of a mask, ``"stage1"``: the
stage-1 network's point). ``iterate`` adds ``inside_rounds`` (engine runs for the box) and
``inside_stop`` (``"stable"``, ``"empty"``, ``"max_rounds"`` or ``"given"``).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .boxes import int_box
from .engines.base import Engine, Prediction, SegmentRequest, default_inside_points
from .hashing import sha256_file
from .registry import Registry

POLICY_CLASSES: Registry[InsidePointPolicy] = Registry("inside-point policy", "boxmask.points", {
    "center": ":CenterPolicy", "iterate": ":IteratePolicy", "grabcut": ":GrabCutPolicy",
    "u2net": ":U2NetPolicy", "stage1": ":Stage1Policy"})
"""Policy name -> class (the classes below; ``Registry`` like the engines and readers)."""
POLICIES = POLICY_CLASSES.names
RUNTIME_OPTIONS = frozenset({"device", "batch_size"})
"""Policy options that change speed, not masks (like the engines' runtime options)."""
TIE_MARGIN = 0.5
"""Points whose depth is within this many network pixels of the deepest one count as tied."""


# --------------------------------------------------------------------------- geometry (pure)


def network_scale(box: Sequence[int]) -> tuple[float, float]:
    """``(sx, sy)``: network (512-space) pixels per image pixel across and down, for the IOG crop
    of the library ``box`` (box +- ``guidance.RELAX`` px, resized to ``guidance.INPUT_SIZE``)."""
    from . import guidance as G  # imports torch: only when a policy needs it

    cw, ch = G.crop_size(G.crop_box_for(box))
    return G.INPUT_SIZE / cw, G.INPUT_SIZE / ch


def network_distance(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray,
                     box: Sequence[int] | np.ndarray) -> float:
    """Distance between two image points ``(x, y)`` in network pixels of ``box``'s IOG crop."""
    sx, sy = network_scale(int_box(box))
    return math.hypot((float(a[0]) - float(b[0])) * sx, (float(a[1]) - float(b[1])) * sy)


def interior_point(mask: np.ndarray, box: Sequence[int] | np.ndarray,
                   near: Sequence[float] | np.ndarray | None = None) -> tuple[int, int] | None:
    """The deepest pixel ``(x, y)`` of ``mask`` inside ``box``, or None when none is set there.

    ``mask``: H x W bool, full-image coordinates; ``box``: library box inside the image. Depth is
    the Euclidean distance to the nearest background pixel in network pixels (see the module
    docstring), the outside of the box counting as background. Among the pixels within
    ``TIE_MARGIN`` of the maximum depth, the one nearest to ``near`` (image pixels) is returned;
    without ``near``, the first in row-major order.
    """
    from .maskmath import depth as mask_depth

    x0, y0, x1, y1 = (int(v) for v in box)
    region = np.asarray(mask[y0:y1 + 1, x0:x1 + 1], dtype=bool)
    if not region.any():
        return None
    sx, sy = network_scale((x0, y0, x1, y1))
    depth = mask_depth(region, sampling=(sy, sx))
    rows, cols = np.nonzero(depth >= depth.max() - TIE_MARGIN)
    i = 0
    if near is not None and len(rows) > 1:
        d2 = ((cols + x0 - float(near[0])) * sx) ** 2 + ((rows + y0 - float(near[1])) * sy) ** 2
        i = int(np.argmin(d2))
    return x0 + int(cols[i]), y0 + int(rows[i])


def _mask_evidence(prediction: Prediction) -> np.ndarray | None:
    """The prediction's mask, or None when it is an engine fallback (e.g. GrabCut's ellipse when
    it kept nothing): a placeholder says nothing about where the object is."""
    if prediction.extras.get("fallback"):
        return None
    return np.asarray(prediction.mask, dtype=bool)


def _moved_px(point: Sequence[float], box: Sequence[int]) -> float:
    x0, y0, x1, y1 = (float(v) for v in box)
    return round(math.hypot(float(point[0]) - (x0 + x1) / 2.0,
                            float(point[1]) - (y0 + y1) / 2.0), 2)


def _subset(request: SegmentRequest, indices: Sequence[int], inside: np.ndarray) -> SegmentRequest:
    """A request for some boxes of ``request`` with the inside points ``inside`` (N, 2)."""
    extra = None
    if request.extra_clicks:
        extra = [request.extra_clicks[i] if i < len(request.extra_clicks) else []
                 for i in indices]
    return SegmentRequest(image=request.image, boxes=request.boxes[list(indices)],
                          inside=inside[list(indices)], extra_clicks=extra)


# --------------------------------------------------------------------------- policies


class InsidePointPolicy(ABC):
    name: str = "policy"

    def describe(self) -> dict[str, Any]:
        """Settings that determine the inside points (recorded in the plan)."""
        return {"name": self.name}

    @abstractmethod
    def segment(self, engine: Engine, requests: Sequence[SegmentRequest]) -> list[list[Prediction]]:
        """Choose inside points for boxes without one, run ``engine``, return its predictions."""


class CenterPolicy(InsidePointPolicy):
    """The inside point is the box centre ``((x0 + x1) / 2, (y0 + y1) / 2)``."""

    name = "center"

    def segment(self, engine: Engine, requests: Sequence[SegmentRequest]) -> list[list[Prediction]]:
        for r in requests:
            if r.inside is None:
                r.inside = default_inside_points(r.boxes)
        return engine.segment(requests)


class _ChosenOncePolicy(InsidePointPolicy):
    """A policy that chooses every point first and then runs the engine once."""

    @abstractmethod
    def choose(self, request: SegmentRequest) -> tuple[np.ndarray, list[str]]:
        """(N, 2) inside points for the boxes of ``request`` and their ``inside_source``."""

    def segment(self, engine: Engine, requests: Sequence[SegmentRequest]) -> list[list[Prediction]]:
        chosen, sources = [], []
        for r in requests:
            if r.inside is not None:
                chosen.append(r)
                sources.append(["given"] * len(r.boxes))
                continue
            points, src = self.choose(r)
            chosen.append(_subset(r, range(len(r.boxes)), points))
            sources.append(src)
        out = engine.segment(chosen)
        for r, src, preds in zip(chosen, sources, out, strict=True):
            inside = r.inside if r.inside is not None else default_inside_points(r.boxes)
            for box, point, s, p in zip(r.boxes, inside, src, preds, strict=True):
                p.extras["inside_source"] = s
                p.extras["inside_moved_px"] = 0.0 if s == "given" else _moved_px(point, box)
        return out


class IteratePolicy(InsidePointPolicy):
    """Centre first, then the interior point of the engine's own mask until it stops moving."""

    name = "iterate"

    def __init__(self, max_rounds: int = 3, tolerance: float = 2.0) -> None:
        """``max_rounds``: engine runs per box at most (1 = the centre only); ``tolerance``: a
        point that moves less than this many network pixels is stable."""
        if int(max_rounds) != max_rounds or max_rounds < 1:
            raise ValueError(f"max_rounds must be a whole number >= 1, not {max_rounds!r}")
        if not tolerance >= 0:
            raise ValueError(f"tolerance must be >= 0 network pixels, not {tolerance!r}")
        self.max_rounds = int(max_rounds)
        self.tolerance = float(tolerance)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "max_rounds": self.max_rounds, "tolerance": self.tolerance,
                "tie_margin": TIE_MARGIN}

    def segment(self, engine: Engine, requests: Sequence[SegmentRequest]) -> list[list[Prediction]]:
        given = [r.inside is not None for r in requests]
        points = [np.array(r.inside if g else default_inside_points(r.boxes), dtype=np.float64)
                  for r, g in zip(requests, given, strict=True)]
        results: list[list[Prediction | None]] = [[None] * len(r.boxes) for r in requests]
        rounds = [[0] * len(r.boxes) for r in requests]
        active = [(i, list(range(len(r.boxes)))) for i, r in enumerate(requests) if len(r.boxes)]
        for round_no in range(1, self.max_rounds + 1):
            if not active:
                break
            preds = engine.segment([_subset(requests[i], idx, points[i]) for i, idx in active])
            still: list[tuple[int, list[int]]] = []
            for (i, idx), image_preds in zip(active, preds, strict=True):
                moving = []
                for b, pred in zip(idx, image_preds, strict=True):
                    results[i][b] = pred
                    rounds[i][b] = round_no
                    stop = "given" if given[i] else self._step(pred, requests[i].boxes[b],
                                                               points[i], b, round_no)
                    if stop is None:
                        moving.append(b)
                    else:
                        pred.extras["inside_stop"] = stop
                if moving:
                    still.append((i, moving))
            active = still
        for i, r in enumerate(requests):
            centres = default_inside_points(r.boxes)
            for b, done in enumerate(results[i]):
                if done is None:  # every box ran at least once
                    continue
                moved = 0.0 if given[i] else _moved_px(points[i][b], r.boxes[b])
                done.extras["inside_source"] = "given" if given[i] else (
                    "mask" if np.any(points[i][b] != centres[b]) else "center")
                done.extras["inside_moved_px"] = moved
                done.extras["inside_rounds"] = rounds[i][b]
        return results  # type: ignore[return-value]

    def _step(self, pred: Prediction, box: np.ndarray, points: np.ndarray, b: int,
              round_no: int) -> str | None:
        """Move box ``b``'s point to the interior point of ``pred``; the stop reason, or None
        when the box must run again."""
        mask = _mask_evidence(pred)
        current = points[b]
        new = interior_point(mask, box, near=current) if mask is not None else None
        if new is None:
            return "empty"
        if (network_distance(new, current, box) < self.tolerance
                or math.dist(new, current) < 1.0):
            return "stable"
        if round_no >= self.max_rounds:
            return "max_rounds"
        points[b] = new
        return None


class _PickerPolicy(_ChosenOncePolicy):
    """The point is the interior point of the mask a picking engine (``self.picker``) makes with
    the box centre; the centre stays where that mask is empty or a fallback."""

    picker: Engine

    def choose(self, request: SegmentRequest) -> tuple[np.ndarray, list[str]]:
        centres = default_inside_points(request.boxes)
        first = SegmentRequest(image=request.image, boxes=request.boxes, inside=centres)
        points, sources = centres.copy(), []
        for b, pred in enumerate(self.picker.segment([first])[0]):
            mask = _mask_evidence(pred)
            p = interior_point(mask, request.boxes[b], near=centres[b]) \
                if mask is not None else None
            if p is not None:
                points[b] = p
            sources.append("center" if p is None else "mask")
        return points, sources


class GrabCutPolicy(_PickerPolicy):
    """A GrabCut pass with the box centre picks the point; the engine runs once with it."""

    name = "grabcut"

    def __init__(self, grabcut_options: dict[str, Any] | None = None) -> None:
        """``grabcut_options``: settings of the picking ``GrabCutEngine`` (its defaults when
        empty), independent of the engine that makes the masks."""
        from .engines.grabcut import GrabCutEngine

        self.picker = GrabCutEngine(**dict(grabcut_options or {}))

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "grabcut": self.picker.describe(), "tie_margin": TIE_MARGIN}


class U2NetPolicy(_PickerPolicy):
    """The deepest pixel of a learned mask inside the box (U²-Net, a real pretrained network);
    the box centre where that mask is empty. The engine then runs once with the point."""

    name = "u2net"

    def __init__(self, weights: str | Path | None = "u2net", picker: str = "fused",
                 device: str | None = "auto", batch_size: int | None = None) -> None:
        """``weights``: U²-Net registry name or state-dict path; ``picker``: ``"fused"`` (the
        fused engine's mask: U²-Net, or GrabCut where U²-Net missed the boxed object) or
        ``"u2net"`` (U²-Net's mask alone); ``device``, ``batch_size``: as for the engines."""
        from .engines.fused import FusedEngine
        from .engines.u2net import U2NetEngine

        if picker not in ("fused", "u2net"):
            raise ValueError(f"picker must be 'fused' or 'u2net', not {picker!r}")
        u2net = U2NetEngine(weights, device=device, batch_size=batch_size)
        self.picker: Engine = FusedEngine(u2net=u2net) if picker == "fused" else u2net

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "picker": self.picker.describe(), "tie_margin": TIE_MARGIN}


class Stage1Policy(_ChosenOncePolicy):
    """A stage-1 network (box only) predicts each box's mask; the point is its interior point."""

    name = "stage1"

    def __init__(self, weights: str | Path | None = None, device: str | None = "auto",
                 batch_size: int = 8) -> None:
        """``weights``: a checkpoint written by ``boxmask train --task stage1``; ``device``:
        ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"``...; ``batch_size``: boxes per
        forward pass."""
        if weights is None or str(weights) == "":
            raise ValueError("the stage1 inside-point policy needs a stage-1 checkpoint: pass "
                             "its path as the 'weights' option (train one with `boxmask train "
                             "--task stage1`)")
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"stage-1 checkpoint not found: {path}")
        self.path = path
        self.sha256 = sha256_file(path)
        self.batch_size = max(int(batch_size), 1)
        from .device import resolve_device  # torch: imported only by the policies that need it
        from .models.stage1 import load_stage1

        self.net = load_stage1(path, resolve_device(device))

    def describe(self) -> dict[str, Any]:
        cfg = getattr(self.net, "config", None)
        return {"name": self.name, "weights": self.path.name, "weights_sha256": self.sha256,
                "input_size": int(getattr(cfg, "input_size", 512))}

    def choose(self, request: SegmentRequest) -> tuple[np.ndarray, list[str]]:
        from .models.stage1 import stage1_inside_points

        points = stage1_inside_points(self.net, request.image, request.boxes, self.batch_size)
        return points, ["stage1"] * len(points)


def create_policy(name: str, **options: Any) -> InsidePointPolicy:
    """Build the inside-point policy ``name`` with its options (see each policy's constructor)."""
    cls = POLICY_CLASSES.get(name)
    try:
        return cls(**options)
    except TypeError as e:  # an option the policy does not have
        raise ValueError(f"inside-point policy {name!r}: {e}") from None
