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
carry a flag (``boxmask.quality.metrics.FLAGS``) or when its fill ratio is an outlier within its
class (robust z-score above ``FILL_OUTLIER_Z``, classes of at least ``MIN_CLASS_COUNT`` masks:
``metrics.ClassFillStats``); the latter adds the flag ``fill_outlier``, which exists only here.

Design
------
A sample of at most ``n`` masks is the union of three independent draws, each a simple random
sample without replacement (SRS) within its cells, from its own random stream of ``seed``:

* **uniform**: ``ceil(UNIFORM_SHARE * n)`` masks (25 %) from the whole population. Alone it is an
  SRS: the share of bad masks among the reviewed uniform items is an unbiased estimate of the
  population's error rate, with no weights.
* **flagged**: ``round(FLAGGED_SHARE * n)`` masks (25 %, at most all flagged ones) from the flagged
  masks, allocated equally over their *primary* flag (the first of their flags in
  ``SAMPLE_FLAGS`` order), so that rare failure kinds are seen too.
* **stratum**: the rest, allocated equally over the non-empty cells of ``stratify``: class x score
  decile by default. Score deciles are cut at the 10 %, ..., 90 % quantiles of the population's
  scores (ties can merge deciles); ``stratify=("class",)`` or ``("score",)`` use one of the two;
  ``()`` gives this share to the uniform draw.

Equal allocation is capped by the cell sizes (a cell smaller than its share is taken whole, the
rest is shared by the others); when the budget is not a multiple of the cells left, a random
subset of them gets one extra mask. Every cell is covered once the budget reaches the number of
cells; below that, which cells get a mask is itself random.

When the population has at most ``n`` masks, all are taken (``why = ["all"]``, probability 1).

Inclusion probabilities
-----------------------
Within each draw a mask of cell ``h`` is included with probability ``E[m_h] / N_h`` (expected
allocation over cell size), and the draws are independent, so the probability that a mask is in
the sample is exactly ``pi = 1 - (1 - p_uniform) (1 - p_flagged) (1 - p_stratum)``. A mask drawn by
several draws appears once, with every reason in ``why``; so the sample may hold slightly fewer
than ``n`` masks (rarely more than a handful on a large run).

Estimating an error rate from a review: with ``y_i = 1`` for each reviewed mask judged bad,

* unweighted, uniform slice only: ``sum(y_i) / count`` over the items whose ``why`` holds
  ``uniform``;
* all reviewed items (Horvitz-Thompson / Hajek): bad masks in the population
  ``~ sum(y_i / pi_i)``, error rate ``~ sum(y_i / pi_i) / sum(1 / pi_i)`` (``weight = 1 / pi``),
  where ``sum(1 / pi_i)`` is itself an unbiased estimate of the population size ``N``.

Both estimate the rate over the population (all masks, or the flagged ones with ``flags_only``).
Same run, same arguments, same seed: same sample.
"""

from __future__ import annotations

import logging
import math
import zlib
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from .metrics import FLAGS, MIN_CLASS_COUNT, ClassFillStats
from .runmasks import Locator, MaskSource, fetch, iter_errors, iter_located, iter_masks, open_run
from .summary import SummaryCollector

log = logging.getLogger(__name__)

__all__ = ["FILL_OUTLIER", "FLAGGED_SHARE", "SAMPLE_FLAGS", "STRATIFY_DIMS", "UNIFORM_SHARE",
           "LightKeys", "Sample", "iter_masks", "open_run", "sample_items", "scan_run", "select"]

UNIFORM_SHARE = 0.25
"""Share of ``n`` drawn uniformly from the whole population (the unbiased slice)."""
FLAGGED_SHARE = 0.25
"""Share of ``n`` drawn from the flagged masks (oversampling them)."""
STRATIFY_DIMS = ("class", "score")
"""What ``stratify`` may name: the mask's class, the decile of its score."""
SCORE_BINS = 10
"""Score quantile bins of the ``score`` stratification (deciles)."""
FILL_OUTLIER = "fill_outlier"
"""The flag for a fill ratio that is an outlier within its class (added at sampling)."""
FILL_OUTLIER_Z = 3.5
"""Robust z-score beyond which a fill ratio is an outlier (Iglewicz & Hoaglin's cut)."""
SAMPLE_FLAGS = (*FLAGS, FILL_OUTLIER)
"""Every flag a sampled item can carry; bit ``i`` of ``LightKeys.bits`` is ``SAMPLE_FLAGS[i]``."""

_FLAG_BIT = {f: 1 << i for i, f in enumerate(SAMPLE_FLAGS)}


