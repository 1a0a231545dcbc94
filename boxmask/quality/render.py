"""Review thumbnails: the image around a box, with the mask, the box and the clicks drawn on it.

What a thumbnail shows (colours are RGB constants below):

* the crop: the union of the input box and the mask's tight box (so a leak far outside the box
  stays in view), grown by ``MARGIN`` of its longer side (at least ``MIN_MARGIN`` px) on every
  side and clipped to the image; scaled so that its longer side is ``size`` px (small crops are
  enlarged at most ``MAX_UPSCALE`` times; masks are scaled with nearest-neighbour when enlarged,
  so pixel steps stay visible);
* the mask: filled semi-transparently (``FILL_ALPHA``) with a 1 px contour;
* the input box: a rectangle on its outer pixel edges;
* the clicks: positive ones (the inside point, positive refinement clicks) as green dots,
  negative ones (box corners, negative clicks) as red dots.

Boxes use the library convention (0-based inclusive pixels); clicks are ``[x, y, positive, kind]``
in image pixels, integer values being pixel centres. Images are decoded one at a time.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..atomic import atomic_write_bytes
from ..boxes import mask_to_box
from ..imageio import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image
from ..masks import decode_rle
from ..records import BoxXYXY
from ..safepath import UnsafePathError, join_inside

log = logging.getLogger(__name__)

MARGIN = 0.15
"""Context around the box and mask, as a fraction of the crop's longer side."""
MIN_MARGIN = 8
"""Least context, in image pixels."""
MAX_UPSCALE = 4.0
"""Largest enlargement of a small crop."""
FILL_RGB = (255, 0, 220)
FILL_ALPHA = 0.4
CONTOUR_RGB = (255, 90, 240)
BOX_RGB = (255, 214, 0)
POSITIVE_RGB = (0, 230, 64)
NEGATIVE_RGB = (255, 40, 40)
DOT_RADIUS = 4
JPEG_QUALITY = 85


def crop_window(box: BoxXYXY, mask_box: BoxXYXY | None, width: int, height: int, *,
                margin: float = MARGIN, min_margin: int = MIN_MARGIN) -> BoxXYXY:
    """The crop shown for ``box`` (and the mask's tight box ``mask_box``) in a ``width`` x
    ``height`` image: library convention, clipped to the image."""
    x0, y0, x1, y1 = (int(v) for v in box)
    if mask_box is not None:
        x0, y0 = min(x0, mask_box[0]), min(y0, mask_box[1])
        x1, y1 = max(x1, mask_box[2]), max(y1, mask_box[3])
    pad = max(min_margin, round(margin * max(x1 - x0 + 1, y1 - y0 + 1)))
    return (max(0, x0 - pad), max(0, y0 - pad), min(width - 1, x1 + pad),
            min(height - 1, y1 + pad))


def overlay(rgb: np.ndarray, mask: np.ndarray, box: BoxXYXY, clicks: Sequence[Sequence[Any]],
            size: int) -> np.ndarray:
    """The thumbnail (``h x w x 3`` uint8 RGB, longer side ``size`` unless capped by
    ``MAX_UPSCALE``) of one mask: ``rgb`` is the full image, ``mask`` its ``H x W`` bool mask."""
    h, w = mask.shape
    cx0, cy0, cx1, cy1 = crop_window(box, mask_to_box(mask), w, h)
    cw, ch = cx1 - cx0 + 1, cy1 - cy0 + 1
    s = min(size / max(cw, ch), MAX_UPSCALE)
    out_wh = (max(1, round(cw * s)), max(1, round(ch * s)))
    crop = rgb[cy0:cy1 + 1, cx0:cx1 + 1]
    mcrop = mask[cy0:cy1 + 1, cx0:cx1 + 1].astype(np.uint8) * 255
    if s < 1:
        img = cv2.resize(crop, out_wh, interpolation=cv2.INTER_AREA)
        m = cv2.resize(mcrop, out_wh, interpolation=cv2.INTER_AREA) >= 128
    else:
        img = cv2.resize(crop, out_wh, interpolation=cv2.INTER_LINEAR)
        m = cv2.resize(mcrop, out_wh, interpolation=cv2.INTER_NEAREST) > 0
    img = np.ascontiguousarray(img)
    if m.any():
        img[m] = (img[m] * (1 - FILL_ALPHA) + np.array(FILL_RGB) * FILL_ALPHA).astype(np.uint8)
        contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(img, contours, -1, CONTOUR_RGB, 1)
    bx0, by0, bx1, by1 = (int(v) for v in box)
    # outer pixel edges of the box, in thumbnail pixel indices
    p0 = (round((bx0 - cx0) * s), round((by0 - cy0) * s))
    p1 = (round((bx1 + 1 - cx0) * s) - 1, round((by1 + 1 - cy0) * s) - 1)
    cv2.rectangle(img, p0, p1, BOX_RGB, 1)
    for c in clicks:
        x, y, positive = float(c[0]), float(c[1]), bool(c[2])
        centre = (round(((x + 0.5 - cx0) * s - 0.5) * 16), round(((y + 0.5 - cy0) * s - 0.5) * 16))
        colour = POSITIVE_RGB if positive else NEGATIVE_RGB
        cv2.circle(img, centre, (DOT_RADIUS + 1) * 16, (0, 0, 0), -1, cv2.LINE_AA, shift=4)
        cv2.circle(img, centre, DOT_RADIUS * 16, colour, -1, cv2.LINE_AA, shift=4)
    return img


