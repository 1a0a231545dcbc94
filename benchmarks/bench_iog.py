"""IOG throughput: pure forward per mode, the engine end to end, and an official-style loop.

All runs in one invocation use the same random weights: the parity recipe of
``tests/helpers/parity_weights.py`` (``--seed``, default 5, whose masks on the COCO-MVal sample
are neither empty nor full) or PyTorch's default initialisation (``--init default``). Timings do
not depend on the weights; mask agreement does (a random network is much less decisive than a
trained one).

Sections
--------
1. **GEMM roof**: FLOP/s of a large fp32 and bf16 (fp16 too on CUDA) matrix product.
2. **Pure forward**: crops/s of the fine-logit forward on a fixed random batch, per mode
   (``eager fp32``: contiguous tensors, ``no_grad``, as the official test script;
   ``eager+cl``: channels_last + inference_mode; ``folded``: BatchNorm folded with fx,
   channels_last; ``frozen``: TorchScript trace + freeze, channels_last; the bf16 rows under bf16
   autocast where the CPU runs bf16 natively; ``compile``: with ``--compile``) and batch size,
   with the achieved FLOP/s (FLOPs counted by ``torch.utils.flop_counter`` on the fine path) as a
   share of the roof of the same precision.
3. **Engine end to end**: per inference form (fold, freeze, compile) and precision,
   ``IOGEngine.segment`` on the decoded COCO-MVal images (boxes from ``boxes_from_masks.csv``),
   handed over ``engine.batch_boxes`` boxes per call as a worker does, then the engine's pure
   forward on as many random crops; crops/s, first-call time and the ratio of the two.
4. **Official-style loop**: one instance at a time like the official ``test.py``: numpy
   preprocessing (full-grid float64 Gaussians), batch 1, eager fp32, contiguous, full 5-output
   forward, numpy sigmoid, ``cv2.INTER_CUBIC`` paste-back.

Sections 3-4 run every contender in a fresh process of its own (spawned), one after the other,
``--rounds`` times with the order rotated, and sum each one's times: a process that holds several
networks slows them (an engine built beside the loop slowed the loop's forward to 0.8x), so an
in-process comparison would flatter the engine.

Then the targets: end-to-end >= 0.9 x pure forward, engine fp32 >= 1.5 x and bf16 >= 2.5 x the
official-style loop, bf16 masks vs fp32 mean IoU >= 0.99.

The first line names the CPU and the instruction-set features found in ``/proc/cpuinfo``
(avx2, avx512f, avx512_bf16, amx) and what torch dispatches to.

    python benchmarks/bench_iog.py --quick           # about a minute on a small CPU
    python benchmarks/bench_iog.py --device cuda --batch-sizes 8,16,32,64 --compile
"""

from __future__ import annotations

import argparse
import copy
import multiprocessing as mp
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from boxmask import guidance as G
from boxmask.engines import SegmentRequest, default_inside_points
from boxmask.engines.iog import (
    IOGEngine,
    cpu_supports,
    disable_tf32,
    resolve_device,
    small_job_mode,
)
from boxmask.maskmath import mask_iou as iou
from boxmask.models import build_iog

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "helpers"))  # parity weights, COCO-MVal requests
from iog_cases import coco_mval_requests  # noqa: E402
from parity_weights import parity_weights  # noqa: E402

REFERENCE_GFLOP = 142.6
"""FLOPs of one full 512^2 forward (5 outputs) stated for IOG; printed beside our own count."""


# --------------------------------------------------------------------------- setup


