"""The review report of a run: a reproducible sample of its masks in a static HTML gallery.

``sample_run`` writes into ``output``:

* ``index.html``: a summary of the run (counts of masks, images, errors by stage, engines and
  inside-point policies; score and metric histograms as inline SVG; flag rates; a sortable
  per-class table), the evaluation table when ``<run>/eval.json`` exists
  (``boxmask.quality.evaluate``), then one card per sampled mask (thumbnail, image id, box id,
  class, score, flags, why it was sampled), which a small inline script sorts and filters. The
  controls are mirrored in the URL hash, e.g. ``index.html#flag=leaks&sort=score`` (keys
  ``sort``, ``flag``, ``class``, ``why``), so a filtered view can be bookmarked or shared.
* ``thumbs/<sample_index>.jpg``: the thumbnails (``boxmask.quality.render``). They are files next
  to the page rather than inline data URLs: the page stays small and quick to open with thousands
  of cards (images load lazily as one scrolls), and the thumbnails can be used on their own.
* ``sample.jsonl``: one line per sampled mask: its ``masks.jsonl`` dict plus ``sample_index``,
  ``flags``, ``why``, ``stratum``, ``inclusion_probability``, ``weight`` and ``thumb`` (see
  ``boxmask.quality.sampling`` for the design and how to reweight a reviewer's verdicts). Join
  verdicts back on ``(image_id, box_id)`` or ``sample_index``.
* Verdicts: each card has good / bad / unsure buttons and a reason (``REASONS``), driven by the
  keyboard (``j``/``k`` move, digits pick a reason, ``g``/``b``/``u`` decide and move on, ``x``
  clears, ``e`` exports). They are stored in ``localStorage`` under
  ``boxmask-verdicts:<run path>:<sample_id>`` and downloaded as ``verdicts.jsonl`` (one JSON line
  per reviewed card: ``sample_index``, ``image_id``, ``box_id``, ``label``, ``verdict``,
  ``reason``, ``reviewed_at``, ``run``, ``sample_id``); ``boxmask.quality.review`` turns them into
  an error-rate estimate, ``<run>/review.json``, shown on the page when it belongs to this sample.
* ``sample_design.json``: ``{"design": ..., "summary": ...}``: the strata, their sizes and
  allocations, the ``sample_id``, the ``plan_id`` of the run (when it has a plan: verdicts on
  the sample are refused by ``boxmask export`` and ``boxmask redo`` of another run), and the run
  summary shown on the page.

The page needs no server and loads nothing from the network: open ``index.html`` from disk.
The same run, arguments and seed give the same files.
"""

from __future__ import annotations

import html
import json
import logging
import re
from collections import Counter
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_text
from ..imageio import DEFAULT_MAX_PIXELS
from ..jobs.layout import JobLayout
from ..jobs.plan import load_plan
from ..maskmetrics import (
    FRAGMENTED_LARGEST,
    FRAGMENTED_MIN_COMPONENTS,
    HOLE_MIN_FRACTION,
    LEAKS_FRACTION,
    LOOSE_TIGHTNESS,
    LOW_SCORE,
    MIN_SIDES_TOUCHED,
    TINY_FILL,
)
from .render import BOX_RGB, FILL_RGB, NEGATIVE_RGB, POSITIVE_RGB, render_thumbnails
from .review import read_sample, sample_id
from .sampling import (
    FILL_OUTLIER_Z,
    SAMPLE_FLAGS,
    STRATIFY_DIMS,
    sample_items,
    scan_run,
    select,
)

log = logging.getLogger(__name__)

REVIEW_FILE = "review.json"
"""Where ``boxmask review estimate`` writes its estimate, in the run folder."""
TEMPLATE = "report_template.html"
"""The page skeleton (styles and script), package data next to this module."""
THUMB_SIZE = 256
"""Default longer side of a thumbnail, in pixels."""

