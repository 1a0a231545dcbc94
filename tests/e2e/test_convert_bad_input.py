"""Bad input never crashes a conversion and never loses data: each bad item becomes an error
record, everything else converts, and the exit status says some items failed."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "data" / "samples" / "ilsvrc_loc"
BAD_IMAGES = REPO / "tests" / "data" / "bad_images"
BAD_XML = REPO / "tests" / "data" / "readers" / "ilsvrc_bad" / "Annotations" / "CLS-LOC" / "train"
WNID = "n01440764"
GOOD = ["n01440764_10040", "n01440764_10048", "n01440764_12308"]

XML = """<annotation><folder>{wnid}</folder><filename>{stem}</filename>
<size><width>{w}</width><height>{h}</height><depth>3</depth></size>
{objects}</annotation>"""
OBJ = ("<object><name>{wnid}</name><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax>"
       "<ymax>{y1}</ymax></bndbox></object>")


def _xml(stem: str, w: int, h: int, boxes: list[tuple[int, int, int, int]]) -> str:
    objects = "".join(OBJ.format(wnid=WNID, x0=a, y0=b, x1=c, y1=d) for a, b, c, d in boxes)
    return XML.format(wnid=WNID, stem=stem, w=w, h=h, objects=objects)


@pytest.fixture(scope="module")
def bad_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ILSVRC-LOC tree mixing real good images with every kind of bad input."""
    root = tmp_path_factory.mktemp("bad") / "ILSVRC"
    ann = root / "Annotations" / "CLS-LOC" / "train" / WNID
    data = root / "Data" / "CLS-LOC" / "train" / WNID
    ann.mkdir(parents=True)
    data.mkdir(parents=True)
    src_ann = SAMPLE / "Annotations" / "CLS-LOC" / "train" / WNID
    src_data = SAMPLE / "Data" / "CLS-LOC" / "train" / WNID
    for stem in GOOD:
        shutil.copy(src_ann / f"{stem}.xml", ann / f"{stem}.xml")
        shutil.copy(src_data / f"{stem}.JPEG", data / f"{stem}.JPEG")
    # bad images behind valid annotations (sizes: the file's own, so no rescaling)
    images = {
        "bad_truncated": ("truncated_half.JPEG", 224, 224),
        "ok_cmyk": ("cmyk_adobe.jpg", 224, 224),
        "ok_png_named_jpeg": ("png_named.JPEG", 112, 112),
        "ok_grayscale": ("grayscale.jpg", 224, 224),
        "ok_exif_rotated": ("exif_orientation6.jpg", 64, 40),
        "bad_bomb": ("bomb_30000x30000.jpg", 30000, 30000),
        "bad_empty_file": ("empty.jpg", 224, 224),
        "bad_not_an_image": ("text.jpg", 224, 224),
    }
    for stem, (name, w, h) in images.items():
        shutil.copy(BAD_IMAGES / name, data / f"{stem}.JPEG")
        (ann / f"{stem}.xml").write_text(_xml(stem, w, h, [(3, 3, min(w, 30), min(h, 30))]))
    (ann / "bad_missing_image.xml").write_text(_xml("bad_missing_image", 224, 224,
                                                    [(10, 10, 100, 100)]))
    # broken and hostile annotation files
    for name in ("empty.xml", "malformed.xml", "billion_laughs.xml", "billion_laughs_utf16.xml"):
        shutil.copy(BAD_XML / WNID / name, ann / f"badxml_{name}")
    secret = root.parent / "secret.txt"
    secret.write_text("TOPSECRET-boxmask")
    (ann / "badxml_xxe.xml").write_text(
        f'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x SYSTEM "file://{secret}">]>'
        f"<annotation><folder>{WNID}</folder><filename>&x;</filename>"
        "<size><width>224</width><height>224</height></size>"
        + OBJ.format(wnid=WNID, x0=1, y0=1, x1=9, y1=9) + "</annotation>")
    # degenerate boxes next to a good one on a real image
    shutil.copy(src_data / "n01440764_10074.JPEG", data / "boxes_degenerate.JPEG")
    (ann / "boxes_degenerate.xml").write_text(_xml(
        "boxes_degenerate", 224, 224,
        [(50, 50, 150, 150),        # fine
         (120, 40, 60, 90),         # x1 < x0
         (70, 70, 70, 70),          # a single pixel: below the minimum side
         (300, 300, 400, 400),      # entirely outside the 224x224 image
         (200, 200, 260, 260)]))    # partly outside: clipped, converted
    return root


