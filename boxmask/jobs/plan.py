"""Planning: stream a source into deterministic shards and write the plan, the job's contract.

A plan fixes everything that determines the output: source and options, formats, engine settings
(with the weights' sha256), inside-point policy, decoding limits and the shard list. Workers read
their settings from it and refuse to run when their engine would differ; ``convert`` on an existing
output directory resumes only if the requested settings equal the planned ones.

Shards group whole images (all boxes of an image in one shard) in source order: shard ``i`` holds
items ``i*shard_size .. (i+1)*shard_size - 1``. Planning the same input twice gives the same shards.
Each shard entry of the plan records the shard file's sha256; workers refuse a shard file that
does not match. The plan also records the boxmask version: workers of another version refuse to
work on it (their masks could differ), and a random ``plan_id`` that ties every done marker to
the plan it was made for.

The plan's file format (``Plan``) and the other files of the job protocol are described in
``boxmask.jobs.protocol``; the contract and the checks against it in ``boxmask.jobs.contract``.

Planning is exclusive: concurrent launchers on the same output directory take the plan lock in
turn; the first plans, the others find its plan and check their settings against it.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import logging
import os
import secrets
import shutil
import socket
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .. import __version__
from ..atomic import atomic_open
from ..labels import LabelMap
from ..readers import open_reader
from ..records import ErrorRecord, ImageRecord
from .contract import (  # noqa: F401 - the contract's names, importable from the planner
    check_contract,
    check_input,
    check_version,
    contract,
    contract_hash,
    describe_differences,
    input_fingerprint,
    policy_description,
    runtime_engine_options,
)
from .job import Job, plan_stat
from .layout import JobLayout
from .lease import DEFAULT_TIMEOUT_S, holding
from .protocol import (  # noqa: F401 - the plan's format, importable from the planner
    PLAN_FORMAT,
    Contract,
    Plan,
    PlanMismatchError,
    Shard,
    Totals,
    read_plan,
    read_plan_json,
    read_shard_items,
    write_plan,
)
from .settings import Settings

log = logging.getLogger(__name__)


def load_plan(out_dir: str | Path) -> dict[str, Any] | None:
    """``plan.json`` of ``out_dir`` as parsed JSON (unchecked), or None when there is no
    (complete) plan yet. ``boxmask.jobs.job.Job.open`` gives the typed, checked ``Plan``."""
    return read_plan_json(JobLayout(out_dir).plan)


def discard_job(out_dir: str | Path) -> None:
    """Remove a previous conversion's plan, state and outputs from ``out_dir`` (``--force``)."""
    root = Path(out_dir)
    layout = JobLayout(root)
    for p in (layout.plan, layout.labels, layout.manifest, layout.sidecar, layout.errors):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
    for d in (layout.shards_dir, layout.state_dir):
        shutil.rmtree(d, ignore_errors=True)
    from ..writers import FORMATS

    for name in FORMATS:
        shutil.rmtree(root / name, ignore_errors=True)


def resolve_settings(settings: Settings) -> Settings:
    """Normalised settings with the reader's default images root filled in."""
    settings = settings.normalized()
    if settings.images_root is None:
        reader = open_reader(settings.input_format, settings.input, None,
                             labels_file=settings.labels_file, **settings.reader_options)
        settings.images_root = str(Path(reader.images_root).absolute())
    return settings


SHARD_COMPRESSLEVEL = 6
"""gzip level of shard files: about 37 bytes per Open Images box (level 1: 48, level 9: 34 at a
quarter of the speed)."""


class _HashingFile:
    """A binary file that hashes what is written through it."""

    def __init__(self, file: Any) -> None:
        self.file = file
        self.sha256 = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        return self.file.write(data)

    def flush(self) -> None:
        self.file.flush()


