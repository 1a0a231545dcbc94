"""The fault matrix: disk full, a read-only output, concurrent launchers, damaged state files, a
lost images root, skewed clocks. Each test checks what the user sees and that nothing is lost:
the conversion completes afterwards with the output of an uninterrupted run.

(A worker paused past its lease timeout is ``jobs/test_crash.py::
test_a_worker_whose_lease_was_stolen_while_frozen_corrupts_nothing``; random kills are
``test_faults_harness.py``.)
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import fault_harness as H
import pytest

from boxmask.api import convert
from boxmask.jobs.layout import JobLayout
from boxmask.jobs.lease import LeaseInfo, read_lease, try_acquire
from boxmask.jobs.merge import merge
from boxmask.jobs.protocol import read_shard_items
from boxmask.jobs.worker import run_worker

FAULT_INJECT = Path(__file__).resolve().parents[1] / "fault_inject"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny COCO set (8 images, 4 shards of 2) and its uninterrupted conversion."""
    folder = tmp_path_factory.mktemp("tiny")
    ann, images = H.make_tiny_coco(folder / "input")
    return ann, images, H.reference_run(ann, images, folder / "reference")


def options(ann: Path, images: Path, out: Path, plan: bool = False) -> list[str]:
    """The options of the harness's ``convert`` with one worker (``plan``: those ``boxmask
    plan`` takes)."""
    cmd = H.convert_command(ann, images, out, workers=1)
    args = cmd[cmd.index("convert") + 1:]
    if plan:
        i = args.index("--workers")
        args = [a for a in args[:i] + args[i + 2:] if a != "--no-progress"]
    return args


def boxmask(*args: str, env: dict | None = None, **run) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "boxmask", "-q", *args], capture_output=True,
                          text=True, env=env or H.child_env(), timeout=300, **run)


def start(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "boxmask", "-q", *args], text=True,
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            env=env or H.child_env())


def slow_env(image_id: str, seconds: float) -> dict:
    env = H.child_env()
    env["PYTHONPATH"] = f"{FAULT_INJECT}{os.pathsep}{env['PYTHONPATH']}"
    env["BOXMASK_TEST_SLOW_IMAGE"] = f"{image_id}:{seconds}"
    return env


def wait_for(condition, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


def one_line_error(stderr: str, *words: str) -> None:
    """The user sees one ``error:`` line naming the problem, and no traceback."""
    errors = [x for x in stderr.splitlines() if x.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr
    assert any(w in errors[0] for w in words), errors[0]


@pytest.fixture
def tmpfs(tmp_path):
    """A 32 MiB tmpfs mounted at ``tmp_path/mnt`` (needs root: CI runs the tests as root)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs for the disk-full and read-only cases needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(mnt)], capture_output=True)
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def fill(folder: Path) -> Path:
    """Fill the filesystem of ``folder`` up; return the filler file."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for size in (1 << 20, 4096, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)
    return filler


def test_disk_full_stops_with_one_clear_error_keeps_done_shards_and_resumes(tiny, tmpfs):
    ann, images, reference = tiny
    out = tmpfs / "out"
    assert boxmask("plan", *options(ann, images, out, plan=True)).returncode == 0
    assert boxmask("work", str(out), "--max-shards", "1", "--no-progress").returncode == 0
    layout = JobLayout(out)
    done = layout.done_file(0).read_bytes()
    filler = fill(tmpfs)
    full = boxmask("convert", *options(ann, images, out))
    assert full.returncode == 1
    one_line_error(full.stderr, "No space left on device")
    assert layout.done_file(0).read_bytes() == done  # finished shards stay done
    filler.unlink()
    again = boxmask("convert", *options(ann, images, out))
    assert again.returncode == 0, again.stderr
    assert H.check_output(out, reference) == []


def test_an_output_that_turns_read_only_mid_run_stops_the_worker_and_resumes(tiny, tmp_path):
    """The output folder is bind-mounted read-only over itself while a worker is in a shard
    (what a filesystem that turns read-only looks like to it: every write fails with EROFS)."""
    ann, images, reference = tiny
    out = tmp_path / "out"
    assert boxmask("plan", *options(ann, images, out, plan=True)).returncode == 0
    layout = JobLayout(out)
    slow = read_shard_items(layout.shard_file(1))[0].image_id
    worker = start("work", str(out), "--no-progress", env=slow_env(slow, 3))
    # Shard 0 is done and the worker is on shard 1 (waiting on its slow first image).
    wait_for(lambda: layout.done_file(0).exists() and read_lease(layout.lease_file(1))[0])
    if os.geteuid() != 0:
        worker.kill()
        pytest.skip("a read-only bind mount needs root")
    mounted = subprocess.run(["mount", "--bind", str(out), str(out)], capture_output=True)
    if mounted.returncode != 0:
        worker.kill()
        pytest.skip(f"cannot bind-mount here: {mounted.stderr!r}")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(out)], check=True)
        code = worker.wait(timeout=120)
        stderr = worker.stderr.read()
    finally:
        subprocess.run(["umount", str(out)], check=True)
    assert code == 1
    one_line_error(stderr, "Read-only file system")
    again = boxmask("convert", *options(ann, images, out))
    assert again.returncode == 0, again.stderr
    assert H.check_output(out, reference) == []


