"""Workers as Slurm job arrays: the batch script, its signal forwarding, and real submissions."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from slurm_cluster import SlurmCluster, wait_for

from boxmask.jobs.deaths import deaths_at, is_skip_line, read_all_failures
from boxmask.jobs.layout import JobLayout
from boxmask.jobs.plan import read_shard_items
from boxmask.jobs.slurm import (
    EXIT_STOPPED,
    SlurmError,
    array_sizes,
    cancel,
    default_worker_command,
    parse_job_id,
    read_max_array_size,
    render_sbatch,
    slurm_status,
    submit_array,
    time_limit_seconds,
)

# The `slurm` fixture: the one-node test cluster, started once per session.
pytest_plugins = ["slurm_cluster"]

# Stands in for `boxmask work DIR --worker-id ID`: records that it started and which signal it
# got in DIR/markers/, then exits. Its first argument is the behaviour: "exit:N" exits N at once,
# "wait:N" waits for SIGUSR1 or SIGTERM (60 s at most) and then exits N.
STAND_IN_WORKER = textwrap.dedent("""
    import signal, sys, time
    from pathlib import Path

    behaviour, args = sys.argv[1], sys.argv[2:]
    assert args[0] == "work" and args[2] == "--worker-id" and len(args) == 4, args
    markers = Path(args[1]) / "markers"
    markers.mkdir(exist_ok=True)
    worker_id = args[3]
    mode, code = behaviour.split(":")

    def stop(signum, frame):
        (markers / f"{worker_id}.{signal.Signals(signum).name}").touch()
        sys.exit(int(code))

    signal.signal(signal.SIGUSR1, stop)
    signal.signal(signal.SIGTERM, stop)
    (markers / f"{worker_id}.started").touch()
    deadline = time.monotonic() + 60
    while mode == "wait" and time.monotonic() < deadline:
        time.sleep(0.05)
    sys.exit(int(code))
""")


@pytest.fixture
def stand_in(tmp_path: Path) -> Path:
    path = tmp_path / "stand_in_worker.py"
    path.write_text(STAND_IN_WORKER)
    return path


def directives(script: str) -> dict[str, str]:
    """``{"--name": "value"}`` of a batch script's ``#SBATCH --name[=value]`` lines."""
    out = {}
    for line in script.splitlines():
        if line.startswith("#SBATCH "):
            name, _, value = line.removeprefix("#SBATCH ").partition("=")
            out[name] = value
    return out


def markers(output_dir: Path) -> set[str]:
    d = output_dir / "markers"
    return {p.name for p in d.iterdir()} if d.is_dir() else set()


# --- the batch script, without a cluster -----------------------------------------------------


def test_more_workers_than_max_array_size_are_split_into_full_arrays() -> None:
    assert array_sizes(20, 9) == [9, 9, 2]
    assert array_sizes(9, 9) == [9]
    assert array_sizes(1, 9) == [1]
    assert array_sizes(7, 1) == [1] * 7
    with pytest.raises(ValueError):
        array_sizes(0, 9)


def test_batch_script_asks_for_requeue_grace_signal_and_per_task_logs(tmp_path: Path) -> None:
    script = render_sbatch(tmp_path / "out", 9, partition="gpu", gpus_per_task=1,
                           cpus_per_task=8, mem="32G", time="4:00:00", account="lab",
                           qos="normal", throttle=3)
    d = directives(script)
    assert d["--array"] == "0-8%3"
    assert "--requeue" in d
    assert d["--signal"] == "B:USR1@120"
    assert d["--open-mode"] == "append"
    assert d["--output"] == f"{tmp_path}/out/logs/slurm-%A_%a.out"
    assert (d["--partition"], d["--gpus-per-task"], d["--cpus-per-task"]) == ("gpu", "1", "8")
    assert (d["--mem"], d["--time"], d["--account"], d["--qos"]) == ("32G", "4:00:00", "lab",
                                                                     "normal")
    assert "--gpus-per-task" not in directives(render_sbatch(tmp_path, 1))
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)


def test_log_path_escapes_percent_and_quotes_spaces(tmp_path: Path) -> None:
    d = directives(render_sbatch(tmp_path / "100% done", 2))
    assert d["--output"] == f'"{tmp_path}/100%% done/logs/slurm-%A_%a.out"'
    with pytest.raises(ValueError, match="quote"):
        render_sbatch(tmp_path / 'say "hi"', 2)


