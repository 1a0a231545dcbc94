"""Decode images defensively into RGB uint8 arrays.

Real datasets hold surprises: ImageNet train has CMYK JPEGs and a PNG named ``.JPEG``; files get
truncated; some carry an EXIF orientation; a hostile file can declare gigapixel dimensions. Each
case here either decodes correctly (with a warning where the file is odd) or raises
``ImageDecodeError`` with a reason that ends up in ``errors.jsonl``.

What comes out, whatever went in: ``H x W x 3`` uint8 RGB.

* CMYK JPEGs are read with Adobe polarity (ink values stored inverted), with or without the
  Adobe APP14 marker, as browsers do, and converted with Pillow's plain formula, without colour
  management (an embedded ICC profile is not applied); a warning says so.
* Transparent pixels (RGBA, LA, palette or colour-key transparency) are composited onto black
  (``rgb * alpha / 255``), with a warning when any pixel is not fully opaque.
* 16-bit grey images keep the high byte of each sample (``v >> 8``), as Pillow does for 16-bit
  colour PNGs, so the mapping never depends on the image's content. 32-bit float images are
  refused (no defined mapping to 8 bits).
* Truncated files are refused, also when ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` has been switched
  on elsewhere in the process (a JPEG must reach its end-of-image marker; a PNG chunk must not be
  cut short).
* Images above ``max_pixels`` are refused from their header, before any pixel is decoded. Pillow's
  own hard limit (``2 * PIL.Image.MAX_IMAGE_PIXELS``, the default of ``max_pixels``) applies too;
  raise it there to decode larger images.
* Multi-frame files (GIF, TIFF, APNG) give their first frame, with a warning.

EXIF orientation policy (``exif``):

* ``"apply"``: rotate/flip to the displayed orientation (what a browser shows).
* ``"ignore"``: keep the stored pixel grid (what OpenCV with ``IMREAD_IGNORE_ORIENTATION`` and
  most ImageNet tooling see).
* ``"auto"`` (default): apply it, unless the orientation swaps the axes (5-8) and the annotation
  declared a size with the stored grid's shape (equal, or the same aspect ratio within 1 %) but not
  the rotated grid's: then the boxes were drawn on the stored grid, so keep it and warn.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

DEFAULT_MAX_PIXELS = 178_956_970
"""Refuse images above this many pixels (Pillow's hard decompression-bomb limit, 2 x its
``MAX_IMAGE_PIXELS``)."""

_MAGIC = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)
_EXT_FORMAT = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".gif": "GIF", ".bmp": "BMP",
               ".tif": "TIFF", ".tiff": "TIFF", ".webp": "WEBP"}
_SWAPS_AXES = {5, 6, 7, 8}
_GREY16 = {"I;16", "I;16B", "I;16L", "I;16N", "I"}
_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
_ASPECT_TOL = 0.01


class ImageDecodeError(Exception):
    """The file cannot be turned into an RGB image; the message says why."""


@dataclass
class DecodedImage:
    rgb: np.ndarray
    """H x W x 3 uint8, RGB, C-contiguous."""
    format: str
    """Container format detected from the file's bytes (not its extension)."""
    stored_size: tuple[int, int]
    """(width, height) of the stored pixel grid, before any EXIF rotation."""
    orientation_applied: int = 1
    """EXIF orientation that was applied (1 = none)."""
    warnings: list[str] = field(default_factory=list)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of ``rgb``."""
        return (self.rgb.shape[1], self.rgb.shape[0])


def sniff_format(head: bytes) -> str | None:
    """Container format from the first bytes of a file, or None if unknown."""
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return None


def decode_image(
    path: str | Path,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    exif: str = "auto",
    declared_size: tuple[int, int] | None = None,
) -> DecodedImage:
    """Read ``path`` into an RGB uint8 array, or raise ``ImageDecodeError``.

    ``max_pixels`` bounds width x height of the stored grid. ``declared_size`` is the
    (width, height) an annotation states for the image; it only steers the ``"auto"`` EXIF policy.
    """
    if exif not in ("auto", "apply", "ignore"):
        raise ValueError(f"exif policy must be auto, apply or ignore, not {exif!r}")
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImageDecodeError(f"image file not found: {path}") from None
    except IsADirectoryError:
        raise ImageDecodeError(f"image path is a directory: {path}") from None
    except OSError as e:
        raise ImageDecodeError(f"cannot read {path}: {e.strerror or e}") from None
    return decode_bytes(data, name=str(path), max_pixels=max_pixels, exif=exif,
                        declared_size=declared_size)


def decode_bytes(
    data: bytes,
    *,
    name: str = "<bytes>",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    exif: str = "auto",
    declared_size: tuple[int, int] | None = None,
) -> DecodedImage:
    """``decode_image`` for bytes already in memory (``name`` is used in messages)."""
    if exif not in ("auto", "apply", "ignore"):
        raise ValueError(f"exif policy must be auto, apply or ignore, not {exif!r}")
    label = Path(name).name or name
    notes: list[str] = []
    if not data:
        raise ImageDecodeError(f"{name}: empty file")
    fmt = sniff_format(data[:16])
    if fmt is None:
        raise ImageDecodeError(f"{name}: not an image (unknown file signature {data[:8]!r})")
    ext_fmt = _EXT_FORMAT.get(Path(name).suffix.lower())
    if ext_fmt is not None and ext_fmt != fmt:
        notes.append(f"{label}: file is {fmt} although named {Path(name).suffix}")

    im = _open_checked(data, fmt, name, max_pixels)
    n_frames = int(getattr(im, "n_frames", 1))
    if n_frames > 1:
        notes.append(f"{label}: {n_frames} frames, the first one used")
    stored = im.size

    orientation = _orientation(im, label, notes)
    apply = orientation != 1 and exif != "ignore"
    if apply and exif == "auto" and declared_size is not None and orientation in _SWAPS_AXES:
        rotated = (stored[1], stored[0])
        if _same_shape(declared_size, stored) and not _same_shape(declared_size, rotated):
            apply = False
            notes.append(f"{label}: EXIF orientation {orientation} not applied: the declared size "
                         f"{declared_size[0]}x{declared_size[1]} has the shape of the stored "
                         f"{stored[0]}x{stored[1]} pixels")
    if apply:
        im = ImageOps.exif_transpose(im)

    rgb = np.ascontiguousarray(_to_rgb(im, name, label, notes), dtype=np.uint8)
    return DecodedImage(rgb=rgb, format=fmt, stored_size=stored,
                        orientation_applied=orientation if apply else 1, warnings=notes)


def _open_checked(data: bytes, fmt: str, name: str, max_pixels: int) -> Image.Image:
    """Open with Pillow, check size and completeness from the header, then decode the pixels."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and max_pixels > 2 * limit:
        # ``max_pixels`` is the guard; lift Pillow's own hard limit (2 x MAX_IMAGE_PIXELS) to it.
        Image.MAX_IMAGE_PIXELS = max_pixels // 2 + 1
    try:
        with warnings.catch_warnings():
            # The pixel limit below is ours; Pillow's softer warning threshold is not.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=[fmt])
            w, h = im.size
            if w <= 0 or h <= 0:
                raise ImageDecodeError(f"{name}: invalid size {w}x{h}")
            if w * h > max_pixels:
                raise ImageDecodeError(f"{name}: {w}x{h} = {w * h} pixels exceeds the limit of "
                                       f"{max_pixels} (decompression-bomb guard, --max-pixels); "
                                       "refused before decoding")
            cut = _truncation(fmt, data)
            if cut is not None:
                raise ImageDecodeError(f"{name}: truncated {fmt}: {cut}")
            im.load()
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageDecodeError(f"{name}: refused before decoding by Pillow's pixel limit "
                               f"(decompression-bomb guard; raise PIL.Image.MAX_IMAGE_PIXELS "
                               f"as well as --max-pixels to allow it): {e}") from None
    except MemoryError:
        raise ImageDecodeError(f"{name}: out of memory while decoding the {fmt}") from None
    except Exception as e:  # Pillow's plugins raise many types on hostile input
        raise ImageDecodeError(f"{name}: corrupt or truncated {fmt}: "
                               f"{type(e).__name__}: {e}") from None
    return im


