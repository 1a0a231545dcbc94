"""Mask utilities on real ground-truth masks (COCO-MVal, PASCAL VOC 2012)."""

from __future__ import annotations

import csv
import io
import json
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from boxmask import masks

DATA = Path(__file__).parent / "data"
COCO = DATA / "coco_mval"
VOC = DATA / "voc2012"


def coco_rows() -> list[dict[str, str]]:
    with open(COCO / "boxes_from_masks.csv", newline="") as f:
        return list(csv.DictReader(f))


def coco_gt(row: dict[str, str]) -> np.ndarray:
    return np.array(Image.open(COCO / row["mask"])) == 255


def voc_objects() -> np.ndarray:
    """SegmentationObject of 2007_000063: 1 = dog (1st XML object), 2 = chair, 255 = void."""
    return np.array(Image.open(VOC / "SegmentationObject" / "2007_000063.png"))


def png_header(data: bytes) -> tuple[int, int, int, int]:
    """(width, height, bit depth, colour type) from a PNG's IHDR chunk."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
    return width, height, depth, colour


@pytest.mark.parametrize("row", coco_rows()[::5], ids=lambda r: r["image"])
def test_rle_round_trip_gives_back_the_real_mask(row):
    gt = coco_gt(row)
    rle = json.loads(json.dumps(masks.encode_rle(gt)))  # JSON-able: counts is a str
    assert isinstance(rle["counts"], str)
    assert rle["size"] == [gt.shape[0], gt.shape[1]]
    decoded = masks.decode_rle(rle)
    assert decoded.dtype == bool
    np.testing.assert_array_equal(decoded, gt)


def test_rle_area_and_box_match_the_mask_and_the_dataset_csv():
    for row in coco_rows():
        gt = coco_gt(row)
        rle = masks.encode_rle(gt)
        assert masks.rle_area(rle) == int(gt.sum())
        expected = tuple(int(row[k]) for k in ("x_min", "y_min", "x_max", "y_max"))
        assert masks.rle_box(rle) == expected, row["image"]


def test_rle_accepts_c_ordered_and_integer_masks():
    gt = coco_gt(coco_rows()[0])
    as_uint8_c = np.ascontiguousarray(gt.astype(np.uint8) * 255)
    assert masks.encode_rle(as_uint8_c) == masks.encode_rle(np.asfortranarray(gt))


def test_empty_mask_has_zero_area_and_no_box():
    rle = masks.encode_rle(np.zeros((7, 5), bool))
    assert masks.rle_area(rle) == 0
    assert masks.rle_box(rle) is None
    assert not masks.decode_rle(rle).any()


def test_rle_box_is_inclusive_on_a_single_pixel():
    m = np.zeros((10, 12), bool)
    m[3, 7] = True
    assert masks.rle_box(masks.encode_rle(m)) == (7, 3, 7, 3)


def test_png_round_trip_8_and_16_bit():
    objects = voc_objects()
    data = masks.encode_png(objects)
    assert png_header(data) == (500, 375, 8, 0)
    np.testing.assert_array_equal(masks.decode_png(data), objects)

    wide = (np.arange(375 * 500, dtype=np.uint32) % 700).astype(np.uint16).reshape(375, 500)
    data16 = masks.encode_png(wide)
    assert png_header(data16)[2] == 16
    back = masks.decode_png(data16)
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back, wide)


def test_png_encoding_is_deterministic():
    objects = voc_objects()
    assert masks.encode_png(objects) == masks.encode_png(objects.copy())


def test_png_rejects_colour_and_wide_integer_arrays():
    with pytest.raises(ValueError):
        masks.encode_png(np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError):
        masks.encode_png(np.zeros((4, 4), np.int32))


def test_binary_png_is_1_bit_and_reads_back_with_opencv_and_pil():
    gt = coco_gt(coco_rows()[3])
    data = masks.encode_binary_png(gt)
    h, w = gt.shape
    assert png_header(data) == (w, h, 1, 0)
    grey = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    assert set(np.unique(grey)) <= {0, 255}
    np.testing.assert_array_equal(grey > 127, gt)
    pil = Image.open(io.BytesIO(data))
    assert pil.mode == "1"
    np.testing.assert_array_equal(np.array(pil), gt)


def test_instance_map_of_disjoint_real_masks_reproduces_segmentation_object():
    objects = voc_objects()
    dog, chair = objects == 1, objects == 2
    label, contested = masks.instance_map([dog, chair], [0, 1], *objects.shape)
    expected = np.where(objects == 255, 0, objects)
    assert label.dtype == np.uint8
    assert contested == 0
    np.testing.assert_array_equal(label, expected)


def test_smaller_mask_wins_where_a_larger_one_claims_it_too():
    # An engine that segments the chair *including* the dog sitting on it: the dog (smaller,
    # in front) must keep its pixels, so the map still equals the ground truth.
    objects = voc_objects()
    dog, chair = objects == 1, objects == 2
    chair_with_dog = chair | dog
    expected = np.where(objects == 255, 0, objects)
    for order in ([dog, chair_with_dog], [chair_with_dog, dog]):
        idx = [0, 1] if order[0] is dog else [1, 0]
        label, contested = masks.instance_map(order, idx, *objects.shape)
        np.testing.assert_array_equal(label, expected)
        assert contested == int(dog.sum())


def test_equal_areas_lower_index_wins():
    a = np.zeros((6, 6), bool)
    a[1:4, 1:4] = True
    b = np.zeros((6, 6), bool)
    b[2:5, 2:5] = True  # same area, overlaps a in a 2x2 square
    label, contested = masks.instance_map([b, a], [7, 3], 6, 6)
    assert contested == 4
    assert (label[2:4, 2:4] == 4).all()  # index 3 -> value 4 beats index 7 -> value 8
    assert label[4, 4] == 8 and label[1, 1] == 4


def test_rle_and_array_inputs_paint_the_same_map():
    objects = voc_objects()
    arrays = [objects == 1, (objects == 2) | (objects == 1)]
    rles = [masks.encode_rle(m) for m in arrays]
    a, ca = masks.instance_map(arrays, [0, 1], *objects.shape)
    b, cb = masks.instance_map(rles, [0, 1], *objects.shape)
    np.testing.assert_array_equal(a, b)
    assert ca == cb


def test_instance_values_above_255_switch_to_uint16():
    m = np.zeros((3, 3), bool)
    m[1, 1] = True
    label, _ = masks.instance_map([m], [299], 3, 3)
    assert label.dtype == np.uint16 and label[1, 1] == 300
    assert masks.instance_dtype(255) is np.uint8
    assert masks.instance_dtype(256) is np.uint16
    with pytest.raises(ValueError):
        masks.instance_dtype(70_000)


def test_failed_boxes_leave_their_values_unused():
    objects = voc_objects()
    label, _ = masks.instance_map([objects == 2], [1], *objects.shape)  # box 0 failed
    assert set(np.unique(label)) == {0, 2}


def test_instance_map_rejects_inconsistent_input():
    m = np.zeros((4, 4), bool)
    with pytest.raises(ValueError):
        masks.instance_map([m], [0], 5, 4)
    with pytest.raises(ValueError):
        masks.instance_map([m, m], [1, 1], 4, 4)
    with pytest.raises(ValueError):
        masks.instance_map([m], [0, 1], 4, 4)
    with pytest.raises(ValueError):
        masks.instance_map([m], [300], 4, 4, dtype=np.uint8)


def test_no_masks_give_an_all_zero_map():
    label, contested = masks.instance_map([], [], 4, 6)
    assert label.shape == (4, 6) and not label.any() and contested == 0
