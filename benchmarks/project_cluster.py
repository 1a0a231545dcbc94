"""Projected time to convert ILSVRC-LOC and Open Images with IOG on 1 and 8 GPUs.

Nothing here runs on a GPU. The script measures on this machine what a GPU does not change and
states every figure it assumes about the GPU, so the projection can be redone with other
assumptions (``--gpu-tflops``, ``--gpu-utilisation``, ``--cores-per-gpu``) or replaced by a
measurement (``bench_iog.py --device cuda``).

Measured here, per box or per image, in CPU-seconds of one core:

* **network work**: GFLOP of one 512^2 crop on the fine path (``torch.utils.flop_counter``, the
  official network; the same count ``bench_iog.py`` reports);
* **host work per box**: the IOG engine end to end on real COCO-MVal images (crop, guidance
  maps, batching, paste-back, threshold, stability score), with a network of the same interface
  so small that its forward is negligible (its own forward time is measured and subtracted), plus
  the mask's RLE and PNG encoding as the writers do;
* **decode per image**: the project's checked decoder on the same JPEGs.

Assumed (printed with the result): the GPU's sustained bf16 rate for ResNet-101 / PSP
convolutions at batch 32-64 (``--gpu-tflops`` x ``--gpu-utilisation``), host cores per GPU
(``--cores-per-gpu``, each runs decoding and host work of its share), boxes per image of each set,
and the planner's rate (``bench_plan.py``'s measured figure, ``--plan-boxes-per-s``).

A GPU's time per box is ``max(network, host / cores)``: decoding and host work overlap the GPU
(prefetch threads, several workers per GPU), so the slower side sets the pace. Planning runs once
before the workers; merge is streamed and not modelled.

    python benchmarks/project_cluster.py
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from boxmask import guidance as G
from boxmask.engines.iog import IOGEngine
from boxmask.imageio import decode_image
from boxmask.masks import encode_binary_png, encode_rle
from boxmask.models import build_iog
from boxmask.models.config import IOGConfig
from boxmask.models.iog import IOGNetwork

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "helpers"))
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_iog import count_gflop  # noqa: E402
from iog_cases import COCO_MVAL, coco_mval_requests  # noqa: E402

DATASETS = {  # name: (boxes, images)
    "ILSVRC-LOC train (0.6M boxes)": (600_000, 544_546),
    "Open Images V7 train (14.6M boxes)": (14_610_229, 1_743_042),
}


class ZeroLogits(IOGNetwork):
    """The engine's network interface at no cost: all-zero fine logits (a tiny IOG network
    underneath, so the engine's checks and inference forms see a real module)."""

    def fine_logits(self, x: torch.Tensor, guidance: torch.Tensor | None = None) -> torch.Tensor:
        return x.new_zeros(x.shape[0], 1, x.shape[2], x.shape[3])


def host_seconds_per_box(n_images: int, batch: int) -> tuple[float, float, int]:
    """(host s/box of the engine with numpy preprocessing, of which the preprocessing, boxes).

    Host work is everything the engine and the writers do besides the network: crop, guidance
    maps, batching, paste-back, threshold, stability score, RLE and PNG encoding."""
    tiny = IOGConfig(width=4, blocks=(1, 1, 1, 1), psp_features=8, decoder_channels=8)
    engine = IOGEngine.from_network(ZeroLogits(tiny).eval(), device="cpu", batch_size=batch,
                                    mode="eager", preprocess="numpy", num_threads=1)
    requests = coco_mval_requests(n_images)
    engine.segment(requests[:2])  # warm-up
    t = time.perf_counter()
    predictions = engine.segment(requests)
    total = time.perf_counter() - t
    boxes = sum(len(r.boxes) for r in requests)
    t = time.perf_counter()
    for r in requests:
        for box in r.boxes:
            x0, y0, x1, y1 = (int(v) for v in box)
            G.preprocess_box(r.image, box, ((x0 + x1) / 2, (y0 + y1) / 2))
    preprocess = (time.perf_counter() - t) / boxes
    t = time.perf_counter()
    for image_predictions in predictions:
        for p in image_predictions:
            encode_rle(p.mask)
            encode_binary_png(p.mask)
    encode = (time.perf_counter() - t) / boxes
    return total / boxes + encode, preprocess, boxes