def test_two_launchers_together_and_a_third_during_merge_agree(tiny, tmp_path):
    ann, images, reference = tiny
    out = tmp_path / "out"
    cmd = H.convert_command(ann, images, out, workers=2)
    first = [subprocess.Popen(cmd, env=H.child_env(), stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    wait_for(lambda: (out / "state" / "merge.lease").exists() or (out / "manifest.json").exists()
             or all(p.poll() is not None for p in first))
    third = subprocess.Popen(cmd, env=H.child_env(), stderr=subprocess.PIPE, text=True)
    for p in [*first, third]:
        assert p.wait(timeout=300) == 0, p.stderr.read()
    assert H.check_output(out, reference) == []
    layout = JobLayout(out)
    lines = [sum(1 for _ in open(layout.results_dir / json.loads(m.read_text())["results"]))
             for m in sorted(layout.done_dir.glob("*.json"))]
    assert lines == [2, 2, 2, 2]  # each image once


@pytest.fixture(scope="module")
def box_baseline(tmp_path_factory, box_settings, convert_once) -> Path:
    """The sample converted with the box engine into COCO, in 5 shards of 10 images."""
    return convert_once(tmp_path_factory.mktemp("box") / "out", box_settings())


@pytest.fixture(scope="module")
def box_settings(sample_settings):
    """``box_settings()``: the sample into COCO only, in 5 shards of 10 images."""
    def make():
        return sample_settings(shard_size=10, formats=["coco"])
    return make


@pytest.fixture
def converted(box_settings):
    """``converted(out)``: the ``box_settings`` conversion into ``out``; returns its layout."""
    def convert_into(out: Path) -> JobLayout:
        assert convert(box_settings(), out, progress=False)["complete"]
        return JobLayout(out)
    return convert_into


def results_of(layout: JobLayout, shard: int) -> Path:
    return layout.results_dir / json.loads(layout.done_file(shard).read_text())["results"]


@pytest.mark.parametrize("damage", ["torn last line", "garbage in a line", "a changed value"])
def test_a_damaged_results_file_of_a_done_shard_is_detected_and_only_its_damaged_images_redone(
        box_baseline, tmp_path, damage, converted, output_files):
    """A done shard's results must match the sha256 in its marker: a half-written last line,
    garbage bytes or a changed value that still parses are found by merge. The lines whose own
    checksums still verify are kept, and only the damaged line's image is converted again."""
    layout = converted(tmp_path / "out")
    path = results_of(layout, 2)
    data = path.read_bytes()
    lines = data.splitlines(keepends=True)
    if damage == "torn last line":
        path.write_bytes(data[:len(data) - 40])
    elif damage == "garbage in a line":
        lines[3] = b"\x00\xff garbage \x13" + lines[3][14:]
        path.write_bytes(b"".join(lines))
    else:
        line = json.loads(lines[5])
        assert line["record"]["boxes"], "needs a line with a box"
        old_value = json.dumps(line["record"]["boxes"][0]["xyxy"]).encode()
        lines[5] = lines[5].replace(old_value, old_value.replace(b"[", b"[1", 1), 1)
        assert json.loads(lines[5]) != line
        path.write_bytes(b"".join(lines))
    partial = merge(tmp_path / "out", allow_partial=True)
    assert partial["shards"]["merged"] == 4 and not partial["complete"]
    assert (layout.done_dir / "000002.json.damaged").exists()
    report = run_worker(tmp_path / "out", wait_for_others=False)
    assert report.shards_done == [2] and report.images == 1
    merge(tmp_path / "out")
    assert output_files(tmp_path / "out") == output_files(box_baseline)


def test_per_image_files_changed_under_a_done_shard_redo_the_whole_shard(
        tmp_path, convert_once, output_files, sample_settings):
    """When ``merge --verify`` finds a per-image file changed, its results lines cannot say
    which: the results file is rejected, not salvaged, and the shard is converted again."""
    with_pngs = sample_settings(shard_size=10, formats=["pixel-imagenet"])
    baseline = convert_once(tmp_path / "baseline", with_pngs)
    out = tmp_path / "out"
    assert convert(with_pngs, out, progress=False)["complete"]
    layout = JobLayout(out)
    first = json.loads(results_of(layout, 1).read_bytes().splitlines()[0])
    changed = out / first["files"][0]
    changed.write_bytes(changed.read_bytes() + b"\0")
    partial = merge(out, allow_partial=True, verify_files=True)
    assert not partial["complete"]
    assert len(list(layout.results_dir.glob("000001.*.jsonl.rejected"))) == 1
    report = run_worker(out, wait_for_others=False)
    assert report.shards_done == [1] and report.images == 10
    merge(out)
    assert output_files(out) == output_files(baseline)


def test_a_garbled_done_marker_is_set_aside_and_nothing_is_redone(box_baseline, tmp_path, converted,
                                                                  output_files):
    layout = converted(tmp_path / "out")
    layout.done_file(3).write_bytes(b'{"shard": 3, "resu\x00\x00')
    report = run_worker(tmp_path / "out", wait_for_others=False)
    assert report.shards_done == [3] and report.images == 0  # its results were intact
    assert (layout.done_dir / "000003.json.damaged").exists()
    merge(tmp_path / "out")
    assert output_files(tmp_path / "out") == output_files(box_baseline)


def test_an_images_root_that_disappears_mid_run_stops_the_job_without_mixing(tiny, tmp_path):
    ann, images, reference = tiny
    mine = tmp_path / "images"
    shutil.copytree(images, mine)
    out = tmp_path / "out"
    assert boxmask("plan", *options(ann, mine, out, plan=True)).returncode == 0
    layout = JobLayout(out)
    slow = read_shard_items(layout.shard_file(1))[0].image_id
    worker = start("work", str(out), "--no-progress", env=slow_env(slow, 3))
    wait_for(lambda: layout.done_file(0).exists() and read_lease(layout.lease_file(1))[0])
    mine.rename(tmp_path / "moved")
    assert worker.wait(timeout=120) == 1
    one_line_error(worker.stderr.read(), "images root")
    recorded = [json.loads(x) for p in layout.results_dir.glob("*.jsonl")
                for x in p.read_text().splitlines()]
    assert recorded and not [r for r in recorded if r.get("errors")]  # no image marked bad
    (tmp_path / "moved").rename(mine)
    again = boxmask("convert", *options(ann, mine, out))
    assert again.returncode == 0, again.stderr
    assert H.check_output(out, reference) == []


def test_lease_ages_are_measured_by_the_filesystem_clock_not_a_skewed_host_clock(
        tmp_path, plan_into, sample_settings):
    out = tmp_path / "out"
    plan_into(out, sample_settings(shard_size=10, formats=["coco"]))
    layout = JobLayout(out)
    held = try_acquire(layout.lease_file(0), "live-elsewhere", 600)  # a live lease
    # Shard 1: a worker on another host stopped heartbeating 100 s ago.
    dead = LeaseInfo(worker_id="dead", host="another-host", pid=1, pid_start=None,
                     token="deadbeef", acquired=0.0)
    layout.lease_file(1).write_text(json.dumps(dead.__dict__))
    past = time.time() - 100
    os.utime(layout.lease_file(1), (past, past))
    env = H.child_env()
    env["PYTHONPATH"] = f"{FAULT_INJECT}{os.pathsep}{env['PYTHONPATH']}"
    for skew in ("-3600", "3600"):  # this worker's clock one hour behind, then ahead
        r = boxmask("work", str(out), "--lease-timeout", "30", "--no-wait", "--no-progress",
                    env={**env, "BOXMASK_TEST_CLOCK_SKEW": skew})
        assert r.returncode == 0, r.stderr
    assert held.still_held()  # the live lease was never taken over...
    assert sorted(p.name for p in layout.done_dir.glob("*.json")) == [
        f"00000{i}.json" for i in (1, 2, 3, 4)]  # ...the dead one was, with the rest
    assert [json.loads(p.read_text())["worker"] for p in layout.failures_dir.glob("*")] == ["dead"]
    held.release()


def test_an_input_file_that_changed_after_planning_is_refused_with_a_clear_error(tiny, tmp_path):
    ann, images, _ = tiny
    mine = tmp_path / "instances.json"
    shutil.copy2(ann, mine)
    out = tmp_path / "out"
    assert boxmask("plan", *options(mine, images, out, plan=True)).returncode == 0
    coco = json.loads(mine.read_text())
    coco["annotations"][0]["bbox"][0] += 1  # one box edited after planning
    mine.write_text(json.dumps(coco))
    for args in (["convert", *options(mine, images, out)], ["work", str(out), "--no-progress"]):
        r = boxmask(*args)
        assert r.returncode == 1
        one_line_error(r.stderr, "changed after it was planned")
    assert not list(JobLayout(out).results_dir.glob("*"))  # nothing converted from stale shards
    again = boxmask("convert", *options(mine, images, out), "--force")
    assert again.returncode == 0, again.stderr


def test_an_image_that_kills_its_worker_is_skipped_alone_and_retried_on_request(tiny, tmp_path):
    """A worker dies (SIGKILL) whenever it loads one image, while the launcher and the other
    worker run on: the launcher sees each death, the worker after a death converts one image
    at a time so that the deaths pin that image, and after 3 of them that image alone is
    skipped; convert merges the rest and exits 3. ``--retry-failed`` then converts it."""
    ann, images, reference = tiny
    out = tmp_path / "out"
    assert boxmask("plan", *options(ann, images, out, plan=True)).returncode == 0
    layout = JobLayout(out)
    culprit = read_shard_items(layout.shard_file(1))[1].image_id  # not first in its shard
    env = H.child_env()
    env["PYTHONPATH"] = f"{FAULT_INJECT}{os.pathsep}{env['PYTHONPATH']}"
    cmd = H.convert_command(ann, images, out, workers=2)[4:]  # convert and its options
    crashing = boxmask(*cmd, env={**env, "BOXMASK_TEST_CRASH_IMAGE": culprit})
    assert crashing.returncode == 3, crashing.stderr
    errors = [json.loads(x) for x in (out / "errors.jsonl").read_text().splitlines()]
    assert [(e["image_id"], e["stage"]) for e in errors] == [(culprit, "worker")]
    status = json.loads(boxmask("status", str(out), "--json").stdout)
    assert status["deaths"]["observed"] >= 3 and status["items_skipped"] == 1
    assert len((out / "masks.jsonl").read_text().splitlines()) == 7  # every other box merged
    retried = boxmask(*cmd, "--retry-failed")
    assert retried.returncode == 0, retried.stderr
    assert H.check_output(out, reference) == []
