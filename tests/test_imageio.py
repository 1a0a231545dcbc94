"""Defensive decoding: every odd or broken file decodes correctly (with a warning) or is refused
with a clear reason. The crafted files live in tests/data/bad_images (see its README)."""

from __future__ import annotations

import io
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageFile

from boxmask.imageio import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_bytes, decode_image

REPO = Path(__file__).resolve().parents[1]
BAD = REPO / "tests/data/bad_images"
ILSVRC_JPEGS = sorted((REPO / "data/samples/ilsvrc_loc/Data").rglob("*.JPEG"))
SOURCE = REPO / "data/samples/ilsvrc_loc/Data/CLS-LOC/train/n01440764/n01440764_10040.JPEG"
"""The real JPEG the CMYK, grey and PNG-as-JPEG files were made from."""


@pytest.fixture(scope="module")
def source_rgb() -> np.ndarray:
    return np.asarray(Image.open(SOURCE).convert("RGB")).astype(np.int16)


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def check_rgb(img) -> None:
    assert img.rgb.dtype == np.uint8 and img.rgb.ndim == 3 and img.rgb.shape[2] == 3
    assert img.rgb.flags["C_CONTIGUOUS"]


# --- truncation ---------------------------------------------------------------------------

@pytest.mark.parametrize("lenient", [False, True])
@pytest.mark.parametrize("name", ["truncated_half.JPEG", "truncated_half.png"])
def test_truncated_files_are_refused(monkeypatch, name, lenient):
    """Also when other code in the process told Pillow to load truncated images."""
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", lenient)
    with pytest.raises(ImageDecodeError, match="truncated"):
        decode_image(BAD / name)


def test_lenient_pillow_alone_would_return_a_grey_half(monkeypatch):
    """Why the structural check exists: Pillow fills the missing half with grey silently."""
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    im = Image.open(BAD / "truncated_half.JPEG")
    im.load()
    bottom = np.asarray(im.convert("RGB"))[-40:]
    assert (bottom == 128).all()