def test_slurm_time_limits_are_read_in_all_sbatch_formats() -> None:
    assert time_limit_seconds("90") == 90 * 60  # minutes
    assert time_limit_seconds("30:15") == 30 * 60 + 15  # minutes:seconds
    assert time_limit_seconds("4:00:00") == 4 * 3600
    assert time_limit_seconds("2-12") == (2 * 24 + 12) * 3600  # days-hours
    assert time_limit_seconds("1-2:30") == (26 * 60 + 30) * 60
    assert time_limit_seconds("1-0:0:5") == 86400 + 5
    assert time_limit_seconds("UNLIMITED") is None
    with pytest.raises(ValueError):
        time_limit_seconds("4h")


def test_a_time_limit_within_the_stop_grace_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="grace"):
        render_sbatch(tmp_path, 1, time="2", grace_s=120)  # USR1 would come at the start
    assert directives(render_sbatch(tmp_path, 1, time="3", grace_s=120))["--time"] == "3"


def test_requeue_follows_the_workers_stopped_status() -> None:
    api = pytest.importorskip("boxmask.api")
    assert api.EXIT_STOPPED == EXIT_STOPPED


def test_workers_run_with_the_submitters_python_environment() -> None:
    command = default_worker_command()
    env_bin = os.path.dirname(os.path.abspath(sys.executable))
    assert os.path.dirname(command[0]) == env_bin
    assert os.access(command[0], os.X_OK)


def test_sbatch_parsable_output_gives_the_job_id() -> None:
    assert parse_job_id("4242\n") == "4242"
    assert parse_job_id("4242;cluster-a\n") == "4242"
    with pytest.raises(SlurmError):
        parse_job_id("sbatch: error: something\n")


def run_script_locally(tmp_path: Path, stand_in: Path, behaviour: str) -> subprocess.Popen:
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    script = render_sbatch(out, 1, boxmask_cmd=[sys.executable, str(stand_in), behaviour])
    env = {**os.environ, "SLURM_ARRAY_JOB_ID": "77", "SLURM_ARRAY_TASK_ID": "3"}
    return subprocess.Popen(["bash", "-c", script], env=env, stdout=subprocess.PIPE, text=True,
                            start_new_session=True)


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGTERM])
def test_signal_to_the_batch_shell_is_forwarded_to_the_worker(
    tmp_path: Path, stand_in: Path, sig: signal.Signals
) -> None:
    proc = run_script_locally(tmp_path, stand_in, "wait:3")
    out = tmp_path / "out"
    try:
        wait_for(lambda: "slurm-77_3.started" in markers(out), timeout=20, what="the worker")
        os.kill(proc.pid, sig)  # the shell only, as Slurm's --signal=B: does
        stdout, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the shell and the worker
    assert f"slurm-77_3.{sig.name}" in markers(out)
    assert proc.returncode == 3  # the worker's own status
    assert "boxmask worker exited with status 3" in stdout


def test_batch_script_exits_with_the_workers_status(tmp_path: Path, stand_in: Path) -> None:
    proc = run_script_locally(tmp_path, stand_in, "exit:5")
    proc.communicate(timeout=20)
    assert proc.returncode == 5
    assert markers(tmp_path / "out") == {"slurm-77_3.started"}


# --- real submissions to the one-node test cluster -------------------------------------------


@pytest.mark.slurm
def test_workers_beyond_max_array_size_all_run_as_several_arrays(
    slurm: SlurmCluster, tmp_path: Path, stand_in: Path
) -> None:
    out = tmp_path / "out"
    assert read_max_array_size() == slurm.max_array_size == 4
    job_ids = submit_array(out, 9, boxmask_cmd=[sys.executable, str(stand_in), "exit:0"])
    assert len(job_ids) == 3
    states = slurm.wait_finished(job_ids)
    sizes = zip(job_ids, [4, 4, 1], strict=True)
    expected = [f"{job}_{task}" for job, size in sizes for task in range(size)]
    assert states == {task: "COMPLETED" for task in expected}
    assert slurm_status(job_ids) == states
    assert markers(out) == {f"slurm-{task}.started" for task in expected}
    for task in expected:
        log = (out / "logs" / f"slurm-{task}.out").read_text()
        assert "boxmask worker exited with status 0" in log
    assert {p.name for p in (out / "slurm").iterdir()} == {f"array-{j}.sbatch" for j in job_ids}


