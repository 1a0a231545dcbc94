"""Weight initialisation for training: official random init, ImageNet ResNet-101, IOG checkpoints.

* ``official_init``: what the official code does before loading anything: the backbone and
  CoarseNet convolutions drawn from ``N(0, sqrt(2 / (k * k * out_channels)))``, their BatchNorms
  weight 1 / bias 0; PSP, FineNet and the click branch keep PyTorch's default init.
* ``init_from_imagenet``: a torchvision ``resnet101`` state dict file (``resnet101-*.pth``):
  ``conv1.weight`` becomes the first 3 input channels of the 5-channel stem, the guidance
  channels start at zero; every other backbone key is copied; ``fc.*`` is dropped.
* ``init_from_checkpoint``: an IOG (or refinement) checkpoint: every tensor whose name and shape
  match is copied. From an IOG checkpoint into a refinement network the PSP module is expanded
  (``expand_psp``) so that the refinement network starts out computing exactly what the IOG
  network computes, whatever its click branch outputs (see ``_expand_psp``).

Each returns an ``InitReport`` that says what was copied and what starts fresh.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..models.checkpoint import CheckpointError, read_state_dict
from ..models.iog import IOGNetworkBase

log = logging.getLogger(__name__)


@dataclass
class InitReport:
    """What an initialisation did."""

    weights: str
    """The weights initialised from (``imagenet:PATH`` or ``checkpoint:LABEL``)."""
    copied: list[str] = field(default_factory=list)
    """Model keys set from those weights."""
    fresh: list[str] = field(default_factory=list)
    """Model keys left at their random initialisation."""
    unused: list[str] = field(default_factory=list)
    """Keys of the weights not used (absent from the model, or of another shape)."""
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"weights": self.weights, "copied": len(self.copied), "fresh": self.fresh,
                "unused": self.unused, "notes": self.notes}

    def log(self) -> None:
        log.info("init from %s: %d tensors copied, %d fresh, %d tensors of the weights unused",
                 self.weights, len(self.copied), len(self.fresh), len(self.unused))
        for note in self.notes:
            log.info("init: %s", note)


def _learnable_keys(model: nn.Module) -> list[str]:
    return [k for k in model.state_dict() if not k.endswith("num_batches_tracked")]


def official_init(model: nn.Module) -> None:
    """The official code's random init (module doc); in place."""
    for prefix in ("backbone", "Coarse_net"):
        module = getattr(model, prefix, None)
        if module is None:
            continue
        for m in module.modules():
            if isinstance(m, nn.Conv2d):
                n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / n))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


def init_from_imagenet(model: nn.Module, path: str | os.PathLike) -> InitReport:
    """Copy a torchvision ``resnet101`` state dict into ``model.backbone`` (module doc).

    Raises ``CheckpointError`` when a backbone key is missing from the file or has another shape
    (e.g. a reduced-width model, or a ResNet-50 file).
    """
    src = read_state_dict(path)
    report = InitReport(f"imagenet:{path}")
    target = model.state_dict()
    problems = []
    updates: dict[str, Tensor] = {}
    for key, value in src.items():
        if key.startswith("fc."):
            report.unused.append(key)
            continue
        name = f"backbone.{key}"
        if name not in target:
            report.unused.append(key)
            continue
        want = target[name]
        if key == "conv1.weight" and value.shape[1] == 3 and want.shape[1] >= 3:
            if value.shape[0] != want.shape[0] or value.shape[2:] != want.shape[2:]:
                problems.append(f"{key}: file {list(value.shape)} vs model {list(want.shape)}")
                continue
            stem = torch.zeros_like(want)
            stem[:, :3] = value
            updates[name] = stem
            report.notes.append(f"{name}: ImageNet RGB filters, channels 3..{want.shape[1] - 1} "
                                "(guidance) zero")
        elif value.shape != want.shape:
            problems.append(f"{key}: file {list(value.shape)} vs model {list(want.shape)}")
        else:
            updates[name] = value
    backbone = [k for k in target if k.startswith("backbone.")
                and not k.endswith("num_batches_tracked")]
    missing = [k for k in backbone if k not in updates]
    if problems or missing:
        raise CheckpointError(
            f"{path} does not fit the backbone: {len(problems)} shape mismatches "
            f"({'; '.join(problems[:3])}), {len(missing)} backbone keys missing "
            f"({', '.join(missing[:3])}); is it a torchvision resnet101 state dict and the "
            "model the official width?")
    _assign(model, updates)
    report.copied = sorted(updates)
    report.fresh = [k for k in _learnable_keys(model) if k not in updates]
    return report


