"""Crash safety with real processes: workers killed with SIGKILL at random moments, stopped with
SIGTERM, frozen past their lease, or crashing again and again on the same shard. After resuming,
every image is converted exactly once and the outputs are byte-identical to an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from functools import partial
from pathlib import Path

import pytest

from boxmask.atomic import is_temp
from boxmask.jobs.deaths import local_process, record_observed_deaths, reset_failed
from boxmask.jobs.layout import JobLayout
from boxmask.jobs.lease import pid_alive, read_lease
from boxmask.jobs.merge import merge
from boxmask.jobs.plan import load_plan
from boxmask.jobs.protocol import read_shard_items, valid_prefix
from boxmask.jobs.status import job_status
from boxmask.jobs.worker import run_worker

TRIALS = 10

GRABCUT = {"engine": "grabcut", "limit": 8, "shard_size": 4}
FAULT_INJECT = Path(__file__).resolve().parents[1] / "fault_inject"


@pytest.fixture(scope="module")
def settings(sample_settings):
    """``settings(**overrides)``: the sample in shards of 2 images."""
    return partial(sample_settings, shard_size=2)


@pytest.fixture(scope="module")
def convert_grabcut(ilsvrc_sample, job_formats) -> list[str]:
    """``convert`` arguments of the ``GRABCUT`` settings (``--output`` to be added)."""
    return ["-q", "convert", "--source", "ilsvrc-loc", "--input", str(ilsvrc_sample), "--engine",
            "grabcut", "--limit", "8", "--shard-size", "4", "--no-progress",
            *(f"--format={f}" for f in job_formats)]


def wait_for(condition, timeout: float = 60.0, poll: float = 0.005) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(poll)


def lines_done(out: Path) -> int:
    layout = JobLayout(out)
    return sum(valid_prefix(p)[0] for p in layout.results_dir.glob("*.jsonl"))


@pytest.fixture
def assert_converted_exactly_once(output_files):
    """``assert_converted_exactly_once(out, baseline)``: each planned item has exactly one
    result line, in order; the outputs equal the baseline byte for byte; the manifest counts
    agree; no temporary file is left anywhere."""
    def check(out: Path, baseline: Path) -> None:
        layout = JobLayout(out)
        plan = load_plan(out)
        for shard in plan["shards"]:
            marker = json.loads(layout.done_file(shard["id"]).read_text())
            lines = (layout.results_dir / marker["results"]).read_text().splitlines()
            items = read_shard_items(layout.shard_file(shard["id"]))
            assert [json.loads(x)["record"]["image_id"] for x in lines] == \
                [i.image_id for i in items], f"shard {shard['id']}"
        sidecar = [json.loads(x) for x in (out / "masks.jsonl").read_text().splitlines()]
        keys = [(m["image_id"], m["box_id"]) for m in sidecar]
        assert len(keys) == len(set(keys)) == plan["totals"]["boxes"]  # no duplicates, no holes
        assert output_files(out) == output_files(baseline)
        ours = json.loads((out / "manifest.json").read_text())
        theirs = json.loads((baseline / "manifest.json").read_text())
        assert ours["counts"] == theirs["counts"]
        assert ours["complete"] and ours["shards"]["failed"] == []
        assert ours["counts"]["errors_by_stage"].get("worker", 0) == 0
        assert not [p for p in out.rglob("*") if is_temp(p)]
        assert sorted(p.name for p in layout.results_dir.iterdir()) == sorted(
            json.loads(layout.done_file(s["id"]).read_text())["results"] for s in plan["shards"])
    return check


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, convert_once, settings) -> Path:
    return convert_once(tmp_path_factory.mktemp("baseline") / "out", settings())


@pytest.fixture(scope="module")
def grabcut_baseline(tmp_path_factory, convert_once, settings) -> Path:
    return convert_once(tmp_path_factory.mktemp("grabcut") / "out", settings(**GRABCUT))


def shards_done(out: Path) -> int:
    return len(list(JobLayout(out).done_dir.glob("*.json")))


def test_workers_killed_at_random_moments_resume_to_identical_outputs(baseline, tmp_path,
                                                                      assert_converted_exactly_once,
                                                                      plan_into, settings,
                                                                      start_worker):
    """Kill moments are drawn over the whole run in units of progress (a random number of
    finished shards, then a random delay shorter than a shard takes), so that they land
    anywhere in the work whatever the speed of the machine: while claiming, converting,
    writing per-image files, appending results, marking done, releasing."""
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    stats = {"kills": 0, "takeovers": 0, "torn_results": 0, "temp_files": 0}
    for trial in range(TRIALS):
        out = tmp_path / f"trial{trial}"
        total = len(plan_into(out, settings())["shards"])
        alive: list[subprocess.Popen] = []
        for _round in range(2):
            alive += [start_worker(out, "--lease-timeout", "30") for _ in range(3)]
            target = rng.randint(min(shards_done(out), total - 1), total - 1)
            wait_for(lambda out=out, target=target, procs=alive:
                     shards_done(out) >= target or all(p.poll() is not None for p in procs))
            time.sleep(rng.uniform(0.0, 0.05))
            alive = [p for p in alive if p.poll() is None]
            victims = rng.sample(alive, min(len(alive), rng.randint(2, 3)))
            for p in victims:
                p.kill()
                p.wait()
            stats["kills"] += len(victims)
            alive = [p for p in alive if p not in victims]
        layout = JobLayout(out)
        for p in layout.results_dir.glob("*.jsonl"):
            stats["torn_results"] += p.stat().st_size > valid_prefix(p)[1]
        stats["temp_files"] += sum(1 for p in out.rglob("*") if is_temp(p))
        for p in alive:  # survivors finish the job, taking over the dead workers' shards
            assert p.wait(timeout=120) == 0, p.stderr.read()
        run_worker(out, wait_for_others=False)  # and whatever no survivor was left for
        stats["takeovers"] += sum(1 for _ in layout.failures_dir.iterdir())
        merge(out)
        try:
            assert_converted_exactly_once(out, baseline)
        except AssertionError as e:
            raise AssertionError(f"trial {trial} (seed {seed}, stats {stats}): {e}") from e
    print(f"kill trials: seed {seed}, {stats}")
    assert stats["kills"] >= TRIALS * 2
    assert stats["takeovers"] >= 3, stats  # kills hit workers in the middle of shards


def test_sigterm_stops_convert_cleanly_and_running_it_again_completes(grabcut_baseline, tmp_path,
                                                                      assert_converted_exactly_once,
                                                                      ilsvrc_sample, job_formats,
                                                                      run_boxmask, start_boxmask):
    out = tmp_path / "out"
    args = ["-q", "convert", "--source", "ilsvrc-loc", "--input", str(ilsvrc_sample), "--engine",
            "grabcut", "--limit", "8", "--shard-size", "4", "--no-progress", "--output",
            str(out), *(f"--format={f}" for f in job_formats)]
    p = start_boxmask(*args)
    wait_for(lambda: (out / "state" / "results").is_dir() and lines_done(out) >= 1)
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=60) == 4, p.stderr.read()
    layout = JobLayout(out)
    assert not list(layout.leases_dir.glob("*.lease"))  # released
    assert not (out / "manifest.json").exists()
    st = job_status(out)
    assert 1 <= st["items"]["done"] < 8 and not st["complete"]
    again = run_boxmask(*args, timeout=120)
    assert again.returncode == 0, again.stderr
    assert_converted_exactly_once(out, grabcut_baseline)


def test_sigusr1_stops_a_worker_with_exit_code_4_and_releases_its_lease(
        grabcut_baseline, tmp_path, assert_converted_exactly_once, plan_into, settings,
        start_worker):
    out = tmp_path / "out"
    plan_into(out, settings(**GRABCUT))
    p = start_worker(out)
    wait_for(lambda: lines_done(out) >= 1)
    p.send_signal(signal.SIGUSR1)
    assert p.wait(timeout=60) == 4, p.stderr.read()
    assert not list(JobLayout(out).leases_dir.glob("*.lease"))
    done_before = lines_done(out)
    assert done_before < 8
    report = run_worker(out, wait_for_others=False)
    assert report.images == 8 - done_before  # nothing converted twice
    merge(out)
    assert_converted_exactly_once(out, grabcut_baseline)


def test_a_worker_whose_lease_was_stolen_while_frozen_corrupts_nothing(
        grabcut_baseline, tmp_path, assert_converted_exactly_once, plan_into, settings,
        start_worker):
    out = tmp_path / "out"
    plan_into(out, settings(**{**GRABCUT, "shard_size": 8}))  # one shard: frozen early in it
    layout = JobLayout(out)
    frozen = start_worker(out, "--lease-timeout", "1.5", "--worker-id", "frozen")
    wait_for(lambda: lines_done(out) >= 1)
    frozen.send_signal(signal.SIGSTOP)
    try:
        thief = start_worker(out, "--lease-timeout", "1.5", "--worker-id", "thief")
        # The thief takes the frozen worker's shard over once its heartbeat is 1.5 s old...
        wait_for(lambda: any(json.loads(p.read_text())["worker"] == "frozen"
                             for p in layout.failures_dir.glob("*.json")), timeout=60)
    finally:
        frozen.send_signal(signal.SIGCONT)  # ...and both now run side by side on it.
    assert thief.wait(timeout=120) == 0, thief.stderr.read()
    assert frozen.wait(timeout=120) == 0
    frozen_report = json.loads(frozen.stderr.read().strip().splitlines()[-1])
    assert frozen_report["shards_lost"], frozen_report  # it noticed, and left the shard
    assert json.loads(layout.done_file(0).read_text())["worker"] == "thief"
    merge(out)
    assert_converted_exactly_once(out, grabcut_baseline)


@pytest.fixture
def kill_three_workers_on_shard_0(start_worker):
    """``kill_three_workers_on_shard_0(out, observed)``: three workers in a row are SIGKILLed as
    soon as they hold shard 0 (before any progress); with ``observed`` each death is recorded as
    a launcher that saw it records it. Returns the ids of shard 0's items."""
    def kill(out: Path, observed: bool) -> list[str]:
        layout = JobLayout(out)

        def holds_shard_0(p: subprocess.Popen) -> bool:
            info, _ = read_lease(layout.lease_file(0))
            return info is not None and info.pid == p.pid

        for _ in range(3):
            p = start_worker(out, "--max-shards", "1")
            wait_for(lambda p=p: holds_shard_0(p))
            p.kill()
            p.wait()
            if observed:
                assert record_observed_deaths(out, local_process(p.pid), "test", "killed") != []
        return [i.image_id for i in read_shard_items(layout.shard_file(0))]
    return kill


