"""Losses and crop-space IoU for IOG training.

The official loss (``class_cross_entropy_loss`` of the IOG code, reference 5.1) is the binary
cross-entropy with logits per pixel, labels ``gt >= 0.5``, void pixels (``void > 0.5``) excluded,
**summed over pixels and divided by the batch size** (``reduction="sum"``); it is applied to all
five outputs with weight 1 and the sum is the training loss. Its scale (~10^5 per sample at 512^2)
is why the official learning rates are 1e-8 / 1e-7. ``reduction="mean"`` divides by the number of
non-void pixels instead, which makes the loss independent of the input size and lets ordinary
learning rates work.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

OUTPUT_NAMES = ("coarse0", "coarse1", "coarse2", "coarse3", "fine")
REDUCTIONS = ("sum", "mean")


def bce_loss(logits: Tensor, gt: Tensor, void: Tensor | None = None,
             reduction: str = "sum") -> Tensor:
    """BCE with logits of ``[N, 1, H, W]`` maps against ``gt`` (soft, thresholded at 0.5).

    ``void`` (same shape, soft) marks pixels to ignore (> 0.5). ``reduction``: ``"sum"`` = sum
    over pixels / N (official), ``"mean"`` = mean over non-void pixels. Computed in float32.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, not {reduction!r}")
    labels = (gt >= 0.5).to(torch.float32)
    per_pixel = F.binary_cross_entropy_with_logits(logits.float(), labels, reduction="none")
    if void is not None:
        keep = (void <= 0.5).to(torch.float32)
        per_pixel = per_pixel * keep
        count = keep.sum()
    else:
        count = torch.tensor(float(per_pixel.numel()), device=per_pixel.device)
    if reduction == "sum":
        return per_pixel.sum() / logits.shape[0]
    return per_pixel.sum() / count.clamp(min=1.0)


def multi_output_loss(outputs: Sequence[Tensor], gt: Tensor, void: Tensor | None,
                      weights: Sequence[float] = (1, 1, 1, 1, 1),
                      reduction: str = "sum") -> tuple[Tensor, dict[str, float]]:
    """Weighted sum of ``bce_loss`` over the five outputs ``[coarse0..3, fine]``; returns
    ``(total, {output name: its unweighted loss})``."""
    if len(outputs) != len(weights):
        raise ValueError(f"{len(outputs)} outputs but {len(weights)} weights")
    total = outputs[0].new_zeros((), dtype=torch.float32)
    parts: dict[str, float] = {}
    for name, out, w in zip(OUTPUT_NAMES, outputs, weights, strict=True):
        value = bce_loss(out, gt, void, reduction)
        parts[name] = float(value.detach())
        if w:
            total = total + w * value
    return total, parts


def crop_iou(logits: Tensor, gt: Tensor, void: Tensor | None = None) -> Tensor:
    """Per-sample IoU ``[N]`` of ``logits > 0`` (sigmoid > 0.5) and ``gt >= 0.5`` on the crop,
    void pixels (``> 0.5``) excluded; 1 where both masks are empty."""
    pred = logits.detach() > 0
    ref = gt >= 0.5
    if void is not None:
        keep = void <= 0.5
        pred, ref = pred & keep, ref & keep
    inter = (pred & ref).flatten(1).sum(1).float()
    union = (pred | ref).flatten(1).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
