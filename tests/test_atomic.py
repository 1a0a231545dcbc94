"""Atomic output: a reader sees the old file, no file, or the complete new one; never a part."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from boxmask.atomic import (
    atomic_open,
    atomic_write_bytes,
    atomic_write_text,
    is_temp,
    remove_stale_temps,
)

REPO = Path(__file__).resolve().parents[1]

# A payload checks itself: 8-byte length, body, SHA-256 of everything before it.
WRITER = r"""
import hashlib, sys, time
from boxmask.atomic import atomic_open

def payload(i, size):
    body = hashlib.sha256(str(i).encode()).digest() * (size // 32)
    head = len(body).to_bytes(8, "big")
    return head + body + hashlib.sha256(head + body).digest()

dest, size, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
chunk = 1 << 16
versions = [payload(0, size), payload(1, size)]  # built once: the loop is all writing
i = 0
while True:
    data = versions[i % 2]
    with atomic_open(dest, "wb", fsync=False) as f:
        for k in range(0, len(data), chunk):
            f.write(data[k:k + chunk])
            if mode == "loop":
                time.sleep(0.001)  # a producer that takes time, like an encoder
            if mode == "stop-half" and k >= len(data) // 2:
                f.flush()
                print("HALF", flush=True)
                time.sleep(60)
    if mode == "once":
        break
    i += 1
"""


def is_complete(data: bytes) -> bool:
    if len(data) < 40:
        return False
    n = int.from_bytes(data[:8], "big")
    return len(data) == 8 + n + 32 and hashlib.sha256(data[:-32]).digest() == data[-32:]


def start_writer(dest: Path, size: int, mode: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, "-c", WRITER, str(dest), str(size), mode],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)


def kill(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    if proc.stdout:
        proc.stdout.close()


def temps_in(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if is_temp(p)]


def test_writer_killed_mid_write_leaves_the_old_file_and_one_hidden_temp(tmp_path):
    dest = tmp_path / "out" / "masks.bin"
    proc = start_writer(dest, 1 << 20, "once")
    assert proc.wait(timeout=30) == 0
    proc.stdout.close()
    old = dest.read_bytes()
    assert is_complete(old)

    proc = start_writer(dest, 4 << 20, "stop-half")
    try:
        assert proc.stdout.readline().strip() == "HALF"
    finally:
        kill(proc)
    assert dest.read_bytes() == old
    temps = temps_in(tmp_path)
    assert len(temps) == 1
    assert temps[0].parent == dest.parent and temps[0].name.startswith(".masks.bin.tmp-")
    assert temps[0].stat().st_size >= 2 << 20  # the half-written data really was there
    assert remove_stale_temps(tmp_path) == 1
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["masks.bin", "out"]


def test_a_reader_never_sees_a_partial_file_while_writers_are_killed(tmp_path):
    dest = tmp_path / "shard-00007.jsonl"
    reads = kills_mid_write = 0
    for trial in range(4):
        proc = start_writer(dest, 2 << 20, "loop")
        deadline = time.monotonic() + 0.25 + 0.1 * trial
        try:
            while time.monotonic() < deadline:
                try:
                    data = dest.read_bytes()
                except FileNotFoundError:
                    continue
                assert is_complete(data), f"partial file seen: {len(data)} bytes"
                reads += 1
        finally:
            kill(proc)
        assert not dest.exists() or is_complete(dest.read_bytes())
        left = temps_in(tmp_path)
        assert all(p.name.startswith(".") for p in left)
        kills_mid_write += len(left)
        remove_stale_temps(tmp_path)
    assert reads > 0
    assert kills_mid_write >= 1  # at least one kill landed inside a write
    assert [p.name for p in tmp_path.iterdir()] == [dest.name]


def test_an_exception_inside_atomic_open_keeps_the_old_file(tmp_path):
    dest = tmp_path / "index.json"
    dest.write_bytes(b"old complete content")
    for exc in (RuntimeError("engine failed"), KeyboardInterrupt()):
        with pytest.raises(type(exc)):
            with atomic_open(dest) as f:
                f.write(b"new but partial")
                raise exc
        assert dest.read_bytes() == b"old complete content"
        assert list(tmp_path.iterdir()) == [dest]


def test_an_exception_before_the_first_write_leaves_no_file(tmp_path):
    dest = tmp_path / "new.png"
    with pytest.raises(ValueError):
        with atomic_open(dest):
            raise ValueError("nothing to write")
    assert list(tmp_path.iterdir()) == []


def test_the_temp_file_is_hidden_beside_the_destination(tmp_path):
    dest = tmp_path / "a" / "b" / "mask.png"
    with atomic_open(dest) as f:
        f.write(b"x")
        (temp,) = dest.parent.iterdir()
        assert temp.name.startswith(".mask.png.tmp-") and is_temp(temp)
        assert not dest.exists()
    assert [p.name for p in dest.parent.iterdir()] == ["mask.png"]
    assert dest.read_bytes() == b"x"


def test_write_helpers_replace_content_and_keep_text_exact(tmp_path):
    dest = tmp_path / "x.txt"
    atomic_write_bytes(dest, b"first")
    atomic_write_text(dest, "zweite Zeile \u00e9\r\nthird\n")
    assert dest.read_bytes() == "zweite Zeile \u00e9\r\nthird\n".encode()
    assert list(tmp_path.iterdir()) == [dest]


def test_a_file_name_near_the_length_limit_can_be_written(tmp_path):
    dest = tmp_path / ("n" * 250 + ".png")
    atomic_write_bytes(dest, b"png")
    assert dest.read_bytes() == b"png"


@pytest.mark.parametrize("mode", ["a", "ab", "r+", "r", "x"])
def test_only_whole_file_modes_are_accepted(tmp_path, mode):
    with pytest.raises(ValueError, match="mode"):
        with atomic_open(tmp_path / "f", mode):
            pass


def test_remove_stale_temps_removes_only_temp_files(tmp_path):
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    stale = [tmp_path / ".a.png.tmp-123-0123abcd", tmp_path / "sub" / ".b.json.tmp-9-deadbeef",
             tmp_path / "sub" / "deeper" / ".c.tmp-4-00000000"]
    keep = [tmp_path / "a.png", tmp_path / ".hidden", tmp_path / "x.tmp-1-0123abcd",
            tmp_path / ".x.tmp-abc", tmp_path / ".x.tmp-12-0123ABCD", tmp_path / ".x.tmp-12-0123",
            tmp_path / "sub" / ".d.tmp-5-0123abcd.bak", tmp_path / "sub" / "deeper" / "b.json"]
    for p in stale + keep:
        p.write_bytes(b"data")
    (tmp_path / ".dir.tmp-1-0123abcd").mkdir()
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    (outside / ".e.tmp-7-0123abcd").write_bytes(b"not ours")
    (tmp_path / "link").symlink_to(outside, target_is_directory=True)
    (tmp_path / ".f.tmp-8-0123abcd").symlink_to(outside / ".e.tmp-7-0123abcd")

    assert remove_stale_temps(tmp_path) == len(stale) + 1  # + the temporary link
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in keep)
    assert (tmp_path / ".dir.tmp-1-0123abcd").is_dir()
    assert (outside / ".e.tmp-7-0123abcd").read_bytes() == b"not ours"  # link target kept
    assert not (tmp_path / ".f.tmp-8-0123abcd").is_symlink()
    assert (tmp_path / "link").is_symlink()


def test_remove_stale_temps_spares_recent_files_when_asked(tmp_path):
    temp = tmp_path / ".a.png.tmp-123-0123abcd"
    temp.write_bytes(b"in progress")
    assert remove_stale_temps(tmp_path, min_age_s=3600) == 0
    old = time.time() - 7200
    os.utime(temp, (old, old))
    assert remove_stale_temps(tmp_path, min_age_s=3600) == 1
    assert not temp.exists()
