"""COCO instances reader: exact boxes for the COCO-MVal subset, crowd regions, unsafe paths."""

from __future__ import annotations

import csv
import json
import tracemalloc
from pathlib import Path

import pytest

from boxmask.boxes import from_xywh
from boxmask.readers import open_reader
from boxmask.readers.coco import COCOReader
from boxmask.records import ErrorRecord, ImageRecord

REPO = Path(__file__).resolve().parents[2]
MVAL = REPO / "tests" / "data" / "coco_mval"
FIXTURES = REPO / "tests" / "data" / "readers" / "coco"


def test_mval_boxes_are_exactly_the_mask_boxes():
    reader = open_reader("coco", FIXTURES / "instances_mval.json", images_root=MVAL / "img")
    records = list(reader)
    with open(MVAL / "boxes_from_masks.csv", newline="") as f:
        truth = list(csv.DictReader(f))
    assert len(records) == len(truth) == 40
    for rec, row in zip(records, truth, strict=True):  # same order as the images array
        assert isinstance(rec, ImageRecord)
        assert rec.image_path == row["image"]
        assert (reader.images_root / rec.image_path).is_file()
        assert (rec.width, rec.height) == (int(row["width"]), int(row["height"]))
        (box,) = rec.boxes
        assert box.xyxy == tuple(int(row[c]) for c in ("x_min", "y_min", "x_max", "y_max"))
        coco_id = int(row["image"].rsplit("_", 1)[1].split(".")[0])
        assert rec.image_id == str(coco_id)
        assert rec.meta == {"coco_id": coco_id, "file_name": row["image"]}


def test_mval_labels_are_category_ids_named_by_categories():
    reader = COCOReader(FIXTURES / "instances_mval.json")
    labels = reader.labels()  # taken before reading, as a planner does; filled while reading
    records = list(reader)
    assert len(labels) == 80 and labels.ids[:3] == ["1", "2", "3"]
    assert labels.name("5") == "airplane" and labels.name("90") == "toothbrush"
    airplane = records[0]
    assert airplane.image_path.startswith("airplane") and airplane.boxes[0].label == "5"
    ann_ids = json.loads((FIXTURES / "instances_mval.json").read_text())["annotations"]
    assert [r.boxes[0].box_id for r in records] == [str(a["id"]) for a in ann_ids]


def _crafted() -> list:
    return list(COCOReader(FIXTURES / "crafted.json"))


def test_crowd_regions_are_skipped_and_listed_not_errors():
    items = _crafted()
    rec = next(i for i in items if isinstance(i, ImageRecord) and i.image_id == "1")
    assert [b.box_id for b in rec.boxes] == ["11", "14"]
    assert rec.meta["skipped"] == [{"box_id": "12", "reason": "iscrowd annotation skipped"}]
    assert not any(isinstance(i, ErrorRecord) and i.box_id == "12" for i in items)


def test_boxes_follow_the_xywh_edge_convention():
    rec = next(i for i in _crafted() if isinstance(i, ImageRecord) and i.image_id == "1")
    # [10, 20, 30, 40] covers columns 10..39 and rows 20..59.
    assert rec.boxes[0].xyxy == (10, 20, 39, 59)
    # [50.5, 10.2, 20.0, 9.8]: edges 50.5..70.5 and 10.2..20.0 touch columns 50..70, rows 10..19.
    assert rec.boxes[1].xyxy == (50, 10, 70, 19) == from_xywh(50.5, 10.2, 20.0, 9.8)
    assert [b.index for b in rec.boxes] == [0, 3]


def test_bad_bbox_is_a_box_error_and_unsafe_file_names_are_refused():
    items = _crafted()
    errors = [i for i in items if isinstance(i, ErrorRecord)]
    assert all(e.stage == "read" for e in errors)
    by_image = {(e.image_id, e.box_id): e.reason for e in errors}
    assert "not four finite numbers" in by_image[("1", "13")]
    assert "'../escape.jpg'" in by_image[("2", None)]
    assert "'/etc/passwd'" in by_image[("3", None)]
    assert "image_id 77" in by_image[(None, None)]
    assert len(errors) == 4
    records = [i.image_id for i in items if isinstance(i, ImageRecord)]
    assert records == ["1", "4"]


def test_image_without_annotations_is_a_record_with_no_boxes():
    rec = next(i for i in _crafted() if isinstance(i, ImageRecord) and i.image_id == "4")
    assert rec.boxes == [] and rec.image_path == "sub/b.jpg" and (rec.width, rec.height) == (64, 48)


def test_default_images_root_is_the_split_folder_next_to_annotations(tmp_path):
    (tmp_path / "annotations").mkdir()
    ann = tmp_path / "annotations" / "instances_val2017.json"
    ann.write_text((FIXTURES / "crafted.json").read_text())
    assert COCOReader(ann).images_root == tmp_path / "annotations"
    (tmp_path / "val2017").mkdir()
    assert COCOReader(ann).images_root == tmp_path / "val2017"


