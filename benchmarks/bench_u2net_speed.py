"""How fast the U²-Net engines can be on this CPU: the network's arithmetic, the machine's
arithmetic rate, the measured forward pass, and whole ``convert`` runs.

Printed:

1. The CPU and its instruction-set features, and the fp32 (and bf16, where native) rate of a
   large matrix product on the threads given: the practical ceiling of a convolutional network
   here (oneDNN's convolutions are matrix products).
2. Per input side (``--sizes``): U²-Net's GFLOP per crop (torch's flop counter; a multiply-add is
   2 FLOP), the fp32 forward pass in seconds per crop (channels_last, batch 1 and 4, the threads
   given), the rate that is, and the **floor**: GFLOP / the matrix-product rate, the time no fp32
   implementation of the same network reaches on these cores. bf16 where the CPU has it natively.
3. ``--convert``: ``boxmask convert --engine fused`` of the bundled ILSVRC-LOC sample (50 images,
   process start, model load, decode and output included) in fp32 and bf16, with the default
   workers (one single-threaded worker per core): wall seconds per box, and the fp32/bf16 ratio.

The input side changes the masks; what it does to mean IoU on the dev sets is measured by
``bench_engines.py --input-size N``.

    python benchmarks/bench_u2net_speed.py                      # about 3 minutes on 2 cores
    python benchmarks/bench_u2net_speed.py --sizes 320 --convert
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_iog import cpu_features, cpu_model, gemm_roof, timed  # noqa: E402

from boxmask.device import autocast, cpu_supports  # noqa: E402
from boxmask.models.u2net import load_u2net  # noqa: E402
from boxmask.weights import resolve_weights  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "samples" / "ilsvrc_loc"


def gflop_per_crop(net: torch.nn.Module, size: int) -> float:
    """U²-Net's fused-map forward on one ``size`` x ``size`` crop, in GFLOP."""
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        net.forward_fused(torch.zeros(1, 3, size, size))
    return counter.get_total_flops() / 1e9


def forward_seconds(net: torch.nn.Module, size: int, batch: int, reps: int,
                    dtype: torch.dtype | None = None) -> float:
    """Median seconds per crop of the channels_last forward pass on ``batch`` crops."""
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    cpu = torch.device("cpu")

    def run() -> None:
        with torch.inference_mode(), autocast("bf16" if dtype is not None else "fp32", cpu):
            net.forward_fused(x)

    return timed(run, cpu, reps) / batch


def convert_seconds_per_box(precision: str, weights: str) -> tuple[float, int]:
    """Wall seconds per box of a whole ``boxmask convert --engine fused`` of the sample, and the
    number of boxes."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "boxmask", "--quiet", "convert", "--source", "ilsvrc-loc",
               "--input", str(SAMPLE), "--format", "coco", "--engine", "fused",
               "--engine-option", f"weights={weights}", "--precision", precision,
               "--output", str(out)]
        started = time.perf_counter()
        subprocess.run(cmd, check=True)
        seconds = time.perf_counter() - started
        coco = json.loads((out / "coco" / "instances.json").read_text())
        return seconds / len(coco["annotations"]), len(coco["annotations"])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="320,288,256", help="input sides to measure (px)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--weights", default="u2net")
    p.add_argument("--convert", action="store_true", help="also time whole convert runs")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    bf16 = cpu_supports("bf16")
    roof = gemm_roof(torch.device("cpu"), 2048, args.reps)
    print(f"# CPU: {cpu_model()}; features: {', '.join(cpu_features()) or 'none of interest'}; "
          f"{args.threads} threads; matrix-product rate: "
          + ", ".join(f"{k} {v / 1e9:.0f} GFLOP/s" for k, v in roof.items()))
    net = load_u2net(str(resolve_weights(args.weights))).eval()
    net = net.to(memory_format=torch.channels_last)
    print("\n| side | GFLOP/crop | fp32 s/crop (batch 1) | fp32 s/crop (batch 4) | fp32 GFLOP/s "
          "| fp32 floor s/crop | bf16 s/crop (batch 1) |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for size in (int(s) for s in args.sizes.split(",")):
        gflop = gflop_per_crop(net, size)
        one = forward_seconds(net, size, 1, args.reps)
        four = forward_seconds(net, size, 4, args.reps)
        half = f"{forward_seconds(net, size, 1, args.reps, torch.bfloat16):.3f}" if bf16 else "-"
        print(f"| {size} | {gflop:.1f} | {one:.3f} | {four:.3f} | {gflop / min(one, four):.0f} "
              f"| {gflop / (roof['fp32'] / 1e9):.3f} | {half} |", flush=True)
    if args.convert:
        print("\n| convert --engine fused (sample) | boxes | wall s/box |")
        print("|---|---:|---:|")
        figures = {}
        for precision in ("fp32", "bf16") if bf16 else ("fp32",):
            figures[precision], boxes = convert_seconds_per_box(precision, args.weights)
            print(f"| {precision} | {boxes} | {figures[precision]:.3f} |", flush=True)
        if "bf16" in figures:
            print(f"\nfp32 / bf16 = {figures['fp32'] / figures['bf16']:.2f}")


if __name__ == "__main__":
    main()