def test_every_real_jpeg_cut_anywhere_is_refused(monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    assert len(ILSVRC_JPEGS) == 50
    for path in ILSVRC_JPEGS[:20]:
        data = path.read_bytes()
        for cut in (len(data) // 10, len(data) // 2, len(data) * 9 // 10, len(data) - 2):
            with pytest.raises(ImageDecodeError, match="truncated"):
                decode_bytes(data[:cut], name=path.name)


def test_a_cut_progressive_jpeg_is_refused(monkeypatch):
    """Progressive JPEGs hold several scans; a cut between or inside them is still a cut."""
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    buf = io.BytesIO()
    Image.open(SOURCE).save(buf, "JPEG", quality=90, progressive=True)
    data = buf.getvalue()
    assert data.count(b"\xff\xda") > 1
    assert decode_bytes(data).size == (224, 224)
    for cut in (len(data) // 3, len(data) * 2 // 3, len(data) - 2):
        with pytest.raises(ImageDecodeError, match="truncated"):
            decode_bytes(data[:cut])


def test_a_thumbnail_inside_a_truncated_jpeg_does_not_hide_the_cut(monkeypatch):
    """An embedded complete JPEG (like an EXIF thumbnail) holds its own end-of-image marker."""
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    thumb = io.BytesIO()
    Image.new("RGB", (8, 8), (255, 0, 0)).save(thumb, "JPEG")
    payload = b"Photoshop 3.0\x00" + thumb.getvalue()
    segment = b"\xff\xed" + (len(payload) + 2).to_bytes(2, "big") + payload
    data = SOURCE.read_bytes()
    with_thumb = data[:2] + segment + data[2:]
    assert (decode_bytes(with_thumb).rgb == decode_bytes(data).rgb).all()
    with pytest.raises(ImageDecodeError, match="truncated"):
        decode_bytes(with_thumb[: len(segment) + len(data) // 2])


def test_bytes_after_the_end_of_image_marker_are_harmless():
    data = SOURCE.read_bytes()
    img = decode_bytes(data + b"\x00" * 100 + b"trailing junk")
    assert (img.rgb == decode_bytes(data).rgb).all()


def test_every_real_sample_image_decodes_without_warnings():
    paths = ILSVRC_JPEGS + sorted((REPO / "tests/data/coco_mval").rglob("*.*g"))
    assert len(paths) == 130
    for path in paths:
        img = decode_image(path)
        check_rgb(img)
        assert img.warnings == [], path
        with Image.open(path) as im:
            assert img.size == im.size


# --- colour spaces and odd containers ----------------------------------------------------------

@pytest.mark.parametrize("name", ["cmyk_adobe.jpg", "cmyk_no_adobe_marker.jpg"])
def test_cmyk_jpegs_come_out_in_the_colours_of_the_rgb_original(name, source_rgb):
    img = decode_image(BAD / name)
    check_rgb(img)
    with Image.open(BAD / name) as im:
        assert im.mode == "CMYK"
    # An inverted (negative) reading would differ by ~100 grey levels; JPEG loss is ~1.
    assert mean_abs_diff(img.rgb, source_rgb) < 3.0
    assert any("CMYK" in w for w in img.warnings)


def test_png_named_jpeg_decodes_with_a_warning():
    data = (BAD / "png_named.JPEG").read_bytes()
    img = decode_image(BAD / "png_named.JPEG")
    assert img.format == "PNG"
    assert img.warnings == ["png_named.JPEG: file is PNG although named .JPEG"]
    same = decode_bytes(data, name="png_named.png")
    assert same.warnings == [] and (same.rgb == img.rgb).all()


def test_grayscale_jpeg_gives_three_equal_channels_of_the_luma(source_rgb):
    img = decode_image(BAD / "grayscale.jpg")
    check_rgb(img)
    assert (img.rgb[..., 0] == img.rgb[..., 1]).all() and (img.rgb[..., 1] == img.rgb[..., 2]).all()
    luma = source_rgb @ np.array([0.299, 0.587, 0.114])  # ITU-R BT.601
    assert mean_abs_diff(img.rgb[..., 0], np.round(luma)) < 3.0
    assert img.warnings == []


def test_16bit_grey_keeps_its_brightness():
    """12-bit data in a 16-bit PNG (max 4095) must stay dark, not be stretched to full range."""
    img = decode_image(BAD / "grey16_12bit.png")
    expected = (np.arange(32 * 128).reshape(32, 128) % 4096) >> 8
    assert img.rgb.max() == 15
    for c in range(3):
        assert (img.rgb[..., c] == expected).all()
    assert any("16-bit" in w for w in img.warnings)


def test_16bit_grey_and_16bit_colour_pngs_agree():
    samples = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)
    ok, grey = cv2.imencode(".png", samples)
    ok2, colour = cv2.imencode(".png", np.dstack([samples] * 3))
    assert ok and ok2
    g = decode_bytes(grey.tobytes(), name="g.png")
    c = decode_bytes(colour.tobytes(), name="c.png")
    assert (g.rgb == c.rgb).all()
    assert (g.rgb[..., 0] == samples >> 8).all()


def test_rgba_is_composited_onto_black():
    raw = np.asarray(Image.open(BAD / "rgba.png")).astype(np.int32)
    assert set(np.unique(raw[..., 3])) == {0, 128, 255}
    img = decode_image(BAD / "rgba.png")
    out = img.rgb.astype(np.int32)
    opaque, half, clear = raw[..., 3] == 255, raw[..., 3] == 128, raw[..., 3] == 0
    assert (out[opaque] == raw[..., :3][opaque]).all()
    assert (out[clear] == 0).all()
    assert np.abs(out[half] - raw[..., :3][half] * 128 / 255).max() <= 0.5
    assert img.warnings == ["rgba.png: transparent pixels composited onto black"]


def test_an_opaque_rgba_png_decodes_without_warning():
    rgb = np.asarray(Image.open(SOURCE).convert("RGB").resize((32, 32)))
    buf = io.BytesIO()
    Image.fromarray(np.dstack([rgb, np.full((32, 32), 255, np.uint8)]), "RGBA").save(buf, "PNG")
    img = decode_bytes(buf.getvalue(), name="opaque.png")
    assert img.warnings == [] and (img.rgb == rgb).all()


def test_palette_png_with_a_transparent_index():
    img = decode_image(BAD / "palette_transparent.png")
    index = np.arange(16 * 16).reshape(16, 16) % 4
    colours = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 0], [255, 255, 255]])  # 2 = clear
    assert (img.rgb == colours[index]).all()
    assert any("transparent" in w for w in img.warnings)


def test_float_images_are_refused():
    buf = io.BytesIO()
    Image.fromarray(np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8), "F").save(buf, "TIFF")
    with pytest.raises(ImageDecodeError, match="float"):
        decode_bytes(buf.getvalue(), name="depth.tif")


# --- EXIF orientation ------------------------------------------------------------------------

EXIF6 = BAD / "exif_orientation6.jpg"


def test_exif_orientation_ignore_keeps_the_stored_grid():
    img = decode_image(EXIF6, exif="ignore")
    assert img.size == img.stored_size == (64, 40)
    assert img.orientation_applied == 1 and img.warnings == []


def test_exif_orientation_6_apply_rotates_clockwise():
    """EXIF 6: the stored first row is the displayed right column (a 90-degree clockwise turn)."""
    stored = decode_image(EXIF6, exif="ignore").rgb
    img = decode_image(EXIF6, exif="apply")
    assert img.size == (40, 64) and img.stored_size == (64, 40)
    assert img.orientation_applied == 6
    assert (img.rgb == np.rot90(stored, k=-1)).all()
    assert (img.rgb[:, -1] == stored[0]).all()


@pytest.mark.parametrize("declared, applied", [
    (None, True),          # nothing known: show it as a browser does
    ((40, 64), True),      # the annotation saw the displayed image
    ((64, 40), False),     # the annotation was drawn on the stored grid
    ((640, 400), False),   # ... in a frame with the stored grid's shape (resized)
    ((500, 500), True),    # no evidence either way
])
def test_exif_orientation_auto_follows_the_declared_size(declared, applied):
    stored = decode_image(EXIF6, exif="ignore").rgb
    img = decode_image(EXIF6, exif="auto", declared_size=declared)
    if applied:
        assert img.orientation_applied == 6 and (img.rgb == np.rot90(stored, k=-1)).all()
        assert img.warnings == []
    else:
        assert img.orientation_applied == 1 and (img.rgb == stored).all()
        assert len(img.warnings) == 1 and "EXIF orientation 6 not applied" in img.warnings[0]


