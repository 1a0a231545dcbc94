"""Per-mask quality metrics, flags and per-class fill outliers."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from boxmask.boxes import from_voc, mask_to_box
from boxmask.quality.metrics import (
    FLAGS,
    ClassFillStats,
    fill_outliers,
    flags_for,
    mask_metrics,
)

DATA = Path(__file__).parents[1] / "data"


def _gt_masks() -> list[tuple[str, np.ndarray]]:
    """The 63 real GT instances: COCO-MVal (255 = object), DAVIS (union of the non-zero values,
    as in the interactive-segmentation protocol) and the 2 VOC objects (void left out)."""
    out = [(p.stem, np.array(Image.open(p)) == 255)
           for p in sorted((DATA / "coco_mval" / "gt").glob("*.png"))]
    out += [(f"davis{p.stem}", np.array(Image.open(p)) > 0)
            for p in sorted((DATA / "davis" / "gt").glob("*.png"))]
    seg = np.array(Image.open(DATA / "voc2012" / "SegmentationObject" / "2007_000063.png"))
    out += [("voc-dog", seg == 1), ("voc-chair", seg == 2)]
    return out


def test_gt_masks_with_their_tight_boxes_raise_few_flags():
    masks = _gt_masks()
    assert len(masks) == 63
    flags = Counter()
    flagged = 0
    for _, m in masks:
        r = mask_metrics(m, mask_to_box(m))
        assert r["tightness_iou"] == 1.0 and r["leakage"] == 0.0 and r["sides_touched"] == 4
        assert r["area"] == int(m.sum())
        flags.update(r["flags"])
        flagged += bool(r["flags"])
    # measured: 2 of 63 (both real holes: kite lines, the chair behind the dog)
    assert flagged / len(masks) <= 0.05
    assert set(flags) <= {"holes"}


def _reference(mask: np.ndarray, box) -> dict:
    """Straightforward full-image computation with scipy, for comparison."""
    x0, y0, x1, y1 = box
    inbox = np.zeros_like(mask)
    inbox[y0:y1 + 1, x0:x1 + 1] = True
    area = mask.sum()
    _, n = ndimage.label(mask, structure=np.ones((3, 3)))
    bg, nb = ndimage.label(~mask)  # 4-connected background
    border = set(np.unique(np.concatenate([bg[0], bg[-1], bg[:, 0], bg[:, -1]]))) - {0}
    tx0, ty0, tx1, ty1 = mask_to_box(mask)
    inter = max(0, min(x1, tx1) - max(x0, tx0) + 1) * max(0, min(y1, ty1) - max(y0, ty0) + 1)
    union = (x1 - x0 + 1) * (y1 - y0 + 1) + (tx1 - tx0 + 1) * (ty1 - ty0 + 1) - inter
    return {"fill_ratio": (mask & inbox).sum() / inbox.sum(),
            "leakage": (mask & ~inbox).sum() / area, "components": n,
            "holes": nb - len(border), "tightness_iou": inter / union}


def test_metrics_on_crops_equal_a_full_image_computation_on_real_masks():
    rng = np.random.default_rng(0)
    for _, m in _gt_masks()[::4]:
        x0, y0, x1, y1 = mask_to_box(m)
        h, w = m.shape
        j = rng.integers(-15, 16, size=4)  # a box a human might have drawn: off on every side
        box = (max(0, x0 + j[0]), max(0, y0 + j[1]), min(w - 1, x1 + j[2]), min(h - 1, y1 + j[3]))
        got, ref = mask_metrics(m, box), _reference(m, box)
        for key in ("fill_ratio", "leakage", "tightness_iou"):
            assert got[key] == pytest.approx(ref[key], abs=1e-4), key
        assert got["components"] == ref["components"]
        assert got["holes"] == ref["holes"]


def test_a_half_filled_box_is_loose_but_touches_three_sides():
    mask = np.zeros((60, 50), bool)
    mask[20:40, 10:20] = True  # columns 10..19 of the box's 10..29
    r = mask_metrics(mask, (10, 20, 29, 39))
    assert r["area"] == 200 and r["box_area"] == 400
    assert r["fill_ratio"] == 0.5 and r["tightness_iou"] == 0.5
    assert r["side_touch"] == {"left": True, "top": True, "right": False, "bottom": True}
    assert r["flags"] == ["loose"]


def test_touch_tolerance_is_in_pixels():
    mask = np.zeros((40, 40), bool)
    mask[12:28, 12:28] = True  # 2 px inside the box (10, 10, 29, 29) on every side
    assert mask_metrics(mask, (10, 10, 29, 29))["sides_touched"] == 4
    r = mask_metrics(mask, (10, 10, 29, 29), touch_tolerance=1)
    assert r["sides_touched"] == 0 and "untouched_sides" in r["flags"]


def test_leakage_counts_mask_pixels_outside_the_box():
    mask = np.zeros((50, 50), bool)
    mask[10:30, 10:30] = True  # 400 px
    r = mask_metrics(mask, (10, 10, 24, 29))  # the last 5 columns (100 px) are outside
    assert r["leakage"] == 0.25 and r["fill_ratio"] == 1.0
    assert "leaks" in r["flags"]


def test_scattered_pieces_are_fragmented_and_diagonal_pixels_connect():
    mask = np.zeros((40, 40), bool)
    for y, x in ((2, 2), (2, 30), (30, 2), (30, 30)):
        mask[y:y + 8, x:x + 8] = True
    r = mask_metrics(mask, (2, 2, 37, 37))
    assert r["components"] == 4 and r["largest_component_ratio"] == 0.25
    assert "fragmented" in r["flags"]
    diag = np.eye(10, dtype=bool)
    assert mask_metrics(diag, (0, 0, 9, 9))["components"] == 1


def test_a_ring_has_one_hole_and_a_diagonal_gap_does_not_open_it():
    ring = np.zeros((30, 30), bool)
    ring[5:25, 5:25] = True
    ring[10:20, 10:20] = False  # 100 px hole in a 300 px ring
    r = mask_metrics(ring, (5, 5, 24, 24))
    assert r["holes"] == 1 and r["large_holes"] == 1 and "holes" in r["flags"]
    # a 1-px diamond outline: background meets the inside only through pixel corners
    diamond = np.zeros((21, 21), bool)
    for i in range(11):
        for y, x in ((i, 10 + i), (i, 10 - i), (20 - i, 10 + i), (20 - i, 10 - i)):
            diamond[y, x] = True
    assert mask_metrics(diamond, (0, 0, 20, 20))["holes"] == 1
    # a hole reaching the image border is no hole
    cup = np.zeros((20, 20), bool)
    cup[:, 2:18] = True
    cup[:10, 8:12] = False
    assert mask_metrics(cup, (2, 0, 17, 19))["holes"] == 0


def test_empty_mask_and_low_score():
    r = mask_metrics(np.zeros((10, 10), bool), (1, 1, 8, 8), score=0.9)
    assert r["flags"] == ["empty"] and r["area"] == 0 and r["box_area"] == 64
    assert mask_metrics(np.zeros((10, 10), bool), (1, 1, 8, 8), score=0.1)["flags"] == [
        "empty", "low_score"]
    full = np.ones((10, 10), bool)
    ok = mask_metrics(full, (0, 0, 9, 9))
    assert ok["flags"] == [] and flags_for(ok, 0.2) == ["low_score"]
    assert set(flags_for(ok, 0.2)) <= set(FLAGS)


def test_metrics_are_json_values_and_do_not_depend_on_the_image_around_the_crop():
    import json

    _, m = _gt_masks()[0]
    box = mask_to_box(m)
    r = mask_metrics(m, box)
    json.dumps(r)  # plain ints/floats/bools only
    big = np.zeros((m.shape[0] + 300, m.shape[1] + 200), bool)
    big[100:100 + m.shape[0], 50:50 + m.shape[1]] = m
    shifted = (box[0] + 50, box[1] + 100, box[2] + 50, box[3] + 100)
    assert mask_metrics(big, shifted) == r


def test_voc_xml_boxes_around_void_bordered_masks():
    # VOC masks stop at a void band a few px wide, inside the human box: sides are not reached
    seg = np.array(Image.open(DATA / "voc2012" / "SegmentationObject" / "2007_000063.png"))
    objs = ET.parse(DATA / "voc2012" / "Annotations" / "2007_000063.xml").getroot()
    bb = objs.find("object/bndbox")
    box = from_voc(*(float(bb.findtext(t)) for t in ("xmin", "ymin", "xmax", "ymax")))
    r = mask_metrics(seg == 1, box)
    assert 0.85 < r["tightness_iou"] < 1.0
    assert r["leakage"] == 0.0
    assert mask_metrics(seg == 1, box, touch_tolerance=6)["sides_touched"] == 4


# ------------------------------------------------------------------ fill outliers

def _records(label: str, fills) -> list[dict]:
    return [{"image_id": f"{label}{i}", "box_id": "b", "label": label,
             "metrics": {"fill_ratio": f}} for i, f in enumerate(fills)]


def test_fill_outliers_flag_extremes_within_a_class_only_when_it_has_enough_masks():
    common = _records("dog", list(np.linspace(0.5, 0.7, 40)) + [0.02, 0.99])
    rare = _records("tench", [0.6, 0.61, 0.59, 0.01])
    records = common + rare + [{"image_id": "x", "box_id": "b", "label": "dog", "metrics": {}}]
    expected = {("dog40", "b"), ("dog41", "b")}
    assert fill_outliers(records) == expected
    assert fill_outliers(iter(records)) == expected  # one-shot iterator
    assert fill_outliers(lambda: iter(records)) == expected  # two streaming passes
    assert fill_outliers(records, min_count=4) == expected | {("tench3", "b")}


def test_class_fill_stats_use_median_and_mad_with_a_fallback():
    stats = ClassFillStats(min_count=5)
    for v in (0.5, 0.6, 0.7, 0.8, 0.9):
        stats.add("a", v)
    # median 0.7, MAD 0.1 -> scale 0.1 / 0.6745
    assert stats.zscore("a", 0.9) == pytest.approx(0.6745 * 0.2 / 0.1, rel=1e-5)
    for _ in range(5):
        stats.add("b", 0.5)
    stats.add("b", 0.9)  # MAD is 0: mean absolute deviation 0.4 / 6
    assert stats.zscore("b", 0.9) == pytest.approx(0.4 / (1.253314 * 0.4 / 6), rel=1e-5)
    stats.add("c", 0.3)
    assert stats.zscore("c", 0.3) is None
    assert stats.summary()["c"] == {"count": 1}
