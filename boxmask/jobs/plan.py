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
import zlib
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__
from ..atomic import atomic_open, atomic_write_text
from ..imageio import DEFAULT_MAX_PIXELS
from ..labels import LabelMap
from ..readers import open_reader
from ..records import ErrorRecord, ImageRecord
from .layout import JobLayout
from .lease import DEFAULT_TIMEOUT_S, holding

log = logging.getLogger(__name__)

PLAN_FORMAT = 2
"""1: shard files of plain JSON lines (``.jsonl``); 2: gzip-compressed (``.jsonl.gz``)."""


class PlanMismatchError(RuntimeError):
    """The requested settings differ from the plan already in the output directory."""


@dataclass
class Settings:
    """Everything a user chooses that changes the output of a conversion."""

    source: str
    input: str
    formats: list[str]
    images_root: str | None = None
    labels_file: str | None = None
    reader_options: dict[str, Any] = field(default_factory=dict)
    engine: str = "grabcut"
    engine_options: dict[str, Any] = field(default_factory=dict)
    inside_point: str = "center"
    inside_options: dict[str, Any] = field(default_factory=dict)
    exif: str = "auto"
    max_pixels: int = DEFAULT_MAX_PIXELS
    min_box_side: int = 2
    shard_size: int = 1000
    limit: int | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Settings:
        return cls(**d)

    def normalized(self) -> Settings:
        """Absolute paths, sorted-unique formats: the form stored in and compared with the plan."""
        s = Settings.from_json(json.loads(json.dumps(self.to_json())))
        s.input = str(Path(s.input).absolute())
        if s.images_root is not None:
            s.images_root = str(Path(s.images_root).absolute())
        if s.labels_file is not None:
            s.labels_file = str(Path(s.labels_file).absolute())
        if s.inside_options.get("weights"):
            s.inside_options["weights"] = str(Path(s.inside_options["weights"]).absolute())
        s.formats = sorted(set(s.formats))
        return s


def runtime_engine_options(engine: str) -> frozenset[str]:
    """Options of ``engine`` that change speed, not masks (``Engine.RUNTIME_OPTIONS``): a worker
    may choose them freely and the plan contract leaves them out."""
    from ..engines import engine_class

    return engine_class(engine).RUNTIME_OPTIONS


def policy_description(settings: Settings) -> dict[str, Any]:
    """What the inside-point policy of ``settings`` is (with its weights' sha256, if any)."""
    from ..points import create_policy

    return create_policy(settings.inside_point, **settings.inside_options).describe()


def contract(settings: Settings, engine_description: dict[str, Any]) -> dict[str, Any]:
    """The part of a plan two runs must agree on to share an output directory."""
    from ..points import RUNTIME_OPTIONS

    s = settings.normalized().to_json()
    runtime = runtime_engine_options(settings.engine)
    s["engine_options"] = {k: v for k, v in s["engine_options"].items() if k not in runtime}
    s["inside_options"] = {k: v for k, v in s["inside_options"].items()
                           if k not in RUNTIME_OPTIONS}
    return {"settings": s, "engine": engine_description,
            "inside_policy": policy_description(settings.normalized())}


def contract_hash(c: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(c, sort_keys=True).encode()).hexdigest()


def load_plan(out_dir: str | Path) -> dict[str, Any] | None:
    """The plan of ``out_dir``, or None when there is no (complete) plan yet."""
    path = JobLayout(out_dir).plan
    if not path.exists():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def describe_differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Human-readable list of the keys where two JSON-like values differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for k in sorted(set(a) | set(b)):
            out += describe_differences(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    if a != b:
        return [f"{prefix.rstrip('.')}: planned {a!r}, requested {b!r}"]
    return []


def check_version(plan: dict[str, Any]) -> None:
    """Raise ``PlanMismatchError`` when the plan was made by another boxmask version or plan
    format (another version may produce other masks: finish the job with the version that
    planned it, or start over with ``--force``)."""
    if plan.get("plan_format") != PLAN_FORMAT:
        raise PlanMismatchError(
            f"the plan has format {plan.get('plan_format')!r} (its shard files are laid out "
            f"differently); this boxmask reads format {PLAN_FORMAT}: finish the job with the "
            "boxmask that planned it, or use --force to plan again.")
    if plan.get("boxmask_version") != __version__:
        raise PlanMismatchError(
            f"the conversion was planned with boxmask {plan.get('boxmask_version')}, this is "
            f"boxmask {__version__}: finish it with the version that planned it, or use --force "
            "to discard it and start over.")


def input_fingerprint(settings: Settings) -> dict[str, Any] | None:
    """Size and mtime of the input when it is one file (a COCO JSON, a CSV), else None (a
    folder of annotations is not fingerprinted)."""
    path = Path(settings.input)
    try:
        st = path.stat()
    except OSError:
        return None
    if not path.is_file():
        return None
    return {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def check_input(plan: dict[str, Any]) -> None:
    """Raise ``PlanMismatchError`` when the plan's input file changed since it was planned (its
    shards no longer describe it). An input this host cannot see (a worker node without the
    annotations) is not checked: workers need only the shards."""
    planned = plan.get("input")
    if not planned:
        return
    try:
        st = Path(planned["path"]).stat()
    except OSError:
        return
    if (st.st_size, st.st_mtime_ns) != (planned["size"], planned["mtime_ns"]):
        raise PlanMismatchError(
            f"the input {planned['path']} changed after it was planned (size "
            f"{planned['size']} -> {st.st_size} bytes, modified "
            f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(st.st_mtime))}): the planned "
            "shards no longer describe it. Restore it, or use --force to plan it again.")


