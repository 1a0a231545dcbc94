"""Training transforms: augmentation and the official crop / click pipeline, on numpy arrays.

Official IOG training chain (reference section 3.1), for one instance:

1. ``RandomHorizontalFlip``: with probability 0.5 every array is mirrored (``cv2.flip(a, 1)``).
2. ``ScaleNRotate``: one angle uniform in [-20, 20] degrees and one scale uniform in
   [0.75, 1.25]; ``cv2.getRotationMatrix2D`` about ``(w / 2, h / 2)``; ``cv2.warpAffine`` to the
   same size, zero border; the image (float32) with ``INTER_CUBIC`` (values may overshoot 0..255,
   as in the official code), masks with ``INTER_NEAREST``.
3. Crop box = tight box of the mask +- ``relax`` (30) image pixels, **not clipped**, zero-padded
   (``boxmask.guidance.crop_box_for`` / ``crop_zero_padded``).
4. Image, mask and void crops resized to ``size`` x ``size`` (512) with ``cv2.INTER_LINEAR``
   (``guidance.crop_resized``): the mask becomes soft (0..1).
5. Clicks from the resized mask (``guidance.clicks_from_mask``: inside = distance-transform
   maximum, four corners of the tight box +- 10 px) and their heatmaps (``guidance.guidance_maps``).
6. Network input ``[R, G, B, inside, outside]`` (float32, 0..255, no normalisation).

Stage 1 (boxes only) uses the same chain with the inside channel set to zero
(``inside=False``).

For a network input other than 512 (reduced test configurations) the corner offset and the
Gaussian width, both defined in 512-space, are scaled by ``size / 512``, so the heatmaps are those
of the 512 pipeline resized.

Randomness comes only from the ``numpy.random.Generator`` passed in; the caller derives it from
``(seed, epoch, sample index)`` so that a resumed run sees the same augmentations.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .. import guidance as G
from ..boxes import mask_to_box
from ..guidance import CropSettings


@dataclass(frozen=True)
class AugmentSettings:
    """Random augmentation before cropping (official values by default)."""

    flip: float = 0.5
    """Probability of a horizontal flip."""
    rotate: float = 20.0
    """Rotation angle uniform in ``[-rotate, rotate]`` degrees."""
    scale: tuple[float, float] = (0.75, 1.25)
    """Scale factor uniform in this range."""
    retries: int = 5
    """Draws of new parameters when the object leaves the image; then no augmentation."""




@dataclass
class CropSample:
    """One instance after the crop pipeline."""

    x: np.ndarray
    """(5, S, S) float32 network input ``[R, G, B, inside, outside]``, 0..255."""
    gt: np.ndarray
    """(S, S) float32 soft mask in [0, 1] (bilinear resize of the binary mask)."""
    void: np.ndarray
    """(S, S) float32 soft void map in [0, 1]; pixels > 0.5 are ignored."""
    clicks: np.ndarray
    """(5, 2) int64 clicks ``[inside, LT, LB, RT, RB]`` as ``(x, y)`` in S-space."""
    crop_box: tuple[int, int, int, int]
    """Library box (unclipped) of the crop in the (augmented) image."""


# --------------------------------------------------------------------------- augmentation


def hflip(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    """Mirror every array left-right."""
    return tuple(np.ascontiguousarray(a[:, ::-1]) for a in arrays)


def scale_rotate(image: np.ndarray, masks: tuple[np.ndarray, ...], angle: float,
                 scale: float) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """Rotate by ``angle`` degrees (counter-clockwise) and scale about ``(w / 2, h / 2)``.

    ``image`` (H x W x C float32) is resampled bicubically, each of ``masks`` (H x W bool) with
    nearest neighbour; the output keeps the input size and is zero outside the warped image.
    """
    h, w = image.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale)
    out = cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_CUBIC)
    warped = tuple(cv2.warpAffine(k.astype(np.uint8), m, (w, h), flags=cv2.INTER_NEAREST) > 0
                   for k in masks)
    return out, warped


def augment(image: np.ndarray, mask: np.ndarray, void: np.ndarray, rng: np.random.Generator,
            settings: AugmentSettings = AugmentSettings()
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random flip, then scale + rotation (see the module doc). ``image`` is float32 H x W x 3;
    ``mask``/``void`` H x W bool. When the object leaves the image, new parameters are drawn
    (``settings.retries`` times) before giving up and returning the inputs unchanged."""
    for _ in range(max(settings.retries, 1)):
        img, m, v = image, mask, void
        if rng.random() < settings.flip:
            img, m, v = hflip(img, m, v)
        angle = rng.uniform(-settings.rotate, settings.rotate)
        scale = rng.uniform(*settings.scale)
        img, (m, v) = scale_rotate(img, (m, v), angle, scale)
        if m.any():
            return img, m, v & ~m
    return image, mask, void


# --------------------------------------------------------------------------- crop pipeline


def crop_sample(image: np.ndarray, mask: np.ndarray, void: np.ndarray,
                settings: CropSettings = CropSettings()) -> CropSample | None:
    """Official crop + resize + simulated clicks of one instance; None when the mask is empty or
    vanishes at ``settings.size``.

    ``image``: H x W x 3 (uint8 or float32) RGB; ``mask``/``void``: H x W bool.
    """
    tight = mask_to_box(mask)
    if tight is None:
        return None
    size = settings.size
    crop_box = G.crop_box_for(tight, settings.relax)
    gt = G.crop_resized(mask.astype(np.float32), crop_box, size)
    clicks = G.clicks_from_mask(gt, pad=settings.corner_pad)
    if clicks is None:
        return None
    inside, corners = clicks
    maps = G.guidance_maps(inside, corners, size, settings.sigma)
    if not settings.inside:
        maps[0] = 0.0
    x = G.network_input(G.crop_resized(image, crop_box, size), maps)
    vd = G.crop_resized(void.astype(np.float32), crop_box, size)
    return CropSample(x, gt, vd, np.array([inside, *corners], dtype=np.int64), crop_box)

