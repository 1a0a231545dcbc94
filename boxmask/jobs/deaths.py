"""Worker deaths: which ones count against an item, and the items skipped because of them.

The rule. A worker that dies holding a shard's lease leaves an attempt that ended abnormally at
the position (item index) it reached; a failure record ``state/failures/<shard>.<token>.json``
keeps that position. Whether the death counts against the item at that position depends on who
saw it:

* **Observed** deaths: a live process saw this one worker die on its own, while the rest of the
  job ran on. The local launcher (``boxmask.jobs.local``) sees a worker process end by a signal
  (a segfault, the out-of-memory killer, a kill of that process) while it is itself alive; the Ray
  driver sees an actor die; a worker sees its own unexpected exception. These are recorded as
  ``<shard>.<token>.observed.json``.
* **Unobserved** deaths: a lease found stale and taken over (its process is gone, or its heartbeat
  stopped), with nobody having seen why. That is what a stop of the whole job looks like: a
  SIGKILL of the whole process group, a scheduler's cancel, a time limit, a lost node. It is not
  the item's fault and does not count, except as a backstop.

After any death at a position the next attempt converts the items that were in flight one at a
time (``Worker._careful_count``), so that the deaths that follow happen at the item that causes
them. The item at a position is **skipped** when ``max_observed`` (3) different attempts died there
observed, or ``UNOBSERVED_BACKSTOP`` (10) attempts died there in all. Skipping writes the item's
result line with one error of stage ``worker`` (so it appears in ``errors.jsonl``) and the shard
goes on with the next item: the job still completes and merges everything else, and ``convert``
exits 3. ``retry_skipped`` (``--retry-failed``) converts the skipped items again. Shards that
earlier versions marked failed as a whole (``state/failed/``) are re-opened by a plain re-run
(``reopen_legacy_failed``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import time
from collections.abc import Callable
from typing import Any

from ..atomic import atomic_open
from ..records import ErrorRecord, ImageRecord, ImageResult
from .job import Job, JobLike
from .layout import JobLayout
from .lease import read_lease
from .protocol import (  # noqa: F401 - the failure records' entry points
    FailureRecord,
    NoPlanError,
    item_id,
    read_all_failures,
    read_done_marker,
    read_failures,
    read_shard_items,
    record_failure,
    valid_prefix,
)

log = logging.getLogger(__name__)

DEFAULT_MAX_OBSERVED = 3
"""Observed deaths at the same item after which the item is skipped."""

UNOBSERVED_BACKSTOP = 10
"""Deaths of any kind at the same item after which it is skipped (a job that keeps dying at
one item, with nobody there to see it)."""

SKIP_STAGE = "worker"
"""The error stage of a skipped item."""


def deaths_at(records: list[FailureRecord], position: int) -> tuple[int, int]:
    """``(observed, all)``: attempts that died at ``position``, each attempt counted once."""
    attempts: dict[str, bool] = {}
    for r in records:
        if r.items_done != position:
            continue
        attempts[r.attempt] = attempts.get(r.attempt, False) or r.observed
    return sum(attempts.values()), len(attempts)


def skip_reason(records: list[FailureRecord], position: int,
                max_observed: int = DEFAULT_MAX_OBSERVED,
                backstop: int = UNOBSERVED_BACKSTOP) -> str | None:
    """Why the item at ``position`` is to be skipped (a sentence), or None."""
    observed, total = deaths_at(records, position)
    if observed >= max_observed:
        return f"its worker died {observed} times on this image (observed)"
    if total >= backstop:
        return f"its worker died {total} times on this image (taken over after each)"
    return None


def skipped_result(item: ImageRecord | ErrorRecord, reason: str) -> ImageResult:
    """The result line of a skipped item: the item's record and one error of stage ``worker``."""
    if isinstance(item, ErrorRecord):
        record = ImageRecord(image_id=item.image_id or "", image_path="", location=item.location)
        errors = [item]
    else:
        record, errors = item, []
    errors.append(ErrorRecord(SKIP_STAGE, f"skipped: {reason}; `--retry-failed` tries it again",
                              record.image_id, None, record.location))
    return ImageResult(record=record, errors=errors)


def is_skip_line(line: dict[str, Any]) -> bool:
    return any(e.get("stage") == SKIP_STAGE for e in line.get("errors", []))


# -- observed deaths ----------------------------------------------------------------------------

def _position(job: Job, sid: int, token: str) -> int:
    """How far the attempt ``token`` got: the valid prefix of its own results file, else (it
    died before writing one) the longest valid prefix of the shard's attempts."""
    layout = job.layout
    expected = [item_id(i) for i in read_shard_items(layout.shard_file(sid),
                                                     job.plan.shards[sid].sha256)]
    own = layout.attempt_file(sid, token)
    plan_id = job.plan_id
    if own.exists():
        return valid_prefix(own, expected, layout.root, plan_id)[0]
    return max((valid_prefix(p, expected, layout.root, plan_id)[0]
                for p in layout.attempt_files(sid)), default=0)


