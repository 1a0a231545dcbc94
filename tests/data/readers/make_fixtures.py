"""Write the crafted reader fixtures in this folder (see README.md). Run from the repo root:

    .venv/bin/python tests/data/readers/make_fixtures.py

Needs numpy, Pillow and torchvision (for the COCO category list); the tests do not run it.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
MVAL = REPO / "tests" / "data" / "coco_mval"

SIZE = "<size><width>500</width><height>375</height><depth>3</depth></size>"


def _obj(name: str, xmin: str, ymin: str, xmax: str, ymax: str) -> str:
    return (f"<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated>"
            f"<difficult>0</difficult><bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin>"
            f"<xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>")


def _annotation(*objects: str, size: str = SIZE) -> str:
    return f"<annotation><folder>n01440764</folder>{size}{''.join(objects)}</annotation>\n"


def billion_laughs() -> str:
    lines = ['<?xml version="1.0"?>', "<!DOCTYPE annotation [", '<!ENTITY lol0 "lol">']
    for i in range(1, 10):
        lines.append(f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">')
    lines += ["]>", f"<annotation>{SIZE}<object><name>&lol9;</name></object></annotation>", ""]
    return "\n".join(lines)


def write_ilsvrc_bad() -> None:
    folder = HERE / "ilsvrc_bad" / "Annotations" / "CLS-LOC" / "train" / "n01440764"
    folder.mkdir(parents=True, exist_ok=True)
    good = _obj("n01440764", "64", "103", "369", "277")
    files = {
        "empty.xml": "",
        "malformed.xml": _annotation(good).replace("</annotation>", ""),
        "one_box_nonnumeric.xml": _annotation(good, _obj("n01440764", "12", "abc", "40", "50")),
        "one_box_missing_coord.xml": _annotation(
            _obj("n01440764", "12", "20", "40", "50").replace("<ymax>50</ymax>", ""), good),
        "all_boxes_bad.xml": _annotation(_obj("n01440764", "nan", "1", "2", "3")),
        "size_not_numeric.xml": _annotation(good, size=SIZE.replace("500", "wide")),
        "harmless_doctype.xml": '<?xml version="1.0"?>\n<!DOCTYPE annotation>\n'
                                + _annotation(good),
        "billion_laughs.xml": billion_laughs(),
    }
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    (folder / "billion_laughs_utf16.xml").write_bytes(
        billion_laughs().replace('<?xml version="1.0"?>',
                                 '<?xml version="1.0" encoding="UTF-16"?>').encode("utf-16"))


def write_openimages() -> None:
    folder = HERE / "openimages"
    folder.mkdir(exist_ok=True)
    # The 13-column file and the header-less class list of open-mmlab/mmdetection's tests.
    (folder / "oidv6-train-annotations-bbox_13col.csv").write_text(
        "ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax,IsOccluded,IsTruncated,"
        "IsGroupOf,IsDepiction,IsInside\n"
        "0001eeaf4aed83f9,xclick,/m/0cmf2,1,0.022673031,0.9642005,0.07103825,0.80054647,"
        "0,0,0,0,0\n")
    (folder / "class-descriptions-boxable_no-header.csv").write_text("/m/0cmf2,Airplane\n")
    real = (REPO / "tests/data/openimages/oidv6-train-annotations-bbox_excerpt.csv"
            ).read_text().splitlines()
    header, rows = real[0], real[1:]
    tail = rows[0].split(",", 1)[1]

    def row(image_id: str, source_row: str = tail) -> str:
        return f"{image_id},{source_row}"

    # Image ids: aaaa.. A, bbbb.. B, cccc.. C. A reappears at line 5, B at line 7.
    a, b, c = "aaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbb", "cccccccccccccccc"
    ungrouped = [header, row(a), row(a), row(b), row(a), row(c), row(b), ""]
    (folder / "ungrouped.csv").write_text("\n".join(ungrouped))
    fields = tail.split(",")  # Source,LabelName,Confidence,XMin,XMax,YMin,YMax,...

    def with_field(i: int, value: str) -> str:
        f = list(fields)
        f[i] = value
        return ",".join(f)

    bad = [header,
           row("dddddddddddddddd"),
           row("dddddddddddddddd", with_field(3, "abc")),      # XMin not a number
           row("dddddddddddddddd", with_field(6, "1.5")),      # YMax outside [0, 1]
           row("../../etc/passwd"),                            # unsafe ImageID
           row("eeeeeeeeeeeeeeee", with_field(4, "-0.1")),     # the only box is bad
           row("ffffffffffffffff"),
           ""]
    (folder / "bad_values.csv").write_text("\n".join(bad))


def write_kaggle() -> None:
    folder = HERE / "kaggle"
    folder.mkdir(exist_ok=True)
    # Train rows rebuilt from two real sample XMLs (one box; five boxes), Kaggle's format.
    (folder / "LOC_train_solution_from_xml.csv").write_text(
        "ImageId,PredictionString\n"
        + _kaggle_row("train/n01440764/n01440764_10040.xml")
        + _kaggle_row("train/n01440764/n01440764_12308.xml"))
    (folder / "bad_rows.csv").write_text(
        "ImageId,PredictionString\n"
        "n01440764_1,n01440764 1 2 3\n"                       # not groups of 5
        "n01440764_2,n01440764 1 2 3 4 n01440764 5 x 7 8\n"   # second box non-numeric
        "../n01440764_3,n01440764 1 2 3 4\n"                  # unsafe id
        "some_image,n01440764 1 2 3 4\n"                      # id neither train nor val
        "ILSVRC2012_val_00000001,../x 1 2 3 4\n"              # unsafe wnid as folder
        "n01440764_4,n01440764 1 2 3 4,extra\n")              # wrong field count


def _kaggle_row(rel: str) -> str:
    from xml.etree import ElementTree

    xml = REPO / "data/samples/ilsvrc_loc/Annotations/CLS-LOC" / rel
    root = ElementTree.parse(xml).getroot()
    parts = []
    for obj in root.iter("object"):
        bnd = obj.find("bndbox")
        parts.append(" ".join([obj.findtext("name")] + [bnd.findtext(t) for t in
                                                       ("xmin", "ymin", "xmax", "ymax")]))
    return f"{xml.stem},{' '.join(parts)} \n"


def write_coco_mval() -> None:
    """instances JSON for the 40 COCO-MVal images: one box each, the tight box of the GT mask."""
    from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights

    names = FasterRCNN_ResNet50_FPN_Weights.DEFAULT.meta["categories"]  # index = COCO id
    categories = [{"id": i, "name": n} for i, n in enumerate(names) if i and n != "N/A"]
    by_name = {c["name"]: c["id"] for c in categories}
    images, annotations = [], []
    with open(MVAL / "boxes_from_masks.csv", newline="") as f:
        for k, row in enumerate(csv.DictReader(f), start=1):
            box = [int(row[c]) for c in ("x_min", "y_min", "x_max", "y_max")]
            mask = np.asarray(Image.open(MVAL / row["mask"])) == 255
            rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
            assert box == [cols[0], rows[0], cols[-1], rows[-1]], row  # inclusive 0-based
            stem = row["image"].rsplit(".", 1)[0]
            name = stem.rsplit("_", 1)[0][:-2].replace("_", " ")
            coco_id = int(stem.rsplit("_", 1)[1])
            images.append({"id": coco_id, "file_name": row["image"],
                           "width": int(row["width"]), "height": int(row["height"])})
            w, h = box[2] - box[0] + 1, box[3] - box[1] + 1  # boxes.to_xywh
            annotations.append({"id": k, "image_id": coco_id, "category_id": by_name[name],
                                "bbox": [float(box[0]), float(box[1]), float(w), float(h)],
                                "area": float(w * h), "iscrowd": 0})
    out = {"info": {"description": "COCO-MVal subset: tight boxes of the GT masks"},
           "images": images, "annotations": annotations, "categories": categories}
    (HERE / "coco").mkdir(exist_ok=True)
    (HERE / "coco" / "instances_mval.json").write_text(json.dumps(out, indent=1) + "\n")


def write_coco_crafted() -> None:
    out = {
        "images": [
            {"id": 1, "file_name": "a.jpg", "width": 100, "height": 80},
            {"id": 2, "file_name": "../escape.jpg", "width": 100, "height": 80},
            {"id": 3, "file_name": "/etc/passwd", "width": 100, "height": 80},
            {"id": 4, "file_name": "sub/b.jpg", "width": 64, "height": 48},
        ],
        "annotations": [
            {"id": 11, "image_id": 1, "category_id": 1, "bbox": [10, 20, 30, 40], "iscrowd": 0},
            {"id": 12, "image_id": 1, "category_id": 1, "bbox": [0, 0, 100, 80], "iscrowd": 1},
            {"id": 13, "image_id": 1, "category_id": 2, "bbox": ["x", 0, 5, 5], "iscrowd": 0},
            {"id": 14, "image_id": 1, "category_id": 2, "bbox": [50.5, 10.2, 20.0, 9.8]},
            {"id": 21, "image_id": 2, "category_id": 1, "bbox": [1, 1, 5, 5], "iscrowd": 0},
            {"id": 99, "image_id": 77, "category_id": 1, "bbox": [1, 1, 5, 5], "iscrowd": 0},
        ],
        "categories": [{"id": 1, "name": "person"}, {"id": 2, "name": "bicycle"}],
    }
    (HERE / "coco").mkdir(exist_ok=True)
    (HERE / "coco" / "crafted.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    write_ilsvrc_bad()
    write_openimages()
    write_kaggle()
    write_coco_mval()
    write_coco_crafted()
