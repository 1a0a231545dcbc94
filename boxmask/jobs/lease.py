"""Shard leases on a shared filesystem: O_EXCL lease files, heartbeats, takeover when stale.

A worker owns a shard while its lease file exists and carries its token. The file is created with
``O_CREAT | O_EXCL`` (one winner), its mtime is renewed by a heartbeat thread, and it is removed on
release. A lease is stale when its heartbeat is older than the timeout, or at once when it was
taken on this host by a process that no longer exists (a killed local worker). A stale lease is
taken over by renaming it to a unique tombstone (one winner) and creating a fresh one.

Two workers can still, in rare races on a slow filesystem, both believe they hold a shard (a
lease renewed during a takeover). That costs duplicated work, never corrupted output: each lease
attempt appends to its own results file and the done marker names the one that counts.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import socket
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 300.0
"""A lease whose heartbeat is older than this is taken over (``--lease-timeout``)."""


class LeaseLost(RuntimeError):
    """This worker's lease was taken over or removed; it must abandon the shard."""


def _process_start_time(pid: int) -> str | None:
    """Start time of a process in clock ticks since boot (Linux), to detect pid reuse."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return fields[19].decode()
    except (OSError, IndexError):
        return None


@dataclass
class LeaseInfo:
    worker_id: str
    host: str
    pid: int
    pid_start: str | None
    token: str
    acquired: float

    @classmethod
    def mine(cls, worker_id: str) -> LeaseInfo:
        pid = os.getpid()
        return cls(worker_id=worker_id, host=socket.gethostname(), pid=pid,
                   pid_start=_process_start_time(pid), token=secrets.token_hex(4),
                   acquired=time.time())


def read_lease(path: Path) -> tuple[LeaseInfo | None, float | None]:
    """The lease's owner and heartbeat time (mtime), or (None, None) if there is no lease.

    A lease file that exists but cannot be parsed (its writer died between create and write)
    is returned as (None, mtime).
    """
    try:
        st = path.stat()
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None, None
    try:
        return LeaseInfo(**json.loads(text)), st.st_mtime
    except (ValueError, TypeError):
        return None, st.st_mtime


def owner_is_gone(info: LeaseInfo) -> bool:
    """True when the lease was taken on this host by a process that has ended."""
    if info.host != socket.gethostname():
        return False
    start = _process_start_time(info.pid)
    return start is None or (info.pid_start is not None and start != info.pid_start)


def is_stale(info: LeaseInfo | None, mtime: float | None, timeout_s: float,
             now: float | None = None) -> bool:
    if mtime is None:
        return False
    now = time.time() if now is None else now
    if now - mtime > timeout_s:
        return True
    if info is None:  # unparsable: give its writer a moment to finish writing
        return now - mtime > min(timeout_s, 10.0)
    return owner_is_gone(info)


class Lease:
    """A held lease on one shard."""

    def __init__(self, path: Path, info: LeaseInfo) -> None:
        self.path = path
        self.info = info
        self.lost = threading.Event()

    @property
    def token(self) -> str:
        return self.info.token

    def still_held(self) -> bool:
        info, _ = read_lease(self.path)
        return info is not None and info.token == self.info.token

    def renew(self) -> None:
        """Refresh the heartbeat; raise ``LeaseLost`` if the lease is no longer ours."""
        if not self.still_held():
            self.lost.set()
            raise LeaseLost(f"lease {self.path.name} was taken over")
        os.utime(self.path)

    def check(self) -> None:
        """Raise ``LeaseLost`` if the heartbeat found the lease gone."""
        if self.lost.is_set():
            raise LeaseLost(f"lease {self.path.name} was taken over")

    def release(self) -> None:
        if self.still_held():
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


def _create(path: Path, info: LeaseInfo) -> bool:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(json.dumps(asdict(info)))
        f.flush()
        os.fsync(f.fileno())
    return True


def try_acquire(path: Path, worker_id: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> Lease | None:
    """Take the lease at ``path`` if it is free or stale; None if someone else holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    info = LeaseInfo.mine(worker_id)
    if _create(path, info):
        return Lease(path, info)
    old, mtime = read_lease(path)
    if not is_stale(old, mtime, timeout_s):
        return None
    tomb = path.with_name(f"{path.name}.stale-{info.token}")
    try:
        os.rename(path, tomb)
    except FileNotFoundError:
        return None  # someone else took it over first
    moved, _ = read_lease(tomb)
    if old is not None and (moved is None or moved.token != old.token):
        # We moved a lease renewed or re-created after our check: put it back if we can.
        with contextlib.suppress(OSError):
            os.link(tomb, path)
        with contextlib.suppress(FileNotFoundError):
            tomb.unlink()
        return None
    with contextlib.suppress(FileNotFoundError):
        tomb.unlink()
    log.warning("took over stale lease %s from %s", path.name,
                f"{old.worker_id} ({old.host}, pid {old.pid})" if old else "an unknown worker")
    if _create(path, info):
        return Lease(path, info)
    return None


class Heartbeat:
    """Renews a lease every ``interval_s`` seconds in a daemon thread until stopped."""

    def __init__(self, lease: Lease, interval_s: float) -> None:
        self.lease = lease
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{lease.path.stem}",
                                        daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.lease.renew()
            except LeaseLost:
                log.error("lost lease %s; abandoning the shard", self.lease.path.name)
                return
            except OSError as e:  # a transient filesystem error: try again next beat
                log.warning("heartbeat for %s failed: %s", self.lease.path.name, e)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