def test_an_unknown_exif_policy_is_a_programming_error():
    with pytest.raises(ValueError, match="exif policy"):
        decode_image(EXIF6, exif="rotate")


# --- decompression bombs ------------------------------------------------------------------

@pytest.mark.parametrize("name", ["bomb_30000x30000.png", "bomb_30000x30000.jpg"])
def test_decompression_bombs_are_refused_fast(name):
    assert (BAD / name).stat().st_size < 3000
    start = time.perf_counter()
    with pytest.raises(ImageDecodeError, match="before decoding") as err:
        decode_image(BAD / name)
    assert time.perf_counter() - start < 0.5
    assert "900000000" in str(err.value)


def test_decompression_bombs_are_refused_without_allocating_the_pixels():
    """In a process that cannot map 1.5 GiB (30000 x 30000 RGB needs 2.7 GB)."""
    code = f"""
import resource, numpy as np
resource.setrlimit(resource.RLIMIT_AS, (1536 << 20, 1536 << 20))
from boxmask.imageio import ImageDecodeError, decode_image
try:
    np.empty((30000, 30000, 3), np.uint8)
    raise SystemExit("the memory limit does not bite")
except MemoryError:
    pass
for name in ("bomb_30000x30000.png", "bomb_30000x30000.jpg"):
    try:
        decode_image({str(BAD)!r} + "/" + name)
    except ImageDecodeError as e:
        assert "before decoding" in str(e), e
    else:
        raise SystemExit("decoded a bomb")
print("refused")
"""
    env = {"PYTHONPATH": str(REPO), "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, env=env, cwd=REPO)
    assert out.returncode == 0, out.stderr + out.stdout
    assert out.stdout.strip() == "refused"


def test_the_pixel_limit_is_checked_before_the_pixels_are_read():
    """The file has a 5000x5000 header and no pixel data: decoding it would fail differently."""
    path = BAD / "header_only_5000x5000.png"
    with pytest.raises(ImageDecodeError, match="5000x5000 = 25000000 pixels exceeds the limit "
                                               "of 10000000") as err:
        decode_image(path, max_pixels=10_000_000)
    assert "before decoding" in str(err.value)
    with pytest.raises(ImageDecodeError, match="corrupt or truncated"):
        decode_image(path)


def test_the_pixel_limit_boundary():
    assert decode_image(SOURCE, max_pixels=224 * 224).size == (224, 224)
    with pytest.raises(ImageDecodeError, match="exceeds the limit"):
        decode_image(SOURCE, max_pixels=224 * 224 - 1)


def test_our_limit_replaces_pillows_limits(monkeypatch):
    """``max_pixels`` decides, also above Pillow's warning threshold and hard limit."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40_000)  # 224 x 224 = 50176 > 40000
    assert decode_image(SOURCE).size == (224, 224)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20_000)  # Pillow's hard limit 40000 < 50176
    assert decode_image(SOURCE).size == (224, 224)  # lifted to max_pixels: ours decides
    with pytest.raises(ImageDecodeError, match="exceeds the limit of 40000"):
        decode_image(SOURCE, max_pixels=40_000)
    assert DEFAULT_MAX_PIXELS == 2 * 89_478_485


# --- not images at all -----------------------------------------------------------------------

def test_empty_file(tmp_path):
    with pytest.raises(ImageDecodeError, match="empty file"):
        decode_image(BAD / "empty.jpg")


def test_text_named_jpg():
    with pytest.raises(ImageDecodeError, match="not an image"):
        decode_image(BAD / "text.jpg")


def test_missing_file(tmp_path):
    with pytest.raises(ImageDecodeError, match="not found"):
        decode_image(tmp_path / "n01440764_1.JPEG")


def test_directory(tmp_path):
    (tmp_path / "x.jpg").mkdir()
    with pytest.raises(ImageDecodeError, match="is a directory"):
        decode_image(tmp_path / "x.jpg")


def test_garbage_after_a_valid_signature():
    with pytest.raises(ImageDecodeError, match="corrupt or truncated JPEG"):
        decode_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4 + b"\xff\xd9", name="x.jpg")
    with pytest.raises(ImageDecodeError, match="PNG"):
        decode_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 100, name="x.png")


# --- the crafted files themselves ------------------------------------------------------------

def test_crafted_files_are_small_and_listed_in_the_readme():
    files = [p for p in BAD.iterdir() if p.suffix not in (".py", ".md")]
    readme = (BAD / "README.md").read_text(encoding="utf-8")
    assert len(files) >= 15
    assert all(p.stat().st_size < 50_000 for p in files)
    assert sum(p.stat().st_size for p in files) < 300_000
    for p in files:
        assert f"`{p.name}`" in readme, p.name
