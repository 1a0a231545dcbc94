"""Optimiser, learning-rate schedule and mixed precision of a training run.

Parameter groups follow the official code: the backbone (``backbone.*``) at ``backbone_lr``,
everything else (CoarseNet, FineNet, PSP, the refinement click branch) at ``lr``. SGD applies
its weight decay to every parameter (as the official code does); AdamW only to convolution
weights (BatchNorm parameters are not decayed).
"""

from __future__ import annotations

import math
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import nn

from .config import TrainConfig

MAX_AUTO_WARMUP = 1000


def param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict]:
    """Optimiser parameter groups (see the module doc); each has a ``name``."""
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        part = "backbone" if name.startswith("backbone.") else "heads"
        decay = cfg.optimizer == "sgd" or p.ndim == 4
        groups.setdefault((part, decay), []).append(p)
    out = []
    for (part, decay), params in sorted(groups.items()):
        out.append({
            "name": f"{part}{'' if decay else '-no-decay'}",
            "params": params,
            "lr": cfg.backbone_lr if part == "backbone" else cfg.lr,
            "weight_decay": cfg.weight_decay if decay else 0.0,
        })
    return out


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def warmup_steps(cfg: TrainConfig, total_steps: int) -> int:
    if cfg.warmup_steps >= 0:
        return cfg.warmup_steps
    return min(MAX_AUTO_WARMUP, max(1, round(0.05 * total_steps)))


def lr_factor(step: int, cfg: TrainConfig, total_steps: int) -> float:
    """Multiplier of the base learning rates for optimiser step ``step`` (0-based)."""
    warm = warmup_steps(cfg, total_steps)
    if step < warm:
        return (step + 1) / warm
    if cfg.schedule == "constant":
        return 1.0
    span = max(total_steps - warm, 1)
    progress = min((step - warm) / span, 1.0)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig,
                   total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, cfg, total_steps))


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX)."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``"auto"`` -> bf16 where the device runs it natively, fp16 on older GPUs, else fp32.
    Raises ``ValueError`` for a precision the device cannot train in."""
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if device.type == "cpu" and cpu_has_bf16() else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("fp16 training needs CUDA (gradient scaling); use bf16 or fp32")
    if precision == "bf16" and device.type == "cpu" and not cpu_has_bf16():
        raise ValueError("this CPU has no native bf16 (AVX512-BF16/AMX); use fp32")
    return precision


def autocast(precision: str, device: torch.device) -> AbstractContextManager:
    if precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def make_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """A gradient scaler, active for fp16 only (bf16 and fp32 need none)."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")
