"""Evaluate a conversion run against ground-truth instance masks.

A run folder holds ``masks.jsonl`` (one line per mask: ``image_id``, ``image_path``, ``box_id``,
``index``, ``label``, ``label_name``, ``box_xyxy`` in the library convention, ``rle`` = COCO RLE
of the full-image mask, ...) and optionally ``errors.jsonl``. ``evaluate_run`` pairs every
predicted mask with a ground-truth instance and reports mask IoU and Boundary IoU.

Matching per ground-truth format (``gt_format``; the files are read by
:mod:`boxmask.quality.groundtruth`, which describes them)
------------------------------------------------------------------------------------------------
``coco``
    A COCO instances JSON. Matching: by annotation id when the prediction's ``box_id`` is the id
    of an annotation of the same image (the run was converted from that file), else by box IoU.
    Crowd annotations are never matched by box; a prediction matched to one by id is reported as
    ignored, as COCO's own evaluation ignores crowd regions.
``voc``
    A VOC-style folder (``SegmentationObject`` PNGs, ``Annotations`` XMLs). Matching: the
    prediction with ``index`` k is object k + 1. Void pixels (255) are excluded from intersection
    and union, as in the official VOC segmentation evaluation.
``mask-folder``
    ``<gt>/<image_id>.png`` per image, binary or instance-index. Matching: by box IoU.

Box-IoU matching is greedy and one-to-one per image: the pair with the highest IoU between the
prediction's input box and the GT box (COCO ``bbox``, else the instance's tight box) first, down to
``min_box_iou``.

Measures
--------
* mask IoU: ``|P & G| / |P | G|`` in pixels, void excluded. Equal to ``pycocotools.mask.iou``
  where there is no void.
* Boundary IoU (Cheng et al., "Boundary IoU: Improving Object-Centric Image Segmentation
  Evaluation", CVPR 2021; reference code ``bowenc0221/boundary-iou-api``): the IoU of the two
  masks' inner boundary bands, ``|(P_d & P) & (G_d & G)| / |(P_d & P) | (G_d & G)|``, where
  ``X_d & X`` are the pixels of X within distance d of its contour. As in the reference code the
  band is ``X - erode(X, 3x3, d times)`` with the image padded by one background pixel (so an
  object cut by the image border has a boundary there), i.e. the pixels of X whose chessboard
  distance to the nearest background pixel is <= d; ``d = max(1, round(0.02 * image diagonal))``.
  Void pixels are excluded from both bands.
* fraction of pairs with IoU >= 0.5 / 0.75 / 0.9; overall, per class (the GT class where the GT
  has classes, else the prediction's ``label_name``) and per box-size bucket (COCO area limits
  applied to the prediction's input box area: small < 32^2, medium < 96^2, large otherwise).

Unmatched predictions (with a reason) and unmatched GT instances are counted. GT instances count
only in images the run touched (a prediction or an error for the image): evaluating a run over a
subset of a large GT file does not count the rest as misses.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter, OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from ..atomic import atomic_write_text
from ..boxes import area as box_area
from ..boxes import int_box
from ..boxes import iou as box_iou
from ..maskmath import mask_iou
from ..records import BoxXYXY
from .groundtruth import (
    GT_FORMATS,
    VOID,
    CocoGT,
    FolderGT,
    GroundTruth,
    GTImage,
    GTInstance,
    VocGT,
    open_gt,
)

__all__ = [
    # ground truth (boxmask.quality.groundtruth), importable from here as before
    "GT_FORMATS", "VOID", "CocoGT", "FolderGT", "GroundTruth", "GTImage", "GTInstance", "VocGT",
    "open_gt",
    # evaluation
    "BOUNDARY_DILATION_RATIO", "IOU_THRESHOLDS", "MATCH_MODES", "MAX_LISTED", "MIN_BOX_IOU",
    "SIZE_BUCKETS", "boundary_dilation", "boundary_iou", "evaluate_run", "iter_jsonl",
    "mask_boundary", "mask_iou", "run_files", "size_bucket", "summary_lines", "write_eval",
]

log = logging.getLogger(__name__)

MATCH_MODES = ("auto", "id", "index", "iou")
IOU_THRESHOLDS = (0.5, 0.75, 0.9)
BOUNDARY_DILATION_RATIO = 0.02
"""Boundary IoU band width as a fraction of the image diagonal (the paper's default)."""
MIN_BOX_IOU = 0.5
"""Box-IoU matching: lowest IoU between a prediction's input box and a GT box that pairs them."""
SIZE_BUCKETS = (("small", 32**2), ("medium", 96**2), ("large", math.inf))
"""COCO area ranges (px), applied to the prediction's input box area."""
MAX_LISTED = 1000
"""At most this many unmatched predictions / GT instances are listed by id in the result."""


# ------------------------------------------------------------------ pixel measures

def _union_crop(a: np.ndarray, b: np.ndarray) -> tuple[slice, slice] | None:
    rows = np.flatnonzero(a.any(axis=1) | b.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero((a[rows[0]:rows[-1] + 1] | b[rows[0]:rows[-1] + 1]).any(axis=0))
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def boundary_dilation(height: int, width: int,
                      dilation_ratio: float = BOUNDARY_DILATION_RATIO) -> int:
    """Band width d in pixels: ``max(1, round(dilation_ratio * image diagonal))``."""
    return max(1, int(round(dilation_ratio * math.hypot(height, width))))


def mask_boundary(mask: np.ndarray, dilation: int) -> np.ndarray:
    """Inner boundary band of a 2-D bool mask: its pixels within chessboard distance ``dilation``
    of a background pixel, the area outside the array counting as background."""
    padded = np.pad(np.asarray(mask, dtype=bool), 1)
    eroded = cv2.erode(padded.view(np.uint8), np.ones((3, 3), np.uint8), iterations=dilation)
    return (padded & ~eroded.view(bool))[1:-1, 1:-1]


def boundary_iou(pred: np.ndarray, gt: np.ndarray, void: np.ndarray | None = None,
                 dilation_ratio: float = BOUNDARY_DILATION_RATIO) -> float:
    """Boundary IoU (Cheng et al. 2021) of two H x W bool masks; see the module docstring.

    Computed on the two masks' joint bounding box: outside it both masks are background, which the
    zero padding reproduces exactly, so the result equals the full-image computation.
    """
    d = boundary_dilation(gt.shape[0], gt.shape[1], dilation_ratio)
    crop = _union_crop(pred, gt)
    if crop is None:
        return 0.0
    bp = mask_boundary(pred[crop], d)
    bg = mask_boundary(gt[crop], d)
    return mask_iou(bp, bg, None if void is None else void[crop])


def size_bucket(box: BoxXYXY) -> str:
    """COCO size bucket of a library box by its pixel area."""
    a = box_area(box)
    return next(name for name, limit in SIZE_BUCKETS if a < limit)


# ------------------------------------------------------------------ the run

def run_files(run_dir: str | Path) -> tuple[Path, Path]:
    """``(masks.jsonl, errors.jsonl)`` of a run folder (or of the folder of a given masks file)."""
    p = Path(run_dir)
    masks = p if p.is_file() else p / "masks.jsonl"
    if not masks.is_file():
        raise FileNotFoundError(f"no masks.jsonl at {p}")
    return masks, masks.parent / "errors.jsonl"


def iter_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    """Records of a JSON-lines file; blank lines are skipped, broken lines logged and skipped."""
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                log.warning("%s:%d: not a JSON line, skipped", path, n)


def _r(v: float) -> float:
    return round(float(v), 6)


@dataclass
class _Acc:
    """Running sums for one group of matched pairs."""

    n: int = 0
    iou: float = 0.0
    biou: float = 0.0
    ge: list[int] = field(default_factory=lambda: [0] * len(IOU_THRESHOLDS))

    def add(self, iou: float, biou: float) -> None:
        self.n += 1
        self.iou += iou
        self.biou += biou
        for i, t in enumerate(IOU_THRESHOLDS):
            self.ge[i] += iou >= t

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"count": self.n}
        n = self.n
        out["mean_iou"] = _r(self.iou / n) if n else None
        out["mean_boundary_iou"] = _r(self.biou / n) if n else None
        for t, c in zip(IOU_THRESHOLDS, self.ge, strict=True):
            out[f"iou_ge_{t:g}"] = _r(c / n) if n else None
        return out


class _Evaluation:
    """State of one ``evaluate_run`` pass (images are processed one group at a time)."""

    def __init__(self, gt: GroundTruth, mode: str, *, fallback_iou: bool, min_box_iou: float,
                 dilation_ratio: float, include_pairs: bool) -> None:
        self.gt, self.mode, self.fallback_iou = gt, mode, fallback_iou
        self.min_box_iou, self.dilation_ratio = min_box_iou, dilation_ratio
        self.include_pairs = include_pairs
        self.cache: OrderedDict[str, GTImage] = OrderedDict()
        self.instances: dict[str, list[tuple[str, str, bool]]] = {}
        self.used: dict[str, set[str]] = {}
        self.counts: Counter[str] = Counter()
        self.errors_by_stage: Counter[str] = Counter()
        self.how: Counter[str] = Counter()
        self.overall = _Acc()
        self.per_class: dict[str, _Acc] = {}
        self.per_size = {name: _Acc() for name, _ in SIZE_BUCKETS}
        self.pairs: list[dict[str, Any]] = []
        self.unmatched_preds: list[dict[str, Any]] = []

    def _load(self, key: str) -> GTImage:
        img = self.cache.get(key)
        if img is None:
            img = self.gt.load(key)
            self.cache[key] = img
            while len(self.cache) > 4:
                self.cache.popitem(last=False)
            self.instances.setdefault(
                key, [(i.gt_id, i.label, i.crowd) for i in img.instances.values()])
            self.used.setdefault(key, set())
        else:
            self.cache.move_to_end(key)
        return img

    def _unmatched(self, p: dict[str, Any], reason: str) -> None:
        self.counts["unmatched_predictions"] += 1
        if len(self.unmatched_preds) < MAX_LISTED:
            self.unmatched_preds.append(
                {"image_id": p.get("image_id"), "box_id": p.get("box_id"), "reason": reason})

    def add_image(self, preds: list[dict[str, Any]]) -> None:
        self.counts["predictions"] += len(preds)
        key = self.gt.find(preds[0].get("image_id"), preds[0].get("image_path"))
        if key is None:
            for p in preds:
                self._unmatched(p, "image not in the ground truth")
            return
        img = self._load(key)
        by_box: list[dict[str, Any]] = []
        for p in preds:
            size = list(p["rle"]["size"])
            if size != [img.height, img.width]:
                self._unmatched(p, f"mask size {size[0]}x{size[1]} differs from the GT image "
                                   f"size {img.height}x{img.width}")
                continue
            if self.mode == "id":
                gid = self.gt.by_id(key, str(p.get("box_id")))
                if gid is None:
                    if self.fallback_iou:
                        by_box.append(p)
                    else:
                        self._unmatched(p, "box_id is no annotation id of this image")
                    continue
                self._take(p, img, gid, "id")
            elif self.mode == "index":
                self._take(p, img, str(int(p["index"]) + 1), "index")
            else:
                by_box.append(p)
        if by_box:
            self._match_boxes(by_box, img)

    def _take(self, p: dict[str, Any], img: GTImage, gid: str, how: str) -> None:
        inst = img.instances.get(gid)
        if inst is None:
            self._unmatched(p, f"no GT instance {gid} in this image")
        elif gid in self.used[img.key]:
            self._unmatched(p, f"GT instance {gid} is already matched")
        elif inst.crowd:
            self.used[img.key].add(gid)
            self.counts["ignored_crowd"] += 1
        else:
            self._pair(p, img, inst, how)

    def _match_boxes(self, preds: list[dict[str, Any]], img: GTImage) -> None:
        used = self.used[img.key]
        cands = [i for i in img.instances.values() if not i.crowd and i.gt_id not in used]
        scored = sorted(
            ((box_iou(tuple(p["box_xyxy"]), inst.box), pi, inst.gt_id)
             for pi, p in enumerate(preds) for inst in cands),
            key=lambda t: (-t[0], t[1], t[2]))
        taken: set[int] = set()
        for s, pi, gid in scored:
            if s < self.min_box_iou:
                break
            if pi in taken or gid in used:
                continue
            taken.add(pi)
            self._pair(preds[pi], img, img.instances[gid], "iou")
        for pi, p in enumerate(preds):
            if pi not in taken:
                self._unmatched(p, f"no unmatched GT box with box IoU >= {self.min_box_iou:g}")

    def _pair(self, p: dict[str, Any], img: GTImage, inst: GTInstance, how: str) -> None:
        pred = mask_utils.decode(p["rle"]).astype(bool)
        iou = mask_iou(pred, inst.mask, img.void)
        biou = boundary_iou(pred, inst.mask, img.void, self.dilation_ratio)
        box = int_box(p["box_xyxy"])
        bucket = size_bucket(box)
        label = inst.label or p.get("label_name") or str(p.get("label", ""))
        self.used[img.key].add(inst.gt_id)
        self.how[how] += 1
        self.overall.add(iou, biou)
        self.per_class.setdefault(label, _Acc()).add(iou, biou)
        self.per_size[bucket].add(iou, biou)
        if self.include_pairs:
            self.pairs.append({
                "image_id": p.get("image_id"), "box_id": p.get("box_id"), "gt_image": img.key,
                "gt_id": inst.gt_id, "label": label, "iou": _r(iou), "boundary_iou": _r(biou),
                "box_iou": _r(box_iou(box, inst.box)), "size": bucket, "match": how,
            })

    def add_error(self, e: dict[str, Any]) -> None:
        self.counts["errors"] += 1
        self.errors_by_stage[str(e.get("stage", "unknown"))] += 1
        key = self.gt.find(e.get("image_id"), e.get("image_path"))
        if key is not None and key not in self.instances:
            self._load(key)

    def result(self) -> dict[str, Any]:
        unmatched_gt: list[dict[str, Any]] = []
        n_gt = n_missed = 0
        for key in sorted(self.instances):
            for gid, label, crowd in self.instances[key]:
                if crowd:
                    continue
                n_gt += 1
                if gid not in self.used[key]:
                    n_missed += 1
                    if len(unmatched_gt) < MAX_LISTED:
                        unmatched_gt.append({"gt_image": key, "gt_id": gid, "label": label})
        counts = {
            "predictions": self.counts["predictions"],
            "matched": self.overall.n,
            "unmatched_predictions": self.counts["unmatched_predictions"],
            "ignored_crowd": self.counts["ignored_crowd"],
            "gt_instances": n_gt,
            "unmatched_gt": n_missed,
            "images_evaluated": len(self.instances),
            "errors": self.counts["errors"],
            "errors_by_stage": dict(sorted(self.errors_by_stage.items())),
        }
        out: dict[str, Any] = {
            "counts": counts,
            "gt_recall": _r(self.overall.n / n_gt) if n_gt else None,
            "overall": self.overall.summary(),
            "per_class": {k: a.summary() for k, a in sorted(self.per_class.items())},
            "per_size": {k: a.summary() for k, a in self.per_size.items()},
            "match_counts": dict(sorted(self.how.items())),
            "unmatched": {"predictions": self.unmatched_preds, "gt": unmatched_gt,
                          "listed_at_most": MAX_LISTED},
        }
        if self.include_pairs:
            out["pairs"] = self.pairs
        return out


def evaluate_run(run_dir: str | Path, gt_path: str | Path, gt_format: str, *,
                 match: str = "auto", min_box_iou: float = MIN_BOX_IOU,
                 dilation_ratio: float = BOUNDARY_DILATION_RATIO,
                 include_pairs: bool = True) -> dict[str, Any]:
    """Evaluate the masks of a run against ground truth; a JSON-able result dict.

    Args:
        run_dir: the run folder (with ``masks.jsonl``, optionally ``errors.jsonl``), or the
            ``masks.jsonl`` file itself. Lines of one image are expected to be consecutive.
        gt_path: COCO instances JSON, VOC root folder, or mask folder.
        gt_format: one of ``GT_FORMATS``.
        match: ``auto`` (COCO: annotation id, falling back to box IoU; VOC: index; mask folder:
            box IoU), ``id`` (COCO only, no fallback), ``index`` (prediction ``index`` k -> PNG
            value k + 1; VOC and mask folder) or ``iou``.
        min_box_iou: lowest box IoU that pairs a prediction with a GT instance.
        dilation_ratio: Boundary IoU band width as a fraction of the image diagonal.
        include_pairs: list every matched pair (ids, IoU, Boundary IoU) in ``result["pairs"]``.

    The result holds ``counts``, ``overall`` / ``per_class`` / ``per_size`` summaries (``count``,
    ``mean_iou``, ``mean_boundary_iou``, ``iou_ge_0.5`` / ``0.75`` / ``0.9`` fractions; ``None``
    for an empty group), ``gt_recall`` (matched / GT instances of the evaluated images),
    ``match_counts`` (pairs per matching rule), the unmatched ids with reasons, and settings.
    """
    if match not in MATCH_MODES:
        raise ValueError(f"unknown match mode {match!r}; choose from {', '.join(MATCH_MODES)}")
    gt = open_gt(gt_path, gt_format)
    mode = gt.match if match == "auto" else match
    if mode == "id" and gt.format != "coco":
        raise ValueError("match='id' needs COCO ground truth (annotation ids)")
    if mode == "index" and gt.format == "coco":
        raise ValueError("match='index' needs PNG ground truth (voc or mask-folder)")
    masks_path, errors_path = run_files(run_dir)
    ev = _Evaluation(gt, mode, fallback_iou=match == "auto", min_box_iou=min_box_iou,
                     dilation_ratio=dilation_ratio, include_pairs=include_pairs)
    for _, group in groupby(iter_jsonl(masks_path),
                            key=lambda r: (r.get("image_id"), r.get("image_path"))):
        ev.add_image(list(group))
    if errors_path.is_file():
        for e in iter_jsonl(errors_path):
            ev.add_error(e)
    result: dict[str, Any] = {
        "run": str(masks_path.parent),
        "gt": {"path": str(gt_path), "format": gt.format, "images": gt.num_images()},
        "settings": {"match": match, "match_used": mode, "min_box_iou": min_box_iou,
                     "boundary": "boundary_iou", "dilation_ratio": dilation_ratio,
                     "size_buckets_on": "input box area",
                     "iou_thresholds": list(IOU_THRESHOLDS)},
    }
    result.update(ev.result())
    o, c = result["overall"], result["counts"]
    log.info("evaluated %d of %d predictions against %d GT instances: mean IoU %s, "
             "mean Boundary IoU %s", c["matched"], c["predictions"], c["gt_instances"],
             o["mean_iou"], o["mean_boundary_iou"])
    return result


def write_eval(result: dict[str, Any], path: str | Path) -> Path:
    """Write ``result`` as JSON atomically; a folder ``path`` gets ``<path>/eval.json``."""
    path = Path(path)
    if path.is_dir():
        path = path / "eval.json"
    atomic_write_text(path, json.dumps(result, indent=1, allow_nan=False) + "\n")
    return path


def summary_lines(result: dict[str, Any]) -> list[str]:
    """A short human-readable table of an ``evaluate_run`` result."""
    def row(name: str, s: dict[str, Any]) -> str:
        if not s["count"]:
            return f"{name:<24} {0:>7}"
        return (f"{name:<24} {s['count']:>7} {s['mean_iou']:>8.4f} {s['mean_boundary_iou']:>8.4f}"
                + "".join(f" {s[f'iou_ge_{t:g}']:>7.3f}" for t in IOU_THRESHOLDS))

    c = result["counts"]
    lines = [f"{'group':<24} {'count':>7} {'mIoU':>8} {'mBIoU':>8}"
             + "".join(f" {f'>={t:g}':>7}" for t in IOU_THRESHOLDS),
             row("overall", result["overall"])]
    lines += [row(f"size:{k}", s) for k, s in result["per_size"].items()]
    lines += [row(f"class:{k}"[:24], s) for k, s in result["per_class"].items()]
    lines.append(f"predictions {c['predictions']}, matched {c['matched']}, unmatched "
                 f"{c['unmatched_predictions']}; GT instances {c['gt_instances']}, unmatched "
                 f"{c['unmatched_gt']}; errors {c['errors']}")
    return lines
