"""Several launchers and workers on one output directory at once: they share the work without
converting anything twice, and the result equals a single-process run."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import pytest

from boxmask.api import convert
from boxmask.jobs.layout import JobLayout
from boxmask.jobs.local import worker_commands
from boxmask.jobs.plan import load_plan


@pytest.fixture(scope="module")
def settings(sample_settings):
    """``settings(**overrides)``: the sample in shards of one image."""
    return partial(sample_settings, shard_size=1)


def counts(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())["counts"]


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, convert_once, settings) -> Path:
    return convert_once(tmp_path_factory.mktemp("baseline") / "out", settings())


def test_two_workers_on_one_plan_share_the_shards_without_duplicates(baseline, tmp_path,
                                                                     output_files, plan_into,
                                                                     run_boxmask, settings,
                                                                     start_worker):
    out = tmp_path / "out"
    plan = plan_into(out, settings())
    procs = [start_worker(out, "--worker-id", f"w{i}") for i in range(2)]
    reports = [json.loads(p.communicate(timeout=120)[1].strip().splitlines()[-1])
               for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    # Every item converted exactly once, by one of the two.
    assert sum(r["images"] for r in reports) == plan["totals"]["items"] == 50
    done = sorted(s for r in reports for s in r["shards_done"])
    assert done == [s["id"] for s in plan["shards"]]
    layout = JobLayout(out)
    owners = {json.loads(layout.done_file(s).read_text())["worker"] for s in done}
    assert owners <= {"w0", "w1"}
    run_boxmask("-q", "merge", str(out), check=True)
    assert output_files(out) == output_files(baseline)
    assert counts(out) == counts(baseline)


def test_two_convert_commands_started_together_plan_once_and_agree(baseline, tmp_path,
                                                                   ilsvrc_sample, job_formats,
                                                                   output_files, start_boxmask):
    out = tmp_path / "out"
    args = ["convert", "--source", "ilsvrc-loc", "--input", str(ilsvrc_sample), "--engine", "box",
            "--shard-size", "1", "--no-progress", "--output", str(out),
            *(f"--format={f}" for f in job_formats)]
    procs = [start_boxmask(*args) for _ in range(2)]
    logs = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    assert sum("planned 50 images" in log for log in logs) == 1, logs
    assert output_files(out) == output_files(baseline)
    assert counts(out) == counts(baseline)
    layout = JobLayout(out)
    results = sorted(layout.results_dir.glob("*.jsonl"))
    assert len(results) == len(load_plan(out)["shards"])  # one attempt per shard: none redone


def test_convert_with_local_workers_equals_a_single_process_run(baseline, tmp_path, output_files,
                                                                settings):
    out = tmp_path / "out"
    summary = convert(settings(), out, workers=2, progress=False)
    assert summary["complete"] and summary["exit_code"] == 0
    assert output_files(out) == output_files(baseline)
    workers = {json.loads(p.read_text())["worker"] for p in JobLayout(out).done_dir.iterdir()}
    assert len(workers) == 2  # both did some of the work


def test_local_cpu_workers_split_the_cores(tmp_path, monkeypatch):
    monkeypatch.setattr("boxmask.jobs.local.visible_gpus", lambda: [])
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(8)))
    commands = worker_commands(tmp_path, 3)
    threads = [cmd[cmd.index("--threads") + 1] for cmd, _ in commands]
    assert threads == ["2", "2", "2"]
    assert len({cmd[cmd.index("--worker-id") + 1] for cmd, _ in commands}) == 3


def test_local_gpu_workers_are_pinned_to_the_visible_gpus_round_robin(tmp_path, monkeypatch):
    monkeypatch.setattr("boxmask.jobs.local.visible_gpus", lambda: ["2", "5"])
    commands = worker_commands(tmp_path, 3)
    assert [env["CUDA_VISIBLE_DEVICES"] for _, env in commands] == ["2", "5", "2"]
    assert all(cmd[cmd.index("--device") + 1] == "cuda" for cmd, _ in commands)
