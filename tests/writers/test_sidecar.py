"""Sidecar writer: masks.jsonl / errors.jsonl with provenance and links into every format."""

from __future__ import annotations

import csv
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from PIL import Image

from boxmask import masks
from boxmask.boxes import from_voc
from boxmask.labels import LabelMap
from boxmask.records import Box, Click, ErrorRecord, ImageRecord, ImageResult, MaskResult
from boxmask.writers import FORMATS, SidecarWriter, create_writer

DATA = Path(__file__).parents[1] / "data"
VOC = DATA / "voc2012"
KEYS = ["image_id", "image_path", "width", "height", "box_id", "index", "label", "label_name",
        "box_xyxy", "mask_xyxy", "engine", "inside_policy", "clicks", "score", "metrics", "rle",
        "files", "written_ids"]
LABELS = LabelMap(["dog", "chair", "person"], {"dog": "Dog", "chair": "Chair", "person": "Person"})


def voc_boxes(stem: str) -> list[Box]:
    root = ET.parse(VOC / "Annotations" / f"{stem}.xml").getroot()
    boxes = []
    for k, obj in enumerate(root.iter("object")):
        bb = obj.find("bndbox")
        xyxy = from_voc(*(float(bb.find(t).text) for t in ("xmin", "ymin", "xmax", "ymax")))
        boxes.append(Box(f"{k:08x}", obj.find("name").text, k, xyxy))
    return boxes


def results() -> tuple[list[ImageResult], list[np.ndarray]]:
    """VOC 2007_000063 (both GT masks, one flagged), 2011_003353 (engine failed), a decode error."""
    objects = np.array(Image.open(VOC / "SegmentationObject" / "2007_000063.png"))
    gts = [objects == 1, objects == 2]
    boxes = voc_boxes("2007_000063")
    mask_results = []
    for box, gt in zip(boxes, gts, strict=True):
        clicks = [Click(box.xyxy[0] + 100.25, box.xyxy[1] + 50, True, "inside"),
                  Click(box.xyxy[0], box.xyxy[1], False, "corner")]
        metrics = {"box_fill": round(float(gt.sum()) / 1000, 3)}
        if box.index == 1:
            metrics["flags"] = ["touches_border"]
        mask_results.append(MaskResult(box.box_id, box.label, box.index, box.xyxy,
                                       masks.encode_rle(gt), 0.9 - box.index / 10, clicks,
                                       metrics))
    first = ImageResult(ImageRecord("2007_000063", "JPEGImages/2007_000063.jpg", boxes),
                        500, 375, masks=mask_results)
    person = voc_boxes("2011_003353")
    second = ImageResult(ImageRecord("2011_003353", "JPEGImages/2011_003353.jpg", person),
                         375, 500, errors=[ErrorRecord("engine", "CUDA out of memory",
                                                       "2011_003353", person[0].box_id)])
    third = ImageResult(ImageRecord("broken", "JPEGImages/broken.jpg"),
                        errors=[ErrorRecord("decode", "truncated JPEG", "broken",
                                            location="JPEGImages/broken.jpg")])
    return [first, second, third], gts


def write_all(out: Path, run: list[ImageResult]) -> SidecarWriter:
    """What a worker and the merge step do: per-image files (recorded), then the sidecar."""
    writers = [create_writer(name, out, LABELS) for name in FORMATS]
    for result in run:
        for writer in writers:
            result.files.extend(writer.write_image(result))
    sidecar = SidecarWriter(out, LABELS, engine="iog", inside_policy="center", formats=writers)
    read_error = ErrorRecord("read", "malformed XML", location="Annotations/bad.xml")
    assert sidecar.merge(lambda: iter(run), errors=[read_error]) == ["masks.jsonl",
                                                                     "errors.jsonl"]
    return sidecar


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_one_line_per_mask_with_everything_needed_to_trace_it(tmp_path):
    run, gts = results()
    write_all(tmp_path, run)
    rows = lines(tmp_path / "masks.jsonl")
    assert len(rows) == 2
    xml_boxes = voc_boxes("2007_000063")
    for row, gt, box in zip(rows, gts, xml_boxes, strict=True):
        assert list(row) == KEYS
        assert row["image_id"] == "2007_000063" and row["width"] == 500 and row["height"] == 375
        assert row["box_xyxy"] == list(box.xyxy) and row["index"] == box.index
        rows_on, cols_on = np.flatnonzero(gt.any(axis=1)), np.flatnonzero(gt.any(axis=0))
        assert row["mask_xyxy"] == [cols_on[0], rows_on[0], cols_on[-1], rows_on[-1]]
        assert row["label_name"] == {"dog": "Dog", "chair": "Chair"}[row["label"]]
        assert row["engine"] == "iog" and row["inside_policy"] == "center"
        assert row["clicks"] == [[box.xyxy[0] + 100.25, box.xyxy[1] + 50, 1, "inside"],
                                 [box.xyxy[0], box.xyxy[1], 0, "corner"]]
        np.testing.assert_array_equal(masks.decode_rle(row["rle"]), gt)
    assert rows[0]["metrics"] == {"box_fill": round(float(gts[0].sum()) / 1000, 3)}
    assert rows[1]["metrics"]["flags"] == ["touches_border"]
    assert [r["score"] for r in rows] == [0.9, 0.8]


