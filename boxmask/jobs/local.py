"""Run several workers on one machine: one per GPU when there are GPUs, else CPU workers that
share the cores. Each worker is a ``boxmask work`` subprocess, exactly what a cluster task runs.

A worker killed by a signal (SIGKILL from the out-of-memory killer, a crash) while work is left
is replaced, up to ``max_restarts`` times in all; its shard is taken over at once by the next
claim (a lease of a process that ended on this host is stale immediately). Such a death, seen
by this live launcher while it was not stopping, is recorded as *observed*: it counts against
the image the worker was on (``boxmask.jobs.deaths``). When the launcher dies with its workers
(the whole process group killed) nobody observes anything, and nothing counts. A worker that
exits with an error (exit code 1: disk full, a plan mismatch) is not restarted: it would fail
again.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .deaths import local_process, record_observed_deaths
from .job import Job, JobLike
from .progress import Progress
from .protocol import NoPlanError
from .status import job_status

log = logging.getLogger(__name__)

def visible_gpus() -> list[str]:
    """Ids of the GPUs this process may use, as ``CUDA_VISIBLE_DEVICES`` entries.

    Honours an existing ``CUDA_VISIBLE_DEVICES`` (its entries are passed on, not renumbered).
    """
    try:
        import torch

        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # torch without CUDA runtime
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        entries = [v.strip() for v in visible.split(",") if v.strip()]
        return entries[:n]
    return [str(i) for i in range(n)]


def uses_network(job: JobLike) -> bool:
    """Whether the job's engine or inside-point policy runs a network (and so wants GPUs);
    True when there is no plan to tell. Deciding it from the plan spares the GrabCut and box
    engines the import of torch."""
    from ..engines import NETWORK_ENGINES

    try:
        settings = Job.of(job).settings
    except NoPlanError:
        return True
    return settings.engine in NETWORK_ENGINES or settings.inside_point in ("u2net", "stage1")


MIN_BOXES_PER_WORKER = 200
"""A worker process costs a few seconds to start (imports, engine load) on a small CPU: the default
starts another one only for this many boxes (GrabCut: about 30 s of work on one core)."""


def default_workers(engine: Any, shards: int, boxes: int, cores: int | None = None) -> int:
    """Local workers for ``engine`` on a job of ``shards`` unfinished shards holding ``boxes``
    boxes: one per core (``boxmask.threads.available_cores``, or ``cores``) for an engine whose
    ``CPU_PARALLEL`` is ``"processes"`` and that runs on the CPU, but no more than the shards (a
    worker takes whole shards) nor one per ``MIN_BOXES_PER_WORKER`` boxes; else 1 (one worker,
    in this process, with a thread per core, or the GPU)."""
    from ..threads import available_cores

    device = getattr(engine, "device", None)
    if getattr(engine, "CPU_PARALLEL", "threads") != "processes" or (
            device is not None and getattr(device, "type", "cpu") != "cpu"):
        return 1
    cores = available_cores() if cores is None else cores
    return max(min(cores, shards, boxes // MIN_BOXES_PER_WORKER), 1)


def worker_commands(job: JobLike, n: int, *, device: str | None = None,
                    lease_timeout_s: float | None = None,
                    extra_args: list[str] | None = None) -> list[tuple[list[str], dict[str, str]]]:
    """Command lines and environments of ``n`` local workers of ``job`` (a ``Job`` or its
    output directory).

    GPUs: worker i sees only GPU ``i % n_gpus`` (``CUDA_VISIBLE_DEVICES``), several workers per
    GPU when ``n`` exceeds the GPUs. CPU: each worker gets ``threads_per_worker(n)`` threads
    (``boxmask.threads``: the cores this process may use, affinity and cgroup quota, divided by
    ``n``), passed as ``--threads`` (torch and OpenCV) and ``OMP_NUM_THREADS``.
    """
    from ..threads import threads_per_worker

    out_dir = job.root if isinstance(job, Job) else Path(job)
    gpus = visible_gpus() if device in (None, "auto", "cuda") and uses_network(job) else []
    commands = []
    for i in range(n):
        cmd = [sys.executable, "-m", "boxmask", "work", str(out_dir), "--worker-id",
               f"local-{os.getpid()}-{i}", "--no-progress"]
        env = dict(os.environ)
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = gpus[i % len(gpus)]
            cmd += ["--device", "cuda"]
        else:
            threads = threads_per_worker(n)
            cmd += ["--threads", str(threads)]
            env["OMP_NUM_THREADS"] = str(threads)
            if device not in (None, "auto"):
                cmd += ["--device", device]
        if lease_timeout_s is not None:
            cmd += ["--lease-timeout", str(lease_timeout_s)]
        commands.append((cmd + list(extra_args or []), env))
    return commands


def run_local_workers(job: JobLike, n: int, *, progress: bool = True,
                      max_restarts: int | None = None, poll_s: float = 1.0,
                      **options: Any) -> list[int]:
    """Start ``n`` workers of ``job`` (a ``Job`` or its output directory), show combined
    progress, wait; return their final exit codes.

    SIGINT/SIGTERM to this process is passed on to the workers, which stop cleanly. A worker
    killed by a signal while the job is not complete is restarted (``max_restarts`` in all,
    default ``2 * n``).
    """
    job = Job.of(job)
    status = job_status(job)
    bar = Progress(status["items"]["total"], status["items"]["done"], enabled=progress)
    commands = worker_commands(job, n, **options)
    procs = [subprocess.Popen(cmd, env=env) for cmd, env in commands]
    restarts_left = 2 * n if max_restarts is None else max_restarts
    stopping = False

    def forward(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    seen_dead: set[int] = set()
    try:
        while True:
            for i, p in enumerate(procs):
                code = p.poll()
                if code is None or code >= 0 or stopping:
                    continue  # running, ended by itself, or we are stopping
                if p.pid not in seen_dead:
                    seen_dead.add(p.pid)
                    record_observed_deaths(
                        job, local_process(p.pid), f"launcher pid {os.getpid()}",
                        f"worker process {p.pid} killed by {_signal_name(-code)} while the "
                        "other workers ran")
                if restarts_left <= 0:
                    continue
                st = job_status(job)
                if st["complete"] or not st["shards"]["pending"] + st["shards"]["stale"]:
                    continue
                restarts_left -= 1
                log.warning("worker %d ended with exit code %s; starting a replacement", i, code)
                procs[i] = subprocess.Popen(commands[i][0], env=commands[i][1])
            if all(p.poll() is not None for p in procs):
                break
            _wait_for_an_exit(procs, poll_s)
            st = job_status(job)
            bar.set_counts(st["items"]["done"], st["masks_in_done_shards"],
                           st["errors_in_done_shards"], st["boxes"]["done_in_done_shards"])
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        bar.close()
    return [p.returncode for p in procs]


def _wait_for_an_exit(procs: list[subprocess.Popen], timeout_s: float) -> None:
    """Sleep ``timeout_s`` seconds, or less when one of the running ``procs`` ends."""
    running = [p for p in procs if p.poll() is None]
    end = time.monotonic() + timeout_s
    while running and time.monotonic() < end:
        if any(p.poll() is not None for p in running):
            return
        time.sleep(0.05)


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
