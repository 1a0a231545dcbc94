"""Loading checkpoints: unwrapping, strict key/shape checks, architecture detection, and the
checks of a weights file: its size, its sha256 and its layout against the network it claims to
hold (``verify_weights_file``).

The released files are raw state dicts saved with ``torch.save(net.state_dict())`` (no wrapper, no
``module.`` prefix, possibly without ``num_batches_tracked`` when written by torch 0.4.0). Files are
always read with ``torch.load(..., map_location="cpu", weights_only=True)``, memory-mapped where the
file allows it: no pickled code runs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from ..hashing import sha256_file as sha256_file  # re-exported for checkpoint users
from .config import IOGConfig
from .iog import IOGNetwork, IOGNetworkBase
from .refinement import IOGRefinementNetwork

WRAPPER_KEYS = ("state_dict", "model", "net")
"""Keys under which training scripts commonly nest the state dict."""

PREFIXES = ("module.", "_orig_mod.")
"""Key prefixes added by ``nn.DataParallel``/DDP and ``torch.compile``; stripped on load."""

_SHOW = 5

StateOrPath = str | os.PathLike | Mapping[str, Any]

ModuleT = TypeVar("ModuleT", bound=nn.Module)


class CheckpointError(ValueError):
    """A checkpoint cannot be read or does not fit the network."""


def read_state_dict(path_or_state: StateOrPath) -> dict[str, Tensor]:
    """The bare ``{name: tensor}`` of a checkpoint file or an in-memory state dict.

    Unwraps ``{"state_dict"|"model"|"net": ...}`` wrappers and strips ``module.`` /
    ``_orig_mod.`` key prefixes. The input mapping is not modified.
    """
    state: Any = _load_raw(path_or_state)
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


def check_state_dict(model: nn.Module, state: Mapping[str, Tensor],
                     hint: str = "(is it an IOG checkpoint of this architecture? see "
                                 "detect_architecture)") -> None:
    """Raise ``CheckpointError`` naming missing/unexpected keys and shape mismatches (with
    ``hint`` when names differ).

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
        parts.append(hint)
    raise CheckpointError("\n  ".join(parts))


def load_checkpoint(model: ModuleT, path_or_state: StateOrPath) -> ModuleT:
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


def _load_raw(path_or_state: StateOrPath) -> Any:
    if isinstance(path_or_state, Mapping):
        return path_or_state
    path = Path(path_or_state)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    try:  # memory-mapped: the tensors are copied once, into the network
        return load_state_file(path)
    except Exception as exc:  # pickle, zip and weights_only errors have no common base
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc


def read_checkpoint(path_or_state: StateOrPath) -> tuple[dict[str, Tensor], dict[str, Any] | None]:
    """``(state dict, config)`` of a checkpoint: ``config`` is the ``"config"`` mapping of a
    ``{"state_dict": ..., "config": {...}}`` file (``IOGConfig.to_json()`` plus extra keys such as
    ``task``), or None for a raw state dict (the released format)."""
    raw = _load_raw(path_or_state)
    config = raw.get("config") if isinstance(raw, Mapping) else None
    if config is not None and not isinstance(config, Mapping):
        raise CheckpointError(f"checkpoint 'config' is a {type(config).__name__}, not a mapping")
    return read_state_dict(raw), (dict(config) if config is not None else None)


def infer_config(state: Mapping[str, Tensor]) -> IOGConfig:
    """The ``IOGConfig`` whose network has the shapes of ``state`` (``input_size`` cannot be seen
    in the weights and is taken as 512). Raises ``CheckpointError`` for a non-IOG state dict."""
    arch = detect_architecture(state)
    try:
        conv1 = state["backbone.conv1.weight"]
        blocks = tuple(
            len({k.split(".")[2] for k in state if k.startswith(f"backbone.layer{i}.")})
            for i in range(1, 5)
        )
        kwargs: dict[str, Any] = {
            "architecture": arch,
            "in_channels": int(conv1.shape[1]),
            "width": int(conv1.shape[0]),
            "blocks": blocks,
            "psp_features": int(state["psp4.bottleneck.0.weight"].shape[0]),
            "decoder_channels": int(state["Coarse_net.laterals.0.0.weight"].shape[0]),
        }
        if arch == "iog-refinement":
            kwargs["guidance_widths"] = tuple(
                int(state[f"iog_points.{i}.weight"].shape[0]) for i in (0, 3, 6, 9))
            kwargs["guidance_features"] = int(state["iog_points.12.weight"].shape[0])
        return IOGConfig(**kwargs)
    except (KeyError, IndexError, ValueError) as exc:
        raise CheckpointError(f"cannot infer the network sizes from the checkpoint: {exc}") from exc


def build_model(config: IOGConfig | Mapping[str, Any] | None = None) -> IOGNetworkBase:
    """A randomly initialised network of ``config`` (an ``IOGConfig`` or its ``to_json()``;
    default: the official IOG network), in ``eval()`` mode."""
    if config is None:
        config = IOGConfig()
    elif not isinstance(config, IOGConfig):
        config = IOGConfig.from_json(dict(config))
    model = IOGRefinementNetwork(config) if config.refinement else IOGNetwork(config)
    return model.eval()


def build_from_checkpoint(path_or_state: StateOrPath) -> IOGNetworkBase:
    """The network a checkpoint holds (``IOGNetwork`` or ``IOGRefinementNetwork``, of the sizes
    its ``config`` states, else of the sizes its tensors have), loaded, on the CPU, in ``eval()``
    mode. The network's ``config`` attribute tells its ``IOGConfig``."""
    state, config = read_checkpoint(path_or_state)
    if config is not None:
        try:
            cfg = IOGConfig.from_json(config)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"invalid model config in checkpoint: {exc}") from exc
        if cfg.architecture != detect_architecture(state):
            raise CheckpointError(f"checkpoint config says {cfg.architecture!r} but its weights "
                                  f"are {detect_architecture(state)!r}")
    else:
        cfg = infer_config(state)
    return load_checkpoint(build_model(cfg), state).eval()


