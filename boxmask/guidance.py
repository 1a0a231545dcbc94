"""IOG guidance: crops, clicks, heatmaps and paste-back, exactly as the official implementation.

Pure functions, no I/O. Each numpy function has a torch twin (suffix ``_torch``) for the GPU path;
the twins run on any device, so their agreement with the numpy reference is testable on the CPU.

Conventions
-----------
* Boxes are library boxes ``(x0, y0, x1, y1)``: 0-based, **inclusive** integer pixel indices
  (``boxmask.records``). Points are ``(x, y)`` = (column, row); integer values are pixel centres.
* **Crop box** = tight box +- ``RELAX`` (30) image pixels, **not clipped**: the parts outside the
  image are zero (``crop_box_for``, ``crop_zero_padded``). The crop is resized to
  ``INPUT_SIZE`` x ``INPUT_SIZE`` (512) with bilinear interpolation (``cv2.INTER_LINEAR`` on
  float32, aspect ratio not kept).
* **512-space** is the pixel grid of the resized crop. Mapping between image pixels and 512-space
  uses the pixel-centre convention of ``cv2.resize``: with the crop box origin ``(cx0, cy0)`` and
  size ``(cw, ch)``::

      x512 = (x - cx0 + 0.5) * 512 / cw - 0.5          x = cx0 + (x512 + 0.5) * cw / 512 - 0.5

  (same for y with ``cy0, ch``). An image-space *point* is mapped with this formula and rounded to
  the nearest 512-space pixel (the official clicks are integer pixels, so a heatmap peak is exactly
  1). An image-space *box* maps to the 512-space pixels whose centres lie strictly inside the
  area the box covers (from ``x0 - 0.5`` to ``x1 + 0.5`` in the pixel-centre coordinates above;
  ``box_to_512``). That is the tight box of the box's mask after the official bilinear resize and
  ``> 0.5`` threshold, i.e. the box the official click simulation sees for an object whose extreme
  pixels touch the box sides.
* **Clicks** (``clicks_from_mask``, ``corner_clicks``), in 512-space, order
  ``[inside, LT, LB, RT, RB]``: the inside click and the four corners of the 512-space tight box
  +- ``CORNER_PAD`` (10) pixels, clamped to ``[0, 512]`` (512, not 511, as the official code does).
* **Heatmaps** (``guidance_maps``): ``exp(-4 ln2 d^2 / sigma^2)`` with ``sigma = SIGMA`` (10, a
  full width at half maximum) in float64; channel 0 = inside Gaussian, channel 1 = pixel-wise max of
  the four corner Gaussians; both scaled jointly to ``255 * (t - min) / (max - min + 1e-10)``.
* **Network input** (``network_input``): float32 ``[R, G, B, inside, outside]``, all 0..255, no
  mean/std normalisation.
* **Paste-back** (``probability_full``): ``sigmoid`` of the fine logits, ``cv2.INTER_CUBIC`` resize
  to the crop size, the in-image part pasted into ``zeros(H, W)``. Thresholding happens later.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from .maskmath import deepest_pixel, sigmoid_cuts, stability, stability_torch
from .records import BoxXYXY

RELAX = 30
"""Context margin of the crop around the tight box, in image pixels."""
INPUT_SIZE = 512
"""Side of the square network input (512-space)."""
CORNER_PAD = 10
"""Distance of the corner clicks from the 512-space tight box, in 512-space pixels."""
SIGMA = 10.0
"""Full width at half maximum of a click Gaussian, in 512-space pixels."""
STABILITY_DELTA = 0.25
"""The stability score compares the masks at sigmoid thresholds ``0.5 -+ delta``."""

_FWHM_FACTOR = 4.0 * math.log(2.0)


@dataclass(frozen=True)
class Guidance:
    """Where one object's network input comes from.

    ``crop_box`` is an (unclipped) library box in image pixels; the clicks are integer
    512-space pixels ``(x, y)``.
    """

    crop_box: BoxXYXY
    inside_512: tuple[int, int]
    corners_512: tuple[tuple[int, int], ...]
    """Four outside clicks, order LT, LB, RT, RB."""

    def clicks_512(self) -> np.ndarray:
        """(5, 2) int64 array ``[inside, LT, LB, RT, RB]`` of ``(x, y)`` 512-space pixels."""
        return np.array([self.inside_512, *self.corners_512], dtype=np.int64)

    def clicks_image(self) -> np.ndarray:
        """(5, 2) float64 array of the same clicks mapped back to image pixels ``(x, y)``."""
        return points_from_512(self.clicks_512(), self.crop_box)


# --------------------------------------------------------------------------- geometry


def crop_box_for(box: Sequence[int], relax: int = RELAX) -> BoxXYXY:
    """Crop box of a library box: ``relax`` pixels added on every side, **not** clipped."""
    x0, y0, x1, y1 = (int(v) for v in box)
    return (x0 - relax, y0 - relax, x1 + relax, y1 + relax)


def crop_size(crop_box: Sequence[int]) -> tuple[int, int]:
    """``(width, height)`` in pixels of an inclusive box."""
    x0, y0, x1, y1 = crop_box
    return (int(x1) - int(x0) + 1, int(y1) - int(y0) + 1)


def inside_slices(crop_box: Sequence[int], height: int, width: int
                  ) -> tuple[tuple[slice, slice], tuple[slice, slice]] | None:
    """``(image_slices, crop_slices)`` (row, column) of the part of ``crop_box`` that lies inside
    an ``height`` x ``width`` image; None when nothing of it does."""
    x0, y0, x1, y1 = (int(v) for v in crop_box)
    ix0, iy0 = max(x0, 0), max(y0, 0)
    ix1, iy1 = min(x1, width - 1), min(y1, height - 1)
    if ix1 < ix0 or iy1 < iy0:
        return None
    image_sl = (slice(iy0, iy1 + 1), slice(ix0, ix1 + 1))
    crop_sl = (slice(iy0 - y0, iy1 - y0 + 1), slice(ix0 - x0, ix1 - x0 + 1))
    return image_sl, crop_sl


def box_to_512(box: Sequence[int], crop_box: Sequence[int],
               size: int = INPUT_SIZE) -> tuple[int, int, int, int]:
    """Library box (image pixels) -> inclusive pixel box ``(x0, y0, x1, y1)`` in 512-space.

    Keeps the 512-space pixels whose centres lie strictly inside the box's edge rectangle (see the
    module docstring); exact integer arithmetic. A box thinner than one 512-space pixel maps to the
    pixel nearest its centre.
    """
    cw, ch = crop_size(crop_box)
    out = []
    for lo_px, hi_px, origin, extent in ((box[0], box[2], crop_box[0], cw),
                                         (box[1], box[3], crop_box[1], ch)):
        a = int(lo_px) - int(origin)          # left edge, crop-local edge coordinates
        b = int(hi_px) - int(origin) + 1      # right edge
        # pixel j is inside iff 2*size*a < (2j + 1) * extent < 2*size*b
        j_min = (2 * size * a - extent) // (2 * extent) + 1
        j_max = -((extent - 2 * size * b) // (2 * extent)) - 1
        j_min, j_max = max(j_min, 0), min(j_max, size - 1)
        if j_min > j_max:
            centre = (a + b) / 2.0 * size / extent - 0.5
            j_min = j_max = min(max(int(math.floor(centre + 0.5)), 0), size - 1)
        out.append((j_min, j_max))
    (x0, x1), (y0, y1) = out
    return (x0, y0, x1, y1)


def corner_clicks(box_512: Sequence[int], size: int = INPUT_SIZE,
                  pad: int = CORNER_PAD) -> tuple[tuple[int, int], ...]:
    """The outside clicks LT, LB, RT, RB of a 512-space box, +-``pad``, clamped to [0, size]."""
    x0, y0, x1, y1 = (int(v) for v in box_512)
    left, top = max(x0 - pad, 0), max(y0 - pad, 0)
    right, bottom = min(x1 + pad, size), min(y1 + pad, size)
    return ((left, top), (left, bottom), (right, top), (right, bottom))


def points_to_512(points_xy: np.ndarray, crop_box: Sequence[int],
                  size: int = INPUT_SIZE) -> np.ndarray:
    """(N, 2) image-pixel points -> (N, 2) float64 512-space coordinates (not rounded)."""
    p = np.asarray(points_xy, dtype=np.float64).reshape(-1, 2)
    cw, ch = crop_size(crop_box)
    x = (p[:, 0] - crop_box[0] + 0.5) * size / cw - 0.5
    y = (p[:, 1] - crop_box[1] + 0.5) * size / ch - 0.5
    return np.stack([x, y], axis=1)


def points_from_512(points_512: np.ndarray, crop_box: Sequence[int],
                    size: int = INPUT_SIZE) -> np.ndarray:
    """(N, 2) 512-space points -> (N, 2) float64 image pixels (inverse of ``points_to_512``)."""
    p = np.asarray(points_512, dtype=np.float64).reshape(-1, 2)
    cw, ch = crop_size(crop_box)
    x = crop_box[0] + (p[:, 0] + 0.5) * cw / size - 0.5
    y = crop_box[1] + (p[:, 1] + 0.5) * ch / size - 0.5
    return np.stack([x, y], axis=1)


def round_to_pixel(points_512: np.ndarray, size: int = INPUT_SIZE) -> np.ndarray:
    """Round 512-space points to the nearest pixel (halves up), clamped to ``[0, size - 1]``."""
    p = np.floor(np.asarray(points_512, dtype=np.float64) + 0.5)
    return np.clip(p, 0, size - 1).astype(np.int64)


def guidance_for_box(box: Sequence[int], inside_xy: Sequence[float],
                     relax: int = RELAX, size: int = INPUT_SIZE) -> Guidance:
    """Crop box and 512-space clicks for a user's library box and inside point (image pixels)."""
    crop_box = crop_box_for(box, relax)
    inside = round_to_pixel(points_to_512(np.asarray(inside_xy), crop_box, size), size)[0]
    corners = corner_clicks(box_to_512(box, crop_box, size), size)
    return Guidance(crop_box, (int(inside[0]), int(inside[1])), corners)


