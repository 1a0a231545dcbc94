"""How many masks of an Open Images output FiftyOne would crop to another shape than the box.

FiftyOne keeps each Open Images mask cropped to ``mask[int(YMin*H):int(YMax*H),
int(XMin*W):int(XMax*W)]``. For every row of ``RUN/openimages/labels/segmentations.csv`` this
prints whether that crop has the input box's shape (from ``RUN/masks.jsonl``), with the edges as
written and with the edges ``x0/W``, ``(x1+1)/W`` printed with 6 decimals (the earlier output).

    python benchmarks/check_openimages_crops.py RUN
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path


def crop_shape(edges: list[float], width: int, height: int) -> tuple[int, int]:
    """(rows, columns) of FiftyOne's crop for normalised ``XMin, XMax, YMin, YMax``."""
    xmin, xmax, ymin, ymax = edges
    return (int(ymax * height) - int(ymin * height), int(xmax * width) - int(xmin * width))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a conversion's --output, with --format openimages")
    run = parser.parse_args().run
    sidecar = {}
    for line in (run / "masks.jsonl").read_text().splitlines():
        m = json.loads(line)
        ids = m["written_ids"]["openimages"]
        sidecar[(ids["ImageID"], ids["BoxID"])] = m
    with open(run / "openimages" / "labels" / "segmentations.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    wrong_six = wrong_written = 0
    for row in rows:
        m = sidecar[(row["ImageID"], row["BoxID"])]
        w, h = m["width"], m["height"]
        x0, y0, x1, y1 = m["box_xyxy"]
        box = (y1 - y0 + 1, x1 - x0 + 1)
        six = [float(f"{v:.6f}") for v in (x0 / w, (x1 + 1) / w, y0 / h, (y1 + 1) / h)]
        written = [float(row[k]) for k in ("BoxXMin", "BoxXMax", "BoxYMin", "BoxYMax")]
        wrong_six += crop_shape(six, w, h) != box
        wrong_written += crop_shape(written, w, h) != box
    print(f"{len(rows)} masks; FiftyOne's crop differs from the box: {wrong_six} with 6-decimal "
          f"edges, {wrong_written} with the edges as written")


if __name__ == "__main__":
    main()