@dataclass
class LightKeys:
    """Per-mask keys of one pass over a run, in stream order (row ``i`` = the i-th mask)."""

    label_ids: list[str]
    """Class index -> label id."""
    label_names: list[str]
    label: np.ndarray
    """int32 class index per mask."""
    score: np.ndarray
    """float32 engine score."""
    fill: np.ndarray
    """float32 fill ratio (NaN where the metrics have none)."""
    bits: np.ndarray
    """uint16 flag bits (``SAMPLE_FLAGS``), ``fill_outlier`` included."""
    check: np.ndarray
    """uint32 CRC-32 of ``image_id + NUL + box_id``: the second pass checks it."""
    where: np.ndarray
    """(N, 3) int32 ``Locator`` of each mask."""
    fill_stats: ClassFillStats
    flag_names: ClassVar[tuple[str, ...]] = SAMPLE_FLAGS
    """Bit ``i`` of ``bits`` is ``flag_names[i]``."""

    def __len__(self) -> int:
        return int(self.label.size)

    def flags(self, row: int) -> list[str]:
        b = int(self.bits[row])
        return [f for f in SAMPLE_FLAGS if b & _FLAG_BIT[f]]


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
        self.bits.append(sum(_FLAG_BIT.get(f, 0) for f in set(metrics.get("flags") or ())))
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
    keys.bits[out] |= np.uint16(_FLAG_BIT[FILL_OUTLIER])


def scan_run(run: str | MaskSource | Any) -> tuple[MaskSource, LightKeys, dict[str, Any]]:
    """Pass 1 over a run folder (or an opened source): ``(source, keys, summary)``.

    ``summary`` is the run's overview (``boxmask.quality.summary``): counts, histograms, flag
    rates, the per-class table.
    """
    src = run if isinstance(run, MaskSource) else open_run(run)
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


# ------------------------------------------------------------------------------- the design

