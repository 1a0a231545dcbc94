"""Weight-free engine: OpenCV GrabCut on a crop around each box, seeded the way IOG sees an object.

Boxes are library boxes ``(x0, y0, x1, y1)`` (0-based, inclusive pixel indices); points are
``(x, y)`` = (column, row) in image pixels. Defaults in brackets.

What one box goes through
-------------------------
1. **Crop.** A window around the box with a context margin of
   ``max(margin_px [32], margin_frac [0.25] * max(box_w, box_h))`` pixels on every side, clipped
   to the image and grown to hold every click. The margin supplies the background colour model;
   too little starves it, too much mixes in colours far from the object.
2. **Downscale.** A crop of more than ``max_pixels`` [120 000] pixels is resized
   (``INTER_AREA``) to about that many; GrabCut's cost grows with the pixel count. The labels are
   drawn directly at the working resolution, so small disks survive the resize.
3. **Initial labels** (``cv2.GC_INIT_WITH_MASK``, never the rect mode, so whole-image and
   border-touching boxes work):

   * outside the box: definite background (``GC_BGD``);
   * inside the box: probable foreground (``GC_PR_FGD``);
   * box sides that lie on the image border (``band="touching"``; ``"needed"``: only when the box
     covers the whole crop) get a band of ``band_frac`` [0.1] of the box side just inside them as
     probable background (``GC_PR_BGD``): no outside pixel there shows what the background looks
     like, and OpenCV refuses to run without background samples (a whole-image box). Probable
     labels are only a starting point; the graph cut may flip them;
   * a disk at the inside point (``request.inside``, default the box centre, clamped into the box)
     of radius ``max(1, fg_radius_frac [0.1] * min(box_w, box_h))`` pixels: definite foreground;
   * ``request.extra_clicks``: positive clicks are definite-foreground disks, negative clicks
     definite-background disks, radius ``max(2, click_radius_frac [0.06] * min(box_w, box_h))``.
4. **GrabCut**, ``iterations`` [5] rounds, after ``cv2.setRNGSeed(seed)`` (its k-means
   initialisation draws from OpenCV's global RNG; the seed makes the output repeatable).
5. **Upscale** the foreground labels to the crop (bilinear, threshold 0.5); keep the result inside
   the box plus positive-click disks, minus negative-click disks. Where disks overlap, user clicks
   win over the inside point and positive clicks over negative ones.
6. **Post-processing:** ``keep="inside"`` keeps the 8-connected components holding the inside point
   or a positive click (``"largest"``: the largest component; ``"all"``: everything);
   ``fill_holes`` [on] fills background regions enclosed by the mask.
7. **Collapse guard.** GrabCut sometimes shrinks the foreground to almost nothing when the box's
   colours also fill a small context window. If the mask covers less than ``min_fill`` [0.05] of
   the box area (an object spanning a tight box rarely does), the box is cut again with the whole
   image (downscaled to the budget) as context and the larger mask wins (``extras["retry"]``).

Fallbacks (named in ``Prediction.extras["fallback"]``, score 0):

* ``"tiny_box"``: a box with a side shorter than ``tiny_side`` [7] pixels gets the ellipse
  inscribed in it (pixel centres inside the ellipse); there are too few pixels for colour models.
* ``"empty"``: GrabCut kept nothing inside the box; the mask is the inscribed ellipse.

A box covering the whole image has no outside pixel; its background evidence is only the
probable-background band. When GrabCut cuts (almost) nothing away there (mask above
``1 - min_fill`` of the box), the mask is kept (the object may well fill the image) but the score
is 0 and ``extras["flag"]`` is ``"no_background"``: the colour models told nothing apart.

Score
-----
GrabCut has no confidence. The score is the **agreement of the graph cut with its own colour
models**: from the two colour GMMs GrabCut fitted (``bgdModel``/``fgdModel``, 5 components each)
we compute for every pixel of the box the foreground posterior ``p = F / (F + B)`` (equal
priors), and return the IoU, over the box at working resolution, of GrabCut's foreground with
``{p > 0.5}``. It is high when the colours alone already say what the cut says, and drops when the
smoothness term had to overrule the colour models over large areas or the models hardly separate
object and background. ``extras["stability"]`` holds the SAM-style stability of the same
posterior (IoU of ``{p > 0.5 + stability_delta}`` and ``{p > 0.5 - stability_delta}`` over the
box). On the bundled COCO-MVal and DAVIS samples the agreement ranks masks by true IoU better
than the stability (Spearman about 0.6-0.7 vs 0.5; ``benchmarks/bench_grabcut.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from .. import maskmath
from ..boxes import int_box
from ..records import Click
from .base import Engine, Prediction, SegmentRequest, default_inside_points

logger = logging.getLogger(__name__)

KEEP_MODES = ("inside", "largest", "all")
BAND_MODES = ("touching", "needed")
GMM_COMPONENTS = 5
"""Components per colour model in OpenCV's GrabCut (its model arrays hold 5 x 13 = 65 floats)."""