@pytest.fixture(scope="module")
def bad_run(bad_dataset: Path) -> tuple[Path, subprocess.CompletedProcess]:
    out = bad_dataset.parent / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "boxmask", "convert", "--source", "ilsvrc-loc", "--input",
         str(bad_dataset), "--format", "pixel-imagenet", "--format", "coco", "--format",
         "openimages", "--engine", "grabcut", "--shard-size", "7", "--output", str(out),
         "--no-progress"], capture_output=True, text=True, timeout=600)
    return out, proc


def _errors(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "errors.jsonl").read_text().splitlines()]


def test_run_finishes_with_the_partial_failure_exit_code(bad_run) -> None:
    out, proc = bad_run
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "errors listed in" in proc.stderr


def test_each_bad_image_is_one_decode_error_naming_the_image(bad_run) -> None:
    out, _ = bad_run
    decode = {e["image_id"]: e["reason"] for e in _errors(out) if e["stage"] == "decode"}
    assert set(decode) == {"bad_truncated", "bad_bomb", "bad_empty_file", "bad_not_an_image",
                           "bad_missing_image"}
    assert "truncated" in decode["bad_truncated"]
    assert "exceeds the limit" in decode["bad_bomb"] or "bomb" in decode["bad_bomb"]
    assert "not found" in decode["bad_missing_image"]


def test_odd_but_valid_images_are_converted(bad_run) -> None:
    out, _ = bad_run
    masks = [json.loads(x) for x in (out / "masks.jsonl").read_text().splitlines()]
    converted = {m["image_id"] for m in masks}
    assert {"ok_cmyk", "ok_png_named_jpeg", "ok_grayscale", "ok_exif_rotated"} <= converted
    assert set(GOOD) <= converted


def test_bad_annotation_files_are_read_errors_and_entities_are_never_resolved(bad_run) -> None:
    out, _ = bad_run
    read = [e for e in _errors(out) if e["stage"] == "read"]
    sources = " ".join(e.get("source", "") + " " + e.get("image_id", "") for e in read)
    for name in ("empty", "malformed", "billion_laughs", "billion_laughs_utf16", "xxe"):
        assert f"badxml_{name}" in sources, name
    for path in out.rglob("*"):
        if path.is_file():
            assert b"TOPSECRET" not in path.read_bytes(), path


def test_degenerate_boxes_are_box_errors_and_the_good_boxes_convert(bad_run) -> None:
    out, _ = bad_run
    box_errors = [e for e in _errors(out) if e["image_id"] == "boxes_degenerate"]
    assert len(box_errors) == 3 and all(e["stage"] == "box" for e in box_errors)
    reasons = " ".join(e["reason"] for e in box_errors)
    assert "inverted" in reasons and "minimum side" in reasons and "outside" in reasons
    masks = [json.loads(x) for x in (out / "masks.jsonl").read_text().splitlines()
             if '"boxes_degenerate"' in x]
    assert sorted(m["index"] for m in masks) == [0, 4]
    assert [m["box_xyxy"] for m in masks if m["index"] == 4] == [[200, 200, 223, 223]]


def test_summary_counts_every_error(bad_run) -> None:
    out, proc = bad_run
    manifest = json.loads((out / "manifest.json").read_text())
    counts = manifest["counts"]
    assert counts["errors"] == len(_errors(out))
    assert counts["errors_by_stage"]["decode"] == 5 and counts["errors_by_stage"]["box"] == 3
    assert f"{counts['errors']} errors" in proc.stderr


