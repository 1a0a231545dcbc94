"""Coverage of the review estimate's 95 % interval on synthetic runs with a known error rate.

For each scenario: a run of ``--masks`` masks (300 in two scenarios: a small run, reviewed in
large part) in 8 classes, 15 % of them flagged (one of six
flags), truly bad with probability ``flagged_bad`` when flagged and ``clean_bad`` otherwise (plus
one point per class index mod 3); ``--replicates`` review samples of ``n`` (``select``, seeds
0..R-1), every sampled card judged truly except a share ``skip`` left unreviewed. Printed per
scenario: the true rate, the mean estimate, the share of intervals that cover the true overall
rate and the true rate of class 2, the mean interval width, and the coverage of the raw share of
bad cards' Wilson interval (no weights) for comparison.

    python benchmarks/bench_review_coverage.py                 # about 30 s on 2 busy cores
    python benchmarks/bench_review_coverage.py --replicates 1000
"""

from __future__ import annotations

import argparse
import math

import numpy as np

from boxmask.quality.metrics import ClassFillStats
from boxmask.quality.review import estimate, wilson
from boxmask.quality.sampling import LightKeys, select

SCENARIOS = (  # n, flagged_bad, clean_bad, skip[, masks]
    (40, 0.45, 0.04, 0.0),
    (120, 0.2, 0.05, 0.0, 300),
    (150, 0.45, 0.04, 0.1, 300),
    (40, 0.2, 0.01, 0.0),
    (120, 0.2, 0.01, 0.25),
    (200, 0.45, 0.04, 0.0),
    (200, 0.05, 0.05, 0.0),
)


def synthetic_run(n_masks: int, seed: int, flagged_bad: float, clean_bad: float):
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 8, n_masks).astype(np.int32)
    bits = np.zeros(n_masks, np.uint16)
    flagged = rng.random(n_masks) < 0.15
    bits[flagged] = 1 << rng.integers(0, 6, flagged.sum())
    truth = rng.random(n_masks) < np.where(flagged, flagged_bad, clean_bad) + 0.01 * (label % 3)
    names = [f"class{i}" for i in range(8)]
    keys = LightKeys(label_ids=names, label_names=names, label=label,
                     score=rng.beta(5, 2, n_masks).astype(np.float32),
                     fill=np.full(n_masks, np.nan, np.float32), bits=bits,
                     check=np.zeros(n_masks, np.uint32), where=np.zeros((n_masks, 3), np.int32),
                     fill_stats=ClassFillStats())
    return keys, truth


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--masks", type=int, default=3000)
    ap.add_argument("--replicates", type=int, default=300)
    args = ap.parse_args()
    r = args.replicates
    print(f"{args.replicates} replicates per scenario; binomial SE of a 95 % coverage: "
          f"{100 * math.sqrt(0.95 * 0.05 / r):.1f} points")
    print(f"{'masks':>5} {'n':>4} {'flag/clean bad':>14} {'skip':>5} {'true':>6} {'mean est':>8} "
          f"{'cover':>6} {'cover c2':>8} {'width':>6} {'raw cover':>9}")
    for n, fb, cb, skip, *size in SCENARIOS:
        masks = size[0] if size else args.masks
        keys, truth = synthetic_run(masks, n, fb, cb)
        true_rate, c2 = truth.mean(), truth[keys.label == 2].mean()
        cover = cover_c2 = raw = 0
        est, width = [], []
        for seed in range(r):
            s = select(keys, n, seed=seed)
            items = [{"sample_index": k, "image_id": str(row), "box_id": "b",
                      "label_name": keys.label_names[keys.label[row]],
                      "flags": keys.flags(int(row)), "design_stratum": s.design_stratum[k],
                      "inclusion_probability": float(s.probability[k])}
                     for k, row in enumerate(s.rows)]
            rng = np.random.default_rng(10_000 + seed)
            verdicts = {k: {"verdict": "bad" if truth[row] else "good"}
                        for k, row in enumerate(s.rows) if rng.random() >= skip}
            e = estimate(items, s.design, verdicts)
            lo, hi = e["overall"]["ci95"]
            cover += lo <= true_rate <= hi
            g = e["per_class"].get("class2") or {}
            cover_c2 += (not g.get("ci95")) or g["ci95"][0] <= c2 <= g["ci95"][1]
            est.append(e["overall"]["rate"])
            width.append(hi - lo)
            o = e["overall"]
            a, b = wilson(o["bad"] / o["reviewed"], o["reviewed"])
            raw += a <= true_rate <= b
        print(f"{masks:>5} {n:>4} {fb:>7.2f}/{cb:<6.2f} {skip:>5.2f} {true_rate:>6.3f} "
              f"{np.mean(est):>8.3f} {cover / r:>6.3f} {cover_c2 / r:>8.3f} "
              f"{np.mean(width):>6.3f} {raw / r:>9.3f}")


if __name__ == "__main__":
    main()
