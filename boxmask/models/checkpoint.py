"""Loading IOG checkpoints: unwrapping, strict key/shape checks, architecture detection.

The released files are raw state dicts saved with ``torch.save(net.state_dict())`` (no wrapper, no
``module.`` prefix, possibly without ``num_batches_tracked`` when written by torch 0.4.0). Files are
always read with ``torch.load(..., map_location="cpu", weights_only=True)``: no pickled code runs.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .iog import IOGNetwork
from .refinement import IOGRefinementNetwork

WRAPPER_KEYS = ("state_dict", "model", "net")
"""Keys under which training scripts commonly nest the state dict."""

PREFIXES = ("module.", "_orig_mod.")
"""Key prefixes added by ``nn.DataParallel``/DDP and ``torch.compile``; stripped on load."""

_SHOW = 5

StateOrPath = str | os.PathLike | Mapping[str, Any]


class CheckpointError(ValueError):
    """A checkpoint cannot be read or does not fit the network."""


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def read_state_dict(path_or_state: StateOrPath) -> dict[str, Tensor]:
    """The bare ``{name: tensor}`` of a checkpoint file or an in-memory state dict.

    Unwraps ``{"state_dict"|"model"|"net": ...}`` wrappers and strips ``module.`` /
    ``_orig_mod.`` key prefixes. The input mapping is not modified.
    """
    if isinstance(path_or_state, Mapping):
        state: Any = path_or_state
    else:
        path = Path(path_or_state)
        if not path.is_file():
            raise CheckpointError(f"checkpoint file not found: {path}")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # pickle, zip and weights_only errors have no common base
            raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    for _ in range(2):  # e.g. {"model": {"state_dict": ...}}
        if not isinstance(state, Mapping):
            break
        nested = [k for k in WRAPPER_KEYS if isinstance(state.get(k), Mapping)]
        if not nested or any(isinstance(v, Tensor) for v in state.values()):
            break
        state = state[nested[0]]
    if not isinstance(state, Mapping) or not state:
        raise CheckpointError(f"not a state dict: {type(state).__name__}")
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if not isinstance(value, Tensor):
            raise CheckpointError(f"entry {key!r} is a {type(value).__name__}, not a tensor")
        name = str(key)
        for prefix in PREFIXES:
            if name.startswith(prefix):
                name = name[len(prefix):]
        out[name] = value
    return out


def detect_architecture(path_or_state: StateOrPath) -> str:
    """``"iog-refinement"`` if the checkpoint has the guidance branch (``iog_points.*``), ``"iog"``
    if it has the IOG backbone only; ``CheckpointError`` for anything else."""
    state = read_state_dict(path_or_state)
    if "backbone.conv1.weight" not in state or "Fine_net.final_predict.1.weight" not in state:
        raise CheckpointError(
            "not an IOG checkpoint: no backbone.conv1.weight / Fine_net.final_predict.1.weight "
            f"among its {len(state)} keys (first: {list(state)[:_SHOW]})"
        )
    return "iog-refinement" if any(k.startswith("iog_points.") for k in state) else "iog"


def _listing(items: list[str]) -> str:
    more = f", ... ({len(items) - _SHOW} more)" if len(items) > _SHOW else ""
    return ", ".join(items[:_SHOW]) + more


def check_state_dict(model: nn.Module, state: Mapping[str, Tensor]) -> None:
    """Raise ``CheckpointError`` naming missing/unexpected keys and shape mismatches.

    A missing ``num_batches_tracked`` is accepted (checkpoints written by torch 0.4.0).
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k}: checkpoint {list(v.shape)} vs model {list(expected[k].shape)}"
        for k, v in state.items()
        if k in expected and v.shape != expected[k].shape
    ]
    if not (missing or unexpected or mismatched):
        return
    parts = [f"checkpoint does not fit {type(model).__name__}:"]
    if missing:
        parts.append(f"{len(missing)} missing keys: {_listing(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys: {_listing(unexpected)}")
    if mismatched:
        parts.append(f"{len(mismatched)} shape mismatches: {_listing(mismatched)}")
    if missing or unexpected:
        parts.append("(is it an IOG checkpoint of this architecture? see detect_architecture)")
    raise CheckpointError("\n  ".join(parts))


def load_checkpoint(model: nn.Module, path_or_state: StateOrPath) -> nn.Module:
    """Load a checkpoint file or state dict into ``model`` strictly; returns ``model``.

    Accepts raw state dicts, ``{"state_dict"|"model"|"net": ...}`` wrappers and ``module.``-prefixed
    keys. Tensors are copied into the model's parameters (keeping the model's dtype and device).
    """
    state = read_state_dict(path_or_state)
    check_state_dict(model, state)
    full = dict(state)
    for key, value in model.state_dict().items():
        if key not in full:  # num_batches_tracked of a torch 0.4.0 file
            full[key] = torch.zeros_like(value, device="cpu")
    model.load_state_dict(full, strict=True)
    return model


def build_from_checkpoint(path_or_state: StateOrPath) -> nn.Module:
    """The network a checkpoint holds (``IOGNetwork`` or ``IOGRefinementNetwork``), loaded, on the
    CPU, in ``eval()`` mode."""
    state = read_state_dict(path_or_state)
    arch = detect_architecture(state)
    model = IOGRefinementNetwork() if arch == "iog-refinement" else IOGNetwork()
    return load_checkpoint(model, state).eval()
