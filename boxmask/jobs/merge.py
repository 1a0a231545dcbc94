"""Merge: turn the finished shards' results into the final files, streaming, idempotent.

Reads every shard's results file (the one its done marker names, checked against the marker's
sha256) in plan order and hands a re-iterable stream of ``ImageResult`` to each format writer and
the sidecar writer. Nothing holds all results in memory. Running merge again rewrites the same
files with the same bytes.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .. import __version__
from ..atomic import atomic_write_text, remove_stale_temps
from ..labels import LabelMap
from ..records import ImageResult
from ..writers import create_writer
from ..writers.sidecar import SidecarWriter
from .layout import JobLayout
from .lease import read_lease
from .plan import load_plan, plan_settings
from .worker import NoPlanError, sha256_file

log = logging.getLogger(__name__)


class IncompleteJobError(RuntimeError):
    """Merge was asked for before every shard was done."""


def done_marker(layout: JobLayout, shard_id: int) -> dict[str, Any] | None:
    path = layout.done_file(shard_id)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except ValueError:
        return None


def verified_results_file(layout: JobLayout, shard_id: int) -> Path | None:
    """The results file of a done shard if it matches its marker; else None (and the bad marker
    is removed so that the shard is converted again)."""
    marker = done_marker(layout, shard_id)
    if marker is None:
        return None
    path = layout.results_dir / marker["results"]
    if path.exists() and sha256_file(path) == marker.get("results_sha256"):
        return path
    log.error("shard %d: results file %s is missing or damaged; the shard will be redone",
              shard_id, path.name)
    layout.done_file(shard_id).unlink(missing_ok=True)
    return None


def iter_results(paths: list[Path]) -> Iterator[ImageResult]:
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for line in f:
                yield ImageResult.from_json(json.loads(line))


def summarize(results: Iterator[ImageResult]) -> dict[str, Any]:
    """Counts over a stream of results: images, boxes, masks, errors by stage, warnings."""
    c: Counter = Counter()
    by_stage: Counter = Counter()
    for r in results:
        if r.record.image_path:
            c["images"] += 1
            c["images_decoded"] += r.width is not None
        c["boxes"] += len(r.record.boxes)
        c["masks"] += len(r.masks)
        c["warnings"] += len(r.warnings)
        c["skipped_boxes"] += len(r.record.meta.get("skipped", []))
        c["images_with_errors"] += bool(r.errors)
        for e in r.errors:
            by_stage[e.stage] += 1
    out = {k: c[k] for k in ("images", "images_decoded", "boxes", "masks", "warnings",
                             "skipped_boxes", "images_with_errors")}
    out["errors"] = sum(by_stage.values())
    out["errors_by_stage"] = dict(sorted(by_stage.items()))
    return out


def merge(out_dir: str | Path, *, allow_partial: bool = False) -> dict[str, Any]:
    """Write the final files of every format, the sidecar and the manifest; return the manifest.

    With ``allow_partial`` the files cover only the shards done so far (a preview while workers
    still run); otherwise an unfinished job raises ``IncompleteJobError``.
    """
    layout = JobLayout(out_dir)
    plan = load_plan(out_dir)
    if plan is None:
        raise NoPlanError(f"{out_dir} has no plan.json")
    settings = plan_settings(plan)
    paths: list[Path] = []
    missing: list[int] = []
    for shard in plan["shards"]:
        p = verified_results_file(layout, shard["id"])
        if p is None:
            missing.append(shard["id"])
        else:
            paths.append(p)
    if missing and not allow_partial:
        raise IncompleteJobError(
            f"{len(missing)} of {len(plan['shards'])} shards are not done (first: "
            f"{missing[:5]}); run `boxmask work {out_dir}` (or re-run convert), or merge with "
            "--partial for a preview")

    def results() -> Iterator[ImageResult]:
        return iter_results(paths)

    started = time.time()
    labels = LabelMap.load(layout.labels) if layout.labels.exists() else LabelMap()
    files: list[str] = []
    for name in settings.formats:
        files += create_writer(name, layout.root, labels).merge(results)
    engine_name = plan["contract"]["engine"].get("name", settings.engine)
    sidecar = SidecarWriter(layout.root, labels, engine=engine_name,
                            inside_policy=settings.inside_point, formats=settings.formats)
    files += sidecar.merge(results)

    complete = not missing
    if complete and not any(read_lease(layout.lease_file(s["id"]))[1] is not None
                            for s in plan["shards"]):
        remove_stale_temps(layout.root)
        named = {done_marker(layout, s["id"])["results"] for s in plan["shards"]}
        for p in layout.results_dir.glob("*.jsonl"):
            if p.name not in named:
                p.unlink(missing_ok=True)

    markers = [m for m in (done_marker(layout, s["id"]) for s in plan["shards"]) if m]
    counts = summarize(results())
    manifest = {
        "boxmask_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "complete": complete,
        "shards": {"total": len(plan["shards"]), "merged": len(paths)},
        "inputs": plan["reader"],
        "settings": plan["contract"]["settings"],
        "engine": plan["contract"]["engine"],
        "counts": counts,
        "conversion_seconds": _busy_seconds(markers),
        "merge_seconds": round(time.time() - started, 3),
        "files": sorted(files),
    }
    atomic_write_text(layout.manifest, json.dumps(manifest, indent=1, ensure_ascii=False))
    return manifest


def _busy_seconds(markers: list[dict[str, Any]]) -> float | None:
    """Wall time from the first shard's start to the last shard's end, when recorded."""
    starts = [m["started"] for m in markers if "started" in m]
    ends = [m["finished"] for m in markers if "finished" in m]
    if not starts or not ends:
        return None
    return round(max(ends) - min(starts), 3)
