"""The error rate of a run's masks from a reviewer's verdicts on its review sample.

Input: the sample (``sample.jsonl`` and ``sample_design.json`` of ``boxmask sample``) and the
reviewer's ``verdicts.jsonl`` (exported from the review page). Output: ``review.json``.

Estimator
---------
``y_i = 1`` for a mask judged ``bad``, ``0`` for ``good``; ``unsure`` verdicts and cards not
reviewed are left out. Each decided mask ``i`` of design stratum ``h`` weighs

    w_i = (1 / pi_i) * (k_h / r_h)

``pi_i`` is its inclusion probability, ``k_h`` the number of sampled masks of its stratum and
``r_h`` how many of them got a decided verdict. The second factor is 1 when every card was
decided; otherwise it spreads the weight of the undecided cards over the decided ones of the same
stratum (cards left out are taken to be like the others of their stratum: "missing at random
within strata"). A stratum with no decided card passes its weight to the decided cards of its
weighting class (the flag strata together, the class x score cells of one class together), so
that skipping a card of a low-error cell does not shift weight to the flag strata.

The error rate is the Hajek ratio ``sum(w y) / sum(w)``, over all decided masks
or over a domain: a class (``label_name``) or a flag (masks carrying it; a mask with several
flags counts in each). Bad masks in the population: ``N * rate``.

Interval
--------
A 95 % Wilson score interval on an effective sample size (Korn & Graubard's approach for survey
proportions): ``n_eff = p (1 - p) / V``, where ``V`` is the linearised design variance of the
Hajek ratio under stratified sampling (``design_variance``: strata with one decided mask are
pooled), truncated at the number of decided masks of the group (a weighted, stratified review
is not credited with more information than as many independent verdicts). Where ``V`` is 0 (no
bad or no good mask in the group) Kish's ``n_eff = (sum w)^2 / sum(w^2)`` is used, so a review
with no bad mask still gets an upper bound. Why this and not a bootstrap over the design: most
strata of a review sample hold one or two masks, where a stratified bootstrap has nothing to
resample and understates the uncertainty; a Wilson interval stays inside [0, 1] and keeps its
coverage near 0 errors, where a review of good masks usually is. Without the truncation the
interval undercovers on small samples (89 % at n = 40 in the simulation of the tests); with it,
it errs on the wide side when the flag strata separate bad from good masks well (97-99 % in the
same simulations). The finite population correction is applied at the end: a group of
``N_g = sum(w)`` masks of which ``r`` were reviewed has ``n_eff / (1 - r / N_g)`` in the Wilson
interval, so a small run reviewed in large part gets a narrower interval, and one reviewed whole a
single point. The coverage is checked by simulation in the tests.

More reviews for +-2 points: the smallest ``n_eff`` whose Wilson half-width at the current rate
is at most 0.02, times the current design effect ``r / n_eff`` (reviews per effective review),
shrunk by the finite population correction ``n / (1 + (n - 1) / N_g)`` (``N_g = sum(w)``, the
group's estimated size: a group of 80 masks never needs more than 80 reviews), minus the reviews
done: how many more cards of that group, sampled the same way, to review.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

Z95 = 1.959963984540054
"""Standard normal quantile of a two-sided 95 % interval."""
TARGET_HALF_WIDTH = 0.02
"""Half-width (+-2 points) that ``more_reviews_for_2pt`` aims at."""
VERDICTS = ("good", "bad", "unsure")
METHOD = {
    "estimator": "Hajek: sum(w*y)/sum(w), w = (1/inclusion_probability) * "
                 "(sampled in stratum / decided in stratum), y = 1 for bad, 0 for good; "
                 "unsure and unreviewed cards left out; a stratum without a decided card "
                 "passes its weight to its weighting class (flag strata; cells of its class)",
    "interval": "95% Wilson score interval on n_eff = p(1-p)/V (V: linearised stratified "
                "variance of the Hajek ratio, singleton strata pooled), truncated at the number "
                "of decided masks; Kish's (sum w)^2/sum(w^2) where V = 0; divided by 1 - r/N "
                "(finite population)",
    "more_reviews": "smallest n_eff with Wilson half-width <= 0.02 at the current rate, "
                    "times reviews per effective review, minus reviews done",
    "summary": "Hajek estimate weighted by 1/π; 95% Wilson interval on the design-based "
               "effective sample size (Korn-Graubard).",
}


def wilson(p: float, n: float, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``p`` on ``n`` (possibly fractional) trials."""
    if n <= 0:
        return (0.0, 1.0)
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(max(p * (1 - p), 0.0) / n + z * z / (4 * n * n))
    return (max(0.0, centre - half), min(1.0, centre + half))


def n_for_half_width(p: float, target: float = TARGET_HALF_WIDTH, z: float = Z95) -> float:
    """Smallest ``n`` whose Wilson half-width at ``p`` is at most ``target`` (bisection)."""
    def half(n: float) -> float:
        lo, hi = wilson(p, n, z)
        return (hi - lo) / 2

    lo, hi = 1.0, 2.0
    while half(hi) > target:
        hi *= 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if half(mid) > target else (lo, mid)
    return hi


