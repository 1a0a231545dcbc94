"""Reproducible review samples of a run's masks: stratified, flag-oversampled, with a uniform slice.

Two passes over the run (``boxmask.quality.runmasks``, merged or in progress):

1. ``scan_run`` streams every mask once and keeps a few bytes per mask in arrays (class index,
   score, fill ratio, flag bits, where the mask is, a checksum of its ids, plus the per-class
   fill ratios): about 34 bytes per mask, ~20 MB for 600k masks; no RLE or image is kept.
2. ``select`` draws the sample from those arrays; ``sample_items`` reads back only the chosen
   masks' lines (with their RLEs).

Population
----------
All masks, or with ``flags_only`` only the flagged ones. A mask is *flagged* when its metrics
carry a flag (``boxmask.maskmetrics.FLAGS``) or when its fill ratio is an outlier within its
class (robust z-score above ``FILL_OUTLIER_Z``, classes of at least ``MIN_CLASS_COUNT`` masks:
``metrics.ClassFillStats``); the latter adds the flag ``fill_outlier``, which exists only here.

Design
------
A stratified sample without replacement of exactly ``min(n, population)`` distinct masks.

**Strata** partition the population: a flagged mask is in the stratum of its *primary* flag (the
first of its flags in ``SAMPLE_FLAGS`` order, e.g. ``flag=leaks``); an unflagged mask is in its
cell of ``stratify``: class x score decile by default (``class=tench score_decile=3``). Score
deciles are cut at the 10 %, ..., 90 % quantiles of the population's scores (ties can merge
deciles); ``stratify=("class",)`` or ``("score",)`` use one of the two; ``()`` puts all unflagged
masks in one stratum.

**Allocation.** ``n`` is split into three shares, and each stratum ``h`` (``N_h`` masks) gets an
expected allocation ``a_h`` (a real number) that is the sum of its parts:

* **uniform**: ``n_u = ceil(UNIFORM_SHARE * n)`` (25 %) spread proportionally:
  ``n_u * N_h / N`` to every stratum;
* **flagged**: ``round(FLAGGED_SHARE * n)`` (25 %, at most all flagged masks) spread equally over
  the flag strata, so that rare failure kinds are seen too;
* **stratum**: the rest, spread equally over all strata (flag strata included, as each flag
  stratum is a cell of its own).

Equal shares are water-filled: a stratum never gets more than it holds, and what it cannot take
goes to the others (what the flag strata cannot take joins the stratum share; with no flagged
masks the flagged share joins the stratum share). So ``sum(a_h) = n``.

**Draw.** Systematic rounding turns the ``a_h`` into integers ``k_h`` with ``E[k_h] = a_h`` and
``sum(k_h) = n`` exactly (``round_systematic``); then ``k_h`` masks are drawn without replacement
in each stratum. No mask can be drawn twice, so ``--n 40`` shows 40 masks when the run has 40.
Each sampled mask is labelled with the share it was drawn for (``why``: ``uniform``, ``flagged``
or ``stratum``), at random in proportion to the stratum's parts.

When the population has at most ``n`` masks, all are taken (``why = ["all"]``, probability 1).

Inclusion probabilities
-----------------------
Within a stratum every ``k_h``-subset is equally likely, so a mask of stratum ``h`` is in the
sample with probability exactly ``pi = E[k_h] / N_h = a_h / N_h``, written per item as
``inclusion_probability`` (and ``weight = 1 / pi``); its parts ``p_uniform = n_u / N``,
``p_flagged``, ``p_stratum`` (the chance of being sampled *for* that share) add up to it.
``sum(1 / pi)`` over the sample estimates ``N`` without bias, and equals ``N_h`` exactly within
every stratum whose ``a_h`` is a whole number. ``sample_design.json`` lists the strata with
``masks`` (``N_h``), ``expected`` (``a_h``), ``sampled`` (``k_h``) and ``probability``.

(Before this design, the three shares were independent draws over overlapping cells and a mask
drawn by two of them was shown once, so a sample could hold fewer than ``n`` masks.)

Estimating an error rate from a review: with ``y_i = 1`` for each reviewed mask judged bad,

* all reviewed items (Horvitz-Thompson / Hajek): bad masks in the population
  ``~ sum(y_i / pi_i)``, error rate ``~ sum(y_i / pi_i) / sum(1 / pi_i)`` (``weight = 1 / pi``);
  ``boxmask.quality.review`` computes it with its interval;
* unweighted, uniform slice only: ``bad / count`` over the items whose ``why`` is ``uniform``:
  every mask is in that slice with the same probability ``n_u / N``, so this is a (ratio)
  estimate of the rate that needs no weights.

Both estimate the rate over the population (all masks, or the flagged ones with ``flags_only``).
Same run, same arguments, same seed: same sample.
"""

