"""Merge: turn the finished shards' results into the final files, streaming, idempotent.

Reads every shard's results file (the one its done marker names, checked against the marker's
plan id, item count and sha256) in plan order and hands a re-iterable stream of ``ImageResult``
to each format writer and the sidecar writer. Nothing holds all results in memory. Running merge
again rewrites the same files with the same bytes (only ``manifest.json`` has timestamps).

One merge at a time: concurrent merges of the same directory take the merge lock in turn. A done
marker that does not match its results file (or, with ``verify_files``, its per-image files) is
removed, so that the shard is converted again. Once every shard is done and no worker holds a
lease, merge removes what killed processes left behind: superseded attempt files, temporary files
of processes that no longer exist, lease tombstones.

The run's complete redos (``boxmask redo``, ``boxmask.jobs.redo``) are applied: their masks
replace the run's own in every output and the sidecar.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .. import __version__
from ..atomic import atomic_write_text, remove_stale_temps
from ..hashing import sha256_file
from ..labels import LabelMap
from ..records import ImageResult
from ..writers import ResultsFactory, create_writer
from ..writers.sidecar import SidecarWriter
from .job import Job, JobLike
from .layout import JobLayout
from .lease import DEFAULT_TIMEOUT_S, fs_now, holding, pid_alive, read_lease, stale_reason
from .protocol import (
    DoneMarker,
    FailedMarker,
    Plan,
    Shard,
    read_done_marker,
    read_failed_marker,
    scan_done_results,
)

log = logging.getLogger(__name__)


class IncompleteJobError(RuntimeError):
    """Merge was asked for before every shard was done."""


_DAMAGED_RESULTS = "its results file is damaged"


def _marker_problem(layout: JobLayout, plan: Plan, shard: Shard, marker: DoneMarker,
                    verify_files: bool) -> str | None:
    """Why a done marker cannot be trusted, or None."""
    if marker.plan_id != plan.plan_id:
        return "it belongs to another plan"
    if marker.items != shard.items:
        return f"it counts {marker.items} items, the shard has {shard.items}"
    path = layout.results_dir / marker.results
    if not path.exists():
        return f"its results file {path.name} is missing"
    if sha256_file(path) != marker.results_sha256:
        return f"{_DAMAGED_RESULTS} ({path.name}: sha256 differs)"
    if verify_files:
        try:
            scan = scan_done_results(path, layout.root)
        except FileNotFoundError as e:
            return f"an output file is missing ({e.filename})"
        if scan["files_sha256"] != marker.files_sha256:
            return "files_sha256 does not match: per-image files changed"
    return None


def verified_results_file(job: Job, shard: Shard, verify_files: bool = False) -> Path | None:
    """The results file of a done shard if it matches its marker; else None.

    A marker that does not match is set aside (renamed to ``*.damaged``) with its results file,
    so that the shard is worked on again. When the results file itself is damaged (its sha256
    differs), it becomes ``*.jsonl.damaged``: the worker keeps its lines whose own checksums
    still verify and converts only the other images again. When anything else is wrong (another
    plan, a wrong count, per-image files that changed), the results file becomes
    ``*.jsonl.rejected``, kept for inspection only, and the whole shard is converted again.
    """
    layout = job.layout
    marker = read_done_marker(layout, shard.id)
    if marker is None:
        return None
    problem = _marker_problem(layout, job.plan, shard, marker, verify_files)
    path = layout.results_dir / marker.results
    if problem is None:
        return path
    salvageable = problem.startswith(_DAMAGED_RESULTS)
    log.error("shard %d: done marker set aside, %s; %s", shard.id, problem,
              "its images whose result lines are damaged will be converted again"
              if salvageable else "the shard will be converted again")
    with contextlib.suppress(FileNotFoundError):
        os.replace(path, path.with_name(path.name + (".damaged" if salvageable
                                                     else ".rejected")))
    done = layout.done_file(shard.id)
    with contextlib.suppress(FileNotFoundError):
        os.replace(done, done.with_name(done.name + ".damaged"))
    return None


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
    out: dict[str, Any] = {k: c[k] for k in ("images", "images_decoded", "boxes", "masks",
                                             "warnings",
                             "skipped_boxes", "images_with_errors")}
    out["errors"] = sum(by_stage.values())
    out["errors_by_stage"] = dict(sorted(by_stage.items()))
    return out


def remove_dead_temps(folder: Path) -> int:
    """Delete the temporary files below ``folder`` whose writing process no longer exists.

    A temporary file of a live process on this host is never touched. Call it only when no
    worker holds a lease: a process elsewhere whose pid is unknown here is then one that lost
    its lease, and losing its temporary file only makes its (abandoned) write fail.
    """
    return remove_stale_temps(folder, is_alive=pid_alive)


def _clean_up(job: Job) -> None:
    """Remove leftovers of killed processes once the job is complete and no lease is held."""
    layout = job.layout
    named = set()
    for shard in job.plan.shards:
        marker = read_done_marker(layout, shard.id)
        if marker is None:
            return
        named.add(marker.results)
    for paths in layout.all_attempt_files().values():
        for p in paths:
            if p.name not in named:
                p.unlink(missing_ok=True)
    for p in layout.results_dir.glob("*.jsonl.retry"):  # lines kept for a retry, now reused
        p.unlink(missing_ok=True)
    for d in (layout.leases_dir, layout.done_dir):  # tombstones and unlinked marker copies
        for p in d.glob(".*"):
            p.unlink(missing_ok=True)
        for p in d.glob("*.lease.*"):
            p.unlink(missing_ok=True)
    removed = remove_dead_temps(layout.root)
    if removed:
        log.info("removed %d temporary files left by killed processes", removed)


def _live_leases(job: Job, timeout_s: float) -> bool:
    """True when a worker may still be running; leases of workers that are gone (they died
    after marking their shard done) are removed."""
    live = False
    for shard in job.plan.shards:
        path = job.layout.lease_file(shard.id)
        info, mtime = read_lease(path)
        if mtime is None:
            continue
        if stale_reason(info, mtime, timeout_s, fs_now(path.parent)) is None:
            live = True
        else:
            path.unlink(missing_ok=True)
    return live


def failed_shards(job: Job) -> list[FailedMarker]:
    """The failed markers earlier versions wrote for the plan's shards
    (``boxmask.jobs.protocol.FailedMarker``)."""
    return [m for m in (read_failed_marker(job.layout, s.id) for s in job.plan.shards)
            if m is not None]


def merge(job: JobLike, *, allow_partial: bool = False, verify_files: bool = False,
          lease_timeout_s: float = DEFAULT_TIMEOUT_S, copy_images: bool = False,
          write_tight_boxes: bool = False) -> dict[str, Any]:
    """Write the final files of every format, the sidecar and the manifest of ``job`` (a ``Job``
    or its output directory; ``NoPlanError`` when there is no plan); return the manifest.

    With ``allow_partial`` the files cover only the shards done so far (a preview while workers
    still run, or the result of a job with failed shards); otherwise an unfinished job raises
    ``IncompleteJobError``. ``verify_files`` re-reads every per-image file and checks it against
    the done markers' checksums (slower; damaged shards are re-opened). ``lease_timeout_s``:
    after how long a silent merge lock or worker lease counts as abandoned. ``copy_images``:
    the Open Images output's ``data/`` holds copies of the images instead of links.
    ``write_tight_boxes``: also write the source annotations back with each box replaced by its
    mask's tight box, under ``tight-boxes/<source>/`` (``boxmask.writers.tightboxes``).
    """
    job = Job.of(job)
    layout = job.layout
    layout.state_dir.mkdir(parents=True, exist_ok=True)
    with holding(layout.merge_lock, f"merge-{socket.gethostname()}-{os.getpid()}",
                 lease_timeout_s):
        return _merge(job.current(), allow_partial, verify_files, lease_timeout_s, copy_images,
                      write_tight_boxes)


def _merge(job: Job, allow_partial: bool, verify_files: bool,
           lease_timeout_s: float, copy_images: bool = False,
           write_tight_boxes: bool = False) -> dict[str, Any]:
    layout, plan = job.layout, job.plan
    paths: list[Path] = []
    missing: list[int] = []
    for shard in plan.shards:
        p = verified_results_file(job, shard, verify_files)
        if p is None:
            missing.append(shard.id)
        else:
            paths.append(p)
    failed = failed_shards(job)
    if missing and not allow_partial:
        msg = (f"{len(missing)} of {len(plan.shards)} shards are not done (first: "
               f"{missing[:5]})")
        if failed:
            msg += (f"; {len(failed)} of them failed repeatedly (first: shard "
                    f"{failed[0].shard} at item {failed[0].items_done}, "
                    f"{failed[0].last_reason}); re-open them with "
                    f"`boxmask work {layout.root} --retry-failed`")
        raise IncompleteJobError(msg + f"; run `boxmask work {layout.root}` (or re-run convert), "
                                       "or merge with --partial for a preview")

    from .redo import apply_redos  # the masks of the run's redos replace its own

    results, redos = apply_redos(job, paths)
    started = time.time()
    labels = LabelMap.load(layout.labels) if layout.labels.exists() else LabelMap()
    files, outputs = write_formats(layout.root, results, labels, plan, plan.settings.formats,
                                   copy_images=copy_images)
    if write_tight_boxes:
        from ..writers.tightboxes import TightBoxWriter

        tight = TightBoxWriter(layout.root, labels, reader=plan.reader)
        files += tight.merge(results)
        outputs[tight.name] = tight.summary

    complete = not missing
    if complete and not _live_leases(job, lease_timeout_s):
        _clean_up(job)

    markers = [m for m in (read_done_marker(layout, s.id) for s in plan.shards) if m]
    counts = summarize(results())
    manifest = {
        "boxmask_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "complete": complete,
        "shards": {"total": len(plan.shards), "merged": len(paths),
                   "failed": [m.shard for m in failed]},
        "inputs": plan.reader,
        "settings": plan.contract.settings.to_json(),
        "engine": plan.contract.engine,
        "inside_policy": plan.contract.inside_policy,
        "counts": counts,
        "software": _distinct([m.software for m in markers if m.software]),
        "conversion_seconds": _busy_seconds(markers),
        "merge_seconds": round(time.time() - started, 3),
        "files": sorted(files),
        "outputs": outputs,
    }
    if redos:
        manifest["redos"] = redos
    atomic_write_text(layout.manifest, json.dumps(manifest, indent=1, ensure_ascii=False))
    return manifest


def write_formats(output_dir: str | Path, results: ResultsFactory, labels: LabelMap,
                  plan: Plan, formats: Sequence[str], *,
                  copy_images: bool = False) -> tuple[list[str], dict[str, Any]]:
    """Write the index files of ``formats`` and the sidecar under ``output_dir`` from
    ``results`` (the per-image files must be there already), as merge does for ``plan``'s run.

    Returns ``(files written, relative to output_dir; {format: writer summary})``.
    """
    settings = plan.settings
    files: list[str] = []
    outputs: dict[str, Any] = {}
    for name in formats:
        writer = create_writer(name, output_dir, labels, copy_images=copy_images,
                               images_root=settings.images_root or ".")
        files += writer.merge(results)
        outputs[name] = writer.summary
    sidecar = SidecarWriter(output_dir, labels, engine=plan.engine_name,
                            inside_policy=settings.inside_point, formats=list(formats))
    files += sidecar.merge(results)
    return files, outputs


def _distinct(values: list[Any]) -> list[Any]:
    """The distinct values in first-seen order (the software versions of the shards' workers:
    one entry unless workers ran different builds)."""
    out: list[Any] = []
    for v in values:
        if v not in out:
            out.append(v)
    return out


def _busy_seconds(markers: list[DoneMarker]) -> float | None:
    """Wall time (seconds) from the first shard's start to the last shard's end, when
    recorded."""
    starts = [m.started for m in markers if m.started is not None]
    ends = [m.finished for m in markers if m.finished is not None]
    if not starts or not ends:
        return None
    return round(max(ends) - min(starts), 3)
