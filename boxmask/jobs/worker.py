"""A worker: claim a shard, convert its images, record progress, mark it done; repeat.

Durability rules, in the order a worker applies them:

* A shard is claimed with a lease (``boxmask.jobs.lease``); a heartbeat keeps it.
* Each lease attempt appends results to its own file ``state/results/<shard>.<token>.jsonl``, one
  line per input item, in item order, flushed after every line (a killed process loses nothing the
  kernel has; the file is fsynced when the shard is done). A resumed shard starts from the longest
  valid prefix among earlier attempts (a torn last line is dropped), so finished images are not
  redone and no image is recorded twice. Attempt files that no done marker names are removed by
  merge.
* Per-image files (PNGs) are written atomically before their result line; redoing an image writes
  the same bytes.
* When every item has a line, the results file is fsynced and the done marker
  ``state/done/<shard>.json`` (counts, sha256 of the results) is written atomically. Merge reads
  only shards with a done marker, through the results file the marker names.
* SIGTERM / SIGUSR1 / SIGINT ask the worker to stop: it finishes the batch in hand, releases its
  lease and returns (the shard resumes later from its results).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_text
from ..engines import create_engine
from ..engines.base import Engine
from ..labels import LabelMap
from ..points import create_policy
from ..records import ErrorRecord, ImageRecord, ImageResult
from ..writers import create_writer
from . import steps
from .layout import JobLayout
from .lease import DEFAULT_TIMEOUT_S, Heartbeat, Lease, LeaseLost, read_lease, try_acquire
from .plan import (
    RUNTIME_ENGINE_OPTIONS,
    PlanMismatchError,
    describe_differences,
    load_plan,
    plan_settings,
)

log = logging.getLogger(__name__)


class NoPlanError(RuntimeError):
    """The directory has no plan (run ``boxmask plan`` or ``boxmask convert`` first)."""


@dataclass
class WorkerReport:
    worker_id: str
    shards_done: list[int] = field(default_factory=list)
    images: int = 0
    boxes: int = 0
    masks: int = 0
    errors: int = 0
    stopped: bool = False
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def read_valid_lines(path: Path) -> list[str]:
    """Complete JSON lines of a results file; a torn last line (killed mid-write) is dropped."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    lines = []
    for raw in data.split(b"\n")[:-1]:  # the part after the last newline is incomplete
        try:
            json.loads(raw)
        except ValueError:
            break
        lines.append(raw.decode("utf-8"))
    return lines


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_shard_items(path: Path) -> list[ImageRecord | ErrorRecord]:
    items: list[ImageRecord | ErrorRecord] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            d = json.loads(line)
            items.append(ImageRecord.from_json(d["record"]) if "record" in d
                         else ErrorRecord.from_json(d["error"]))
    return items


def check_engine(plan: dict[str, Any], engine: Engine) -> None:
    """Refuse an engine whose description differs from the plan's (other weights, settings)."""
    planned = plan["contract"]["engine"]
    actual = engine.describe()
    if json.dumps(planned, sort_keys=True) != json.dumps(actual, sort_keys=True):
        diffs = describe_differences(planned, actual)
        raise PlanMismatchError("this worker's engine differs from the plan:\n  "
                                + "\n  ".join(diffs[:20]))