def test_files_point_at_the_pixels_of_each_mask_in_every_format(tmp_path):
    run, gts = results()
    write_all(tmp_path, run)
    for row, gt in zip(lines(tmp_path / "masks.jsonl"), gts, strict=True):
        assert set(row["files"]) == {"pixel-imagenet", "openimages"}  # COCO: index file only
        instance = masks.decode_png((tmp_path / row["files"]["pixel-imagenet"]).read_bytes())
        np.testing.assert_array_equal(instance == row["index"] + 1, gt)
        binary = masks.decode_png((tmp_path / row["files"]["openimages"]).read_bytes())
        np.testing.assert_array_equal(binary > 0, gt)


def test_written_ids_map_each_mask_to_its_open_images_row(tmp_path):
    run, _ = results()
    run[0].record.image_id = "63"  # numeric, as from a COCO source: written with a prefix
    write_all(tmp_path, run)
    create_writer("openimages", tmp_path, LABELS).merge(lambda: iter(run))
    with open(tmp_path / "openimages" / "labels" / "segmentations.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for line, row in zip(lines(tmp_path / "masks.jsonl"), rows, strict=True):
        ids = line["written_ids"]["openimages"]
        assert ids == {"ImageID": row["ImageID"], "LabelName": row["LabelName"],
                       "BoxID": row["BoxID"]}
        assert ids["ImageID"] == "img-63" and ids["LabelName"] == line["label"]
        assert row["MaskPath"] in line["files"]["openimages"]
    assert set(lines(tmp_path / "masks.jsonl")[0]["written_ids"]) == {"openimages"}


def test_files_list_only_what_the_worker_recorded_as_written(tmp_path):
    run, _ = results()
    writers = [create_writer(name, tmp_path, LABELS) for name in FORMATS]
    sidecar = SidecarWriter(tmp_path, LABELS, formats=writers)
    run[0].files = writers[0].write_image(run[0])  # pixel-imagenet only
    sidecar.merge(lambda: iter(run))
    assert [set(r["files"]) for r in lines(tmp_path / "masks.jsonl")] == [{"pixel-imagenet"}] * 2


def test_formats_can_be_given_by_name(tmp_path):
    run, _ = results()
    write_all(tmp_path / "by_object", run)  # also records run[*].files
    SidecarWriter(tmp_path / "by_object", LABELS, formats=FORMATS).merge(lambda: iter(run))
    rows = lines(tmp_path / "by_object" / "masks.jsonl")
    assert [set(r["files"]) for r in rows] == [{"pixel-imagenet", "openimages"}] * 2


def test_errors_jsonl_has_one_line_per_error_record(tmp_path):
    run, _ = results()
    write_all(tmp_path, run)
    assert lines(tmp_path / "errors.jsonl") == [
        {"image_id": None, "box_id": None, "stage": "read", "reason": "malformed XML",
         "source": "Annotations/bad.xml"},
        {"image_id": "2011_003353", "box_id": run[1].record.boxes[0].box_id, "stage": "engine",
         "reason": "CUDA out of memory", "source": None},
        {"image_id": "broken", "box_id": None, "stage": "decode", "reason": "truncated JPEG",
         "source": "JPEGImages/broken.jpg"},
    ]


def test_same_input_gives_identical_bytes(tmp_path):
    write_all(tmp_path / "a", results()[0])
    write_all(tmp_path / "b", results()[0])
    for name in ("masks.jsonl", "errors.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_empty_run_writes_empty_files(tmp_path):
    SidecarWriter(tmp_path).merge(lambda: iter([]))
    assert (tmp_path / "masks.jsonl").read_bytes() == b""
    assert (tmp_path / "errors.jsonl").read_bytes() == b""


def test_merge_streams_results_without_holding_them(tmp_path, assert_merge_streams, tiny_results):
    n = 10_000

    def results():
        return tiny_results(n, label=lambda i: "dog", with_error=True)

    assert_merge_streams(
        lambda: SidecarWriter(tmp_path, LABELS, engine="grabcut").merge(results), results)
    assert len((tmp_path / "masks.jsonl").read_text().splitlines()) == n
    assert len((tmp_path / "errors.jsonl").read_text().splitlines()) == n