def decode_seconds_per_image(n_images: int) -> float:
    paths = sorted((COCO_MVAL / "img").iterdir())[:n_images]
    decode_image(paths[0])
    t = time.perf_counter()
    for p in paths:
        decode_image(p)
    return (time.perf_counter() - t) / len(paths)


def hms(seconds: float) -> str:
    h, rest = divmod(int(round(seconds)), 3600)
    return f"{h} h {rest // 60:02d} min" if h else f"{rest // 60} min {rest % 60:02d} s"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=24, help="COCO-MVal images measured")
    ap.add_argument("--gpu-tflops", type=float, default=989.0,
                    help="the GPU's dense bf16 peak, TFLOP/s (H100 SXM: 989)")
    ap.add_argument("--gpu-utilisation", type=float, default=0.35,
                    help="share of the peak sustained by the network's convolutions")
    ap.add_argument("--cores-per-gpu", type=int, default=16)
    ap.add_argument("--plan-boxes-per-s", type=float, default=75_000,
                    help="planner rate (bench_plan.py: 75k boxes/s wall for 14M boxes on 2 "
                         "idle cores)")
    ap.add_argument("--gpus", default="1,8")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    gflop, _ = count_gflop(build_iog(), torch.device("cpu"))
    host, preprocess, boxes = host_seconds_per_box(args.images, batch=8)
    decode = decode_seconds_per_image(args.images)
    network_s = gflop / (args.gpu_tflops * 1e3 * args.gpu_utilisation)
    print(f"measured on {args.images} COCO-MVal images ({boxes} boxes), one core:")
    print(f"  network: {gflop:.1f} GFLOP per 512^2 crop (fine path)")
    print(f"  host work: {host * 1e3:.1f} ms per box with numpy preprocessing, of which "
          f"{preprocess * 1e3:.1f} ms the crop and guidance maps (on the GPU with the torch "
          f"preprocessing the engine uses on CUDA)")
    print(f"  decode: {decode * 1e3:.1f} ms per image")
    print("assumed:")
    print(f"  GPU: {args.gpu_tflops:.0f} TFLOP/s bf16 peak x {args.gpu_utilisation:.0%} "
          f"sustained = {network_s * 1e3:.2f} ms per crop")
    print(f"  {args.cores_per_gpu} host cores per GPU; planning at "
          f"{args.plan_boxes_per_s:,.0f} boxes/s")
    print("  GPU-side preprocessing removes the crop and guidance maps from the host work")
    print()
    gpus = [int(g) for g in args.gpus.split(",")]
    print("| set | boxes/image | GPU ms/box | host ms/box per GPU | bound | planning | "
          + " | ".join(f"{g} GPU{'s' if g > 1 else ''}" for g in gpus) + " |")
    print("|---" * (6 + len(gpus)) + "|")
    for name, (n_boxes, n_images) in DATASETS.items():
        per_box_host = (host - preprocess + decode * n_images / n_boxes) / args.cores_per_gpu
        per_box = max(network_s, per_box_host)
        bound = "GPU" if network_s >= per_box_host else "host CPU"
        plan = n_boxes / args.plan_boxes_per_s
        times = [hms(plan + n_boxes * per_box / g) for g in gpus]
        print(f"| {name} | {n_boxes / n_images:.2f} | {network_s * 1e3:.2f} | "
              f"{per_box_host * 1e3:.2f} | {bound} | {hms(plan)} | " + " | ".join(times) + " |")


if __name__ == "__main__":
    main()
