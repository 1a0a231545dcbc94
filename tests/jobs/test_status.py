"""Status: what a user sees while a job runs, crashed, or had workers die on its images."""

from __future__ import annotations

import json
import time

import pytest

from boxmask.jobs.layout import JobLayout
from boxmask.jobs.lease import try_acquire
from boxmask.jobs.merge import merge
from boxmask.jobs.plan import Settings, read_shard_items
from boxmask.jobs.protocol import record_failure
from boxmask.jobs.status import busy_seconds, job_status
from boxmask.jobs.worker import run_worker


@pytest.fixture(scope="module")
def settings(sample_settings):
    """``settings()``: the sample into Pixel-ImageNet only, in 5 shards of 10 images."""
    def make() -> Settings:
        return sample_settings(shard_size=10, formats=["pixel-imagenet"])
    return make


def test_a_fresh_plan_is_all_pending(tmp_path, plan_into, settings):
    plan_into(tmp_path, settings())
    st = job_status(tmp_path)
    assert st["shards"] == {"total": 5, "done": 0, "leased": 0, "stale": 0, "pending": 5}
    assert st["items"] == {"total": 50, "done": 0, "remaining": 50}
    assert st["boxes"]["total"] == 82
    assert st["rate_items_per_s"] is None and st["eta_s"] is None
    assert not st["complete"]


def test_status_of_a_running_crashed_and_failing_job(tmp_path, lease_taken_by_an_ended_process,
                                                     plan_into, settings):
    plan_into(tmp_path, settings())
    layout = JobLayout(tmp_path)
    run_worker(tmp_path, wait_for_others=False, max_shards=2)
    # Shard 2: a live worker (this process) holds it.
    held = try_acquire(layout.lease_file(2), "me", 600)
    # Shard 3: its worker process ended without releasing the lease.
    lease_taken_by_an_ended_process(layout.lease_file(3), "crashed")
    # Shard 4: three deaths at item 0, one of them seen by a launcher.
    for token in ("a1", "a2", "a3"):
        record_failure(layout, 4, token, "w", "worker process 1 ended", 0)
    record_failure(layout, 4, "a3", "w", "killed by SIGSEGV", 0, observed_by="launcher")
    st = job_status(tmp_path)
    assert st["shards"] == {"total": 5, "done": 2, "leased": 1, "stale": 1, "pending": 1}
    assert st["items"]["done"] == 20
    assert st["images"]["done_in_done_shards"] == 20
    assert st["boxes"]["done_in_done_shards"] == sum(
        json.loads(layout.done_file(s).read_text())["boxes"] for s in (0, 1))
    leases = {lease["shard"]: lease for lease in st["leases"]}
    assert leases[2]["worker"] == "me" and not leases[2]["stale"]
    assert leases[3]["stale"] and "ended without releasing" in leases[3]["stale_reason"]
    assert st["failed_attempts"] == 3
    assert st["deaths"] == {"observed": 1, "taken_over": 2}
    assert st["items_skipped"] == 0 and st["skipped"] == []
    assert st["rate_items_per_s"] > 0
    assert st["eta_s"] == round(30 / st["rate_items_per_s"], 1)
    held.release()


def test_shards_an_earlier_version_marked_failed_are_pending_again(tmp_path, plan_into, settings):
    from boxmask.jobs.deaths import reopen_legacy_failed

    plan_into(tmp_path, settings())
    layout = JobLayout(tmp_path)
    layout.make_dirs()
    for shard in (0, 1):
        record_failure(layout, shard, f"t{shard}", "w", f"worker of shard {shard} ended", 0)
        layout.failed_file(shard).write_text(json.dumps({"shard": shard, "items_done": 0}))
    assert reopen_legacy_failed(tmp_path) == [0, 1]
    st = job_status(tmp_path)
    assert st["shards"] == {"total": 5, "done": 0, "leased": 0, "stale": 0, "pending": 5}
    assert st["deaths"] == {"observed": 0, "taken_over": 2}


def test_partial_results_count_as_done_items(tmp_path, plan_into, settings):
    plan_into(tmp_path, settings())
    layout = JobLayout(tmp_path)
    run_worker(tmp_path, wait_for_others=False, max_shards=1)
    lines = (layout.results_dir / json.loads(layout.done_file(0).read_text())["results"]
             ).read_bytes().splitlines(keepends=True)
    # Another worker, now gone, had recorded 4 results of shard 1's items and torn a fifth.
    shard1 = [item.image_id for item in read_shard_items(layout.shard_file(1))]
    fake = [json.dumps({"record": {"image_id": i}, "masks": []}).encode() + b"\n"
            for i in shard1[:4]]
    attempt = layout.attempt_file(1, "cafe0001")
    attempt.parent.mkdir(parents=True, exist_ok=True)
    attempt.write_bytes(b"".join(fake) + lines[0][:30])
    st = job_status(tmp_path)
    assert st["items"]["done"] == 10 + 4


def test_a_complete_merged_job(tmp_path, plan_into, settings):
    plan_into(tmp_path, settings())
    run_worker(tmp_path, wait_for_others=False)
    merge(tmp_path)
    st = job_status(tmp_path)
    assert st["complete"] and st["merged"] and st["eta_s"] == 0
    assert st["masks_in_done_shards"] == 82 and st["errors_in_done_shards"] == 0


def test_the_status_command_shows_the_job(tmp_path, plan_into, run_boxmask, settings):
    plan_into(tmp_path, settings())
    run_worker(tmp_path, wait_for_others=False, max_shards=1)
    p = run_boxmask("status", str(tmp_path), "--json", check=True)
    assert json.loads(p.stdout)["shards"]["done"] == 1


def test_busy_time_is_the_union_of_working_intervals():
    now = time.time()
    assert busy_seconds([]) == 0
    assert busy_seconds([(now, now + 10), (now + 5, now + 12)]) == 12
    assert busy_seconds([(now, now + 1), (now + 100, now + 102)]) == 3  # pauses do not count
    assert busy_seconds([(now, now + 10), (now + 2, now + 3)]) == 10
