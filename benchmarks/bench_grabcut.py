"""Mask IoU and time per box: plain OpenCV GrabCut (rect mode) vs boxmask's GrabCut engine.

For every instance of the bundled COCO-MVal (40) and DAVIS (21) samples, the tight box of the
ground-truth mask (``boxes_from_masks.csv``, inclusive ``x_min..x_max``) goes to

* ``box``: the filled box itself (reference floor, no time);
* ``rect``: ``cv2.grabCut`` with ``GC_INIT_WITH_RECT`` on the full image, rect ``(x0, y0, w, h)``,
  5 iterations, ``cv2.setRNGSeed(0)`` before the call;
* ``engine``: ``GrabCutEngine`` with its defaults, or the options given with ``--opt key=value``;
* ``+1 click`` (``--click``): the engine again with one corrective click (positive on the
  interior-most missed object pixel or negative on the interior-most wrongly kept background
  pixel, whichever error is larger), as ``boxmask segment --click`` would pass it.

Prints per dataset and method the mean and median IoU, the mean wall-clock and CPU (process) time
per box, and for the engine the Spearman correlation with the true IoU of its score (colour-model
agreement) and of ``extras["stability"]``, then the worst instances. Both methods run in the same
loop, one box after the other, so machine load hits them alike; CPU time is the steadier figure
on a busy machine.

    python benchmarks/bench_grabcut.py
    python benchmarks/bench_grabcut.py --opt fill_holes=false --opt margin_frac=0.1
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from scipy.stats import spearmanr

from boxmask.engines import SegmentRequest, create_engine
from boxmask.imageio import decode_image
from boxmask.maskmath import mask_iou as iou
from boxmask.records import Click

ROOT = Path(__file__).resolve().parents[1]
DATASETS = {"coco_mval": ROOT / "tests/data/coco_mval", "davis": ROOT / "tests/data/davis"}


def load_instances(folder: Path) -> list[dict]:
    """Rows of ``boxes_from_masks.csv`` with the library box and the bool GT mask."""
    out = []
    with open(folder / "boxes_from_masks.csv", newline="") as f:
        for row in csv.DictReader(f):
            gt = np.asarray(Image.open(folder / row["mask"])) > 0  # COCO 255, DAVIS palette 1
            box = tuple(int(row[k]) for k in ("x_min", "y_min", "x_max", "y_max"))
            out.append({"name": row["image"], "image": folder / "img" / row["image"],
                        "box": box, "gt": gt})
    return out



def rect_grabcut(image_rgb: np.ndarray, box: tuple[int, int, int, int],
                 iterations: int = 5, seed: int = 0) -> np.ndarray:
    """The plain baseline: OpenCV GrabCut in rect mode on the whole image."""
    x0, y0, x1, y1 = box
    mask = np.zeros(image_rgb.shape[:2], np.uint8)
    bgd = np.zeros((1, 65), np.float64)
    fgd = np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(seed)
    bgr = np.ascontiguousarray(image_rgb[:, :, ::-1])
    try:
        cv2.grabCut(bgr, mask, (x0, y0, x1 - x0 + 1, y1 - y0 + 1), bgd, fgd, iterations,
                    cv2.GC_INIT_WITH_RECT)
    except cv2.error:  # e.g. a box covering the whole image: no background samples
        mask[y0:y1 + 1, x0:x1 + 1] = cv2.GC_PR_FGD
    return (mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)


def corrective_click(mask: np.ndarray, gt: np.ndarray) -> Click:
    """The click an annotator would add (NoC protocol): at the pixel farthest inside the larger
    error region, positive for missed object pixels, negative for wrongly kept background."""
    missed = (gt & ~mask).sum() >= (mask & ~gt).sum()
    err = (gt & ~mask) if missed else (mask & ~gt)
    dist = cv2.distanceTransform(np.pad(err, 1).astype(np.uint8), cv2.DIST_L2, 5)[1:-1, 1:-1]
    y, x = np.unravel_index(np.argmax(dist), dist.shape)
    return Click(float(x), float(y), bool(missed))


def parse_opt(text: str) -> tuple[str, object]:
    key, _, value = text.partition("=")
    low = value.lower()
    if low in ("true", "false"):
        return key, low == "true"
    for cast in (int, float):
        try:
            return key, cast(value)
        except ValueError:
            pass
    return key, value


def spearman(x: list[float], y: list[float]) -> float:
    if len(set(x)) < 2 or len(set(y)) < 2:
        return float("nan")
    return float(spearmanr(x, y).statistic)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    ap.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                    help="GrabCutEngine option (repeatable)")
    ap.add_argument("--no-rect", action="store_true", help="skip the rect-mode baseline")
    ap.add_argument("--click", action="store_true",
                    help="also report the engine's IoU after one corrective click")
    ap.add_argument("--worst", type=int, default=3, help="worst instances listed per dataset")
    ap.add_argument("--limit", type=int, default=0, help="first N instances per dataset (0 = all)")
    args = ap.parse_args()

    engine = create_engine("grabcut", **dict(parse_opt(o) for o in args.opt))
    print("engine:", engine.describe())
    rows = []
    for ds in args.datasets:
        instances = load_instances(DATASETS[ds])
        if args.limit:
            instances = instances[:args.limit]
        res: dict[str, list] = {k: [] for k in ("box", "rect", "engine", "t_rect", "t_engine",
                                                 "c_rect", "c_engine", "score", "stability",
                                                 "click", "names")}
        for inst in instances:
            rgb = decode_image(inst["image"]).rgb
            gt, box = inst["gt"], inst["box"]
            boxmask = np.zeros_like(gt)
            boxmask[box[1]:box[3] + 1, box[0]:box[2] + 1] = True
            res["box"].append(iou(boxmask, gt))
            if not args.no_rect:
                t, c = time.perf_counter(), time.process_time()
                m = rect_grabcut(rgb, box)
                res["t_rect"].append(time.perf_counter() - t)
                res["c_rect"].append(time.process_time() - c)
                res["rect"].append(iou(m, gt))
            t, c = time.perf_counter(), time.process_time()
            pred = engine.segment([SegmentRequest(rgb, np.array([box]))])[0][0]
            res["t_engine"].append(time.perf_counter() - t)
            res["c_engine"].append(time.process_time() - c)
            res["engine"].append(iou(pred.mask, gt))
            res["score"].append(pred.score)
            res["stability"].append(pred.extras.get("stability", 0.0))
            if args.click:
                req = SegmentRequest(rgb, np.array([box]),
                                     extra_clicks=[[corrective_click(pred.mask, gt)]])
                res["click"].append(iou(engine.segment([req])[0][0].mask, gt))
            res["names"].append(inst["name"])
        rows.append((ds, res))

    print(f"\n{'dataset':<10} {'method':<8} {'n':>3} {'mean IoU':>9} {'median':>7} "
          f"{'wall ms':>8} {'cpu ms':>7} {'rho(score)':>10} {'rho(stab)':>10}")
    for ds, res in rows:
        for method in ("box", "rect", "engine", "click"):
            v = res[method]
            if not v:
                continue
            wall, cpu = res.get(f"t_{method}"), res.get(f"c_{method}")
            ms = f"{1000 * np.mean(wall):8.0f} {1000 * np.mean(cpu):7.0f}" if wall else \
                f"{'-':>8} {'-':>7}"
            rho = rho_s = f"{'-':>10}"
            if method == "click":
                method = "+1 click"
            if method == "engine":
                rho = f"{spearman(res['score'], v):10.3f}"
                rho_s = f"{spearman(res['stability'], v):10.3f}"
            print(f"{ds:<10} {method:<8} {len(v):>3} {np.mean(v):9.3f} {np.median(v):7.3f} "
                  f"{ms} {rho} {rho_s}")
    for ds, res in rows:
        order = np.argsort(res["engine"])[:args.worst]
        print(f"\nworst {len(order)} on {ds} (engine IoU, rect IoU, score):")
        for i in order:
            rect = f"{res['rect'][i]:.3f}" if res["rect"] else "-"
            print(f"  {res['names'][i]:<36} {res['engine'][i]:.3f}  {rect}  {res['score'][i]:.3f}")


if __name__ == "__main__":
    main()
