"""Review sampling over a real run folder (COCO-MVal + DAVIS images, GT and damaged masks)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from review_run import DAMAGES, build_results, gt_objects, write_progress, write_run

from boxmask.quality.runmasks import iter_errors, open_run
from boxmask.quality.sampling import (
    FILL_OUTLIER,
    UNIFORM_SHARE,
    iter_masks,
    round_systematic,
    sample_items,
    scan_run,
    select,
    water_fill,
)

# pycocotools 2.0 with numpy 2 warns on every decode; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def results():
    return build_results()


@pytest.fixture(scope="module")
def run(tmp_path_factory, results) -> Path:
    return write_run(tmp_path_factory.mktemp("merged") / "run", results)


@pytest.fixture(scope="module")
def scanned(run):
    return scan_run(run)


def _ids(items) -> list[tuple[str, str]]:
    return [(m["image_id"], m["box_id"]) for m in items]


def _damaged() -> set[tuple[str, str]]:
    """Masks that are truly bad: the damaged ``alt`` copies (independent of any flag)."""
    return {(o.image_id, "alt") for i, o in enumerate(gt_objects())
            if DAMAGES[i % len(DAMAGES)] != "intact"}


# ------------------------------------------------------------------------- reading the run

def test_a_run_in_progress_yields_the_same_mask_dicts_as_the_merged_run(tmp_path, run, results):
    progress = write_progress(tmp_path / "progress", results)
    assert open_run(progress).kind == "results"
    assert open_run(run).kind == "sidecar"
    merged = list(iter_masks(run))
    assert len(merged) == sum(len(r.masks) for r in results)
    assert list(iter_masks(progress)) == merged
    assert list(iter_errors(progress)) == list(iter_errors(run))
    assert [e["stage"] for e in iter_errors(run)] == ["read", "box"]


def test_only_shards_marked_done_are_read_while_a_run_is_in_progress(tmp_path, results):
    progress = write_progress(tmp_path / "progress", results, shards=3, done=2)
    parts = np.array_split(np.arange(len(results)), 3)
    expected = [(results[i].record.image_id, m.box_id)
                for i in np.concatenate(parts[:2]) for m in results[i].masks]
    assert _ids(iter_masks(progress)) == expected
    src, keys, summary = scan_run(progress)
    assert len(keys) == len(expected) == summary["masks"]


def test_a_partial_merge_is_passed_over_for_the_fresher_done_shards(tmp_path, results):
    both = write_progress(tmp_path / "both", results)
    write_run(both, results[:10])  # a merge of an earlier moment: fewer masks
    (both / "manifest.json").write_text(json.dumps({"complete": False}))
    assert open_run(both).kind == "results"
    assert len(list(iter_masks(both))) == sum(len(r.masks) for r in results)
    (both / "manifest.json").write_text(json.dumps({"complete": True}))
    assert open_run(both).kind == "sidecar"


def test_a_folder_without_masks_or_done_shards_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither masks.jsonl nor a done shard"):
        open_run(tmp_path)


def test_the_scan_keeps_a_few_bytes_per_mask(scanned):
    _, keys, _ = scanned
    arrays = (keys.label, keys.score, keys.fill, keys.bits, keys.check, keys.where)
    assert all(a.dtype != object for a in arrays)
    assert sum(a.nbytes for a in arrays) / len(keys) <= 40


# ------------------------------------------------------------------------------- the design

def test_water_filling_shares_the_budget_equally_and_takes_small_cells_whole():
    caps = np.array([1, 2, 50, 7, 100, 30], dtype=float)
    for budget in (0, 3, 10, 25.5, 61, 189, 190, 500):
        a = water_fill(caps, budget)
        assert a.sum() == pytest.approx(min(budget, caps.sum()))
        assert (a <= caps + 1e-12).all() and (a >= 0).all()
        open_cells = a < caps - 1e-12
        if open_cells.any():  # cells not taken whole share one level, above every full cell
            assert np.ptp(a[open_cells]) == pytest.approx(0)
            assert (a[~open_cells] <= a[open_cells].max() + 1e-12).all()
    a = water_fill(caps, 25)
    assert a[0] == 1 and a[1] == 2  # smaller than the equal share of ~5.5: taken whole


def test_systematic_rounding_keeps_the_total_and_the_expectation():
    expected = np.array([0.3, 2.5, 0.2, 1.0, 4.75, 0.25])  # sums to 9
    draws = np.array([round_systematic(expected, np.random.default_rng(s)) for s in range(4000)])
    assert (draws.sum(axis=1) == 9).all()
    assert (draws >= np.floor(expected)).all() and (draws <= np.ceil(expected)).all()
    sigma = np.sqrt((expected % 1) * (1 - expected % 1) / len(draws))
    assert np.all(np.abs(draws.mean(axis=0) - expected) <= 4.5 * sigma + 1e-9)


def test_n_means_n_distinct_masks_when_the_run_has_that_many(scanned):
    _, keys, _ = scanned
    for n in (1, 5, 8, 20, 40, 77, 100, 122):
        for seed in range(5):
            s = select(keys, n, seed=seed)
            assert len(s.rows) == len(set(s.rows.tolist())) == n
            assert s.design["n_sampled"] == n
            assert all(len(w) == 1 for w in s.why)
    assert len(select(keys, 500, seed=0).rows) == len(keys)


def test_the_weights_add_up_to_each_stratum_and_to_the_population(scanned):
    _, keys, _ = scanned
    n = 40
    totals = []
    for seed in range(400):
        s = select(keys, n, seed=seed)
        w = 1 / s.probability
        assert s.probability == pytest.approx(s.p_uniform + s.p_flagged + s.p_stratum)
        by_stratum = {}
        for name, wi in zip(s.design_stratum, w, strict=True):
            by_stratum[name] = by_stratum.get(name, 0.0) + wi
        for st in s.design["strata"]:
            assert st["probability"] == pytest.approx(st["expected"] / st["masks"])
            got = by_stratum.get(st["stratum"], 0.0)
            assert st["sampled"] * st["masks"] / st["expected"] == pytest.approx(got) if \
                st["sampled"] else got == 0
            if float(st["expected"]).is_integer():  # a whole allocation: exactly N_h
                assert got == pytest.approx(st["masks"])
        totals.append(w.sum())
    # the allocation rounds at random, so sum(1/pi) is N in expectation (Horvitz-Thompson)
    se = np.std(totals) / np.sqrt(len(totals))
    assert abs(np.mean(totals) - len(keys)) <= 4 * se


def test_the_same_seed_gives_the_same_sample_and_another_seed_another(scanned):
    _, keys, _ = scanned
    a, b = select(keys, 40, seed=3), select(keys, 40, seed=3)
    assert a.rows.tolist() == b.rows.tolist() and a.why == b.why
    assert a.probability.tolist() == b.probability.tolist()
    c = select(keys, 40, seed=4)
    assert a.rows.tolist() != c.rows.tolist()


def test_every_mask_is_in_the_uniform_slice_with_the_same_probability(scanned):
    _, keys, _ = scanned
    n, reps = 40, 600
    n_u = math.ceil(UNIFORM_SHARE * n)
    hits = np.zeros(len(keys))
    sizes = []
    for seed in range(reps):
        s = select(keys, n, seed=seed)
        u = np.array(["uniform" in w for w in s.why])
        hits[s.rows[u]] += 1
        sizes.append(u.sum())
        assert s.p_uniform == pytest.approx(np.full(n, n_u / len(keys)))
    p = n_u / len(keys)
    assert np.all(np.abs(hits / reps - p) <= 4.5 * np.sqrt(p * (1 - p) / reps))
    assert np.mean(sizes) == pytest.approx(n_u, rel=0.05)


def test_every_stratum_is_drawn_when_n_allows(scanned):
    _, keys, _ = scanned
    for stratify in (("class",), ("score",), ("class", "score")):
        s = select(keys, 100, stratify=stratify, seed=0)
        strata = s.design["strata"]
        assert sum(st["sampled"] for st in strata) == 100
        for st in strata:
            if st["expected"] >= 1:
                assert st["sampled"] >= 1 and st["stratum"] in s.design_stratum
    s = select(keys, 40, stratify=("score",), seed=0)
    unflagged = [st for st in s.design["strata"] if not st["stratum"].startswith("flag=")]
    # the lowest deciles hold only low-score (flagged) masks: they are in flag strata
    assert {st["stratum"] for st in unflagged} == {f"score_decile={d}" for d in range(2, 10)}
    assert all(st["sampled"] >= 1 for st in unflagged)


def test_flagged_masks_are_oversampled(scanned):
    _, keys, _ = scanned
    population_share = np.mean(keys.bits != 0)
    shares = []
    for seed in range(30):
        s = select(keys, 40, seed=seed)
        shares.append(np.mean(keys.bits[s.rows] != 0))
        assert all(keys.bits[r] for r, w in zip(s.rows, s.why, strict=True) if "flagged" in w)
    assert np.mean(shares) > 1.2 * population_share  # 25 % of n on top of their uniform share


def test_inclusion_probabilities_match_how_often_each_mask_is_drawn(scanned):
    _, keys, _ = scanned
    reps, n = 600, 40
    counts = np.zeros(len(keys))
    pi = np.full(len(keys), np.nan)
    sizes, ht_sizes = [], []
    for seed in range(reps):
        s = select(keys, n, seed=seed)
        counts[s.rows] += 1
        pi[s.rows] = s.probability
        sizes.append(len(s.rows))
        ht_sizes.append(np.sum(1 / s.probability))
    seen = ~np.isnan(pi)
    freq = counts[seen] / reps
    sigma = np.sqrt(pi[seen] * (1 - pi[seen]) / reps)
    assert np.all(np.abs(freq - pi[seen]) <= 4.5 * sigma + 1e-9)
    design = select(keys, n, seed=0).design
    assert sizes == [n] * reps and design["expected_sample_size"] == pytest.approx(n)
    # sum(1/pi) over a sample estimates the population size without bias
    assert np.mean(ht_sizes) == pytest.approx(len(keys), rel=0.03)


def test_reweighted_verdicts_estimate_the_true_error_rate(scanned, run):
    src, keys, _ = scanned
    bad = _damaged()
    masks = list(iter_masks(run))
    truth = np.array([(m["image_id"], m["box_id"]) in bad for m in masks], dtype=float)
    rate = truth.mean()
    weighted, uniform_only, naive = [], [], []
    for seed in range(400):
        s = select(keys, 40, seed=seed)
        y = truth[s.rows]
        w = 1 / s.probability
        weighted.append(np.sum(y * w) / np.sum(w))
        u = np.array(["uniform" in why for why in s.why])
        uniform_only.append(y[u].mean())
        naive.append(y.mean())
    assert np.mean(weighted) == pytest.approx(rate, abs=0.02)
    assert np.mean(uniform_only) == pytest.approx(rate, abs=0.02)
    assert np.mean(naive) > rate + 0.04  # unweighted, the oversampled flags inflate the rate


def test_flags_only_samples_flagged_masks_only(scanned):
    _, keys, _ = scanned
    s = select(keys, 20, flags_only=True, seed=1)
    assert len(s.rows) > 0 and all(keys.bits[s.rows] != 0)
    assert s.design["population"]["masks"] == int(np.count_nonzero(keys.bits))
    assert len(s.rows) == 20
    assert s.p_uniform[0] == pytest.approx(5 / np.count_nonzero(keys.bits))


def test_a_population_no_larger_than_n_is_taken_whole(scanned):
    _, keys, _ = scanned
    s = select(keys, 1000, seed=0)
    assert s.rows.tolist() == list(range(len(keys)))
    assert s.why == [["all"]] * len(keys)
    assert np.all(s.probability == 1)


def test_unknown_stratification_is_refused(scanned):
    with pytest.raises(ValueError, match="cannot stratify by"):
        select(scanned[1], 10, stratify=("class", "colour"))


# ---------------------------------------------------------------------- items and outliers

def test_sampled_items_carry_their_mask_and_why_they_were_picked(scanned, run):
    src, keys, _ = scanned
    s = select(keys, 30, seed=2)
    items = sample_items(src, keys, s)
    by_id = {(m["image_id"], m["box_id"]): m for m in iter_masks(run)}
    assert len(items) == len(s.rows)
    for k, item in enumerate(items):
        original = by_id[(item["image_id"], item["box_id"])]
        assert item["rle"] == original["rle"] and item["box_xyxy"] == original["box_xyxy"]
        assert item["sample_index"] == k
        assert item["why"] in (["uniform"], ["flagged"], ["stratum"])
        assert item["design_stratum"] in {st["stratum"] for st in s.design["strata"]}
        assert set(original["metrics"]["flags"]) <= set(item["flags"])
        assert 0 < item["inclusion_probability"] <= 1
        assert item["weight"] == pytest.approx(1 / item["inclusion_probability"])
        assert item["stratum"].startswith(f"class={original['label_name']} score_decile=")


def test_a_run_that_changes_between_the_two_passes_is_detected(tmp_path, run):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    src, keys, _ = scan_run(copy)
    s = select(keys, 30, seed=0)
    lines = (copy / "masks.jsonl").read_text().splitlines(keepends=True)
    (copy / "masks.jsonl").write_text("".join(lines[1:] + lines[:1]))  # reordered by a re-merge
    with pytest.raises(LookupError, match="changed"):
        sample_items(src, keys, s)


def _fill_line(i: int, fill: float) -> dict:
    return {"image_id": f"im{i}", "image_path": f"im{i}.jpg", "box_id": "b0", "index": 0,
            "label": "n01440764", "label_name": "tench", "box_xyxy": [0, 0, 9, 9],
            "score": 0.9, "metrics": {"fill_ratio": fill, "flags": []},
            "rle": {"size": [10, 10], "counts": "0"}}


def test_a_fill_ratio_far_from_its_class_becomes_a_flag(tmp_path):
    fills = [0.60 + 0.01 * (i % 7) for i in range(30)] + [0.08]
    (tmp_path / "masks.jsonl").write_text(
        "".join(json.dumps(_fill_line(i, f)) + "\n" for i, f in enumerate(fills)))
    _, keys, summary = scan_run(tmp_path)
    assert [keys.flags(i) for i in range(len(fills))] == [[]] * 30 + [[FILL_OUTLIER]]
    assert summary["flags"][FILL_OUTLIER] == 1 and summary["flagged"] == 1
    s = select(keys, 12, seed=0)
    assert 30 in s.rows.tolist()  # the one flagged mask is always in the flagged draw
