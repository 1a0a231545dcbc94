"""A small real conversion output for the review tests, written file by file in the run format.

Images: the 40 COCO-MVal and 21 DAVIS images of ``tests/data``. Every image gets two masks for
the box drawn tight around its ground-truth object: the ground truth itself (box ``gt``) and a copy
(box ``alt``) that is either intact or damaged in a way the quality flags should catch: eroded,
shifted, emptied, or with a blob pasted outside the box. One more line names an image that is not
on disk (a dataset moved after conversion). Scores: IoU of the mask with the ground truth minus a
seeded jitter (a stand-in for an engine's confidence); metrics: ``mask_metrics``.

``write_run`` writes ``plan.json``, ``labels.json``, ``masks.jsonl``, ``errors.jsonl`` and
``manifest.json`` (a merged run); ``write_progress`` writes the same results as an in-progress run
(``state/done`` markers and ``state/results`` files, no ``masks.jsonl``).
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from boxmask.boxes import mask_to_box
from boxmask.labels import LabelMap
from boxmask.masks import encode_rle, rle_box
from boxmask.quality.metrics import mask_metrics
from boxmask.records import Box, Click, ErrorRecord, ImageRecord, ImageResult, MaskResult

DATA = Path(__file__).parents[1] / "data"
IMAGES_ROOT = DATA
DAMAGES = ("intact", "eroded", "intact", "shifted", "intact", "emptied", "intact", "blob")
"""Damage of the ``alt`` mask of image ``i``: ``DAMAGES[i % len(DAMAGES)]``."""
MISSING_IMAGE = "coco_mval/img/moved_away.jpg"


@dataclass
class GTObject:
    image_id: str
    image_path: str
    label: str
    name: str
    mask: np.ndarray


def gt_objects() -> list[GTObject]:
    """The 61 ground-truth objects (COCO-MVal: the 255-valued instance; DAVIS: gt > 0)."""
    out = []
    with open(DATA / "coco_mval" / "boxes_from_masks.csv", newline="") as f:
        for row in csv.DictReader(f):
            name, coco_id = re.fullmatch(r"(.+?)\d\d_(\d+)\.jpg", row["image"]).groups()
            mask = np.asarray(Image.open(DATA / "coco_mval" / row["mask"])) == 255
            out.append(GTObject(coco_id, f"coco_mval/img/{row['image']}", f"coco:{name}",
                                name.replace("_", " "), mask))
    with open(DATA / "davis" / "boxes_from_masks.csv", newline="") as f:
        for row in csv.DictReader(f):
            mask = np.asarray(Image.open(DATA / "davis" / row["mask"])) > 0
            out.append(GTObject(f"davis_{Path(row['image']).stem}", f"davis/img/{row['image']}",
                                "davis:object", "davis object", mask))
    return out


def damage(mask: np.ndarray, kind: str, box: tuple[int, int, int, int]) -> np.ndarray:
    """``mask`` damaged as ``kind`` (see ``DAMAGES``)."""
    x0, y0, x1, y1 = box
    bw, bh = x1 - x0 + 1, y1 - y0 + 1
    if kind == "intact":
        return mask.copy()
    if kind == "eroded":
        k = max(3, min(bw, bh) // 6) | 1
        return cv2.erode(mask.astype(np.uint8), np.ones((k, k), np.uint8)).astype(bool)
    if kind == "shifted":
        dx, dy = bw // 3, bh // 4
        h, w = mask.shape
        m = np.zeros_like(mask)
        m[dy:, dx:] = mask[:h - dy, :w - dx]
        return m
    if kind == "emptied":
        return np.zeros_like(mask)
    if kind == "blob":
        m = mask.copy()
        h, w = mask.shape
        r = max(6, min(bw, bh) // 3)
        # beside the box on the roomier side, fully outside it
        cx = x1 + r + 4 if w - 1 - x1 > x0 else x0 - r - 4
        cv2.circle(m.view(np.uint8), (int(np.clip(cx, 0, w - 1)), (y0 + y1) // 2), r, 1, -1)
        return m
    raise ValueError(kind)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 0.0


def build_results() -> list[ImageResult]:
    """The image results of the run, in order (one read error first, like a real run)."""
    rng = np.random.default_rng(7)
    results = [ImageResult(record=ImageRecord(image_id="broken", image_path=""),
                           errors=[ErrorRecord("read", "annotation line 3: no image id",
                                               location="boxes.csv:3")])]
    objects = gt_objects()
    for i, obj in enumerate(objects):
        box = mask_to_box(obj.mask)
        h, w = obj.mask.shape
        x0, y0, x1, y1 = box
        clicks = [Click((x0 + x1) / 2, (y0 + y1) / 2, True, "inside"),
                  Click(x0, y0, False, "corner"), Click(x1, y1, False, "corner")]
        kind = DAMAGES[i % len(DAMAGES)]
        masks = []
        for k, (box_id, m) in enumerate((("gt", obj.mask), ("alt", damage(obj.mask, kind, box)))):
            jitter = rng.uniform(0.0, 0.2) if box_id == "gt" else rng.uniform(0.0, 0.45)
            score = round(max(0.0, _iou(m, obj.mask) - jitter), 6)
            masks.append(MaskResult(box_id=box_id, label=obj.label, index=k, box_xyxy=box,
                                    rle=encode_rle(m), score=score, clicks=clicks,
                                    metrics=mask_metrics(m, box, score=score)))
        record = ImageRecord(image_id=obj.image_id, image_path=obj.image_path,
                             boxes=[Box(m.box_id, m.label, m.index, m.box_xyxy) for m in masks])
        errors = []
        if i == 5:
            errors.append(ErrorRecord("box", "box is 0x3 px", obj.image_id, "tiny_box"))
        results.append(ImageResult(record=record, width=w, height=h, masks=masks, errors=errors))
    first = results[1]
    moved = ImageRecord(image_id="moved", image_path=MISSING_IMAGE)
    results.append(ImageResult(record=moved, width=first.width, height=first.height,
                               masks=[MaskResult(**{**first.masks[0].__dict__})]))
    return results


def labels_of(results: list[ImageResult]) -> LabelMap:
    labels = LabelMap()
    names = {o.label: o.name for o in gt_objects()}
    for r in results:
        for m in r.masks:
            labels.add(m.label, names[m.label])
    return labels


def _plan(images_root: Path) -> dict:
    return {"contract": {"settings": {"images_root": str(images_root), "inside_point": "center",
                                      "exif": "auto", "formats": ["coco", "pixel-imagenet"]},
                         "engine": {"name": "test-engine"}},
            "shards": []}


def sidecar_lines(results: list[ImageResult], labels: LabelMap) -> list[dict]:
    """``masks.jsonl`` lines, written out key by key as the sidecar format documents them."""
    lines = []
    for r in results:
        for m in r.masks:
            d = m.to_json()
            lines.append({
                "image_id": r.record.image_id, "image_path": r.record.image_path,
                "width": r.width, "height": r.height, "box_id": d["box_id"], "index": d["index"],
                "label": d["label"], "label_name": labels.name(d["label"]),
                "box_xyxy": d["box_xyxy"],
                "mask_xyxy": None if (b := rle_box(m.rle)) is None else [int(v) for v in b],
                "engine": "test-engine", "inside_policy": "center",
                "clicks": d["clicks"], "score": d["score"], "metrics": d["metrics"],
                "rle": d["rle"], "files": {}, "written_ids": {}})
    return lines


def error_lines(results: list[ImageResult]) -> list[dict]:
    return [{"image_id": e.image_id, "box_id": e.box_id, "stage": e.stage, "reason": e.reason,
             "source": e.location} for r in results for e in r.errors]


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(x) + "\n" for x in rows), encoding="utf-8")


def write_run(run: Path, results: list[ImageResult], *, images_root: Path = IMAGES_ROOT) -> Path:
    """A merged run folder."""
    run.mkdir(parents=True, exist_ok=True)
    labels = labels_of(results)
    (run / "plan.json").write_text(json.dumps(_plan(images_root)))
    labels.save(run / "labels.json")
    _jsonl(run / "masks.jsonl", sidecar_lines(results, labels))
    _jsonl(run / "errors.jsonl", error_lines(results))
    images = sum(1 for r in results if r.record.image_path)
    (run / "manifest.json").write_text(json.dumps({"complete": True,
                                                   "counts": {"images": images}}))
    return run


def write_progress(run: Path, results: list[ImageResult], *, shards: int = 3,
                   done: int | None = None, images_root: Path = IMAGES_ROOT) -> Path:
    """An in-progress run: ``results`` split into ``shards`` shards, the first ``done`` of them
    (all by default) marked done; the others have a results file but no marker."""
    run.mkdir(parents=True, exist_ok=True)
    (run / "plan.json").write_text(json.dumps(_plan(images_root)))
    labels_of(results).save(run / "labels.json")
    (run / "state" / "done").mkdir(parents=True)
    (run / "state" / "results").mkdir(parents=True)
    done = shards if done is None else done
    for s, part in enumerate(np.array_split(np.arange(len(results)), shards)):
        name = f"{s:06d}.token{s}.jsonl"
        _jsonl(run / "state" / "results" / name, [results[i].to_json() for i in part])
        if s < done:
            images = sum(1 for i in part if results[i].record.image_path)
            (run / "state" / "done" / f"{s:06d}.json").write_text(
                json.dumps({"shard": s, "results": name, "images": images}))
    return run
