"""Build ``davis_instances.json`` and ``voc2012_boxes.json``: COCO files for the dev-data tables.

Run from the repository root: ``python tests/data/eval/make_eval_sources.py``. Deterministic: the
same masks and XMLs give the same bytes. See README.md in this folder.

* ``davis_instances.json``: one object per DAVIS frame of ``../davis`` (``gt > 0``, the
  interactive-segmentation protocol), with the mask as COCO RLE and its tight box as ``bbox``:
  the conversion source and the ground truth at once.
* ``voc2012_boxes.json``: the official XML boxes of the VOC image with a SegmentationObject PNG
  (``2007_000063``: dog, chair), in XML object order, as a conversion source (boxes only; the
  ground truth is the VOC folder itself).
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))

from boxmask.boxes import from_voc, to_xywh  # noqa: E402

DAVIS = HERE.parent / "davis"
VOC = HERE.parent / "voc2012"
VOC_IMAGES = ("2007_000063",)


def _dump(data: dict, path: Path) -> None:
    path.write_text(json.dumps(data, separators=(",", ":")) + "\n")


def davis() -> dict:
    images, annotations = [], []
    for ann_id, png in enumerate(sorted((DAVIS / "gt").glob("*.png")), start=1):
        gt = np.array(Image.open(png)) > 0
        h, w = gt.shape
        rle = mask_utils.encode(np.asfortranarray(gt.astype(np.uint8)))
        rle["counts"] = rle["counts"].decode("ascii")
        bbox = [float(v) for v in mask_utils.toBbox(rle)]
        images.append({"id": int(png.stem), "file_name": f"{png.stem}.jpg", "width": w,
                       "height": h})
        annotations.append({"id": ann_id, "image_id": int(png.stem), "category_id": 1,
                            "segmentation": rle, "area": int(gt.sum()), "bbox": bbox,
                            "iscrowd": 0})
    return {"info": {"description": "DAVIS subset: gt > 0 as one object per frame (see README)"},
            "images": images, "annotations": annotations,
            "categories": [{"id": 1, "name": "object", "supercategory": ""}]}


def voc() -> dict:
    images, annotations, names = [], [], []
    for number, stem in enumerate(VOC_IMAGES, start=1):
        root = ET.parse(VOC / "Annotations" / f"{stem}.xml").getroot()
        size = root.find("size")
        images.append({"id": number, "file_name": f"{stem}.jpg",
                       "width": int(size.findtext("width")),
                       "height": int(size.findtext("height"))})
        for obj in root.iter("object"):
            name = obj.findtext("name").strip()
            if name not in names:
                names.append(name)
            bb = obj.find("bndbox")
            box = from_voc(*(float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")))
            annotations.append({"id": len(annotations) + 1, "image_id": number,
                                "category_id": names.index(name) + 1, "bbox": to_xywh(box),
                                "iscrowd": 0})
    return {"info": {"description": "PASCAL VOC 2012 official XML boxes (see README)"},
            "images": images, "annotations": annotations,
            "categories": [{"id": i + 1, "name": n, "supercategory": ""}
                           for i, n in enumerate(names)]}


def main() -> None:
    _dump(davis(), HERE / "davis_instances.json")
    _dump(voc(), HERE / "voc2012_boxes.json")


if __name__ == "__main__":
    main()
