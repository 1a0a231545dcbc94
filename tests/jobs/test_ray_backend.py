"""The Ray backend: Ray actors run the same workers and shard protocol on a (local) Ray cluster,
and the merged result equals a single-process run."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from functools import partial

import pytest

from boxmask.jobs.layout import JobLayout

ray = pytest.importorskip("ray", reason="the Ray backend is optional: pip install 'boxmask[ray]'")

from boxmask.jobs.ray_backend import submit_ray  # noqa: E402


@pytest.fixture(scope="module")
def settings(sample_settings):
    """``settings(**overrides)``: the sample in shards of 5 images."""
    return partial(sample_settings, shard_size=5)


@pytest.fixture(scope="module")
def local_ray(repo_root):
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(repo_root)}})
    yield ray
    ray.shutdown()


def test_ray_workers_convert_the_job_like_a_single_process(local_ray, tmp_path, convert_once,
                                                           output_files, plan_into, settings):
    single = convert_once(tmp_path / "single", settings())
    out = tmp_path / "ray"
    plan_into(out, settings())
    result = submit_ray(out, 2, poll_s=0.2)
    reports = result["reports"]
    assert [r["exit_code"] for r in reports] == [0, 0], reports
    assert sum(r["images"] for r in reports) == 50  # every image converted once
    assert sorted(s for r in reports for s in r["shards_done"]) == list(range(10))
    assert result["status"]["complete"]
    assert result["manifest"]["complete"]
    assert output_files(out) == output_files(single)
    assert result["manifest"]["counts"] == json.loads((single / "manifest.json").read_text())[
        "counts"]
    workers = {json.loads(p.read_text())["worker"] for p in JobLayout(out).done_dir.iterdir()}
    assert all(w.startswith("ray-") for w in workers)


def test_sigterm_stops_the_ray_workers_and_a_second_run_finishes_the_job(
        local_ray, tmp_path, convert_once, output_files, plan_into, settings):
    grabcut = {"engine": "grabcut", "limit": 8, "shard_size": 2}
    single = convert_once(tmp_path / "single", settings(**grabcut))
    out = tmp_path / "ray"
    plan_into(out, settings(**grabcut))
    layout = JobLayout(out)

    def terminate_once_working() -> None:
        deadline = time.monotonic() + 60
        while not list(layout.results_dir.glob("*.jsonl")) and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=terminate_once_working, daemon=True).start()
    first = submit_ray(out, 2, poll_s=0.1)
    assert [r["exit_code"] for r in first["reports"]] == [4, 4], first["reports"]
    assert not first["status"]["complete"] and first["manifest"] is None
    assert not list(layout.leases_dir.glob("*.lease"))
    second = submit_ray(out, 2, poll_s=0.1)
    assert second["manifest"]["complete"]
    images = sum(r["images"] for r in first["reports"] + second["reports"])
    assert images == 8  # nothing converted twice
    assert output_files(out) == output_files(single)


def test_a_killed_ray_worker_process_is_replaced_and_its_death_observed(local_ray, tmp_path,
                                                                        convert_once, output_files,
                                                                        plan_into, settings):
    """SIGKILL of one actor's process while it holds a shard: the driver sees the actor die,
    records the death as observed (it counts against that image, once), starts a replacement,
    and the job completes with the output of a single process."""
    grabcut = {"engine": "grabcut", "limit": 8, "shard_size": 2}
    single = convert_once(tmp_path / "single", settings(**grabcut))
    out = tmp_path / "ray"
    plan_into(out, settings(**grabcut))
    layout = JobLayout(out)
    killed: list[int] = []

    def kill_a_lease_holder() -> None:
        from boxmask.jobs.lease import read_lease

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for path in layout.leases_dir.glob("*.lease"):
                info, _ = read_lease(path)
                if info is not None and info.worker_id.startswith("ray-"):
                    os.kill(info.pid, signal.SIGKILL)
                    killed.append(info.pid)
                    return
            time.sleep(0.01)

    threading.Thread(target=kill_a_lease_holder, daemon=True).start()
    result = submit_ray(out, 2, poll_s=0.1)
    assert len(killed) == 1
    assert result["manifest"]["complete"], result["reports"]
    assert output_files(out) == output_files(single)
    failures = [json.loads(p.read_text()) for p in layout.failures_dir.glob("*.observed.json")]
    assert [f["pid"] for f in failures] == killed
    assert failures[0]["observed_by"].startswith("ray driver")
    assert result["status"]["deaths"]["observed"] == 1 and result["status"]["items_skipped"] == 0
