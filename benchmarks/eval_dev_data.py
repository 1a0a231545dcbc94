"""Inside-point policies x engines on the bundled dev data with ground truth.

Every row is a real conversion through the Python API (``boxmask.api.convert`` with ``Settings``:
a COCO JSON of boxes as the source, output format ``coco``), evaluated against the ground truth
with ``boxmask.quality.evaluate.evaluate_run``. Datasets:

* ``coco_mval``: the 40 COCO val2017 instances of ``tests/data/coco_mval``; source
  ``tests/data/readers/coco/instances_mval.json`` (tight boxes of the GT masks), GT
  ``tests/data/eval/coco_mval_instances.json``.
* ``davis``: the 21 DAVIS frames of ``tests/data/davis``, ``gt > 0`` as one object per frame
  (the interactive-segmentation protocol); source and GT ``tests/data/eval/davis_instances.json``
  (tight boxes).
* ``voc2012``: ``2007_000063`` (dog, chair) with the **official XML boxes**
  (``tests/data/eval/voc2012_boxes.json``; the chair is truncated and its box is not tight); GT the
  VOC folder, void pixels (255) left out of every measure.

Engines: ``box`` (the filled box: the trivial baseline), ``grabcut``, ``u2net`` and ``fused``
(U²-Net weights: ``boxmask weights fetch u2net``; ``--u2net-weights``), and ``iog`` only with
released weights (``--iog-weights PATH``, or the default checkpoint when it is in the weights
cache): a randomly initialised IOG network would make meaningless rows. Policies: ``center``,
``iterate``, ``grabcut``, ``u2net`` and ``stage1``. ``stage1`` needs a stage-1 checkpoint:
``--stage1-weights PATH``, or ``--train-stage1 STEPS`` (default 300) trains a **reduced-width demo
model** first (the ``tiny`` IOG preset at a 128 px input, modern recipe, on the 40 COCO-MVal
instances, about a minute on a CPU): an illustration of the two-stage method, not a product model.
Its COCO-MVal row is left out (those are its training images); DAVIS and VOC are unseen domains for
it.

Columns: ``n`` matched instances, mean IoU, mean Boundary IoU, the fractions with IoU >= 0.5 /
0.75 / 0.9, ``inside`` = how often the final inside click (the sidecar's ``inside`` click) lies on
the GT object, and ``s/box`` = wall-clock seconds of the whole conversion (planning, decoding,
policy, engine, writing, merging) per box, on this machine; timings on a shared machine are noisy.
Under each table, for ``iterate``: engine runs per box and why the boxes stopped.

    python benchmarks/eval_dev_data.py                       # ~5 min on 2 CPU cores
    python benchmarks/eval_dev_data.py --train-stage1 0      # without the stage-1 rows
    python benchmarks/eval_dev_data.py --iog-weights IOG_PASCAL_SBD.pth --datasets davis
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from boxmask.api import convert  # noqa: E402
from boxmask.jobs.plan import Settings  # noqa: E402
from boxmask.quality.evaluate import evaluate_run, iter_jsonl  # noqa: E402
from boxmask.quality.groundtruth import GroundTruth, open_gt  # noqa: E402

DATA = ROOT / "tests" / "data"
ENGINES = ("box", "grabcut", "u2net", "fused", "iog")
POLICIES = ("center", "iterate", "grabcut", "u2net", "stage1")
MVAL_TRAINING = f"folder:{DATA}/coco_mval,images_dir=img,masks_dir=gt"


@dataclass(frozen=True)
class Dataset:
    name: str
    source: Path
    """COCO JSON whose boxes are converted."""
    images: Path
    gt: Path
    gt_format: str
    note: str


DATASETS = {
    "coco_mval": Dataset("coco_mval", DATA / "readers/coco/instances_mval.json",
                         DATA / "coco_mval/img", DATA / "eval/coco_mval_instances.json", "coco",
                         "40 COCO val2017 instances, tight GT boxes"),
    "davis": Dataset("davis", DATA / "eval/davis_instances.json", DATA / "davis/img",
                     DATA / "eval/davis_instances.json", "coco",
                     "21 frames, gt > 0 as one object, tight GT boxes"),
    "voc2012": Dataset("voc2012", DATA / "eval/voc2012_boxes.json", DATA / "voc2012/JPEGImages",
                       DATA / "voc2012", "voc",
                       "2007_000063 dog + chair, official XML boxes, void excluded"),
}


# --------------------------------------------------------------------------- measures


def pixel_of(x: float, y: float) -> tuple[int, int]:
    """The pixel ``(column, row)`` holding the image point ``(x, y)`` (pixel centres are whole
    numbers; halves go up)."""
    return math.floor(x + 0.5), math.floor(y + 0.5)


def point_on_object(gt: GroundTruth, gt_image: str, gt_id: str, x: float, y: float,
                    cache: dict[str, Any]) -> bool:
    """Whether the image point ``(x, y)`` lies on GT instance ``gt_id`` of ``gt_image`` (a void
    pixel is not on the object)."""
    if gt_image not in cache:
        cache.clear()
        cache[gt_image] = gt.load(gt_image)
    img = cache[gt_image]
    col, row = pixel_of(x, y)
    if not (0 <= row < img.height and 0 <= col < img.width):
        return False
    return bool(img.instances[gt_id].mask[row, col])


def inside_click(line: dict[str, Any]) -> tuple[float, float] | None:
    """The inside click ``(x, y)`` of a sidecar line (``[x, y, positive, kind]`` clicks)."""
    for c in line.get("clicks", []):
        if len(c) > 3 and c[3] == "inside":
            return float(c[0]), float(c[1])
    return None


def run_row(ds: Dataset, engine: str, engine_options: dict[str, Any], policy: str,
            policy_options: dict[str, Any], out: Path) -> dict[str, Any]:
    """Convert ``ds`` with an engine and a policy into ``out``, evaluate, return the row."""
    settings = Settings(input_format="coco", input=str(ds.source), images_root=str(ds.images),
                        formats=["coco"], engine=engine, engine_options=dict(engine_options),
                        inside_point=policy, inside_options=dict(policy_options))
    started = time.perf_counter()
    summary = convert(settings, out, progress=False, force=True)
    seconds = time.perf_counter() - started
    if not summary.get("complete") or summary.get("errors"):
        raise RuntimeError(f"{ds.name} {engine} {policy}: conversion incomplete or with errors: "
                           f"{summary}")
    result = evaluate_run(out, ds.gt, ds.gt_format)
    lines = {(str(x["image_id"]), str(x["box_id"])): x for x in iter_jsonl(out / "masks.jsonl")}
    gt = open_gt(ds.gt, ds.gt_format)
    cache: dict[str, Any] = {}
    hits = []
    for pair in result["pairs"]:
        point = inside_click(lines[(str(pair["image_id"]), str(pair["box_id"]))])
        hits.append(point is not None and point_on_object(gt, pair["gt_image"], pair["gt_id"],
                                                          *point, cache))
    metrics = [x["metrics"] for x in lines.values()]
    o = result["overall"]
    return {
        "dataset": ds.name, "engine": engine, "policy": policy,
        "boxes": len(lines), "matched": o["count"], "gt": result["counts"]["gt_instances"],
        "mean_iou": o["mean_iou"], "mean_boundary_iou": o["mean_boundary_iou"],
        **{k: o[k] for k in ("iou_ge_0.5", "iou_ge_0.75", "iou_ge_0.9")},
        "inside_rate": sum(hits) / len(hits) if hits else None,
        "seconds_per_box": seconds / max(len(lines), 1),
        "rounds": [m["inside_rounds"] for m in metrics if "inside_rounds" in m],
        "stops": dict(Counter(m["inside_stop"] for m in metrics if "inside_stop" in m)),
        "per_pair": [{"image_id": p["image_id"], "box_id": p["box_id"], "iou": p["iou"],
                      "inside": h} for p, h in zip(result["pairs"], hits, strict=True)],
    }


# --------------------------------------------------------------------------- stage 1 demo


def train_demo_stage1(out: Path, steps: int, threads: int | None) -> Path:
    """Train the reduced-width demo stage-1 model on COCO-MVal; the checkpoint's path."""
    from boxmask.training import TrainOptions, make_trainer

    options = TrainOptions(
        output=out, data=[MVAL_TRAINING], task="stage1", recipe="modern", model="tiny",
        input_size=128, workers=0, threads=threads, save_every=0, snapshot_every=0,
        log_every=max(steps // 5, 1), val_every=10**9,
        overrides={"max_steps": steps, "epochs": 10**6, "batch_size": 8, "precision": "fp32"})
    summary = make_trainer(options).fit()
    return Path(summary["model"])


# --------------------------------------------------------------------------- output


def _f(v: float | None, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def markdown_table(rows: list[dict[str, Any]]) -> list[str]:
    head = ("| engine | inside point | n | mIoU | mBIoU | IoU>=0.5 | IoU>=0.75 | IoU>=0.9 "
            "| point inside | s/box |")
    out = [head, "| --- | --- |" + " ---: |" * 8]
    for r in rows:
        n = f"{r['matched']}" + (f"/{r['gt']}" if r["matched"] != r["gt"] else "")
        out.append(f"| {r['engine']} | {r['policy']} | {n} | {_f(r['mean_iou'])} "
                   f"| {_f(r['mean_boundary_iou'])} | {_f(r['iou_ge_0.5'], 2)} "
                   f"| {_f(r['iou_ge_0.75'], 2)} | {_f(r['iou_ge_0.9'], 2)} "
                   f"| {_f(r['inside_rate'], 2)} | {_f(r['seconds_per_box'], 2)} |")
    return out


def iterate_notes(rows: list[dict[str, Any]]) -> list[str]:
    out = []
    for r in rows:
        if r["policy"] == "iterate" and r["rounds"]:
            stops = ", ".join(f"{k} {v}" for k, v in sorted(r["stops"].items()))
            out.append(f"- iterate with {r['engine']}: {sum(r['rounds']) / len(r['rounds']):.2f} "
                       f"engine runs per box (stopped: {stops})")
    return out


def default_iog_weights() -> str | None:
    """The default IOG checkpoint's path when it is in the weights cache."""
    try:
        from boxmask.weights import DEFAULT_WEIGHTS, weights_path

        path = weights_path(DEFAULT_WEIGHTS)
    except Exception:  # no registry or unreadable cache
        return None
    return str(path) if path.is_file() else None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", default=",".join(DATASETS))
    p.add_argument("--engines", default=",".join(ENGINES))
    p.add_argument("--policies", default=",".join(POLICIES))
    p.add_argument("--iog-weights", help="IOG checkpoint (path or registry name); default: the "
                                         "default checkpoint if it is in the weights cache")
    p.add_argument("--device", default="auto", help="network engines' and policies' device")
    p.add_argument("--u2net-weights", default="u2net",
                   help="U²-Net weights of the u2net/fused engines and the u2net policy")
    p.add_argument("--stage1-weights", type=Path, help="a stage-1 checkpoint")
    p.add_argument("--train-stage1", type=int, default=300, metavar="STEPS",
                   help="without --stage1-weights: train the demo stage-1 model for this many "
                        "steps first (0: no stage-1 rows)")
    p.add_argument("--threads", type=int, default=None, help="torch threads for the training")
    p.add_argument("--keep", type=Path, help="keep the runs in this folder")
    p.add_argument("--json", type=Path, help="write every row (and per-pair results) here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    datasets = [DATASETS[d] for d in args.datasets.split(",") if d]
    engines = [e for e in args.engines.split(",") if e]
    policies = [p for p in args.policies.split(",") if p]
    notes: list[str] = []
    work = args.keep or Path(tempfile.mkdtemp(prefix="boxmask-eval-"))
    work.mkdir(parents=True, exist_ok=True)

    engine_options: dict[str, dict[str, Any]] = {"box": {}, "grabcut": {}}
    iog_weights = args.iog_weights or default_iog_weights()
    if "iog" in engines:
        if iog_weights:
            engine_options["iog"] = {"weights": iog_weights, "device": args.device}
        else:
            engines.remove("iog")
            notes.append("IOG rows are absent: no released IOG weights (--iog-weights, or "
                         "`boxmask weights fetch` into the cache); a randomly initialised "
                         "network would make meaningless rows.")
    for name in ("u2net", "fused"):
        if name in engines:
            engine_options[name] = {"weights": args.u2net_weights, "device": args.device}
    policy_options: dict[str, dict[str, Any]] = {
        "center": {}, "iterate": {}, "grabcut": {},
        "u2net": {"weights": args.u2net_weights, "device": args.device}}
    demo = False
    if "stage1" in policies:
        weights = args.stage1_weights
        if weights is None and args.train_stage1 > 0:
            t = time.perf_counter()
            weights = train_demo_stage1(work / "stage1-demo", args.train_stage1, args.threads)
            demo = True
            notes.append(f"stage1 rows use a reduced-width DEMO model (IOG 'tiny' preset, 128 px "
                         f"input, {args.train_stage1} steps on the 40 COCO-MVal instances, "
                         f"trained here in {time.perf_counter() - t:.0f} s): an illustration, "
                         f"not a product model; no COCO-MVal row (its training images).")
        if weights is None:
            policies.remove("stage1")
            notes.append("stage1 rows are absent: no stage-1 weights (--stage1-weights or "
                         "--train-stage1 STEPS).")
        else:
            policy_options["stage1"] = {"weights": str(weights), "device": args.device}

    rows: list[dict[str, Any]] = []
    try:
        for ds in datasets:
            ds_rows = []
            for engine in engines:
                for policy in policies:
                    if policy == "stage1" and demo and ds.name == "coco_mval":
                        continue
                    out = work / f"{ds.name}-{engine}-{policy}"
                    ds_rows.append(run_row(ds, engine, engine_options[engine], policy,
                                           policy_options[policy], out))
                    r = ds_rows[-1]
                    print(f"# {ds.name} {engine} {policy}: mIoU {_f(r['mean_iou'])}, inside "
                          f"{_f(r['inside_rate'], 2)}", file=sys.stderr, flush=True)
            rows += ds_rows
            print(f"\n### {ds.name} ({ds.note})\n")
            print("\n".join(markdown_table(ds_rows)))
            extra = iterate_notes(ds_rows)
            if extra:
                print("\n" + "\n".join(extra))
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    if notes:
        print("\n" + "\n".join(f"Note: {n}" for n in notes))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return rows


if __name__ == "__main__":
    main()
