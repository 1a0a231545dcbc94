"""What each inside-point policy costs and does, without the conversion machinery around it.

For every instance of the bundled COCO-MVal (40) and DAVIS (21, ``gt > 0``) samples, the tight box
of the GT mask (``boxes_from_masks.csv``, via ``bench_grabcut.load_instances``) goes through
``policy.segment(engine, ...)`` one image at a time, with the engine wrapped to count the boxes it
is asked to segment. Printed per dataset, engine and policy: seconds per box (policy + engine,
wall clock), engine runs per box, how often the final inside click lies on the GT object, the mean
distance the click moved from the box centre, and the policies' own diagnostics
(``inside_source``, ``inside_stop``). The quality tables of real conversions are
``benchmarks/eval_dev_data.py``; timings on a shared machine are noisy.

    python benchmarks/bench_policies.py                        # ~3 min on 2 CPU cores
    python benchmarks/bench_policies.py --engines box --policies iterate,grabcut
    python benchmarks/bench_policies.py --stage1-weights run/model_final.pth
    python benchmarks/bench_policies.py --engines box --policies center,u2net:picker=u2net
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_grabcut import DATASETS, load_instances  # noqa: E402
from eval_dev_data import pixel_of  # noqa: E402

from boxmask.engines import Engine, SegmentRequest, create_engine  # noqa: E402
from boxmask.imageio import decode_image  # noqa: E402
from boxmask.points import create_policy  # noqa: E402


class CountingEngine(Engine):
    """An engine that counts the boxes it segments and passes them on."""

    def __init__(self, inner: Engine) -> None:
        self.inner = inner
        self.name = inner.name
        self.boxes = 0

    def segment(self, requests: Sequence[SegmentRequest]) -> list:
        self.boxes += sum(len(r.boxes) for r in requests)
        return self.inner.segment(requests)


def measure(policy_name: str, options: dict[str, Any], engine_name: str,
            instances: list[dict]) -> dict[str, Any]:
    """Run one policy with one engine over ``instances``; the summary row."""
    policy = create_policy(policy_name, **options)
    engine = CountingEngine(create_engine(engine_name))
    hits, moved, sources, stops = [], [], Counter(), Counter()
    seconds = 0.0
    for inst in instances:
        rgb = decode_image(inst["image"]).rgb
        started = time.perf_counter()
        (pred,) = policy.segment(engine, [SegmentRequest(rgb, np.array([inst["box"]]))])[0]
        seconds += time.perf_counter() - started
        (click,) = [c for c in pred.clicks if c.kind == "inside"]
        col, row = pixel_of(click.x, click.y)
        hits.append(bool(inst["gt"][row, col]))
        moved.append(float(pred.extras.get("inside_moved_px", 0.0)))
        sources[pred.extras.get("inside_source", "center")] += 1
        if "inside_stop" in pred.extras:
            stops[pred.extras["inside_stop"]] += 1
    n = len(instances)
    return {"policy": policy_name, "engine": engine_name, "boxes": n,
            "seconds_per_box": seconds / n, "engine_runs_per_box": engine.boxes / n,
            "inside_rate": sum(hits) / n, "mean_moved_px": sum(moved) / n,
            "sources": dict(sources), "stops": dict(stops)}


def parse_policy(spec: str) -> tuple[str, dict[str, Any]]:
    """``name`` or ``name:key=value:key=value`` (e.g. ``u2net:picker=u2net``)."""
    name, *pairs = spec.split(":")
    return name, dict(pair.split("=", 1) for pair in pairs)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", default=",".join(DATASETS))
    p.add_argument("--engines", default="box,grabcut")
    p.add_argument("--policies", default="center,iterate,grabcut,u2net,u2net:picker=u2net",
                   help="comma-separated; options as name:key=value")
    p.add_argument("--stage1-weights", type=Path, help="adds the stage1 policy")
    args = p.parse_args(argv)
    policies = [parse_policy(spec) for spec in args.policies.split(",") if spec]
    if args.stage1_weights:
        policies.append(("stage1", {"weights": str(args.stage1_weights)}))
    for ds in args.datasets.split(","):
        instances = load_instances(DATASETS[ds])
        print(f"\n### {ds} ({len(instances)} boxes)\n")
        print("| engine | inside point | s/box | engine runs/box | point inside | moved px "
              "| source | stop |")
        print("| --- | --- |" + " ---: |" * 4 + " --- | --- |")
        for engine in args.engines.split(","):
            for name, options in policies:
                r = measure(name, options, engine, instances)
                if options:
                    name = name + "(" + ", ".join(f"{k}={v}" for k, v in options.items()) + ")"
                fmt = ", ".join(f"{k} {v}" for k, v in sorted(r["sources"].items()))
                stops = ", ".join(f"{k} {v}" for k, v in sorted(r["stops"].items())) or "-"
                print(f"| {engine} | {name} | {r['seconds_per_box']:.3f} "
                      f"| {r['engine_runs_per_box']:.2f} | {r['inside_rate']:.2f} "
                      f"| {r['mean_moved_px']:.1f} | {fmt} | {stops} |", flush=True)


if __name__ == "__main__":
    main()