def test_an_image_its_workers_were_seen_dying_on_3_times_is_skipped_and_the_rest_merged(
        grabcut_baseline, tmp_path, assert_converted_exactly_once, kill_three_workers_on_shard_0,
        plan_into, settings):
    out = tmp_path / "out"
    plan_into(out, settings(**GRABCUT))
    ids = kill_three_workers_on_shard_0(out, observed=True)
    report = run_worker(out, wait_for_others=False)
    assert report.items_skipped == [ids[0]] and report.shards_done == [0, 1]
    st = job_status(out)
    assert st["complete"] and st["items_skipped"] == 1
    assert st["deaths"] == {"observed": 3, "taken_over": 0}
    assert [(f["shard"], f["item"], f["image_id"]) for f in st["skipped"]] == [(0, 0, ids[0])]
    manifest = merge(out)  # everything else is merged; the skipped image is an error
    assert manifest["complete"] and manifest["counts"]["errors_by_stage"] == {"worker": 1}
    errors = [json.loads(x) for x in (out / "errors.jsonl").read_text().splitlines()]
    assert [(e["image_id"], e["stage"]) for e in errors] == [(ids[0], "worker")]
    # --retry-failed converts the skipped image alone; the shard's other results are kept.
    assert reset_failed(out) == [0]
    assert run_worker(out, wait_for_others=False).images == 1
    merge(out)
    assert not list((out / "state" / "results").glob("*.retry"))  # cleaned up by the merge
    assert_converted_exactly_once(out, grabcut_baseline)


