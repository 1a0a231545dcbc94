"""Deterministic pseudo-random IOG weights used by the parity fixtures (tests/fixtures/iog_parity).

This is the recipe of ``tests/fixtures/iog_parity/README.md`` section 2, verbatim in behaviour: the
official implementation was run with exactly these weights to produce the stored outputs, so a
network that loads them (strictly) and reproduces the outputs has the official forward.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

FIXTURES = Path(__file__).parents[1] / "fixtures"
PARITY = FIXTURES / "iog_parity"
KEY_LISTS = {
    "iog": FIXTURES / "iog_state_dict_keys.json",
    "iog-refinement": FIXTURES / "iog_refinement_state_dict_keys.json",
}

STEM_GAIN = 0.02  # "backbone.conv1.weight" only (its input is RGB 0..255 + heatmaps 0..255)
CONV3_GAIN = 0.2  # every key ending in "conv3.weight" (last 1x1 conv of each bottleneck)
CONV_GAIN = math.sqrt(2)  # every other conv weight (He / fan-in scaling)


def load_keys(arch: str) -> list[tuple[str, list[int]]]:
    """The official ``[[name, shape], ...]`` list of ``arch`` ("iog" or "iog-refinement")."""
    return [(name, list(shape)) for name, shape in json.loads(KEY_LISTS[arch].read_text())]


def parity_state_dict(keys: list[tuple[str, list[int]]], seed: int) -> dict[str, torch.Tensor]:
    """``{name: tensor}`` for the key list, one ``torch.randn`` call per key in list order."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    for name, shape in keys:
        if name.endswith("num_batches_tracked"):
            sd[name] = torch.tensor(0, dtype=torch.int64)  # no randn call for these
            continue
        r = torch.randn(shape, generator=g, dtype=torch.float32)
        kind = name.rsplit(".", 1)[1]
        if len(shape) == 4:  # conv weight [out, in, kh, kw]
            if name == "backbone.conv1.weight":
                gain = STEM_GAIN
            elif name.endswith("conv3.weight"):
                gain = CONV3_GAIN
            else:
                gain = CONV_GAIN
            sd[name] = r * (gain / math.sqrt(shape[1] * shape[2] * shape[3]))
        elif kind == "weight":
            sd[name] = 1.0 + 0.1 * r  # BN gamma
        elif kind == "bias":
            sd[name] = 0.1 * r  # BN beta
        elif kind == "running_mean":
            sd[name] = 0.1 * r
        elif kind == "running_var":
            sd[name] = 1.0 + 0.1 * r.abs()  # in [1, ~1.6], strictly positive
        else:
            raise KeyError(name)
    return sd


def parity_weights(arch: str, seed: int) -> dict[str, torch.Tensor]:
    """The recipe's state dict of ``arch`` for ``seed``."""
    return parity_state_dict(load_keys(arch), seed)
