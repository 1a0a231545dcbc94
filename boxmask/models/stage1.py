"""The first-stage network at inference: inside points from boxes alone (the two-stage method).

The stage-1 network is the IOG network trained with the **inside channel empty**: it sees the
crop of the box (+- 30 px) and the four corner clicks, and learns the object mask
(``boxmask.guidance.CropSettings(inside=False)``; trained by ``boxmask train --task
stage1``). Because the architecture is IOG's,
it can start from an IOG checkpoint and be fine-tuned.

At inference (``stage1_inside_points``) the inside point of a box is the distance-transform
maximum of the stage-1 mask in the network's S-space (512): the same rule that places the inside
click when IOG is trained (``guidance.clicks_from_mask``), so the point IOG then receives is of
the kind it was trained with. The mask is cut to the box (pixels of the S-space box only), the
distance transform treats the outside of that region as background, and the point is mapped back
to image pixels. A box whose predicted mask is empty gets its centre.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import numpy as np
import torch
from torch import nn

from .. import guidance as G
from ..boxes import int_box
from ..guidance import CropSettings, box_input
from ..maskmath import deepest_pixel
from .checkpoint import build_from_checkpoint, read_checkpoint
from .iog import IOGNetworkBase


def load_stage1(path: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """A stage-1 network from a checkpoint written by ``boxmask train --task stage1``, in eval
    mode on ``device``.

    A checkpoint with a config must say ``task: stage1``. A raw state dict (the official
    architecture is exported without a config) is accepted when the ``<name>.json`` written
    beside it says ``task: stage1``, or when there is no such file (then the caller vouches).
    Raises ``ValueError`` for a checkpoint of another task (an IOG network expects an inside
    click and gives poor box-only masks).
    """
    _, config = read_checkpoint(path)
    task = (config or {}).get("task")
    sidecar = Path(path).with_suffix(".json")
    if task is None and sidecar.is_file():
        task = json.loads(sidecar.read_text()).get("model_config", {}).get("task")
    if task not in (None, "stage1"):
        raise ValueError(f"{path} was trained for task {task!r}, not 'stage1'")
    return build_from_checkpoint(path).to(device).eval()


def model_input_size(model: nn.Module) -> int:
    """Side of the model's square input (its ``config.input_size``; 512 if it has no config)."""
    cfg = getattr(model, "config", None)
    return int(getattr(cfg, "input_size", G.INPUT_SIZE))


def inside_point_512(fine_logits: np.ndarray, box_512: Sequence[int]) -> tuple[int, int] | None:
    """Distance-transform maximum ``(x, y)`` of ``fine_logits > 0`` restricted to the S-space
    box ``box_512`` (inclusive pixels); None when that mask is empty."""
    x0, y0, x1, y1 = (int(v) for v in box_512)
    region = np.asarray(fine_logits)[y0:y1 + 1, x0:x1 + 1] > 0
    deepest = deepest_pixel(region)
    if deepest is None:
        return None
    row, col = deepest
    return x0 + col, y0 + row


@torch.no_grad()
def stage1_inside_points(model: nn.Module, image_rgb: np.ndarray,
                         boxes_xyxy: np.ndarray | Sequence[Sequence[int]],
                         batch_size: int = 8) -> np.ndarray:
    """Inside points for boxes from a stage-1 network.

    ``image_rgb``: H x W x 3 uint8 RGB. ``boxes_xyxy``: (N, 4) library boxes (0-based, inclusive
    pixel indices). Returns (N, 2) float64 points ``(x, y)`` in image pixels. The model runs in
    eval mode on the device of its parameters (it is put in eval mode and left there).
    """
    boxes = np.asarray(boxes_xyxy, dtype=np.int64).reshape(-1, 4)
    out = np.zeros((len(boxes), 2), dtype=np.float64)
    if len(boxes) == 0:
        return out
    model.eval()
    device = next(model.parameters()).device
    settings = CropSettings(size=model_input_size(model), inside=False)
    image = np.asarray(image_rgb)
    for start in range(0, len(boxes), batch_size):
        chunk = boxes[start:start + batch_size]
        inputs, guides = [], []
        for box in chunk:
            x, g = box_input(image, int_box(box), settings)
            inputs.append(x)
            guides.append(g)
        xb = torch.from_numpy(np.stack(inputs)).to(device)
        fine = _fine(model, xb).float().cpu().numpy()[:, 0]
        for j, (box, g) in enumerate(zip(chunk, guides, strict=True)):
            box_s = G.box_to_512(box, g.crop_box, settings.size)
            p = inside_point_512(fine[j], box_s)
            if p is None:
                out[start + j] = ((box[0] + box[2]) / 2.0, (box[1] + box[3]) / 2.0)
            else:
                out[start + j] = G.points_from_512(np.array([p]), g.crop_box, settings.size)[0]
    return out


def _fine(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    # any module with the IOG family's forward contract (``IOGNetworkBase.fine_logits``); a
    # refinement network used as stage 1 gets no extra click
    return cast(IOGNetworkBase, model).fine_logits(x)