@pytest.mark.slurm
def test_usr1_to_a_running_task_stops_its_worker_cleanly(
    slurm: SlurmCluster, tmp_path: Path, stand_in: Path
) -> None:
    out = tmp_path / "out"
    (job,) = submit_array(out, 1, boxmask_cmd=[sys.executable, str(stand_in), "wait:0"])
    try:
        wait_for(lambda: f"slurm-{job}_0.started" in markers(out), timeout=20,
                 what="the worker to start")
        assert slurm_status([job]) == {f"{job}_0": "RUNNING"}
        # --batch: Slurm signals the batch shell only; the worker hears of it through the script.
        cancel([f"{job}_0"], signal="USR1")
        states = slurm.wait_finished([job], timeout=20)
    finally:
        slurm.run("scancel", job)
    assert states == {f"{job}_0": "COMPLETED"}
    assert markers(out) == {f"slurm-{job}_0.started", f"slurm-{job}_0.SIGUSR1"}


@pytest.mark.slurm
def test_a_worker_stopped_by_the_time_limit_signal_is_requeued(
    slurm: SlurmCluster, tmp_path: Path, stand_in: Path
) -> None:
    out = tmp_path / "out"
    behaviour = f"wait:{EXIT_STOPPED}"  # stopped with shards left, as `boxmask work` reports it
    (job,) = submit_array(out, 1, boxmask_cmd=[sys.executable, str(stand_in), behaviour])
    task = f"{job}_0"
    try:
        wait_for(lambda: f"slurm-{task}.started" in markers(out), timeout=20,
                 what="the worker to start")
        cancel([task], signal="USR1")  # what Slurm sends grace_s before the time limit
        wait_for(lambda: "Restarts=1" in slurm.run("scontrol", "show", "job", task).stdout,
                 timeout=20, what="the task to be requeued")
        # Slurm delays a requeued start (the task may still be COMPLETING for a moment)
        wait_for(lambda: slurm_status([job]) == {task: "PENDING"}, timeout=20,
                 what="the requeued task to be pending")
    finally:
        slurm.run("scancel", job)
    log = (out / "logs" / f"slurm-{task}.out").read_text()
    assert f"boxmask worker exited with status {EXIT_STOPPED}" in log
    assert f"requeueing {task}" in log


@pytest.mark.slurm
def test_a_refused_submission_raises_with_sbatchs_message(slurm: SlurmCluster,
                                                           tmp_path: Path) -> None:
    with pytest.raises(SlurmError, match="Invalid partition name"):
        submit_array(tmp_path / "out", 2, partition="no-such-partition", boxmask_cmd=["true"])
    # This cluster has no GPUs: Slurm's own GRES check refuses the per-task GPU request.
    with pytest.raises(SlurmError, match="Invalid generic resource"):
        submit_array(tmp_path / "out", 2, gpus_per_task=1, boxmask_cmd=["true"])


@pytest.mark.slurm
def test_status_of_jobs_squeue_no_longer_knows_is_empty(slurm: SlurmCluster) -> None:
    assert slurm_status(["987654"]) == {}


def _worker_available() -> bool:
    try:
        import boxmask.cli  # noqa: F401
        import boxmask.jobs.worker  # noqa: F401
    except ImportError:
        return False
    return True


SAMPLE = Path(__file__).resolve().parents[2] / "data" / "samples" / "ilsvrc_loc"


@pytest.mark.slurm
@pytest.mark.skipif(not _worker_available(), reason="needs boxmask work")
def test_slurm_workers_convert_a_planned_dataset_end_to_end(slurm: SlurmCluster,
                                                             tmp_path: Path) -> None:
    out = tmp_path / "out"
    boxmask = default_worker_command()
    subprocess.run([*boxmask, "plan", "--source", "ilsvrc-loc", "--input", str(SAMPLE),
                    "--format", "pixel-imagenet", "--engine", "grabcut", "--shard-size", "4",
                    "--limit", "12", "--output", str(out)], check=True, capture_output=True)
    submitted = subprocess.run([*boxmask, "submit", str(out), "--array-size", "2"],
                               capture_output=True, text=True, env=slurm.env())
    assert submitted.returncode == 0, submitted.stderr
    job_ids = submitted.stdout.split()  # tasks run the real `boxmask work` of this environment
    (job,) = job_ids
    assert slurm.wait_finished(job_ids, timeout=60) == {f"{job}_0": "COMPLETED",
                                                         f"{job}_1": "COMPLETED"}
    done = [json.loads(p.read_text()) for p in (out / "state" / "done").glob("*.json")]
    assert sorted(d["shard"] for d in done) == [0, 1, 2]  # 12 images in shards of 4
    assert {d["worker"] for d in done} <= {f"slurm-{job}_0", f"slurm-{job}_1"}
    merged = subprocess.run([*boxmask, "merge", str(out)], capture_output=True, text=True)
    assert merged.returncode == 0, merged.stderr
    assert json.loads(merged.stdout)["images"] == 12