# --------------------------------------------------------------------------- clicks from a mask


def clicks_from_mask(mask_512: np.ndarray, pad: int = CORNER_PAD
                     ) -> tuple[tuple[int, int], tuple[tuple[int, int], ...]] | None:
    """The official click simulation on a (resized, maybe soft) mask in 512-space.

    ``m = mask_512 > 0.5``. Inside click: the first (row-major) maximum of the Euclidean distance
    transform of ``m`` padded by one zero pixel (so the crop border counts as background). Outside
    clicks: ``corner_clicks`` of the tight box of ``m``, clamped to ``[0, width]`` / ``[0, height]``
    (the official code clamps to the full side length). ``None`` for an empty mask.
    """
    m = np.asarray(mask_512) > 0.5
    deepest = deepest_pixel(m)
    if deepest is None:
        return None
    h, w = m.shape
    row, col = deepest
    rows = np.flatnonzero(m.any(axis=1))
    cols = np.flatnonzero(m.any(axis=0))
    x0, x1, y0, y1 = int(cols[0]), int(cols[-1]), int(rows[0]), int(rows[-1])
    left, top = max(x0 - pad, 0), max(y0 - pad, 0)
    right, bottom = min(x1 + pad, w), min(y1 + pad, h)
    corners = ((left, top), (left, bottom), (right, top), (right, bottom))
    return (int(col), int(row)), corners