def export_checkpoint(model: nn.Module, path: str | os.PathLike,
                      extra: Mapping[str, Any] | None = None) -> Path:
    """Write ``model``'s weights to ``path`` atomically, loadable with ``weights_only=True``.

    The official architecture is written as a raw state dict (the released format: the official
    code, CVAT and ``load_checkpoint`` read it); any other config as
    ``{"state_dict": ..., "config": {**config.to_json(), **extra}}``, which
    ``build_from_checkpoint`` understands. Tensors are saved from the CPU, contiguous.
    """
    from ..atomic import atomic_open

    cfg = getattr(model, "config", None)
    if not isinstance(cfg, IOGConfig):
        raise CheckpointError(f"{type(model).__name__} has no IOGConfig 'config' attribute")
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    payload: Any = state
    if not cfg.is_official:
        payload = {"state_dict": state, "config": {**cfg.to_json(), **dict(extra or {})}}
    path = Path(path)
    with atomic_open(path, "wb") as f:
        torch.save(payload, f)
    return path


def load_state_file(path: str | os.PathLike) -> Any:
    """What ``path`` holds, read with ``torch.load(weights_only=True)`` on the CPU, memory-mapped
    when the file allows it (the zip format; legacy pickles are read whole). Raises what
    ``torch.load`` raises for a damaged or hostile file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # legacy (non-zip) files cannot be memory-mapped
        return torch.load(path, map_location="cpu", weights_only=True)


def layout_errors(arch: str, state: Any, name: str | None = None) -> list[str]:
    """Why ``state`` (a loaded weights file) is not a state dict of the network ``arch``; empty
    when it is.

    ``arch``: ``"iog"``, ``"iog-refinement"`` (wrappers and ``module.`` prefixes accepted, as
    ``load_checkpoint`` does), ``"u2net"`` or ``"u2netp"`` (a plain ``{name: tensor}`` dict of
    exactly ``U2Net(arch)``'s names and shapes). ``name`` is how messages call the weights
    (default ``arch``).
    """
    from .u2net import VARIANTS, U2Net, variant_of_state_dict

    name = name or arch
    if arch in VARIANTS:
        if not isinstance(state, Mapping) or not all(isinstance(v, Tensor)
                                                     for v in state.values()):
            return ["not a plain {name: tensor} state dict"]
        try:
            variant = variant_of_state_dict(dict(state))
        except ValueError as exc:
            return [str(exc)]
        if variant != arch:
            return [f"holds the {variant} weights, not {name}; install it as {variant}"]
        with torch.device("meta"):
            model: nn.Module = U2Net(arch)
        try:
            check_state_dict(model, state, hint=f"(not the {name} weights?)")
        except CheckpointError as exc:
            return [str(exc)]
        return []
    try:
        with torch.device("meta"):
            model = IOGRefinementNetwork() if arch == "iog-refinement" else IOGNetwork()
        check_state_dict(model, read_state_dict(state))
    except CheckpointError as exc:
        return [str(exc)]
    return []


def verify_weights_file(path: str | os.PathLike, arch: str, *, name: str, payload_bytes: int,
                        size_tolerance: tuple[float, float], recorded_sha256: str | None,
                        official_sha256: str | None,
                        provenance_errors: Sequence[str] = ()) -> dict[str, Any]:
    """Check a weights file that exists; never raises for a bad file.

    ``payload_bytes``: the tensor payload of the network in bytes; the size is plausible within
    the factors ``size_tolerance`` of it. ``recorded_sha256`` (what was recorded when the file was
    stored) and ``official_sha256`` (the published one), where known, must both equal the file's.
    ``provenance_errors``: the caller's findings about where the file came from, listed after the
    hash check. ``arch`` and ``name`` as for ``layout_errors``.

    Returns ``size_bytes``, ``size_plausible``, ``sha256``, ``sha256_recorded``,
    ``sha256_matches``, ``loads`` (``load_state_file`` succeeds), ``keys_match`` (names and
    shapes equal the network's) and ``errors`` (list of str, empty for a good file).
    """
    path = Path(path)
    errors: list[str] = []
    size = path.stat().st_size
    lo, hi = (payload_bytes * f for f in size_tolerance)
    out: dict[str, Any] = {"size_bytes": size, "size_plausible": lo <= size <= hi}
    if not out["size_plausible"]:
        errors.append(f"size {size} B, expected about {payload_bytes} B")
    digest = sha256_file(path)
    expected = [h for h in (recorded_sha256, official_sha256) if h]
    out.update(sha256=digest, sha256_recorded=recorded_sha256,
               sha256_matches=bool(expected) and all(h == digest for h in expected))
    if not expected:
        errors.append("no sha256 recorded (file not fetched/installed by boxmask)")
    elif not out["sha256_matches"]:
        errors.append(f"sha256 {digest} differs from the recorded {expected[0]}: file changed")
    errors.extend(provenance_errors)
    out.update(loads=False, keys_match=False, errors=errors)
    try:
        state = load_state_file(path)
    except Exception as exc:  # unpickling/zip errors of a damaged file
        errors.append(f"cannot load: {type(exc).__name__}: {exc}")
        return out
    layout = layout_errors(arch, state, name)
    errors.extend(layout)
    out.update(loads=True, keys_match=not layout)
    return out
