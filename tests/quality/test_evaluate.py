"""Evaluation of a run's masks against real ground truth (COCO-MVal, DAVIS, PASCAL VOC)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from scipy import ndimage

from boxmask.boxes import mask_to_box
from boxmask.quality.evaluate import (
    boundary_dilation,
    boundary_iou,
    evaluate_run,
    mask_iou,
    summary_lines,
    write_eval,
)

DATA = Path(__file__).parents[1] / "data"
COCO_GT = DATA / "eval" / "coco_mval_instances.json"
DAVIS = DATA / "davis"
VOC = DATA / "voc2012"

# pycocotools 2.0 with numpy 2 warns on every decode; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}


def _perturb(mask: np.ndarray, i: int) -> np.ndarray:
    """Erode (even i) or dilate (odd i) by 1-3 px with a 3x3 kernel: IoU known to be < 1."""
    op = cv2.erode if i % 2 == 0 else cv2.dilate
    return op(mask.astype(np.uint8), np.ones((3, 3), np.uint8), iterations=1 + i % 3).astype(bool)


def _line(image_id: str, image_path: str, box_id: str, index: int, box, mask: np.ndarray,
          label: str = "x") -> dict:
    h, w = mask.shape
    return {"image_id": image_id, "image_path": image_path, "width": w, "height": h,
            "box_id": box_id, "index": index, "label": label, "label_name": label,
            "box_xyxy": list(box), "engine": "test", "clicks": [], "score": 1.0, "metrics": {},
            "rle": _rle(mask), "files": []}


def _write_run(run: Path, lines: list[dict], errors: list[dict] = ()) -> Path:
    run.mkdir(parents=True, exist_ok=True)
    (run / "masks.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    if errors:
        (run / "errors.jsonl").write_text("".join(json.dumps(x) + "\n" for x in errors))
    return run


@pytest.fixture(scope="module")
def coco_gt() -> dict:
    return json.loads(COCO_GT.read_text())


def _coco_run(run: Path, coco_gt: dict, *, box_ids: str = "ann") -> tuple[Path, dict]:
    """A run over COCO-MVal: perturbed GT masks, input box = the GT mask's tight box."""
    lines, preds = [], {}
    for i, (im, ann) in enumerate(zip(coco_gt["images"], coco_gt["annotations"], strict=True)):
        gt = mask_utils.decode(ann["segmentation"]).astype(bool)
        pred = _perturb(gt, i)
        box_id = str(ann["id"]) if box_ids == "ann" else f"b{i:07x}"
        lines.append(_line(str(im["id"]), f"val2017/{im['file_name']}", box_id, 0,
                           mask_to_box(gt), pred))
        preds[box_id] = (pred, ann)
    return _write_run(run, lines), preds


def test_coco_iou_equals_pycocotools_for_every_matched_pair(tmp_path, coco_gt):
    run, _ = _coco_run(tmp_path / "run", coco_gt)
    result = evaluate_run(run, COCO_GT, "coco")
    assert result["counts"]["matched"] == 40
    assert result["match_counts"] == {"id": 40}
    preds = {json.loads(x)["box_id"]: json.loads(x) for x in (run / "masks.jsonl").open()}
    anns = {str(a["id"]): a for a in coco_gt["annotations"]}
    for pair in result["pairs"]:
        p, a = preds[pair["box_id"]], anns[pair["gt_id"]]
        assert pair["box_id"] == pair["gt_id"]
        expected = mask_utils.iou([p["rle"]], [a["segmentation"]], [0])[0, 0]
        assert pair["iou"] == pytest.approx(expected, abs=1e-6)
        assert pair["iou"] < 1.0
    ious = [p["iou"] for p in result["pairs"]]
    assert result["overall"]["mean_iou"] == pytest.approx(np.mean(ious), abs=1e-5)
    assert result["overall"]["iou_ge_0.9"] == pytest.approx(np.mean(np.array(ious) >= 0.9))
    assert result["counts"]["unmatched_gt"] == 0


def test_coco_run_from_another_source_is_matched_by_file_name_and_box(tmp_path, coco_gt):
    by_id = evaluate_run(_coco_run(tmp_path / "a", coco_gt)[0], COCO_GT, "coco")
    run, preds = _coco_run(tmp_path / "b", coco_gt, box_ids="hash")
    by_box = evaluate_run(run, COCO_GT, "coco")
    assert by_box["match_counts"] == {"iou": 40}
    for pair in by_box["pairs"]:  # every prediction found its own image's annotation
        assert pair["gt_id"] == str(preds[pair["box_id"]][1]["id"])
    assert by_box["overall"] == by_id["overall"]
    with pytest.raises(ValueError):
        evaluate_run(run, COCO_GT, "coco", match="index")