FLAG_MEANING = {
    "empty": "no mask pixel",
    "tiny": f"mask fills < {TINY_FILL:.0%} of the box",
    "loose": f"IoU of mask box and input box < {LOOSE_TIGHTNESS:g}",
    "leaks": f"> {LEAKS_FRACTION:.0%} of the mask lies outside the box",
    "fragmented": f"> {FRAGMENTED_MIN_COMPONENTS} parts, largest < {FRAGMENTED_LARGEST:.0%}",
    "holes": f"a hole of >= {HOLE_MIN_FRACTION:.0%} of the mask",
    "untouched_sides": f"mask reaches < {MIN_SIDES_TOUCHED} box sides",
    "low_score": f"score < {LOW_SCORE:g}",
    "fill_outlier": f"fill ratio is an outlier in its class (|robust z| > {FILL_OUTLIER_Z:g})",
}
SORTS = (("i", "sample order"), ("score", "score, low first"), ("-score", "score, high first"),
         ("class", "class"), ("tightness", "tightness, low first"), ("fill", "fill, low first"),
         ("-leakage", "leakage, high first"), ("pi", "inclusion probability"),
         ("image", "image id"))

_THUMB_NAME = re.compile(r"\d{5}\.jpg")

VERDICTS = ("good", "bad", "unsure")
"""What a reviewer can say of a mask; the page's keys are their first letters."""
REASONS = (*SAMPLE_FLAGS, "other")
"""Optional reasons of a verdict: the flags, then ``other``; keys 1-9 and 0 in this order."""
VERDICT_CONTROLS = (
    '<div class="verdict" role="group" aria-label="verdict">'
    + "".join(f'<button type="button" data-verdict="{v}" title="{v} ({v[0]})">{v}</button>'
              for v in VERDICTS)
    + '<select class="reason" aria-label="reason"><option value="">reason…</option>'
    + "".join(f'<option value="{r}">{(i + 1) % 10}: {r}</option>' for i, r in enumerate(REASONS))
    + "</select></div>")


def sample_run(run_dir: str | Path, output: str | Path, *, n: int = 200,
               stratify: Sequence[str] = STRATIFY_DIMS, flags_only: bool = False,
               seed: int = 0, images_root: str | Path | None = None,
               thumb_size: int = THUMB_SIZE) -> Path:
    """Sample ``n`` masks of the run at ``run_dir`` and write the review report to ``output``.

    Args:
        run_dir: a conversion's output folder, merged (``masks.jsonl``) or in progress.
        output: folder of the report (created; files of an earlier report are replaced).
        n: most masks sampled (see ``boxmask.quality.sampling`` for the design).
        stratify: cells of the stratified draw: any of ``"class"``, ``"score"`` (score decile).
        flags_only: sample flagged masks only.
        seed: the sample is a function of the run, the arguments and this seed.
        images_root: folder the masks' ``image_path`` are relative to; default: the run's
            ``images_root`` setting in ``plan.json``.
        thumb_size: longer side of a thumbnail in pixels.

    Returns the path of ``index.html``.
    """
    if thumb_size < 16:
        raise ValueError(f"thumb_size must be at least 16 px, got {thumb_size}")
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    src, keys, summary = scan_run(run_dir)
    sample = select(keys, n, stratify=stratify, flags_only=flags_only, seed=seed)
    items = sample_items(src, keys, sample)
    settings = src.settings
    root = images_root if images_root is not None else settings.get("images_root")
    render_thumbnails(items, root, out, size=thumb_size, exif=settings.get("exif", "auto"),
                      max_pixels=int(settings.get("max_pixels") or DEFAULT_MAX_PIXELS))
    _remove_stale_thumbs(out / "thumbs", {Path(i["thumb"]).name for i in items})
    sample.design["sample_id"] = sample_id(items)
    plan = load_plan(src.run_dir)
    if plan is not None and plan.get("plan_id"):  # ties verdicts on this sample to the run
        sample.design["plan_id"] = plan["plan_id"]

    atomic_write_text(out / "sample.jsonl", "".join(
        json.dumps(i, ensure_ascii=False, separators=(",", ":")) + "\n" for i in items),
        fsync=False)
    atomic_write_text(out / "sample_design.json", json.dumps(
        {"design": sample.design, "summary": summary}, indent=1, ensure_ascii=False) + "\n",
        fsync=False)
    root_dir = JobLayout(src.run_dir).root
    evaluation = _read_json(root_dir / "eval.json")
    review = _read_json(root_dir / REVIEW_FILE)
    if review and review.get("sample_id") != sample.design["sample_id"]:
        review = None  # an estimate from another sample of the run
    page = render_page(summary, sample.design, items, evaluation, run_name=src.run_dir.name,
                       review=review)
    index = out / "index.html"
    atomic_write_text(index, page, fsync=False)
    log.info("review report of %d masks written to %s", len(items), index)
    return index


