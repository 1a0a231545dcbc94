"""Run several workers on one machine: one per GPU when there are GPUs, else CPU workers that
share the cores. Each worker is a ``boxmask work`` subprocess, exactly what a cluster task runs."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .progress import Progress
from .status import job_status

log = logging.getLogger(__name__)


def visible_gpus() -> list[int]:
    try:
        import torch

        return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    except Exception:  # torch without CUDA runtime
        return []


def worker_commands(out_dir: str | Path, n: int, *, device: str | None = None,
                    lease_timeout_s: float | None = None,
                    extra_args: list[str] | None = None) -> list[tuple[list[str], dict[str, str]]]:
    """Command lines and environments of ``n`` local workers.

    GPUs: worker i sees only GPU ``i % n_gpus`` (``CUDA_VISIBLE_DEVICES``). CPU: each worker gets
    ``cores // n`` threads (at least 1).
    """
    gpus = visible_gpus() if device in (None, "auto", "cuda") else []
    cores = os.cpu_count() or 1
    commands = []
    for i in range(n):
        cmd = [sys.executable, "-m", "boxmask", "work", str(out_dir), "--worker-id",
               f"local-{os.getpid()}-{i}", "--no-progress"]
        env = dict(os.environ)
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = str(gpus[i % len(gpus)])
            cmd += ["--device", "cuda"]
        else:
            threads = max(cores // n, 1)
            cmd += ["--threads", str(threads)]
            if device not in (None, "auto"):
                cmd += ["--device", device]
        if lease_timeout_s is not None:
            cmd += ["--lease-timeout", str(lease_timeout_s)]
        commands.append((cmd + list(extra_args or []), env))
    return commands


def run_local_workers(out_dir: str | Path, n: int, *, progress: bool = True,
                      **options: Any) -> list[int]:
    """Start ``n`` workers, show combined progress, wait; return their exit codes.

    SIGINT/SIGTERM to this process is passed on to the workers, which stop cleanly.
    """
    status = job_status(out_dir)
    bar = Progress(status["items"]["total"], status["items"]["done"], enabled=progress)
    procs = [subprocess.Popen(cmd, env=env) for cmd, env in worker_commands(out_dir, n, **options)]

    def forward(signum: int, frame: Any) -> None:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while any(p.poll() is None for p in procs):
            time.sleep(1.0)
            st = job_status(out_dir)
            bar.set_counts(st["items"]["done"], st["masks_in_done_shards"],
                           st["errors_in_done_shards"])
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        bar.close()
    return [p.returncode for p in procs]