def _output_files(out: Path) -> dict[str, bytes]:
    """Every final output of a conversion (not its state, plan or manifest), by relative path."""
    keep = ("pixel-imagenet", "coco", "openimages")
    files = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*")
             if p.is_file() and p.relative_to(out).parts[0] in keep}
    for name in ("masks.jsonl", "errors.jsonl"):
        files[name] = (out / name).read_bytes()
    return files


@pytest.mark.slurm
@pytest.mark.skipif(not _worker_available(), reason="needs boxmask work")
def test_an_array_cancelled_mid_run_and_resubmitted_equals_a_single_process_run(
        slurm: SlurmCluster, tmp_path: Path) -> None:
    boxmask = default_worker_command()
    options = ["--source", "ilsvrc-loc", "--input", str(SAMPLE), "--format", "pixel-imagenet",
               "--format", "coco", "--format", "openimages", "--engine", "grabcut",
               "--shard-size", "3", "--limit", "24"]
    single = tmp_path / "single"
    subprocess.run([*boxmask, "convert", *options, "--output", str(single), "--no-progress"],
                   check=True, capture_output=True)

    out = tmp_path / "cluster"
    subprocess.run([*boxmask, "plan", *options, "--output", str(out)], check=True,
                   capture_output=True)
    first = submit_array(out, 2)
    (job,) = first
    done_dir = out / "state" / "done"

    def done_by(worker: str) -> int:
        markers = [json.loads(p.read_text()) for p in done_dir.glob("*.json")]
        return sum(1 for m in markers if m["worker"] == worker)

    wait_for(lambda: done_dir.exists() and len(list(done_dir.glob("*.json"))) >= 2, 90,
             "two shards done")
    # Part of the array first: task 0 stops, task 1 goes on with the shards.
    slurm.run("scancel", f"{job}_0")
    slurm.wait_finished([f"{job}_0"], timeout=60)
    after_cancel = done_by(f"slurm-{job}_1")
    wait_for(lambda: done_by(f"slurm-{job}_1") > after_cancel, 90,
             "task 1 finishing a shard after task 0 was cancelled")
    slurm.run("scancel", job)
    slurm.wait_finished(first, timeout=60)
    n_done = len(list(done_dir.glob("*.json")))
    assert n_done < 8, "the array finished before it could be cancelled"

    second = submit_array(out, 2)
    slurm.wait_finished(second, timeout=120)
    assert len(list(done_dir.glob("*.json"))) == 8
    merged = subprocess.run([*boxmask, "merge", str(out)], capture_output=True, text=True)
    assert merged.returncode == 0, merged.stderr
    assert _output_files(out) == _output_files(single)
    results = [json.loads(line) for p in (out / "state" / "results").glob("*.jsonl")
               for line in p.read_text().splitlines()]
    ids = [r["record"]["image_id"] for r in results]
    assert len(ids) == len(set(ids)) == 24  # every image exactly once


FAULT_INJECT = Path(__file__).resolve().parents[1] / "fault_inject"

TIME_LIMIT = "1"
"""The task's time limit: one minute, Slurm's shortest."""

GRACE_S = 20
"""USR1 comes ``GRACE_S`` s before the limit, but slurmctld tests time limits only every 30 s
(``PERIODIC_TIMEOUT``) and sends the signal at the first test that finds the job within
``GRACE_S + 30`` s of its end: 10 to 41 s after the task started. The time limit itself is
enforced at the first test at or after the end, 60 s or more after the start."""

SLOW_S = 45
"""How long the first load of the slow image sleeps: from about 2 s after the start (the second
image of the first shard) to past the last moment the signal can come (41 s), and over well
before the time limit (60 s), so that the worker is on that image when USR1 arrives and has
stopped before Slurm would kill it."""


