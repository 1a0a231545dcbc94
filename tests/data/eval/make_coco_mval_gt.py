"""Build ``coco_mval_instances.json``: a COCO instances file for the masks in ``../coco_mval``.

Run from the repository root: ``python tests/data/eval/make_coco_mval_gt.py``. Deterministic: the
same masks give the same bytes. See README.md in this folder for what is (and is not) official.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "coco_mval"
OUT = HERE / "coco_mval_instances.json"

# Official COCO 2017 category ids of the 40 classes in the subset.
CATEGORY_IDS = {
    "airplane": 5, "backpack": 27, "baseball bat": 39, "bear": 23, "bench": 15, "bird": 16,
    "book": 84, "bowl": 51, "bus": 6, "car": 3, "cat": 17, "chair": 62, "couch": 63, "cup": 47,
    "dog": 18, "elephant": 22, "fork": 48, "giraffe": 25, "handbag": 31, "hot dog": 58,
    "kite": 38, "laptop": 73, "motorcycle": 4, "orange": 55, "parking meter": 14, "pizza": 59,
    "refrigerator": 82, "sandwich": 54, "sheep": 20, "skateboard": 41, "snowboard": 36,
    "sports ball": 37, "suitcase": 33, "teddy bear": 88, "tie": 32, "toilet": 70,
    "traffic light": 10, "truck": 8, "umbrella": 28, "wine glass": 46,
}
NAME_RE = re.compile(r"^(?P<cls>[a-z_]+)\d\d_(?P<id>\d{12})$")


def main() -> None:
    images, annotations, used = [], [], set()
    for ann_id, png in enumerate(sorted((SRC / "gt").glob("*.png")), start=1):
        m = NAME_RE.match(png.stem)
        name, image_id = m["cls"].replace("_", " "), int(m["id"])
        gt = np.array(Image.open(png)) == 255
        h, w = gt.shape
        rle = mask_utils.encode(np.asfortranarray(gt.astype(np.uint8)))
        rle["counts"] = rle["counts"].decode("ascii")
        x, y, bw, bh = (float(v) for v in mask_utils.toBbox(rle))
        images.append({"id": image_id, "file_name": f"{png.stem}.jpg", "width": w, "height": h})
        annotations.append({
            "id": ann_id, "image_id": image_id, "category_id": CATEGORY_IDS[name],
            "segmentation": rle, "area": int(gt.sum()), "bbox": [x, y, bw, bh], "iscrowd": 0,
        })
        used.add(name)
    categories = [{"id": CATEGORY_IDS[n], "name": n, "supercategory": ""} for n in sorted(used)]
    data = {"info": {"description": "COCO-MVal subset GT masks as COCO RLE (see README.md)"},
            "images": images, "annotations": annotations, "categories": categories}
    OUT.write_text(json.dumps(data, separators=(",", ":")) + "\n")


if __name__ == "__main__":
    main()