# --------------------------------------------------------------------------- geometry (pure)


def crop_window(box: Sequence[int], width: int, height: int, margin_frac: float,
                margin_px: int) -> tuple[int, int, int, int]:
    """Library box of the crop around ``box``: a margin of ``max(margin_px, margin_frac *
    max(box_w, box_h))`` pixels on each side, clipped to the ``width`` x ``height`` image."""
    x0, y0, x1, y1 = (int(v) for v in box)
    margin = max(int(margin_px), int(round(margin_frac * max(x1 - x0 + 1, y1 - y0 + 1))))
    return (max(x0 - margin, 0), max(y0 - margin, 0),
            min(x1 + margin, width - 1), min(y1 + margin, height - 1))


def ellipse_mask(height: int, width: int) -> np.ndarray:
    """``height`` x ``width`` bool mask of the ellipse inscribed in the array (pixel centres
    inside it). Every pixel is kept for arrays of 2 px or less on a side."""
    ys = (np.arange(height) - (height - 1) / 2.0) / (height / 2.0)
    xs = (np.arange(width) - (width - 1) / 2.0) / (width / 2.0)
    return ys[:, None] ** 2 + xs[None, :] ** 2 <= 1.0


def _scaled_box(box: Sequence[float], sx: float, sy: float) -> tuple[int, int, int, int]:
    """Library ``box`` -> half-open slice bounds ``(c0, r0, c1, r1)`` in an array resized by
    ``(sx, sy)``; pixel ``i`` spans edges ``[i, i + 1)``, so the box spans ``[x0, x1 + 1)``."""
    c0, r0 = int(np.floor(box[0] * sx)), int(np.floor(box[1] * sy))
    c1 = max(int(np.ceil((box[2] + 1) * sx)), c0 + 1)
    r1 = max(int(np.ceil((box[3] + 1) * sy)), r0 + 1)
    return c0, r0, c1, r1


def _disk(labels: np.ndarray, x: float, y: float, radius: float, value: int) -> None:
    """Paint a filled disk centred at ``(x, y)`` (array pixels) into ``labels`` in place."""
    h, w = labels.shape
    r = max(float(radius), 0.5)
    ys, xs = np.ogrid[:h, :w]
    labels[(xs - x) ** 2 + (ys - y) ** 2 <= r * r] = value


# --------------------------------------------------------------------------- labels and masks