def design_variance(y: np.ndarray, w: np.ndarray, strata: np.ndarray,
                    domain: np.ndarray | None = None) -> float:
    """Linearised variance of a Hajek ratio (of a domain) under stratified sampling.

    Over all decided masks ``i``: ``z_i = d_i w_i (y_i - p) / sum(d w)`` with ``d_i = 1`` in the
    domain (all masks by default), so a domain's random share of each stratum counts too;
    ``V = sum_h r_h / (r_h - 1) * sum_(i in h) (z_i - mean_h z)^2`` (with-replacement form).
    Strata with a single decided mask have no variance of their own: they are pooled into one
    stratum (collapsed strata, which errs on the wide side).
    """
    d = np.ones(y.size) if domain is None else np.asarray(domain, dtype=np.float64)
    dw = d * w
    if dw.sum() <= 0:
        return math.nan
    p = float(np.sum(dw * y) / np.sum(dw))
    z = dw * (y - p) / np.sum(dw)
    _, inverse, counts = np.unique(strata, return_inverse=True, return_counts=True)
    group = np.where(counts[inverse] > 1, inverse, -1)
    total = 0.0
    for g in np.unique(group):
        zg = z[group == g]
        if zg.size > 1:
            total += zg.size / (zg.size - 1) * float(np.sum((zg - zg.mean()) ** 2))
    return total