class _ShardSink:
    """Writes items into consecutive shard files of ``shard_size`` items each.

    A shard file is gzip-compressed JSON lines, ``{"record": ...}`` or ``{"error": ...}`` per
    item, written atomically; the gzip header carries no name and no time, so the same items
    give the same bytes. The plan records the sha256 of the compressed file.

    The calling thread encodes the items; a writer thread compresses, hashes and writes them
    (zlib, hashlib and file writes release the GIL, so this uses a second core). At most
    ``_MAX_PENDING`` batches wait for it. ``finish`` waits for every write and raises what the
    writer raised.
    """

    _BATCH = 256  # items per batch handed to the writer thread
    _MAX_PENDING = 8

    def __init__(self, layout: JobLayout, shard_size: int) -> None:
        if shard_size < 1:
            raise ValueError(f"shard size must be at least 1, not {shard_size}")
        self.layout = layout
        self.shard_size = shard_size
        self.shards: list[dict[str, Any]] = []
        self._lines: list[str] = []
        self._current: dict[str, Any] | None = None
        self._encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-writer")
        self._pending: deque[Future[None]] = deque()
        # Writer-thread state: the open shard file.
        self._ctx: Any = None
        self._hashing: _HashingFile | None = None
        self._gzip: gzip.GzipFile | None = None

    def add(self, item: ImageRecord | ErrorRecord) -> None:
        if self._current is None:
            shard_id = len(self.shards)
            self._current = {"id": shard_id, "items": 0, "images": 0, "boxes": 0,
                             "read_errors": 0}
            self._submit(self._open_file, shard_id)
        cur = self._current
        if isinstance(item, ImageRecord):
            line = {"record": item.to_json()}
            cur["images"] += 1
            cur["boxes"] += len(item.boxes)
        else:
            line = {"error": item.to_json()}
            cur["read_errors"] += 1
        self._lines.append(self._encode(line))
        cur["items"] += 1
        if len(self._lines) >= self._BATCH:
            self._flush_lines()
        if cur["items"] >= self.shard_size:
            self.close()

    def close(self) -> None:
        """End the current shard (its file is committed by the writer thread)."""
        if self._current is not None:
            self._flush_lines()
            self._submit(self._close_file, self._current)
            self.shards.append(self._current)
            self._current = None

    def finish(self) -> None:
        """End the current shard and wait until every shard file is written."""
        try:
            self.close()
            while self._pending:
                self._pending.popleft().result()
        finally:
            self._pool.shutdown(wait=True)

    def _flush_lines(self) -> None:
        if self._lines:
            data = ("\n".join(self._lines) + "\n").encode("utf-8")
            self._lines = []
            self._submit(self._write, data)

    def _submit(self, fn: Any, *args: Any) -> None:
        while self._pending and (self._pending[0].done()
                                 or len(self._pending) >= self._MAX_PENDING):
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(fn, *args))

    # -- writer thread --

    def _open_file(self, shard_id: int) -> None:
        self._ctx = atomic_open(self.layout.shard_file(shard_id), "wb")
        self._hashing = _HashingFile(self._ctx.__enter__())
        self._gzip = gzip.GzipFile(filename="", mode="wb", fileobj=self._hashing,
                                   compresslevel=SHARD_COMPRESSLEVEL, mtime=0)

    def _write(self, data: bytes) -> None:
        if self._gzip is None:
            raise RuntimeError("no shard file is open")
        self._gzip.write(data)

    def _close_file(self, entry: dict[str, Any]) -> None:
        if self._gzip is None or self._hashing is None:
            raise RuntimeError("no shard file is open")
        self._gzip.close()
        self._ctx.__exit__(None, None, None)
        entry["sha256"] = self._hashing.sha256.hexdigest()
        self._ctx, self._hashing, self._gzip = None, None, None


