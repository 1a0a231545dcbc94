"""A real one-node Slurm cluster for the tests (scripts/slurm/cluster.sh), once per session.

A test module uses it with ``pytest_plugins = ["slurm_cluster"]`` (one cluster serves every
module that does): ``slurm_cluster`` starts the cluster (session scope) and ``slurm`` also points
``SLURM_CONF`` at it for one test, so that ``sbatch``/``squeue`` run by the code under test reach
it.

Tests that need it are skipped when Slurm or munge is not installed or we are not root, unless
``BOXMASK_REQUIRE_SYSTEM_TESTS=1``: then they fail.

PYTEST_DONT_REWRITE: test modules import helpers from here before pytest loads it as a plugin;
it raises its own AssertionErrors and needs no assertion rewriting.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CLUSTER_SCRIPT = REPO / "scripts" / "slurm" / "cluster.sh"
REQUIRE_ENV = "BOXMASK_REQUIRE_SYSTEM_TESTS"

MAX_ARRAY_SIZE = 4
"""The test cluster's MaxArraySize: small, so that a handful of workers needs several arrays."""

PARTITION = "debug"
ACTIVE_STATES = "pending,running,configuring,completing,suspended,requeued,resizing,stopped"


@dataclass(frozen=True)
class SlurmCluster:
    root: Path
    conf: Path
    max_array_size: int
    partition: str

    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a Slurm client command (``sbatch``, ``squeue``, ...) against this cluster."""
        proc = subprocess.run(list(args), env=self.env(), capture_output=True, text=True,
                              timeout=60, check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
        return proc

    def states(self, job_ids: Iterable[str]) -> dict[str, str]:
        """``{"<job>_<task>" or "<job>": state}`` of the given jobs' tasks, from squeue."""
        proc = self.run("squeue", "--noheader", "--array", "--states=all",
                        "--jobs=" + ",".join(job_ids), "--format=%i|%T")
        return dict(line.split("|", 1) for line in proc.stdout.split())

    def wait_finished(self, job_ids: Iterable[str], timeout: float = 30) -> dict[str, str]:
        """Wait until no task of the jobs is pending or running; return their final states."""
        ids = list(job_ids)
        deadline = time.monotonic() + timeout
        while True:
            active = self.run("squeue", "--noheader", "--array", f"--states={ACTIVE_STATES}",
                              "--jobs=" + ",".join(ids), "--format=%i")
            if not active.stdout.split():
                return self.states(ids)
            if time.monotonic() > deadline:
                raise AssertionError(f"jobs still active after {timeout} s: {active.stdout}")
            time.sleep(0.2)


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` every 0.1 s until it holds; fail naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


def missing_requirements() -> str | None:
    """Why the cluster cannot run here, or None."""
    missing = [c for c in ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol")
               if shutil.which(c) is None]
    if missing:
        return (f"Slurm/munge not installed ({', '.join(missing)} missing): "
                "run scripts/install-system-deps.sh")
    if os.geteuid() != 0:
        return "the test Slurm cluster runs its daemons as root"
    return None


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    reason = missing_requirements()
    if reason is not None:
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{REQUIRE_ENV}=1 but {reason}")
        pytest.skip(reason)
    # A short path: the munge socket lives inside and unix socket paths are limited to 108 bytes.
    root = Path(tempfile.mkdtemp(prefix="boxmask-slurm-", dir="/tmp"))
    env = {**os.environ, "BOXMASK_SLURM_MAX_ARRAY_SIZE": str(MAX_ARRAY_SIZE),
           "BOXMASK_SLURM_PARTITION": PARTITION}
    env.pop("SLURM_CONF", None)
    proc = subprocess.run([str(CLUSTER_SCRIPT), "start", str(root)], env=env,
                          capture_output=True, text=True, timeout=90, check=False)
    if proc.returncode != 0:
        subprocess.run([str(CLUSTER_SCRIPT), "stop", str(root)], capture_output=True,
                       timeout=60, check=False)
        pytest.fail(f"the test Slurm cluster did not start:\n{proc.stdout}\n{proc.stderr}")
    try:
        yield SlurmCluster(root=root, conf=root / "etc" / "slurm.conf",
                           max_array_size=MAX_ARRAY_SIZE, partition=PARTITION)
    finally:
        subprocess.run([str(CLUSTER_SCRIPT), "stop", str(root)], capture_output=True,
                       timeout=60, check=False)


@pytest.fixture
def slurm(slurm_cluster: SlurmCluster, monkeypatch: pytest.MonkeyPatch) -> SlurmCluster:
    """The session's cluster, with ``SLURM_CONF`` pointing at it for this test."""
    monkeypatch.setenv("SLURM_CONF", str(slurm_cluster.conf))
    return slurm_cluster
