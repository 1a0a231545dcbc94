"""`boxmask convert` end to end on real sample data, in all three formats, through the CLI."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from boxmask.writers.textids import source_id

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "data" / "samples" / "ilsvrc_loc"
COCO_MVAL = REPO / "tests" / "data" / "coco_mval"
COCO_JSON = REPO / "tests" / "data" / "readers" / "coco" / "instances_mval.json"


def boxmask(*args: str, check_codes: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "boxmask", *args], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode in check_codes, (proc.returncode, proc.stdout, proc.stderr[-3000:])
    return proc


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def ilsvrc_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ilsvrc") / "out"
    boxmask("convert", "--source", "ilsvrc-loc", "--input", str(SAMPLE), "--engine", "grabcut",
            "--format", "pixel-imagenet", "--format", "coco", "--format", "openimages",
            "--shard-size", "20", "--output", str(out), "--no-progress")
    return out


def test_ilsvrc_sample_converts_to_every_format_with_one_mask_per_box(ilsvrc_run: Path) -> None:
    manifest = json.loads((ilsvrc_run / "manifest.json").read_text())
    counts = manifest["counts"]
    [software] = manifest["software"]  # one worker build made every shard
    assert software["opencv"] == cv2.__version__
    assert software["torch"] == torch.__version__.split("+")[0]
    assert counts["images"] == 50 and counts["boxes"] == 82
    assert counts["masks"] == 82 and counts["errors"] == 0
    sidecar = read_jsonl(ilsvrc_run / "masks.jsonl")
    assert len(sidecar) == 82
    assert len({(m["image_id"], m["box_id"]) for m in sidecar}) == 82
    assert all(m["engine"] == "grabcut" and m["inside_policy"] == "center" for m in sidecar)
    assert (ilsvrc_run / "errors.jsonl").read_text() == ""


def test_pixel_imagenet_pngs_hold_the_instance_masks_in_source_box_order(ilsvrc_run: Path) -> None:
    sidecar = read_jsonl(ilsvrc_run / "masks.jsonl")
    by_image: dict[str, list[dict]] = {}
    for m in sidecar:
        by_image.setdefault(m["image_id"], []).append(m)
    assert len(list((ilsvrc_run / "pixel-imagenet" / "n01440764").glob("*.png"))) == 50
    for image_id, masks in by_image.items():
        png = cv2.imread(str(ilsvrc_run / "pixel-imagenet" / "n01440764" / f"{image_id}.png"),
                         cv2.IMREAD_UNCHANGED)
        assert png.dtype == np.uint8 and png.shape == (224, 224)
        assert set(np.unique(png)) <= {0} | {m["index"] + 1 for m in masks}
        for m in masks:
            mask = mask_utils.decode(m["rle"]).astype(bool)
            # every pixel with this instance's value belongs to its mask (overlaps go to one owner)
            assert np.all(mask[png == m["index"] + 1])
            assert (png == m["index"] + 1).sum() >= 0.5 * mask.sum()
    labels = json.loads((ilsvrc_run / "pixel-imagenet" / "label-v1.json").read_text())
    assert labels == {"0": ["n01440764", "tench", 50]}


def test_coco_output_loads_in_pycocotools_and_matches_the_sidecar(ilsvrc_run: Path) -> None:
    coco = COCO(str(ilsvrc_run / "coco" / "instances.json"))
    assert len(coco.getImgIds()) == 50 and len(coco.getAnnIds()) == 82
    sidecar = {(m["image_path"], m["box_id"]): m for m in read_jsonl(ilsvrc_run / "masks.jsonl")}
    for ann in coco.loadAnns(coco.getAnnIds()):
        img = coco.loadImgs(ann["image_id"])[0]
        m = sidecar[(img["file_name"], ann["box_id"])]
        assert np.array_equal(coco.annToMask(ann), mask_utils.decode(m["rle"]))
        x0, y0, x1, y1 = m["box_xyxy"]
        assert ann["bbox"] == [x0, y0, x1 - x0 + 1, y1 - y0 + 1]
        assert 0.0 <= ann["score"] <= 1.0


def test_openimages_csv_rows_point_at_binary_masks(ilsvrc_run: Path) -> None:
    root = ilsvrc_run / "openimages"
    with open(root / "labels" / "segmentations.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 82
    assert (root / "labels" / "annotations-object-segmentation.csv").read_text() == \
        (root / "labels" / "segmentations.csv").read_text()
    sidecar = {(m["image_id"], m["box_id"]): m for m in read_jsonl(ilsvrc_run / "masks.jsonl")}
    renamed = 0
    for row in rows:
        m = sidecar[(source_id(row["ImageID"], "ImageID"), source_id(row["BoxID"], "BoxID"))]
        assert m["written_ids"]["openimages"]["BoxID"] == row["BoxID"]
        renamed += row["BoxID"] != m["box_id"]  # all-digit hex box ids get a prefix
        png = cv2.imread(str(root / "labels" / "masks" / row["ImageID"][0].upper()
                             / row["MaskPath"]), cv2.IMREAD_GRAYSCALE)
        assert np.array_equal(png > 0, mask_utils.decode(m["rle"]).astype(bool))
        x0, y0, x1, y1 = m["box_xyxy"]
        assert int(float(row["BoxXMin"]) * 224) == x0
        assert int(float(row["BoxXMax"]) * 224) == x1 + 1
        assert int(float(row["BoxYMin"]) * 224) == y0
        assert int(float(row["BoxYMax"]) * 224) == y1 + 1
        assert (root / "data" / f"{row['ImageID']}.jpg").is_file()
        clicks = [c.split() for c in row["Clicks"].split(";")]
        assert [c[2] for c in clicks] == ["1", "0", "0", "0", "0"]
    assert renamed == json.loads((ilsvrc_run / "manifest.json").read_text())["outputs"][
        "openimages"]["renamed_ids"]["BoxID"]


def test_declared_size_mismatch_rescales_boxes_with_a_warning(ilsvrc_run: Path) -> None:
    """The sample XMLs declare the original size (e.g. 500x375) of JPEGs squashed to 224x224."""
    first = json.loads(next(iter((ilsvrc_run / "state" / "results").glob("*.jsonl")))
                       .read_text().splitlines()[0])
    assert any("boxes rescaled" in w for w in first["warnings"])
    record = first["record"]
    xml_box = record["boxes"][0]["xyxy"]  # 0-based, in the declared 500x375 frame
    sx, sy = 224 / record["width"], 224 / record["height"]
    got = first["masks"][0]["box_xyxy"]
    assert got[0] == int(np.floor(xml_box[0] * sx + 1e-6))
    assert got[3] == int(np.ceil((xml_box[3] + 1) * sy - 1e-6)) - 1


def test_rerunning_convert_resumes_and_changes_nothing(ilsvrc_run: Path) -> None:
    before = (ilsvrc_run / "coco" / "instances.json").read_bytes()
    state = ilsvrc_run / "state"
    recorded = {p.relative_to(state): (p.read_bytes(), p.stat().st_mtime_ns)
                for d in ("done", "results") for p in (state / d).iterdir()}
    proc = boxmask("convert", "--source", "ilsvrc-loc", "--input", str(SAMPLE), "--engine",
                   "grabcut", "--format", "pixel-imagenet", "--format", "coco", "--format",
                   "openimages", "--shard-size", "20", "--output", str(ilsvrc_run),
                   "--no-progress")
    assert "done: 50 images" in proc.stderr
    assert (ilsvrc_run / "coco" / "instances.json").read_bytes() == before
    # nothing was converted again: the same results and done markers, untouched
    assert {p.relative_to(state): (p.read_bytes(), p.stat().st_mtime_ns)
            for d in ("done", "results") for p in (state / d).iterdir()} == recorded


def test_other_settings_on_an_existing_output_are_refused_unless_forced(tmp_path: Path) -> None:
    out = tmp_path / "out"
    base = ["convert", "--source", "coco", "--input", str(COCO_JSON), "--images-root",
            str(COCO_MVAL / "img"), "--format", "coco", "--output", str(out), "--no-progress",
            "--limit", "3"]
    boxmask(*base, "--engine", "box")
    proc = boxmask(*base, "--engine", "grabcut", check_codes=(1,))
    assert "other settings" in proc.stderr and "engine" in proc.stderr
    boxmask(*base, "--engine", "grabcut", "--force")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["engine"]["name"] == "grabcut" and manifest["counts"]["masks"] == 3


def test_coco_source_round_trips_ids_and_categories(tmp_path: Path) -> None:
    out = tmp_path / "out"
    boxmask("convert", "--source", "coco", "--input", str(COCO_JSON), "--images-root",
            str(COCO_MVAL / "img"), "--format", "coco", "--engine", "box", "--output", str(out),
            "--no-progress")
    src = json.loads(COCO_JSON.read_text())
    coco = COCO(str(out / "coco" / "instances.json"))
    assert sorted(coco.getImgIds()) == sorted(i["id"] for i in src["images"])
    assert sorted(coco.getAnnIds()) == sorted(a["id"] for a in src["annotations"])
    for a in src["annotations"]:
        ours = coco.loadAnns(a["id"])[0]
        assert ours["category_id"] == a["category_id"] and ours["image_id"] == a["image_id"]
        assert ours["bbox"] == pytest.approx(a["bbox"], abs=1.0)
    assert {c["id"] for c in coco.loadCats(coco.getCatIds())} >= {a["category_id"]
                                                                  for a in src["annotations"]}


def test_openimages_source_with_real_images_converts(tmp_path: Path) -> None:
    """Open Images box CSV (normalised XMin,XMax,YMin,YMax) over real COCO-MVal photos."""
    images = tmp_path / "images"
    images.mkdir()
    header = ("ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax,IsOccluded,IsTruncated,"
              "IsGroupOf,IsDepiction,IsInside")
    lines = [header]
    with open(COCO_MVAL / "boxes_from_masks.csv", newline="") as f:
        rows = list(csv.DictReader(f))[:6]
    for i, r in enumerate(rows):
        image_id = f"{i:016x}"
        shutil.copy(COCO_MVAL / "img" / r["image"], images / f"{image_id}.jpg")
        w, h = int(r["width"]), int(r["height"])
        x0, y0, x1, y1 = (int(r[k]) for k in ("x_min", "y_min", "x_max", "y_max"))
        lines.append(f"{image_id},xclick,/m/0test,1,{x0 / w:.6f},{(x1 + 1) / w:.6f},"
                     f"{y0 / h:.6f},{(y1 + 1) / h:.6f},0,0,0,0,0")
    csv_path = tmp_path / "boxes.csv"
    csv_path.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    boxmask("convert", "--pipeline", str(REPO / "pipelines" / "openimages_to_masks.toml"),
            "--input", str(csv_path), "--images-root", str(images), "--engine", "grabcut",
            "--output", str(out), "--no-progress")
    sidecar = read_jsonl(out / "masks.jsonl")
    assert len(sidecar) == 6
    for m, r in zip(sidecar, rows, strict=True):
        assert m["box_xyxy"] == [int(r[k]) for k in ("x_min", "y_min", "x_max", "y_max")]
        gt = cv2.imread(str(COCO_MVAL / r["mask"]), cv2.IMREAD_GRAYSCALE) > 127
        pred = mask_utils.decode(m["rle"]).astype(bool)
        assert (gt & pred).sum() / (gt | pred).sum() > 0.3
    with open(out / "openimages" / "labels" / "segmentations.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 6


def test_pipeline_presets_apply_and_flags_override_them(tmp_path: Path) -> None:
    out = tmp_path / "out"
    boxmask("convert", "--pipeline", str(REPO / "pipelines" / "coco_boxes_to_rle.toml"),
            "--input", str(COCO_JSON), "--images-root", str(COCO_MVAL / "img"), "--engine", "box",
            "--limit", "2", "--output", str(out), "--no-progress")
    settings = json.loads((out / "plan.json").read_text())["contract"]["settings"]
    assert settings["input_format"] == "coco" and settings["formats"] == ["coco"]
    assert settings["engine"] == "box" and settings["limit"] == 2


def test_segment_writes_one_mask_png(tmp_path: Path) -> None:
    with open(COCO_MVAL / "boxes_from_masks.csv", newline="") as f:
        r = next(row for row in csv.DictReader(f) if row["image"].startswith("bear"))
    out = tmp_path / "m.png"
    box = ",".join(r[k] for k in ("x_min", "y_min", "x_max", "y_max"))
    proc = boxmask("segment", str(COCO_MVAL / "img" / r["image"]), "--box", box, "--engine",
                   "grabcut", "--output", str(out))
    info = json.loads(proc.stdout)
    pred = cv2.imread(str(out), cv2.IMREAD_GRAYSCALE) > 0
    gt = cv2.imread(str(COCO_MVAL / r["mask"]), cv2.IMREAD_GRAYSCALE) > 127
    assert info["area"] == pred.sum()
    assert (gt & pred).sum() / (gt | pred).sum() > 0.7


def test_every_command_has_complete_help() -> None:
    from click.testing import CliRunner

    from boxmask.cli import cli

    runner = CliRunner()
    top = runner.invoke(cli, ["--help"])
    assert top.exit_code == 0
    for name, command in cli.commands.items():
        assert name in top.output
        res = runner.invoke(cli, [name, "--help"])
        assert res.exit_code == 0, name
        for param in command.params:
            if param.param_type_name == "option":
                assert param.help, f"{name} {param.opts[0]} has no help text"
                assert param.opts[-1] in res.output


def test_inside_point_policy_and_its_options_are_part_of_the_contract(tmp_path: Path) -> None:
    out = tmp_path / "out"
    base = ["convert", "--source", "coco", "--input", str(COCO_JSON), "--images-root",
            str(COCO_MVAL / "img"), "--format", "coco", "--engine", "grabcut", "--limit", "2",
            "--inside-point", "iterate", "--output", str(out), "--no-progress"]
    boxmask(*base, "--inside-option", "max_rounds=2")
    plan = json.loads((out / "plan.json").read_text())
    assert plan["contract"]["settings"]["inside_options"] == {"max_rounds": 2}
    assert plan["contract"]["inside_policy"]["name"] == "iterate"
    sidecar = read_jsonl(out / "masks.jsonl")
    assert {m["inside_policy"] for m in sidecar} == {"iterate"}
    assert all("inside_rounds" in m["metrics"] for m in sidecar)
    proc = boxmask(*base, "--inside-option", "max_rounds=3", check_codes=(1,))
    assert "max_rounds" in proc.stderr
    proc = boxmask(*base, "--stage1-weights", "x.pth", check_codes=(2,))
    assert "--inside-point stage1" in proc.stderr