def test_unsafe_file_names_never_read_or_write_outside(tmp_path: Path) -> None:
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    shutil.copy(SAMPLE / "Data" / "CLS-LOC" / "train" / WNID / f"{GOOD[0]}.JPEG", images / "ok.jpg")
    (tmp_path / "escape.jpg").write_bytes((images / "ok.jpg").read_bytes())
    coco = {
        "images": [
            {"id": 1, "file_name": "ok.jpg", "width": 224, "height": 224},
            {"id": 2, "file_name": "../escape.jpg", "width": 224, "height": 224},
            {"id": 3, "file_name": str(tmp_path / "escape.jpg"), "width": 224, "height": 224},
        ],
        "annotations": [{"id": i, "image_id": i, "category_id": 1, "bbox": [10, 10, 50, 50],
                         "iscrowd": 0} for i in (1, 2, 3)],
        "categories": [{"id": 1, "name": "../../evil"}],
    }
    src = tmp_path / "coco.json"
    src.write_text(json.dumps(coco))
    out = tmp_path / "out"
    before = {p for p in tmp_path.rglob("*")}
    proc = subprocess.run(
        [sys.executable, "-m", "boxmask", "convert", "--source", "coco", "--input", str(src),
         "--images-root", str(images), "--format", "pixel-imagenet", "--format", "coco",
         "--format", "openimages", "--engine", "box", "--output", str(out), "--no-progress"],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 3, proc.stderr[-2000:]
    errors = [json.loads(x) for x in (out / "errors.jsonl").read_text().splitlines()]
    assert {e["stage"] for e in errors} == {"read"} and len(errors) == 2
    new = {p for p in tmp_path.rglob("*")} - before
    assert all(out in p.parents or p == out for p in new), sorted(new)
    assert len([x for x in (out / "masks.jsonl").read_text().splitlines() if x]) == 1


def test_coco_ids_that_are_missing_repeated_or_strings_lose_no_mask(tmp_path: Path) -> None:
    """Annotations without an id or with a repeated one get ids of their own; string image ids
    are renumbered in the COCO output; every box becomes a mask and its own PNG."""
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(SAMPLE / "Data" / "CLS-LOC" / "train" / WNID / f"{GOOD[0]}.JPEG", images / "a.jpg")
    coco = {
        "images": [{"id": "img-a", "file_name": "a.jpg", "width": 224, "height": 224}],
        "annotations": [
            {"image_id": "img-a", "category_id": 1, "bbox": [10, 10, 50, 50], "iscrowd": 0},
            {"image_id": "img-a", "category_id": 1, "bbox": [60, 60, 50, 50], "iscrowd": 0},
            {"id": 7, "image_id": "img-a", "category_id": 1, "bbox": [20, 100, 40, 40]},
            {"id": 7, "image_id": "img-a", "category_id": 1, "bbox": [120, 20, 40, 40]},
        ],
        "categories": [{"id": 1, "name": "thing"}],
    }
    src = tmp_path / "coco.json"
    src.write_text(json.dumps(coco))
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "boxmask", "convert", "--source", "coco", "--input", str(src),
         "--images-root", str(images), "--format", "coco", "--format", "openimages",
         "--engine", "box", "--output", str(out), "--no-progress"],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [json.loads(x) for x in (out / "masks.jsonl").read_text().splitlines() if x]
    box_ids = [m["box_id"] for m in lines]
    assert len(box_ids) == 4 and len(set(box_ids)) == 4 and "7" in box_ids
    assert len(list((out / "openimages" / "labels" / "masks").rglob("*.png"))) == 4
    from pycocotools.coco import COCO

    result = COCO(str(out / "coco" / "instances.json"))
    assert result.getImgIds() == [1] and len(set(result.getAnnIds())) == 4
    assert sorted(a["box_id"] for a in result.loadAnns(result.getAnnIds())) == sorted(box_ids)
    assert [c["id"] for c in result.loadCats(result.getCatIds())] == [1]