def init_from_checkpoint(model: IOGNetworkBase, path_or_state: Any,
                         expand_psp: bool = True) -> InitReport:
    """Copy every tensor of an IOG checkpoint whose name and shape match ``model``'s (module doc).

    Raises ``CheckpointError`` when nothing matches.
    """
    src = read_state_dict(path_or_state)
    label = path_or_state if isinstance(path_or_state, str | os.PathLike) else "<state dict>"
    report = InitReport(f"checkpoint:{label}")
    target = model.state_dict()
    updates = {k: v for k, v in src.items() if k in target and v.shape == target[k].shape}
    if expand_psp and model.config.refinement and not any(
            k.startswith("iog_points.") for k in src):
        psp = _expand_psp(src, target)
        if psp:
            updates.update(psp)
            report.notes.append("psp4 expanded from the IOG checkpoint: the new input channels "
                                "(click branch) start with zero weight, the network starts out "
                                "equal to the IOG network")
    if not updates:
        raise CheckpointError(f"no tensor of {label} fits the model (is it an IOG checkpoint?)")
    report.unused = sorted(k for k in src if k not in updates)
    _assign(model, updates)
    report.copied = sorted(updates)
    report.fresh = [k for k in _learnable_keys(model) if k not in updates]
    return report


def _expand_psp(src: dict[str, Tensor], target: dict[str, Tensor]) -> dict[str, Tensor]:
    """PSP weights of an IOG network (input ``C`` channels, stages of ``C / 4``) embedded in the
    refinement network's larger PSP (input ``C + g``, stages of ``(C + g) / 4``).

    Each stage conv keeps the IOG weights in its top-left block (the click features enter with
    zero weight); the fusion conv reads the concatenation ``[stage1..4, feats]``: the IOG columns
    go to the matching positions, the columns of the extra stage channels and of the click
    features are zero. So the fused features, and everything after them, equal the IOG
    network's (in eval and in training mode). Returns {} when the shapes do not follow this
    pattern.
    """
    try:
        s_w = src["psp4.stages.0.1.weight"]           # [cs, C, 1, 1]
        t_w = target["psp4.stages.0.1.weight"]        # [ct, C + g, 1, 1]
        b_src = src["psp4.bottleneck.0.weight"]       # [o, 4 cs + C, 1, 1]
        b_tgt = target["psp4.bottleneck.0.weight"]    # [o, 4 ct + C + g, 1, 1]
    except KeyError:
        return {}
    cs, c = s_w.shape[:2]
    ct, cg = t_w.shape[:2]
    if cg < c or ct < cs or b_src.shape[1] != 4 * cs + c or b_tgt.shape[1] != 4 * ct + cg \
            or b_src.shape[0] != b_tgt.shape[0]:
        return {}
    out: dict[str, Tensor] = {}
    for i in range(4):
        w = torch.zeros_like(target[f"psp4.stages.{i}.1.weight"])
        w[:cs, :c] = src[f"psp4.stages.{i}.1.weight"]
        out[f"psp4.stages.{i}.1.weight"] = w
        bn = f"psp4.stages.{i}.2."
        for kind, fill in (("weight", 1.0), ("bias", 0.0), ("running_mean", 0.0),
                           ("running_var", 1.0)):
            t = torch.full_like(target[bn + kind], fill)
            t[:cs] = src[bn + kind]
            out[bn + kind] = t
    b = torch.zeros_like(b_tgt)
    for i in range(4):
        b[:, i * ct:i * ct + cs] = b_src[:, i * cs:(i + 1) * cs]
    b[:, 4 * ct:4 * ct + c] = b_src[:, 4 * cs:]
    out["psp4.bottleneck.0.weight"] = b
    for kind in ("weight", "bias", "running_mean", "running_var"):
        key = f"psp4.bottleneck.1.{kind}"
        if key in src and src[key].shape == target[key].shape:
            out[key] = src[key]
    return out


def _assign(model: nn.Module, updates: dict[str, Tensor]) -> None:
    state = model.state_dict()
    with torch.no_grad():
        for key, value in updates.items():
            state[key].copy_(value.to(state[key].dtype))
