"""The job protocol: the files through which planners, workers, merge and status cooperate.

Every file of ``boxmask.jobs.layout`` that carries protocol state is read and written here, as a
typed, frozen value with one ``from_json`` / ``to_json`` pair:

* ``Plan`` (``plan.json``): format version, boxmask version, ``plan_id``, the contract
  (``Contract``: settings, engine and inside-point policy descriptions), the reader's
  description, the input's fingerprint, ``Totals`` and the ``Shard`` list. ``PLAN_FORMAT`` is
  checked when a plan is read: a plan of another format is refused (``PlanMismatchError``).
* Shard files (``shards/<shard>.jsonl.gz``): ``read_shard_items``.
* Results files (``state/results/<shard>.<token>.jsonl``): one checksummed line per item,
  ``boxmask.jobs.results`` (its entry points are importable from here).
* ``DoneMarker`` (``state/done/<shard>.json``): created exclusively by the attempt that
  finished the shard (``create_done_marker``).
* ``FailureRecord`` (``state/failures/<shard>.<token>[.observed].json``): an attempt that ended
  abnormally, with the position it reached (``boxmask.jobs.deaths`` decides what it counts for).
* ``FailedMarker`` (``state/failed/<shard>.json``): whole-shard failures written by earlier
  versions, read only to report and re-open them.

Times are seconds since the epoch (``time.time()``); checksums are sha256 hex digests.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import logging
import os
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..atomic import atomic_open, atomic_write_text
from ..records import ErrorRecord, ImageRecord
from .layout import JobLayout
from .results import (  # noqa: F401 - the results-file entry points of the protocol
    LINE_CHECK_KEY,
    encode_line,
    item_id,
    iter_results,
    line_verifies,
    salvage_lines,
    scan_done_results,
    valid_prefix,
)
from .settings import Settings

log = logging.getLogger(__name__)

PLAN_FORMAT = 3
"""1: shard files of plain JSON lines (``.jsonl``); 2: gzip-compressed (``.jsonl.gz``)."""


class PlanMismatchError(RuntimeError):
    """The requested settings differ from the plan already in the output directory (or the plan,
    a shard file or the worker does not fit it)."""


class NoPlanError(RuntimeError):
    """The directory has no plan (run ``boxmask plan`` or ``boxmask convert`` first)."""


# -- plan.json ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Shard:
    """One shard of the plan: ``items`` input items (``images`` images holding ``boxes`` boxes,
    and ``read_errors`` items the reader could not read), its shard file's ``sha256``."""

    id: int
    items: int
    images: int = 0
    boxes: int = 0
    read_errors: int = 0
    sha256: str | None = None

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Shard:
        return cls(id=int(d["id"]), items=int(d["items"]), images=int(d.get("images", 0)),
                   boxes=int(d.get("boxes", 0)), read_errors=int(d.get("read_errors", 0)),
                   sha256=d.get("sha256"))

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"id": self.id, "items": self.items, "images": self.images,
                             "boxes": self.boxes, "read_errors": self.read_errors}
        if self.sha256 is not None:
            d["sha256"] = self.sha256
        return d


@dataclass(frozen=True)
class Totals:
    """Sums over the plan's shards, and the number of shards."""

    items: int
    images: int
    boxes: int
    read_errors: int
    shards: int

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Totals:
        return cls(**{k: int(d.get(k, 0)) for k in ("items", "images", "boxes", "read_errors",
                                                     "shards")})

    def to_json(self) -> dict[str, Any]:
        return {"items": self.items, "images": self.images, "boxes": self.boxes,
                "read_errors": self.read_errors, "shards": self.shards}


