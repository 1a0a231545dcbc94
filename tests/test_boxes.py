"""Box geometry: conversions at the reader/writer edges, rescaling, validation, measures.

Library convention: (x0, y0, x1, y1), 0-based, inclusive pixel indices.
"""

from __future__ import annotations

import csv
import math
import xml.etree.ElementTree as ET
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from boxmask import boxes as B
from boxmask.records import Box

REPO = Path(__file__).resolve().parents[1]
ILSVRC = REPO / "data/samples/ilsvrc_loc"
VOC = REPO / "tests/data/voc2012"
COCO_MVAL = REPO / "tests/data/coco_mval"


def random_boxes(rng: np.random.Generator, n: int, width: int, height: int) -> list[tuple]:
    """``n`` random valid boxes inside a ``width`` x ``height`` image."""
    out = []
    for _ in range(n):
        x0, x1 = sorted(int(v) for v in rng.integers(0, width, 2))
        y0, y1 = sorted(int(v) for v in rng.integers(0, height, 2))
        out.append((x0, y0, x1, y1))
    return out


def box_pixels(box: tuple, width: int, height: int) -> np.ndarray:
    """Boolean H x W mask of the pixels an inclusive box covers (brute force oracle)."""
    m = np.zeros((height, width), bool)
    x0, y0, x1, y1 = box
    m[max(y0, 0):max(y1 + 1, 0), max(x0, 0):max(x1 + 1, 0)] = True
    return m


