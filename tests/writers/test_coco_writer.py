"""COCO writer: instances.json re-loaded with pycocotools on real COCO-MVal and VOC masks."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from boxmask import masks
from boxmask.boxes import from_voc
from boxmask.labels import LabelMap
from boxmask.records import Box, Click, ErrorRecord, ImageRecord, ImageResult, MaskResult
from boxmask.writers.coco import CocoWriter

DATA = Path(__file__).parents[1] / "data"
VOC = DATA / "voc2012"
COCO_MVAL = DATA / "coco_mval"


def mask_result(box: Box, mask: np.ndarray, score: float = 0.875) -> MaskResult:
    x0, y0, x1, y1 = box.xyxy
    inside = Click((x0 + x1) / 2, (y0 + y1) / 2, True, "inside")
    return MaskResult(box.box_id, box.label, box.index, box.xyxy, masks.encode_rle(mask), score,
                      [inside])


def coco_mval(coco_source: bool) -> tuple[list[ImageResult], LabelMap, list[np.ndarray]]:
    """COCO-MVal images with their GT masks as predictions.

    ``coco_source``: records look like the COCO reader's (``meta["coco_id"]`` = the real COCO image
    id from the file name, labels = category ids as strings, box ids = annotation ids); otherwise
    like a non-COCO source (labels are class names).
    """
    with open(COCO_MVAL / "boxes_from_masks.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    classes = sorted({Path(r["image"]).stem.rsplit("00_", 1)[0] for r in rows})
    if coco_source:
        labels = LabelMap([str(10 + i) for i in range(len(classes))],
                          {str(10 + i): c for i, c in enumerate(classes)})
    else:
        labels = LabelMap(list(classes))
    results, gts = [], []
    for k, row in enumerate(rows):
        stem = Path(row["image"]).stem
        name, coco_id = stem.rsplit("00_", 1)
        label = str(10 + classes.index(name)) if coco_source else name
        xyxy = tuple(int(row[c]) for c in ("x_min", "y_min", "x_max", "y_max"))
        box = Box(str(500_000 + k) if coco_source else f"{k:08x}", label, 0, xyxy)
        meta = {"coco_id": int(coco_id)} if coco_source else {}
        record = ImageRecord(stem, f"img/{row['image']}", [box], meta=meta)
        gt = np.array(Image.open(COCO_MVAL / row["mask"])) == 255
        gts.append(gt)
        results.append(ImageResult(record, gt.shape[1], gt.shape[0],
                                   masks=[mask_result(box, gt, score=0.5 + k / 100)]))
    return results, labels, gts


def voc_result() -> tuple[ImageResult, list[np.ndarray]]:
    root = ET.parse(VOC / "Annotations" / "2007_000063.xml").getroot()
    boxes = []
    for k, obj in enumerate(root.iter("object")):
        bb = obj.find("bndbox")
        xyxy = from_voc(*(float(bb.find(t).text) for t in ("xmin", "ymin", "xmax", "ymax")))
        boxes.append(Box(f"{k:08x}", obj.find("name").text, k, xyxy))
    objects = np.array(Image.open(VOC / "SegmentationObject" / "2007_000063.png"))
    gts = [objects == 1, objects == 2]
    record = ImageRecord("2007_000063", "JPEGImages/2007_000063.jpg", boxes)
    result = ImageResult(record, 500, 375,
                         masks=[mask_result(b, m) for b, m in zip(boxes, gts, strict=True)])
    return result, gts


def load(path: Path) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):  # COCO() prints progress
        return COCO(str(path))


def test_coco_loads_the_file_and_ann_to_mask_gives_back_every_mask(tmp_path):
    results, labels, gts = coco_mval(coco_source=False)
    voc, voc_gts = voc_result()
    results.append(voc)
    gts = gts + voc_gts
    assert CocoWriter(tmp_path, labels).merge(lambda: iter(results)) == ["coco/instances.json"]
    coco = load(tmp_path / "coco" / "instances.json")
    assert len(coco.getImgIds()) == len(results)
    anns = coco.loadAnns(coco.getAnnIds())
    assert len(anns) == len(gts)
    for ann, gt, mask in zip(anns, gts, [m for r in results for m in r.masks], strict=True):
        np.testing.assert_array_equal(coco.annToMask(ann), gt.astype(np.uint8))
        assert ann["area"] == int(gt.sum())
        x0, y0, x1, y1 = mask.box_xyxy
        assert ann["bbox"] == [x0, y0, x1 - x0 + 1, y1 - y0 + 1]
        rows, cols = np.flatnonzero(gt.any(axis=1)), np.flatnonzero(gt.any(axis=0))
        assert ann["mask_bbox"] == [cols[0], rows[0], cols[-1] - cols[0] + 1,
                                    rows[-1] - rows[0] + 1]
        assert ann["iscrowd"] == 0
        assert ann["score"] == pytest.approx(mask.score)
        assert ann["box_id"] == mask.box_id


def test_non_coco_source_uses_running_ids_and_label_map_categories(tmp_path):
    results, labels, _ = coco_mval(coco_source=False)
    voc, _ = voc_result()
    results.append(voc)  # labels dog (in the map) and chair (in the map: COCO-MVal has a chair)
    CocoWriter(tmp_path, labels).merge(lambda: iter(results))
    coco = load(tmp_path / "coco" / "instances.json")
    assert coco.getImgIds() == list(range(1, len(results) + 1))
    assert coco.getAnnIds() == list(range(1, len(results) + 2))
    img = coco.loadImgs(len(results))[0]
    assert img == {"id": len(results), "file_name": "JPEGImages/2007_000063.jpg",
                   "width": 500, "height": 375}
    cats = coco.loadCats(coco.getCatIds())
    assert [c["source_id"] for c in cats] == labels.ids
    assert [c["id"] for c in cats] == list(range(1, len(labels) + 1))
    for ann in coco.loadAnns(coco.getAnnIds()):
        label = next(m.label for r in results for m in r.masks if m.box_id == ann["box_id"]
                     and coco.loadImgs(ann["image_id"])[0]["file_name"] == r.record.image_path)
        assert ann["category_id"] == labels.index(label) + 1


def test_coco_source_keeps_its_image_annotation_and_category_ids(tmp_path):
    results, labels, gts = coco_mval(coco_source=True)
    CocoWriter(tmp_path, labels).merge(lambda: iter(results))
    coco = load(tmp_path / "coco" / "instances.json")
    for result, gt in zip(results, gts, strict=True):
        coco_id = int(result.record.image_path.rsplit("_", 1)[1].split(".")[0])
        (ann,) = coco.loadAnns(coco.getAnnIds(imgIds=[coco_id]))
        mask = result.masks[0]
        assert ann["id"] == int(mask.box_id)
        assert ann["category_id"] == int(mask.label)
        assert coco.loadCats(ann["category_id"])[0]["name"] == labels.name(mask.label)
        np.testing.assert_array_equal(coco.annToMask(ann), gt.astype(np.uint8))
    cats = coco.loadCats(coco.getCatIds())
    assert [(c["id"], c["source_id"]) for c in cats] == [(int(i), i) for i in labels.ids]


def test_failed_decode_is_left_out_and_image_ids_stay_by_plan_position(tmp_path):
    results, labels, _ = coco_mval(coco_source=False)
    results = results[:3]
    results[1] = ImageResult(results[1].record, errors=[ErrorRecord("decode", "truncated")])
    no_masks = ImageResult(ImageRecord("empty", "img/empty.jpg"), 8, 6)
    results.append(no_masks)
    CocoWriter(tmp_path, labels).merge(lambda: iter(results))
    coco = load(tmp_path / "coco" / "instances.json")
    assert coco.getImgIds() == [1, 3, 4]
    assert coco.getAnnIds(imgIds=[4]) == []
    assert coco.loadImgs(4)[0]["width"] == 8


def test_labels_missing_from_the_map_get_categories_after_it(tmp_path):
    voc, _ = voc_result()
    CocoWriter(tmp_path, LabelMap(["person"], {"person": "Person"})).merge(lambda: iter([voc]))
    data = json.loads((tmp_path / "coco" / "instances.json").read_text())
    assert data["categories"] == [
        {"id": 1, "name": "Person", "source_id": "person"},
        {"id": 2, "name": "chair", "source_id": "chair"},
        {"id": 3, "name": "dog", "source_id": "dog"},
    ]
    assert [a["category_id"] for a in data["annotations"]] == [3, 2]  # dog, chair


def test_empty_run_gives_a_valid_empty_file(tmp_path):
    CocoWriter(tmp_path, LabelMap(["n01440764"], {"n01440764": "tench"})).merge(lambda: iter([]))
    coco = load(tmp_path / "coco" / "instances.json")
    assert coco.getImgIds() == [] and coco.getAnnIds() == []
    assert coco.loadCats(1) == [{"id": 1, "name": "tench", "source_id": "n01440764"}]
    CocoWriter(tmp_path / "bare").merge(lambda: iter([]))
    bare = json.loads((tmp_path / "bare" / "coco" / "instances.json").read_text())
    assert bare["images"] == [] and bare["annotations"] == [] and bare["categories"] == []


def test_merge_is_deterministic(tmp_path):
    results, labels, _ = coco_mval(coco_source=False)
    CocoWriter(tmp_path / "a", labels).merge(lambda: iter(results))
    CocoWriter(tmp_path / "b", labels).merge(lambda: iter(results))
    a = (tmp_path / "a" / "coco" / "instances.json").read_bytes()
    assert a == (tmp_path / "b" / "coco" / "instances.json").read_bytes()
    assert [p.name for p in (tmp_path / "a" / "coco").iterdir()] == ["instances.json"]


def test_merge_streams_results_without_holding_them(tmp_path, assert_merge_streams, tiny_results):
    n = 10_000
    calls = []

    def factory():
        calls.append(1)
        return tiny_results(n)

    assert_merge_streams(lambda: CocoWriter(tmp_path).merge(factory), lambda: tiny_results(n))
    assert len(calls) == 3  # ids and labels pass, images pass, annotations pass
    coco = load(tmp_path / "coco" / "instances.json")
    assert len(coco.getImgIds()) == n and len(coco.getAnnIds()) == n
    assert coco.annToMask(coco.loadAnns(n)[0]).sum() == 4


def test_an_empty_mask_has_a_null_tight_box_and_keeps_its_input_bbox(tmp_path):
    results, labels, gts = coco_mval(coco_source=False)
    first = results[0]
    box = first.record.boxes[0]
    first.masks = [mask_result(box, np.zeros_like(gts[0]))]
    CocoWriter(tmp_path, labels).merge(lambda: iter(results[:2]))
    coco = load(tmp_path / "coco" / "instances.json")
    empty, full = coco.loadAnns(coco.getAnnIds())
    x0, y0, x1, y1 = box.xyxy
    assert empty["bbox"] == [x0, y0, x1 - x0 + 1, y1 - y0 + 1] and empty["mask_bbox"] is None
    assert empty["area"] == 0 and full["mask_bbox"] is not None