from __future__ import annotations

import functools
import logging
import math
import zlib
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .keys import FILL_OUTLIER, FLAG_BIT, SAMPLE_FLAGS, LightKeys
from .metrics import MIN_CLASS_COUNT, ClassFillStats
from .runmasks import Locator, RunSnapshot, fetch, iter_errors, iter_located, iter_masks, open_run
from .summary import SummaryCollector

log = logging.getLogger(__name__)

__all__ = ["FILL_OUTLIER", "FLAGGED_SHARE", "SAMPLE_FLAGS", "STRATIFY_DIMS", "UNIFORM_SHARE",
           "LightKeys", "Sample", "iter_masks", "open_run", "round_systematic", "sample_items",
           "scan_run", "select", "water_fill"]

UNIFORM_SHARE = 0.25
"""Share of ``n`` drawn uniformly from the whole population (the unbiased slice)."""
FLAGGED_SHARE = 0.25
"""Share of ``n`` drawn from the flagged masks (oversampling them)."""
STRATIFY_DIMS = ("class", "score")
"""What ``stratify`` may name: the mask's class, the decile of its score."""
SCORE_BINS = 10
"""Score quantile bins of the ``score`` stratification (deciles)."""
FILL_OUTLIER_Z = 3.5
"""Robust z-score beyond which a fill ratio is an outlier (Iglewicz & Hoaglin's cut)."""
def _check(image_id: Any, box_id: Any) -> int:
    return zlib.crc32(f"{image_id}\x00{box_id}".encode())


class _KeyCollector:
    """Builds ``LightKeys`` from a stream of mask dicts."""

    def __init__(self) -> None:
        self.index: dict[str, int] = {}
        self.names: list[str] = []
        self.label = array("i")
        self.score = array("f")
        self.fill = array("f")
        self.bits = array("H")
        self.check = array("I")
        self.where = array("i")
        self.fill_stats = ClassFillStats()

    def add(self, loc: Locator, m: dict[str, Any]) -> None:
        label = str(m.get("label", ""))
        k = self.index.get(label)
        if k is None:
            k = self.index[label] = len(self.index)
            self.names.append(str(m.get("label_name") or label))
        metrics = m.get("metrics") or {}
        fill = metrics.get("fill_ratio")
        score = m.get("score")
        self.label.append(k)
        self.score.append(float(score) if score is not None else math.nan)
        self.fill.append(float(fill) if fill is not None else math.nan)
        self.bits.append(sum(FLAG_BIT.get(f, 0) for f in set(metrics.get("flags") or ())))
        self.check.append(_check(m.get("image_id"), m.get("box_id")))
        self.where.extend(loc)
        if fill is not None:
            self.fill_stats.add(label, float(fill))

    def finish(self) -> LightKeys:
        keys = LightKeys(
            label_ids=list(self.index), label_names=self.names,
            label=np.frombuffer(self.label, np.int32).copy(),
            score=np.frombuffer(self.score, np.float32).copy(),
            fill=np.frombuffer(self.fill, np.float32).copy(),
            bits=np.frombuffer(self.bits, np.uint16).copy(),
            check=np.frombuffer(self.check, np.uint32).copy(),
            where=np.frombuffer(self.where, np.int32).reshape(-1, 3).copy(),
            fill_stats=self.fill_stats)
        _mark_fill_outliers(keys)
        return keys


