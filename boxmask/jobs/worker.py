"""A worker: claim a shard, convert its images, record progress, mark it done; repeat.

Durability rules, in the order a worker applies them:

* The engine is built (and checked against the plan, ``boxmask.jobs.contract``) before any shard
  is claimed; a worker of another boxmask version or with other engine settings refuses to start.
* A shard is claimed with a lease (``boxmask.jobs.lease``); a heartbeat keeps it. A shard whose
  lease went stale (its worker died or hung) is taken over, and the abandoned attempt is recorded
  with the position it reached. Deaths a live process saw (``boxmask.jobs.deaths``) count
  against the item at that position; after ``max_attempts`` of them (or 10 deaths of any kind)
  that one item is skipped: its result line carries an error of stage ``worker`` and the shard
  goes on. A stop of the whole job (all workers killed, cancelled, timed out) counts for nothing.
* Each lease attempt writes its own results file ``state/results/<shard>.<token>.jsonl``, one line
  per input item, in item order, flushed after every line, each line with its own checksum
  (``boxmask.jobs.results``). It starts as an atomic copy of the longest valid prefix among
  earlier attempts (complete JSON lines of the right images whose checksums match and whose
  per-image files exist; a torn last line is dropped), so finished images are not redone and no
  image is recorded twice. The lines of a done shard's results file that merge found damaged
  are kept where their checksums still verify; only the other images are converted again.
* Per-image files (PNGs) are written atomically before their result line; redoing an image writes
  the same bytes.
* When every item has a line, the results file is fsynced and the done marker
  ``state/done/<shard>.json`` (plan id, counts, sha256 of the results file and of the per-image
  files, ``boxmask.jobs.protocol.DoneMarker``) is created exclusively: the first finished attempt
  wins, a later one discards its file.
  Merge reads only shards with a done marker, through the results file the marker names.
* SIGTERM / SIGUSR1 / SIGINT (or ``StopRequested.event`` from another thread,
  ``boxmask.jobs.signals``) ask the worker to
  stop: it finishes the batch in hand, keeps its results, releases its lease and returns; the
  shard resumes later from its results.
* A fatal error (disk full, an unexpected exception) never marks a shard done: the results file
  keeps the lines written so far, the lease is released and the error propagates.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import os
import socket
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..atomic import atomic_open
from ..engines import create_engine, engine_class
from ..engines.base import Engine
from ..labels import LabelMap
from ..points import create_policy
from ..records import ErrorRecord, ImageRecord, ImageResult
from ..software import software_versions
from ..writers import create_writer
from . import deaths, steps
from .contract import check_engine, check_policy, check_worker_start, runtime_engine_options
from .job import Job, JobLike
from .lease import (
    DEFAULT_TIMEOUT_S,
    Heartbeat,
    Lease,
    LeaseInfo,
    LeaseLost,
    read_lease,
    try_acquire,
)
from .protocol import (
    DoneMarker,
    PlanMismatchError,
    create_done_marker,
    encode_line,
    item_id,
    read_failures,
    read_shard_items,
    readable_done_marker,
    record_failure,
    salvage_lines,
    scan_done_results,
    valid_prefix,
)
from .signals import StopRequested

log = logging.getLogger(__name__)

DEFAULT_MAX_ATTEMPTS = deaths.DEFAULT_MAX_OBSERVED
"""Observed worker deaths at the same item after which the item is skipped."""

DEFAULT_BATCH_PIXELS = 50_000_000
"""A batch of decoded images handed to the engine stops growing past this many pixels."""


@dataclass
class WorkerReport:
    worker_id: str
    shards_done: list[int] = field(default_factory=list)
    items_skipped: list[str] = field(default_factory=list)
    """Image ids this worker skipped: their workers kept dying on them (``jobs.deaths``)."""
    shards_lost: list[int] = field(default_factory=list)
    """Shards whose lease this worker lost to another worker (their work is not lost)."""
    images: int = 0
    boxes: int = 0
    masks: int = 0
    errors: int = 0
    stopped: bool = False
    """Stopped by a signal (or ``stop``) while work was left."""
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


# -- the worker ---------------------------------------------------------------------------------

class Worker:
    """Converts the shards of one job (a ``Job`` or its output directory); build once, then
    ``run()``."""

    def __init__(
        self,
        job: JobLike,
        *,
        worker_id: str | None = None,
        engine_overrides: dict[str, Any] | None = None,
        lease_timeout_s: float = DEFAULT_TIMEOUT_S,
        heartbeat_s: float | None = None,
        prefetch: int = 4,
        batch_pixels: int = DEFAULT_BATCH_PIXELS,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        wait_for_others: bool = True,
        progress: Any = None,
        stop: StopRequested | None = None,
    ) -> None:
        self.job = Job.of(job).current()
        self.layout = self.job.layout
        self.plan = self.job.plan
        check_worker_start(self.plan)
        self.settings = self.plan.settings
        self.worker_id = worker_id or default_worker_id()
        runtime = runtime_engine_options(self.settings.engine)
        self.engine_overrides = {k: v for k, v in (engine_overrides or {}).items()
                                 if k in runtime and v is not None}
        self.lease_timeout_s = lease_timeout_s
        self.heartbeat_s = heartbeat_s or max(min(lease_timeout_s / 4, 30.0), 0.2)
        self.prefetch = max(prefetch, 1)
        self.batch_pixels = batch_pixels
        self.max_attempts = max(max_attempts, 1)
        self.wait_for_others = wait_for_others
        self.progress = progress
        self.stop = stop or StopRequested()
        self.images_root = Path(self.settings.images_root or ".")
        self._engine: Engine | None = None
        self._policy = create_policy(self.settings.inside_point, **self.settings.inside_options)
        check_policy(self.plan, self._policy)
        labels = LabelMap.load(self.layout.labels) if self.layout.labels.exists() else LabelMap()
        self._writers = [create_writer(name, self.layout.root, labels)
                         for name in self.settings.formats]
        self._finished: set[int] = set()
        """Shards seen done or failed (both are final for this worker's lifetime)."""

    # -- engine -----------------------------------------------------------------------------
    @property
    def engine(self) -> Engine:
        if self._engine is None:
            options = {**self.settings.engine_options, **self.engine_overrides}
            size_hint = engine_class(self.settings.engine).SIZE_HINT
            if size_hint:  # e.g. lets the IOG engine pick its mode by job size
                options.setdefault(size_hint, self.plan.totals.boxes)
            engine = create_engine(self.settings.engine, **options)
            try:
                check_engine(self.plan, engine)
            except PlanMismatchError:
                engine.close()
                raise
            self._engine = engine
        return self._engine

    def use_engine(self, engine: Engine) -> None:
        """Use an engine built elsewhere (checked against the plan; told the job's size)."""
        check_engine(self.plan, engine)
        engine.expect(int(self.plan.totals.boxes))
        self._engine = engine

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None

    # -- shard selection --------------------------------------------------------------------
    def _is_finished(self, shard_id: int) -> bool:
        if shard_id in self._finished:
            return True
        if readable_done_marker(self.layout, shard_id):
            self._finished.add(shard_id)
            return True
        return False

    def claim_next(self, report: WorkerReport | None = None) -> tuple[int, Lease] | None:
        """Lease the first shard that is not done and not held by a live worker."""
        for shard in self.plan.shards:
            sid = shard.id
            if self._is_finished(sid):
                continue
            lease = try_acquire(self.layout.lease_file(sid), self.worker_id, self.lease_timeout_s,
                                on_stale=functools.partial(self._record_abandoned, sid))
            if lease is None:
                continue
            self._finished.discard(sid)
            if self._is_finished(sid):  # finished between our check and the lease
                lease.release()
                continue
            return sid, lease
        return None

    def _best_prefix(self, sid: int) -> int:
        expected = self._expected_ids(sid)
        return max((valid_prefix(p, expected, self.layout.root, self.plan_id)[0]
                    for p in self.layout.attempt_files(sid)), default=0)

    @property
    def plan_id(self) -> str:
        """The plan's id, which every results line's checksum covers."""
        return self.plan.plan_id

    def _salvaged(self, sid: int, expected: list[str]) -> dict[int, bytes]:
        """Lines of this shard's set-aside results files that still verify, by item position."""
        sources = self.layout.salvage_files(sid)
        if not sources:
            return {}
        return salvage_lines(sources, expected, self.layout.root, self.plan_id)

    def _expected_ids(self, sid: int) -> list[str]:
        items = read_shard_items(self.layout.shard_file(sid), self.plan.shards[sid].sha256)
        return [item_id(i) for i in items]

    def _record_abandoned(self, sid: int, old: LeaseInfo | None, mtime: float,
                          reason: str) -> Any:
        """Record the failure of the attempt whose stale lease is being taken over (before the
        takeover, keyed by its token: idempotent); return the undo for a takeover abandoned."""
        if self.layout.done_file(sid).exists():
            return None  # it finished its shard and died before releasing: no failure
        token = old.token if old is not None else f"unreadable-{int(mtime)}"
        record_failure(self.layout, sid, token, old.worker_id if old else "unknown", reason,
                       self._best_prefix(sid), host=old.host if old else None,
                       pid=old.pid if old else None)
        return lambda: self.layout.failure_file(sid, token).unlink(missing_ok=True)

    def _skip_reason(self, sid: int, position: int) -> str | None:
        """Why the item at ``position`` of shard ``sid`` is to be skipped, or None."""
        if not self.layout.failure_files(sid):
            return None
        return deaths.skip_reason(read_failures(self.layout, sid), position, self.max_attempts)

    def _others_active(self) -> bool:
        for shard in self.plan.shards:
            sid = shard.id
            if self._is_finished(sid):
                continue
            if read_lease(self.layout.lease_file(sid))[1] is not None:
                return True
        return False

    # -- main loop --------------------------------------------------------------------------
    def run(self, max_shards: int | None = None) -> WorkerReport:
        """Claim and convert shards until none is left (or ``max_shards`` are done, or a stop
        is requested)."""
        report = WorkerReport(worker_id=self.worker_id)
        started = time.time()
        self.stop.install()
        try:
            self.engine  # noqa: B018 - build and check the engine before claiming anything
            while not self.stop.is_set():
                if max_shards is not None and len(report.shards_done) >= max_shards:
                    break
                claimed = self.claim_next(report)
                if claimed is None:
                    if self.wait_for_others and self._others_active():
                        self.stop.event.wait(min(self.heartbeat_s, 0.2))
                        continue
                    break
                sid, lease = claimed
                try:
                    with Heartbeat(lease, self.heartbeat_s):
                        finished = self.process_shard(sid, lease, report)
                except LeaseLost as e:
                    log.error("%s; leaving shard %d to its new owner", e, sid)
                    report.shards_lost.append(sid)
                    finished = False
                except (OSError, PlanMismatchError, KeyboardInterrupt):
                    raise  # the environment or the setup, not the shard: no failure recorded
                except Exception as e:
                    self._record_own_failure(sid, lease, f"{type(e).__name__}: {e}")
                    raise
                finally:
                    lease.release()
                if finished:
                    report.shards_done.append(sid)
            report.stopped = self.stop.is_set() and not self._all_finished()
        finally:
            self.stop.restore()
            report.seconds = round(time.time() - started, 3)
        return report

    def _all_finished(self) -> bool:
        return all(self._is_finished(s.id) for s in self.plan.shards)

    def _record_own_failure(self, sid: int, lease: Lease, reason: str) -> None:
        with contextlib.suppress(Exception):
            own = self.layout.attempt_file(sid, lease.token)
            record_failure(self.layout, sid, lease.token, self.worker_id, reason,
                           self._best_prefix(sid) if own.exists() else 0,
                           host=lease.info.host, pid=lease.info.pid, observed_by="worker")

    def _start_attempt(self, sid: int, lease: Lease, expected: list[str]) -> tuple[Path, int]:
        """Create this attempt's results file as a copy of the longest valid earlier prefix."""
        best: tuple[int, int, Path | None] = (0, 0, None)
        for p in self.layout.attempt_files(sid):
            n, nbytes = valid_prefix(p, expected, self.layout.root, self.plan_id)
            if n > best[0]:
                best = (n, nbytes, p)
        n, nbytes, source = best
        path = self.layout.attempt_file(sid, lease.token)
        with atomic_open(path, "wb", fsync=source is not None) as out:
            if source is not None:
                with open(source, "rb") as f:
                    remaining = nbytes
                    while remaining:
                        chunk = f.read(min(remaining, 1 << 20))
                        if not chunk:
                            raise OSError(f"{source} shrank while being copied")
                        out.write(chunk)
                        remaining -= len(chunk)
        return path, n

    def process_shard(self, sid: int, lease: Lease, report: WorkerReport) -> bool:
        """Convert the remaining items of shard ``sid``; True when this call marked it done."""
        items = read_shard_items(self.layout.shard_file(sid), self.plan.shards[sid].sha256)
        expected = [item_id(i) for i in items]
        results_path, start = self._start_attempt(sid, lease, expected)
        if start:
            log.info("shard %d: resuming after %d of %d items", sid, start, len(items))
        salvaged = {i: line for i, line in self._salvaged(sid, expected).items() if i >= start}
        if salvaged:
            log.info("shard %d: %d result lines kept from an earlier results file; converting "
                     "the other %d items", sid, len(salvaged),
                     len(items) - start - len(salvaged))
        written = start
        with open(results_path, "ab") as out:
            while written < len(items) and written not in salvaged:  # items workers died on
                reason = self._skip_reason(sid, written)
                if reason is None:
                    break
                skipped = deaths.skipped_result(items[written], reason)
                log.error("shard %d: skipping %s, %s", sid, skipped.record.image_id, reason)
                out.write(encode_line(skipped.to_json(), self.plan_id))
                out.flush()
                written += 1
                report.items_skipped.append(skipped.record.image_id)
                report.errors += len(skipped.errors)
            careful = self._careful_count(sid, written)
            if careful:
                log.warning("shard %d: a worker died at item %d; converting the next %d items "
                            "one at a time, so that a death pins the image that causes it", sid,
                            written, careful)
            missing = [items[i] for i in range(written, len(items)) if i not in salvaged]
            results = itertools.chain(self._careful_results(missing[:careful]),
                                      self._results(missing[careful:]))
            while written < len(items):
                if written in salvaged:
                    out.write(salvaged[written])
                    out.flush()
                    written += 1
                    continue
                result = next(results, None)
                if result is None:  # stopped
                    break
                lease.check()
                out.write(encode_line(result.to_json(), self.plan_id))
                out.flush()
                written += 1
                report.images += 1
                report.boxes += len(result.record.boxes)
                report.masks += len(result.masks)
                report.errors += len(result.errors)
                if self.progress is not None:
                    self.progress.update(result)
            out.flush()
            os.fsync(out.fileno())
        if written < len(items):  # stopped early
            return False
        lease.check()
        if not lease.still_held():
            raise LeaseLost(f"lease of shard {sid} was taken over before it was marked done")
        return self._mark_done(sid, results_path, lease)

    def _mark_done(self, sid: int, results_path: Path, lease: Lease) -> bool:
        """Create the done marker exclusively; False (and our results discarded) when another
        attempt marked the shard done first."""
        if not self._plan_unchanged():
            raise PlanMismatchError(f"the plan of {self.layout.root} changed while this worker "
                                    "ran (planned again?); stopping")
        marker = DoneMarker.from_json({
            "shard": sid,
            "plan_id": self.plan_id,
            "results": results_path.name,
            **scan_done_results(results_path, self.layout.root),
            "worker": self.worker_id,
            "started": lease.info.acquired,
            "finished": time.time(),
            "software": software_versions(),
        })
        won = create_done_marker(self.layout, marker, lease.token)
        self._finished.add(sid)
        if not won:
            log.info("shard %d was marked done by another attempt; discarding ours", sid)
            results_path.unlink(missing_ok=True)
            return False
        for p in self.layout.attempt_files(sid):  # superseded attempts
            if p != results_path:
                p.unlink(missing_ok=True)
        return True

    def _plan_unchanged(self) -> bool:
        """True while ``plan.json`` is the plan this worker started with (cheap: a stat, and a
        read only when the file changed)."""
        return self.job.plan_unchanged()

    # -- conversion ---------------------------------------------------------------------------
    def _batch_boxes(self) -> int:
        return max(int(self.engine.batch_boxes), 1)

    def _careful_count(self, sid: int, position: int) -> int:
        """How many items from ``position`` on to convert one at a time: the items that were in
        flight (decoding ahead, in the engine's batch) when an attempt died at ``position``, or 0
        when none died there. One at a time, a death happens at the image that causes it, so only
        that image collects deaths, never its innocent neighbours."""
        if not self.layout.failure_files(sid):
            return 0
        if not any(r.items_done == position for r in read_failures(self.layout, sid)):
            return 0
        return self.prefetch + self._batch_boxes()

    def _careful_results(self, items: list[ImageRecord | ErrorRecord]
                         ) -> Iterator[ImageResult]:
        """Results of ``items`` in order, each decoded, segmented and written before the next
        is touched (no decoding ahead, batches of one)."""
        for item in items:
            if self.stop.is_set():
                return
            if isinstance(item, ErrorRecord):
                yield steps.error_result(item)
                continue
            loaded = steps.load(item, self.images_root, self.settings)
            steps.segment(self._policy, self.engine, [loaded])
            if not self._plan_unchanged():
                raise PlanMismatchError(f"the plan of {self.layout.root} changed while this "
                                        "worker ran (planned again?); stopping")
            yield steps.finish(loaded, self._writers)

    def _results(self, items: list[ImageRecord | ErrorRecord]) -> Iterator[ImageResult]:
        """Results of ``items`` in order: decode ahead in threads, segment in batches.

        A batch stops at the engine's ``batch_boxes`` boxes or at
        ``batch_pixels`` decoded pixels, whichever comes first. Decoding runs ahead by
        ``prefetch + batch_boxes`` items, so that the next batch is decoded while the engine
        works on this one. Memory is bounded by these numbers, never by the shard or dataset.
        """
        batch_boxes = self._batch_boxes()
        window = self.prefetch + batch_boxes
        with ThreadPoolExecutor(max_workers=self.prefetch, thread_name_prefix="decode") as pool:
            pending: deque[Future | ImageResult] = deque()
            it = iter(items)

            def fill() -> None:
                while len(pending) < window:
                    item = next(it, None)
                    if item is None:
                        return
                    if isinstance(item, ErrorRecord):
                        pending.append(steps.error_result(item))
                    else:
                        pending.append(pool.submit(steps.load, item, self.images_root,
                                                   self.settings))

            try:
                fill()
                while pending:
                    if self.stop.is_set():
                        return
                    batch: list[steps.LoadedImage | ImageResult] = []
                    n_boxes = n_pixels = 0
                    while pending and n_boxes < batch_boxes and n_pixels < self.batch_pixels:
                        head = pending.popleft()
                        loaded = head.result() if isinstance(head, Future) else head
                        batch.append(loaded)
                        if isinstance(loaded, steps.LoadedImage):
                            n_boxes += len(loaded.boxes)
                            if loaded.rgb is not None:
                                n_pixels += loaded.rgb.shape[0] * loaded.rgb.shape[1]
                        fill()
                    images = [b for b in batch if isinstance(b, steps.LoadedImage)]
                    steps.segment(self._policy, self.engine, images)
                    if not self._plan_unchanged():  # never write into a re-planned output
                        raise PlanMismatchError(f"the plan of {self.layout.root} changed while "
                                                "this worker ran (planned again?); stopping")
                    for b in batch:
                        yield (steps.finish(b, self._writers) if isinstance(b, steps.LoadedImage)
                               else b)
            finally:
                for f in pending:
                    if isinstance(f, Future):
                        f.cancel()


def run_worker(job: JobLike, **options: Any) -> WorkerReport:
    """Build a ``Worker`` for ``job`` (a ``Job`` or its output directory) and run it until no
    shard is left (or it is stopped)."""
    max_shards = options.pop("max_shards", None)
    worker = Worker(job, **options)
    try:
        return worker.run(max_shards=max_shards)
    finally:
        worker.close()