def initial_labels(shape: tuple[int, int], box: Sequence[float], scale: tuple[float, float],
                   disks: Sequence[tuple[float, float, float, bool]], band_frac: float,
                   border_sides: Sequence[bool]) -> np.ndarray:
    """GrabCut label map (``cv2.GC_*`` values) for a working image of ``shape`` (rows, cols).

    ``box`` is the library box in crop pixels; ``scale`` = ``(sx, sy)`` maps crop pixels to
    working pixels. ``disks`` are ``(x, y, radius, positive)`` in crop pixels, painted in order
    (a later disk wins where two overlap) as definite foreground / background. ``border_sides``
    says for (left, top, right, bottom) whether the box side lies on the crop border; those sides
    get a probable-background band ``band_frac`` of the box side thick.
    """
    labels = np.full(shape, cv2.GC_BGD, np.uint8)
    sx, sy = scale
    bx0, by0, bx1, by1 = _scaled_box(box, sx, sy)
    labels[by0:by1, bx0:bx1] = cv2.GC_PR_FGD
    bw = max(int(round(band_frac * (bx1 - bx0))), 1)
    bh = max(int(round(band_frac * (by1 - by0))), 1)
    left, top, right, bottom = border_sides
    if left:
        labels[by0:by1, bx0:bx0 + bw] = cv2.GC_PR_BGD
    if right:
        labels[by0:by1, bx1 - bw:bx1] = cv2.GC_PR_BGD
    if top:
        labels[by0:by0 + bh, bx0:bx1] = cv2.GC_PR_BGD
    if bottom:
        labels[by1 - bh:by1, bx0:bx1] = cv2.GC_PR_BGD
    s = (sx + sy) / 2.0
    for x, y, r, positive in disks:
        _disk(labels, (x + 0.5) * sx - 0.5, (y + 0.5) * sy - 0.5, r * s,
              cv2.GC_FGD if positive else cv2.GC_BGD)
    return labels


def keep_components(mask: np.ndarray, seeds: Sequence[tuple[float, float]],
                    mode: str) -> np.ndarray:
    """Keep the 8-connected components of ``mask`` that hold a seed ``(x, y)`` (``"inside"``; the
    largest one when no seed lands on the mask), the largest one (``"largest"``) or all."""
    if mode == "all" or not mask.any():
        return mask
    n, comp = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    if n <= 2:
        return mask
    keep: set[int] = set()
    if mode == "inside":
        h, w = mask.shape
        for x, y in seeds:
            r, c = int(round(y)), int(round(x))
            if 0 <= r < h and 0 <= c < w and comp[r, c] > 0:
                keep.add(int(comp[r, c]))
    if not keep:
        counts = np.bincount(comp.ravel(), minlength=n)
        counts[0] = 0
        keep.add(int(np.argmax(counts)))
    return np.isin(comp, sorted(keep))


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """``mask`` with every background region that does not reach the array border filled."""
    h, w = mask.shape
    outside = np.zeros((h + 2, w + 2), np.uint8)
    outside[1:-1, 1:-1] = mask.astype(np.uint8)
    flood = np.zeros((h + 4, w + 4), np.uint8)
    cv2.floodFill(outside, flood, (0, 0), 2, flags=4)
    return outside[1:-1, 1:-1] != 2


# --------------------------------------------------------------------------- score (pure)


def gmm_log_density(pixels: np.ndarray, model: np.ndarray) -> np.ndarray:
    """Log density of the colours ``pixels`` (N, 3) under one of OpenCV's GrabCut GMMs.

    ``model`` is the (1, 65) float64 array ``cv2.grabCut`` returns: 5 weights, 5 x 3 means, then
    5 row-major 3 x 3 covariances, in the channel order of the image given to GrabCut. The
    constant ``(2 pi)^(-3/2)`` is left out (it cancels in posteriors). Components of weight 0 are
    skipped; a model with none left gives ``-inf`` everywhere.
    """
    m = np.asarray(model, dtype=np.float64).ravel()
    k = GMM_COMPONENTS
    weights, means, covs = m[:k], m[k:4 * k].reshape(k, 3), m[4 * k:].reshape(k, 3, 3)
    x = pixels.astype(np.float64)
    out = np.full(len(x), -np.inf)
    for wk, mu, cov in zip(weights, means, covs, strict=True):
        if wk <= 0:
            continue
        det = np.linalg.det(cov)
        if det <= 0:
            cov = cov + np.eye(3) * 0.01
            det = np.linalg.det(cov)
        d = x - mu
        mahal = np.einsum("ni,ij,nj->n", d, np.linalg.inv(cov), d)
        out = np.logaddexp(out, np.log(wk) - 0.5 * np.log(det) - 0.5 * mahal)
    return out


