"""Mask quality, score quality and speed of the engines on the bundled dev data, tight and loose.

Instances: COCO-MVal (40, ``tests/data/coco_mval``), DAVIS (21 frames, ``gt > 0`` as one object,
``tests/data/davis``) and the two VOC 2012 objects of ``tests/data/voc2012`` (dog, chair; box =
tight box of the instance mask). Each instance's tight GT box (inclusive pixels) is used as it is
and **grown** by ``--pads`` (a fraction of its width/height on each side, clipped to the image):
padded boxes stand for the looser boxes of other datasets, so a rule tuned on tight boxes shows
whether it carries. Every engine gets the same boxes, one image per call, in one loop, so load on
the machine hits them alike.

Printed per padding, dataset and engine: mean IoU with the GT mask (mask pixels outside the box
count, GT pixels outside a padded box cannot occur), mean IoU per box size (COCO's small < 32²,
medium < 96², large px of box area), the Spearman correlation of the engine's score with the true
IoU, and seconds per box (engine only, wall clock). For ``fused``: how often each part was chosen.
Then, for the first network engine, bf16 against fp32 (mean mask IoU between the two, and the
speed ratio) when the CPU has native bf16 (or on CUDA).

    python benchmarks/bench_engines.py                              # ~6 min on 2 CPU cores
    python benchmarks/bench_engines.py --engines fused --pads 0,0.05 --datasets coco_mval
    python benchmarks/bench_engines.py --weights u2netp             # the small network
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from scipy.stats import spearmanr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_grabcut import load_instances  # noqa: E402

from boxmask.device import cpu_supports, resolve_device  # noqa: E402
from boxmask.engines import SegmentRequest, create_engine  # noqa: E402
from boxmask.maskmath import mask_iou  # noqa: E402

DATA = ROOT / "tests" / "data"
SIZES = (("small", 0, 32 ** 2), ("medium", 32 ** 2, 96 ** 2), ("large", 96 ** 2, np.inf))


def from_csv(folder: Path) -> list[dict[str, Any]]:
    """``bench_grabcut.load_instances`` with the images decoded (H x W x 3 uint8 RGB)."""
    return [{**inst, "image": np.asarray(Image.open(inst["image"]).convert("RGB"))}
            for inst in load_instances(folder)]


def voc() -> list[dict[str, Any]]:
    stem = "2007_000063"
    folder = DATA / "voc2012"
    image = np.asarray(Image.open(folder / "JPEGImages" / f"{stem}.jpg").convert("RGB"))
    objects = np.asarray(Image.open(folder / "SegmentationObject" / f"{stem}.png"))
    out = []
    for k in sorted(set(np.unique(objects)) - {0, 255}):
        gt = objects == k
        ys, xs = np.nonzero(gt)
        out.append({"name": f"{stem}#{k}", "image": image, "gt": gt,
                    "box": (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))})
    return out


DATASETS = {"coco_mval": lambda: from_csv(DATA / "coco_mval"),
            "davis": lambda: from_csv(DATA / "davis"), "voc2012": voc}


def padded(box: tuple[int, int, int, int], pad: float, shape: tuple[int, ...]) -> tuple:
    """``box`` grown by ``pad`` x its width (left and right) and height (top and bottom)."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0 + 1, y1 - y0 + 1
    return (max(int(round(x0 - pad * w)), 0), max(int(round(y0 - pad * h)), 0),
            min(int(round(x1 + pad * w)), shape[1] - 1), min(int(round(y1 + pad * h)),
                                                              shape[0] - 1))


def run(engine, instances: list[dict], pad: float) -> dict[str, Any]:
    ious, scores, areas, chosen, masks = [], [], [], Counter(), []
    seconds = 0.0
    for inst in instances:
        box = padded(inst["box"], pad, inst["image"].shape)
        started = time.perf_counter()
        (pred,), = engine.segment([SegmentRequest(inst["image"], np.array([box]))])
        seconds += time.perf_counter() - started
        ious.append(mask_iou(pred.mask, inst["gt"]))
        scores.append(pred.score)
        areas.append((box[2] - box[0] + 1) * (box[3] - box[1] + 1))
        masks.append(pred.mask)
        if "chosen" in pred.extras:
            chosen[pred.extras["chosen"]] += 1
    rho = spearmanr(scores, ious).correlation if len(set(scores)) > 1 else float("nan")
    by_size = {}
    for name, lo, hi in SIZES:
        sel = [i for i, a in zip(ious, areas, strict=True) if lo <= a < hi]
        by_size[name] = (float(np.mean(sel)) if sel else float("nan"), len(sel))
    return {"iou": float(np.mean(ious)), "rho": rho, "s_per_box": seconds / len(instances),
            "by_size": by_size, "chosen": dict(chosen), "masks": masks}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", default=",".join(DATASETS))
    p.add_argument("--engines", default="grabcut,u2net,fused")
    p.add_argument("--pads", default="0,0.05,0.15")
    p.add_argument("--weights", default="u2net", help="U²-Net weights of u2net and fused")
    p.add_argument("--device", default="auto")
    p.add_argument("--input-size", type=int, default=None,
                   help="U²-Net input side of u2net and fused (px; default: the engine's)")
    p.add_argument("--no-bf16", action="store_true", help="skip the bf16 comparison")
    args = p.parse_args(argv)
    network = {"u2net", "fused"}
    net_options = {"weights": args.weights, "device": args.device,
                   **({"input_size": args.input_size} if args.input_size else {})}
    engines = {name: create_engine(name, **(net_options if name in network else {}))
               for name in args.engines.split(",")}
    data = {name: DATASETS[name]() for name in args.datasets.split(",")}
    print("| pad | dataset | n | engine | mean IoU | small | medium | large | rho(score, IoU) "
          "| s/box | chosen |")
    print("| ---: | --- | ---: | --- |" + " ---: |" * 6 + " --- |")
    for pad in (float(v) for v in args.pads.split(",")):
        for ds, instances in data.items():
            for name, engine in engines.items():
                r = run(engine, instances, pad)
                sizes = " | ".join(f"{m:.3f} ({n})" if n else "-"
                                   for m, n in r["by_size"].values())
                chosen = ", ".join(f"{k} {v}" for k, v in sorted(r["chosen"].items())) or "-"
                print(f"| {pad:g} | {ds} | {len(instances)} | {name} | {r['iou']:.3f} | "
                      f"{sizes} | {r['rho']:.2f} | {r['s_per_box']:.3f} | {chosen} |",
                      flush=True)
    nets = [n for n in engines if n in network]
    device = resolve_device(args.device)
    if nets and not args.no_bf16 and (device.type == "cuda" or cpu_supports("bf16")):
        name = nets[0]
        bf16 = create_engine(name, **net_options, precision="bf16")
        print(f"\nbf16 against fp32 ({name}, tight boxes):")
        for ds, instances in data.items():
            a = run(engines[name], instances, 0.0)
            b = run(bf16, instances, 0.0)
            agree = np.mean([mask_iou(x, y) for x, y in zip(a["masks"], b["masks"],
                                                             strict=True)])
            print(f"  {ds}: mean IoU bf16 vs fp32 {agree:.4f}; s/box fp32 {a['s_per_box']:.3f}, "
                  f"bf16 {b['s_per_box']:.3f} (fp32/bf16 = {a['s_per_box'] / b['s_per_box']:.2f}"
                  f"); IoU with GT fp32 {a['iou']:.3f}, bf16 {b['iou']:.3f}")


if __name__ == "__main__":
    main()
