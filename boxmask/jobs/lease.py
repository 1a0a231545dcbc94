"""Leases on a shared filesystem: exclusive lease files, heartbeats, takeover when stale.

A worker owns a shard (or the plan, or the merge) while the lease file exists and carries its
token. The file is created exclusively (written to a temporary file, then hard-linked into place,
so that nobody ever sees it half-written; ``O_CREAT | O_EXCL`` where links are unsupported), its
mtime is renewed by a heartbeat thread, and it is removed on release. A lease is stale when its
heartbeat is older than the timeout, or at once when it was taken on this host (same hostname and
pid namespace) by a process that no longer exists (a killed local worker).

Lease ages are measured by the clock that stamps the lease files' mtimes: on NFS or Lustre the
file server's, not this host's (``fs_now``), so hosts whose clocks disagree still agree on which
lease is stale. The heartbeat sets the mtime to "now" on the server (``utime`` without times).

A stale lease is taken over by renaming it to a unique tombstone (one winner) and creating a fresh
one. The winner checks that what it moved is the lease it judged stale (same token, same
heartbeat); a lease renewed in between is put back. Release renames the lease away first and
removes it only if it is still ours.

Two workers can still, in rare races on a slow filesystem, both believe they hold a shard for a
moment. That costs duplicated work, never corrupted output: each lease attempt appends to its own
results file, per-image files are written atomically with identical bytes, and the done marker is
created exclusively (the first finished attempt wins).
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
from collections.abc import Callable
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


def _pid_namespace() -> str | None:
    """This process's pid namespace (``pid:[inode]``): pids mean something only inside it."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def pid_alive(pid: int) -> bool:
    """True when a process with this pid exists in this pid namespace (zombies count as gone)."""
    if pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
        return state not in (b"Z", b"X")
    except (OSError, IndexError):
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class LeaseInfo:
    """What a lease file holds (JSON)."""

    worker_id: str
    host: str
    pid: int
    pid_start: str | None
    token: str
    """8 hex digits, unique per acquisition; names the attempt's results file."""
    acquired: float
    """Unix time the lease was taken."""
    pid_ns: str | None = None

    @classmethod
    def mine(cls, worker_id: str) -> LeaseInfo:
        pid = os.getpid()
        return cls(worker_id=worker_id, host=socket.gethostname(), pid=pid,
                   pid_start=_process_start_time(pid), token=secrets.token_hex(4),
                   acquired=time.time(), pid_ns=_pid_namespace())

    def describe(self) -> str:
        return f"{self.worker_id} ({self.host}, pid {self.pid})"


def read_lease(path: Path) -> tuple[LeaseInfo | None, float | None]:
    """The lease's owner and heartbeat time (mtime), or (None, None) if there is no lease.

    A lease file that exists but cannot be parsed is returned as (None, mtime).
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
    """True when the lease was taken on this host, in this pid namespace, by a process that has
    ended (or whose pid now belongs to another process)."""
    if info.host != socket.gethostname() or info.pid_ns != _pid_namespace():
        return False
    start = _process_start_time(info.pid)
    if start is None:
        return not pid_alive(info.pid)
    return info.pid_start is not None and start != info.pid_start


FS_CLOCK_REFRESH_S = 30.0
"""How often ``fs_now`` measures the filesystem clock's offset again."""
_fs_offsets: dict[str, tuple[float, float]] = {}


def fs_now(folder: Path) -> float:
    """The current time by the clock that stamps mtimes in ``folder`` (seconds since the epoch).

    This host's ``time.time()`` corrected by the offset to the filesystem's clock, measured by
    stamping a probe file with the current time (``utime`` without times: the server's time on
    NFS) and re-measured every ``FS_CLOCK_REFRESH_S`` seconds. Where the probe cannot be written
    (a read-only folder) the offset is taken as 0.
    """
    key = str(folder)
    cached = _fs_offsets.get(key)
    mono = time.monotonic()
    if cached is None or mono - cached[1] > FS_CLOCK_REFRESH_S:
        probe = Path(folder) / f".clock-{socket.gethostname()}-{os.getpid()}"
        offset = cached[0] if cached else 0.0
        try:
            before = time.time()
            probe.touch()
            os.utime(probe)
            after = time.time()
            offset = probe.stat().st_mtime - (before + after) / 2
            probe.unlink()
        except OSError:
            pass
        _fs_offsets[key] = cached = (offset, mono)
    return time.time() + cached[0]


def stale_reason(info: LeaseInfo | None, mtime: float | None, timeout_s: float,
                 now: float | None = None) -> str | None:
    """Why the lease is stale (a sentence), or None when it is live or absent."""
    if mtime is None:
        return None
    now = time.time() if now is None else now
    age = now - mtime
    if age > timeout_s:
        return f"no heartbeat for {age:.1f} s (lease timeout {timeout_s:g} s)"
    if info is None:  # unparsable: only a damaged file can look like this
        return f"unreadable lease file, {age:.1f} s old" if age > min(timeout_s, 10.0) else None
    if owner_is_gone(info):
        return f"worker process {info.pid} on {info.host} ended without releasing its lease"
    return None