def refresh_page(report_dir: str | Path, run_dir: str | Path) -> Path:
    """Write ``index.html`` of an existing report again from its ``sample.jsonl`` and
    ``sample_design.json`` (no new sample, no thumbnails), with the run's current ``eval.json``
    and ``review.json``. Returns the path of ``index.html``."""
    folder = Path(report_dir)
    items, design, summary = read_sample(folder)
    root_dir = JobLayout(Path(run_dir)).root
    review = _read_json(root_dir / REVIEW_FILE)
    if review and review.get("sample_id") != design.get("sample_id"):
        review = None
    page = render_page(summary, design, items, _read_json(root_dir / "eval.json"),
                       run_name=Path(run_dir).name, review=review)
    index = folder / "index.html"
    atomic_write_text(index, page, fsync=False)
    return index


def _remove_stale_thumbs(folder: Path, keep: set[str]) -> None:
    for p in folder.glob("*.jpg"):
        if _THUMB_NAME.fullmatch(p.name) and p.name not in keep:
            p.unlink(missing_ok=True)


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        log.warning("%s is not valid JSON; the report leaves it out", path)
        return None


# ------------------------------------------------------------------------------ HTML pieces

def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "–"


def _table(head: Sequence[str], rows: Sequence[Sequence[Any]], *, sortable: bool = False,
           cls: str = "") -> str:
    """A table; a cell is a value or ``(shown, sort value)``."""
    classes = " ".join(c for c in (cls, "sortable" if sortable else "") if c)
    out = [f'<table class="{classes}">' if classes else "<table>", "<thead><tr>"]
    out += [f"<th>{_e(h)}</th>" for h in head]
    out.append("</tr></thead><tbody>")
    for row in rows:
        out.append("<tr>")
        for cell in row:
            shown, key = cell if isinstance(cell, tuple) else (cell, cell)
            key = "" if key is None else key
            out.append(f'<td data-v="{_e(key)}">{_e(shown)}</td>')
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _compact(count: int) -> str:
    """A count in at most 4 characters: 950, 12k, 1.2M."""
    if count < 1000:
        return str(count)
    for div, unit in ((1e6, "M"), (1e3, "k")):
        if count >= div:
            v = count / div
            return f"{v:.1f}{unit}" if v < 10 else f"{v:.0f}{unit}"
    return str(count)


def histogram_svg(counts: Sequence[int], title: str, *, width: int = 300,
                  height: int = 130) -> str:
    """Inline SVG bar chart of equal-width bins over [0, 1]."""
    left, right, top, bottom = 34, 8, 8, 20
    pw, ph = width - left - right, height - top - bottom
    peak = max(max(counts, default=0), 1)
    bw = pw / max(len(counts), 1)
    parts = [f'<svg class="hist" width="{width}" height="{height}" role="img" '
             f'aria-label="{_e(title)}" xmlns="http://www.w3.org/2000/svg">']
    for i, c in enumerate(counts):
        h = ph * c / peak
        lo, hi = i / len(counts), (i + 1) / len(counts)
        parts.append(f'<rect class="bar" x="{left + i * bw + 0.5:.1f}" y="{top + ph - h:.1f}" '
                     f'width="{max(bw - 1, 0.5):.1f}" height="{h:.1f}">'
                     f"<title>{lo:.2f}–{hi:.2f}: {c}</title></rect>")
    base = top + ph
    parts.append(f'<line x1="{left}" y1="{base + 0.5}" x2="{left + pw}" y2="{base + 0.5}" '
                 'stroke="#999"/>')
    for frac, anchor in ((0.0, "start"), (0.5, "middle"), (1.0, "end")):
        parts.append(f'<text x="{left + frac * pw:.1f}" y="{height - 6}" '
                     f'text-anchor="{anchor}">{frac:g}</text>')
    parts.append(f'<text x="{left - 4}" y="{top + 8}" text-anchor="end">{_compact(peak)}</text>'
                 f'<text x="{left - 4}" y="{base}" text-anchor="end">0</text></svg>')
    return "".join(parts)


def _card(label: str, value: Any) -> str:
    return f'<div class="card"><b>{_e(value)}</b><span>{_e(label)}</span></div>'


def _counts_table(title: str, counts: dict[str, int], total: int) -> str:
    rows = [(k, v, _pct(v, total)) for k, v in counts.items()] or [("none", 0, "–")]
    return f'<div class="panel"><h3>{_e(title)}</h3>{_table(("", "count", "share"), rows)}</div>'


