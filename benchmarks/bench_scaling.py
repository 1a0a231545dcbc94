"""CPU engines on all cores: boxes/s of one worker and of several, and the thread split chosen.

For each engine (default ``grabcut`` and ``u2netp``: the U²-Net engine with the small weights;
also ``u2net``, ``iog`` and ``iog-loop``, the official-style IOG loop, both on random weights)
the COCO-MVal sample images (``tests/data/coco_mval``, one box each) are segmented by

* ``1w x 1t``: one worker process with one intra-op thread (the per-core baseline),
* ``1w x Nt``: one worker with all N cores as threads (torch and OpenCV),
* ``Nw x 1t``: N worker processes with one thread each, the images split between them,

where N is ``boxmask.threads.available_cores()`` (affinity and cgroup quota). Workers load their
engine and warm it up on one image, then start together (a barrier); the rate is the boxes of all
workers over the wall time until the last one ends. The configurations run in turn, round after
round (``--rounds``), and the table sums each one's rounds, so the ratios come from one run.
Efficiency = rate / (N x rate of ``1w x 1t``). Prints the thread split ``boxmask convert`` uses.

    python benchmarks/bench_scaling.py                     # both engines, 3 rounds
    python benchmarks/bench_scaling.py --engines grabcut --images 40 --rounds 5
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

ENGINES = {"grabcut": ("grabcut", {}), "u2netp": ("u2net", {"weights": "u2netp", "device": "cpu"}),
           "u2net": ("u2net", {"weights": "u2net", "device": "cpu"}),
           "iog": ("iog", {"device": "cpu", "precision": "fp32"}),
           "iog-loop": ("iog-loop", {})}
"""Engine keys. ``iog`` is the IOG engine (fp32, its default inference form and CPU batch) and
``iog-loop`` the official-style per-instance loop of ``bench_iog.py``, both on the parity recipe's
random weights (seed 5; timings do not depend on the weights), so that no checkpoint is needed."""


class _OfficialLoop:
    """``bench_iog.official_style_loop`` behind the engine's ``segment``/``close``."""

    def __init__(self, net) -> None:
        self.net = net

    def segment(self, requests):
        import torch
        from bench_iog import official_style_loop

        return official_style_loop(self.net, requests, torch.device("cpu"))

    def close(self) -> None:
        pass


def _create(engine_key: str):
    """The engine of ``engine_key`` (IOG ones on parity weights)."""
    from boxmask.engines import create_engine

    name, options = ENGINES[engine_key]
    if not name.startswith("iog"):
        return create_engine(name, **options)
    from bench_iog import make_network

    from boxmask.engines.iog import IOGEngine

    net = make_network("parity", 5)
    if name == "iog-loop":
        return _OfficialLoop(net)
    return IOGEngine.from_network(net, **options)


def _worker(engine_key: str, threads: int, images: list[int], barrier, out) -> None:
    sys.path.insert(0, str(ROOT / "tests" / "helpers"))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from iog_cases import coco_mval_requests

    from boxmask.device import set_threads
    from boxmask.engines import default_inside_points

    set_threads(threads)
    engine = _create(engine_key)
    requests = coco_mval_requests(max(images) + 1)
    if engine_key.startswith("iog"):  # the box centre, as bench_iog
        requests = [replace(r, inside=default_inside_points(r.boxes)) for r in requests]
    mine = [requests[i] for i in images]
    engine.segment(mine[:1])  # warm-up
    barrier.wait()
    t0 = time.perf_counter()
    boxes = 0
    for r in mine:
        engine.segment([r])
        boxes += len(r.boxes)
    out.put((boxes, time.perf_counter() - t0))
    engine.close()


def run(engine_key: str, workers: int, threads: int, images: int) -> tuple[int, float]:
    """(boxes, wall seconds) of ``workers`` processes x ``threads`` on ``images`` images."""
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(workers + 1), ctx.Queue()
    share = [list(range(i, images, workers)) for i in range(workers)]
    procs = [ctx.Process(target=_worker, args=(engine_key, threads, share[i], barrier, out))
             for i in range(workers)]
    for p in procs:
        p.start()
    barrier.wait()
    t0 = time.perf_counter()
    results = [out.get() for _ in procs]
    wall = time.perf_counter() - t0
    for p in procs:
        p.join()
    return sum(b for b, _ in results), wall


def main(argv: list[str] | None = None) -> None:
    from boxmask.threads import available_cores, threads_per_worker

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--engines", default="grabcut,u2netp",
                    help=f"comma-separated, of {', '.join(ENGINES)}")
    ap.add_argument("--images", type=int, default=20, help="COCO-MVal images per configuration "
                                                           "and round (at most 40)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cores", type=int, default=None, help="N (default: available_cores())")
    args = ap.parse_args(argv)
    cores = args.cores or available_cores()
    configs = [(1, 1), (1, cores), (cores, 1)] if cores > 1 else [(1, 1)]
    print(f"# bench_scaling: {cores} cores available (affinity and cgroup quota); "
          f"{args.images} images x {args.rounds} rounds per configuration")
    for key in args.engines.split(","):
        boxes = {c: 0 for c in configs}
        seconds = {c: 0.0 for c in configs}
        for _ in range(args.rounds):
            for c in configs:
                b, s = run(key, *c, args.images)
                boxes[c] += b
                seconds[c] += s
        rate = {c: boxes[c] / seconds[c] for c in configs}
        base = rate[(1, 1)]
        print(f"\n## {key}\nconfig     boxes/s  efficiency")
        for (w, t), r in rate.items():
            print(f"{w}w x {t}t".ljust(10) + f" {r:7.3f}  {r / (base * w * t):9.2f}")
        if cores > 1:
            best = max(((1, cores), (cores, 1)), key=rate.get)
            print(f"faster: {best[0]} worker(s) x {best[1]} thread(s) "
                  f"({rate[(cores, 1)] / rate[(1, cores)]:.2f}x processes / threads)")
    print(f"\nthread split of `boxmask convert --workers W` here: W=1 -> "
          f"{threads_per_worker(1, cores)} thread(s), W={cores} -> "
          f"{threads_per_worker(cores, cores)} thread(s) per worker")


if __name__ == "__main__":
    main()
