"""Open Images writer: the FiftyOne folder (data/, labels/, metadata/), per-mask PNGs and the
segmentation CSV, parsed back like the real files."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from boxmask import masks
from boxmask.boxes import from_voc
from boxmask.labels import read_label_file
from boxmask.records import Box, Click, ErrorRecord, ImageRecord, ImageResult, MaskResult
from boxmask.writers.openimages import (
    CLASSES_NAME,
    CSV_NAME,
    HIERARCHY_NAME,
    OFFICIAL_CSV_NAME,
    SEGMENTATION_CLASSES_NAME,
    OpenImagesWriter,
)
from boxmask.writers.textids import source_id

DATA = Path(__file__).parents[1] / "data"
VOC = DATA / "voc2012"
COCO_MVAL = DATA / "coco_mval"
OI = DATA / "openimages"
REAL_CSV = OI / "train-annotations-object-segmentation_excerpt.csv"
BAD_IMAGES = DATA / "bad_images"
CLICKS = re.compile(r"^\d\.\d{5} \d\.\d{5} [01](;\d\.\d{5} \d\.\d{5} [01])*$")

OI_LABELS = read_label_file(OI / "class-descriptions-boxable_with-header.csv")
MID = {name.lower(): mid for mid, name in OI_LABELS.names.items()}


def voc_xml_boxes() -> list[tuple[str, tuple[float, float, float, float]]]:
    """(name, (xmin, ymin, xmax, ymax)) of each object, VOC 1-based inclusive, as in the XML."""
    root = ET.parse(VOC / "Annotations" / "2007_000063.xml").getroot()
    out = []
    for obj in root.iter("object"):
        bb = obj.find("bndbox")
        out.append((obj.find("name").text,
                    tuple(float(bb.find(t).text) for t in ("xmin", "ymin", "xmax", "ymax"))))
    return out


def voc_result() -> tuple[ImageResult, list[np.ndarray]]:
    """VOC 2007_000063 (dog, chair) with Open Images labels and box ids, GT masks as output."""
    objects = np.array(Image.open(VOC / "SegmentationObject" / "2007_000063.png"))
    gts = [objects == 1, objects == 2]
    boxes, results = [], []
    for k, (name, coords) in enumerate(voc_xml_boxes()):
        box = Box(["9a041d52", "b1115fd0"][k], MID[name], k, from_voc(*coords))
        boxes.append(box)
        clicks = [Click(250, 195, True, "inside"), Click(0, 374, False, "corner"),
                  Click(499.0, 0.0, False, "corner")]
        results.append(MaskResult(box.box_id, box.label, k, box.xyxy,
                                  masks.encode_rle(gts[k]), [0.86864, 0.8025][k], clicks))
    record = ImageRecord("677c122b0eaa5d16", "train/677c122b0eaa5d16.jpg", boxes)
    return ImageResult(record, 500, 375, masks=results), gts


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def parse_clicks(text: str) -> list[tuple[float, float, int]]:
    return [(float(x), float(y), int(lab)) for x, y, lab in (c.split() for c in text.split(";"))]


def test_one_binary_png_per_mask_named_like_open_images(tmp_path):
    result, gts = voc_result()
    files = OpenImagesWriter(tmp_path).write_image(result)
    assert files == ["openimages/labels/masks/6/677c122b0eaa5d16_m0bt9lr_9a041d52.png",
                     "openimages/labels/masks/6/677c122b0eaa5d16_m01mzpv_b1115fd0.png"]
    for rel, gt in zip(files, gts, strict=True):
        data = (tmp_path / rel).read_bytes()
        grey = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
        assert grey.shape == (375, 500) and set(np.unique(grey)) == {0, 255}
        np.testing.assert_array_equal(grey > 122, gt)  # FiftyOne's threshold
        pil = Image.open(io.BytesIO(data))
        assert pil.mode == "1"
        np.testing.assert_array_equal(np.array(pil), gt)


def test_mask_folder_is_the_upper_cased_first_character_of_the_image_id(tmp_path):
    result, _ = voc_result()
    result.record.image_id = "b37f763ae67d0888"  # a real Open Images ImageID
    files = OpenImagesWriter(tmp_path).write_image(result)
    assert files[0] == "openimages/labels/masks/B/b37f763ae67d0888_m0bt9lr_9a041d52.png"
    assert (tmp_path / files[0]).is_file()


def test_numeric_ids_get_a_prefix_everywhere_and_the_mask_folder_follows_it(tmp_path):
    """A COCO source: image 139, category 18, annotation 1768."""
    result, gts = voc_result()
    result.record.image_id = "139"
    for mask, label, box_id in zip(result.masks, ["18", "n02084071"], ["1768", "00042"],
                                   strict=True):
        mask.label, mask.box_id = label, box_id
    writer = OpenImagesWriter(tmp_path)
    files = writer.write_image(result)
    assert files == ["openimages/labels/masks/I/img-139_class-18_box-1768.png",
                     "openimages/labels/masks/I/img-139_n02084071_box-00042.png"]
    writer.merge(lambda: iter([result]))
    rows = read_csv(tmp_path / "openimages" / CSV_NAME)
    assert [(r["ImageID"], r["LabelName"], r["BoxID"]) for r in rows] == [
        ("img-139", "class-18", "box-1768"), ("img-139", "n02084071", "box-00042")]
    for row, rel in zip(rows, files, strict=True):  # FiftyOne's path: masks/<ImageID[0]>/
        assert rel == f"openimages/labels/masks/{row['ImageID'][0].upper()}/{row['MaskPath']}"
    assert [source_id(r["ImageID"], "ImageID") for r in rows] == ["139", "139"]
    assert [source_id(r["BoxID"], "BoxID") for r in rows] == ["1768", "00042"]
    classes = (tmp_path / "openimages" / CLASSES_NAME).read_text().splitlines()
    assert classes[-2:] == ["class-18,18", "n02084071,n02084071"]
    assert writer.summary["renamed_labels"] == {"class-18": "18"}
    assert writer.written_ids(result, result.masks[0]) == {
        "ImageID": "img-139", "LabelName": "class-18", "BoxID": "box-1768"}


def test_csv_header_is_the_official_one_under_both_names(tmp_path):
    OpenImagesWriter(tmp_path).merge(lambda: iter([voc_result()[0]]))
    ours = (tmp_path / "openimages" / CSV_NAME).read_text()
    assert ours.splitlines()[0] == REAL_CSV.read_text().splitlines()[0]
    official = tmp_path / "openimages" / OFFICIAL_CSV_NAME
    assert official.is_symlink() and os.readlink(official) == "segmentations.csv"
    assert official.read_text() == ours


def test_csv_rows_give_back_boxes_clicks_and_scores(tmp_path):
    result, _ = voc_result()
    writer = OpenImagesWriter(tmp_path)
    written = writer.write_image(result)
    writer.merge(lambda: iter([result]))
    rows = read_csv(tmp_path / "openimages" / CSV_NAME)
    assert len(rows) == 2
    for row, (name, (xmin, ymin, xmax, ymax)), rel in zip(rows, voc_xml_boxes(), written,
                                                        strict=True):
        assert row["ImageID"] == "677c122b0eaa5d16"
        assert row["LabelName"] == MID[name] and OI_LABELS.name(row["LabelName"]).lower() == name
        masks_dir = tmp_path / "openimages" / "labels" / "masks"
        assert (masks_dir / row["ImageID"][0] / row["MaskPath"]).is_file()
        assert rel.endswith("/" + row["MaskPath"])
        # VOC 1-based inclusive: the left edge is xmin - 1, the right edge xmax (exclusive);
        # int(v * W), as FiftyOne crops, gives each edge back exactly.
        assert int(float(row["BoxXMin"]) * 500) == xmin - 1
        assert int(float(row["BoxXMax"]) * 500) == xmax
        assert int(float(row["BoxYMin"]) * 375) == ymin - 1
        assert int(float(row["BoxYMax"]) * 375) == ymax
        assert CLICKS.match(row["Clicks"])
        assert parse_clicks(row["Clicks"]) == [
            (pytest.approx(250.5 / 500, abs=5e-6), pytest.approx(195.5 / 375, abs=5e-6), 1),
            (pytest.approx(0.5 / 500, abs=5e-6), pytest.approx(374.5 / 375, abs=5e-6), 0),
            (pytest.approx(499.5 / 500, abs=5e-6), pytest.approx(0.5 / 375, abs=5e-6), 0)]
    assert [r["PredictedIoU"] for r in rows] == ["0.86864", "0.8025"]
    assert [r["BoxID"] for r in rows] == ["9a041d52", "b1115fd0"]


def test_number_formats_match_the_real_rows(tmp_path):
    real = read_csv(REAL_CSV)
    assert all(CLICKS.match(r["Clicks"]) for r in real)  # the pattern fits the official rows
    coord = re.compile(r"^(0|1|0\.\d{1,7})$")  # the official rows have up to 6 decimals, ours 7
    assert all(coord.match(r[k]) for r in real for k in ("BoxXMin", "BoxXMax"))
    OpenImagesWriter(tmp_path).merge(lambda: iter([voc_result()[0]]))
    for row in read_csv(tmp_path / "openimages" / CSV_NAME):
        for k in ("BoxXMin", "BoxXMax", "BoxYMin", "BoxYMax"):
            assert coord.match(row[k]), row[k]


def test_coco_mval_masks_round_trip_through_pngs_and_csv(tmp_path):
    with open(COCO_MVAL / "boxes_from_masks.csv", newline="") as f:
        rows = list(csv.DictReader(f))[::4]
    writer, results, gts = OpenImagesWriter(tmp_path), [], {}
    for k, row in enumerate(rows):
        gt = np.array(Image.open(COCO_MVAL / row["mask"])) == 255
        h, w = gt.shape
        xyxy = tuple(int(row[c]) for c in ("x_min", "y_min", "x_max", "y_max"))
        image_id = f"{k:x}{Path(row['image']).stem.rsplit('_', 1)[1]}"
        box = Box(f"{k:08x}", "/m/0k4j", 0, xyxy)
        mask = MaskResult(box.box_id, box.label, 0, xyxy, masks.encode_rle(gt), 0.9, [])
        result = ImageResult(ImageRecord(image_id, f"{image_id}.jpg", [box]), w, h, masks=[mask])
        results.append(result)
        (rel,) = writer.write_image(result)
        gts[Path(rel).name] = gt
    writer.merge(lambda: iter(results))
    for row in read_csv(tmp_path / "openimages" / CSV_NAME):
        gt = gts[row["MaskPath"]]
        path = (tmp_path / "openimages" / "labels" / "masks" / row["ImageID"][0].upper()
                / row["MaskPath"])
        png = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        np.testing.assert_array_equal(png > 0, gt)
        ys, xs = np.nonzero(gt)  # the input box here is the mask's tight box
        h, w = gt.shape
        # FiftyOne's crop: mask[int(ymin * h):int(ymax * h), int(xmin * w):int(xmax * w)]
        crop = (png > 122)[int(float(row["BoxYMin"]) * h):int(float(row["BoxYMax"]) * h),
                           int(float(row["BoxXMin"]) * w):int(float(row["BoxXMax"]) * w)]
        np.testing.assert_array_equal(crop, gt[ys.min():ys.max() + 1, xs.min():xs.max() + 1])
        assert row["Clicks"] == ""


def test_write_image_is_idempotent_and_merge_deterministic(tmp_path,
                                                           assert_rewrite_changes_nothing):
    result, _ = voc_result()
    writer = OpenImagesWriter(tmp_path)
    files = assert_rewrite_changes_nothing(writer.write_image, lambda: result, tmp_path)
    writer.merge(lambda: iter([result]))
    first = (tmp_path / "openimages" / CSV_NAME).read_bytes()
    writer.merge(lambda: iter([result]))
    assert (tmp_path / "openimages" / CSV_NAME).read_bytes() == first
    for name in (CLASSES_NAME, SEGMENTATION_CLASSES_NAME, HIERARCHY_NAME):
        first = (tmp_path / "openimages" / name).read_bytes()
        writer.merge(lambda: iter([result]))
        assert (tmp_path / "openimages" / name).read_bytes() == first
    names = sorted(str(p.relative_to(tmp_path / "openimages")) for p in tmp_path.rglob("*")
                   if p.is_file())
    assert names == sorted([CSV_NAME, OFFICIAL_CSV_NAME, CLASSES_NAME, SEGMENTATION_CLASSES_NAME,
                            HIERARCHY_NAME] + [f.split("/", 1)[1] for f in files])  # no temps


@pytest.mark.parametrize("field,value", [("image_id", "../../677c"), ("image_id", "/abs"),
                                         ("box_id", "b1115fd0/../../x"), ("box_id", "..")])
def test_unsafe_ids_raise_and_nothing_is_written(tmp_path, field, value,
                                                 assert_refused_writing_nothing):
    result, _ = voc_result()
    if field == "image_id":
        result.record.image_id = value
    else:
        result.masks[1].box_id = value  # the first mask is fine: it must not be written either
    assert_refused_writing_nothing(lambda: OpenImagesWriter(tmp_path / "out").write_image(result),
                                   tmp_path)


def test_an_image_refused_for_an_unsafe_id_gets_no_csv_rows(tmp_path):
    result, _ = voc_result()
    other, _ = voc_result()
    other.record.image_id = "b37f763ae67d0888"
    result.masks[1].box_id = "../x"  # write_image refuses the whole image: no row may point at it
    OpenImagesWriter(tmp_path).merge(lambda: iter([result, other]))
    rows = read_csv(tmp_path / "openimages" / CSV_NAME)
    assert [r["ImageID"] for r in rows] == ["b37f763ae67d0888"] * 2


def test_failed_decode_writes_no_png_and_no_row(tmp_path):
    result, _ = voc_result()
    failed = ImageResult(result.record, errors=[ErrorRecord("decode", "truncated")])
    writer = OpenImagesWriter(tmp_path)
    assert writer.write_image(failed) == []
    writer.merge(lambda: iter([failed]))
    assert (tmp_path / "openimages" / CSV_NAME).read_text().count("\n") == 1  # header only


def test_merge_streams_results_without_holding_them(tmp_path, assert_merge_streams, tiny_results):
    n = 10_000

    def results():
        return tiny_results(n, label=lambda i: "/m/0bt9lr", image_id=lambda i: f"{i:016x}")

    assert_merge_streams(lambda: OpenImagesWriter(tmp_path).merge(results), results)
    assert len(read_csv(tmp_path / "openimages" / CSV_NAME)) == n


def images_run(tmp_path: Path) -> tuple[Path, list[ImageResult]]:
    """Three decoded images under an images root (a JPEG named .jpg, an ILSVRC-style .JPEG, a
    PNG named .JPEG) and one that failed to decode."""
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    shutil.copy(VOC / "JPEGImages" / "2007_000063.jpg", root / "sub" / "a.jpg")
    shutil.copy(VOC / "JPEGImages" / "2007_000063.jpg", root / "b.JPEG")
    shutil.copy(BAD_IMAGES / "png_named.JPEG", root / "c.JPEG")
    results = []
    for image_id, path in [("677c122b0eaa5d16", "sub/a.jpg"), ("7", "b.JPEG"), ("c", "c.JPEG")]:
        result, _ = voc_result()
        result.record.image_id, result.record.image_path = image_id, path
        results.append(result)
    failed, _ = voc_result()
    failed.record.image_id = "failed"
    results.append(ImageResult(failed.record, errors=[ErrorRecord("decode", "truncated")]))
    return root, results


def test_data_links_every_decoded_image_under_its_written_id_and_real_extension(tmp_path):
    root, results = images_run(tmp_path)
    writer = OpenImagesWriter(tmp_path / "out", images_root=root)
    writer.merge(lambda: iter(results))
    data = tmp_path / "out" / "openimages" / "data"
    assert sorted(p.name for p in data.iterdir()) == ["677c122b0eaa5d16.jpg", "c.png",
                                                      "img-7.jpg"]
    assert os.readlink(data / "677c122b0eaa5d16.jpg") == str(root / "sub" / "a.jpg")
    assert os.readlink(data / "img-7.jpg") == str(root / "b.JPEG")
    assert (data / "c.png").read_bytes() == (BAD_IMAGES / "png_named.JPEG").read_bytes()
    assert writer.summary["images"] == "symlinks" and writer.summary["images_placed"] == 3
    before = {p.name: p.lstat().st_mtime_ns for p in data.iterdir()}
    writer.merge(lambda: iter(results))  # merging again leaves the links as they are
    assert {p.name: p.lstat().st_mtime_ns for p in data.iterdir()} == before


def test_copy_images_copies_them_and_the_official_csv(tmp_path):
    root, results = images_run(tmp_path)
    OpenImagesWriter(tmp_path / "out", images_root=root).merge(lambda: iter(results))
    writer = OpenImagesWriter(tmp_path / "out", images_root=root, copy_images=True)
    writer.merge(lambda: iter(results))  # replaces the links of an earlier merge
    out = tmp_path / "out" / "openimages"
    shutil.rmtree(root)  # the copies do not need the originals
    for name in ("677c122b0eaa5d16.jpg", "img-7.jpg"):
        path = out / "data" / name
        assert not path.is_symlink()
        assert path.read_bytes() == (VOC / "JPEGImages" / "2007_000063.jpg").read_bytes()
    official = out / OFFICIAL_CSV_NAME
    assert not official.is_symlink() and official.read_bytes() == (out / CSV_NAME).read_bytes()
    assert writer.summary["images"] == "copies"
    assert [p for p in out.rglob("*") if ".tmp-" in p.name] == []


def test_an_image_gone_from_the_images_root_is_counted_and_skipped(tmp_path):
    root, results = images_run(tmp_path)
    (root / "b.JPEG").unlink()
    writer = OpenImagesWriter(tmp_path / "out", images_root=root)
    writer.merge(lambda: iter(results))
    assert writer.summary["images_missing"] == 1 and writer.summary["images_placed"] == 2
    rows = read_csv(tmp_path / "out" / "openimages" / CSV_NAME)
    assert len(rows) == 6  # its masks are still listed


def test_metadata_lists_the_classes_as_fiftyone_reads_them(tmp_path):
    """classes.csv has no header and is parsed the way FiftyOne does (``csv.Sniffer``);
    segmentation_classes.csv lists the classes with masks; the hierarchy is flat."""
    result, _ = voc_result()
    labels = read_label_file(OI / "class-descriptions-boxable_with-header.csv")
    OpenImagesWriter(tmp_path, labels).merge(lambda: iter([result]))
    out = tmp_path / "openimages"
    text = (out / CLASSES_NAME).read_text()
    dialect = csv.Sniffer().sniff(text[:10240])
    assert dialect.delimiter == ","
    rows = list(csv.reader(io.StringIO(text), dialect))
    assert rows == [[mid, labels.name(mid)] for mid in labels.ids]
    segmented = (out / SEGMENTATION_CLASSES_NAME).read_text()
    assert segmented == "".join(f"{mid}\n" for mid in labels.ids
                                if mid in (MID["dog"], MID["chair"]))
    hierarchy = json.loads((out / HIERARCHY_NAME).read_text())
    assert hierarchy == {"LabelName": "Entity",
                         "Subcategory": [{"LabelName": labels.name(m)} for m in labels.ids]}


def test_class_names_with_commas_and_quotes_survive_the_sniffer(tmp_path):
    from boxmask.labels import LabelMap

    labels = LabelMap(["n01440764", "n02084071"],
                      {"n01440764": "tench, Tinca tinca", "n02084071": 'dog "domestic"'})
    OpenImagesWriter(tmp_path, labels).merge(lambda: iter([]))
    text = (tmp_path / "openimages" / CLASSES_NAME).read_text()
    rows = list(csv.reader(io.StringIO(text), csv.Sniffer().sniff(text)))
    assert rows == [["n01440764", "tench, Tinca tinca"], ["n02084071", 'dog "domestic"']]


def test_copy_images_from_the_command_line_and_merging_again_with_links(tmp_path):
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    out = tmp_path / "out"

    def boxmask(*args: str) -> None:
        proc = subprocess.run([sys.executable, "-m", "boxmask", *args], capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]

    boxmask("convert", "--source", "coco", "--input",
            str(repo / "tests" / "data" / "readers" / "coco" / "instances_mval.json"),
            "--images-root", str(COCO_MVAL / "img"), "--engine", "box", "--limit", "2",
            "--format", "openimages", "--output", str(out), "--no-progress", "--copy-images")
    data = sorted((out / "openimages" / "data").iterdir())
    assert len(data) == 2 and not any(p.is_symlink() for p in data)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["outputs"]["openimages"]["images"] == "copies"
    boxmask("merge", str(out))
    data = sorted((out / "openimages" / "data").iterdir())
    assert len(data) == 2 and all(p.is_symlink() for p in data)
    assert all(Path(os.readlink(p)).parent == COCO_MVAL / "img" for p in data)


def test_without_symbolic_links_the_images_and_the_official_csv_are_copied(tmp_path,
                                                                           monkeypatch):
    import boxmask.writers.openimages as oi

    def no_links(*args, **kwargs):
        raise OSError("symbolic links are not supported here")

    monkeypatch.setattr(oi, "atomic_symlink", no_links)
    root, results = images_run(tmp_path)
    writer = OpenImagesWriter(tmp_path / "out", images_root=root)
    writer.merge(lambda: iter(results))
    out = tmp_path / "out" / "openimages"
    data = sorted((out / "data").iterdir())
    assert len(data) == 3 and not any(p.is_symlink() for p in data)
    assert (out / "data" / "img-7.jpg").read_bytes() == (root / "b.JPEG").read_bytes()
    assert (out / OFFICIAL_CSV_NAME).read_bytes() == (out / CSV_NAME).read_bytes()
    assert not (out / OFFICIAL_CSV_NAME).is_symlink()
    assert writer.summary["images"] == "copies"  # what data/ holds, not what was asked


def test_display_names_shared_by_several_labels_are_told_apart_in_metadata(tmp_path):
    from boxmask.labels import LabelMap

    labels = LabelMap(["n02012849", "n03126707", "n01440764"],
                      {"n02012849": "crane", "n03126707": "crane", "n01440764": "tench"})
    root, results = images_run(tmp_path)
    writer = OpenImagesWriter(tmp_path / "out", labels=labels, images_root=root)
    writer.merge(lambda: iter(results))
    out = tmp_path / "out" / "openimages"
    rows = dict(csv.reader((out / CLASSES_NAME).open()))
    assert rows["n02012849"] == "crane (n02012849)" and rows["n03126707"] == "crane (n03126707)"
    assert rows["n01440764"] == "tench"
    hierarchy = json.loads((out / HIERARCHY_NAME).read_text())
    assert [c["LabelName"] for c in hierarchy["Subcategory"]][:3] == [
        "crane (n02012849)", "crane (n03126707)", "tench"]