def fg_posterior(pixels: np.ndarray, bgd_model: np.ndarray, fgd_model: np.ndarray) -> np.ndarray:
    """Foreground posterior in [0, 1] of colours ``pixels`` (N, 3) under the two GrabCut GMMs,
    equal priors. A degenerate model (all weights 0) loses everywhere; both degenerate -> 0.5."""
    lf = gmm_log_density(pixels, fgd_model)
    lb = gmm_log_density(pixels, bgd_model)
    both = np.isneginf(lf) & np.isneginf(lb)
    diff = np.where(both, 0.0, np.clip(np.nan_to_num(lb - lf, posinf=500, neginf=-500), -500, 500))
    return 1.0 / (1.0 + np.exp(diff))


# --------------------------------------------------------------------------- engine


@dataclass
class _Cut:
    """GrabCut's outcome in one crop window."""

    window: tuple[int, int, int, int]
    """The crop as a library box in image pixels."""
    mask: np.ndarray
    """Crop-sized bool mask after post-processing."""
    scale: float
    stability: float = 0.0
    agreement: float = 0.0


class GrabCutEngine(Engine):
    """OpenCV GrabCut per box, initialised with IOG's clicks (see the module docstring).

    ``cv2.grabCut`` runs on one core: several CPU workers scale, threads do not.

    Options (all recorded by ``describe``): ``iterations`` GrabCut rounds; ``margin_frac`` /
    ``margin_px`` crop margin; ``fg_radius_frac`` inside-point disk radius as a fraction of the
    box's short side; ``click_radius_frac`` the same for extra clicks; ``band`` which box sides get
    a probable-background band (``"touching"``: every side on the image border; ``"needed"``: only
    when the box fills the whole crop) and ``band_frac`` its thickness; ``max_pixels`` crop pixel
    budget before downscaling; ``keep`` component selection (``inside``/``largest``/``all``);
    ``fill_holes``; ``min_fill`` collapse threshold (fraction of the box area) below which the
    box is cut again with the whole image as context; ``tiny_side`` boxes with a shorter side get
    an ellipse; ``seed`` OpenCV RNG seed; ``stability_delta`` the score's threshold offset.
    """

    name = "grabcut"
    CPU_PARALLEL = "processes"

    def __init__(self, *, iterations: int = 5, margin_frac: float = 0.25, margin_px: int = 32,
                 fg_radius_frac: float = 0.1, click_radius_frac: float = 0.06,
                 band: str = "touching", band_frac: float = 0.1, max_pixels: int = 120_000,
                 keep: str = "inside", fill_holes: bool = True, min_fill: float = 0.05,
                 tiny_side: int = 7, seed: int = 0, stability_delta: float = 0.25) -> None:
        if keep not in KEEP_MODES:
            raise ValueError(f"keep must be one of {', '.join(KEEP_MODES)}, not {keep!r}")
        if band not in BAND_MODES:
            raise ValueError(f"band must be one of {', '.join(BAND_MODES)}, not {band!r}")
        if iterations < 1 or max_pixels < 64 or not 0 < stability_delta < 0.5:
            raise ValueError("iterations >= 1, max_pixels >= 64 and 0 < stability_delta < 0.5")
        self.iterations = int(iterations)
        self.margin_frac = float(margin_frac)
        self.margin_px = int(margin_px)
        self.fg_radius_frac = float(fg_radius_frac)
        self.click_radius_frac = float(click_radius_frac)
        self.band = band
        self.band_frac = float(band_frac)
        self.max_pixels = int(max_pixels)
        self.keep = keep
        self.fill_holes = bool(fill_holes)
        self.min_fill = float(min_fill)
        self.tiny_side = int(tiny_side)
        self.seed = int(seed)
        self.stability_delta = float(stability_delta)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name, "opencv": cv2.__version__, "iterations": self.iterations,
            "margin_frac": self.margin_frac, "margin_px": self.margin_px,
            "fg_radius_frac": self.fg_radius_frac, "click_radius_frac": self.click_radius_frac,
            "band": self.band, "band_frac": self.band_frac, "max_pixels": self.max_pixels,
            "keep": self.keep, "fill_holes": self.fill_holes, "min_fill": self.min_fill,
            "tiny_side": self.tiny_side, "seed": self.seed,
            "stability_delta": self.stability_delta,
        }

    def segment(self, requests: Sequence[SegmentRequest]) -> list[list[Prediction]]:
        out: list[list[Prediction]] = []
        for req in requests:
            inside = req.inside if req.inside is not None else default_inside_points(req.boxes)
            preds = []
            for i, box in enumerate(req.boxes):
                extra = req.extra_clicks[i] if req.extra_clicks and i < len(req.extra_clicks) \
                    else None
                preds.append(self.segment_box(req.image, int_box(box),
                                              (float(inside[i][0]), float(inside[i][1])),
                                              extra or ()))
            out.append(preds)
        return out

    def segment_box(self, image: np.ndarray, box: tuple[int, int, int, int],
                    inside: tuple[float, float], extra: Sequence[Click] = ()) -> Prediction:
        """Mask of one library ``box`` of the H x W x 3 uint8 RGB ``image``; ``inside`` is the
        inside point ``(x, y)`` in image pixels (clamped into the box); ``extra`` user clicks."""
        height, width = image.shape[:2]
        x0, y0, x1, y1 = box
        bw, bh = x1 - x0 + 1, y1 - y0 + 1
        ix = min(max(float(inside[0]), x0), x1)
        iy = min(max(float(inside[1]), y0), y1)
        clicks = [Click(ix, iy, True, "inside")] + [
            Click(float(x), float(y), False, "corner") for x, y in
            ((x0, y0), (x1, y0), (x0, y1), (x1, y1))] + list(extra)
        full = np.zeros((height, width), bool)
        if min(bw, bh) < self.tiny_side:
            full[y0:y1 + 1, x0:x1 + 1] = ellipse_mask(bh, bw)
            return Prediction(full, 0.0, clicks, {"fallback": "tiny_box"})

        click_r = max(2.0, self.click_radius_frac * min(bw, bh))
        # Precedence where disks overlap: user clicks over the inside point, positive over negative.
        disks = [(ix, iy, max(1.0, self.fg_radius_frac * min(bw, bh)), True)]
        disks += [(c.x, c.y, click_r, False) for c in extra if not c.positive]
        disks += [(c.x, c.y, click_r, True) for c in extra if c.positive]
        window = _window_with_points(
            crop_window(box, width, height, self.margin_frac, self.margin_px),
            [d[:3] for d in disks], width, height)
        cut = self._cut(image, box, window, disks)
        extras: dict[str, Any] = {}
        whole = (0, 0, width - 1, height - 1)
        if cut.mask.sum() < self.min_fill * bw * bh and window != whole:
            retry = self._cut(image, box, whole, disks)
            extras["retry"] = "whole_image"
            if retry.mask.sum() > cut.mask.sum():
                cut = retry
        cx0, cy0, cx1, cy1 = cut.window
        extras.update(crop_xyxy=list(cut.window), scale=round(cut.scale, 4))
        if not cut.mask[y0 - cy0:y1 - cy0 + 1, x0 - cx0:x1 - cx0 + 1].any():
            full[y0:y1 + 1, x0:x1 + 1] = ellipse_mask(bh, bw)
            extras["fallback"] = "empty"
            return Prediction(full, 0.0, clicks, extras)
        full[cy0:cy1 + 1, cx0:cx1 + 1] = cut.mask
        extras.update(agreement=round(cut.agreement, 6), stability=round(cut.stability, 6))
        score = cut.agreement
        if cut.window == box and cut.mask.sum() > (1.0 - self.min_fill) * bw * bh:
            extras["flag"] = "no_background"  # nothing outside the box and nothing cut away
            score = 0.0
        return Prediction(full, score, clicks, extras)

    def _cut(self, image: np.ndarray, box: tuple[int, int, int, int],
             window: tuple[int, int, int, int],
             disks: list[tuple[float, float, float, bool]]) -> _Cut:
        """GrabCut in ``window`` (library box); ``disks`` ``(x, y, radius, positive)`` in image
        pixels, in painting order."""
        cx0, cy0, cx1, cy1 = window
        cw, ch = cx1 - cx0 + 1, cy1 - cy0 + 1
        crop = np.ascontiguousarray(image[cy0:cy1 + 1, cx0:cx1 + 1])
        scale = min(1.0, float(np.sqrt(self.max_pixels / (cw * ch))))
        if scale < 1.0:
            size = (max(int(round(cw * scale)), 1), max(int(round(ch * scale)), 1))
            work = cv2.resize(crop, size, interpolation=cv2.INTER_AREA)
        else:
            work = crop
        sx, sy = work.shape[1] / cw, work.shape[0] / ch

        local_box = (box[0] - cx0, box[1] - cy0, box[2] - cx0, box[3] - cy0)
        local = [(x - cx0, y - cy0, r, positive) for x, y, r, positive in disks]
        sides = (box[0] == cx0, box[1] == cy0, box[2] == cx1, box[3] == cy1)
        if self.band == "needed" and not all(sides):
            sides = (False, False, False, False)
        labels = initial_labels(work.shape[:2], local_box, (sx, sy), local,
                                self.band_frac, sides)

        bgd = np.zeros((1, 65), np.float64)
        fgd = np.zeros((1, 65), np.float64)
        cv2.setRNGSeed(self.seed)
        try:
            # no rectangle with GC_INIT_WITH_MASK (OpenCV's stubs ask for one)
            labels, bgd, fgd = cv2.grabCut(  # type: ignore[call-overload]
                work, labels, None, bgd, fgd, self.iterations, cv2.GC_INIT_WITH_MASK)
        except cv2.error as exc:  # no foreground or background samples: nothing to cut
            logger.debug("grabCut failed on box %s: %s", box, exc)
            return _Cut(window, np.zeros((ch, cw), bool), scale)
        fg_work = (labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD)

        if scale < 1.0:
            up = cv2.resize(fg_work.astype(np.float32), (cw, ch), interpolation=cv2.INTER_LINEAR)
            mask = up >= 0.5
        else:
            mask = fg_work.copy()
        allowed = np.zeros((ch, cw), bool)
        allowed[local_box[1]:local_box[3] + 1, local_box[0]:local_box[2] + 1] = True
        hard = np.zeros((ch, cw), np.uint8)  # 1: definite foreground, 2: definite background
        for x, y, r, positive in local:
            _disk(hard, x, y, r, 1 if positive else 2)
        allowed = (allowed | (hard == 1)) & (hard != 2)
        mask = (mask & allowed) | (hard == 1)
        mask = keep_components(mask, [(x, y) for x, y, _, positive in local if positive],
                               self.keep)
        if self.fill_holes:
            mask = fill_holes(mask) & allowed

        bx0, by0, bx1, by1 = _scaled_box(local_box, sx, sy)
        prob = fg_posterior(work[by0:by1, bx0:bx1].reshape(-1, 3), bgd, fgd)
        stability = maskmath.stability(prob, 0.5 - self.stability_delta,
                                       0.5 + self.stability_delta)
        agreement = maskmath.mask_iou(fg_work[by0:by1, bx0:bx1].ravel(), prob > 0.5)
        return _Cut(window, mask, scale, stability, agreement)


def _window_with_points(window: tuple[int, int, int, int],
                        points: Sequence[tuple[float, float, float]], width: int,
                        height: int) -> tuple[int, int, int, int]:
    """Grow the library box ``window`` to hold every disk ``(x, y, radius)``, inside the image."""
    x0, y0, x1, y1 = window
    for x, y, r in points:
        x0 = max(min(x0, int(np.floor(x - r))), 0)
        y0 = max(min(y0, int(np.floor(y - r))), 0)
        x1 = min(max(x1, int(np.ceil(x + r))), width - 1)
        y1 = min(max(y1, int(np.ceil(y + r))), height - 1)
    return (x0, y0, x1, y1)