def _mark_fill_outliers(keys: LightKeys) -> None:
    """Set the ``fill_outlier`` bit where ``|robust z| > FILL_OUTLIER_Z`` within the class."""
    n_cls = len(keys.label_ids)
    center = np.full(n_cls, np.nan)
    scale = np.full(n_cls, np.nan)
    for k, label in enumerate(keys.label_ids):
        cs = keys.fill_stats.center_scale(label)
        if cs is not None:
            center[k], scale[k] = cs
    if not len(keys) or np.isnan(scale).all():
        return
    with np.errstate(invalid="ignore"):
        z = np.abs(keys.fill - center[keys.label]) / scale[keys.label]
        out = z > FILL_OUTLIER_Z
    keys.bits[out] |= np.uint16(FLAG_BIT[FILL_OUTLIER])


def scan_run(run: str | RunSnapshot | Any) -> tuple[RunSnapshot, LightKeys, dict[str, Any]]:
    """Pass 1 over a run folder (or an opened ``RunSnapshot``): ``(snapshot, keys, summary)``.

    ``summary`` is the run's overview (``boxmask.quality.summary``): counts, histograms, flag
    rates, the per-class table.
    """
    src = run if isinstance(run, RunSnapshot) else open_run(run)
    collector = _KeyCollector()
    summary = SummaryCollector()
    for loc, m in iter_located(src):
        collector.add(loc, m)
        summary.add(m)
    for e in iter_errors(src):
        summary.add_error(e)
    keys = collector.finish()
    log.info("scanned %d masks of %s (%s)", len(keys), src.run_dir, src.kind)
    return src, keys, summary.finish(keys, src)



def water_fill(caps: np.ndarray, budget: float) -> np.ndarray:
    """Share ``budget`` as equally as the ``caps`` allow: ``min(cap_h, level)`` summing to
    ``min(budget, sum(caps))`` (real numbers; the level is found exactly, caps in ascending order).
    """
    caps = np.asarray(caps, dtype=np.float64)
    out = np.zeros_like(caps)
    if budget <= 0 or caps.size == 0:
        return out
    if budget >= caps.sum():
        return caps.copy()
    left, remaining = caps.size, float(budget)
    for h in np.argsort(caps, kind="stable"):
        level = remaining / left
        if caps[h] > level:
            break
        out[h] = caps[h]
        remaining -= caps[h]
        left -= 1
    out[out < caps] = np.minimum(caps[out < caps], remaining / max(left, 1))
    return out


