"""Planning speed at dataset scale: a synthetic Open Images CSV (or COCO JSON) -> plan, shards.

Writes a CSV in the official 21-column layout of ``oidv6-train-annotations-bbox.csv`` (grouped by
ImageID, about 8.5 boxes per image as in the real train split: 14.6M boxes on 1.74M images), or
the same rows shuffled (``--shuffle``: not grouped, so the reader sorts it externally), then plans
it with the GrabCut engine's settings and prints:

* planning wall time and boxes/s (the reader, the shard writer and the plan, nothing else), and
  the CPU time of the process and of its main thread (the reader and the JSON encoding; a writer
  thread compresses and writes the shards): on a busy machine wall time says little, and boxes
  per main-thread CPU-second is what an otherwise idle machine with a second core for the
  writer reaches;
* peak RSS of this process (``resource.getrusage``; the CSV is written by a child process first,
  so its memory does not count);
* shard bytes on disk per box.

``--source coco`` writes a COCO instances JSON instead (about 8.5 boxes per image, each with an
8-point polygon, annotations in random order as in the official files, where they are not grouped
by image), planned through the streaming COCO reader.

``--profile`` runs the planning under cProfile and prints the 25 most expensive functions.
Figures depend on the CPU and on its load; boxes/s is the figure to compare between runs on the
same machine.

    python benchmarks/bench_plan.py --boxes 200000
    python benchmarks/bench_plan.py --boxes 2000000 --keep /tmp/oi2m
    python benchmarks/bench_plan.py --boxes 200000 --shuffle
    python benchmarks/bench_plan.py --boxes 200000 --source coco
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HEADER = ("ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax,IsOccluded,IsTruncated,"
          "IsGroupOf,IsDepiction,IsInside,XClick1X,XClick2X,XClick3X,XClick4X,XClick1Y,XClick2Y,"
          "XClick3Y,XClick4Y")


def write_csv(path: Path, n_boxes: int, shuffle: bool, seed: int = 0) -> int:
    """Write ``n_boxes`` synthetic rows; return the number of images."""
    import numpy as np

    rng = np.random.default_rng(seed)
    per_image = rng.integers(1, 17, size=n_boxes // 4 + 16)  # mean 8.5
    ends = np.cumsum(per_image)
    n_images = int(np.searchsorted(ends, n_boxes) + 1)
    image_of_box = np.repeat(np.arange(n_images), per_image[:n_images])[:n_boxes]
    ids = [f"{v:016x}" for v in rng.integers(0, 2**63, size=n_images)]
    ids.sort()  # the official files are sorted by ImageID
    labels = [f"/m/0{v:05x}" for v in rng.integers(0, 16**5, size=600)]
    x = np.sort(rng.random((n_boxes, 2)), axis=1)
    y = np.sort(rng.random((n_boxes, 2)), axis=1)
    flags = rng.integers(0, 2, size=(n_boxes, 5))
    label_of_box = rng.integers(0, len(labels), size=n_boxes)
    order = rng.permutation(n_boxes) if shuffle else np.arange(n_boxes)
    with open(path, "w", encoding="utf-8") as f:
        f.write(HEADER + "\n")
        chunk: list[str] = []
        for i in order:
            x0, x1, y0, y1 = x[i, 0], x[i, 1], y[i, 0], y[i, 1]
            fl = flags[i]
            chunk.append(
                f"{ids[image_of_box[i]]},xclick,{labels[label_of_box[i]]},1,{x0:.6f},{x1:.6f},"
                f"{y0:.6f},{y1:.6f},{fl[0]},{fl[1]},{fl[2]},{fl[3]},{fl[4]},{x0:.6f},{x1:.6f},"
                f"{x0:.6f},{x1:.6f},{y0:.6f},{y0:.6f},{y1:.6f},{y1:.6f}\n")
            if len(chunk) >= 100_000:
                f.write("".join(chunk))
                chunk.clear()
        f.write("".join(chunk))
    return n_images


def write_coco(path: Path, n_boxes: int, seed: int = 0) -> int:
    """Write a COCO instances JSON of ``n_boxes`` annotations; return the number of images."""
    import json

    import numpy as np

    rng = np.random.default_rng(seed)
    per_image = rng.integers(1, 17, size=n_boxes // 4 + 16)
    n_images = int(np.searchsorted(np.cumsum(per_image), n_boxes) + 1)
    image_of_box = np.repeat(np.arange(n_images), per_image[:n_images])[:n_boxes]
    xywh = np.round(rng.random((n_boxes, 4)) * [400, 300, 200, 150] + 1, 2)
    order = rng.permutation(n_boxes)
    with open(path, "w", encoding="utf-8") as f:
        f.write('{"info": {"description": "synthetic"}, "images": [')
        f.write(",".join(json.dumps({"id": int(i) + 1, "file_name": f"{i:012d}.jpg",
                                     "width": 640, "height": 480}) for i in range(n_images)))
        f.write('], "annotations": [')
        for start in range(0, n_boxes, 100_000):
            part = []
            for k in order[start:start + 100_000]:
                x, y, w, h = (float(v) for v in xywh[k])
                part.append(json.dumps({
                    "id": int(k) + 1, "image_id": int(image_of_box[k]) + 1,
                    "category_id": int(k % 80) + 1, "iscrowd": 0, "area": round(w * h, 2),
                    "bbox": [x, y, w, h],
                    "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]]}))
            f.write(("," if start else "") + ",".join(part))
        f.write('], "categories": [')
        f.write(",".join(json.dumps({"id": c, "name": f"class{c}"}) for c in range(1, 81)))
        f.write("]}")
    return n_images


def plan_source(source: str, path: Path, out: Path, shard_size: int, profile: bool) -> dict:
    from boxmask.engines import create_engine
    from boxmask.jobs.plan import Settings, make_plan

    settings = Settings(input_format=source, input=str(path), images_root=str(path.parent),
                        formats=["coco"], shard_size=shard_size)
    description = create_engine("grabcut").describe()
    if not profile:
        return make_plan(settings, out, description).to_json()
    profiler = cProfile.Profile()
    plan = profiler.runcall(make_plan, settings, out, description)
    pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)
    return plan.to_json()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--boxes", type=int, default=200_000, help="rows in the synthetic CSV")
    p.add_argument("--source", choices=("openimages", "coco"), default="openimages")
    p.add_argument("--shard-size", type=int, default=1000, help="images per shard")
    p.add_argument("--shuffle", action="store_true", help="rows not grouped by ImageID")
    p.add_argument("--profile", action="store_true", help="cProfile the planning")
    p.add_argument("--keep", type=Path, help="work folder to keep (CSV reused if present)")
    p.add_argument("--write-only", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.write_only:
        if args.source == "coco":
            print(write_coco(args.write_only, args.boxes))
        else:
            print(write_csv(args.write_only, args.boxes, args.shuffle))
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        if args.source == "coco":
            csv = work / f"instances_{args.boxes}.json"
        else:
            csv = work / f"bbox_{args.boxes}{'_shuffled' if args.shuffle else ''}.csv"
        if not csv.exists():
            started = time.perf_counter()
            subprocess.run([sys.executable, __file__, "--boxes", str(args.boxes),
                            "--source", args.source, *(["--shuffle"] if args.shuffle else []),
                            "--write-only", str(csv)], check=True, stdout=subprocess.DEVNULL)
            print(f"wrote {csv} ({csv.stat().st_size / 1e6:.0f} MB) in "
                  f"{time.perf_counter() - started:.0f} s")
        out = work / "out"
        if out.exists():
            shutil.rmtree(out)
        started = time.perf_counter()
        cpu0, main0 = time.process_time(), time.thread_time()
        plan = plan_source(args.source, csv, out, args.shard_size, args.profile)
        wall = time.perf_counter() - started
        cpu, main = time.process_time() - cpu0, time.thread_time() - main0
        rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        totals = plan["totals"]
        shard_bytes = sum(f.stat().st_size for f in (out / "shards").iterdir())
        boxes = totals["boxes"]
        print(f"planned {boxes} boxes on {totals['images']} images "
              f"({totals['read_errors']} read errors) into {totals['shards']} shards")
        print(f"wall {wall:.1f} s, {boxes / wall:,.0f} boxes/s; CPU {cpu:.1f} s (main thread "
              f"{main:.1f} s: {boxes / max(main, 1e-9):,.0f} boxes per main-thread CPU-second); "
              f"peak RSS {rss_mb:.0f} MB")
        print(f"shards: {shard_bytes / 1e6:.1f} MB, {shard_bytes / max(boxes, 1):.1f} bytes/box")


if __name__ == "__main__":
    main()
