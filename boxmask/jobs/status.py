"""Status of a conversion: shards done / leased / stale / pending, progress, rate, ETA, worker
deaths and skipped items.

Reads only the plan, done markers, failure records, lease files and the partial
results of unfinished shards; safe to run while workers are running, from any machine that sees
the output directory.
"""

from __future__ import annotations

import time
from typing import Any

from .deaths import skipped_items
from .job import Job, JobLike
from .lease import DEFAULT_TIMEOUT_S, fs_now, read_lease, stale_reason
from .protocol import read_all_failures, read_done_marker, valid_prefix


def busy_seconds(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of ``(start, end)`` intervals (seconds during which work ran)."""
    total = 0.0
    end_so_far = float("-inf")
    for start, end in sorted(intervals):
        if end <= end_so_far:
            continue
        total += end - max(start, end_so_far)
        end_so_far = end
    return total


def job_status(job: JobLike, lease_timeout_s: float = DEFAULT_TIMEOUT_S) -> dict[str, Any]:
    """A JSON-able snapshot of the progress of ``job`` (a ``Job`` or its output directory);
    ``NoPlanError`` when there is no plan.

    ``shards``: total, done, leased (live lease), stale (lease whose worker died or hung; the next
    worker takes it over), pending. ``items`` / ``images`` /
    ``boxes``: done counts (items = images + read errors; partial shards count their valid
    results lines). ``rate_items_per_s``: items of done shards per second of busy time (the union
    of the shards' working intervals, so pauses between runs do not count); ``eta_s`` = remaining
    items / rate. ``failed_attempts``: attempts that ended abnormally (dead or hung workers);
    ``deaths``: those of them ``observed`` (a live process saw the worker die: they count against
    the item, see ``boxmask.jobs.deaths``) and ``taken_over`` (found stale, e.g. the whole job was
    killed: they do not count). ``skipped``: items skipped in done shards after repeated deaths
    (``{"shard", "item", "image_id", "reason"}``; ``--retry-failed`` converts them again).
    """
    job = Job.of(job).current()
    layout, plan = job.layout, job.plan
    now = fs_now(layout.leases_dir) if layout.leases_dir.is_dir() else time.time()
    counts = {"done": 0, "leased": 0, "stale": 0, "pending": 0}
    items_done = images_done = boxes_done = masks = errors = skipped = 0
    leases: list[dict[str, Any]] = []
    intervals: list[tuple[float, float]] = []
    rate_items = 0
    attempts = layout.all_attempt_files()
    observed: set[tuple[int, str]] = set()
    dead: set[tuple[int, str]] = set()
    for sid, records in read_all_failures(layout).items():
        for r in records:
            key = (sid, r.attempt)
            dead.add(key)
            if r.observed:
                observed.add(key)
    for shard in plan.shards:
        sid = shard.id
        marker = read_done_marker(layout, sid)
        if marker is not None and marker.plan_id == plan.plan_id:
            counts["done"] += 1
            marker_items = marker.items or 0
            items_done += marker_items
            images_done += marker.images
            boxes_done += marker.boxes
            masks += marker.masks
            errors += marker.errors
            skipped += marker.skipped
            if marker.interval is not None:
                intervals.append(marker.interval)
                rate_items += marker_items
            continue
        partial = max((valid_prefix(p)[0] for p in attempts.get(sid, [])), default=0)
        items_done += partial
        info, mtime = read_lease(layout.lease_file(sid))
        if mtime is None:
            counts["pending"] += 1
            continue
        reason = stale_reason(info, mtime, lease_timeout_s, now)
        counts["stale" if reason else "leased"] += 1
        leases.append({"shard": sid, "worker": info.worker_id if info else None,
                       "host": info.host if info else None,
                       "heartbeat_age_s": round(now - mtime, 1), "stale": reason is not None,
                       "stale_reason": reason, "items_done": partial, "items": shard.items})
    totals = plan.totals
    busy = busy_seconds(intervals)
    rate = rate_items / busy if busy > 0 else None
    remaining = totals.items - items_done
    if remaining <= 0:
        eta: float | None = 0
    else:
        eta = round(remaining / rate, 1) if rate else None
    return {
        "output": str(job.root),
        "shards": {"total": len(plan.shards), **counts},
        "items": {"total": totals.items, "done": items_done, "remaining": remaining},
        "images": {"total": totals.images, "done_in_done_shards": images_done},
        "boxes": {"total": totals.boxes, "done_in_done_shards": boxes_done},
        "boxes_planned": totals.boxes,
        "masks_in_done_shards": masks,
        "errors_in_done_shards": errors,
        "failed_attempts": len(dead),
        "deaths": {"observed": len(observed), "taken_over": len(dead - observed)},
        "items_skipped": skipped,
        "skipped": skipped_items(job) if skipped else [],
        "rate_items_per_s": round(rate, 3) if rate else None,
        "eta_s": eta,
        "leases": leases,
        "complete": counts["done"] == len(plan.shards),
        "merged": layout.manifest.exists(),
    }
