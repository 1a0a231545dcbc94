"""The job machinery's own cost: queue throughput and the memory of a worker and of merge.

Three measurements, each printed as a table:

1. ``engine``: what one image costs where the real work is done, on the 50 bundled ILSVRC-LOC
   sample images: decode + the GrabCut engine, median milliseconds per image (the yardstick the
   queue overhead is compared with).
2. ``queue``: one ``boxmask work`` process with the ``box`` engine (mask = filled box, nearly
   free) on a synthetic COCO dataset of tiny 32x32 JPEGs, one box each, for several shard sizes,
   with no per-image output format (leases, results lines, done markers only) and with the
   ``pixel-imagenet`` format (one fsynced PNG per image). Prints shards/s, images/s and the
   milliseconds per image and per shard the machinery costs (busy time from the done markers,
   process start-up excluded).
3. ``memory``: peak RSS (``wait4`` of the process, started from a small launcher) of a
   ``boxmask work`` process and of a ``boxmask merge`` process on synthetic jobs of 1,000 and
   50,000 boxes (10 boxes per image, shard size 1,000, COCO output). Flat figures mean memory
   bounded by the shard size, not by the dataset.

Everything runs in a temporary folder; takes about two minutes on a 2-core machine.

    python benchmarks/bench_jobs.py
    python benchmarks/bench_jobs.py --queue-images 5000 --memory-boxes 1000,50000,200000
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from boxmask.api import prepare_plan
from boxmask.engines import SegmentRequest, create_engine
from boxmask.jobs import steps
from boxmask.jobs.layout import JobLayout
from boxmask.jobs.plan import Settings
from boxmask.readers import open_reader
from boxmask.records import ImageRecord

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "samples" / "ilsvrc_loc"
DISTINCT_FILES = 64


def make_coco(folder: Path, n_images: int, boxes_per_image: int, side: int = 32) -> Path:
    """A COCO instances JSON of ``n_images`` images (``DISTINCT_FILES`` JPEG files reused) with
    ``boxes_per_image`` boxes each; returns its path."""
    images_dir = folder / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for k in range(DISTINCT_FILES):
        pixels = rng.integers(0, 255, (side, side, 3), dtype=np.uint8)
        cv2.imwrite(str(images_dir / f"f{k}.jpg"), pixels)
    images, annotations = [], []
    for i in range(n_images):
        images.append({"id": i + 1, "file_name": f"f{i % DISTINCT_FILES}.jpg", "width": side,
                       "height": side})
        for b in range(boxes_per_image):
            x, y = (b * 3) % (side // 2), (b * 5) % (side // 2)
            annotations.append({"id": i * boxes_per_image + b + 1, "image_id": i + 1,
                                "category_id": 1, "bbox": [x, y, side // 2, side // 3],
                                "area": float(side * side // 6), "iscrowd": 0})
    path = folder / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": 1, "name": "thing"}]}))
    return path


def plan_job(coco: Path, out: Path, formats: list[str], shard_size: int) -> dict:
    settings = Settings(input_format="coco", input=str(coco),
                        images_root=str(coco.parent / "images"), formats=formats,
                        engine="box", shard_size=shard_size)
    plan, engine = prepare_plan(settings, out)
    engine.close()
    return plan


# A child's peak RSS counts what it inherited at fork, before exec (the whole parent): a small
# launcher process starts the measured command and reports its wait4() figures instead.
_LAUNCHER = """
import os, subprocess, sys, time
started = time.monotonic()
p = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
_, status, usage = os.wait4(p.pid, 0)
code = os.waitstatus_to_exitcode(status)
if code not in (0, 3):
    sys.stderr.write(p.stderr.read().decode())
    sys.exit(1)
