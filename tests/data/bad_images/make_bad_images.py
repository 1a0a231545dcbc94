"""Regenerate the crafted image files of this folder (run from anywhere; deterministic).

Each file exercises one way a real dataset image can be odd or broken; README.md lists them and
what ``boxmask.imageio.decode_image`` must do with each. The photographic content comes from one
real ILSVRC JPEG of ``data/samples/ilsvrc_loc``.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
SOURCE = REPO / "data/samples/ilsvrc_loc/Data/CLS-LOC/train/n01440764/n01440764_10040.JPEG"
"""224 x 224 baseline JPEG; the CMYK, grey and PNG-as-JPEG files are re-encodings of it."""


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return (struct.pack(">I", len(payload)) + kind + payload
            + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF))


def header_only_png(width: int, height: int) -> bytes:
    """A valid 8-bit RGB PNG header declaring ``width`` x ``height`` with almost no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat)
            + _png_chunk(b"IEND", b""))


def patch_jpeg_size(data: bytes, width: int, height: int) -> bytes:
    """Rewrite the frame size in the SOF0/SOF2 segment of a JPEG (the scan data is kept)."""
    i = 2
    while i < len(data):
        marker = data[i + 1]
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if marker in (0xC0, 0xC2):
            head = data[:i + 5]
            return head + struct.pack(">HH", height, width) + data[i + 9:]
        i += 2 + length
    raise ValueError("no SOF0/SOF2 segment")


def strip_adobe_app14(data: bytes) -> bytes:
    """Remove the Adobe APP14 segment (``FF EE ... 'Adobe'``) from a JPEG."""
    i = 2
    while i < len(data):
        marker = data[i + 1]
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if marker == 0xEE and data[i + 4:i + 9] == b"Adobe":
            return data[:i] + data[i + 2 + length:]
        if marker == 0xDA:
            break
        i += 2 + length
    raise ValueError("no Adobe APP14 segment")


def _encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def build() -> dict[str, bytes]:
    src_bytes = SOURCE.read_bytes()
    rgb = Image.open(SOURCE).convert("RGB")
    files: dict[str, bytes] = {}

    files["truncated_half.JPEG"] = src_bytes[: len(src_bytes) // 2]
    png = _encode(rgb.resize((64, 64), Image.Resampling.BILINEAR), "PNG")
    files["truncated_half.png"] = png[: len(png) // 2]

    # Pillow writes CMYK JPEGs the way Photoshop does: Adobe APP14 marker, ink values inverted.
    cmyk_adobe = _encode(rgb.convert("CMYK"), "JPEG", quality=85)
    files["cmyk_adobe.jpg"] = cmyk_adobe
    # The same inverted ink values without the APP14 marker: browsers (and Pillow) still read
    # stand-alone CMYK JPEGs as inverted, the de-facto convention.
    files["cmyk_no_adobe_marker.jpg"] = strip_adobe_app14(cmyk_adobe)

    files["png_named.JPEG"] = _encode(rgb.resize((112, 112), Image.Resampling.BILINEAR), "PNG")
    files["grayscale.jpg"] = _encode(rgb.convert("L"), "JPEG", quality=90)

    # Stored grid 64 x 40 (landscape); orientation 6 = displayed rotated 90 degrees clockwise.
    small = rgb.resize((64, 40), Image.Resampling.BILINEAR)
    exif = Image.Exif()
    exif[0x0112] = 6
    files["exif_orientation6.jpg"] = _encode(small, "JPEG", quality=90, exif=exif.tobytes())

    files["bomb_30000x30000.png"] = header_only_png(30000, 30000)
    files["bomb_30000x30000.jpg"] = patch_jpeg_size(src_bytes[:2000] + b"\xff\xd9", 30000, 30000)
    files["header_only_5000x5000.png"] = header_only_png(5000, 5000)

    # 12-bit camera data in a 16-bit container: a dark image whose samples reach only 4095.
    ramp = (np.arange(32 * 128, dtype=np.uint32).reshape(32, 128) % 4096).astype(np.uint16)
    files["grey16_12bit.png"] = _encode(Image.fromarray(ramp), "PNG")

    alpha = np.zeros((24, 24), np.uint8)
    alpha[:, 8:16] = 128
    alpha[:, 16:] = 255
    rgba = np.dstack([np.asarray(rgb.resize((24, 24), Image.Resampling.BILINEAR)), alpha])
    files["rgba.png"] = _encode(Image.fromarray(rgba, "RGBA"), "PNG")

    pal = Image.fromarray((np.arange(16 * 16).reshape(16, 16) % 4).astype(np.uint8), "P")
    pal.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255, 255, 255, 255])
    files["palette_transparent.png"] = _encode(pal, "PNG", transparency=2)

    files["empty.jpg"] = b""
    files["text.jpg"] = b"<html><body>404 Not Found</body></html>\n"
    return files


def main() -> None:
    for name, data in build().items():
        (HERE / name).write_bytes(data)
        print(f"{name}: {len(data)} bytes")


if __name__ == "__main__":
    main()