def summary_section(s: dict[str, Any], evaluation: dict[str, Any] | None = None) -> str:
    """The run overview: cards, tallies, flag rates, histograms, per-class table and the
    evaluation table (when there is one)."""
    n = s["masks"]
    cards = [_card("masks", n), _card("images with masks", s["images_with_masks"])]
    if s.get("images") is not None:
        cards.append(_card("images processed", s["images"]))
    cards += [_card("errors", s["errors"]),
              _card("flagged masks", f"{s['flagged']} ({_pct(s['flagged'], n)})")]
    flags = [(f, c, _pct(c, n), FLAG_MEANING.get(f, "")) for f, c in s["flags"].items()]
    panels = [
        _counts_table("errors by stage", s["errors_by_stage"], s["errors"]),
        _counts_table("engine", s["engines"], n),
        _counts_table("inside-point policy", s["inside_policies"], n),
        '<div class="panel"><h3>flags (a mask can have several)</h3>'
        + _table(("flag", "masks", "rate", "meaning"), flags, cls="flags") + "</div>",
    ]
    hists = [f'<div class="panel"><h3>{_e(h["title"])}</h3>{histogram_svg(h["counts"], h["title"])}'
             "</div>" for h in s["histograms"].values()]
    class_rows = [
        ((c["name"], c["name"]), c["masks"], (_fmt(c["mean_score"]), c["mean_score"]),
         (_pct(c["flagged"], c["masks"]), c["flag_rate"]),
         (_fmt(c["fill_median"]), c["fill_median"]), c["top_flag"] or "")
        for c in s["classes"]]
    classes = ('<div class="panel"><h3>per class (click a heading to sort)</h3>'
               '<div class="scroll">'
               + _table(("class", "masks", "mean score", "flagged", "fill median", "top flag"),
                        class_rows, sortable=True, cls="classes")
               + "</div></div>")
    read_from = ("the merged masks.jsonl" if s["read_from"] == "sidecar"
                 else "the shards done so far (run in progress)")
    return (f'<section id="summary"><h2>Run summary</h2><p class="note">Read from {_e(read_from)}.'
            f'</p><div class="cards">{"".join(cards)}</div><br><div class="panels">'
            f'{"".join(panels)}</div><br><div class="panels">{"".join(hists)}</div><br>'
            f'<div class="panels">{classes}{eval_panel(evaluation)}</div></section>')


def eval_panel(result: dict[str, Any] | None) -> str:
    """The table of ``eval.json`` (overall, per box size, per class), or nothing."""
    if not result:
        return ""
    overall = result.get("overall") or {}
    ge = [k for k in overall if k.startswith("iou_ge_")]
    head = ("group", "pairs", "mean IoU", "mean boundary IoU",
            *(f"IoU ≥ {k[len('iou_ge_'):]}" for k in ge))

    def row(name: str, g: dict[str, Any]) -> tuple:
        return (name, g.get("count", 0), (_fmt(g.get("mean_iou")), g.get("mean_iou")),
                (_fmt(g.get("mean_boundary_iou")), g.get("mean_boundary_iou")),
                *((_fmt(g.get(k)), g.get(k)) for k in ge))

    rows = [row("overall", overall)]
    rows += [row(f"size: {k}", g) for k, g in (result.get("per_size") or {}).items()]
    rows += [row(f"class: {k}", g) for k, g in (result.get("per_class") or {}).items()]
    c = result.get("counts") or {}
    note = (f"{c.get('matched', '?')} of {c.get('predictions', '?')} masks matched to "
            f"{c.get('gt_instances', '?')} ground-truth instances "
            f"(GT: {(result.get('gt') or {}).get('path', '?')}).")
    return (f'<div class="panel" id="eval"><h3>evaluation against ground truth (eval.json)</h3>'
            f'<p class="note">{_e(note)}</p><div class="scroll">'
            f"{_table(head, rows, sortable=True, cls='eval')}</div></div>")


