"""Pixel-ImageNet writer: instance PNGs and label-v1.json, checked on real VOC / COCO-MVal masks."""

from __future__ import annotations

import csv
import json
import struct
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from boxmask import masks
from boxmask.boxes import from_voc
from boxmask.labels import LabelMap
from boxmask.records import Box, Click, ErrorRecord, ImageRecord, ImageResult, MaskResult
from boxmask.writers import FORMATS, create_writer
from boxmask.writers.pixel_imagenet import PixelImageNetWriter

DATA = Path(__file__).parents[1] / "data"
VOC = DATA / "voc2012"
COCO = DATA / "coco_mval"


def voc_record(stem: str) -> ImageRecord:
    root = ET.parse(VOC / "Annotations" / f"{stem}.xml").getroot()
    boxes = []
    for k, obj in enumerate(root.iter("object")):
        bb = obj.find("bndbox")
        xyxy = from_voc(*(float(bb.find(t).text) for t in ("xmin", "ymin", "xmax", "ymax")))
        boxes.append(Box(box_id=f"{k:08x}", label=obj.find("name").text, index=k, xyxy=xyxy))
    return ImageRecord(image_id=stem, image_path=f"JPEGImages/{stem}.jpg", boxes=boxes)


def voc_objects() -> np.ndarray:
    return np.array(Image.open(VOC / "SegmentationObject" / "2007_000063.png"))


def mask_result(box: Box, mask: np.ndarray, score: float = 0.9) -> MaskResult:
    x0, y0, x1, y1 = box.xyxy
    inside = Click((x0 + x1) / 2, (y0 + y1) / 2, True, "inside")
    return MaskResult(box.box_id, box.label, box.index, box.xyxy, masks.encode_rle(mask), score,
                      [inside])


def voc_result(chair_claims_dog: bool = False) -> ImageResult:
    record = voc_record("2007_000063")
    objects = voc_objects()
    dog, chair = objects == 1, objects == 2
    if chair_claims_dog:
        chair = chair | dog
    h, w = objects.shape
    return ImageResult(record, w, h, masks=[mask_result(record.boxes[0], dog),
                                            mask_result(record.boxes[1], chair)])


