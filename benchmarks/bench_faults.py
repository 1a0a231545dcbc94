"""Fault harness figures: convert -> kill at a random moment -> re-run, many times; prints the
number of trials and failures (by kind of kill, moment and phase reached) as JSON.

    python benchmarks/bench_faults.py --trials 200 --workers 2 [--max-kills 3] [--seed N]

Each trial converts a tiny COCO set (8 small images, GrabCut, 4 shards) in a fresh folder; see
``tests/helpers/fault_harness.py`` for the kinds, moments and checks. Failed trials are listed
with their problems and the re-run's stderr tail.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "helpers"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import fault_harness as H  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=200)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--max-kills", type=int, default=3,
                    help="Each trial kills 1..N runs (random) before the final re-run.")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--keep", type=Path, help="Keep the folders of failed trials here.")
    args = ap.parse_args()
    seed = random.randrange(1 << 30) if args.seed is None else args.seed
    rng = random.Random(seed)
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="bench-faults-") as tmp:
        folder = Path(tmp)
        ann, images = H.make_tiny_coco(folder / "input")
        reference = H.reference_run(ann, images, folder / "reference", args.workers)
        trials = []
        for i, (kind, moment) in enumerate(H.plan_trials(args.trials, rng)):
            out = folder / f"trial{i}"
            kills = rng.randint(1, args.max_kills)
            t = H.run_trial(ann, images, reference, out, kind, moment, rng, args.workers,
                            kills=kills)
            trials.append(t)
            if not t.ok:
                print(json.dumps({"trial": i, "kind": kind, "moment": moment, "kills": kills,
                                  "reached": t.reached, "first_exit": t.first_exit,
                                  "problems": t.problems, "stderr": t.rerun_stderr[-1500:]}),
                      flush=True)
                if args.keep:
                    shutil.copytree(out, args.keep / f"trial{i}", dirs_exist_ok=True)
            else:
                shutil.rmtree(out, ignore_errors=True)
            if (i + 1) % 10 == 0:
                print(f"# {i + 1} trials, {sum(not x.ok for x in trials)} failures",
                      file=sys.stderr, flush=True)
    summary = H.summarize(trials)
    summary.update(seed=seed, workers=args.workers, wall_seconds=round(time.time() - started, 1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