def review_section(review: dict[str, Any] | None) -> str:
    """The error-rate estimate of ``review.json`` (overall, per class, per flag), or nothing."""
    if not review:
        return ""

    def pct(v: Any) -> tuple[str, Any]:
        return (f"{100 * v:.1f}%" if isinstance(v, int | float) else "–", v)

    def row(name: str, g: dict[str, Any]) -> tuple:
        lo, hi = g.get("ci95") or (None, None)
        more = g.get("more_reviews_for_2pt")
        return (name, g.get("reviewed", 0), g.get("bad", 0), pct(g.get("rate")),
                (f"{pct(lo)[0]} – {pct(hi)[0]}", lo), (_fmt(g.get("n_eff"), 1), g.get("n_eff")),
                ("–" if more is None else more, more))

    rows = [row("overall", review.get("overall") or {})]
    rows += [row(f"class: {k}", g) for k, g in (review.get("per_class") or {}).items()]
    rows += [row(f"flag: {k}", g) for k, g in (review.get("per_flag") or {}).items()]
    head = ("group", "reviewed", "bad", "error rate", "95% interval", "effective n",
            "more reviews for ±2 pts")
    note = (f"{review.get('counted', '?')} verdicts counted of {review.get('reviewed', '?')} "
            f"reviewed ({review.get('unsure', 0)} unsure left out); "
            f"{(review.get('method') or {}).get('summary', '')}")
    return (f'<section id="review"><h2>Error rate from the review (review.json)</h2>'
            f'<p class="note">{_e(note)}</p><div class="panel"><div class="scroll">'
            f"{_table(head, rows, sortable=True, cls='review')}</div></div></section>")


def _select(name: str, label: str, options: Sequence[tuple[str, str]]) -> str:
    opts = "".join(f'<option value="{_e(v)}">{_e(t)}</option>' for v, t in options)
    return f'<label>{_e(label)}<select id="{_e(name)}">{opts}</select></label>'


def _swatch(rgb: Sequence[int], text: str, dot: bool = False) -> str:
    colour = "#" + "".join(f"{int(v):02x}" for v in rgb)
    return (f'<span><i class="sw{" dot" if dot else ""}" style="background:{colour}"></i>'
            f"{_e(text)}</span>")


def card_html(item: dict[str, Any]) -> str:
    """One sampled mask's card; its ``data-*`` attributes drive the page's sorting and filters."""
    m = item.get("metrics") or {}
    flags = item.get("flags") or []
    why = item.get("why") or []
    name = item.get("label_name") or item.get("label") or ""
    score = item.get("score")

    def num(v: Any) -> str:
        return "" if v is None else f"{float(v):.6g}"

    attrs = {
        "id": f"s{int(item['sample_index']):05d}", "data-i": item["sample_index"],
        "data-score": num(score), "data-class": name, "data-flags": " ".join(flags),
        "data-why": " ".join(why), "data-tightness": num(m.get("tightness_iou")),
        "data-fill": num(m.get("fill_ratio")), "data-leakage": num(m.get("leakage")),
        "data-pi": num(item.get("inclusion_probability")), "data-image": item.get("image_id", ""),
        "data-box": item.get("box_id", ""), "data-label": item.get("label", ""),
    }
    cls = "item flagged" if flags else "item"
    attr = " ".join(f'{k}="{_e(v)}"' for k, v in attrs.items())
    alt = f"{name}: image {item.get('image_id')} box {item.get('box_id')}"
    badges = "".join(f'<span class="badge flag">{_e(f)}</span>' for f in flags)
    badges += "".join(f'<span class="badge why">{_e(w)}</span>' for w in why)
    if item.get("thumb_error"):
        badges += f'<span class="badge err" title="{_e(item["thumb_error"])}">no image</span>'
    nums = (f"score {_fmt(score)} · tight {_fmt(m.get('tightness_iou'), 2)} · "
            f"fill {_fmt(m.get('fill_ratio'), 2)}")
    badges += (f'<span class="badge pi" title="inclusion probability">'
               f"π {float(item['inclusion_probability']):.3g}</span>")
    return (f'<figure class="{cls}" {attr}><a class="pic" href="{_e(item["thumb"])}">'
            f'<img src="{_e(item["thumb"])}" loading="lazy" alt="{_e(alt)}"></a><figcaption>'
            f'<div class="cls" title="{_e(item.get("label", ""))}">{_e(name)}</div>'
            f'<div class="ids" title="{_e(item.get("image_path", ""))}">image '
            f'{_e(item.get("image_id"))} · box {_e(item.get("box_id"))}</div>'
            f'<div class="nums">{_e(nums)}</div><div>{badges}</div>{VERDICT_CONTROLS}'
            "</figcaption></figure>")


