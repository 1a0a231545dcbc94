"""--write-tight-boxes: the source format written back with each box replaced by its mask's box.

Real runs (GrabCut) on real files of every source; each written file is read back with boxmask's
own reader, which must give exactly the mask boxes of the sidecar (``mask_xyxy``).
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from lxml import etree

from boxmask import masks
from boxmask.boxes import from_normalized, rescale
from boxmask.exitcodes import EXIT_OK, EXIT_PARTIAL
from boxmask.readers import open_reader
from boxmask.records import Box, ErrorRecord, ImageRecord, ImageResult, MaskResult
from boxmask.writers.tightboxes import TightBoxWriter

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "data" / "samples" / "ilsvrc_loc"
COCO_MVAL = REPO / "tests" / "data" / "coco_mval"
COCO_JSON = REPO / "tests" / "data" / "readers" / "coco" / "instances_mval.json"


def boxmask(*args: str, codes: tuple[int, ...] = (EXIT_OK,)) -> None:
    extra = ["--no-progress"] if args[0] == "convert" else []
    proc = subprocess.run([sys.executable, "-m", "boxmask", *args, *extra],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode in codes, (proc.stdout, proc.stderr[-3000:])


def sidecar(out: Path) -> dict[tuple[str, str], dict]:
    lines = [json.loads(x) for x in (out / "masks.jsonl").read_text().splitlines()]
    return {(m["image_id"], m["box_id"]): m for m in lines}


def records(source: str, path: Path, **options) -> list[ImageRecord]:
    items = list(open_reader(source, path, **options))
    assert not [i for i in items if isinstance(i, ErrorRecord)]
    return items


def assert_tight(boxes: dict[tuple[str, str], tuple], out: Path) -> None:
    """Every box read back is its mask's tight box, or its input box for a box without one."""
    masks_by_box = sidecar(out)
    tightened = 0
    for key, xyxy in boxes.items():
        line = masks_by_box.get(key)
        if line is not None and line["mask_xyxy"] is not None:
            assert list(xyxy) == line["mask_xyxy"], key
            tightened += xyxy != tuple(line["box_xyxy"])
    assert tightened > 0  # the masks did move some boxes


@pytest.fixture
def ilsvrc_224(tmp_path: Path) -> Path:
    """The ILSVRC sample's train XMLs with <size> and <bndbox> scaled to the 224 x 224 JPEGs
    (see data/samples/ilsvrc_loc/README.md), so that declared and decoded sizes agree."""
    root = tmp_path / "ilsvrc"
    shutil.copytree(SAMPLE / "Data", root / "Data", symlinks=True)
    for xml in sorted((SAMPLE / "Annotations").rglob("n01440764_1*.xml"))[:8]:
        tree = etree.parse(str(xml))
        w, h = (int(tree.findtext(f"size/{k}")) for k in ("width", "height"))
        for k in ("width", "height"):
            tree.find(f"size/{k}").text = "224"
        for bnd in tree.iter("bndbox"):
            for tag, s in (("xmin", w), ("ymin", h), ("xmax", w), ("ymax", h)):
                bnd.find(tag).text = str(int(int(bnd.findtext(tag)) * 224 / s))
        dest = root / xml.relative_to(SAMPLE)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tree.write(str(dest))
    return root


