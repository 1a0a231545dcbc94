"""The Ray backend: Ray actors run the same workers and shard protocol on a (local) Ray cluster,
and the merged result equals a single-process run."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from boxmask.api import convert, prepare_plan
from boxmask.jobs.layout import JobLayout
from boxmask.jobs.plan import Settings

ray = pytest.importorskip("ray", reason="the Ray backend is optional: pip install 'boxmask[ray]'")

from boxmask.jobs.ray_backend import submit_ray  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "data" / "samples" / "ilsvrc_loc"
FORMATS = ["pixel-imagenet", "coco", "openimages"]
SKIP = {"state", "shards", "plan.json", "plan.lock", "manifest.json", "logs"}


def settings(**overrides) -> Settings:
    s = Settings(source="ilsvrc-loc", input=str(SAMPLE), formats=list(FORMATS), engine="box",
                 shard_size=5)
    for k, v in overrides.items():
        setattr(s, k, v)
    return s


def output_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.relative_to(root).parts[0] not in SKIP}


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    yield ray
    ray.shutdown()


def test_ray_workers_convert_the_job_like_a_single_process(local_ray, tmp_path):
    single = tmp_path / "single"
    assert convert(settings(), single, progress=False)["complete"]
    out = tmp_path / "ray"
    plan, engine = prepare_plan(settings(), out)
    engine.close()
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


def test_sigterm_stops_the_ray_workers_and_a_second_run_finishes_the_job(local_ray, tmp_path):
    grabcut = {"engine": "grabcut", "limit": 8, "shard_size": 2}
    single = tmp_path / "single"
    assert convert(settings(**grabcut), single, progress=False)["complete"]
    out = tmp_path / "ray"
    plan, engine = prepare_plan(settings(**grabcut), out)
    engine.close()
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