print(time.monotonic() - started, usage.ru_maxrss)
"""


def run_child(args: list[str]) -> tuple[float, int]:
    """Run ``python -m boxmask ARGS``; return (wall seconds, peak RSS in MiB) of that process."""
    p = subprocess.run([sys.executable, "-c", _LAUNCHER, sys.executable, "-m", "boxmask", "-q",
                        *args], cwd=ROOT, capture_output=True, text=True)
    if p.returncode:
        raise RuntimeError(f"boxmask {' '.join(args)} failed: {p.stderr}")
    seconds, rss_kib = p.stdout.split()
    return float(seconds), int(rss_kib) // 1024


def busy_seconds(out: Path) -> float:
    markers = [json.loads(p.read_text()) for p in JobLayout(out).done_dir.glob("*.json")]
    return max(m["finished"] for m in markers) - min(m["started"] for m in markers)


def bench_engine() -> float:
    """Median ms per image of decode + GrabCut on the ILSVRC sample; prints and returns it."""
    engine = create_engine("grabcut")
    settings = Settings(input_format="ilsvrc-loc", input=str(SAMPLE), formats=[])
    reader = open_reader("ilsvrc-loc", SAMPLE)
    times, boxes = [], 0
    for record in reader:
        if not isinstance(record, ImageRecord):
            continue
        started = time.perf_counter()
        loaded = steps.load(record, Path(reader.images_root), settings)
        engine.segment([SegmentRequest(image=loaded.rgb,
                                       boxes=np.array([b for _, b in loaded.boxes]))])
        times.append(time.perf_counter() - started)
        boxes += len(loaded.boxes)
    per_image = statistics.median(times) * 1000
    print(f"engine: decode + grabcut on {len(times)} ILSVRC sample images (224x224 JPEG, "
          f"{boxes / len(times):.1f} boxes/image): median {per_image:.1f} ms/image")
    return per_image


def bench_queue(tmp: Path, n_images: int, shard_sizes: list[int], yardstick_ms: float) -> None:
    coco = make_coco(tmp / "queue-data", n_images, 1)
    print(f"\nqueue: one worker, box engine, {n_images} synthetic 32x32 images, 1 box each")
    print(f"{'formats':<16}{'shard size':>11}{'shards/s':>10}{'images/s':>10}"
          f"{'ms/image':>10}{'ms/shard':>10}{'% of grabcut':>14}")
    for formats in ([], ["pixel-imagenet"]):
        for size in shard_sizes:
            out = tmp / f"queue-{'-'.join(formats) or 'none'}-{size}"
            plan = plan_job(coco, out, formats, size)
            run_child(["work", str(out), "--no-progress", "--no-wait"])
            busy = busy_seconds(out)
            n_shards = len(plan["shards"])
            ms_image = busy / n_images * 1000
            print(f"{'+'.join(formats) or 'none':<16}{size:>11}{n_shards / busy:>10.1f}"
                  f"{n_images / busy:>10.0f}{ms_image:>10.2f}{busy / n_shards * 1000:>10.1f}"
                  f"{100 * ms_image / yardstick_ms:>13.1f}%")


def bench_memory(tmp: Path, box_counts: list[int]) -> None:
    print("\nmemory: peak RSS of one `boxmask work` and one `boxmask merge` process "
          "(10 boxes/image, shard size 1000, COCO output)")
    print(f"{'boxes':>8}{'images':>8}{'shards':>8}{'work MiB':>10}{'work s':>8}"
          f"{'merge MiB':>11}{'merge s':>9}")
    for boxes in box_counts:
        n_images = max(boxes // 10, 1)
        coco = make_coco(tmp / f"mem-data-{boxes}", n_images, 10)
        out = tmp / f"mem-{boxes}"
        plan = plan_job(coco, out, ["coco"], 1000)
        work_s, work_rss = run_child(["work", str(out), "--no-progress", "--no-wait"])
        merge_s, merge_rss = run_child(["merge", str(out)])
        print(f"{boxes:>8}{n_images:>8}{len(plan['shards']):>8}{work_rss:>10}{work_s:>8.1f}"
              f"{merge_rss:>11}{merge_s:>9.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queue-images", type=int, default=2000)
    parser.add_argument("--shard-sizes", default="1,10,100")
    parser.add_argument("--memory-boxes", default="1000,50000")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-jobs-") as tmp:
        yardstick = bench_engine()
        bench_queue(Path(tmp), args.queue_images,
                    [int(v) for v in args.shard_sizes.split(",")], yardstick)
        bench_memory(Path(tmp), [int(v) for v in args.memory_boxes.split(",")])


if __name__ == "__main__":
    main()
