"""Decode images defensively into RGB uint8 arrays.

Real datasets hold surprises: ImageNet train has CMYK JPEGs and a PNG named ``.JPEG``; files get
truncated; some carry an EXIF orientation; a hostile file can declare gigapixel dimensions. Each
case here either decodes correctly (with a warning where the file is odd) or raises
``ImageDecodeError`` with a reason that ends up in ``errors.jsonl``.

EXIF orientation policy (``exif``):

* ``"apply"``: rotate/flip to the displayed orientation (what a browser shows).
* ``"ignore"``: keep the stored pixel grid (what OpenCV with ``IMREAD_IGNORE_ORIENTATION`` and
  most ImageNet tooling see).
* ``"auto"`` (default): apply it, unless the annotation declared a size that matches the stored grid
  but not the rotated one, in which case the boxes were drawn on the stored grid; keep it and warn.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 178_956_970
"""Refuse images above this many pixels (PIL's own decompression-bomb threshold x2)."""

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

    ``declared_size`` is the (width, height) an annotation states for the image; it only steers
    the ``"auto"`` EXIF policy.
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
    notes: list[str] = []
    if not data:
        raise ImageDecodeError(f"{name}: empty file")
    fmt = sniff_format(data[:16])
    if fmt is None:
        raise ImageDecodeError(f"{name}: not an image (unknown file signature {data[:8]!r})")
    ext_fmt = _EXT_FORMAT.get(Path(name).suffix.lower())
    if ext_fmt is not None and ext_fmt != fmt:
        notes.append(f"{Path(name).name}: file is {fmt} although named {Path(name).suffix}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            w, h = im.size
            if w <= 0 or h <= 0:
                raise ImageDecodeError(f"{name}: invalid size {w}x{h}")
            if w * h > max_pixels:
                raise ImageDecodeError(f"{name}: {w}x{h} = {w * h} pixels exceeds the limit of "
                                       f"{max_pixels} (decompression-bomb guard, --max-pixels)")
            im.load()
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageDecodeError(f"{name}: refused as a decompression bomb: {e}") from None
    except UnidentifiedImageError:
        raise ImageDecodeError(f"{name}: {fmt} signature but undecodable content") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageDecodeError(f"{name}: corrupt or truncated {fmt}: {e}") from None

    stored = im.size
    orientation = 1
    try:
        orientation = int(im.getexif().get(0x0112, 1) or 1)
    except Exception:  # a broken EXIF block must not sink a decodable image
        notes.append(f"{Path(name).name}: unreadable EXIF block ignored")
    apply = orientation != 1 and exif != "ignore"
    if apply and exif == "auto" and declared_size is not None and orientation in _SWAPS_AXES:
        rotated = (stored[1], stored[0])
        if tuple(declared_size) == stored and tuple(declared_size) != rotated:
            apply = False
            notes.append(f"{Path(name).name}: EXIF orientation {orientation} not applied: the "
                         f"declared size {declared_size[0]}x{declared_size[1]} matches the stored pixels")
    if apply:
        im = ImageOps.exif_transpose(im)

    if im.mode == "CMYK":
        notes.append(f"{Path(name).name}: CMYK image converted to RGB")
    if im.mode != "RGB":
        if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            im = im.convert("RGBA")
            background = Image.new("RGBA", im.size, (0, 0, 0, 255))
            im = Image.alpha_composite(background, im)
        elif im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            notes.append(f"{Path(name).name}: {im.mode} image scaled to 8 bits")
            arr = np.asarray(im, dtype=np.float64)
            top = max(float(arr.max()), 1.0)
            im = Image.fromarray(np.clip(arr * (255.0 / top), 0, 255).astype(np.uint8), "L")
        im = im.convert("RGB")
    rgb = np.ascontiguousarray(np.asarray(im, dtype=np.uint8))
    return DecodedImage(rgb=rgb, format=fmt, stored_size=stored,
                        orientation_applied=orientation if apply else 1, warnings=notes)