def test_per_class_uses_coco_category_names_and_size_buckets_use_the_input_box(tmp_path, coco_gt):
    run, _ = _coco_run(tmp_path / "run", coco_gt)
    result = evaluate_run(run, COCO_GT, "coco")
    assert "traffic light" in result["per_class"] and "sports ball" in result["per_class"]
    assert sum(c["count"] for c in result["per_class"].values()) == 40
    # independent box areas: the CSV of tight boxes shipped with the data (inclusive x/y max)
    buckets = {"small": 0, "medium": 0, "large": 0}
    with open(DATA / "coco_mval" / "boxes_from_masks.csv") as f:
        for row in csv.DictReader(f):
            a = ((int(row["x_max"]) - int(row["x_min"]) + 1)
                 * (int(row["y_max"]) - int(row["y_min"]) + 1))
            buckets["small" if a < 32**2 else "medium" if a < 96**2 else "large"] += 1
    assert {k: v["count"] for k, v in result["per_size"].items()} == buckets
    assert buckets["small"] >= 1  # the subset does exercise the small bucket
    text = "\n".join(summary_lines(result))
    assert "overall" in text and "size:small" in text


def test_unmatched_predictions_and_missed_gt_are_counted_with_reasons(tmp_path, coco_gt):
    _, preds = _coco_run(tmp_path / "full", coco_gt, box_ids="hash")
    lines = [json.loads(x) for x in (tmp_path / "full" / "masks.jsonl").open()]
    dropped = lines[:3]  # these images failed: their errors are recorded instead
    kept = lines[3:]
    far = kept[0]
    x0, y0, x1, y1 = far["box_xyxy"]
    h, w = far["rle"]["size"]
    far["box_xyxy"] = [0, 0, min(x1 - x0, w - 1) // 4, min(y1 - y0, h - 1) // 4]  # box elsewhere
    stranger = dict(kept[1], image_id="999", image_path="val2017/not_in_gt.jpg", box_id="zz")
    errors = [{"stage": "engine", "reason": "boom", "image_id": d["image_id"]} for d in dropped]
    errors.append({"stage": "decode", "reason": "bad jpeg", "image_id": "12345678"})
    run = _write_run(tmp_path / "run", kept + [stranger], errors)
    result = evaluate_run(run, COCO_GT, "coco")
    c = result["counts"]
    assert c["predictions"] == 38
    assert c["matched"] == 36
    assert c["unmatched_predictions"] == 2
    reasons = {u["box_id"]: u["reason"] for u in result["unmatched"]["predictions"]}
    assert "not in the ground truth" in reasons["zz"]
    assert "box IoU" in reasons[far["box_id"]]
    assert c["gt_instances"] == 40  # the 3 failed images are evaluated too
    assert c["unmatched_gt"] == 4
    assert c["errors"] == 4 and c["errors_by_stage"] == {"decode": 1, "engine": 3}
    assert result["gt_recall"] == pytest.approx(36 / 40)


def _chessboard_boundary(mask: np.ndarray, d: int) -> np.ndarray:
    """Independent form of the Boundary-IoU band: mask pixels whose chessboard distance to the
    nearest background pixel (outside the image counts as background) is at most d."""
    dist = ndimage.distance_transform_cdt(np.pad(mask, 1), metric="chessboard")[1:-1, 1:-1]
    return mask & (dist <= d)


def test_boundary_iou_matches_the_distance_definition_on_real_masks(coco_gt):
    for i, ann in enumerate(coco_gt["annotations"][:12]):
        gt = mask_utils.decode(ann["segmentation"]).astype(bool)
        pred = _perturb(gt, i)
        d = boundary_dilation(*gt.shape)
        assert d == round(0.02 * np.hypot(*gt.shape))
        bg, bp = _chessboard_boundary(gt, d), _chessboard_boundary(pred, d)
        expected = (bg & bp).sum() / (bg | bp).sum()
        assert boundary_iou(pred, gt) == pytest.approx(expected, abs=1e-12)
        # a perturbation of a few pixels costs at least as much on the boundary as on the area
        assert boundary_iou(pred, gt) <= mask_iou(pred, gt)
    assert boundary_iou(gt, gt) == 1.0


def test_boundary_counts_the_image_border_as_boundary():
    mask = np.zeros((100, 100), bool)
    mask[:, :50] = True  # touches the image on three sides
    band = _chessboard_boundary(mask, 2)
    assert band[:, 0].all() and band[0, 10] and not band[50, 10]
    shifted = np.zeros_like(mask)
    shifted[:, :48] = True
    bg, bp = band, _chessboard_boundary(shifted, 2)
    assert boundary_iou(shifted, mask, dilation_ratio=2 / np.hypot(100, 100)) == pytest.approx(
        (bg & bp).sum() / (bg | bp).sum())


def test_davis_instance_pngs_are_matched_by_box_and_report_direct_iou(tmp_path):
    # 7 of the 21 DAVIS PNGs hold 2-4 instances (values 1..4): each prediction must find its own
    lines, direct = [], {}
    for png in sorted((DAVIS / "gt").glob("*.png")):
        values = np.array(Image.open(png))
        h, w = values.shape
        for v in range(1, int(values.max()) + 1):
            gt = values == v
            pred = cv2.dilate(gt.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
            x0, y0, x1, y1 = mask_to_box(gt)
            box = (max(x0 - 2, 0), max(y0 - 2, 0), min(x1 + 2, w - 1), min(y1 + 2, h - 1))
            box_id = f"{png.stem}-{v}"
            lines.append(_line(png.stem, f"img/{png.stem}.jpg", box_id, v - 1, box, pred, "obj"))
            direct[box_id] = (str(v), (pred & gt).sum() / (pred | gt).sum())
    assert len(lines) > 21
    result = evaluate_run(_write_run(tmp_path / "run", lines), DAVIS / "gt", "mask-folder")
    assert result["counts"]["matched"] == len(lines)
    assert result["match_counts"] == {"iou": len(lines)}
    assert result["counts"]["unmatched_gt"] == 0
    for pair in result["pairs"]:
        gt_id, iou = direct[pair["box_id"]]
        assert pair["gt_id"] == gt_id
        assert pair["iou"] == pytest.approx(iou, abs=1e-6)
        assert pair["label"] == "obj"  # no GT classes: the prediction's label name


def test_coco_mval_gt_folder_is_read_as_binary_masks(tmp_path, coco_gt):
    run, _ = _coco_run(tmp_path / "run", coco_gt)
    as_folder = evaluate_run(run, DATA / "coco_mval" / "gt", "mask-folder")
    as_coco = evaluate_run(run, COCO_GT, "coco")
    assert as_folder["counts"]["matched"] == 40
    assert as_folder["overall"]["mean_iou"] == as_coco["overall"]["mean_iou"]


def _voc():
    seg = np.array(Image.open(VOC / "SegmentationObject" / "2007_000063.png"))
    return seg, seg == 255


def test_voc_void_pixels_are_left_out_of_iou(tmp_path):
    seg, void = _voc()
    dog, chair = seg == 1, seg == 2
    # the dog grown into the void band around it: the extra pixels are all void
    grown = cv2.dilate(dog.astype(np.uint8), np.ones((3, 3), np.uint8), iterations=4).astype(bool)
    dog_pred = dog | (grown & void)
    assert (dog_pred & ~dog).sum() > 500
    chair_pred = _perturb(chair, 2)  # eroded by 3 px
    lines = [
        _line("2007_000063", "JPEGImages/2007_000063.jpg", "a", 0, mask_to_box(dog), dog_pred),
        _line("2007_000063", "JPEGImages/2007_000063.jpg", "b", 1, mask_to_box(chair),
              chair_pred),
    ]
    result = evaluate_run(_write_run(tmp_path / "run", lines), VOC, "voc")
    pairs = {p["box_id"]: p for p in result["pairs"]}
    assert pairs["a"]["label"] == "dog" and pairs["b"]["label"] == "chair"
    assert pairs["a"]["iou"] == 1.0
    ignoring_void = mask_utils.iou([_rle(dog_pred)], [_rle(dog)], [0])[0, 0]
    assert ignoring_void < 0.97  # what the IoU would be if void counted as background
    expected = (chair_pred & chair & ~void).sum() / ((chair_pred | chair) & ~void).sum()
    assert pairs["b"]["iou"] == pytest.approx(expected, abs=1e-6)
    assert pairs["b"]["iou"] < 1.0
    assert set(result["per_class"]) == {"dog", "chair"}


def test_voc_prediction_index_k_is_object_k_plus_1(tmp_path):
    seg, _ = _voc()
    dog = seg == 1
    # the dog's mask sent as box index 1 is compared with object 2, the chair
    lines = [_line("2007_000063", "x/2007_000063.jpg", "a", 1, mask_to_box(dog), dog)]
    result = evaluate_run(_write_run(tmp_path / "run", lines), VOC, "voc")
    (pair,) = result["pairs"]
    assert pair["gt_id"] == "2" and pair["label"] == "chair" and pair["iou"] < 0.1
    assert result["counts"]["unmatched_gt"] == 1
    by_box = evaluate_run(tmp_path / "run", VOC, "voc", match="iou")
    assert by_box["pairs"][0]["label"] == "dog" and by_box["pairs"][0]["iou"] == 1.0


def test_coco_polygons_uncompressed_rle_and_crowd(tmp_path):
    h, w = 60, 80
    poly = [[10.0, 10.0, 50.0, 10.0, 50.0, 40.0, 10.0, 40.0]]
    crowd = np.zeros((h, w), np.uint8)
    crowd[45:58, 5:70] = 1
    crowd_rle = mask_utils.encode(np.asfortranarray(crowd))
    gt = {
        "images": [{"id": 7, "file_name": "a.jpg", "width": w, "height": h}],
        "categories": [{"id": 1, "name": "thing"}],
        "annotations": [
            {"id": 11, "image_id": 7, "category_id": 1, "segmentation": poly, "iscrowd": 0,
             "bbox": [10, 10, 40, 30], "area": 1200},
            {"id": 12, "image_id": 7, "category_id": 1, "iscrowd": 1, "area": int(crowd.sum()),
             "bbox": [5, 45, 65, 13],
             "segmentation": {"size": [h, w], "counts": _uncompressed(crowd)}},
        ],
    }
    assert _uncompressed_decodes(gt["annotations"][1]["segmentation"], crowd_rle, h, w)
    gt_path = tmp_path / "gt.json"
    gt_path.write_text(json.dumps(gt))
    poly_mask = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(poly, h, w))).astype(bool)
    lines = [_line("7", "a.jpg", "11", 0, (10, 10, 49, 39), poly_mask),
             _line("7", "a.jpg", "12", 1, (5, 45, 69, 57), crowd.astype(bool))]
    result = evaluate_run(_write_run(tmp_path / "run", lines), gt_path, "coco")
    assert [p["iou"] for p in result["pairs"]] == [1.0]
    assert result["counts"]["ignored_crowd"] == 1
    assert result["counts"]["gt_instances"] == 1 and result["counts"]["unmatched_gt"] == 0


