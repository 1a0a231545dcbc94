"""CPU cores and threads of this process, without importing torch for engines that do not use
it: the cores a process may use (affinity, cgroup quota), the thread split of local workers, and
the thread limit of this process."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path


def set_threads(n: int) -> None:
    """Limit OpenCV and torch to ``n`` threads in this process.

    torch is limited at once when it is already imported; otherwise ``OMP_NUM_THREADS`` is set,
    which torch reads when a network engine imports it later.
    """
    import cv2

    cv2.setNumThreads(n)
    os.environ["OMP_NUM_THREADS"] = str(n)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(n)


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def cgroup_cpu_limit(root: str | Path = "/sys/fs/cgroup",
                     proc_cgroup: str | Path = "/proc/self/cgroup") -> float | None:
    """CPUs this process's cgroup may use (quota / period), or None when unlimited or unknown.

    cgroup v2: ``cpu.max`` (``"<quota> <period>"`` or ``"max <period>"``) of the process's cgroup
    (the ``0::<path>`` line of ``proc_cgroup``) and of each parent up to ``root``, the smallest
    limit. cgroup v1: ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` under ``root/cpu`` or
    ``root/cpu,cpuacct`` (quota -1: unlimited)."""
    root = Path(root)
    limits: list[float] = []
    rel = ""
    for line in (_read(Path(proc_cgroup)) or "").splitlines():
        if line.startswith("0::"):
            rel = line[3:].strip().lstrip("/")
    folder = root / rel if rel else root
    while True:
        text = _read(folder / "cpu.max")
        if text:
            quota, _, period = text.partition(" ")
            if quota != "max" and float(period or 100_000) > 0:
                limits.append(float(quota) / float(period or 100_000))
        if folder == root or root not in folder.parents:
            break
        folder = folder.parent
    for v1 in ("cpu", "cpu,cpuacct"):
        quota_text = _read(root / v1 / "cpu.cfs_quota_us")
        period_text = _read(root / v1 / "cpu.cfs_period_us")
        if quota_text and period_text and float(quota_text) > 0 and float(period_text) > 0:
            limits.append(float(quota_text) / float(period_text))
    return min(limits) if limits else None


def available_cores(affinity: int | None = None, cpu_limit: float | None = None) -> int:
    """CPU cores this process may use: the CPUs it may run on (``os.sched_getaffinity``), capped
    by its cgroup's CPU quota rounded up (``cgroup_cpu_limit``: a container limited to 1.5
    CPUs gets 2), at least 1. ``affinity`` and ``cpu_limit`` replace what is read from the
    system (for tests)."""
    if affinity is None:
        affinity = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                    else os.cpu_count() or 1)
    if cpu_limit is None:
        cpu_limit = cgroup_cpu_limit()
    cores = affinity if cpu_limit is None else min(affinity, math.ceil(cpu_limit))
    return max(int(cores), 1)


def threads_per_worker(workers: int, cores: int | None = None) -> int:
    """Intra-op threads for each of ``workers`` processes sharing ``cores``
    (default ``available_cores()``): ``cores // workers``, at least 1, so that
    ``workers * threads <= cores`` whenever ``workers <= cores``."""
    cores = available_cores() if cores is None else cores
    return max(int(cores) // max(int(workers), 1), 1)