def make_network(init: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    net = build_iog()
    if init == "parity":
        net.load_state_dict(parity_weights("iog", seed), strict=True)
    return net.eval()


def load_requests(n: int) -> list[SegmentRequest]:
    """The first ``n`` COCO-MVal images (decoded) with their box and the box centre as inside."""
    return [replace(r, inside=default_inside_points(r.boxes)) for r in coco_mval_requests(n)]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, reps: int, warmup: int = 1) -> float:
    """Median wall-clock seconds of ``fn`` over ``reps`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))



def table(title: str, header: list[str], rows: list[list[object]]) -> None:
    cells = [[str(c) for c in header]] + [[f"{c:.3g}" if isinstance(c, float) else str(c)
                                           for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    print(f"\n## {title}")
    for k, row in enumerate(cells):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
        if k == 0:
            print("  ".join("-" * w for w in widths))


FEATURES = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16", "amx_fp16")
"""The /proc/cpuinfo flags that decide which kernels the CPU forms get."""


def cpu_flags(path: str = "/proc/cpuinfo") -> tuple[str, set[str]]:
    """(model name, flags) of the first processor in ``path`` (empty where it is unreadable)."""
    model, flags = "", set()
    try:
        for line in Path(path).read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not model:
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return model, flags


def cpu_model() -> str:
    return cpu_flags()[0] or "unknown"


def cpu_features() -> list[str]:
    """The ``FEATURES`` this CPU has."""
    flags = cpu_flags()[1]
    return [f for f in FEATURES if f in flags]


# --------------------------------------------------------------------------- 1. GEMM roof


def gemm_roof(device: torch.device, size: int, reps: int) -> dict[str, float]:
    """Measured FLOP/s of ``size`` x ``size`` matrix products per dtype."""
    dtypes = {"fp32": torch.float32}
    if device.type == "cuda" or cpu_supports("bf16"):
        dtypes["bf16"] = torch.bfloat16
    if device.type == "cuda":
        dtypes["fp16"] = torch.float16
    out = {}
    for name, dtype in dtypes.items():
        a = torch.randn(size, size, device=device).to(dtype)
        b = torch.randn(size, size, device=device).to(dtype)
        seconds = timed(lambda a=a, b=b: a @ b, device, reps)
        out[name] = 2 * size**3 / seconds
    return out


# --------------------------------------------------------------------------- 2. pure forward


def count_gflop(net: nn.Module, device: torch.device) -> tuple[float, float]:
    """(fine path, full 5-output forward) GFLOP of one 512^2 crop."""
    x = torch.rand(1, 5, 512, 512, device=device) * 255
    counts = []
    for fn in (net.forward_fine, net.forward):
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            fn(x)
        counts.append(counter.get_total_flops() / 1e9)
    return counts[0], counts[1]


def forward_modes(net: nn.Module, device: torch.device, with_compile: bool,
                  with_bf16: bool) -> dict[str, Callable[[int], Callable[[torch.Tensor], object]]]:
    """Mode name -> (batch size -> callable on a prepared batch)."""

    def official(_: int) -> Callable[[torch.Tensor], object]:
        def run(x: torch.Tensor) -> object:
            with torch.no_grad():
                return net.forward_fine(x)
        return run

    def engine_mode(mode: str, precision: str, channels_last: bool = True):
        engines: dict[int, IOGEngine] = {}

        def make(batch_size: int) -> Callable[[torch.Tensor], object]:
            if batch_size not in engines:
                engines[batch_size] = IOGEngine.from_network(  # a copy: the engine owns it
                    copy.deepcopy(net), device=str(device), mode=mode, precision=precision,
                    channels_last=channels_last, batch_size=batch_size)
            return engines[batch_size].forward_batch
        return make

    modes = {"eager fp32": official,
             "eager+cl fp32": engine_mode("eager", "fp32"),
             "folded fp32": engine_mode("fold", "fp32"),
             "frozen fp32": engine_mode("freeze", "fp32")}
    if with_bf16:
        modes["folded bf16"] = engine_mode("fold", "bf16")
        modes["frozen bf16"] = engine_mode("freeze", "bf16")
    if with_compile:
        modes["compile fp32"] = engine_mode("compile", "fp32")
        if with_bf16:
            modes["compile bf16"] = engine_mode("compile", "bf16")
    return modes


# --------------------------------------------------------------------------- 4. official-style


def official_style_input(image_f32: np.ndarray, box: np.ndarray, inside: np.ndarray
                         ) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """The official test-time chain for one instance, full-grid float64 Gaussians included."""
    g = G.guidance_for_box(box, inside)
    crop = G.crop_resized(image_f32, g.crop_box)
    yy, xx = np.mgrid[0:512, 0:512].astype(np.float64)

    def gaussian(c: tuple[int, int]) -> np.ndarray:
        return np.exp(-4 * np.log(2) * ((xx - c[0]) ** 2 + (yy - c[1]) ** 2) / 10.0**2)

    inside_map = gaussian(g.inside_512)
    outside_map = np.zeros((512, 512))
    for corner in g.corners_512:
        outside_map = np.maximum(outside_map, gaussian(corner))
    t = np.stack([inside_map, outside_map], axis=2).astype(np.float32)
    t = 255 * (t - t.min()) / (t.max() - t.min() + 1e-10)
    x = np.concatenate([crop, t], axis=2).transpose(2, 0, 1)[None]
    return np.ascontiguousarray(x), g.crop_box


def official_style_loop(net: nn.Module, requests: list[SegmentRequest],
                        device: torch.device) -> list[np.ndarray]:
    masks = []
    for r in requests:
        image = r.image.astype(np.float32)  # the official loader converts the whole image
        x, crop_box = official_style_input(image, r.boxes[0], r.inside[0])
        with torch.no_grad():
            fine = net(torch.from_numpy(x).to(device))[4]
        logits = fine.cpu().numpy()[0, 0]
        p = 1 / (1 + np.exp(-logits))
        cw, ch = G.crop_size(crop_box)
        p = cv2.resize(p, (cw, ch), interpolation=cv2.INTER_CUBIC)
        masks.append(G.paste(p, crop_box, r.image.shape[:2]) > 0.5)
    return masks


# --------------------------------------------------------------------------- 3-4. isolated runs


@dataclass(frozen=True)
class Contender:
    """One timed contender: the official-style ``"loop"`` or an ``"engine"`` with its inference
    ``mode`` and ``precision``."""

    kind: str
    mode: str = "freeze"
    precision: str = "fp32"


@dataclass(frozen=True)
class Setting:
    """What every contender process rebuilds: device, weights recipe, images, engine batch."""

    device: str
    init: str
    seed: int
    images: int
    engine_batch: int
    threads: int | None
    gemm_size: int


@dataclass
class IsolatedRun:
    """A contender's summed time over its rounds; masks packed with ``np.packbits``."""

    seconds: float = 0.0
    crops: int = 0
    pure_seconds: float = 0.0
    pure_crops: int = 0
    first_call: float = 0.0
    batch_boxes: int = 1
    roof_fp32: list[float] = field(default_factory=list)
    packed: list[tuple[bytes, tuple[int, int]]] = field(default_factory=list)

    def add(self, other: IsolatedRun) -> None:
        """Sum ``other`` (one process's run) into this one; its masks replace these."""
        self.seconds += other.seconds
        self.crops += other.crops
        self.pure_seconds += other.pure_seconds
        self.pure_crops += other.pure_crops
        self.first_call = max(self.first_call, other.first_call)
        self.batch_boxes = other.batch_boxes
        self.roof_fp32 += other.roof_fp32
        self.packed = other.packed

    def masks(self) -> list[np.ndarray]:
        return [np.unpackbits(np.frombuffer(b, np.uint8))[:h * w].reshape(h, w).astype(bool)
                for b, (h, w) in self.packed]


