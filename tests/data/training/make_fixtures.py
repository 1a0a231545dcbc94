"""Build the training-reader fixtures from the real samples in tests/data (deterministic).

Run from the repository root: ``.venv/bin/python tests/data/training/make_fixtures.py``.
See README.md in this folder for what each file is.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from scipy import sparse
from scipy.io import savemat

HERE = Path(__file__).parent
DATA = HERE.parent
VOC = DATA / "voc2012"
COCO_MVAL = DATA / "coco_mval"

VOC_ID = "2007_000063"
VOC_CLASSES = {1: 12, 2: 9}  # instance -> VOC class index (dog, chair), see SegmentationClass
COCO_IMAGES = ("bear00_000000243075", "cat00_000000197528", "dog00_000000068078",
               "giraffe00_000000302452")


def boundaries(mask: np.ndarray) -> sparse.csc_matrix:
    """Object boundary pixels (mask minus its 3x3 erosion) as a sparse matrix, like SBD's."""
    m = mask.astype(np.uint8)
    edge = m - cv2.erode(m, np.ones((3, 3), np.uint8))
    return sparse.csc_matrix(edge.astype(np.float64))


def make_sbd() -> None:
    root = HERE / "sbd" / "benchmark_RELEASE" / "dataset"
    for sub in ("img", "inst", "cls"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(VOC / "JPEGImages" / f"{VOC_ID}.jpg", root / "img" / f"{VOC_ID}.jpg")
    objects = np.array(Image.open(VOC / "SegmentationObject" / f"{VOC_ID}.png"))
    classes = np.array(Image.open(VOC / "SegmentationClass" / f"{VOC_ID}.png"))
    seg = np.where(objects == 255, 0, objects).astype(np.uint8)       # SBD has no void
    cls = np.where(classes == 255, 0, classes).astype(np.uint8)
    ids = sorted(v for v in np.unique(seg) if v)
    inst_bounds = np.empty((len(ids), 1), dtype=object)
    for i, v in enumerate(ids):
        inst_bounds[i, 0] = boundaries(seg == v)
    cats = np.array([[VOC_CLASSES[v]] for v in ids], dtype=np.uint8)
    for v in ids:  # the class of each instance, checked against SegmentationClass
        values, counts = np.unique(classes[seg == v], return_counts=True)
        assert values[np.argmax(counts)] == VOC_CLASSES[v], (v, values, counts)
    savemat(root / "inst" / f"{VOC_ID}.mat",
            {"GTinst": {"Segmentation": seg, "Boundaries": inst_bounds, "Categories": cats}},
            do_compression=True)
    cls_bounds = np.empty((20, 1), dtype=object)
    for c in range(1, 21):
        cls_bounds[c - 1, 0] = boundaries(cls == c)
    present = np.array([[c] for c in sorted(set(np.unique(cls)) - {0})], dtype=np.uint8)
    savemat(root / "cls" / f"{VOC_ID}.mat",
            {"GTcls": {"Boundaries": cls_bounds, "Segmentation": cls,
                       "CategoriesPresent": present}}, do_compression=True)
    (root / "train.txt").write_text(f"{VOC_ID}\n")
    (root / "val.txt").write_text("")


def polygons(mask: np.ndarray) -> list[list[float]]:
    """COCO polygons (outer contours, pixel-edge coordinates) of a binary mask."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_NONE)
    out = []
    for c in contours:
        if len(c) >= 3:
            out.append([float(v) + 0.5 for v in c.reshape(-1)])  # centres of boundary pixels
    return out


def make_coco() -> None:
    gt = json.loads((DATA / "eval" / "coco_mval_instances.json").read_text())
    by_name = {im["file_name"]: im for im in gt["images"]}
    images, anns = [], []
    for k, stem in enumerate(COCO_IMAGES):
        info = by_name[f"{stem}.jpg"]
        images.append(info)
        src = next(a for a in gt["annotations"] if a["image_id"] == info["id"])
        mask = np.array(Image.open(COCO_MVAL / "gt" / f"{stem}.png")) == 255
        seg = src["segmentation"] if k == 0 else polygons(mask)        # first one stays RLE
        anns.append({"id": len(anns) + 1, "image_id": info["id"], "category_id":
                     src["category_id"], "segmentation": seg, "area": src["area"],
                     "bbox": src["bbox"], "iscrowd": 0})
        if k == 1:  # a crowd region beside the cat: not a sample, void for the cat
            crowd = np.zeros_like(mask)
            crowd[:60, :80] = True
            crowd &= ~mask
            rle = mask_utils.encode(np.asfortranarray(crowd.astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")
            anns.append({"id": len(anns) + 1, "image_id": info["id"], "category_id":
                         src["category_id"], "segmentation": rle,
                         "area": int(crowd.sum()), "bbox": [0, 0, 80, 60], "iscrowd": 1})
    cats = [c for c in gt["categories"] if c["id"] in {a["category_id"] for a in anns}]
    out = HERE / "coco" / "instances_polygons.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))


if __name__ == "__main__":
    make_sbd()
    make_coco()
