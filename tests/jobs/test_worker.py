"""The worker and its leases: per-image resume, torn lines, exclusive leases and done markers,
takeover of dead or silent workers, and fatal write errors that must not lose or fake work."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import pytest

from boxmask.jobs.layout import JobLayout
from boxmask.jobs.lease import Heartbeat, LeaseInfo, read_lease, try_acquire
from boxmask.jobs.merge import merge
from boxmask.jobs.protocol import valid_prefix
from boxmask.jobs.results import LINE_CHECK_KEY, encode_line, line_verifies, salvage_lines
from boxmask.jobs.worker import Worker, WorkerReport, run_worker


@pytest.fixture(scope="module")
def settings(sample_settings):
    """``settings(**overrides)``: the sample in shards of 50 images."""
    return partial(sample_settings, shard_size=50)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, convert_once, settings) -> Path:
    """An uninterrupted single-process conversion: one shard of 50 images."""
    return convert_once(tmp_path_factory.mktemp("baseline") / "out", settings())


def only_results_file(out: Path, shard: int = 0) -> Path:
    files = JobLayout(out).attempt_files(shard)
    assert len(files) == 1, files
    return files[0]


def unchecked_lines(path: Path) -> list[dict]:
    """A results file's lines without their checksums (which depend on the job's plan id)."""
    lines = [json.loads(line) for line in path.read_bytes().splitlines()]
    assert all(LINE_CHECK_KEY in line for line in lines)
    return [{k: v for k, v in line.items() if k != LINE_CHECK_KEY} for line in lines]


def copy_prefix(baseline: Path, out: Path, n: int, tail: bytes = b"") -> list[str]:
    """Give ``out`` an earlier attempt that converted the first ``n`` images of shard 0 (its
    results lines and per-image files, copied from the baseline) and died writing ``tail``."""
    plan_id = json.loads((out / "plan.json").read_text())["plan_id"]
    lines = [encode_line({k: v for k, v in json.loads(line).items() if k != LINE_CHECK_KEY},
                         plan_id)  # the same results, checksummed for this job's plan
             for line in only_results_file(baseline).read_bytes().splitlines()[:n]]
    files = [f for line in lines for f in json.loads(line)["files"]]
    for rel in files:
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(baseline / rel, out / rel)
    attempt = JobLayout(out).attempt_file(0, "deadbeef")
    attempt.parent.mkdir(parents=True, exist_ok=True)
    attempt.write_bytes(b"".join(lines) + tail)
    return files


def test_a_resumed_shard_converts_only_the_images_not_yet_recorded(baseline, tmp_path, output_files,
                                                                   plan_into, settings):
    out = tmp_path / "out"
    plan_into(out, settings())
    copied = copy_prefix(baseline, out, 20, tail=b'{"record": {"image_id": "n01')
    inodes = {rel: (out / rel).stat().st_ino for rel in copied}
    report = run_worker(out, wait_for_others=False)
    assert report.images == 30
    assert report.shards_done == [0]
    # The images converted before were not written again (same files, not replaced).
    assert {rel: (out / rel).stat().st_ino for rel in copied} == inodes
    merge(out)
    assert output_files(out) == output_files(baseline)
    assert unchecked_lines(only_results_file(out)) == unchecked_lines(only_results_file(baseline))


def test_a_recorded_image_whose_output_file_is_missing_is_converted_again(
        baseline, tmp_path, output_files, plan_into, settings):
    out = tmp_path / "out"
    plan_into(out, settings())
    copied = copy_prefix(baseline, out, 20)
    lines = only_results_file(baseline).read_bytes().splitlines()
    lost = json.loads(lines[12])["files"][0]
    (out / lost).unlink()
    report = run_worker(out, wait_for_others=False)
    assert report.images == 50 - 12
    assert lost in copied
    merge(out)
    assert output_files(out) == output_files(baseline)


def test_the_valid_prefix_ends_at_a_torn_line_garbage_or_a_line_for_another_image(tmp_path):
    good = [json.dumps({"record": {"image_id": f"img{i}"}}).encode() + b"\n" for i in range(4)]
    path = tmp_path / "r.jsonl"
    expected = [f"img{i}" for i in range(4)]
    path.write_bytes(b"".join(good))
    assert valid_prefix(path, expected) == (4, sum(map(len, good)))
    path.write_bytes(b"".join(good[:2]) + good[2][:-5])  # killed mid-line
    assert valid_prefix(path, expected)[0] == 2
    path.write_bytes(b"".join(good[:2]) + b"\0" * 4096 + b"\n" + good[3])  # zeros after a crash
    assert valid_prefix(path, expected)[0] == 2
    path.write_bytes(good[0] + good[2])  # a line for the wrong image
    assert valid_prefix(path, expected)[0] == 1
    assert valid_prefix(tmp_path / "missing.jsonl", expected) == (0, 0)


def test_a_results_line_carries_a_checksum_over_its_bytes_and_its_plan():
    line = encode_line({"record": {"image_id": "img0", "boxes": []}, "masks": [0.5]}, "plan-a")
    assert json.loads(line)["record"]["image_id"] == "img0"
    assert line_verifies(line, "plan-a")
    assert not line_verifies(line, "plan-b")  # the same line under another plan
    flipped = line.replace(b"0.5", b"0.6")  # still valid JSON, wrong content
    assert json.loads(flipped)["masks"] == [0.6] and not line_verifies(flipped, "plan-a")
    assert not line_verifies(line[:-2] + b"\n", "plan-a")
    assert not line_verifies(json.dumps({"record": {}}).encode() + b"\n", "plan-a")


def test_the_valid_prefix_ends_at_a_line_whose_checksum_fails(tmp_path):
    lines = [encode_line({"record": {"image_id": f"img{i}"}, "n": i}, "p") for i in range(4)]
    path = tmp_path / "r.jsonl"
    path.write_bytes(b"".join(lines[:2]) + lines[2].replace(b'"n": 2', b'"n": 7') + lines[3])
    expected = [f"img{i}" for i in range(4)]
    assert valid_prefix(path, expected, plan_id="p")[0] == 2
    assert valid_prefix(path, expected)[0] == 4  # without the plan id, checksums are not read


def test_salvage_keeps_every_line_that_verifies_at_its_own_position(tmp_path):
    lines = [encode_line({"record": {"image_id": f"img{i}"}, "files": []}, "p") for i in range(6)]
    expected = [f"img{i}" for i in range(6)]
    damaged = tmp_path / "0.a.jsonl.damaged"
    # line 1 garbled, the newline between lines 3 and 4 lost (both gone), line 5 torn
    damaged.write_bytes(lines[0] + b"\x00garbage\n" + lines[2] + lines[3][:-1] + lines[4]
                        + lines[5][:-9])
    assert salvage_lines([damaged], expected, tmp_path, "p") == {0: lines[0], 2: lines[2]}
    other = tmp_path / "0.b.jsonl.damaged"
    other.write_bytes(lines[4] + encode_line({"record": {"image_id": "img5"}}, "q"))
    found = salvage_lines([damaged, other], expected, tmp_path, "p")
    assert found == {0: lines[0], 2: lines[2], 4: lines[4]}  # img5 of plan q is not trusted


# -- leases -----------------------------------------------------------------------------------

def test_a_lease_has_one_holder(tmp_path):
    path = tmp_path / "x.lease"
    first = try_acquire(path, "a", timeout_s=60)
    assert first is not None
    assert try_acquire(path, "b", timeout_s=60) is None
    first.release()
    assert not path.exists()
    assert try_acquire(path, "b", timeout_s=60) is not None


def test_a_lease_whose_heartbeat_stopped_is_taken_over(tmp_path):
    path = tmp_path / "x.lease"
    old = try_acquire(path, "a", timeout_s=5)
    assert try_acquire(path, "b", timeout_s=5) is None
    os.utime(path, (time.time() - 10, time.time() - 10))
    new = try_acquire(path, "b", timeout_s=5)
    assert new is not None and new.replaced.token == old.token
    assert "no heartbeat" in new.replaced_reason
    # The old holder notices, and its release leaves the new lease in place.
    assert not old.still_held()
    old.release()
    assert new.still_held()


def test_a_lease_of_a_process_that_ended_is_taken_over_at_once(tmp_path,
                                                               lease_taken_by_an_ended_process):
    path = tmp_path / "x.lease"
    lease_taken_by_an_ended_process(path, "dead")
    info, _ = read_lease(path)
    assert info.worker_id == "dead"
    new = try_acquire(path, "b", timeout_s=600)
    assert new is not None and "ended without releasing" in new.replaced_reason


def test_a_live_but_silent_holder_keeps_its_lease_until_the_timeout(tmp_path, repo_root):
    path = tmp_path / "x.lease"
    code = ("import sys, time; from pathlib import Path; from boxmask.jobs.lease import "
            "try_acquire; assert try_acquire(Path(sys.argv[1]), 'alive', 600); print('ok', "
            "flush=True); time.sleep(60)")
    p = subprocess.Popen([sys.executable, "-c", code, str(path)], cwd=repo_root,
                         stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "ok"
        assert try_acquire(path, "b", timeout_s=600) is None
        time.sleep(0.1)
        assert try_acquire(path, "b", timeout_s=0.05) is not None  # past its timeout
    finally:
        p.kill()
        p.wait()


def test_the_heartbeat_keeps_a_lease_fresh_and_notices_a_takeover(tmp_path):
    path = tmp_path / "x.lease"
    lease = try_acquire(path, "a", timeout_s=0.5)
    with Heartbeat(lease, 0.05):
        time.sleep(0.6)
        assert try_acquire(path, "b", timeout_s=0.5) is None  # renewed: not stale
        os.utime(path, (time.time() - 5, time.time() - 5))
        thief = try_acquire(path, "b", timeout_s=0.5)
        assert thief is not None
        assert lease.lost.wait(2)
    assert thief.still_held()


def test_an_unreadable_lease_file_is_not_taken_over_while_fresh(tmp_path):
    path = tmp_path / "x.lease"
    path.write_text("{")
    assert try_acquire(path, "b", timeout_s=600) is None
    os.utime(path, (time.time() - 20, time.time() - 20))
    assert try_acquire(path, "b", timeout_s=600) is not None


# -- done markers -----------------------------------------------------------------------------

def test_a_shard_is_marked_done_once_and_a_late_attempt_is_discarded(baseline, tmp_path,
                                                                     output_files, plan_into,
                                                                     settings):
    out = tmp_path / "out"
    plan_into(out, settings())
    assert run_worker(out, wait_for_others=False).shards_done == [0]
    layout = JobLayout(out)
    marker = layout.done_file(0).read_bytes()
    # A second attempt (a worker that believed it held the lease) finishes the same shard.
    late = Worker(out)
    lease = try_acquire(layout.lease_file(0), "late", 60)
    assert late.process_shard(0, lease, WorkerReport("late")) is False
    lease.release()
    assert layout.done_file(0).read_bytes() == marker
    assert [p.name for p in layout.attempt_files(0)] == [json.loads(marker)["results"]]
    merge(out)
    assert output_files(out) == output_files(baseline)


def test_the_done_marker_counts_and_checksums_the_outputs(baseline):
    layout = JobLayout(baseline)
    marker = json.loads(layout.done_file(0).read_text())
    lines = [json.loads(x) for x in only_results_file(baseline).read_text().splitlines()]
    assert marker["items"] == len(lines) == 50
    assert marker["boxes"] == sum(len(x["record"]["boxes"]) for x in lines) == 82
    assert marker["masks"] == 82
    assert marker["files"] == sum(len(x["files"]) for x in lines) == 50 + 82
    assert marker["plan_id"] == json.loads(layout.plan.read_text())["plan_id"]


# -- fatal errors -----------------------------------------------------------------------------

def _limit_file_size(limit: int):
    def preexec() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return preexec


def test_a_write_error_keeps_the_results_so_far_and_marks_nothing_done(baseline, tmp_path,
                                                                       output_files, plan_into,
                                                                       run_boxmask, settings):
    out = tmp_path / "out"
    plan_into(out, settings())
    layout = JobLayout(out)
    # Files may not grow past 24 kB: the results file hits the limit part-way through the shard.
    p = run_boxmask("work", str(out), "--no-progress", "--no-wait", timeout=120,
                    preexec_fn=_limit_file_size(24_000))
    assert p.returncode == 1, p.stderr
    assert "File too large" in p.stderr
    assert not layout.done_file(0).exists()
    assert not layout.lease_file(0).exists()
    assert not list(layout.failures_dir.iterdir())  # the environment failed, not the shard
    partial = only_results_file(out)
    kept, kept_bytes = valid_prefix(partial)
    assert 0 < kept < 50
    assert partial.stat().st_size == 24_000 > kept_bytes  # the last line was torn
    # Resuming without the limit converts the rest only, and the result is the same.
    report = run_worker(out, wait_for_others=False)
    assert report.images == 50 - kept
    merge(out)
    assert output_files(out) == output_files(baseline)


def test_a_worker_given_no_plan_explains_what_to_do(tmp_path):
    from boxmask.jobs.protocol import NoPlanError

    with pytest.raises(NoPlanError, match="boxmask plan"):
        Worker(tmp_path)


def test_lease_info_names_its_process():
    info = LeaseInfo.mine("w")
    assert info.pid == os.getpid() and info.worker_id == "w" and len(info.token) == 8