@dataclass(frozen=True)
class Contract:
    """What two runs must agree on to share an output directory: the normalised settings (less
    the options that change speed only), the engine's and the inside-point policy's
    descriptions (``Engine.describe()``, ``InsidePointPolicy.describe()``)."""

    settings: Settings
    engine: dict[str, Any]
    inside_policy: dict[str, Any] | None = None

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Contract:
        return cls(Settings.from_json(d["settings"]), dict(d["engine"]), d.get("inside_policy"))

    def to_json(self) -> dict[str, Any]:
        return {"settings": self.settings.to_json(), "engine": self.engine,
                "inside_policy": self.inside_policy}

    def hash(self) -> str:
        """sha256 of the contract's JSON (sorted keys): equal contracts, equal hashes."""
        return hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class Plan:
    """``plan.json``: the job's contract and shard list (``boxmask.jobs.plan`` writes it)."""

    plan_id: str
    """Random hex id; every done marker and results line is tied to it."""
    boxmask_version: str
    contract: Contract
    totals: Totals
    shards: tuple[Shard, ...]
    reader: dict[str, Any] = field(default_factory=dict)
    """The reader's description (source, files, options)."""
    input: dict[str, Any] | None = None
    """``{"path", "size", "mtime_ns"}`` of an input that is one file, else None."""
    created: str = ""
    """Local time of planning, ``%Y-%m-%dT%H:%M:%S%z``."""
    planning_seconds: float = 0.0
    plan_format: int = PLAN_FORMAT

    @property
    def settings(self) -> Settings:
        return self.contract.settings

    @property
    def engine_name(self) -> str:
        """The engine's name as its description gives it (else the settings')."""
        return str(self.contract.engine.get("name", self.settings.engine))

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Plan:
        """The plan of a ``plan.json`` dict; ``PlanMismatchError`` for another format."""
        check_plan_format(d.get("plan_format"))
        return cls(plan_id=str(d.get("plan_id")), boxmask_version=str(d.get("boxmask_version")),
                   contract=Contract.from_json(d["contract"]),
                   totals=Totals.from_json(d["totals"]),
                   shards=tuple(Shard.from_json(s) for s in d["shards"]),
                   reader=dict(d.get("reader") or {}), input=d.get("input"),
                   created=str(d.get("created", "")),
                   planning_seconds=float(d.get("planning_seconds", 0.0)),
                   plan_format=int(d["plan_format"]))

    def to_json(self) -> dict[str, Any]:
        return {"plan_format": self.plan_format, "boxmask_version": self.boxmask_version,
                "plan_id": self.plan_id, "created": self.created,
                "planning_seconds": self.planning_seconds, "contract": self.contract.to_json(),
                "reader": self.reader, "input": self.input, "totals": self.totals.to_json(),
                "shards": [s.to_json() for s in self.shards]}


def check_plan_format(plan_format: Any) -> None:
    """Raise ``PlanMismatchError`` unless ``plan_format`` is ``PLAN_FORMAT``."""
    if plan_format != PLAN_FORMAT:
        raise PlanMismatchError(
            f"the plan has format {plan_format!r} (its plan and shard files are laid "
            f"out differently); this boxmask reads format {PLAN_FORMAT}: finish the job with the "
            "boxmask that planned it, or use --force to plan again.")


def read_plan_json(path: Path) -> dict[str, Any] | None:
    """``plan.json`` at ``path`` as parsed JSON, unchecked; None when there is none (yet)."""
    if not path.exists():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def read_plan(path: Path) -> Plan | None:
    """The plan at ``path`` (format checked), or None when there is none (yet)."""
    d = read_plan_json(path)
    return None if d is None else Plan.from_json(d)


def write_plan(path: Path, plan: Plan) -> None:
    """Write ``plan.json`` atomically (indented JSON, UTF-8)."""
    atomic_write_text(path, json.dumps(plan.to_json(), indent=1, ensure_ascii=False))


# -- shard files ----------------------------------------------------------------------------------

def read_shard_items(path: Path, sha256: str | None = None) -> list[ImageRecord | ErrorRecord]:
    """The input items of a shard file (gzip-compressed JSON lines, ``{"record": ...}`` or
    ``{"error": ...}`` each), in order; with ``sha256`` (the plan's), refuse a file that does
    not match (``PlanMismatchError``)."""
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