def rate(y: np.ndarray, w: np.ndarray, strata: np.ndarray | None = None,
         domain: np.ndarray | None = None) -> dict[str, Any]:
    """Hajek error rate of a domain, its 95 % interval, the reviews still needed for +-2 points.

    ``y``: 1 for bad, 0 for good, over all decided masks; ``w``: their weights; ``strata``:
    their design strata (for the design-based effective sample size; without them, Kish's);
    ``domain``: which of them the rate is about (all by default).
    """
    y = np.asarray(y, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    dom = np.ones(y.size, dtype=bool) if domain is None else np.asarray(domain, dtype=bool)
    yd, wd = y[dom], w[dom]
    reviewed, bad = int(yd.size), int(yd.sum())
    if reviewed == 0 or wd.sum() <= 0:
        return {"reviewed": reviewed, "bad": bad, "rate": None, "ci95": None, "n_eff": 0.0,
                "weight": 0.0, "more_reviews_for_2pt": None}
    p = float(np.sum(wd * yd) / np.sum(wd))
    n_eff = float(wd.sum() ** 2 / np.sum(wd * wd))  # Kish
    if strata is not None and 0 < p < 1:
        var = design_variance(y, w, np.asarray(strata), dom)
        if var > 0:
            n_eff = min(p * (1 - p) / var, float(reviewed))
    size = float(wd.sum())  # the group's estimated number of masks
    # finite population: reviewing a fraction f of the group leaves (1 - f) of the variance
    f = min(reviewed / size, 1.0) if size > 0 else 0.0
    lo, hi = (p, p) if f >= 1.0 else wilson(p, n_eff / (1.0 - f))
    need = n_for_half_width(p) * reviewed / n_eff
    need = need / (1 + (need - 1) / max(size, 1.0))  # finite population: at most all of them
    more = min(math.ceil(need - 1e-9), max(math.ceil(size - 1e-9), reviewed)) - reviewed
    return {"reviewed": reviewed, "bad": bad, "rate": round(p, 6),
            "ci95": [round(lo, 6), round(hi, 6)], "n_eff": round(n_eff, 2),
            "weight": round(size, 3), "more_reviews_for_2pt": max(0, more)}


def _stratum(item: dict[str, Any]) -> str:
    return str(item.get("design_stratum", item.get("stratum", "")))


def _weighting_class(item: dict[str, Any]) -> str:
    """Where a stratum with no decided card passes its weight: the flag strata to each other,
    a class x score cell to the other cells of its class."""
    h = _stratum(item)
    return "flagged" if h.startswith("flag=") else \
        f"class={item.get('label_name') or item.get('label') or ''}"


def weights(items: Sequence[dict[str, Any]], decided: Sequence[bool] | np.ndarray) -> np.ndarray:
    """Per item: ``1 / pi`` adjusted for undecided cards, 0 where undecided (module docstring).

    Within a stratum the decided cards carry the weight of the undecided ones. A stratum none of
    whose cards is decided passes its weight to the decided cards of its weighting class (the
    flag strata together; the cells of one class together), else to all decided cards.
    """
    is_decided = np.asarray(decided, dtype=bool)
    base = np.array([1.0 / float(i["inclusion_probability"]) for i in items])
    strata = np.array([_stratum(i) for i in items])
    classes = np.array([_weighting_class(i) for i in items])
    out = np.where(is_decided, base, 0.0)
    lost: dict[str, float] = defaultdict(float)
    for h in np.unique(strata):
        at = strata == h
        kept = out[at].sum()
        if kept > 0:
            out[at] *= base[at].sum() / kept
        else:
            lost[str(classes[at][0])] += float(base[at].sum())
    spill = 0.0
    for c, weight in lost.items():
        at = (classes == c) & is_decided
        if out[at].sum() > 0:
            out[at] *= 1 + weight / out[at].sum()
        else:
            spill += weight
    if spill and out.sum() > 0:
        out *= 1 + spill / out.sum()
    return out


def sample_id(items: Sequence[dict[str, Any]]) -> str:
    """A short id of a sample: SHA-256 of its ``image_id NUL box_id`` lines, 16 hex digits.

    The review page keys its stored verdicts by run and by this id; verdicts exported from the
    page carry it, so an estimate can check that they were made on this sample.
    """
    text = "".join(f"{i.get('image_id')}\x00{i.get('box_id')}\n" for i in items)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def read_verdicts(path: str | Path) -> tuple[dict[int, dict[str, Any]], list[str]]:
    """``verdicts.jsonl`` -> ``({sample_index: line}, problems)``.

    A line that is not JSON, has no integer ``sample_index`` or an unknown ``verdict`` is left
    out and described in ``problems``; of several lines for one card the latest
    (``reviewed_at``, then file order) wins.
    """
    out: dict[int, dict[str, Any]] = {}
    problems: list[str] = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                v = json.loads(line)
                k = v["sample_index"]
                if not isinstance(k, int) or isinstance(k, bool):
                    raise TypeError("sample_index is not an integer")
                if v.get("verdict") not in VERDICTS:
                    raise ValueError(f"verdict {v.get('verdict')!r} is not one of {VERDICTS}")
            except (ValueError, KeyError, TypeError) as e:
                problems.append(f"{path}:{n}: {e}")
                continue
            old = out.get(k)
            if old is None or str(v.get("reviewed_at") or "") >= str(old.get("reviewed_at") or ""):
                out[k] = v
    return out, problems


def estimate(items: Sequence[dict[str, Any]], design: dict[str, Any],
             verdicts: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """The ``review.json`` dict from the sample's items, its design and the verdicts."""
    problems = []
    by_index = {int(i["sample_index"]): i for i in items}
    for k, v in verdicts.items():
        item = by_index.get(k)
        if item is None:
            problems.append(f"sample_index {k} is not in the sample")
        elif (v.get("image_id"), v.get("box_id")) != (item.get("image_id"), item.get("box_id")) \
                and v.get("image_id") is not None:
            problems.append(f"sample_index {k}: verdict names image {v.get('image_id')} box "
                            f"{v.get('box_id')}, the sample has image {item.get('image_id')} "
                            f"box {item.get('box_id')}")
    verdict = [str((verdicts.get(int(i["sample_index"])) or {}).get("verdict") or "")
               for i in items]
    decided = np.array([v in ("good", "bad") for v in verdict])
    y = np.array([v == "bad" for v in verdict], dtype=np.float64)
    w = weights(items, decided)
    population = int((design.get("population") or {}).get("masks") or 0)

    strata = np.array([_stratum(i) for i in items])

    def group(mask: np.ndarray) -> dict[str, Any]:
        return rate(y[decided], w[decided], strata[decided], None if mask.all() else mask[decided])

    overall = group(np.ones(len(items), dtype=bool))
    if overall["rate"] is not None and population:
        overall["bad_masks"] = round(overall["rate"] * population, 1)
        overall["bad_masks_ci95"] = [round(c * population, 1) for c in overall["ci95"]]
    classes = sorted({str(i.get("label_name") or i.get("label") or "") for i in items})
    flags = sorted({f for i in items for f in i.get("flags") or []})
    names = np.array([str(i.get("label_name") or i.get("label") or "") for i in items])
    item_flags = [set(i.get("flags") or []) for i in items]
    reasons: dict[str, int] = defaultdict(int)
    for v in verdicts.values():
        if v.get("verdict") == "bad":
            reasons[str(v.get("reason") or "none")] += 1
    return {
        "sample_id": design.get("sample_id"),
        "population": population,
        "sample_size": len(items),
        "reviewed": int(sum(bool(v) for v in verdict)),
        "counted": int(decided.sum()),
        "unsure": int(sum(v == "unsure" for v in verdict)),
        "method": METHOD,
        "overall": overall,
        "per_class": {c: group(names == c) for c in classes},
        "per_flag": {f: group(np.array([f in s for s in item_flags])) for f in flags},
        "bad_reasons": dict(sorted(reasons.items())),
        "problems": problems,
    }


def read_sample(folder: str | Path) -> tuple[list[dict[str, Any]], dict[str, Any],
                                               dict[str, Any]]:
    """``(items, design, summary)`` of a review report folder (``boxmask sample``'s output)."""
    folder = Path(folder)
    items = [json.loads(x) for x in _lines((folder / "sample.jsonl").read_text(encoding="utf-8"))]
    meta = json.loads((folder / "sample_design.json").read_text(encoding="utf-8"))
    design = meta.get("design") or {}
    if "sample_id" not in design:  # a report written before sample ids existed
        design["sample_id"] = sample_id(items)
    return items, design, meta.get("summary") or {}


def _lines(text: str) -> Iterable[str]:
    return (x for x in text.splitlines() if x.strip())