def test_workers_killed_without_anyone_seeing_it_do_not_count_against_the_image(
        grabcut_baseline, tmp_path, assert_converted_exactly_once, kill_three_workers_on_shard_0,
        plan_into, settings):
    """Deaths found only as stale leases (the whole job killed, cancelled, out of time) are not
    the image's fault: three of them at the same image skip nothing."""
    out = tmp_path / "out"
    plan_into(out, settings(**GRABCUT))
    kill_three_workers_on_shard_0(out, observed=False)
    report = run_worker(out, wait_for_others=False)
    assert report.items_skipped == [] and sorted(report.shards_done) == [0, 1]
    assert job_status(out)["deaths"]["taken_over"] == 3
    merge(out)
    assert_converted_exactly_once(out, grabcut_baseline)


def test_a_convert_killed_whole_3_times_on_one_image_resumes_to_the_full_output(
        grabcut_baseline, tmp_path, assert_converted_exactly_once, convert_grabcut, plan_into,
        repo_root, run_boxmask, settings, start_boxmask):
    """The process group of a 2-worker convert is SIGKILLed three times while a worker is on
    the same image; a plain re-run then completes with exit 0 and the uninterrupted output."""
    out = tmp_path / "out"
    plan_into(out, settings(**GRABCUT))
    layout = JobLayout(out)
    slow = read_shard_items(layout.shard_file(0))[1].image_id
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(FAULT_INJECT), str(repo_root)]),
           "BOXMASK_TEST_SLOW_IMAGE": f"{slow}:120"}

    killed: set[str] = set()  # lease tokens of killed runs: a killed worker not yet reaped
    # still looks alive, and its lease must not be mistaken for the next run's

    def on_the_slow_image() -> bool:
        info, _ = read_lease(layout.lease_file(0))
        return (info is not None and info.token not in killed
                and valid_prefix(layout.attempt_file(0, info.token))[0] == 1
                and pid_alive(info.pid))

    for _ in range(3):
        p = start_boxmask(*convert_grabcut, "--workers", "2", "--output", str(out), env=env,
                          start_new_session=True)
        wait_for(on_the_slow_image, timeout=120, poll=0.05)
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        info, _ = read_lease(layout.lease_file(0))
        assert info is not None
        killed.add(info.token)
    again = run_boxmask(*convert_grabcut, "--workers", "2", "--output", str(out), timeout=300)
    assert again.returncode == 0, again.stderr
    deaths = job_status(out)["deaths"]
    assert deaths["observed"] == 0 and deaths["taken_over"] >= 3, deaths
    assert_converted_exactly_once(out, grabcut_baseline)