def _reports(log: str) -> list[dict]:
    """The reports that ``boxmask work`` prints when it ends (one JSON line per run)."""
    return [json.loads(line) for line in log.splitlines()
            if line.startswith("{") and '"worker_id"' in line]


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.skipif(not _worker_available(), reason="needs boxmask work")
def test_a_task_stopped_at_its_time_limit_is_requeued_and_resumes_without_loss(
        slurm: SlurmCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Slurm itself signals a real `boxmask work` task before its time limit while the worker is
    mid-shard; the task is requeued, runs again and finishes: the output equals an uninterrupted
    single-process convert, every image is converted once, and the stop is no death."""
    boxmask = default_worker_command()
    options = ["--source", "ilsvrc-loc", "--input", str(SAMPLE), "--format", "pixel-imagenet",
               "--format", "coco", "--format", "openimages", "--engine", "grabcut",
               "--shard-size", "4", "--limit", "8"]
    single = tmp_path / "single"
    subprocess.run([*boxmask, "convert", *options, "--output", str(single), "--no-progress"],
                   check=True, capture_output=True)
    out = tmp_path / "cluster"
    subprocess.run([*boxmask, "plan", *options, "--output", str(out)], check=True,
                   capture_output=True)
    layout = JobLayout(out)
    slow = read_shard_items(layout.shard_file(0))[1].image_id
    slow_once = tmp_path / "slow-image-loaded"
    # sbatch exports this environment to the task: the first load of `slow` sleeps.
    python_path = [str(FAULT_INJECT), *filter(None, [os.environ.get("PYTHONPATH")])]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(python_path))
    monkeypatch.setenv("BOXMASK_TEST_SLOW_IMAGE", f"{slow}:{SLOW_S}")
    monkeypatch.setenv("BOXMASK_TEST_SLOW_ONCE", str(slow_once))

    (job,) = submit_array(out, 1, time=TIME_LIMIT, grace_s=GRACE_S)
    task = f"{job}_0"

    def show_job() -> str:
        return slurm.run("scontrol", "show", "job", task).stdout

    try:
        wait_for(lambda: re.search(r"\bJobState=PENDING\b.*\bRestarts=1\b|"
                                   r"\bRestarts=1\b.*\bJobState=PENDING\b", show_job(), re.S)
                 is not None, timeout=120, what="the task to be requeued")
        # A requeued job may start again only after the job credential lifetime (AuthInfo
        # cred_expire, 120 s by default) plus one second, so that no launch credential of its
        # last run is still valid. Shortening cred_expire for the whole test cluster would also
        # shorten the lifetime of every launch credential and the pause that the other requeue
        # test sees; releasing this one task keeps the test short without either. It starts 2 s
        # from now, after the second in which its last run's credentials were revoked. Its time
        # limit is raised so that it cannot be signalled again while it finishes: the run that
        # Slurm stops is the first one.
        begin = re.search(r"\bEligibleTime=(\S+)", show_job())
        assert begin is not None, show_job()
        delay = time.mktime(time.strptime(begin.group(1), "%Y-%m-%dT%H:%M:%S")) - time.time()
        assert delay > 60, f"requeued task eligible in {delay:.0f} s"
        slurm.run("scontrol", "update", f"JobId={task}", "StartTime=now+2", "TimeLimit=5")
        states = slurm.wait_finished([job], timeout=120)
        info = show_job()
    finally:
        slurm.run("scancel", job, check=False)

    log = (out / "logs" / f"slurm-{task}.out").read_text()
    assert states == {task: "COMPLETED"}, log
    assert "Restarts=1" in info, info
    # The first run: Slurm's USR1 (nothing else signalled it) reached the worker on the slow
    # image; it finished that image, kept its results and exited stopped; the script requeued.
    assert slow_once.exists()
    assert "received SIGUSR1" in log
    assert "received SIGTERM" not in log  # stopped before the time limit, not killed at it
    assert log.count(f"requeueing {task}") == 1
    assert f"boxmask worker exited with status {EXIT_STOPPED}" in log
    assert "boxmask worker exited with status 0" in log
    first, second = _reports(log)
    assert first["stopped"] and first["shards_done"] == [] and first["images"] == 2, first
    # The second run went on where the first stopped, and converted only what was left.
    assert "shard 0: resuming after 2 of 4 items" in log
    assert not second["stopped"] and second["shards_done"] == [0, 1], second
    assert first["images"] + second["images"] == 8
    assert {first["worker_id"], second["worker_id"]} == {f"slurm-{task}"}

    done = [json.loads(p.read_text()) for p in (out / "state" / "done").glob("*.json")]
    assert sorted(d["shard"] for d in done) == [0, 1]
    merged = subprocess.run([*boxmask, "merge", str(out)], capture_output=True, text=True)
    assert merged.returncode == 0, merged.stderr
    assert _output_files(out) == _output_files(single)
    results = [json.loads(line) for d in done
               for line in (layout.results_dir / d["results"]).read_text().splitlines()]
    ids = [r["record"]["image_id"] for r in results]
    assert sorted(ids) == sorted(set(ids)) and len(ids) == 8  # every image exactly once
    assert not [r for r in results if is_skip_line(r)]  # no image skipped as a worker death
    # A stop by the scheduler releases the lease: no failure is recorded, so no death counts
    # against the image the worker was on (item 1 of shard 0), observed or not.
    failures = read_all_failures(layout)
    assert failures == {}, failures
    assert deaths_at(failures.get(0, []), 1) == (0, 0)