def _truncation(fmt: str, data: bytes) -> str | None:
    """Why ``data`` is visibly cut short, judged from its container structure, or None."""
    if fmt == "JPEG" and not _jpeg_reaches_eoi(data):
        return "the data ends before the end-of-image marker"
    if fmt == "PNG":
        return _png_cut_chunk(data)
    return None


def _jpeg_reaches_eoi(data: bytes) -> bool:
    """Walk the JPEG marker segments (skipping embedded thumbnails) up to EOI (``FF D9``)."""
    n, i = len(data), 2
    while i < n:
        j = data.find(b"\xff", i)
        if j < 0:
            return False
        k = j + 1
        while k < n and data[k] == 0xFF:  # fill bytes
            k += 1
        if k >= n:
            return False
        marker, i = data[k], k + 1
        if marker == 0xD9:
            return True
        if marker in (0x00, 0x01, 0xD8) or 0xD0 <= marker <= 0xD7:
            continue  # stuffed byte in scan data, TEM, SOI, RSTn: no length field
        if i + 2 > n:
            return False
        length = int.from_bytes(data[i:i + 2], "big")
        if length >= 2:
            i += length
    return False


def _png_cut_chunk(data: bytes) -> str | None:
    i, n = 8, len(data)
    while i + 8 <= n:
        length = int.from_bytes(data[i:i + 4], "big")
        kind = data[i + 4:i + 8]
        end = i + 12 + length
        if end > n:
            return f"chunk {kind.decode('latin-1')!r} is cut short"
        if kind == b"IEND":
            return None
        i = end
    return None


