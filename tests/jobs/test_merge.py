"""Merge: idempotent, refuses unfinished jobs (or previews them), never trusts a damaged shard,
and cleans up only what dead processes left behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest

from boxmask.jobs.layout import JobLayout
from boxmask.jobs.merge import IncompleteJobError, merge, remove_dead_temps
from boxmask.jobs.plan import read_shard_items
from boxmask.jobs.worker import run_worker


@pytest.fixture(scope="module")
def settings(sample_settings):
    """``settings(**overrides)``: the sample in shards of 10 images."""
    return partial(sample_settings, shard_size=10)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, convert_once, settings) -> Path:
    return convert_once(tmp_path_factory.mktemp("baseline") / "out", settings())


def test_merging_again_rewrites_the_same_bytes(baseline, tmp_path, output_files, plan_into,
                                               settings):
    out = tmp_path / "out"
    plan_into(out, settings())
    run_worker(out, wait_for_others=False)
    first_manifest = merge(out)
    first = output_files(out)
    second_manifest = merge(out)
    assert output_files(out) == first == output_files(baseline)
    assert first_manifest["counts"] == second_manifest["counts"]
    assert first_manifest["files"] == second_manifest["files"]


def test_merge_refuses_an_unfinished_job_and_previews_it_on_request(baseline, tmp_path,
                                                                    output_files, plan_into,
                                                                    settings):
    out = tmp_path / "out"
    plan_into(out, settings())
    run_worker(out, wait_for_others=False, max_shards=2)
    with pytest.raises(IncompleteJobError, match=r"3 of 5 shards are not done \(first: \[2, 3, 4"):
        merge(out)
    preview = merge(out, allow_partial=True)
    assert not preview["complete"] and preview["shards"]["merged"] == 2
    # The preview covers exactly the images of shards 0 and 1 (the first 20, in plan order).
    layout = JobLayout(out)
    first_20 = {item.image_id for sid in (0, 1)
                for item in read_shard_items(layout.shard_file(sid))}
    whole = (baseline / "masks.jsonl").read_text().splitlines()
    expected = [x for x in whole if json.loads(x)["image_id"] in first_20]
    assert (out / "masks.jsonl").read_text().splitlines() == expected
    assert preview["counts"]["images"] == 20
    run_worker(out, wait_for_others=False)
    merge(out)
    assert output_files(out) == output_files(baseline)


def test_a_damaged_results_file_reopens_its_shard_for_the_damaged_line_only(
        baseline, tmp_path, output_files, plan_into, settings):
    out = tmp_path / "out"
    plan_into(out, settings())
    run_worker(out, wait_for_others=False)
    layout = JobLayout(out)
    marker = json.loads(layout.done_file(3).read_text())
    results = layout.results_dir / marker["results"]
    results.write_bytes(results.read_bytes().replace(b'"score": 1.0', b'"score": 0.5', 1))
    with pytest.raises(IncompleteJobError, match=r"\[3\]"):
        merge(out)
    assert not layout.done_file(3).exists()
    report = run_worker(out, wait_for_others=False)
    assert report.shards_done == [3] and report.images == 1  # the changed line alone
    merge(out)
    assert output_files(out) == output_files(baseline)


def test_verify_finds_a_damaged_mask_file_and_the_shard_is_redone(baseline, tmp_path, output_files,
                                                                  plan_into, settings):
    out = tmp_path / "out"
    plan_into(out, settings())
    run_worker(out, wait_for_others=False)
    merge(out)
    png = sorted((out / "pixel-imagenet").rglob("*.png"))[0]
    png.write_bytes(b"not a png")
    merge(out)  # without verification, per-image files are trusted
    with pytest.raises(IncompleteJobError):
        merge(out, verify_files=True)
    run_worker(out, wait_for_others=False)
    merge(out, verify_files=True)
    assert output_files(out) == output_files(baseline)


def test_merge_cleans_up_after_killed_processes_but_not_after_live_ones(baseline, tmp_path,
                                                                        output_files, plan_into,
                                                                        settings):
    out = tmp_path / "out"
    plan_into(out, settings())
    run_worker(out, wait_for_others=False)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead_pid = int(dead.stdout)
    folder = out / "pixel-imagenet" / "n01440764"
    left = folder / f".x.png.tmp-{dead_pid}-0123abcd"
    live = folder / f".y.png.tmp-{os.getpid()}-0123abcd"
    left.write_bytes(b"half")
    live.write_bytes(b"being written")
    stale_attempt = JobLayout(out).attempt_file(0, "0badf00d")
    stale_attempt.write_text("")
    merge(out)
    assert not left.exists() and not stale_attempt.exists()
    assert live.exists()
    assert remove_dead_temps(out) == 0
    live.unlink()
    assert output_files(out) == output_files(baseline)


def test_merge_of_a_directory_without_a_plan_says_so(tmp_path):
    from boxmask.jobs.protocol import NoPlanError

    with pytest.raises(NoPlanError):
        merge(tmp_path)