def _whole_file_records(path: Path) -> tuple[list[dict], list[str]]:
    """What the reader gave when it loaded the file whole and grouped annotations in a dict:
    the reference the streaming reader must equal."""
    data = json.loads(path.read_text())
    reader = COCOReader(path)
    for cat in data.get("categories") or []:
        reader.label_map.add(str(cat["id"]), str(cat.get("name") or "") or None)
    by_image: dict = {}
    for position, ann in enumerate(data["annotations"]):
        by_image.setdefault(ann.get("image_id"), []).append((position, ann))
    items = []
    for position, image in enumerate(data["images"]):
        items += reader._image(image, position, by_image.pop(image.get("id"), []), str(path))
    for key, anns in by_image.items():
        items.append(ErrorRecord("read", f"{len(anns)} annotation(s) refer to image_id {key!r}, "
                                 "which is not in 'images'", location=f"{path}: annotations"
                                 f"[{anns[0][0]}]"))
    return [i.to_json() for i in items], reader.labels().ids


COCO_FILES = [FIXTURES / "instances_mval.json", FIXTURES / "crafted.json",
              REPO / "tests" / "data" / "eval" / "coco_mval_instances.json",
              REPO / "tests" / "data" / "eval" / "davis_instances.json",
              REPO / "tests" / "data" / "training" / "coco" / "instances_polygons.json"]


@pytest.mark.parametrize("path", COCO_FILES, ids=lambda p: p.name)
@pytest.mark.parametrize("chunk_rows", [3, 100_000])
def test_streaming_gives_the_records_of_the_whole_file(path, chunk_rows):
    expected, labels = _whole_file_records(path)
    reader = COCOReader(path)
    reader.sort_chunk_rows = chunk_rows  # 3: annotations spilled in many chunks and merged
    assert [i.to_json() for i in reader] == expected
    assert reader.labels().ids == labels


def test_annotations_before_images_unknown_ids_and_repeated_ids(tmp_path):
    data = {"annotations": [
        {"id": 1, "image_id": 7, "bbox": [0, 0, 5, 5], "category_id": 1},
        {"id": 2, "image_id": 99, "bbox": [0, 0, 5, 5], "category_id": 1},
        {"id": 3, "image_id": "7", "bbox": [1, 1, 5, 5], "category_id": 2},
        {"id": 4, "image_id": 7, "bbox": [2, 2, 5, 5], "category_id": 1,
         "segmentation": [[0, 0, 1, 1, 2, 2]]},
        {"id": 5, "image_id": 99, "bbox": [0, 0, 5, 5], "category_id": 1}],
        "images": [{"id": "7", "file_name": "s.jpg"}, {"id": 7, "file_name": "i.jpg"},
                   {"id": 7, "file_name": "again.jpg"}],
        "categories": [{"id": 1, "name": "one"}, {"id": 2, "name": "two"}]}
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    items = list(COCOReader(path))
    assert [i.to_json() for i in items] == _whole_file_records(path)[0]
    s, i, again, err = items
    assert [b.box_id for b in s.boxes] == ["3"] and [b.box_id for b in i.boxes] == ["1", "4"]
    assert again.boxes == [] and "2 annotation(s) refer to image_id 99" in err.reason


def test_a_file_without_an_images_list_is_refused(tmp_path):
    for text in ('[{"images": []}]', '{"annotations": []}', '{"images": [ {"id": 1'):
        path = tmp_path / "bad.json"
        path.write_text(text)
        with pytest.raises(ValueError, match="not a COCO instances file|not valid JSON"):
            list(COCOReader(path))
    path.write_text('{"images": [], "annotations": []}')
    assert list(COCOReader(path)) == []


def test_a_large_file_is_read_with_bounded_memory(tmp_path):
    # 10k annotations with polygons (5 MB); loaded whole this would take ~6x the file size.
    n_images, per_image = 2000, 5
    images = ",".join(json.dumps({"id": i, "file_name": f"{i}.jpg", "width": 640, "height": 480})
                      for i in range(n_images))
    anns = ",".join(json.dumps({
        "id": k, "image_id": (k * 7919) % n_images, "category_id": 1 + k % 80, "iscrowd": 0,
        "bbox": [10.5, 20.25, 100.0, 50.0], "area": 5000.0,
        "segmentation": [[float(v) for v in range(60)]]})
        for k in range(n_images * per_image))
    path = tmp_path / "instances_big.json"
    path.write_text(f'{{"images": [{images}], "annotations": [{anns}], '
                    '"categories": [{"id": 1, "name": "one"}]}')
    size = path.stat().st_size
    reader = COCOReader(path)
    reader.sort_chunk_rows = 1000
    n_records = n_boxes = 0
    tracemalloc.start()
    try:
        for item in reader:
            n_records += 1
            n_boxes += len(item.boxes)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (n_records, n_boxes) == (n_images, n_images * per_image)
    assert peak < size / 2, (peak, size)  # one chunk of slim annotations, not the file