def allocate(sizes: np.ndarray, budget: int,
             rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Equal allocation of ``budget`` draws over cells of ``sizes``, capped by each size.

    Returns ``(m, expected)``: the allocation drawn (ints, ``sum(m) = min(budget, sum(sizes))``)
    and its expectation per cell (floats). Cells no larger than their equal share are taken whole;
    the others get ``base`` each and a random subset of them one more.
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    if budget >= sizes.sum():
        return sizes.copy(), sizes.astype(np.float64)
    m = np.zeros_like(sizes)
    capped = np.zeros(sizes.size, dtype=bool)
    left, remaining = sizes.size, int(budget)
    for h in np.argsort(sizes, kind="stable"):
        if sizes[h] * left > remaining:
            break
        capped[h] = True
        m[h] = sizes[h]
        remaining -= int(sizes[h])
        left -= 1
    expected = m.astype(np.float64)
    open_cells = np.flatnonzero(~capped)
    base, extra = divmod(remaining, open_cells.size)
    m[open_cells] = base  # an open cell holds more than remaining / left >= base masks
    if extra:
        m[rng.choice(open_cells, size=extra, replace=False)] += 1
    expected[open_cells] = base + extra / open_cells.size
    return m, expected


def _draw(cells: np.ndarray, rows: np.ndarray, budget: int,
          rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Stratified SRS of ``rows`` (cell ids ``cells``): ``(chosen rows, probability per row)``."""
    prob = np.zeros(rows.size)
    if budget <= 0 or rows.size == 0:
        return np.zeros(0, dtype=np.int64), prob
    ids, inverse, sizes = np.unique(cells, return_inverse=True, return_counts=True)
    m, expected = allocate(sizes, budget, rng)
    prob = expected[inverse] / sizes[inverse]
    order = np.argsort(inverse, kind="stable")
    starts = np.concatenate([[0], np.cumsum(sizes)])
    chosen = []
    for h in np.flatnonzero(m):
        members = order[starts[h]:starts[h + 1]]
        chosen.append(rows[members[rng.choice(members.size, size=m[h], replace=False)]])
    return np.sort(np.concatenate(chosen)), prob


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
    """Per row: ``uniform`` / ``flagged`` / ``stratum`` (or ``all``)."""
    p_uniform: np.ndarray
    p_flagged: np.ndarray
    p_stratum: np.ndarray
    probability: np.ndarray
    """Inclusion probability in the whole design (see the module docstring)."""
    stratum: list[str]
    """Per row: its stratum cell, e.g. ``class=tench score_decile=3``."""
    flag_stratum: list[str | None]
    """Per row: its primary flag (the flagged draw's cell), None when unflagged."""
    design: dict[str, Any] = field(default_factory=dict)
    """JSON-able description: population, draws, sizes, cells, score decile cuts, estimators."""


def select(keys: LightKeys, n: int = 200, *, stratify: Sequence[str] = STRATIFY_DIMS,
           flags_only: bool = False, seed: int = 0) -> Sample:
    """Draw a review sample of at most ``n`` masks from ``keys`` (see the module docstring)."""
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

    if n_pop <= n:
        budgets = {"uniform": 0, "flagged": 0, "stratum": 0}
        rows, ones = pop, np.ones(n_pop)
        picked = {"all": rows}
        pu, pf, ps = ones, np.zeros(n_pop), np.zeros(n_pop)
    else:
        n_u = math.ceil(UNIFORM_SHARE * n)
        n_f = min(round(FLAGGED_SHARE * n), n_flagged)
        n_s = n - n_u - n_f
        if not stratify:
            n_u, n_s = n_u + n_s, 0
        budgets = {"uniform": n_u, "flagged": n_f, "stratum": n_s}
        streams = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3)]
        uniform = np.sort(streams[0].choice(pop, size=n_u, replace=False))
        pu = np.full(n_pop, n_u / n_pop)
        frows = pop[flagged[pop]]
        fchosen, fprob = _draw(primary[frows], frows, n_f, streams[1])
        pf = np.zeros(n_pop)
        pf[np.searchsorted(pop, frows)] = fprob
        cell = _cells(keys, pop, decile, stratify)
        schosen, ps = _draw(cell, pop, n_s, streams[2])
        picked = {"uniform": uniform, "flagged": fchosen, "stratum": schosen}
        rows = np.unique(np.concatenate(list(picked.values())))
    prob = 1.0 - (1.0 - pu) * (1.0 - pf) * (1.0 - ps)
    at = np.searchsorted(pop, rows)
    sets = {k: set(v.tolist()) for k, v in picked.items()}
    sample = Sample(
        rows=rows,
        why=[[k for k in picked if int(r) in sets[k]] for r in rows],
        p_uniform=pu[at], p_flagged=pf[at], p_stratum=ps[at], probability=prob[at],
        stratum=[_cell_name(keys, int(r), decile, stratify, edges) for r in rows],
        flag_stratum=[SAMPLE_FLAGS[primary[r]] if primary[r] >= 0 else None for r in rows])
    sample.design = _design(keys, sample, pop, n, stratify, flags_only, seed, budgets, edges,
                            n_flagged, decile, primary, prob)
    return sample


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
            edges: np.ndarray, n_flagged: int, decile: np.ndarray, primary: np.ndarray,
            prob: np.ndarray) -> dict[str, Any]:
    n_cells = np.unique(_cells(keys, pop, decile, stratify)).size if pop.size else 0
    fprim = primary[pop][primary[pop] >= 0]
    flag_cells = {SAMPLE_FLAGS[i]: int(c) for i, c in enumerate(np.bincount(
        fprim, minlength=len(SAMPLE_FLAGS))) if c}
    return {
        "seed": seed, "n_requested": n, "n_sampled": int(sample.rows.size),
        "population": {"masks": int(pop.size), "flags_only": flags_only,
                       "flagged": n_flagged, "run_masks": len(keys)},
        "shares": {"uniform": UNIFORM_SHARE, "flagged": FLAGGED_SHARE},
        "draws": {k: {"size": v, "picked": sum(k in w for w in sample.why)}
                  for k, v in budgets.items()},
        "stratify": list(stratify), "stratum_cells": int(n_cells),
        "flagged_cells": flag_cells,
        "score_decile_cuts": [round(float(e), 6) for e in edges],
        "fill_outlier_z": FILL_OUTLIER_Z, "fill_outlier_min_class": MIN_CLASS_COUNT,
        "expected_sample_size": round(float(prob.sum()), 3),
        "estimators": {
            "uniform_slice": "error rate = bad / reviewed among items whose why holds 'uniform'",
            "all_items": "error rate = sum(y/pi) / sum(1/pi) over reviewed items, "
                         "pi = inclusion_probability; bad masks in population = sum(y/pi)",
        },
    }


def sample_items(src: MaskSource, keys: LightKeys, sample: Sample) -> list[dict[str, Any]]:
    """Pass 2: the sampled masks' full dicts (RLE included) with the design's fields added.

    Each item is the ``masks.jsonl`` dict plus ``sample_index``, ``flags`` (metrics flags and
    ``fill_outlier``), ``why``, ``stratum``, ``flag_stratum``, ``inclusion_probability``,
    ``weight`` (``1 / inclusion_probability``) and ``p_uniform`` / ``p_flagged`` / ``p_stratum``.
    """
    locs = [tuple(int(v) for v in keys.where[r]) for r in sample.rows]
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
            "inclusion_probability": p,
            "weight": 1.0 / p,
            "p_uniform": float(sample.p_uniform[k]),
            "p_flagged": float(sample.p_flagged[k]),
            "p_stratum": float(sample.p_stratum[k]),
        })
        items.append(m)
    return items
