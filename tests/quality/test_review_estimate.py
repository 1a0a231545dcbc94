"""The error-rate estimate from a review: its interval by simulation, and on a real run."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner
from review_run import DAMAGES, build_results, gt_objects, write_run

from boxmask.api import review_estimate
from boxmask.cli import cli
from boxmask.quality.gallery import sample_run
from boxmask.quality.metrics import ClassFillStats
from boxmask.quality.review import (
    TARGET_HALF_WIDTH,
    estimate,
    n_for_half_width,
    read_verdicts,
    wilson,
)
from boxmask.quality.sampling import LightKeys, select

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


# ----------------------------------------------------------------------------- by simulation

def _synthetic_run(n_masks: int, seed: int, flagged_bad: float, clean_bad: float):
    """Keys of a run of ``n_masks`` masks in 8 classes, 15 % flagged, and which are truly bad:
    flagged masks with probability ``flagged_bad``, the others ``clean_bad``, plus 1 point per
    class index mod 3 (the classes differ)."""
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


def _review(keys: LightKeys, truth: np.ndarray, n: int, seed: int, skip: float = 0.0) -> dict:
    """A review of a sample of ``n``: every card judged truly, but a share ``skip`` left out."""
    s = select(keys, n, seed=seed)
    items = [{"sample_index": k, "image_id": str(r), "box_id": "b",
              "label_name": keys.label_names[keys.label[r]], "flags": keys.flags(int(r)),
              "design_stratum": s.design_stratum[k],
              "inclusion_probability": float(s.probability[k])}
             for k, r in enumerate(s.rows)]
    rng = np.random.default_rng(10_000 + seed)
    verdicts = {k: {"verdict": "bad" if truth[r] else "good"}
                for k, r in enumerate(s.rows) if rng.random() >= skip}
    return estimate(items, s.design, verdicts)


REPLICATES = 300
# the coverage of R replicates has a binomial SE of sqrt(.95 * .05 / R) = 1.26 points at R = 300:
# a true coverage of 95 % lands above 95 % - 3 SE = 91.2 % but for one run in 700
LOWEST_COVERAGE = 0.95 - 3 * math.sqrt(0.95 * 0.05 / REPLICATES)


@pytest.mark.parametrize(("masks", "n", "flagged_bad", "clean_bad", "skip"),
                         [(3000, 40, 0.45, 0.04, 0.0), (3000, 120, 0.2, 0.01, 0.25),
                          (300, 120, 0.2, 0.05, 0.0)])  # the last: a finite population
def test_the_interval_covers_the_true_error_rate_at_its_nominal_rate(masks, n, flagged_bad,
                                                                     clean_bad, skip):
    keys, truth = _synthetic_run(masks, n, flagged_bad, clean_bad)
    true_rate = truth.mean()
    class_rate = truth[keys.label == 2].mean()
    covered, class_covered, estimates = 0, 0, []
    for seed in range(REPLICATES):
        e = _review(keys, truth, n, seed, skip)
        lo, hi = e["overall"]["ci95"]
        covered += lo <= true_rate <= hi
        estimates.append(e["overall"]["rate"])
        g = e["per_class"].get("class2") or {}
        if g.get("ci95"):
            class_covered += g["ci95"][0] <= class_rate <= g["ci95"][1]
        else:
            class_covered += 1  # no verdict in the class: no interval, nothing claimed
    assert covered / REPLICATES >= LOWEST_COVERAGE
    assert class_covered / REPLICATES >= LOWEST_COVERAGE
    # the Hajek estimate is (nearly) unbiased: its mean is the truth within 4 standard errors
    se = np.std(estimates) / math.sqrt(REPLICATES)
    assert abs(np.mean(estimates) - true_rate) <= 4 * se + 0.002


def test_unweighted_verdicts_would_miss_the_truth_the_weights_correct(tmp_path):
    keys, truth = _synthetic_run(3000, 1, 0.45, 0.04)
    e = _review(keys, truth, 200, seed=0)
    naive = e["overall"]["bad"] / e["overall"]["reviewed"]
    lo, hi = e["overall"]["ci95"]
    assert naive > hi  # the oversampled flag strata inflate the raw share of bad cards
    assert lo <= truth.mean() <= hi


def test_wilson_interval_and_the_reviews_needed_for_two_points():
    lo, hi = wilson(0.0, 40)
    assert lo == 0 and 0.05 < hi < 0.1  # no bad mask in 40 still leaves up to ~9 %
    for p in (0.0, 0.03, 0.2, 0.5):
        n = n_for_half_width(p)
        a, b = wilson(p, n)
        assert (b - a) / 2 <= TARGET_HALF_WIDTH + 1e-9
        a, b = wilson(p, n * 0.98)
        assert (b - a) / 2 > TARGET_HALF_WIDTH
    assert n_for_half_width(0.5) == pytest.approx(0.25 * (1.959964 / 0.02) ** 2, rel=0.01)


# ------------------------------------------------------------------------ on a real run

def _damaged() -> set[tuple[str, str]]:
    return {(o.image_id, "alt") for i, o in enumerate(gt_objects())
            if DAMAGES[i % len(DAMAGES)] != "intact"}


@pytest.fixture(scope="module")
def reviewed(tmp_path_factory):
    """A run, its review report of 40 masks, and verdicts.jsonl as the page exports it: damaged
    masks bad (reason: their first flag), intact ones good, one unsure, two cards not reviewed."""
    root = tmp_path_factory.mktemp("review")
    run = write_run(root / "run", build_results())
    index = sample_run(run, root / "report", n=40, seed=0, thumb_size=48)
    items = [json.loads(x) for x in (index.parent / "sample.jsonl").read_text().splitlines()]
    design = json.loads((index.parent / "sample_design.json").read_text())["design"]
    bad = _damaged()
    lines = []
    for item in items[2:]:
        is_bad = (item["image_id"], item["box_id"]) in bad
        verdict = "bad" if is_bad else "good"
        if item["sample_index"] == 5:
            verdict = "unsure"
        lines.append({"sample_index": item["sample_index"], "image_id": item["image_id"],
                      "box_id": item["box_id"], "label": item["label"], "verdict": verdict,
                      "reason": (item["flags"] or [None])[0] if is_bad else None,
                      "reviewed_at": "2026-01-01T00:00:00.000Z", "run": str(run),
                      "sample_id": design["sample_id"]})
    verdicts = root / "verdicts.jsonl"
    verdicts.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return run, index, items, verdicts


def test_review_estimate_writes_review_json_and_the_page_shows_it(reviewed):
    run, index, items, verdicts = reviewed
    result = CliRunner().invoke(cli, ["review", "estimate", str(run), "--verdicts", str(verdicts),
                                      "--sample", str(index.parent)])
    assert result.exit_code == 0, result.output
    assert "overall:" in result.output and "reviews for +-2 points" in result.output
    review = json.loads((run / "review.json").read_text())
    assert review["sample_size"] == 40 and review["reviewed"] == 38
    assert review["counted"] == 37 and review["unsure"] == 1
    overall = review["overall"]
    lo, hi = overall["ci95"]
    assert lo <= overall["rate"] <= hi and 0 < overall["rate"] < 1
    # never more reviews than masks left: 123 masks in the run, 37 decided
    assert 0 < overall["more_reviews_for_2pt"] <= 123 - 37
    # the truth of this run: 20 of the 123 masks are damaged
    assert lo <= len(_damaged()) / 123 <= hi
    assert set(review["per_class"]) == {i["label_name"] for i in items}
    assert "loose" in review["per_flag"] or "empty" in review["per_flag"]
    assert sum(review["bad_reasons"].values()) == overall["bad"]
    page = index.read_text()
    assert 'id="review"' in page and "Error rate from the review" in page
    # a new sample with another seed is not shown this estimate
    other = sample_run(run, index.parent.parent / "other", n=40, seed=5, thumb_size=48)
    assert 'id="review"' not in other.read_text()
    # the same seed again shows it
    again = sample_run(run, index.parent, n=40, seed=0, thumb_size=48)
    assert 'id="review"' in again.read_text()


def test_bad_verdict_lines_are_reported_not_fatal(reviewed, tmp_path):
    run, index, items, verdicts = reviewed
    messy = tmp_path / "verdicts.jsonl"
    text = verdicts.read_text()
    messy.write_text(text + "not json\n" + json.dumps({"sample_index": 3, "verdict": "maybe"})
                     + "\n" + json.dumps({"sample_index": 999, "verdict": "bad"}) + "\n")
    lines, problems = read_verdicts(messy)
    assert len(problems) == 2 and 999 in lines
    out, result = review_estimate(run, messy, index.parent)
    assert len(result["problems"]) == 3 and "999" in result["problems"][-1]
    assert result["counted"] == 37


def test_verdicts_on_another_sample_are_refused(reviewed, tmp_path):
    run, index, items, verdicts = reviewed
    wrong = tmp_path / "verdicts.jsonl"
    wrong.write_text(verdicts.read_text().replace('"sample_id": "', '"sample_id": "x'))
    with pytest.raises(ValueError, match="another sample"):
        review_estimate(run, wrong, index.parent)
    with pytest.raises(FileNotFoundError, match="no sample.jsonl"):
        review_estimate(run, wrong)


def test_skipped_cards_pass_their_weight_within_their_stratum_then_their_class():
    from boxmask.quality.review import weights
    items = [
        {"design_stratum": "flag=leaks", "label_name": "a", "inclusion_probability": 0.5},
        {"design_stratum": "flag=leaks", "label_name": "b", "inclusion_probability": 0.5},
        {"design_stratum": "class=a score_decile=1", "label_name": "a",
         "inclusion_probability": 0.1},
        {"design_stratum": "class=a score_decile=2", "label_name": "a",
         "inclusion_probability": 0.2},
        {"design_stratum": "class=b score_decile=2", "label_name": "b",
         "inclusion_probability": 0.25},
    ]
    w = weights(items, [True, False, True, False, True])
    assert w.tolist() == pytest.approx([4.0, 0.0, 15.0, 0.0, 4.0])
    assert w.sum() == pytest.approx(sum(1 / i["inclusion_probability"] for i in items))
