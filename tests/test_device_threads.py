"""How many cores a process may use (affinity, cgroup CPU quota) and how local CPU workers share
them: ``workers * threads <= cores``."""

from __future__ import annotations

from pathlib import Path

import pytest

from boxmask.jobs.local import worker_commands
from boxmask.threads import available_cores, cgroup_cpu_limit, threads_per_worker


def cgroup_v2(tmp_path: Path, cpu_max: dict[str, str], own: str = "/") -> tuple[Path, Path]:
    """A cgroup v2 tree with ``cpu.max`` files at the given relative folders, and the
    ``/proc/self/cgroup`` file of a process in ``own``."""
    root = tmp_path / "cgroup"
    for rel, text in cpu_max.items():
        folder = root / rel
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "cpu.max").write_text(text + "\n")
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text(f"0::{own}\n")
    return root, proc


def test_no_quota_means_no_limit(tmp_path):
    root, proc = cgroup_v2(tmp_path, {"": "max 100000"})
    assert cgroup_cpu_limit(root, proc) is None
    assert cgroup_cpu_limit(tmp_path / "absent", tmp_path / "absent-proc") is None


def test_v2_quota_of_the_process_cgroup(tmp_path):
    root, proc = cgroup_v2(tmp_path, {"": "max 100000", "job/task": "150000 100000"},
                           own="/job/task")
    assert cgroup_cpu_limit(root, proc) == pytest.approx(1.5)


def test_v2_the_tightest_ancestor_wins(tmp_path):
    root, proc = cgroup_v2(tmp_path, {"job": "100000 100000", "job/task": "400000 100000"},
                           own="/job/task")
    assert cgroup_cpu_limit(root, proc) == pytest.approx(1.0)


def test_v1_cfs_quota(tmp_path):
    root = tmp_path / "cgroup"
    (root / "cpu,cpuacct").mkdir(parents=True)
    (root / "cpu,cpuacct" / "cpu.cfs_quota_us").write_text("300000\n")
    (root / "cpu,cpuacct" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_limit(root, tmp_path / "no-proc") == pytest.approx(3.0)
    (root / "cpu,cpuacct" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_limit(root, tmp_path / "no-proc") is None


@pytest.mark.parametrize(("affinity", "limit", "cores"), [
    (8, None, 8), (8, 2.0, 2), (8, 1.5, 2), (8, 0.5, 1), (2, 16.0, 2), (1, None, 1)])
def test_cores_are_the_affinity_capped_by_the_quota_rounded_up(affinity, limit, cores):
    assert available_cores(affinity=affinity, cpu_limit=limit) == cores


def test_this_process_has_at_least_one_core():
    assert available_cores() >= 1


@pytest.mark.parametrize(("workers", "cores", "threads"), [
    (1, 2, 2), (2, 2, 1), (3, 2, 1), (2, 8, 4), (3, 8, 2), (16, 8, 1)])
def test_workers_times_threads_stays_within_the_cores(workers, cores, threads):
    assert threads_per_worker(workers, cores) == threads
    if workers <= cores:
        assert workers * threads <= cores


def test_local_cpu_workers_get_their_share_of_threads(monkeypatch):
    monkeypatch.setattr("boxmask.threads.available_cores", lambda *a, **k: 4)
    commands = worker_commands("/tmp/out", 2, device="cpu")
    for cmd, env in commands:
        assert cmd[cmd.index("--threads") + 1] == "2"
        assert env["OMP_NUM_THREADS"] == "2"


def test_default_workers_one_per_core_for_engines_that_scale_by_processes():
    from types import SimpleNamespace

    import torch

    from boxmask.engines.grabcut import GrabCutEngine
    from boxmask.jobs.local import default_workers

    grabcut = GrabCutEngine()
    assert default_workers(grabcut, shards=5, boxes=5000, cores=2) == 2
    assert default_workers(grabcut, shards=1, boxes=5000, cores=2) == 1  # whole shards
    assert default_workers(grabcut, shards=0, boxes=0, cores=2) == 1
    assert default_workers(grabcut, shards=5, boxes=50, cores=2) == 1  # not worth a process
    assert default_workers(grabcut, shards=9, boxes=600, cores=8) == 3
    on_gpu = SimpleNamespace(CPU_PARALLEL="processes", device=torch.device("cuda"))
    assert default_workers(on_gpu, shards=5, boxes=5000, cores=8) == 1
    threaded = SimpleNamespace(CPU_PARALLEL="threads", device=torch.device("cpu"))
    assert default_workers(threaded, shards=5, boxes=5000, cores=8) == 1