def coco_mval_results() -> list[ImageResult]:
    with open(COCO / "boxes_from_masks.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    out = []
    for row in rows:
        stem = Path(row["image"]).stem
        label = stem.rsplit("00_", 1)[0]
        gt = np.array(Image.open(COCO / row["mask"])) == 255
        box = Box("0", label, 0, tuple(int(row[k]) for k in ("x_min", "y_min", "x_max", "y_max")))
        record = ImageRecord(stem, f"img/{row['image']}", [box])
        out.append(ImageResult(record, gt.shape[1], gt.shape[0], masks=[mask_result(box, gt)]))
    return out


def read_png(path: Path) -> tuple[np.ndarray, int]:
    data = path.read_bytes()
    depth = struct.unpack(">B", data[24:25])[0]
    return masks.decode_png(data), depth


def test_voc_png_values_are_the_source_box_order(tmp_path):
    writer = PixelImageNetWriter(tmp_path)
    files = writer.write_image(voc_result())
    assert files == ["pixel-imagenet/dog/2007_000063.png"]
    label, depth = read_png(tmp_path / files[0])
    assert depth == 8 and label.shape == (375, 500)
    objects = voc_objects()
    np.testing.assert_array_equal(label, np.where(objects == 255, 0, objects))


def test_overlapping_masks_keep_the_smaller_object_in_front(tmp_path):
    writer = PixelImageNetWriter(tmp_path)
    files = writer.write_image(voc_result(chair_claims_dog=True))
    label, _ = read_png(tmp_path / files[0])
    objects = voc_objects()
    np.testing.assert_array_equal(label, np.where(objects == 255, 0, objects))


def test_coco_mval_pngs_equal_the_ground_truth(tmp_path):
    writer = PixelImageNetWriter(tmp_path)
    for result in coco_mval_results():
        (rel,) = writer.write_image(result)
        label_name = result.record.boxes[0].label
        assert rel == f"pixel-imagenet/{label_name}/{result.record.image_id}.png"
        label, _ = read_png(tmp_path / rel)
        gt = masks.decode_rle(result.masks[0].rle)
        np.testing.assert_array_equal(label, gt.astype(np.uint8))


def test_record_group_is_the_folder(tmp_path):
    result = voc_result()
    result.record.group = "n02084071"
    (rel,) = PixelImageNetWriter(tmp_path).write_image(result)
    assert rel == "pixel-imagenet/n02084071/2007_000063.png"


def test_failed_box_keeps_its_value_unused(tmp_path):
    result = voc_result()
    result.masks = result.masks[1:]  # the dog (box 0) failed
    result.errors = [ErrorRecord("engine", "failed", "2007_000063", result.record.boxes[0].box_id)]
    (rel,) = PixelImageNetWriter(tmp_path).write_image(result)
    label, _ = read_png(tmp_path / rel)
    assert set(np.unique(label)) == {0, 2}
    np.testing.assert_array_equal(label == 2, voc_objects() == 2)


def test_image_without_masks_gets_an_all_zero_png_of_the_decoded_size(tmp_path):
    record = voc_record("2011_003353")
    width, height = Image.open(VOC / "JPEGImages" / "2011_003353.jpg").size
    result = ImageResult(record, width, height, errors=[ErrorRecord("engine", "no mask")])
    (rel,) = PixelImageNetWriter(tmp_path).write_image(result)
    assert rel == "pixel-imagenet/person/2011_003353.png"
    label, depth = read_png(tmp_path / rel)
    assert label.shape == (height, width) and depth == 8 and not label.any()


def test_image_that_failed_to_decode_gets_no_png(tmp_path):
    result = ImageResult(voc_record("2011_003353"), errors=[ErrorRecord("decode", "truncated")])
    assert PixelImageNetWriter(tmp_path).write_image(result) == []
    assert not any(tmp_path.rglob("*.png"))


def test_more_than_255_boxes_give_a_16_bit_png(tmp_path):
    h, w = 20, 300
    boxes = [Box(f"{k:08x}", "n01440764", k, (k, 0, k, h - 1)) for k in range(300)]
    record = ImageRecord("many", "many.jpg", boxes)
    results = []
    for box in boxes[:2] + boxes[-2:]:  # a few masks: values 1, 2, 299, 300
        m = np.zeros((h, w), bool)
        m[:, box.index] = True
        results.append(mask_result(box, m))
    (rel,) = PixelImageNetWriter(tmp_path).write_image(ImageResult(record, w, h, masks=results))
    label, depth = read_png(tmp_path / rel)
    assert depth == 16 and label.dtype == np.uint16
    assert label[0, 0] == 1 and label[0, 1] == 2 and label[5, 298] == 299 and label[5, 299] == 300
    assert not label[:, 2:298].any()


def test_bit_depth_follows_the_box_count_not_the_masks_present(tmp_path):
    h, w = 4, 300
    boxes = [Box(f"{k:08x}", "n01440764", k, (k, 0, k, h - 1)) for k in range(300)]
    m = np.zeros((h, w), bool)
    m[:, 0] = True
    result = ImageResult(ImageRecord("many", "many.jpg", boxes), w, h,
                         masks=[mask_result(boxes[0], m)])
    (rel,) = PixelImageNetWriter(tmp_path).write_image(result)
    label, depth = read_png(tmp_path / rel)
    assert depth == 16 and label[0, 0] == 1


def test_write_image_is_idempotent(tmp_path, assert_rewrite_changes_nothing):
    writer = PixelImageNetWriter(tmp_path)
    (rel,) = assert_rewrite_changes_nothing(writer.write_image, voc_result, tmp_path)
    assert sorted(p.name for p in (tmp_path / "pixel-imagenet" / "dog").iterdir()) == [
        "2007_000063.png"]  # no temporary files left behind


@pytest.mark.parametrize("image_id", ["../../escape", "/etc/passwd", "a/b", "..", ""])
def test_unsafe_image_id_raises_and_writes_nothing(tmp_path, image_id,
                                                   assert_refused_writing_nothing):
    out = tmp_path / "out"
    result = voc_result()
    result.record.image_id = image_id
    assert_refused_writing_nothing(lambda: PixelImageNetWriter(out).write_image(result), tmp_path)


def test_label_table_counts_images_per_class_with_label_map_indices(tmp_path):
    results = coco_mval_results() + [voc_result()]
    empty = voc_result()
    empty.record.image_id = "2007_000063_empty"
    empty.masks[0].rle = masks.encode_rle(np.zeros((375, 500), bool))  # an empty dog mask
    results.append(empty)
    # A synset-style list: the COCO-MVal classes in reverse name order, then "chair" is missing.
    classes = sorted({r.record.boxes[0].label for r in coco_mval_results()}, reverse=True)
    label_map = LabelMap([c for c in classes if c != "chair"])
    for c in label_map.ids:
        label_map.names[c] = c.replace("_", " ").title()
    writer = PixelImageNetWriter(tmp_path, label_map)
    assert writer.merge(lambda: iter(results)) == ["pixel-imagenet/label-v1.json"]
    table = json.loads((tmp_path / "pixel-imagenet" / "label-v1.json").read_text())
    assert isinstance(table, dict)
    # Every COCO-MVal class: one image. VOC adds dog and chair once; its copy with an empty dog
    # mask adds chair only. chair, absent from the map, comes after the map's classes.
    expected = {str(i): [c, c.replace("_", " ").title(), 2 if c == "dog" else 1]
                for i, c in enumerate(label_map.ids)}
    expected[str(len(label_map.ids))] = ["chair", "chair", 3]
    assert table == expected
    assert list(table) == sorted(table, key=int)


def test_label_table_counts_only_images_that_got_a_png(tmp_path):
    unsafe = voc_result()
    unsafe.record.image_id = "../escape"
    undecoded = ImageResult(voc_record("2011_003353"), masks=voc_result().masks)
    PixelImageNetWriter(tmp_path).merge(lambda: iter([voc_result(), unsafe, undecoded]))
    table = json.loads((tmp_path / "pixel-imagenet" / "label-v1.json").read_text())
    assert table == {"0": ["chair", "chair", 1], "1": ["dog", "dog", 1]}


def test_merge_streams_results_without_holding_them(tmp_path, assert_merge_streams, tiny_results):
    n = 10_000
    assert_merge_streams(lambda: PixelImageNetWriter(tmp_path).merge(lambda: tiny_results(n)),
                         lambda: tiny_results(n))
    table = json.loads((tmp_path / "pixel-imagenet" / "label-v1.json").read_text())
    assert sum(v[2] for v in table.values()) == n


def test_create_writer_builds_each_format(tmp_path):
    assert FORMATS == ("pixel-imagenet", "coco", "openimages")
    for name in FORMATS:
        writer = create_writer(name, tmp_path)
        assert writer.name == name and writer.root == tmp_path / name
    assert isinstance(create_writer("pixel-imagenet", tmp_path), PixelImageNetWriter)
    with pytest.raises(ValueError, match="unknown output format"):
        create_writer("yolo", tmp_path)