# -- done markers ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class DoneMarker:
    """``state/done/<shard>.json``: the shard is finished; ``results`` names its results file
    (in ``state/results``). Counts and checksums as ``boxmask.jobs.results.scan_done_results``
    gives them; ``started`` / ``finished``: the attempt's lease time and end time; ``redo``: the
    redos applied to its per-image files (``boxmask.jobs.redo``), when any."""

    shard: int
    plan_id: str | None
    results: str
    items: int | None = None
    images: int = 0
    boxes: int = 0
    masks: int = 0
    errors: int = 0
    warnings: int = 0
    skipped: int = 0
    files: int = 0
    results_sha256: str | None = None
    files_sha256: str | None = None
    worker: str | None = None
    started: float | None = None
    finished: float | None = None
    software: dict[str, Any] | None = None
    redo: dict[str, Any] | None = None

    _COUNTS = ("images", "boxes", "masks", "errors", "warnings", "skipped", "files")

    @classmethod
    def from_json(cls, d: Any) -> DoneMarker:
        """``ValueError`` unless ``d`` is a dict naming its results file."""
        if not isinstance(d, dict) or not isinstance(d.get("results"), str):
            raise ValueError("not a done marker (no results file named)")
        return cls(shard=int(d.get("shard", -1)), plan_id=d.get("plan_id"),
                   results=d["results"], items=d.get("items"),
                   **{k: int(d.get(k, 0)) for k in cls._COUNTS},
                   results_sha256=d.get("results_sha256"), files_sha256=d.get("files_sha256"),
                   worker=d.get("worker"), started=d.get("started"), finished=d.get("finished"),
                   software=d.get("software"), redo=d.get("redo"))

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"shard": self.shard, "plan_id": self.plan_id,
                             "results": self.results, "items": self.items,
                             **{k: getattr(self, k) for k in self._COUNTS},
                             "results_sha256": self.results_sha256,
                             "files_sha256": self.files_sha256, "worker": self.worker,
                             "started": self.started, "finished": self.finished,
                             "software": self.software}
        if self.redo is not None:
            d["redo"] = self.redo
        return d

    @property
    def interval(self) -> tuple[float, float] | None:
        """``(started, finished)`` when both are recorded."""
        if self.started is None or self.finished is None:
            return None
        return (float(self.started), float(self.finished))


def read_done_marker(layout: JobLayout, shard_id: int) -> DoneMarker | None:
    """The shard's done marker, or None when it is missing or unreadable."""
    try:
        return DoneMarker.from_json(json.loads(layout.done_file(shard_id).read_bytes()))
    except (OSError, ValueError, TypeError):
        return None


def readable_done_marker(layout: JobLayout, shard_id: int) -> bool:
    """True when the shard's done marker exists and parses; an unreadable one (damaged on
    disk) is set aside as ``<name>.damaged`` so that the shard is worked on again."""
    path = layout.done_file(shard_id)
    try:
        DoneMarker.from_json(json.loads(path.read_bytes()))
        return True
    except FileNotFoundError:
        return False
    except (OSError, ValueError, TypeError):
        pass
    log.error("shard %d: done marker %s is unreadable; set aside, the shard resumes from its "
              "results", shard_id, path.name)
    with contextlib.suppress(FileNotFoundError):
        os.replace(path, path.with_name(path.name + ".damaged"))
    return False


def create_done_marker(layout: JobLayout, marker: DoneMarker, token: str) -> bool:
    """Create the shard's done marker exclusively (its content written and fsynced first);
    False when it exists already: another attempt finished the shard first."""
    done = layout.done_file(marker.shard)
    tmp = done.with_name(f".{done.name}.new-{token}")
    with atomic_open(tmp, "w") as f:
        f.write(json.dumps(marker.to_json()))
    try:
        os.link(tmp, done)
        return True
    except FileExistsError:
        return False
    except OSError:  # no hard links here: fall back to a plain (non-exclusive) rename
        won = not done.exists()
        if won:
            os.replace(tmp, done)
        return won
    finally:
        tmp.unlink(missing_ok=True)


def rewrite_done_marker(layout: JobLayout, marker: DoneMarker) -> None:
    """Replace an existing done marker atomically (its shard stays done)."""
    atomic_write_text(layout.done_file(marker.shard), json.dumps(marker.to_json()))


# -- failure records ------------------------------------------------------------------------------

