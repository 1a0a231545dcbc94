"""Mask utilities: COCO RLE, PNG encoding, and painting instances into one label image.

All functions are pure (arrays and bytes in, arrays and bytes out).

Conventions
-----------
* A mask is an ``H x W`` array, ``True``/non-zero = object, in full-image pixel coordinates.
* RLE is COCO's compressed run-length encoding (column-major), as a JSON-able dict
  ``{"size": [h, w], "counts": str}``. pycocotools needs a Fortran-ordered ``uint8`` array to
  encode and returns ``counts`` as ``bytes``; both details are handled here so that callers only
  ever see bool arrays and ``str`` counts.
* Boxes come back in the library convention ``(x0, y0, x1, y1)``, 0-based inclusive pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from .records import BoxXYXY

PNG_COMPRESSION = 3
"""zlib level for every PNG written (fixed, so that equal arrays give equal bytes)."""


def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    """``H x W`` mask (non-zero = object) -> ``{"size": [h, w], "counts": str}``."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"expected a 2-D mask, got shape {mask.shape}")
    rle = mask_utils.encode(np.asfortranarray(mask != 0, dtype=np.uint8))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])],
            "counts": rle["counts"].decode("ascii")}


def _native(rle: dict[str, Any]) -> dict[str, Any]:
    """The RLE dict in the form pycocotools' C functions take (``counts`` as bytes)."""
    counts = rle["counts"]
    if isinstance(counts, str):
        counts = counts.encode("ascii")
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": counts}


def decode_rle(rle: dict[str, Any]) -> np.ndarray:
    """COCO RLE -> ``H x W`` bool array."""
    return mask_utils.decode(_native(rle)).astype(bool)


def rle_area(rle: dict[str, Any]) -> int:
    """Number of object pixels, computed on the runs (no decoding)."""
    return int(mask_utils.area(_native(rle)))


def rle_box(rle: dict[str, Any]) -> BoxXYXY | None:
    """Tight library box ``(x0, y0, x1, y1)`` (inclusive) of the object pixels; None if empty."""
    if rle_area(rle) == 0:
        return None
    x, y, w, h = (int(round(v)) for v in mask_utils.toBbox(_native(rle)))
    return (x, y, x + w - 1, y + h - 1)


def encode_png(image: np.ndarray) -> bytes:
    """Single-channel ``uint8`` or ``uint16`` array -> PNG bytes of the same bit depth."""
    image = np.asarray(image)
    if image.ndim != 2 or image.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"expected a 2-D uint8/uint16 array, got {image.dtype} {image.shape}")
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(image),
                           [cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESSION])
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


def encode_binary_png(mask: np.ndarray) -> bytes:
    """``H x W`` mask -> 1-bit greyscale PNG.

    Decoders see 0 / 255 (OpenCV ``IMREAD_GRAYSCALE``/``IMREAD_UNCHANGED``) or ``False``/``True``
    (PIL mode ``"1"``), so both ``> 0`` and ``> 127`` thresholds recover the mask.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"expected a 2-D mask, got shape {mask.shape}")
    ok, buf = cv2.imencode(".png", np.where(mask != 0, 255, 0).astype(np.uint8),
                           [cv2.IMWRITE_PNG_BILEVEL, 1,
                            cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESSION])
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


def decode_png(data: bytes) -> np.ndarray:
    """PNG bytes -> array with the stored bit depth (1-bit masks come back as 0 / 255 ``uint8``)."""
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ValueError("not a decodable PNG")
    return image


def instance_dtype(max_value: int) -> type[np.unsignedinteger]:
    """``uint8`` when every instance value fits in 1..255, else ``uint16`` (up to 65535)."""
    if max_value <= 255:
        return np.uint8
    if max_value <= 65535:
        return np.uint16
    raise ValueError(f"instance value {max_value} does not fit in a 16-bit PNG")


MaskLike = np.ndarray | dict[str, Any]
"""An ``H x W`` mask array, or its COCO RLE dict (decoded only when painted)."""


def _area(mask: MaskLike) -> int:
    return rle_area(mask) if isinstance(mask, dict) else int(np.count_nonzero(mask))


def _as_bool(mask: MaskLike) -> np.ndarray:
    return decode_rle(mask) if isinstance(mask, dict) else np.asarray(mask) != 0


def instance_map(masks: Sequence[MaskLike], indices: Sequence[int], height: int, width: int,
                 dtype: type[np.unsignedinteger] | None = None) -> tuple[np.ndarray, int]:
    """Paint masks into one ``height x width`` label image: pixel = ``index + 1``, 0 = background.

    ``masks`` are ``H x W`` masks (arrays, or COCO RLE dicts, decoded one at a time) in source
    order and ``indices`` their 0-based box indices (distinct). Overlap rule: where several masks
    claim a pixel, the mask with the **smaller area** wins (the object in front is usually the
    smaller one); on equal areas the **lower index** wins. ``dtype`` defaults to the smallest of
    uint8/uint16 that holds ``max(indices) + 1``.

    Returns ``(label_image, contested)``, ``contested`` = number of pixels claimed by two or more
    masks (worth recording: a large value means boxes overlap a lot or masks leak).
    """
    if len(masks) != len(indices):
        raise ValueError(f"{len(masks)} masks but {len(indices)} indices")
    if len(set(indices)) != len(indices):
        raise ValueError("instance indices must be distinct")
    if any(i < 0 for i in indices):
        raise ValueError("instance indices must be >= 0")
    top = max(indices, default=-1) + 1
    dtype = dtype if dtype is not None else instance_dtype(top)
    if top > np.iinfo(dtype).max:
        raise ValueError(f"instance value {top} does not fit in {np.dtype(dtype).name}")
    out = np.zeros((height, width), dtype=dtype)
    covered = np.zeros((height, width), dtype=bool)
    contested = np.zeros((height, width), dtype=bool)
    areas = [_area(m) for m in masks]
    # Paint large before small and, on equal areas, high index before low: the last paint wins.
    for k in sorted(range(len(masks)), key=lambda k: (-areas[k], -indices[k])):
        m = _as_bool(masks[k])
        if m.shape != (height, width):
            raise ValueError(f"mask of shape {m.shape} does not match the {height}x{width} image")
        contested |= covered & m
        covered |= m
        out[m] = indices[k] + 1
    return out, int(contested.sum())