def test_ilsvrc_xml_reads_back_as_the_mask_boxes_and_keeps_every_other_field(
        ilsvrc_224: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    boxmask("convert", "--source", "ilsvrc-loc", "--input", str(ilsvrc_224), "--engine",
            "grabcut", "--format", "coco", "--output", str(out), "--write-tight-boxes")
    folder = out / "tight-boxes" / "ilsvrc-loc"
    written = sorted(folder.rglob("*.xml"))
    sources = sorted((ilsvrc_224 / "Annotations").rglob("*.xml"))
    assert [p.relative_to(folder) for p in written] == [
        p.relative_to(ilsvrc_224 / "Annotations" / "CLS-LOC") for p in sources]
    back = records("ilsvrc-loc", folder)
    assert_tight({(r.image_id, b.box_id): b.xyxy for r in back for b in r.boxes}, out)
    for src, new in zip(sources, written, strict=True):
        a, b = etree.parse(str(src)).getroot(), etree.parse(str(new)).getroot()
        assert [e.tag for e in a] == [e.tag for e in b]  # same structure
        for tag in ("folder", "filename", "source/database", "size/width", "size/height",
                    "size/depth", "segmented"):
            assert a.findtext(tag) == b.findtext(tag)
        for old, obj in zip(a.findall("object"), b.findall("object"), strict=True):
            for tag in ("name", "pose", "truncated", "difficult"):
                assert old.findtext(tag) == obj.findtext(tag)
            assert [obj.findtext(f"input_bndbox/{t}") for t in ("xmin", "ymin", "xmax", "ymax")] \
                == [old.findtext(f"bndbox/{t}") for t in ("xmin", "ymin", "xmax", "ymax")]
            assert obj.findtext("tight_box_status") == "tight"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["outputs"]["tight-boxes"]["boxes"]["tight"] == len(sidecar(out))


def test_declared_size_that_differs_from_the_jpeg_gets_the_mask_box_in_its_frame(
        tmp_path: Path) -> None:
    out = tmp_path / "out"
    boxmask("convert", "--source", "ilsvrc-loc", "--input", str(SAMPLE), "--limit", "4",
            "--engine", "grabcut", "--format", "coco", "--output", str(out))
    boxmask("merge", str(out), "--write-tight-boxes")  # the option works at merge time too
    back = records("ilsvrc-loc", out / "tight-boxes" / "ilsvrc-loc")
    assert back
    lines = sidecar(out)
    for r in back:
        for b in r.boxes:
            line = lines[(r.image_id, b.box_id)]
            assert (line["width"], line["height"]) == (224, 224) != (r.width, r.height)
            assert b.xyxy == rescale(tuple(line["mask_xyxy"]), (224, 224), (r.width, r.height))


def test_kaggle_csv_reads_back_as_the_mask_boxes(tmp_path: Path) -> None:
    csv_path = SAMPLE / "LOC_val_solution_excerpt.csv"
    out = tmp_path / "out"
    boxmask("convert", "--source", "kaggle-loc", "--input", str(csv_path), "--engine", "grabcut",
            "--format", "coco", "--output", str(out), "--write-tight-boxes",
            codes=(EXIT_PARTIAL,))  # the resized JPEGs leave two boxes outside the image
    written = out / "tight-boxes" / "kaggle-loc" / csv_path.name
    back = records("kaggle-loc", written, images_root=SAMPLE / "Data" / "CLS-LOC")
    given = records("kaggle-loc", csv_path)
    assert [r.image_id for r in back] == [r.image_id for r in given]
    assert_tight({(r.image_id, b.box_id): b.xyxy for r in back for b in r.boxes}, out)
    with open(written, newline="") as f:
        rows = list(csv.DictReader(f))
    lines = sidecar(out)
    for row, r in zip(rows, given, strict=True):  # boxes the engine refused keep their box
        statuses = row["TightBoxStatus"].split()
        assert len(statuses) == len(r.boxes)
        for status, b, new in zip(statuses, r.boxes, back[given.index(r)].boxes, strict=True):
            assert status == ("tight" if (r.image_id, b.box_id) in lines else "no_mask")
            if status == "no_mask":
                assert new.xyxy == b.xyxy


def test_open_images_csv_reads_back_as_the_mask_boxes_with_official_columns(
        tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    header = ("ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax,IsOccluded,IsTruncated,"
              "IsGroupOf,IsDepiction,IsInside")
    lines = [header]
    with open(COCO_MVAL / "boxes_from_masks.csv", newline="") as f:
        rows = list(csv.DictReader(f))[:5]
    for i, r in enumerate(rows):
        image_id = f"{i:016x}"
        shutil.copy(COCO_MVAL / "img" / r["image"], images / f"{image_id}.jpg")
        w, h = int(r["width"]), int(r["height"])
        x0, y0, x1, y1 = (int(r[k]) for k in ("x_min", "y_min", "x_max", "y_max"))
        x0, y0 = max(x0 - 8, 0), max(y0 - 8, 0)  # a loose box, as users have them
        lines.append(f"{image_id},xclick,/m/0test,1,{x0 / w:.6f},{(x1 + 1) / w:.6f},"
                     f"{y0 / h:.6f},{(y1 + 1) / h:.6f},0,{i % 2},0,0,0")
    csv_path = tmp_path / "boxes.csv"
    csv_path.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    boxmask("convert", "--source", "openimages", "--input", str(csv_path), "--images-root",
            str(images), "--engine", "grabcut", "--format", "coco", "--output", str(out),
            "--write-tight-boxes")
    written = out / "tight-boxes" / "openimages" / "boxes.csv"
    back = records("openimages", written)
    sizes = {m["image_id"]: (m["width"], m["height"]) for m in sidecar(out).values()}
    assert_tight({(r.image_id, b.box_id): from_normalized(*b.xyxy_norm, *sizes[r.image_id])
                  for r in back for b in r.boxes}, out)
    with open(written, newline="") as f:
        reader = csv.DictReader(f)
        got = list(reader)
    assert reader.fieldnames[:13] == header.split(",")
    for row, line in zip(got, lines[1:], strict=True):
        given = dict(zip(header.split(","), line.split(","), strict=True))
        for k in ("ImageID", "Source", "LabelName", "Confidence", "IsOccluded", "IsTruncated",
                  "IsGroupOf", "IsDepiction", "IsInside"):
            assert row[k] == given[k]
        for k in ("XMin", "XMax", "YMin", "YMax"):
            assert float(row[f"Input{k}"]) == float(given[k])
        assert row["TightBoxStatus"] == "tight"


def test_coco_keeps_the_source_and_replaces_bbox_with_the_tight_box(tmp_path: Path) -> None:
    out = tmp_path / "out"
    boxmask("convert", "--source", "coco", "--input", str(COCO_JSON), "--images-root",
            str(COCO_MVAL / "img"), "--engine", "grabcut", "--limit", "5", "--format", "coco",
            "--output", str(out), "--write-tight-boxes")
    written = out / "tight-boxes" / "coco" / COCO_JSON.name
    back = records("coco", written)
    assert len(back) == 5
    assert_tight({(r.image_id, b.box_id): b.xyxy for r in back for b in r.boxes}, out)
    src = json.loads(COCO_JSON.read_text())
    new = json.loads(written.read_text())
    assert new["categories"] == src["categories"]
    assert new["images"] == src["images"][:5]
    by_id = {a["id"]: a for a in src["annotations"]}
    for ann in new["annotations"]:
        old = by_id[ann["id"]]
        assert ann["input_bbox"] == old["bbox"] and ann["tight_box_status"] == "tight"
        rest = {k: v for k, v in ann.items() if k not in ("input_bbox", "tight_box_status")}
        assert rest == {**old, "bbox": ann["bbox"]}  # every other field as it was


def _result(image_path: str, mask: np.ndarray | None) -> ImageResult:
    box = Box("b0", "n01440764", 0, (1, 1, 6, 4))
    record = ImageRecord("x", image_path, [box], width=8, height=6, location="/nonexistent.xml")
    found = [] if mask is None else [MaskResult("b0", box.label, 0, box.xyxy,
                                                masks.encode_rle(mask), 0.5)]
    return ImageResult(record, 8, 6, masks=found)


def test_an_empty_mask_keeps_its_input_box_and_is_marked(tmp_path: Path) -> None:
    writer = TightBoxWriter(tmp_path, reader={"input_format": "ilsvrc-loc", "origin": 0})
    writer.merge(lambda: iter([_result("train/a.JPEG", np.zeros((6, 8), bool)),
                               _result("train/b.JPEG", None)]))
    for name, status in (("a", "empty"), ("b", "no_mask")):
        obj = etree.parse(str(tmp_path / "tight-boxes" / "ilsvrc-loc" / "train" / f"{name}.xml")
                          ).getroot().find("object")
        assert obj.findtext("tight_box_status") == status
        assert [obj.findtext(f"bndbox/{t}") for t in ("xmin", "ymin", "xmax", "ymax")] == \
            ["1", "1", "6", "4"]
    assert writer.summary["boxes"] == {"tight": 0, "empty": 1, "no_mask": 1}


@pytest.mark.parametrize("image_path", ["../../escaped.JPEG", "/tmp/escaped.JPEG",
                                        "a/../../escaped.JPEG"])
def test_a_hostile_image_path_cannot_escape_the_output_folder(tmp_path: Path,
                                                              image_path: str) -> None:
    out = tmp_path / "a" / "b" / "out"
    mask = np.zeros((6, 8), bool)
    mask[2:4, 2:5] = True
    writer = TightBoxWriter(out, reader={"input_format": "ilsvrc-loc", "origin": 0})
    writer.merge(lambda: iter([_result(image_path, mask), _result("ok.JPEG", mask)]))
    assert [p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.xml")] == [
        "a/b/out/tight-boxes/ilsvrc-loc/ok.xml"]
    assert writer.summary["refused"] == 1
    assert not Path("/tmp/escaped.xml").exists()


@pytest.mark.parametrize("origin", [0, 1])
def test_kaggle_and_xml_coordinates_invert_the_readers_box_origin(tmp_path: Path,
                                                                  origin: int) -> None:
    mask = np.zeros((6, 8), bool)
    mask[2:4, 3:7] = True  # tight box (3, 2, 6, 3)
    result = _result("train/n01440764/n01440764_7.JPEG", mask)
    result.record.image_id = "n01440764_7"
    reader = {"origin": origin, "input": str(tmp_path / "LOC_train_solution.csv")}
    for input_format in ("kaggle-loc", "ilsvrc-loc"):
        TightBoxWriter(tmp_path, reader={**reader, "input_format": input_format}).merge(
            lambda: iter([result]))
    folder = tmp_path / "tight-boxes"
    for source, path in (("kaggle-loc", folder / "kaggle-loc" / "LOC_train_solution.csv"),
                         ("ilsvrc-loc", folder / "ilsvrc-loc")):
        (record,) = records(source, path, origin=origin)
        assert [b.xyxy for b in record.boxes] == [(3, 2, 6, 3)]


def test_an_object_the_reader_refused_stays_in_the_xml_marked(tmp_path: Path) -> None:
    bad = REPO / "tests" / "data" / "readers" / "ilsvrc_bad" / "Annotations" / "CLS-LOC"
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(bad / "train" / "n01440764" / "one_box_nonnumeric.xml", src)
    items = list(open_reader("ilsvrc-loc", src))
    (record,) = [i for i in items if isinstance(i, ImageRecord)]
    mask = np.zeros((375, 500), bool)
    mask[110:270, 70:360] = True
    box = record.boxes[0]
    result = ImageResult(record, 500, 375, masks=[
        MaskResult(box.box_id, box.label, 0, box.xyxy, masks.encode_rle(mask), 0.5)])
    TightBoxWriter(tmp_path / "out", reader={"input_format": "ilsvrc-loc", "origin": 0}).merge(
        lambda: iter([result]))
    root = etree.parse(str(tmp_path / "out" / "tight-boxes" / "ilsvrc-loc" /
                           "one_box_nonnumeric.xml")).getroot()
    first, second = root.findall("object")
    assert [first.findtext(f"bndbox/{t}") for t in ("xmin", "ymin", "xmax", "ymax")] == \
        ["70", "110", "359", "269"]
    assert second.findtext("tight_box_status") == "no_mask"
    assert [second.findtext(f"bndbox/{t}") for t in ("xmin", "ymin", "xmax", "ymax")] == \
        ["12", "abc", "40", "50"]