def _uncompressed(mask: np.ndarray) -> list[int]:
    """COCO uncompressed RLE counts (column-major runs, starting with background)."""
    flat = mask.flatten(order="F")
    runs, value, n = [], 0, 0
    for v in flat:
        if v == value:
            n += 1
        else:
            runs.append(n)
            value, n = v, 1
    runs.append(n)
    return runs


def _uncompressed_decodes(seg: dict, rle: dict, h: int, w: int) -> bool:
    return bool((mask_utils.decode(mask_utils.frPyObjects(seg, h, w))
                 == mask_utils.decode(rle)).all())


def test_mask_of_another_size_is_not_scored(tmp_path, coco_gt):
    im, ann = coco_gt["images"][0], coco_gt["annotations"][0]
    gt = mask_utils.decode(ann["segmentation"]).astype(bool)
    small = cv2.resize(gt.astype(np.uint8), (gt.shape[1] // 2, gt.shape[0] // 2)).astype(bool)
    lines = [_line(str(im["id"]), im["file_name"], str(ann["id"]), 0, mask_to_box(small), small)]
    result = evaluate_run(_write_run(tmp_path / "run", lines), COCO_GT, "coco")
    assert result["counts"]["matched"] == 0
    assert "differs from the GT image size" in result["unmatched"]["predictions"][0]["reason"]


def test_write_eval_writes_eval_json_atomically(tmp_path, coco_gt):
    run, _ = _coco_run(tmp_path / "run", coco_gt)
    result = evaluate_run(run, COCO_GT, "coco")
    path = write_eval(result, run)
    assert path == run / "eval.json"
    assert json.loads(path.read_text()) == result
    assert sorted(p.name for p in run.iterdir()) == ["eval.json", "masks.jsonl"]


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError):
        evaluate_run(tmp_path, COCO_GT, "yolo")
    with pytest.raises(FileNotFoundError):
        evaluate_run(tmp_path, COCO_GT, "coco")
    with pytest.raises(ValueError):
        evaluate_run(tmp_path, COCO_GT, "coco", match="nearest")