def _orientation(im: Image.Image, label: str, notes: list[str]) -> int:
    try:
        value = int(im.getexif().get(0x0112, 1) or 1)
    except Exception:  # a broken EXIF block must not sink a decodable image
        notes.append(f"{label}: unreadable EXIF block ignored")
        return 1
    if not 1 <= value <= 8:
        notes.append(f"{label}: invalid EXIF orientation {value} ignored")
        return 1
    return value


def _same_shape(declared: tuple[int, int], size: tuple[int, int]) -> bool:
    """Equal sizes, or the same aspect ratio within ``_ASPECT_TOL`` (a resized annotation frame)."""
    (dw, dh), (w, h) = declared, size
    if (dw, dh) == (w, h):
        return True
    if min(dw, dh, w, h) <= 0:
        return False
    return abs(dw * h - dh * w) <= _ASPECT_TOL * dh * w


def _to_rgb(im: Image.Image, name: str, label: str, notes: list[str]) -> np.ndarray:
    """H x W x 3 uint8 RGB from any Pillow mode (see the module docstring for the rules)."""
    mode = im.mode
    if mode == "F":
        raise ImageDecodeError(f"{name}: 32-bit float pixels have no defined mapping to 8-bit RGB")
    if mode in _GREY16:
        return _grey16_to_rgb(im, label, notes)
    if mode == "CMYK":
        notes.append(f"{label}: CMYK image converted to RGB (no colour management)")
    try:
        if mode in _ALPHA_MODES or "transparency" in im.info:
            if mode == "La":
                im = im.convert("LA")
            rgba = np.asarray(im.convert("RGBA"))
            alpha = rgba[..., 3]
            if alpha.min() == 255:
                return rgba[..., :3]
            notes.append(f"{label}: transparent pixels composited onto black")
            mixed = (rgba[..., :3].astype(np.uint16) * alpha[..., None] + 127) // 255
            return mixed.astype(np.uint8)
        return np.asarray(im if mode == "RGB" else im.convert("RGB"))
    except (ValueError, OSError) as e:
        raise ImageDecodeError(f"{name}: cannot convert {mode} pixels to RGB: {e}") from None


def _grey16_to_rgb(im: Image.Image, label: str, notes: list[str]) -> np.ndarray:
    arr = np.asarray(im)
    samples = np.clip(arr.astype(np.int64), 0, 65535)
    grey = (samples >> 8).astype(np.uint8)
    if im.mode == "I" and (arr.min() < 0 or arr.max() > 65535):
        notes.append(f"{label}: 32-bit grey samples clipped to the 16-bit range")
    notes.append(f"{label}: 16-bit grey image ({im.mode}) reduced to 8 bits")
    key = im.info.get("transparency")
    if isinstance(key, int) and (arr == key).any():
        grey[arr == key] = 0
        notes.append(f"{label}: transparent pixels composited onto black")
    return np.repeat(grey[..., None], 3, axis=2)
