"""Do tight boxes clean loose boxes? Box IoU with the ground-truth box, before and after.

On COCO-MVal (40 instances, ``tests/data/coco_mval``), each instance's GT box (the tight box of its
GT mask, inclusive pixels) is **grown** by ``--pads`` (a fraction of its width/height on each
side, clipped to the image) to stand for a loose input box. The engine segments that box; the
mask's tight box (``mask_xyxy``, what ``--write-tight-boxes`` writes) is compared with the GT box.

Printed per padding: mean and median box IoU with the GT box of the input box and of the tight
box, the share of boxes the tight box brings closer to the GT box, the share it makes worse, and
how many masks were empty (their input box is kept, as the writer does).

    python benchmarks/bench_tight_boxes.py                     # GrabCut, ~1 min on 2 CPU cores
    python benchmarks/bench_tight_boxes.py --engine fused --pads 0,0.1
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_engines import from_csv, padded  # noqa: E402

from boxmask.boxes import iou, mask_to_box  # noqa: E402
from boxmask.engines import SegmentRequest, create_engine  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--engine", default="grabcut")
    parser.add_argument("--pads", default="0,0.1,0.2", help="comma-separated paddings")
    args = parser.parse_args()
    instances = from_csv(ROOT / "tests" / "data" / "coco_mval")
    engine = create_engine(args.engine)
    print(f"engine {args.engine}, {len(instances)} COCO-MVal instances")
    print("pad   input IoU mean/median   tight IoU mean/median   closer  worse  empty")
    for pad in (float(p) for p in args.pads.split(",")):
        before, after, empty = [], [], 0
        for inst in instances:
            box = padded(inst["box"], pad, inst["image"].shape)
            (pred,), = engine.segment([SegmentRequest(inst["image"], np.array([box]))])
            tight = mask_to_box(pred.mask)
            if tight is None:
                empty += 1
                tight = box
            before.append(iou(box, inst["box"]))
            after.append(iou(tight, inst["box"]))
        b, a = np.array(before), np.array(after)
        closer, worse = np.mean(a > b + 1e-9), np.mean(a < b - 1e-9)
        print(f"{pad:<5} {b.mean():>9.3f} / {np.median(b):.3f}      {a.mean():>9.3f} / "
              f"{np.median(a):.3f}      {closer:>5.0%}  {worse:>5.0%}  {empty:>5}")
    engine.close()


if __name__ == "__main__":
    main()