def _contender_process(spec: Contender, setting: Setting, out) -> None:
    """Child process: build the network and the contender, warm it up on the first call, time
    it on every image (and, for an engine, its pure forward as many crops), report to ``out``."""
    if setting.threads:
        torch.set_num_threads(setting.threads)
    device = resolve_device(setting.device)
    if device.type == "cuda":
        disable_tf32()
    net = make_network(setting.init, setting.seed).to(device)
    requests = load_requests(setting.images)
    result = IsolatedRun()
    if spec.kind == "loop":
        official_style_loop(net, requests[:1], device)  # warm-up
        t0 = time.perf_counter()
        masks = official_style_loop(net, requests, device)
        result.seconds, result.crops = time.perf_counter() - t0, len(requests)
    else:
        engine = IOGEngine.from_network(net, device=str(device), mode=spec.mode,
                                        precision=spec.precision,
                                        batch_size=setting.engine_batch)
        chunk = result.batch_boxes = engine.batch_boxes
        t0 = time.perf_counter()
        engine.segment(requests[:engine.batch_size])  # trace, freeze or compile
        sync(device)
        result.first_call = time.perf_counter() - t0
        masks = []
        t0 = time.perf_counter()
        for i in range(0, len(requests), chunk):
            masks += [r[0].mask for r in engine.segment(requests[i:i + chunk])]
        sync(device)
        result.seconds, result.crops = time.perf_counter() - t0, len(requests)
        x = torch.rand(engine.batch_size, 5, 512, 512, device=device) * 255
        calls = max(len(requests) // engine.batch_size, 1)
        t0 = time.perf_counter()
        for _ in range(calls):
            engine.forward_batch(x)
        sync(device)
        result.pure_seconds = time.perf_counter() - t0
        result.pure_crops = calls * engine.batch_size
        engine.close()
    result.roof_fp32 = [gemm_roof(device, setting.gemm_size, 3)["fp32"]]  # right after, here
    result.packed = [(np.packbits(m).tobytes(), m.shape) for m in masks]
    out.put(result)


def run_isolated(specs: dict[str, Contender], setting: Setting,
                 rounds: int) -> dict[str, IsolatedRun]:
    """Each contender in a fresh process of its own, one after the other, round after round
    (the order rotates), times summed per contender. A process holding several networks slows
    them: the loop's eager forward ran at 0.8x its own-process speed once an engine had been built
    beside it, so no two contenders share one."""
    ctx = mp.get_context("spawn")
    runs = {name: IsolatedRun() for name in specs}
    names = list(specs)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            out = ctx.Queue()
            proc = ctx.Process(target=_contender_process, args=(specs[name], setting, out))
            proc.start()
            res = out.get()
            proc.join()
            runs[name].add(res)
            print(f"# round {r + 1}: {name}: {res.crops / res.seconds:.3f} crops/s", flush=True)
    return runs


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch-sizes", default=None,
                    help="comma-separated (default: 1,2,4 on CPU, 1,8,16,32,64 on CUDA)")
    ap.add_argument("--reps", type=int, default=3, help="timed repetitions (median)")
    ap.add_argument("--images", type=int, default=40, help="COCO-MVal images end to end")
    ap.add_argument("--engine-batch", type=int, default=None,
                    help="engine batch size end to end (default: the largest of --batch-sizes)")
    ap.add_argument("--init", choices=("parity", "default"), default="parity")
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--compile", action="store_true", help="also time torch.compile modes")
    ap.add_argument("--gemm-size", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--rounds", type=int, default=2,
                    help="processes per contender for sections 3-5 (each runs every image)")
    ap.add_argument("--engine-only", action="store_true",
                    help="skip sections 1-2 (GEMM roof, pure forward per mode): only the "
                         "engine / official-style comparison, each in a process of its own")
    ap.add_argument("--quick", action="store_true",
                    help="batch size 2, 1 rep, 4 images: checks the script in about a minute")
    args = ap.parse_args(argv)

    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        disable_tf32()
    if args.quick:
        args.batch_sizes = args.batch_sizes or "2"
        args.reps, args.images, args.rounds = 1, min(args.images, 4), 1
    batch_sizes = [int(b) for b in (args.batch_sizes or
                                    ("1,8,16,32,64" if device.type == "cuda" else "1,2,4"))
                   .split(",")]
    engine_batch = args.engine_batch or max(batch_sizes)
    with_bf16 = device.type == "cuda" or cpu_supports("bf16")
    gemm_size = args.gemm_size or (8192 if device.type == "cuda" else 4096)

    print(f"# CPU: {cpu_model()}; features: {', '.join(cpu_features()) or 'none of interest'}; "
          f"torch dispatches to {torch.backends.cpu.get_cpu_capability()}; bf16 "
          f"{'native' if cpu_supports('bf16') else 'not native (bf16 rows skipped)'}")
    print(f"# bench_iog: device {device} "
          f"({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}, "
          f"{torch.get_num_threads()} threads), torch {torch.__version__}, weights "
          f"{args.init}" + (f" seed {args.seed}" if args.init == "parity" else ""))
    net = make_network(args.init, args.seed).to(device)
    fine_gflop, full_gflop = count_gflop(net, device)

    if not args.engine_only:
        roof = gemm_roof(device, gemm_size, max(args.reps, 3))
        table(f"GEMM roof ({gemm_size}^3 matmul)", ["dtype", "TFLOP/s"],
              [[k, v / 1e12] for k, v in roof.items()])

        print(f"\nFLOPs per 512^2 crop: fine path {fine_gflop:.1f} GFLOP, full 5-output forward "
              f"{full_gflop:.1f} GFLOP (stated: {REFERENCE_GFLOP})")

        # -- pure forward
        pure: dict[tuple[str, int], float] = {}
        rows = []
        for name, make in forward_modes(net, device, args.compile, with_bf16).items():
            precision = "bf16" if "bf16" in name else "fp32"
            for b in batch_sizes:
                x = torch.rand(b, 5, 512, 512, device=device) * 255
                run = make(b)
                t_first = time.perf_counter()
                run(x)
                sync(device)
                first = time.perf_counter() - t_first
                seconds = timed(lambda run=run, x=x: run(x), device, args.reps, warmup=0)
                rate = b / seconds
                pure[name, b] = rate
                achieved = rate * fine_gflop * 1e9
                share = f"{100 * achieved / roof[precision]:.1f}%"
                rows.append([name, b, rate, achieved / 1e12, share, first])
        table("Pure forward (fine logits; all modes in this one process)",
              ["mode", "batch", "crops/s", "TFLOP/s", "of roof", "first call s"], rows)

    # -- engine end to end, official-style loop, pure forward: each in a process of its own
    precisions = ("fp32", "bf16") if with_bf16 else ("fp32",)
    engine_modes = ["fold", "freeze"] + (["compile"] if args.compile else [])
    specs = {"official": Contender("loop")}
    for mode in engine_modes:
        for precision in precisions:
            specs[f"{mode} {precision}"] = Contender("engine", mode, precision)
    setting = Setting(str(device), args.init, args.seed, args.images, engine_batch,
                      args.threads, gemm_size)
    runs = run_isolated(specs, setting, args.rounds)
    rate = {k: r.crops / r.seconds for k, r in runs.items()}
    pure_rate = {k: r.pure_crops / r.pure_seconds for k, r in runs.items() if r.pure_seconds}
    engines = [k for k in specs if k != "official"]
    chunk = runs[engines[0]].batch_boxes

    rows = [[f"engine {name}", engine_batch, rate[name], runs[name].first_call,
             rate[name] / pure_rate[name], rate[name] / rate["official"]] for name in engines]
    table(f"Engine end to end ({args.images} COCO-MVal images, {chunk} boxes per call, each "
          f"contender in a process of its own, {args.rounds} round(s))",
          ["engine", "batch", "crops/s", "first call s", "/ own pure forward", "/ loop"], rows)
    roof32 = {k: float(np.mean(r.roof_fp32)) / 1e9 for k, r in runs.items()}  # GFLOP/s
    gflop = {"official": full_gflop} | {k: fine_gflop for k in engines if k.endswith("fp32")}
    table(f"fp32 against the matrix-product rate ({gemm_size}^3 matmul, measured in each "
          "contender's process right after its images)",
          ["contender", "GFLOP/crop", "GFLOP/s", "matmul GFLOP/s", "share"],
          [[k, g, rate[k] * g, roof32[k], f"{100 * rate[k] * g / roof32[k]:.0f}%"]
           for k, g in gflop.items()])
    ceiling = float(np.mean(list(roof32.values()))) / fine_gflop / rate["official"]
    masks = {k: r.masks() for k, r in runs.items()}
    auto32 = f"{small_job_mode(device, 'fp32')} fp32"  # what `auto` runs in fp32 here
    agree = float(np.mean([iou(a, b) for a, b in
                           zip(masks["official"], masks[auto32], strict=True)]))
    table("Official-style loop (a process of its own) and the engines' pure "
          "forward", ["loop", "crops/s", f"mask IoU vs engine {auto32}"],
          [["official-style fp32", rate["official"], agree]]
          + [[f"pure {k}", pure_rate[k], ""] for k in engines])

    # -- targets
    rows = []
    ratio = rate[auto32] / pure_rate[auto32]
    rows.append(["end-to-end fp32 / pure forward", ">= 0.9", ratio, ratio >= 0.9])
    rows.append(["fp32 ceiling: matmul rate / fine-path FLOPs / loop", "(info)", ceiling, ""])
    for name in engines:
        target = 1.5 if name.endswith("fp32") else 2.5
        speedup = rate[name] / rate["official"]
        rows.append([f"engine {name} / official-style", f">= {target}", speedup,
                     speedup >= target])
    if "bf16" in precisions:
        ratio16 = rate["fold bf16"] / pure_rate["fold bf16"]
        rows.append(["end-to-end bf16 / pure forward", ">= 0.9", ratio16, ratio16 >= 0.9])
        ious = [iou(a, b) for a, b in zip(masks[auto32], masks["fold bf16"],
                                           strict=True)]
        rows.append(["bf16 vs fp32 mask mean IoU", ">= 0.99", float(np.mean(ious)),
                     float(np.mean(ious)) >= 0.99])
        rows.append(["bf16 vs fp32 mask min IoU", "(info)", float(np.min(ious)), ""])
    table("Targets (ratios of one run)", ["measure", "target", "value", "met"], rows)


if __name__ == "__main__":
    main()
