"""Where and how networks run: device choice, native precision checks, TF32, autocast, threads.

Shared by every network engine (IOG, U²-Net), the inside-point policies and training, so that
``"auto"`` and a precision mean the same thing everywhere.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

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
    if precision == "bf16":
        return _cpu_probe("_is_avx512_bf16_supported") or cpu_has_amx()
    if precision == "fp16":
        return _cpu_probe("_is_amx_fp16_supported")
    raise KeyError(precision)


def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tiles (Intel Xeon from Sapphire Rapids on)."""
    return _cpu_probe("_is_amx_tile_supported")


def cpu_kernels() -> str:
    """The widest vector kernels torch dispatches to on this CPU: ``"AVX512"``, ``"AVX2"``,
    ``"DEFAULT"`` (none of those), or another architecture's name (e.g. ``"SVE256"``)."""
    return str(torch.backends.cpu.get_cpu_capability())


def _cpu_probe(name: str) -> bool:
    """torch's CPU feature probe ``torch.cpu.<name>()``; False where this torch lacks it."""
    return bool(getattr(torch.cpu, name, lambda: False)())


def default_batch_size(sizes: dict[str, int], device: torch.device) -> int:
    """An engine's default crops per forward on ``device`` from its table ``sizes``: the key
    ``"cpu-amx"`` on a CPU with AMX (``cpu_has_amx``), else the device type (``"cpu"``,
    ``"cuda"``); 1 for a device the table does not name."""
    key = "cpu-amx" if device.type == "cpu" and cpu_has_amx() else device.type
    return int(sizes.get(key, sizes.get(device.type, 1)))


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
        torch.backends.fp32_precision = "ieee"  # type: ignore[attr-defined]  # torch >= 2.9
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


def set_threads(n: int) -> None:
    """Limit torch and OpenCV to ``n`` threads in this process (``boxmask.threads``)."""
    from .threads import set_threads as limit

    limit(n)