def design_note(design: dict[str, Any], items: list[dict[str, Any]]) -> str:
    """One paragraph on how the cards were sampled and how to weight verdicts."""
    pop, draws = design["population"], design["draws"]
    what = "flagged masks" if pop["flags_only"] else "masks"
    if items and all("all" in (i.get("why") or []) for i in items):
        return f"All {pop['masks']} {what} are shown: there are no more than n = " \
               f"{design['n_requested']}."
    return (f"{design['n_sampled']} distinct {what} of {pop['masks']} sampled (n = "
            f"{design['n_requested']}, seed {design['seed']}) without replacement in "
            f"{len(design.get('strata', []))} strata (flagged masks by flag, the others by "
            f"{' x '.join(design['stratify']) or 'nothing'}); drawn for the uniform share "
            f"{draws['uniform']['picked']}, flagged {draws['flagged']['picked']}, stratum "
            f"{draws['stratum']['picked']}. Every mask is in the uniform slice with the same "
            "probability: its error rate needs no weights. For all cards, weight each verdict "
            "by 1/π (sample.jsonl: weight): error rate ≈ Σ bad/π ÷ Σ 1/π.")


def sample_section(design: dict[str, Any], items: list[dict[str, Any]]) -> str:
    """The design note, the legend, the controls and the grid of cards."""
    flag_counts = Counter(f for i in items for f in i.get("flags") or [])
    flag_opts = [("all", "all"), ("any", "any flag"), ("none", "no flag")]
    flag_opts += [(f, f"{f} ({flag_counts[f]})") for f in SAMPLE_FLAGS if flag_counts[f]]
    classes = sorted({str(i.get("label_name") or i.get("label") or "") for i in items})
    why_counts = Counter(w for i in items for w in i.get("why") or [])
    controls = "".join([
        _select("sort", "sort", SORTS),
        _select("flag", "flag", flag_opts),
        _select("class", "class", [("all", "all"), *((c, c) for c in classes)]),
        _select("why", "sampled as", [("all", "all"),
                                      *((w, f"{w} ({c})") for w, c in sorted(why_counts.items()))]),
        f'<span>showing <span id="shown">{len(items)}</span> of {len(items)}</span>',
        f'<span id="progress" aria-live="polite">0 / {len(items)} reviewed</span>',
        '<button type="button" id="export" title="download verdicts.jsonl (e)">'
        "export verdicts.jsonl</button>",
    ])
    keys = ("Review with the keyboard: j / k (or → / ←) move between cards; 1–9 and 0 pick a "
            "reason (in the order of the list), then g good, b bad or u unsure gives the verdict "
            "and moves on; x clears a card, e exports verdicts.jsonl. Verdicts are kept in this "
            "browser, per run and sample, across reloads.")
    legend = "".join([_swatch(FILL_RGB, "mask"), _swatch(BOX_RGB, "input box"),
                      _swatch(POSITIVE_RGB, "positive click (inside point)", dot=True),
                      _swatch(NEGATIVE_RGB, "negative click (corner)", dot=True)])
    cards = "".join(card_html(i) for i in items)
    return (f'<section id="sample"><h2>Sampled masks</h2>'
            f'<p class="note">{_e(design_note(design, items))}</p>'
            f'<p class="note legend">{legend}</p><p class="note keys">{_e(keys)}</p>'
            f'<div id="controls">{controls}</div>'
            f'<div id="grid">{cards}</div></section>')


def render_page(summary: dict[str, Any], design: dict[str, Any], items: list[dict[str, Any]],
                evaluation: dict[str, Any] | None = None, *, run_name: str = "",
                review: dict[str, Any] | None = None) -> str:
    """The whole ``index.html`` (styles and script inline; no external resource)."""
    template = resources.files(__package__).joinpath(TEMPLATE).read_text(encoding="utf-8")
    title = f"boxmask review: {run_name}" if run_name else "boxmask review"
    subtitle = summary["run"]
    parts = {"title": _e(title), "subtitle": _e(subtitle),
             "run_key": _e(summary["run"]), "sample_key": _e(design.get("sample_id", "")),
             "summary": summary_section(summary, evaluation),
             "review": review_section(review),
             "sample": sample_section(design, items)}
    return re.sub(r"\{\{(\w+)\}\}", lambda m: parts[m.group(1)], template)