# --------------------------------------------------------------------------- crops


def crop_zero_padded(image: np.ndarray, crop_box: Sequence[int]) -> np.ndarray:
    """Cut ``crop_box`` out of an H x W (x C) array; pixels outside the image are 0. Keeps dtype."""
    cw, ch = crop_size(crop_box)
    out = np.zeros((ch, cw) + image.shape[2:], dtype=image.dtype)
    slices = inside_slices(crop_box, image.shape[0], image.shape[1])
    if slices is not None:
        image_sl, crop_sl = slices
        out[crop_sl] = image[image_sl]
    return out


def crop_resized(image: np.ndarray, crop_box: Sequence[int], size: int = INPUT_SIZE) -> np.ndarray:
    """Zero-padded crop as float32, then ``cv2.resize`` INTER_LINEAR to ``size`` x ``size``.

    The conversion to float32 comes first, as in the official chain: resizing uint8 would round.
    """
    crop = crop_zero_padded(image, crop_box).astype(np.float32)
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_LINEAR)


def crop_resized_torch(image_chw: torch.Tensor, crop_box: Sequence[int],
                       size: int = INPUT_SIZE) -> torch.Tensor:
    """Torch twin of ``crop_resized``: (C, H, W) tensor (any dtype/device) -> (C, size, size).

    Bilinear ``align_corners=False`` without antialiasing: the same sampling as cv2 INTER_LINEAR
    (within ~2e-5 on 0..255 data).
    """
    _, h, w = image_chw.shape
    x0, y0, x1, y1 = (int(v) for v in crop_box)
    # negative padding crops, positive padding adds zeros
    crop = F.pad(image_chw, (-x0, x1 - (w - 1), -y0, y1 - (h - 1)))
    crop = crop.to(torch.float32)[None]
    return F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False,
                         antialias=False)[0]