@dataclass(frozen=True)
class FailureRecord:
    """An attempt on a shard that ended abnormally after ``items_done`` items. ``observed``:
    a live process (``observed_by``) saw its worker die; ``recorded``: when this was written."""

    shard: int
    attempt: str
    """The attempt's lease token."""
    worker: str | None
    reason: str
    items_done: int | None
    host: str | None = None
    pid: int | None = None
    observed: bool = False
    observed_by: str | None = None
    recorded: float | None = None

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> FailureRecord:
        return cls(shard=int(d.get("shard", -1)), attempt=str(d.get("attempt")),
                   worker=d.get("worker"), reason=str(d.get("reason", "")),
                   items_done=d.get("items_done"), host=d.get("host"), pid=d.get("pid"),
                   observed=bool(d.get("observed")), observed_by=d.get("observed_by"),
                   recorded=d.get("recorded"))

    def to_json(self) -> dict[str, Any]:
        return {"shard": self.shard, "attempt": self.attempt, "worker": self.worker,
                "host": self.host, "pid": self.pid, "reason": self.reason,
                "items_done": self.items_done, "observed": self.observed,
                "observed_by": self.observed_by, "recorded": self.recorded}


def record_failure(layout: JobLayout, shard_id: int, token: str, worker: str, reason: str,
                   items_done: int, host: str | None = None, pid: int | None = None,
                   observed_by: str | None = None) -> None:
    """Record that the attempt ``token`` on a shard ended abnormally after ``items_done`` items;
    ``observed_by`` names who saw the death happen (None: an unobserved takeover)."""
    record = FailureRecord(shard=shard_id, attempt=token, worker=worker, host=host, pid=pid,
                           reason=reason, items_done=items_done,
                           observed=observed_by is not None, observed_by=observed_by,
                           recorded=time.time())
    path = (layout.failure_file(shard_id, token) if observed_by is None
            else layout.observed_failure_file(shard_id, token))
    atomic_write_text(path, json.dumps(record.to_json()))


def _read_failure(path: Path) -> FailureRecord | None:
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
        return FailureRecord.from_json(d) if isinstance(d, dict) else None
    except (OSError, ValueError, TypeError):
        return None


def read_failures(layout: JobLayout, shard_id: int) -> list[FailureRecord]:
    """Every failure record of a shard (observed and unobserved, possibly two per attempt)."""
    return [r for r in map(_read_failure, layout.failure_files(shard_id)) if r is not None]


def read_all_failures(layout: JobLayout) -> dict[int, list[FailureRecord]]:
    """Every failure record of the job by shard id, from one listing of the failures folder."""
    out: dict[int, list[FailureRecord]] = {}
    try:
        names = sorted(os.listdir(layout.failures_dir))
    except FileNotFoundError:
        return out
    for name in names:
        shard = name.partition(".")[0]
        if not shard.isdigit() or not name.endswith(".json"):
            continue
        record = _read_failure(layout.failures_dir / name)
        if record is not None:
            out.setdefault(int(shard), []).append(record)
    return out


@dataclass(frozen=True)
class FailedMarker:
    """``state/failed/<shard>.json``, written by earlier versions for a shard given up as a
    whole: the position reached and its ``attempts`` (dicts with ``reason``)."""

    shard: int
    items_done: int | None
    attempts: tuple[dict[str, Any], ...]

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> FailedMarker:
        return cls(shard=int(d.get("shard", -1)), items_done=d.get("items_done"),
                   attempts=tuple(d.get("attempts") or ()))

    def to_json(self) -> dict[str, Any]:
        return {"shard": self.shard, "items_done": self.items_done,
                "attempts": list(self.attempts)}

    @property
    def last_reason(self) -> str:
        return str(self.attempts[-1].get("reason", "")) if self.attempts else ""


def read_failed_marker(layout: JobLayout, shard_id: int) -> FailedMarker | None:
    """The whole-shard failed marker an earlier version wrote, or None."""
    try:
        d = json.loads(layout.failed_file(shard_id).read_text(encoding="utf-8"))
        return FailedMarker.from_json(d) if isinstance(d, dict) else None
    except (OSError, ValueError, TypeError):
        return None