def voc_objects(xml_path: Path) -> tuple[tuple[int, int], list[tuple[float, ...]]]:
    root = ET.parse(xml_path).getroot()
    size = (int(root.findtext("size/width")), int(root.findtext("size/height")))
    objs = [tuple(float(o.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax"))
            for o in root.iter("object")]
    return size, objs


# --- VOC / ILSVRC XML -------------------------------------------------------------------------

def test_voc_round_trip_for_random_boxes():
    rng = np.random.default_rng(0)
    for box in random_boxes(rng, 2000, 5000, 5000):
        assert B.from_voc(*B.to_voc(box)) == box
        assert B.to_voc(box) == tuple(v + 1 for v in box)


def test_from_voc_on_the_official_voc_file_matches_its_instance_mask():
    """VOC XML is 1-based: the truncated chair spans every row of the image (ymin=1, ymax=375)."""
    _, objs = voc_objects(VOC / "Annotations/2007_000063.xml")
    inst = np.asarray(Image.open(VOC / "SegmentationObject/2007_000063.png"))
    assert inst.shape == (375, 500)
    for k, obj in enumerate(objs, start=1):
        box = B.from_voc(*obj)
        assert B.to_voc(box) == tuple(int(v) for v in obj)
        tight = B.mask_to_box(inst == k)
        # The XML box contains the object's labelled pixels (VOC masks leave a void border).
        assert box[0] <= tight[0] and box[1] <= tight[1]
        assert box[2] >= tight[2] and box[3] >= tight[3]
        assert B.iou(box, tight) > 0.85
    chair, chair_tight = B.from_voc(*objs[1]), B.mask_to_box(inst == 2)
    assert (chair[1], chair[3]) == (0, 374) == (chair_tight[1], chair_tight[3])


def test_from_voc_rounds_fractional_coordinates_half_up():
    assert B.from_voc(10.5, 11.5, 20.49, 21.5) == (10, 11, 19, 21)
    assert B.from_voc(2.5, 3.5, 4.5, 5.5) == (2, 3, 4, 5)  # no banker's rounding


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_conversions_refuse_non_finite_coordinates(bad):
    with pytest.raises(ValueError, match="NaN or infinite"):
        B.from_voc(bad, 1, 5, 5)
    with pytest.raises(ValueError, match="NaN or infinite"):
        B.from_xywh(0, bad, 5, 5)
    with pytest.raises(ValueError, match="NaN or infinite"):
        B.from_normalized(0, 0, bad, 0.5, 100, 100)


# --- COCO xywh --------------------------------------------------------------------------------

def test_xywh_round_trip_for_integer_boxes():
    rng = np.random.default_rng(1)
    for box in random_boxes(rng, 2000, 4000, 3000):
        xywh = B.to_xywh(box)
        assert xywh[2] == box[2] - box[0] + 1 and xywh[3] == box[3] - box[1] + 1
        assert B.from_xywh(*xywh) == box
    for _ in range(2000):
        x, y = (int(v) for v in rng.integers(0, 1000, 2))
        w, h = (int(v) for v in rng.integers(1, 1000, 2))
        assert B.to_xywh(B.from_xywh(x, y, w, h)) == [x, y, w, h]


def test_from_xywh_covers_exactly_the_pixels_a_fractional_box_touches():
    """Pixel i spans [i, i+1); it belongs to the box iff that span overlaps (x, x + w)."""
    rng = np.random.default_rng(2)
    for _ in range(500):
        x, y = rng.uniform(0, 30, 2)
        w, h = rng.uniform(0.05, 20, 2)
        box = B.from_xywh(x, y, w, h)
        cols = [i for i in range(60) if i < x + w and i + 1 > x]
        rows = [i for i in range(60) if i < y + h and i + 1 > y]
        assert box == (cols[0], rows[0], cols[-1], rows[-1])


# --- Open Images normalised edges ---------------------------------------------------------------

SMALL_SIZES = [(1, 1), (2, 3), (3, 2), (5, 7), (7, 5), (9, 9), (12, 10), (13, 16)]
LARGE_SIZES = [(224, 224), (333, 500), (500, 375), (640, 480), (683, 1024), (1024, 768),
               (1600, 1200), (4000, 3000), (6000, 4000)]


def as_in_csv(values):
    """Normalised values as Open Images CSVs print them: six decimals."""
    return tuple(float(f"{v:.6f}") for v in values)


def test_normalized_round_trip_for_every_box_of_small_images():
    for w, h in SMALL_SIZES:
        xs = [(a, b) for a in range(w) for b in range(a, w)]
        ys = [(a, b) for a in range(h) for b in range(a, h)]
        for x0, x1 in xs:
            for y0, y1 in ys:
                box = (x0, y0, x1, y1)
                norm = B.to_normalized(box, w, h)
                assert all(0.0 <= v <= 1.0 for v in norm)
                assert B.from_normalized(*norm, w, h) == box
                assert B.from_normalized(*as_in_csv(norm), w, h) == box


def test_normalized_round_trip_keeps_every_edge_of_real_image_sizes():
    """Every left and every right edge value, also after printing with six decimals."""
    rng = np.random.default_rng(3)
    for w, h in LARGE_SIZES:
        boxes = []
        for i in range(w):
            boxes.append((i, 0, int(rng.integers(i, w)), h - 1))
            boxes.append((int(rng.integers(0, i + 1)), 0, i, h - 1))
        for j in range(h):
            boxes.append((0, j, w - 1, int(rng.integers(j, h))))
            boxes.append((0, int(rng.integers(0, j + 1)), w - 1, j))
        for box in boxes:
            norm = B.to_normalized(box, w, h)
            assert B.from_normalized(*norm, w, h) == box
            assert B.from_normalized(*as_in_csv(norm), w, h) == box, (box, w, h)


def test_csv_precision_does_not_shift_an_edge():
    """0.195312 is 125/640 and 0.151562 is 97/640, printed with six decimals (both < exact)."""
    assert 0.195312 * 640 < 125 and 0.151562 * 640 < 97
    assert B.from_normalized(0.0125, 0.25, 0.195312, 0.75, 640, 480) == (8, 120, 124, 359)
    assert B.from_normalized(0.151562, 0.25, 0.195312, 0.75, 640, 480) == (97, 120, 124, 359)


def test_genuinely_fractional_normalized_edges_cover_touched_pixels():
    # 0.3 * 1024 = 307.2: the box starts in pixel 307 and, as a right edge, ends in pixel 307.
    assert B.from_normalized(0.3, 0.3, 0.5, 0.5, 1024, 1024)[::2] == (307, 511)
    assert B.from_normalized(0.1, 0.1, 0.3, 0.3, 1024, 1024)[2] == 307


def test_real_open_images_rows_resolve_inside_the_image():
    oi = REPO / "tests/data/openimages"
    norm = []
    for name, prefix in [("oidv6-train-annotations-bbox_excerpt.csv", ""),
                         ("train-annotations-object-segmentation_excerpt.csv", "Box")]:
        with open(oi / name, newline="") as f:
            for r in csv.DictReader(f):
                norm.append(tuple(float(r[prefix + k]) for k in ("XMin", "YMin", "XMax", "YMax")))
    assert len(norm) == 7
    for w, h in LARGE_SIZES + SMALL_SIZES:
        for x0, y0, x1, y1 in norm:
            box = B.from_normalized(x0, y0, x1, y1, w, h)
            assert 0 <= box[0] <= box[2] <= w - 1 and 0 <= box[1] <= box[3] <= h - 1
            # Covering, up to the CSV's rounding (0.151562 * 640 = 96.99968 is the edge 97).
            tol = B.normalized_tolerance(w)
            assert box[0] - tol <= x0 * w < box[0] + 1 and box[2] < x1 * w <= box[2] + 1 + tol


# --- rescale and resolve ------------------------------------------------------------------------

def ilsvrc_boxes():
    out = []
    for xml in sorted((ILSVRC / "Annotations").rglob("*.xml")):
        declared, objs = voc_objects(xml)
        split = xml.parent.parent.name
        jpeg = ILSVRC / "Data/CLS-LOC" / split / xml.parent.name / (xml.stem + ".JPEG")
        with Image.open(jpeg) as im:
            actual = im.size
        out.extend((xml.name, declared, actual, B.from_voc(*o)) for o in objs)
    return out


def test_rescaled_ilsvrc_boxes_stay_inside_the_resized_jpeg():
    """The sample XMLs give the original size (e.g. 500x375); the JPEGs are 224x224."""
    items = ilsvrc_boxes()
    assert len(items) >= 80
    assert {actual for _, _, actual, _ in items} == {(224, 224)}
    inside = 0
    for name, declared, actual, box in items:
        out = B.rescale(box, declared, actual)
        sx, sy = Fraction(actual[0], declared[0]), Fraction(actual[1], declared[1])
        # Covering: the rescaled box holds the scaled edges, and is less than a pixel wider.
        assert out[0] <= box[0] * sx < out[0] + 1 and out[2] < (box[2] + 1) * sx <= out[2] + 1
        assert out[1] <= box[1] * sy < out[1] + 1 and out[3] < (box[3] + 1) * sy <= out[3] + 1
        if B.clip(box, *declared) == box:
            inside += 1
            assert B.clip(out, *actual) == out, (name, box, out)
        checked = B.validate(out, *actual)
        assert checked.error is None, (name, checked.error)
        assert B.clip(checked.box, *actual) == checked.box
        rec = Box(box_id="b", label="n01440764", index=0, xyxy=box)
        assert B.resolve_box(rec, *actual, declared_size=declared) == out
    assert inside >= 70


def test_rescale_is_exact_for_random_sizes():
    rng = np.random.default_rng(4)
    for _ in range(3000):
        fw, fh, tw, th = (int(v) for v in rng.integers(1, 3000, 4))
        box = random_boxes(rng, 1, fw, fh)[0]
        out = B.rescale(box, (fw, fh), (tw, th))
        assert out[0] == math.floor(Fraction(box[0] * tw, fw))
        assert out[2] == math.ceil(Fraction((box[2] + 1) * tw, fw)) - 1
        assert out[1] == math.floor(Fraction(box[1] * th, fh))
        assert out[3] == math.ceil(Fraction((box[3] + 1) * th, fh)) - 1
        assert B.clip(out, tw, th) == out
        assert B.rescale(box, (fw, fh), (fw, fh)) == box


def test_rescale_refuses_empty_sizes():
    with pytest.raises(ValueError):
        B.rescale((0, 0, 1, 1), (0, 10), (5, 5))


def test_resolve_box_scales_normalized_boxes_by_the_decoded_size():
    rec = Box(box_id="b", label="/m/01g317", index=0, xyxy_norm=(0.25, 0.5, 0.75, 1.0))
    assert B.resolve_box(rec, 200, 100) == (50, 50, 149, 99)
    assert B.resolve_box(rec, 200, 100, declared_size=(999, 999)) == (50, 50, 149, 99)
    same = Box(box_id="c", label="x", index=1, xyxy=(3, 4, 10, 12))
    assert B.resolve_box(same, 20, 20, declared_size=(20, 20)) == (3, 4, 10, 12)
    assert B.resolve_box(same, 40, 40, declared_size=(20, 20)) == (6, 8, 21, 25)
    with pytest.raises(ValueError, match="neither"):
        B.resolve_box(Box(box_id="d", label="x", index=2), 10, 10)


# --- validate -------------------------------------------------------------------------------

@pytest.mark.parametrize("box", [(10, 5, 9, 20), (5, 10, 20, 9), (30, 30, 10, 10)])
def test_validate_rejects_inverted_boxes(box):
    c = B.validate(box, 100, 100)
    assert c.box is None and "inverted" in c.error


def test_validate_rejects_zero_area_boxes_from_equal_edges():
    box = B.from_xywh(10, 10, 0, 5)
    c = B.validate(box, 100, 100)
    assert c.box is None and "zero-area" in c.error


def test_validate_rejects_boxes_thinner_than_min_side():
    one_px = (10, 10, 10, 30)
    c = B.validate(one_px, 100, 100)
    assert c.box is None and "1x21" in c.error
    assert B.validate(one_px, 100, 100, min_side=1).box == one_px
    # A box that is large but only 1 px inside the image is as useless.
    c = B.validate((-50, 10, 0, 30), 100, 100)
    assert c.box is None and "1x21" in c.error


@pytest.mark.parametrize("box", [(100, 0, 120, 10), (-30, 0, -1, 10), (0, 80, 10, 95),
                                 (0, -20, 10, -1), (200, 200, 300, 300)])
def test_validate_rejects_boxes_entirely_outside(box):
    c = B.validate(box, 100, 80)
    assert c.box is None and "entirely outside" in c.error


def test_validate_clips_partly_outside_boxes_with_a_warning():
    c = B.validate((-5, 10, 120, 90), 100, 80)
    assert c.error is None and c.box == (0, 10, 99, 79)
    assert "clipped to [0, 10, 99, 79]" in c.warning
    rng = np.random.default_rng(5)
    for _ in range(2000):
        x0, y0, x1, y1 = (int(v) for v in rng.integers(-50, 150, 4))
        c = B.validate((x0, y0, x1, y1), 100, 80)
        if c.box is not None:
            expected = box_pixels((x0, y0, x1, y1), 100, 80)
            assert (box_pixels(c.box, 100, 80) == expected).all()
            assert (c.warning is None) == (c.box == (x0, y0, x1, y1))


def test_validate_accepts_a_full_image_box_without_warning():
    c = B.validate((0, 0, 99, 79), 100, 80)
    assert c == B.Checked((0, 0, 99, 79))


def test_validate_refuses_non_integer_coordinates_and_returns_python_ints():
    assert "whole pixel" in B.validate((1.5, 2, 10, 10), 100, 100).error
    assert "whole pixel" in B.validate((math.nan, 2, 10, 10), 100, 100).error
    assert "whole pixel" in B.validate((1, 2, 10), 100, 100).error
    c = B.validate(tuple(np.array([1, 2, 10, 10], dtype=np.int64)), 100, 100)
    assert c.box == (1, 2, 10, 10) and all(type(v) is int for v in c.box)


# --- masks, iou, measures ------------------------------------------------------------------

def test_mask_to_box_matches_the_coco_mval_boxes_for_all_40_masks():
    with open(COCO_MVAL / "boxes_from_masks.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 40
    for r in rows:
        gt = np.asarray(Image.open(COCO_MVAL / r["mask"]))
        assert gt.shape[:2] == (int(r["height"]), int(r["width"]))
        expected = tuple(int(r[k]) for k in ("x_min", "y_min", "x_max", "y_max"))
        assert B.mask_to_box(gt == 255) == expected, r["mask"]


def test_mask_to_box_of_empty_and_single_pixel_masks():
    m = np.zeros((5, 7), bool)
    assert B.mask_to_box(m) is None
    m[3, 6] = True
    assert B.mask_to_box(m) == (6, 3, 6, 3)
    with pytest.raises(ValueError, match="2-D"):
        B.mask_to_box(np.zeros((2, 2, 3), bool))


def test_mask_to_box_inverts_box_pixels():
    rng = np.random.default_rng(6)
    for box in random_boxes(rng, 300, 40, 30):
        assert B.mask_to_box(box_pixels(box, 40, 30)) == box


def test_iou_equals_pixel_count_iou():
    rng = np.random.default_rng(7)
    for _ in range(1000):
        a, b = random_boxes(rng, 2, 30, 30)
        ma, mb = box_pixels(a, 30, 30), box_pixels(b, 30, 30)
        expected = (ma & mb).sum() / (ma | mb).sum()
        assert B.iou(a, b) == pytest.approx(expected)
        assert B.iou(a, b) == B.iou(b, a)


def test_iou_known_values():
    assert B.iou((0, 0, 9, 9), (0, 0, 9, 9)) == 1.0
    assert B.iou((0, 0, 1, 1), (1, 1, 2, 2)) == pytest.approx(1 / 7)
    assert B.iou((0, 0, 4, 4), (5, 5, 9, 9)) == 0.0
    assert B.iou((5, 5, 4, 4), (5, 5, 4, 4)) == 0.0  # two empty boxes


def test_width_height_area_center_clip():
    assert B.width_height((2, 3, 2, 3)) == (1, 1)
    assert B.area((2, 3, 11, 5)) == 30
    assert B.area((5, 5, 4, 9)) == 0
    assert B.center((0, 0, 9, 4)) == (4.5, 2.0)
    assert B.clip((-3, -3, 200, 5), 100, 50) == (0, 0, 99, 5)
    assert B.clip((100, 0, 120, 5), 100, 50) is None