# --------------------------------------------------------------------------- heatmaps


def _gaussian_1d(n: int, centre: float, sigma: float) -> np.ndarray:
    t = np.arange(n, dtype=np.float64)
    return np.exp(-_FWHM_FACTOR * (t - centre) ** 2 / sigma**2)


def guidance_maps(inside_512: Sequence[int], corners_512: Sequence[Sequence[int]],
                  size: int = INPUT_SIZE, sigma: float = SIGMA) -> np.ndarray:
    """(2, size, size) float32 click heatmaps scaled to 0..255: [inside, max of the 4 corners].

    A 2-D FWHM Gaussian is the outer product of two 1-D ones, and the max over the four corners
    (two distinct columns x two distinct rows) of such products is the product of the 1-D maxima,
    so each channel is one outer product (float64), then cast to float32 and scaled jointly.
    """
    ix, iy = inside_512
    inside = np.outer(_gaussian_1d(size, iy, sigma), _gaussian_1d(size, ix, sigma))
    xs = {int(c[0]) for c in corners_512}
    ys = {int(c[1]) for c in corners_512}
    if len(corners_512) != 4 or len(xs) > 2 or len(ys) > 2:
        raise ValueError(f"expected the 4 corners of a box, got {corners_512}")
    gx = np.max([_gaussian_1d(size, x, sigma) for x in xs], axis=0)
    gy = np.max([_gaussian_1d(size, y, sigma) for y in ys], axis=0)
    t = np.stack([inside, np.outer(gy, gx)]).astype(np.float32)
    return (255 * (t - t.min()) / (t.max() - t.min() + 1e-10)).astype(np.float32)


def guidance_maps_torch(clicks_512: torch.Tensor, size: int = INPUT_SIZE,
                        sigma: float = SIGMA) -> torch.Tensor:
    """Batched torch twin of ``guidance_maps``: (N, 5, 2) clicks ``[inside, LT, LB, RT, RB]`` ->
    (N, 2, size, size) float32 on the clicks' device (1-D Gaussians in float64)."""
    c = clicks_512.to(torch.float64)
    t = torch.arange(size, dtype=torch.float64, device=c.device)

    def g(centres: torch.Tensor) -> torch.Tensor:     # (N, k) -> (N, k, size)
        return torch.exp(-_FWHM_FACTOR * (t - centres[..., None]) ** 2 / sigma**2)

    inside = g(c[:, 0, 1:2])[:, 0, :, None] * g(c[:, 0, 0:1])[:, 0, None, :]
    gx = g(c[:, [1, 3], 0]).amax(dim=1)               # LT/LB share x, RT/RB share x
    gy = g(c[:, [1, 2], 1]).amax(dim=1)               # LT/RT share y, LB/RB share y
    outside = gy[:, :, None] * gx[:, None, :]
    maps = torch.stack([inside, outside], dim=1).to(torch.float32)
    lo = maps.amin(dim=(1, 2, 3), keepdim=True)
    hi = maps.amax(dim=(1, 2, 3), keepdim=True)
    return 255 * (maps - lo) / (hi - lo + 1e-10)


def network_input(crop_512: np.ndarray, maps: np.ndarray) -> np.ndarray:
    """(size, size, 3) float32 RGB crop + (2, size, size) heatmaps -> (5, size, size) float32."""
    rgb = np.ascontiguousarray(np.asarray(crop_512, dtype=np.float32).transpose(2, 0, 1))
    return np.concatenate([rgb, np.asarray(maps, dtype=np.float32)], axis=0)