def round_systematic(expected: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Integers ``k_h`` with ``E[k_h] = expected_h`` and ``sum(k) = round(sum(expected))``.

    ``floor(expected_h)`` plus one for the cells hit by systematic sampling over the fractional
    parts (one random start, unit steps): a cell gets its extra one with probability exactly its
    fractional part, and the total is fixed.
    """
    expected = np.asarray(expected, dtype=np.float64)
    k = np.floor(expected + 1e-9).astype(np.int64)
    frac = np.clip(expected - k, 0.0, 1.0)
    extra = int(round(expected.sum())) - int(k.sum())
    if extra <= 0:
        return k
    edges = np.cumsum(frac)
    edges *= extra / edges[-1]  # absorb float error so that exactly ``extra`` points land
    points = rng.uniform() + np.arange(extra)
    hit = np.searchsorted(edges, points, side="right")
    k[np.minimum(hit, k.size - 1)] += 1
    return k


def _primary_flag(bits: np.ndarray) -> np.ndarray:
    """Index in ``SAMPLE_FLAGS`` of the lowest set bit (-1 where none)."""
    b = bits.astype(np.int64)
    low = b & -b
    out = np.full(b.size, -1, dtype=np.int64)
    nz = low > 0
    out[nz] = np.log2(low[nz]).astype(np.int64)
    return out


def _score_edges(scores: np.ndarray) -> np.ndarray:
    """Interior decile cuts (``SCORE_BINS - 1`` quantiles) of the finite scores."""
    finite = scores[np.isfinite(scores)]
    if finite.size == 0:
        return np.zeros(0)
    return np.quantile(finite.astype(np.float64), np.arange(1, SCORE_BINS) / SCORE_BINS)


@dataclass
class Sample:
    """The rows a design picked, with why and with what probability."""

    rows: np.ndarray
    """Rows of ``LightKeys`` (stream order), ascending."""
    why: list[list[str]]
    """Per row: the share it was drawn for: ``[uniform]``, ``[flagged]``, ``[stratum]`` or
    ``[all]`` (one reason: the draws never overlap)."""
    p_uniform: np.ndarray
    p_flagged: np.ndarray
    p_stratum: np.ndarray
    probability: np.ndarray
    """Inclusion probability ``a_h / N_h`` (``= p_uniform + p_flagged + p_stratum``)."""
    stratum: list[str]
    """Per row: its class x score cell, e.g. ``class=tench score_decile=3``."""
    flag_stratum: list[str | None]
    """Per row: its primary flag, None when unflagged."""
    design_stratum: list[str] = field(default_factory=list)
    """Per row: the design stratum it was drawn in (``flag=leaks`` or its class x score cell)."""
    design: dict[str, Any] = field(default_factory=dict)
    """JSON-able description: population, shares, strata, score decile cuts, estimators."""



def _total(parts: dict[str, np.ndarray]) -> np.ndarray:
    """Elementwise sum of the per-stratum expected draws of each part."""
    return functools.reduce(np.add, parts.values())


def _locator(where: Sequence[int]) -> Locator:
    """A mask's locator row (file index, line, position in the line) as a ``Locator``."""
    a, b, c = (int(v) for v in where)
    return (a, b, c)

def select(keys: LightKeys, n: int = 200, *, stratify: Sequence[str] = STRATIFY_DIMS,
           flags_only: bool = False, seed: int = 0) -> Sample:
    """Draw a review sample of ``min(n, population)`` distinct masks (module docstring)."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    unknown = [d for d in stratify if d not in STRATIFY_DIMS]
    if unknown:
        raise ValueError(f"cannot stratify by {unknown}; choose from {', '.join(STRATIFY_DIMS)}")
    stratify = tuple(dict.fromkeys(stratify))
    flagged = keys.bits != 0
    pop = np.flatnonzero(flagged) if flags_only else np.arange(len(keys))
    n_pop, n_flagged = pop.size, int(np.count_nonzero(flagged[pop]))
    edges = _score_edges(keys.score[pop]) if "score" in stratify else np.zeros(0)
    decile = np.searchsorted(edges, np.nan_to_num(keys.score, nan=-np.inf), side="right")
    primary = _primary_flag(keys.bits)
    # design strata: flagged masks by primary flag, the others by their class x score cell
    cell = _cells(keys, pop, decile, stratify)
    prim = primary[pop]
    code = np.where(prim >= 0, prim, len(SAMPLE_FLAGS) + cell)
    ids, inverse, sizes = np.unique(code, return_inverse=True, return_counts=True)
    is_flag = ids < len(SAMPLE_FLAGS)
    rng = np.random.default_rng(np.random.SeedSequence(seed))

    if n_pop <= n:
        budgets = {"uniform": 0, "flagged": 0, "stratum": 0}
        k = sizes.copy()
        parts = {"all": sizes.astype(np.float64)}
    else:
        n_u = math.ceil(UNIFORM_SHARE * n)
        n_f = min(round(FLAGGED_SHARE * n), n_flagged)
        n_s = n - n_u - n_f
        if not is_flag.any():
            n_s, n_f = n_s + n_f, 0
        budgets = {"uniform": n_u, "flagged": n_f, "stratum": n_s}
        uniform = n_u * sizes / n_pop
        room = sizes - uniform
        flag_part = np.zeros(ids.size)
        flag_part[is_flag] = water_fill(room[is_flag], n_f)
        strat_part = water_fill(room - flag_part, n_s + n_f - flag_part.sum())
        parts = {"uniform": uniform, "flagged": flag_part, "stratum": strat_part}
        k = round_systematic(_total(parts), rng)
    expected = _total(parts)
    chosen, why = [], []
    order = np.argsort(inverse, kind="stable")
    starts = np.concatenate([[0], np.cumsum(sizes)])
    names = list(parts)
    for h in np.flatnonzero(k):
        members = pop[order[starts[h]:starts[h + 1]]]
        picked = members[rng.choice(members.size, size=int(k[h]), replace=False)]
        share = np.array([parts[p][h] for p in names]) / expected[h]
        reason = rng.choice(len(names), size=picked.size, p=share / share.sum())
        chosen.append(picked)
        why.append(reason)
    rows = np.concatenate(chosen) if chosen else np.zeros(0, dtype=np.int64)
    reasons = np.concatenate(why) if why else np.zeros(0, dtype=np.int64)
    order_rows = np.argsort(rows, kind="stable")
    rows, reasons = rows[order_rows], reasons[order_rows]
    h_of = inverse[np.searchsorted(pop, rows)]
    per = {p: parts.get(p, np.zeros(ids.size))[h_of] / sizes[h_of]
           for p in ("uniform", "flagged", "stratum")}
    if "all" in parts:
        per["uniform"] = np.ones(rows.size)
    labels = [_stratum_label(int(c), keys, stratify, edges) for c in ids]
    sample = Sample(
        rows=rows, why=[[names[r]] for r in reasons],
        p_uniform=per["uniform"], p_flagged=per["flagged"], p_stratum=per["stratum"],
        probability=expected[h_of] / sizes[h_of],
        stratum=[_cell_name(keys, int(r), decile, stratify, edges) for r in rows],
        flag_stratum=[SAMPLE_FLAGS[primary[r]] if primary[r] >= 0 else None for r in rows],
        design_stratum=[labels[h] for h in h_of])
    sample.design = _design(keys, sample, pop, n, stratify, flags_only, seed, budgets, edges,
                            n_flagged, labels, sizes, expected, k)
    return sample


def _stratum_label(code: int, keys: LightKeys, stratify: tuple[str, ...],
                   edges: np.ndarray) -> str:
    if code < len(SAMPLE_FLAGS):
        return f"flag={SAMPLE_FLAGS[code]}"
    cell = code - len(SAMPLE_FLAGS)
    parts = []
    if "class" in stratify:
        k = cell // SCORE_BINS if "score" in stratify else cell
        parts.append(f"class={keys.label_names[k]}")
    if "score" in stratify:
        parts.append(f"score_decile={cell % SCORE_BINS}")
    return " ".join(parts) or "unflagged"


def _cells(keys: LightKeys, pop: np.ndarray, decile: np.ndarray,
           stratify: tuple[str, ...]) -> np.ndarray:
    cell = np.zeros(pop.size, dtype=np.int64)
    if "class" in stratify:
        cell = keys.label[pop].astype(np.int64)
    if "score" in stratify:
        cell = cell * SCORE_BINS + decile[pop]
    return cell


def _cell_name(keys: LightKeys, row: int, decile: np.ndarray, stratify: tuple[str, ...],
               edges: np.ndarray) -> str:
    parts = []
    if "class" in stratify:
        parts.append(f"class={keys.label_names[keys.label[row]]}")
    if "score" in stratify:
        d = int(decile[row])
        lo = f"{edges[d - 1]:.3g}" if d > 0 else "-inf"
        hi = f"{edges[d]:.3g}" if d < edges.size else "inf"
        parts.append(f"score_decile={d} [{lo},{hi})")
    return " ".join(parts) or "all"


def _design(keys: LightKeys, sample: Sample, pop: np.ndarray, n: int,
            stratify: tuple[str, ...], flags_only: bool, seed: int, budgets: dict[str, int],
            edges: np.ndarray, n_flagged: int, labels: list[str], sizes: np.ndarray,
            expected: np.ndarray, k: np.ndarray) -> dict[str, Any]:
    prim = _primary_flag(keys.bits[pop])
    flag_cells = {SAMPLE_FLAGS[i]: int(c) for i, c in enumerate(np.bincount(
        prim[prim >= 0], minlength=len(SAMPLE_FLAGS))) if c}
    return {
        "seed": seed, "n_requested": n, "n_sampled": int(sample.rows.size),
        "version": 2,
        "population": {"masks": int(pop.size), "flags_only": flags_only,
                       "flagged": n_flagged, "run_masks": len(keys)},
        "shares": {"uniform": UNIFORM_SHARE, "flagged": FLAGGED_SHARE},
        "draws": {r: {"size": v, "picked": sum(r in w for w in sample.why)}
                  for r, v in budgets.items()},
        "stratify": list(stratify),
        "stratum_cells": sum(not s.startswith("flag=") for s in labels),
        "flagged_cells": flag_cells,
        "strata": [{"stratum": s, "masks": int(N), "expected": round(float(a), 6),
                    "sampled": int(m), "probability": float(a / N)}
                   for s, N, a, m in zip(labels, sizes, expected, k, strict=True)],
        "score_decile_cuts": [round(float(e), 6) for e in edges],
        "fill_outlier_z": FILL_OUTLIER_Z, "fill_outlier_min_class": MIN_CLASS_COUNT,
        "expected_sample_size": round(float(expected.sum()), 3),
        "estimators": {
            "all_items": "error rate = sum(y/pi) / sum(1/pi) over reviewed items (Hajek), "
                         "pi = inclusion_probability; bad masks in population = sum(y/pi)",
            "uniform_slice": "error rate = bad / reviewed among items whose why is 'uniform' "
                             "(each mask is in that slice with the same probability)",
        },
    }


def sample_items(src: RunSnapshot, keys: LightKeys, sample: Sample) -> list[dict[str, Any]]:
    """Pass 2: the sampled masks' full dicts (RLE included) with the design's fields added.

    Each item is the ``masks.jsonl`` dict plus ``sample_index``, ``flags`` (metrics flags and
    ``fill_outlier``), ``why``, ``stratum``, ``flag_stratum``, ``design_stratum`` (the stratum
    it was drawn in: ``sample_design.json`` lists them), ``inclusion_probability``,
    ``weight`` (``1 / inclusion_probability``) and ``p_uniform`` / ``p_flagged`` / ``p_stratum``.
    """
    locs = [_locator(keys.where[r]) for r in sample.rows]
    masks = fetch(src, locs)
    items = []
    for k, (r, loc) in enumerate(zip(sample.rows, locs, strict=True)):
        m = dict(masks[loc])
        if _check(m.get("image_id"), m.get("box_id")) != int(keys.check[r]):
            raise LookupError(f"mask {k} of the sample changed between the two passes over "
                              f"{src.run_dir}; run the sampling again")
        p = float(sample.probability[k])
        m.update({
            "sample_index": k,
            "flags": keys.flags(int(r)),
            "why": sample.why[k],
            "stratum": sample.stratum[k],
            "flag_stratum": sample.flag_stratum[k],
            "design_stratum": sample.design_stratum[k],
            "inclusion_probability": p,
            "weight": 1.0 / p,
            "p_uniform": float(sample.p_uniform[k]),
            "p_flagged": float(sample.p_flagged[k]),
            "p_stratum": float(sample.p_stratum[k]),
        })
        items.append(m)
    return items