def placeholder(size: int, reason: str) -> np.ndarray:
    """A grey ``size`` x ``3/4 size`` RGB image with ``reason`` written on it (wrapped)."""
    h = max(1, size * 3 // 4)
    img = np.full((h, size, 3), 96, np.uint8)
    words, lines, line = reason.split(), [], ""
    for word in words:
        if line and len(line) + 1 + len(word) > max(8, size // 9):
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    lines.append(line)
    for i, text in enumerate(lines[:8]):
        cv2.putText(img, text, (6, 18 + 15 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (240, 240, 240),
                    1, cv2.LINE_AA)
    return img


def write_jpeg(path: Path, rgb: np.ndarray, quality: int = JPEG_QUALITY) -> None:
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                            [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError(f"cannot encode {path.name} as JPEG")
    atomic_write_bytes(path, data.tobytes(), fsync=False)


def _decode_for(path: Path, hw: tuple[int, int], exif: str, max_pixels: int) -> np.ndarray:
    """The image at ``path`` decoded as the run decoded it: the EXIF policy of the run, or the
    other way round when only that gives the mask's ``hw`` (the run's choice may have hung on a
    declared size that the mask line does not carry)."""
    decoded = decode_image(path, max_pixels=max_pixels, exif=exif)
    if decoded.rgb.shape[:2] == hw:
        return decoded.rgb
    other = "ignore" if decoded.orientation_applied != 1 else "apply"
    if other != exif:
        again = decode_image(path, max_pixels=max_pixels, exif=other)
        if again.rgb.shape[:2] == hw:
            return again.rgb
    raise ImageDecodeError(f"image is {decoded.rgb.shape[1]}x{decoded.rgb.shape[0]} but the "
                           f"mask is {hw[1]}x{hw[0]}")


def render_thumbnails(items: list[dict[str, Any]], images_root: str | Path | None,
                      out_dir: Path, *, size: int = 256, exif: str = "auto",
                      max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    """Write ``out_dir/thumbs/<sample_index>.jpg`` for every item (``masks.jsonl`` dicts with a
    ``sample_index``), decoding each image once; set ``item["thumb"]`` (path relative to
    ``out_dir``) and, when the image could not be shown, ``item["thumb_error"]`` (a placeholder
    with the reason is written instead)."""
    thumbs = out_dir / "thumbs"
    thumbs.mkdir(parents=True, exist_ok=True)
    by_image: dict[str, list[dict[str, Any]]] = {}
    for item in items:
        by_image.setdefault(str(item.get("image_path") or ""), []).append(item)
    for image_path, group in sorted(by_image.items()):
        rgb, reason = None, None
        height, width = (int(v) for v in group[0]["rle"]["size"])
        hw = (height, width)
        try:
            if images_root is None:
                raise ImageDecodeError("no images root: plan.json names none; pass images_root")
            rgb = _decode_for(join_inside(images_root, image_path, "image path"), hw, exif,
                              max_pixels)
        except (ImageDecodeError, UnsafePathError) as e:
            reason = str(e)
            log.warning("%s: no thumbnail: %s", image_path, reason)
        for item in group:
            name = f"thumbs/{int(item['sample_index']):05d}.jpg"
            item["thumb"] = name
            if rgb is None or tuple(int(v) for v in item["rle"]["size"]) != rgb.shape[:2]:
                item["thumb_error"] = reason or "mask size differs from the image"
                write_jpeg(out_dir / name, placeholder(size, item["thumb_error"]))
                continue
            thumb = overlay(rgb, decode_rle(item["rle"]), tuple(item["box_xyxy"]),
                            item.get("clicks") or [], size)
            write_jpeg(out_dir / name, thumb)