def preprocess_box(image_rgb: np.ndarray, box: Sequence[int], inside_xy: Sequence[float],
                   size: int = INPUT_SIZE) -> tuple[np.ndarray, Guidance]:
    """User path: H x W x 3 RGB image, library box, inside point (image pixels) ->
    ((5, size, size) float32 network input, its ``Guidance``)."""
    g = guidance_for_box(box, inside_xy, size=size)
    maps = guidance_maps(g.inside_512, g.corners_512, size)
    return network_input(crop_resized(image_rgb, g.crop_box, size), maps), g


def preprocess_from_mask(image_rgb: np.ndarray, mask: np.ndarray,
                         size: int = INPUT_SIZE) -> tuple[np.ndarray, Guidance]:
    """The official test-time chain: image + one object's binary mask -> (input, ``Guidance``).

    Crop box from the mask's tight box, clicks simulated on the bilinear-resized mask
    (``clicks_from_mask``). Raises ``ValueError`` for an empty mask.
    """
    from .boxes import mask_to_box

    tight = mask_to_box(np.asarray(mask) > 0)
    if tight is None:
        raise ValueError("empty mask: no object to crop")
    crop_box = crop_box_for(tight)
    mask_512 = crop_resized(np.asarray(mask > 0, dtype=np.float32), crop_box, size)
    clicks = clicks_from_mask(mask_512)
    if clicks is None:
        raise ValueError("the object vanishes when its crop is resized to the network input")
    g = Guidance(crop_box, clicks[0], clicks[1])
    maps = guidance_maps(g.inside_512, g.corners_512, size)
    return network_input(crop_resized(image_rgb, crop_box, size), maps), g


# --------------------------------------------------------------------------- refinement clicks


def add_click(maps: np.ndarray, click_512: Sequence[int], positive: bool,
              sigma: float = SIGMA) -> np.ndarray:
    """Merge one extra click into (2, H, W) 0..255 guidance maps the official way.

    ``channel = 255 * max(channel / 255, g)`` on the positive (0) or negative (1) channel, with
    ``g`` the float64 Gaussian at the click; then **both** channels are truncated to uint8 (as the
    official refinement code does) and returned as float32.
    """
    maps = np.asarray(maps, dtype=np.float32)
    _, h, w = maps.shape
    x, y = click_512
    g = np.outer(_gaussian_1d(h, y, sigma), _gaussian_1d(w, x, sigma))
    out = maps.astype(np.float64)
    ch = 0 if positive else 1
    out[ch] = 255 * np.maximum(maps[ch] / 255, g)
    return out.astype(np.uint8).astype(np.float32)


def add_click_torch(maps: torch.Tensor, click_512: Sequence[int], positive: bool,
                    sigma: float = SIGMA) -> torch.Tensor:
    """Torch twin of ``add_click`` for (2, H, W) maps on any device (float64 Gaussian)."""
    _, h, w = maps.shape
    x, y = (float(v) for v in click_512)
    t_h = torch.arange(h, dtype=torch.float64, device=maps.device)
    t_w = torch.arange(w, dtype=torch.float64, device=maps.device)
    g = (torch.exp(-_FWHM_FACTOR * (t_h - y) ** 2 / sigma**2)[:, None]
         * torch.exp(-_FWHM_FACTOR * (t_w - x) ** 2 / sigma**2)[None, :])
    maps = maps.to(torch.float32)
    out = maps.to(torch.float64)
    ch = 0 if positive else 1
    out[ch] = 255 * torch.maximum((maps[ch] / 255).to(torch.float64), g)
    return out.to(torch.uint8).to(torch.float32)


# --------------------------------------------------------------------------- paste-back and scores


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """float32 logistic function."""
    x = np.asarray(logits, dtype=np.float32)
    return (1.0 / (1.0 + np.exp(-x))).astype(np.float32)


def paste(crop: np.ndarray, crop_box: Sequence[int], image_hw: Sequence[int]) -> np.ndarray:
    """Put a crop-sized array into ``zeros(H, W)`` at ``crop_box``; parts outside the image drop."""
    h, w = int(image_hw[0]), int(image_hw[1])
    out = np.zeros((h, w), dtype=crop.dtype)
    slices = inside_slices(crop_box, h, w)
    if slices is not None:
        image_sl, crop_sl = slices
        out[image_sl] = crop[crop_sl]
    return out


