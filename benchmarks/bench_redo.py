"""Does ``boxmask redo`` fix the masks it redoes, and what does it cost? Measured on COCO-MVal.

The bundled COCO-MVal sample (40 instances, ``tests/data/readers/coco/instances_mval.json`` with
``tests/data/coco_mval/img``) is converted with GrabCut from the box centre (the run), then its
masks carrying any of ``--flags`` (or scoring below ``--min-score``) are converted again by
``boxmask redo`` with each ``--redo`` setting, on a copy of the run each. Every run is scored
against the ground truth (``tests/data/eval/coco_mval_instances.json``, ``boxmask eval``).

Printed: the run (masks, mean IoU, conversion and merge seconds); per redo setting: masks
redone, their mean IoU with the GT before and after, how many got better / worse (by more than
0.01), the run's mean IoU after, the seconds spent choosing the boxes (``select``), converting
them (``redo``: planning, engine, workers, the redo's own merge), merging the run with the redo
applied (rewriting the per-image files of the redone images) and merging it once more (nothing
left to rewrite). Seconds are wall-clock and depend on the machine's load; IoUs are exact.

    python benchmarks/bench_redo.py            # about 3 minutes on 2 busy CPU cores
    python benchmarks/bench_redo.py --redo "grabcut:iterate" --redo "grabcut:center:iterations=10"
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from boxmask import api  # noqa: E402
from boxmask.jobs.merge import merge  # noqa: E402
from boxmask.jobs.plan import Settings  # noqa: E402
from boxmask.quality.evaluate import evaluate_run  # noqa: E402
from boxmask.quality.redo import RedoRequest, prepare  # noqa: E402

COCO = ROOT / "tests" / "data" / "readers" / "coco" / "instances_mval.json"
IMAGES = ROOT / "tests" / "data" / "coco_mval" / "img"
GT = ROOT / "tests" / "data" / "eval" / "coco_mval_instances.json"


def ious(run: Path) -> dict[tuple[str, str], float]:
    result = evaluate_run(run, GT, "coco")
    return {(str(p["image_id"]), str(p["box_id"])): p["iou"] for p in result["pairs"]}


def parse_redo(text: str) -> RedoRequest:
    """``engine:inside_point[:key=value,...]`` (engine options as JSON values)."""
    engine, _, rest = text.partition(":")
    policy, _, options = rest.partition(":")
    engine_options = {}
    for item in filter(None, options.split(",")):
        key, _, value = item.partition("=")
        try:
            engine_options[key] = json.loads(value)
        except ValueError:
            engine_options[key] = value
    return RedoRequest(engine=engine, inside_point=policy or "center",
                       engine_options=engine_options)


def timed(fn, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
    started = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--flags", default="loose,leaks,low_score,fragmented,tiny,empty",
                        help="redo the masks with any of these flags (comma-separated)")
    parser.add_argument("--min-score", type=float, help="also redo masks scoring below this")
    parser.add_argument("--redo", action="append",
                        help="engine:inside_point[:key=value,...] (repeatable; default "
                             "grabcut:iterate and grabcut:grabcut)")
    args = parser.parse_args()
    flags = tuple(f for f in args.flags.split(",") if f)
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        settings = Settings(input_format="coco", input=str(COCO), images_root=str(IMAGES),
                            formats=["coco", "openimages", "pixel-imagenet"], engine="grabcut",
                            shard_size=10)
        summary, convert_s = timed(api.convert, settings, run, progress=False)
        _, merge_s = timed(merge, run)
        before = ious(run)
        print(f"run: grabcut, center; {summary['masks']} masks, mean IoU "
              f"{sum(before.values()) / len(before):.4f}; convert {convert_s:.1f} s, "
              f"merge {merge_s:.2f} s")
        print(f"redo: masks with any of {', '.join(flags)}"
              + (f" or score < {args.min_score}" if args.min_score is not None else ""))
        header = ("setting", "redone", "IoU before", "IoU after", "better", "worse",
                  "run IoU after", "select s", "redo s", "merge s", "re-merge s")
        print(" | ".join(header))
        for text in args.redo or ["grabcut:iterate", "grabcut:grabcut"]:
            copy = Path(tmp) / text.replace(":", "_").replace(",", "_").replace("=", "-")
            shutil.copytree(run, copy, symlinks=True)
            request = parse_redo(text)
            request.flags, request.min_score, request.name = flags, args.min_score, "bench"
            (folder, redo_settings, about), select_s = timed(prepare, copy, request)
            _, redo_s = timed(api.convert, redo_settings, folder, progress=False)
            _, apply_s = timed(merge, copy)
            _, remerge_s = timed(merge, copy)
            after = ious(copy)
            keys = [k for k in _redone_keys(copy) if k in before and k in after]
            b = [before[k] for k in keys]
            a = [after[k] for k in keys]
            better = sum(y > x + 0.01 for x, y in zip(b, a, strict=True))
            worse = sum(y < x - 0.01 for x, y in zip(b, a, strict=True))
            print(" | ".join([text, f"{about['selected']}", f"{mean(b):.4f}", f"{mean(a):.4f}",
                              f"{better}", f"{worse}", f"{mean(list(after.values())):.4f}",
                              f"{select_s:.2f}", f"{redo_s:.1f}", f"{apply_s:.2f}",
                              f"{remerge_s:.2f}"]))


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def _redone_keys(run: Path) -> list[tuple[str, str]]:
    out = []
    for line in (run / "masks.jsonl").read_text().splitlines():
        m = json.loads(line)
        if m.get("redo"):
            out.append((m["image_id"], m["box_id"]))
    return out


if __name__ == "__main__":
    main()
