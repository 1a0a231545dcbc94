"""Atomic file output: write to a temporary file, fsync, rename over the final name.

A reader never sees a half-written output: either the old file (or none) or the complete new one.
Temporary files are hidden (``.<name>.tmp-<pid>-<8 hex digits>``) in the destination folder, so
the rename stays on one filesystem; ``remove_stale_temps`` clears those a killed process left
behind.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

TEMP_MARK = ".tmp-"
_TEMP_NAME = re.compile(r"\..+" + re.escape(TEMP_MARK) + r"[0-9]+-[0-9a-f]{8}", re.DOTALL)
_MAX_TEMP_STEM_BYTES = 200
"""Longest part of the final name kept in a temporary name (file names are limited to 255
bytes and the temporary name adds up to about 30)."""


def _temp_name(path: Path) -> Path:
    stem = path.name
    raw = os.fsencode(stem)
    if len(raw) > _MAX_TEMP_STEM_BYTES:
        stem = os.fsdecode(raw[:_MAX_TEMP_STEM_BYTES])
    return path.with_name(f".{stem}{TEMP_MARK}{os.getpid()}-{secrets.token_hex(4)}")


def fsync_dir(path: Path) -> None:
    """Flush a directory entry (the rename itself) to disk; ignored where unsupported."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", fsync: bool = True) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success it replaces ``path`` atomically.

    ``mode`` is ``"wb"`` (bytes) or ``"w"`` (UTF-8 text, newlines written as given). With
    ``fsync`` the data and the rename are flushed to disk before returning. On an exception
    (or ``KeyboardInterrupt``) the temporary file is removed and ``path`` is left untouched; a
    process killed outright leaves only a hidden temporary file (see ``remove_stale_temps``).
    """
    if mode not in ("w", "wt", "wb"):
        raise ValueError(f"atomic_open writes whole files: mode must be 'w' or 'wb', not {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path)
    binary = "b" in mode
    f = open(tmp, mode, encoding=None if binary else "utf-8", newline=None if binary else "")
    try:
        yield f
        f.flush()
        if fsync:
            os.fsync(f.fileno())
        f.close()
        os.replace(tmp, path)
        if fsync:
            fsync_dir(path.parent)
    except BaseException:
        f.close()
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes, fsync: bool = True) -> None:
    """Write ``data`` to ``path`` atomically (see ``atomic_open``)."""
    with atomic_open(path, "wb", fsync=fsync) as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str, fsync: bool = True) -> None:
    """Write ``text`` as UTF-8 to ``path`` atomically (see ``atomic_open``)."""
    with atomic_open(path, "w", fsync=fsync) as f:
        f.write(text)


def atomic_symlink(target: str | os.PathLike, path: str | os.PathLike,
                   fsync: bool = True) -> None:
    """Make ``path`` a symbolic link to ``target``, replacing whatever ``path`` was atomically
    (a reader sees the old entry or the new link, never neither)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path)
    os.symlink(target, tmp)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    if fsync:
        fsync_dir(path.parent)


def atomic_copy(source: str | os.PathLike, path: str | os.PathLike, fsync: bool = True) -> None:
    """Copy the file ``source`` (following links) to ``path`` atomically (see ``atomic_open``)."""
    with open(source, "rb") as src, atomic_open(path, "wb", fsync=fsync) as dst:
        shutil.copyfileobj(src, dst, 1 << 20)


def is_temp(path: str | os.PathLike) -> bool:
    """True for a name ``atomic_open`` gives its temporary files (``.<name>.tmp-<pid>-<hex>``)."""
    return _TEMP_NAME.fullmatch(Path(path).name) is not None


def temp_owner_pid(name: str) -> int | None:
    """The pid of the process that made a temporary file (``.<name>.tmp-<pid>-<hex>``)."""
    try:
        return int(name.rsplit("-", 2)[-2])
    except (ValueError, IndexError):
        return None


def remove_stale_temps(folder: str | os.PathLike[str], min_age_s: float = 0.0,
                       is_alive: Callable[[int], bool] | None = None) -> int:
    """Delete temporary files left by killed writers anywhere below ``folder``; return the count.

    Only regular files and symbolic links (the temporary links of ``atomic_symlink``) whose name
    matches ``is_temp`` and whose last modification is at least ``min_age_s`` seconds old are
    removed; a link is removed itself, never its target, and linked folders are not entered. With
    ``is_alive`` (a pid check), files whose writing process is still alive are kept. Without it,
    call this only when no writer is active in ``folder``, or pass a ``min_age_s`` longer than any
    write takes: a live writer's temporary file would be deleted and its write would fail.
    """
    n = 0
    now = time.time()
    for dirpath, _dirnames, filenames in os.walk(os.fspath(folder)):
        for name in filenames:
            if not _TEMP_NAME.fullmatch(name):
                continue
            if is_alive is not None:
                pid = temp_owner_pid(name)
                if pid is None or is_alive(pid):
                    continue
            p = Path(dirpath, name)
            with contextlib.suppress(FileNotFoundError):
                st = p.lstat()
                if (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)) \
                        and now - st.st_mtime >= min_age_s:
                    p.unlink()
                    n += 1
    return n