def test_a_killed_local_worker_is_replaced_and_the_conversion_completes(
        grabcut_baseline, tmp_path, assert_converted_exactly_once, plan_into, settings):
    from boxmask.jobs.local import run_local_workers

    out = tmp_path / "out"
    plan_into(out, settings(**GRABCUT))
    layout = JobLayout(out)

    killed: list[int] = []

    def kill_a_busy_worker(signum, frame) -> None:
        """Once both workers hold a shard, SIGKILL one of them (checked every 50 ms)."""
        holders = [read_lease(p)[0] for p in layout.leases_dir.glob("*.lease")]
        holders = [h for h in holders if h is not None]
        if len(holders) < 2:
            signal.setitimer(signal.ITIMER_REAL, 0.05)
            return
        os.kill(holders[0].pid, signal.SIGKILL)
        killed.append(holders[0].pid)

    previous = signal.signal(signal.SIGALRM, kill_a_busy_worker)
    signal.setitimer(signal.ITIMER_REAL, 0.05)
    try:
        codes = run_local_workers(out, 2, progress=False, poll_s=0.2)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert len(killed) == 1
    assert codes == [0, 0]  # the killed worker was replaced, and the replacement finished
    merge(out)
    assert_converted_exactly_once(out, grabcut_baseline)