def check_contract(plan: dict[str, Any], requested: dict[str, Any]) -> None:
    """Raise ``PlanMismatchError`` listing the differences when ``requested`` != the plan (or
    the plan was made by another boxmask version)."""
    check_version(plan)
    if contract_hash(plan["contract"]) == contract_hash(requested):
        return
    diffs = describe_differences(plan["contract"], requested)
    raise PlanMismatchError(
        "the output directory holds a conversion with other settings:\n  "
        + "\n  ".join(diffs[:20])
        + "\nUse another --output, or --force to discard the existing conversion."
    )


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
        reader = open_reader(settings.source, settings.input, None,
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


def read_shard_items(path: Path, sha256: str | None = None) -> list[ImageRecord | ErrorRecord]:
    """The input items of a shard file, in order; with ``sha256`` (the plan's), refuse a file
    that does not match (``PlanMismatchError``)."""
    data = path.read_bytes()
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise PlanMismatchError(f"shard file {path} does not match the plan (damaged or "
                                "replaced); plan again with --force")
    try:
        text = gzip.decompress(data).decode("utf-8")
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as exc:
        raise PlanMismatchError(f"shard file {path} is not a gzip-compressed shard ({exc}); "
                                "plan again with --force") from None
    items: list[ImageRecord | ErrorRecord] = []
    for line in text.splitlines():
        d = json.loads(line)
        items.append(ImageRecord.from_json(d["record"]) if "record" in d
                     else ErrorRecord.from_json(d["error"]))
    return items


def make_plan(settings: Settings, out_dir: str | Path,
              engine_description: dict[str, Any]) -> dict[str, Any]:
    """Stream the source into shard files and write ``plan.json``; return the plan.

    ``plan.json`` is written last: a directory without it has no plan, and planning starts over
    (shards and state of an unfinished planning are discarded). Call it under the plan lock
    (``open_plan`` does).
    """
    settings = resolve_settings(settings)
    layout = JobLayout(out_dir)
    for d in (layout.shards_dir, layout.state_dir):
        if d.exists():
            shutil.rmtree(d)
    layout.make_dirs()
    fingerprint = input_fingerprint(settings)
    reader = open_reader(settings.source, settings.input, settings.images_root,
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
    keys = ("items", "images", "boxes", "read_errors")
    totals = {k: sum(s[k] for s in sink.shards) for k in keys}
    labels.save(layout.labels)
    plan = {
        "plan_format": PLAN_FORMAT,
        "boxmask_version": __version__,
        "plan_id": secrets.token_hex(8),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "planning_seconds": round(time.time() - started, 3),
        "contract": contract(settings, engine_description),
        "reader": reader.describe(),
        "input": fingerprint,
        "totals": {**totals, "shards": len(sink.shards)},
        "shards": sink.shards,
    }
    atomic_write_text(layout.plan, json.dumps(plan, indent=1, ensure_ascii=False))
    log.info("planned %d images, %d boxes in %d shards", totals["images"], totals["boxes"],
             len(sink.shards))
    return plan


def plan_settings(plan: dict[str, Any]) -> Settings:
    return Settings.from_json(plan["contract"]["settings"])


def open_plan(settings: Settings, out_dir: str | Path, engine_description: dict[str, Any], *,
              force: bool = False, lock_timeout_s: float = DEFAULT_TIMEOUT_S) -> dict[str, Any]:
    """The plan of ``out_dir`` for ``settings``: planned now, or the existing one when its
    contract matches (else ``PlanMismatchError``; ``force`` discards it and plans again).

    Exclusive: concurrent callers take the plan lock in turn, so one plans and the others
    resume its plan.
    """
    settings = resolve_settings(settings)
    requested = contract(settings, engine_description)
    plan = load_plan(out_dir)
    if plan is not None and not force:
        check_contract(plan, requested)
        check_input(plan)
        return plan
    seen = plan.get("plan_id") if plan is not None else None
    layout = JobLayout(out_dir)
    layout.root.mkdir(parents=True, exist_ok=True)
    worker = f"plan-{socket.gethostname()}-{os.getpid()}"
    with holding(layout.plan_lock, worker, lock_timeout_s):
        plan = load_plan(out_dir)
        if plan is not None and force and plan.get("plan_id") == seen:
            log.warning("discarding the conversion in %s (--force)", out_dir)
            discard_job(out_dir)
            plan = None
        if plan is not None:  # planned by another launcher while we waited for the lock
            check_contract(plan, requested)
            check_input(plan)
            return plan
        return make_plan(settings, out_dir, engine_description)
