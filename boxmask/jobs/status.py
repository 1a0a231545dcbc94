"""Status of a conversion: shards done / leased / stale / pending, progress, rate and ETA.

Reads only the plan, done markers, lease files and the sizes of partial results; safe to run while
workers are running, from any machine that sees the output directory.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .layout import JobLayout
from .lease import DEFAULT_TIMEOUT_S, is_stale, read_lease
from .merge import done_marker
from .plan import load_plan
from .worker import NoPlanError, read_valid_lines


def job_status(out_dir: str | Path, lease_timeout_s: float = DEFAULT_TIMEOUT_S) -> dict[str, Any]:
    """A JSON-able snapshot of the job's progress."""
    layout = JobLayout(out_dir)
    plan = load_plan(out_dir)
    if plan is None:
        raise NoPlanError(f"{out_dir} has no plan.json")
    now = time.time()
    counts = {"done": 0, "leased": 0, "stale": 0, "pending": 0}
    items_done = masks = errors = 0
    leases: list[dict[str, Any]] = []
    markers: list[dict[str, Any]] = []
    for shard in plan["shards"]:
        sid = shard["id"]
        marker = done_marker(layout, sid)
        if marker is not None:
            counts["done"] += 1
            markers.append(marker)
            items_done += marker["items"]
            masks += marker.get("masks", 0)
            errors += marker.get("errors", 0)
            continue
        info, mtime = read_lease(layout.lease_file(sid))
        partial = max((len(read_valid_lines(p)) for p in
                       layout.results_dir.glob(f"{JobLayout.shard_name(sid)}.*.jsonl")), default=0)
        items_done += partial
        if mtime is None:
            counts["pending"] += 1
            continue
        stale = is_stale(info, mtime, lease_timeout_s, now)
        counts["stale" if stale else "leased"] += 1
        leases.append({"shard": sid, "worker": info.worker_id if info else None,
                       "host": info.host if info else None,
                       "heartbeat_age_s": round(now - mtime, 1), "stale": stale,
                       "items_done": partial, "items": shard["items"]})
    total_items = plan["totals"]["items"]
    rate = None
    if markers:
        span = max(m["finished"] for m in markers) - min(m.get("started", m["finished"])
                                                         for m in markers)
        if span > 0:
            rate = sum(m["items"] for m in markers) / span
    remaining = total_items - items_done
    return {
        "output": str(Path(out_dir)),
        "shards": {"total": len(plan["shards"]), **counts},
        "items": {"total": total_items, "done": items_done, "remaining": remaining},
        "boxes_planned": plan["totals"]["boxes"],
        "masks_in_done_shards": masks,
        "errors_in_done_shards": errors,
        "rate_items_per_s": round(rate, 3) if rate else None,
        "eta_s": round(remaining / rate, 1) if rate and remaining > 0 else (0 if remaining == 0
                                                                           else None),
        "leases": leases,
        "complete": counts["done"] == len(plan["shards"]),
        "merged": layout.manifest.exists(),
    }