def make_plan(settings: Settings, out_dir: str | Path, engine_description: dict[str, Any], *,
              resolved: bool = False, planned_contract: Contract | None = None) -> Plan:
    """Stream the source into shard files and write ``plan.json``; return the plan.

    ``resolved``: ``settings`` come from ``resolve_settings`` already; ``planned_contract``:
    the contract of these settings and engine when computed already (``contract`` builds the
    inside-point policy to describe it).

    ``plan.json`` is written last: a directory without it has no plan, and planning starts over
    (shards and state of an unfinished planning are discarded). Call it under the plan lock
    (``open_plan`` does).
    """
    if not resolved:
        settings = resolve_settings(settings)
    if planned_contract is None:
        planned_contract = contract(settings, engine_description)
    layout = JobLayout(out_dir)
    for d in (layout.shards_dir, layout.state_dir):
        if d.exists():
            shutil.rmtree(d)
    layout.make_dirs()
    fingerprint = input_fingerprint(settings)
    reader = open_reader(settings.input_format, settings.input, settings.images_root,
                         labels_file=settings.labels_file, **settings.reader_options)
    started = time.time()
    sink = _ShardSink(layout, settings.shard_size)
    labels: LabelMap = reader.labels()
    n_items = 0
    try:
        for item in reader:
            if settings.limit is not None and n_items >= settings.limit:
                break
            sink.add(item)
            n_items += 1
            if isinstance(item, ImageRecord):
                for box in item.boxes:
                    if box.label not in labels:
                        labels.add(box.label)
    finally:
        sink.finish()

    if input_fingerprint(settings) != fingerprint:
        raise PlanMismatchError(f"the input {settings.input} changed while it was being "
                                "planned; plan again once it is complete")
    shards = tuple(Shard.from_json(s) for s in sink.shards)
    totals = Totals(items=sum(s.items for s in shards), images=sum(s.images for s in shards),
                    boxes=sum(s.boxes for s in shards),
                    read_errors=sum(s.read_errors for s in shards), shards=len(shards))
    labels.save(layout.labels)
    plan = Plan(plan_format=PLAN_FORMAT, boxmask_version=__version__,
                plan_id=secrets.token_hex(8), created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                planning_seconds=round(time.time() - started, 3), contract=planned_contract,
                reader=reader.describe(), input=fingerprint, totals=totals, shards=shards)
    write_plan(layout.plan, plan)
    log.info("planned %d images, %d boxes in %d shards", totals.images, totals.boxes,
             len(shards))
    return plan


def plan_settings(plan: Plan | dict[str, Any]) -> Settings:
    """The settings of a plan (typed, or ``plan.json`` as parsed JSON)."""
    if isinstance(plan, Plan):
        return plan.settings
    return Settings.from_json(plan["contract"]["settings"])


def open_plan(settings: Settings, out_dir: str | Path, engine_description: dict[str, Any], *,
              force: bool = False, lock_timeout_s: float = DEFAULT_TIMEOUT_S,
              resolved: bool = False) -> Plan:
    """The plan of ``out_dir`` for ``settings`` (see ``open_job``)."""
    return open_job(settings, out_dir, engine_description, force=force,
                    lock_timeout_s=lock_timeout_s, resolved=resolved).plan


def open_job(settings: Settings, out_dir: str | Path, engine_description: dict[str, Any], *,
             force: bool = False, lock_timeout_s: float = DEFAULT_TIMEOUT_S,
             resolved: bool = False) -> Job:
    """The job in ``out_dir`` for ``settings``: planned now, or the existing plan when its
    contract matches (else ``PlanMismatchError``; ``force`` discards it and plans again).
    ``resolved``: ``settings`` come from ``resolve_settings`` already.

    Exclusive: concurrent callers take the plan lock in turn, so one plans and the others
    resume its plan.
    """
    if not resolved:
        settings = resolve_settings(settings)
    requested = contract(settings, engine_description)
    layout = JobLayout(out_dir)
    stat = plan_stat(layout.plan)  # before the read: a plan replaced after it is read again
    existing = read_plan_json(layout.plan)
    if existing is not None and not force:
        return _resume(Job(layout, Plan.from_json(existing), stat), requested)
    seen = existing.get("plan_id") if existing is not None else None
    layout.root.mkdir(parents=True, exist_ok=True)
    worker = f"plan-{socket.gethostname()}-{os.getpid()}"
    with holding(layout.plan_lock, worker, lock_timeout_s):
        stat = plan_stat(layout.plan)
        existing = read_plan_json(layout.plan)
        if existing is not None and force and existing.get("plan_id") == seen:
            log.warning("discarding the conversion in %s (--force)", out_dir)
            discard_job(out_dir)
            existing = None
        if existing is not None:  # planned by another launcher while we waited for the lock
            return _resume(Job(layout, Plan.from_json(existing), stat), requested)
        plan = make_plan(settings, out_dir, engine_description, resolved=True,
                         planned_contract=requested)
        return Job(layout, plan, plan_stat(layout.plan))


def _resume(job: Job, requested: Contract) -> Job:
    """``job`` when a conversion of the ``requested`` contract may resume it."""
    check_contract(job.plan, requested)
    check_input(job.plan)
    return job