def record_observed_deaths(job: JobLike, died: Callable[[dict[str, Any]], bool],
                           observer: str, reason: str) -> list[tuple[int, str]]:
    """Record as observed the deaths of the attempts of a worker seen dying.

    ``died(owner)`` tells whether a lease owner (``worker_id``, ``host``, ``pid``) is the dead
    worker. Its attempts are found in the lease files it left, and in the failure records of
    leases already taken over. Returns the ``(shard, attempt token)`` pairs recorded.
    """
    try:
        job = Job.of(job).current()
    except NoPlanError:
        return []
    layout = job.layout
    found: dict[tuple[int, str], tuple[str, str | None, int | None, int | None]] = {}
    n_shards = len(job.plan.shards)
    for path in sorted(layout.leases_dir.glob("*.lease")):
        sid = int(path.name.split(".")[0]) if path.name.split(".")[0].isdigit() else -1
        if not 0 <= sid < n_shards or layout.done_file(sid).exists():
            continue
        info, _ = read_lease(path)
        if info is not None and died({"worker_id": info.worker_id, "host": info.host,
                                      "pid": info.pid}):
            found[(sid, info.token)] = (info.worker_id, info.host, info.pid, None)
    for sid, records in read_all_failures(layout).items():
        for r in records:
            if not r.observed and died({"worker_id": r.worker, "host": r.host, "pid": r.pid}):
                found.setdefault((sid, r.attempt), (r.worker or "", r.host, r.pid, r.items_done))
    for (sid, token), (worker, host, pid, items_done) in found.items():
        position = items_done if items_done is not None else _position(job, sid, token)
        record_failure(layout, sid, token, worker or "unknown", reason, position, host=host,
                       pid=pid, observed_by=observer)
        log.warning("worker %s died on shard %d at item %d (%s)", worker, sid, position, reason)
    return list(found)


def local_process(pid: int) -> Callable[[dict[str, Any]], bool]:
    """``died`` for ``record_observed_deaths``: the owner is process ``pid`` on this host."""
    host = socket.gethostname()
    return lambda owner: owner.get("pid") == pid and owner.get("host") == host


# -- re-opening ---------------------------------------------------------------------------------

def reopen_legacy_failed(job: JobLike) -> list[int]:
    """Remove the whole-shard failed markers earlier versions wrote (``state/failed/``): those
    shards are worked on again, under the rule above. Returns the shards re-opened."""
    layout = job.layout if isinstance(job, Job) else JobLayout(job)
    reopened = []
    with contextlib.suppress(FileNotFoundError):
        for p in sorted(layout.failed_dir.glob("*.json")):
            with contextlib.suppress(ValueError):
                reopened.append(int(p.name.split(".")[0]))
            p.unlink(missing_ok=True)
    if reopened:
        log.warning("re-opened %d shard(s) an earlier version marked failed: %s", len(reopened),
                    reopened[:10])
    return reopened


def skipped_items(job: JobLike) -> list[dict[str, Any]]:
    """The skipped items of done shards: ``{"shard", "item", "image_id", "reason"}``."""
    out: list[dict[str, Any]] = []
    try:
        job = Job.of(job).current()
    except NoPlanError:
        return out
    layout = job.layout
    for shard in job.plan.shards:
        marker = read_done_marker(layout, shard.id)
        if not marker or not marker.skipped:
            continue
        with contextlib.suppress(OSError, ValueError):
            with open(layout.results_dir / marker.results, "rb") as f:
                for i, raw in enumerate(f):
                    line = json.loads(raw)
                    if is_skip_line(line):
                        reason = next(e["reason"] for e in line["errors"]
                                      if e.get("stage") == SKIP_STAGE)
                        out.append({"shard": shard.id, "item": i,
                                    "image_id": line["record"].get("image_id"),
                                    "reason": reason})
    return out


def retry_skipped(job: JobLike) -> list[int]:
    """Re-open the done shards that skipped items, and the legacy failed shards, so that their
    skipped items are converted again (their other items are kept). Returns the shards.

    Each such shard gets a new attempt file holding its results up to the first skipped item,
    and a ``*.jsonl.retry`` file with every other line that is not a skip, which the worker
    reuses (``boxmask.jobs.results.salvage_lines``): only the skipped items are converted again.
    Then its old results file and done marker are removed and its failure records cleared.
    """
    try:
        job = Job.of(job).current()
    except NoPlanError:
        return []
    layout = job.layout
    reopened = set(reopen_legacy_failed(job))
    for shard in job.plan.shards:
        sid = shard.id
        marker = read_done_marker(layout, sid)
        if marker is None or not marker.skipped:
            if sid in reopened:
                _clear_failures(layout, sid)
            continue
        old = layout.results_dir / marker.results
        token = f"retry{int(time.time() * 1000) % 10**8:08d}"
        keep, in_prefix = 0, True
        with open(old, "rb") as src, atomic_open(
                layout.results_dir / f"{layout.shard_name(sid)}.{token}.jsonl.retry", "wb") as kept:
            for raw in src:
                if is_skip_line(json.loads(raw)):
                    in_prefix = False
                    continue
                kept.write(raw)
                keep += len(raw) if in_prefix else 0
        new = layout.attempt_file(sid, token)
        with open(old, "rb") as src, atomic_open(new, "wb") as dst:
            dst.write(src.read(keep))
        old.unlink(missing_ok=True)
        layout.done_file(sid).unlink(missing_ok=True)
        _clear_failures(layout, sid)
        reopened.add(sid)
    return sorted(reopened)


def _clear_failures(layout: JobLayout, sid: int) -> None:
    for p in layout.failure_files(sid):
        p.unlink(missing_ok=True)


def reset_failed(job: JobLike, shard_ids: list[int] | None = None) -> list[int]:
    """Convert skipped items again (``retry_skipped``); returns the shards re-opened. Raises
    ``NoPlanError`` when there is no plan. ``shard_ids`` is accepted for compatibility and
    ignored."""
    return retry_skipped(Job.of(job))