def probability_crop(fine_logits_512: np.ndarray, crop_box: Sequence[int]) -> np.ndarray:
    """(512, 512) fine logits -> float32 probabilities at crop size (cv2 INTER_CUBIC; may overshoot
    [0, 1] slightly, as the official post-processing does)."""
    cw, ch = crop_size(crop_box)
    p = sigmoid(np.asarray(fine_logits_512).reshape(fine_logits_512.shape[-2:]))
    return cv2.resize(p, (cw, ch), interpolation=cv2.INTER_CUBIC)


def probability_full(fine_logits_512: np.ndarray, crop_box: Sequence[int],
                     image_hw: Sequence[int]) -> np.ndarray:
    """Official post-processing: fine logits -> float32 H x W probabilities, 0 outside the crop."""
    return paste(probability_crop(fine_logits_512, crop_box), crop_box, image_hw)


def probability_crop_torch(fine_logits_512: torch.Tensor, crop_box: Sequence[int]) -> torch.Tensor:
    """Torch twin of ``probability_crop`` for one (512, 512) or (1, 1, 512, 512) logit map ->
    (crop_h, crop_w) float32 (bicubic ``align_corners=False``, a = -0.75 like cv2)."""
    cw, ch = crop_size(crop_box)
    p = torch.sigmoid(fine_logits_512.reshape(1, 1, *fine_logits_512.shape[-2:]).float())
    return F.interpolate(p, size=(ch, cw), mode="bicubic", align_corners=False)[0, 0]


def stability_score(fine_logits: np.ndarray, delta: float = STABILITY_DELTA) -> float:
    """IOG's score: ``maskmath.stability`` of the fine logits (the whole 512 crop) at the sigmoid
    cuts ``0.5 +- delta``, in [0, 1]; 0 when nothing lies above the lower cut."""
    return stability(fine_logits, *sigmoid_cuts(delta))


def stability_score_torch(fine_logits: torch.Tensor,
                          delta: float = STABILITY_DELTA) -> torch.Tensor:
    """Batched twin of ``stability_score``: (N, 1, H, W) logits -> (N,) float32 scores."""
    return stability_torch(fine_logits, *sigmoid_cuts(delta))

@dataclass(frozen=True)
class CropSettings:
    """Crop and guidance settings; the defaults are the official ones."""

    size: int = INPUT_SIZE
    relax: int = RELAX
    inside: bool = True
    """False for stage 1: the inside channel is left empty (zeros)."""

    @property
    def corner_pad(self) -> int:
        """Corner-click offset in ``size``-space pixels (10 at 512)."""
        return int(round(CORNER_PAD * self.size / INPUT_SIZE))

    @property
    def sigma(self) -> float:
        """Gaussian FWHM in ``size``-space pixels (10 at 512)."""
        return SIGMA * self.size / INPUT_SIZE


def box_input(image: np.ndarray, box: tuple[int, int, int, int],
              settings: CropSettings = CropSettings(),
              inside_xy: tuple[float, float] | None = None) -> tuple[np.ndarray, Guidance]:
    """Network input for a library box (inference; stage 1 when ``inside_xy`` is None or
    ``settings.inside`` is False): crop box, corners of the box in S-space +- the corner offset,
    inside click at ``inside_xy`` (image pixels) or an empty inside channel."""
    size = settings.size
    crop_box = crop_box_for(box, settings.relax)
    corners = corner_clicks(box_to_512(box, crop_box, size), size, settings.corner_pad)
    if inside_xy is None:
        inside = (corners[0][0], corners[0][1])
    else:
        p = round_to_pixel(points_to_512(np.asarray(inside_xy), crop_box, size), size)[0]
        inside = (int(p[0]), int(p[1]))
    maps = guidance_maps(inside, corners, size, settings.sigma)
    if inside_xy is None or not settings.inside:
        maps[0] = 0.0
    x = network_input(crop_resized(image, crop_box, size), maps)
    return x, Guidance(crop_box, inside, corners)
