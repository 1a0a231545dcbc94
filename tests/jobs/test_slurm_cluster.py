"""The one-node test cluster itself (scripts/slurm/cluster.sh) behaves like a Slurm cluster."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from slurm_cluster import SlurmCluster, wait_for

pytest_plugins = ["slurm_cluster"]

pytestmark = pytest.mark.slurm


def test_node_declares_the_machines_cpus_and_is_up(slurm_cluster: SlurmCluster) -> None:
    out = slurm_cluster.run("sinfo", "--noheader", "--Node", "--format=%N|%T|%c|%P").stdout
    (line,) = out.split()
    node, state, cpus, partition = line.split("|")
    assert int(cpus) == os.cpu_count()
    assert state in ("idle", "mixed", "allocated")
    assert partition == f"{slurm_cluster.partition}*"  # the default partition


def test_a_one_task_job_runs_in_the_cluster(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    out = tmp_path / "job.out"
    proc = slurm_cluster.run(
        "sbatch", "--parsable", "--wait", f"--output={out}",
        "--wrap", "echo job=$SLURM_JOB_ID cluster=$SLURM_CLUSTER_NAME",
    )
    job_id = proc.stdout.strip()
    assert out.read_text().split() == [f"job={job_id}", "cluster=boxmask-test"]


def test_arrays_beyond_max_array_size_are_refused(slurm_cluster: SlurmCluster) -> None:
    top = slurm_cluster.max_array_size
    refused = slurm_cluster.run("sbatch", f"--array=0-{top}", "--output=/dev/null",
                                "--wrap", "true", check=False)
    assert refused.returncode != 0
    assert "Invalid job array specification" in refused.stderr
    accepted = slurm_cluster.run("sbatch", "--parsable", f"--array=0-{top - 1}",
                                 "--output=/dev/null", "--wrap", "true")
    slurm_cluster.wait_finished([accepted.stdout.strip()])


def test_scancel_stops_one_running_array_task(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    # `&&`: a sleep killed by the signal must not let the shell go on to write the marker.
    script = f"touch {tmp_path}/started.$SLURM_ARRAY_TASK_ID; sleep 30 && touch {tmp_path}/finished"
    job = slurm_cluster.run("sbatch", "--parsable", "--array=0-1", "--output=/dev/null",
                            "--wrap", script).stdout.strip()
    try:
        wait_for(lambda: (tmp_path / "started.0").exists() and (tmp_path / "started.1").exists(),
                 timeout=20, what="both array tasks to start")
        slurm_cluster.run("scancel", f"{job}_0")
        wait_for(lambda: slurm_cluster.states([job]).get(f"{job}_0") == "CANCELLED",
                 timeout=20, what="task 0 to be cancelled")
        assert slurm_cluster.states([job])[f"{job}_1"] == "RUNNING"
    finally:
        slurm_cluster.run("scancel", job)
    states = slurm_cluster.wait_finished([job])
    assert states == {f"{job}_0": "CANCELLED", f"{job}_1": "CANCELLED"}
    assert not (tmp_path / "finished").exists()
