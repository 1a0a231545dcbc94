"""Where and how networks run: device choice, native precision checks, TF32, autocast, threads.

Shared by every network engine (IOG, U²-Net), the inside-point policies and training, so that
``"auto"`` and a precision mean the same thing everywhere.
"""

from __future__ import annotations

import math
import os
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import torch

PRECISIONS = ("fp32", "bf16", "fp16")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"auto"``/None -> CUDA when available, else CPU; anything else as ``torch.device``
    (a CUDA device when CUDA is not available raises ``ValueError``)."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    return dev


def cpu_supports(precision: str) -> bool:
    """Whether this CPU runs ``precision`` natively (bf16: AVX512-BF16 or AMX; fp16: AMX-FP16)."""
    if precision == "fp32":
        return True
    probes = {"bf16": ("_is_avx512_bf16_supported", "_is_amx_tile_supported"),
              "fp16": ("_is_amx_fp16_supported",)}[precision]
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def check_precision(precision: str, device: torch.device) -> None:
    """Raise ``ValueError`` unless ``precision`` is known and runs natively on ``device``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if device.type == "cpu" and not cpu_supports(precision):
        raise ValueError(f"precision {precision!r} is not supported natively by this CPU "
                         "(needs AVX512-BF16/AMX for bf16, AMX-FP16 for fp16); use fp32")
    if device.type == "cuda" and precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise ValueError("this GPU does not support bf16; use fp16 or fp32")


def disable_tf32() -> None:
    """Full fp32 convolutions and matmuls on CUDA (TF32 would change logits by ~1e-3 relative)."""
    try:
        torch.backends.fp32_precision = "ieee"
    except (AttributeError, RuntimeError):  # torch < 2.9, or the legacy flags were set before
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False


def autocast(precision: str, device: torch.device) -> AbstractContextManager:
    """The autocast context of ``precision`` on ``device`` (none for fp32)."""
    if precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def runtime(device: str | torch.device | None, precision: str,
            num_threads: int | None = None) -> torch.device:
    """Set up this process for a network engine: the resolved device (``resolve_device``),
    ``precision`` checked (``check_precision``), torch limited to ``num_threads`` CPU threads
    when given, and TF32 off on CUDA in fp32 (results equal to the CPU's within fp32 rounding)."""
    dev = resolve_device(device)
    check_precision(precision, dev)
    if num_threads:
        torch.set_num_threads(int(num_threads))
    if dev.type == "cuda" and precision == "fp32":
        disable_tf32()
    return dev


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


def set_threads(n: int) -> None:
    """Limit torch and OpenCV to ``n`` threads in this process."""
    import cv2

    torch.set_num_threads(n)
    cv2.setNumThreads(n)
    os.environ.setdefault("OMP_NUM_THREADS", str(n))