class StopRequested:
    """Set by SIGTERM/SIGUSR1/SIGINT; the worker stops between batches."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.event.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        log.warning("received %s: stopping after the current batch", signal.Signals(signum).name)
        self.event.set()

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def is_set(self) -> bool:
        return self.event.is_set()


class Worker:
    """Converts the shards of one output directory; build once, then ``run()``."""

    def __init__(
        self,
        out_dir: str | Path,
        *,
        worker_id: str | None = None,
        engine_overrides: dict[str, Any] | None = None,
        lease_timeout_s: float = DEFAULT_TIMEOUT_S,
        heartbeat_s: float | None = None,
        prefetch: int = 4,
        wait_for_others: bool = True,
        progress: Any = None,
        stop: StopRequested | None = None,
    ) -> None:
        self.layout = JobLayout(out_dir)
        plan = load_plan(out_dir)
        if plan is None:
            raise NoPlanError(f"{out_dir} has no plan.json: run `boxmask plan` or "
                              "`boxmask convert` first")
        self.plan = plan
        self.settings = plan_settings(plan)
        self.worker_id = worker_id or default_worker_id()
        self.engine_overrides = {k: v for k, v in (engine_overrides or {}).items()
                                 if k in RUNTIME_ENGINE_OPTIONS and v is not None}
        self.lease_timeout_s = lease_timeout_s
        self.heartbeat_s = heartbeat_s or max(min(lease_timeout_s / 4, 30.0), 0.2)
        self.prefetch = max(prefetch, 1)
        self.wait_for_others = wait_for_others
        self.progress = progress
        self.stop = stop or StopRequested()
        self.images_root = Path(self.settings.images_root or ".")
        self._engine: Engine | None = None
        self._policy = create_policy(self.settings.inside_point, **self.settings.inside_options)
        labels = LabelMap.load(self.layout.labels) if self.layout.labels.exists() else LabelMap()
        self._writers = [create_writer(name, self.layout.root, labels)
                         for name in self.settings.formats]

    # -- engine -----------------------------------------------------------------------------
    @property
    def engine(self) -> Engine:
        if self._engine is None:
            options = {**self.settings.engine_options, **self.engine_overrides}
            engine = create_engine(self.settings.engine, **options)
            check_engine(self.plan, engine)
            self._engine = engine
        return self._engine

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None

    # -- shard selection --------------------------------------------------------------------
    def _is_done(self, shard_id: int) -> bool:
        return self.layout.done_file(shard_id).exists()

    def claim_next(self) -> tuple[int, Lease] | None:
        """Lease the first shard that is not done and not held by a live worker."""
        for shard in self.plan["shards"]:
            sid = shard["id"]
            if self._is_done(sid):
                continue
            lease = try_acquire(self.layout.lease_file(sid), self.worker_id, self.lease_timeout_s)
            if lease is None:
                continue
            if self._is_done(sid):  # finished between our check and the lease
                lease.release()
                continue
            return sid, lease
        return None

    def _others_active(self) -> bool:
        for shard in self.plan["shards"]:
            sid = shard["id"]
            if not self._is_done(sid) and read_lease(self.layout.lease_file(sid))[1] is not None:
                return True
        return False

    # -- main loop --------------------------------------------------------------------------
    def run(self, max_shards: int | None = None) -> WorkerReport:
        report = WorkerReport(worker_id=self.worker_id)
        started = time.time()
        self.stop.install()
        try:
            while not self.stop.is_set():
                if max_shards is not None and len(report.shards_done) >= max_shards:
                    break
                claimed = self.claim_next()
                if claimed is None:
                    if self.wait_for_others and self._others_active():
                        self.stop.event.wait(min(self.heartbeat_s, 2.0))
                        continue
                    break
                sid, lease = claimed
                try:
                    with Heartbeat(lease, self.heartbeat_s):
                        finished = self.process_shard(sid, lease, report)
                except LeaseLost as e:
                    log.error("%s", e)
                    finished = False
                finally:
                    lease.release()
                if finished:
                    report.shards_done.append(sid)
            report.stopped = self.stop.is_set()
        finally:
            self.stop.restore()
            report.seconds = round(time.time() - started, 3)
        return report

    def _start_attempt(self, sid: int, lease: Lease) -> tuple[Path, int]:
        """Create this attempt's results file from the longest valid earlier attempt."""
        results_dir = self.layout.results_dir
        best: list[str] = []
        for p in sorted(results_dir.glob(f"{JobLayout.shard_name(sid)}.*.jsonl")):
            lines = read_valid_lines(p)
            if len(lines) > len(best):
                best = lines
        path = results_dir / f"{JobLayout.shard_name(sid)}.{lease.token}.jsonl"
        atomic_write_text(path, "".join(line + "\n" for line in best))
        return path, len(best)

    def process_shard(self, sid: int, lease: Lease, report: WorkerReport) -> bool:
        """Convert the remaining items of shard ``sid``; True when the shard is done."""
        items = read_shard_items(self.layout.shard_file(sid))
        results_path, start = self._start_attempt(sid, lease)
        if start:
            log.info("shard %d: resuming after %d of %d items", sid, start, len(items))
        with open(results_path, "a", encoding="utf-8") as out:
            for result in self._results(items[start:]):
                lease.check()
                out.write(json.dumps(result.to_json(), ensure_ascii=False) + "\n")
                out.flush()
                report.images += 1
                report.boxes += len(result.record.boxes)
                report.masks += len(result.masks)
                report.errors += len(result.errors)
                if self.progress is not None:
                    self.progress.update(result)
            out.flush()
            os.fsync(out.fileno())
        lines = read_valid_lines(results_path)
        if len(lines) < len(items):  # stopped early
            return False
        lease.check()
        if not lease.still_held():
            raise LeaseLost(f"lease of shard {sid} was taken over before it was marked done")
        self._mark_done(sid, results_path, lines, lease)
        return True

    def _mark_done(self, sid: int, results_path: Path, lines: list[str], lease: Lease) -> None:
        counts = {"images": 0, "boxes": 0, "masks": 0, "errors": 0, "warnings": 0}
        for line in lines:
            d = json.loads(line)
            counts["images"] += 1 if d["record"].get("image_path") else 0
            counts["boxes"] += len(d["record"].get("boxes", []))
            counts["masks"] += len(d.get("masks", []))
            counts["errors"] += len(d.get("errors", []))
            counts["warnings"] += len(d.get("warnings", []))
        marker = {
            "shard": sid,
            "results": results_path.name,
            "items": len(lines),
            **counts,
            "results_sha256": sha256_file(results_path),
            "worker": self.worker_id,
            "started": lease.info.acquired,
            "finished": time.time(),
        }
        atomic_write_text(self.layout.done_file(sid), json.dumps(marker))

    def _results(self, items: list[ImageRecord | ErrorRecord]) -> Iterator[ImageResult]:
        """Results of ``items`` in order: decode ahead in threads, segment in batches."""
        batch_boxes = max(int(getattr(self.engine, "batch_boxes", 1) or 1), 1)
        with ThreadPoolExecutor(max_workers=self.prefetch, thread_name_prefix="decode") as pool:
            pending: deque[Future | ImageResult] = deque()
            it = iter(items)
            window = self.prefetch * 2 + batch_boxes

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

            fill()
            while pending:
                if self.stop.is_set():
                    for f in pending:
                        if isinstance(f, Future):
                            f.cancel()
                    return
                batch: list[steps.LoadedImage | ImageResult] = []
                n_boxes = 0
                while pending and n_boxes < batch_boxes:
                    head = pending.popleft()
                    loaded = head.result() if isinstance(head, Future) else head
                    batch.append(loaded)
                    if isinstance(loaded, steps.LoadedImage):
                        n_boxes += len(loaded.boxes)
                    fill()
                images = [b for b in batch if isinstance(b, steps.LoadedImage)]
                steps.segment(self._policy, self.engine, images)
                for b in batch:
                    yield steps.finish(b, self._writers) if isinstance(b, steps.LoadedImage) else b


def run_worker(out_dir: str | Path, **options: Any) -> WorkerReport:
    """Build a ``Worker`` for ``out_dir`` and run it until no shard is left (or it is stopped)."""
    max_shards = options.pop("max_shards", None)
    worker = Worker(out_dir, **options)
    try:
        return worker.run(max_shards=max_shards)
    finally:
        worker.close()