def is_stale(info: LeaseInfo | None, mtime: float | None, timeout_s: float,
             now: float | None = None) -> bool:
    return stale_reason(info, mtime, timeout_s, now) is not None


class Lease:
    """A held lease. ``replaced`` / ``replaced_reason``: the stale lease this one took over."""

    def __init__(self, path: Path, info: LeaseInfo, replaced: LeaseInfo | None = None,
                 replaced_reason: str | None = None) -> None:
        self.path = path
        self.info = info
        self.replaced = replaced
        self.replaced_reason = replaced_reason
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
        """Remove the lease if it is still ours; leave anyone else's in place."""
        tomb = self.path.with_name(f"{self.path.name}.release-{self.token}")
        try:
            os.rename(self.path, tomb)
        except FileNotFoundError:
            return
        moved, _ = read_lease(tomb)
        if moved is None or moved.token != self.token:
            # Someone else's lease (we lost ours): put it back unless a newer one exists.
            with contextlib.suppress(OSError):
                os.link(tomb, self.path)
        with contextlib.suppress(FileNotFoundError):
            tomb.unlink()


def _create(path: Path, info: LeaseInfo) -> bool:
    """Create the lease file with ``info`` unless it exists; True on success."""
    if path.exists():  # the common case when scanning for work: no file written
        return False
    data = json.dumps(asdict(info)).encode()
    tmp = path.with_name(f".{path.name}.new-{info.token}")
    try:
        with open(tmp, "wb") as f:  # no fsync: a lease need not outlive its machine
            f.write(data)
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        except OSError:  # no hard links on this filesystem: exclusive create instead
            pass
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return True


OnStale = Callable[[LeaseInfo | None, float, str], Callable[[], None] | None]
"""``on_stale(old_info, old_mtime, reason)``: called before a stale lease is taken over; may
return an undo function, called if the takeover is abandoned (the lease proved live)."""


def try_acquire(path: Path, worker_id: str, timeout_s: float = DEFAULT_TIMEOUT_S,
                on_stale: OnStale | None = None) -> Lease | None:
    """Take the lease at ``path`` if it is free or stale; None if someone else holds it.

    ``on_stale`` runs before a stale lease is moved away, so that what it records (e.g. the
    failure of the abandoned attempt) survives this process being killed during the takeover;
    it must be idempotent (several workers may judge the same lease stale).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    info = LeaseInfo.mine(worker_id)
    if _create(path, info):
        return Lease(path, info)
    old, mtime = read_lease(path)
    reason = stale_reason(old, mtime, timeout_s, fs_now(path.parent))
    if reason is None or mtime is None:  # no lease, or a live one
        return None
    undo = on_stale(old, mtime, reason) if on_stale is not None else None
    tomb = path.with_name(f"{path.name}.stale-{info.token}")
    try:
        os.rename(path, tomb)
    except FileNotFoundError:
        return None  # someone else took it over first
    moved, moved_mtime = read_lease(tomb)
    same_owner = (moved.token if moved else None) == (old.token if old else None)
    if not same_owner or moved_mtime != mtime:
        # We moved a lease renewed or re-created after our check: put it back if we can.
        with contextlib.suppress(OSError):
            os.link(tomb, path)
        with contextlib.suppress(FileNotFoundError):
            tomb.unlink()
        if undo is not None and moved_mtime != mtime and same_owner:
            undo()  # its owner is alive after all
        return None
    with contextlib.suppress(FileNotFoundError):
        tomb.unlink()
    if not _create(path, info):
        return None
    log.warning("took over %s from %s: %s", path.name,
                old.describe() if old else "an unknown worker", reason)
    return Lease(path, info, replaced=old, replaced_reason=reason)


def acquire_blocking(path: Path, worker_id: str, timeout_s: float = DEFAULT_TIMEOUT_S,
                     poll_s: float = 0.2, until: threading.Event | None = None) -> Lease | None:
    """Wait for the lease at ``path`` (taking it over once stale); None if ``until`` is set."""
    while until is None or not until.is_set():
        lease = try_acquire(path, worker_id, timeout_s)
        if lease is not None:
            return lease
        time.sleep(poll_s)
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
                log.error("lost lease %s; abandoning it", self.lease.path.name)
                return
            except OSError as e:  # a transient filesystem error: try again next beat
                log.warning("heartbeat for %s failed: %s", self.lease.path.name, e)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


@contextlib.contextmanager
def holding(path: Path, worker_id: str, timeout_s: float = DEFAULT_TIMEOUT_S,
            poll_s: float = 0.2):
    """Context manager: wait for the lease at ``path``, keep it alive, release it at the end."""
    lease = acquire_blocking(path, worker_id, timeout_s, poll_s)
    assert lease is not None
    try:
        with Heartbeat(lease, max(min(timeout_s / 4, 30.0), 0.2)):
            yield lease
    finally:
        lease.release()
