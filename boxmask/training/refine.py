"""Refinement-network training: one corrective click simulated from the error of iteration 0.

The official ``train_refine.py`` / ``refinementnetwork.py`` (reference 1.8, 5.2), on any device:

* The backbone encodes the 5-channel input once. Iteration 0 decodes with the IOG click map
  (``x[:, 3:5]``, the inside and corner heatmaps) in the click branch.
* A corrective click per sample (``corrective_click``): the error region
  ``(sigmoid(fine0) > 0.5) XOR (gt > 0.5)``, its Euclidean distance transform (no border
  padding), the first (row-major) maximum. It is **positive** when that pixel is object in the
  ground truth (a missed part), negative otherwise. The click is merged into the click map the
  official way (``guidance.add_click_torch``: ``255 * max(old / 255, g)``, both channels
  truncated to uint8).
* Iteration 1 decodes with the new map. Loss per iteration: the weighted sum of the five output
  losses (officially coarse3 counts twice: weights ``(1, 1, 1, 2, 1)``). Total:
  ``L0`` if the batch-mean IoU of iteration 0 is >= 0.95, else ``0.5 L0 + 0.5 L1``.

Differences from the official code, on purpose:

* Polarity: the official code reads the ground truth at ``[column, row]`` (transposed,
  ``refinementnetwork.py:36-37``), so on most objects the sign of the click is wrong about as often
  as it is right. ``polarity="official"`` reproduces that for a faithful reproduction; the
  default ``"correct"`` reads ``[row, column]``.
* A sample whose prediction has no error gets no click (the official code puts one at (0, 0)).
* No hard-coded ``.cuda()``: the simulation runs where the tensors are.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from .. import guidance as G
from ..maskmath import deepest_pixel
from ..models.refinement import IOGRefinementNetwork
from .losses import crop_iou, multi_output_loss

POLARITIES = ("correct", "official")


def corrective_click(pred_logits: np.ndarray, gt: np.ndarray,
                     polarity: str = "correct") -> tuple[int, int, bool] | None:
    """The simulated corrective click ``(x, y, positive)`` for one ``H x W`` logit map and its
    soft ground truth, or None when the prediction has no error (module doc)."""
    if polarity not in POLARITIES:
        raise ValueError(f"polarity must be one of {POLARITIES}, not {polarity!r}")
    pred = np.asarray(pred_logits) > 0
    ref = np.asarray(gt) > 0.5
    err = pred ^ ref
    deepest = deepest_pixel(err, border_is_background=False)  # the official rule: no padding
    if deepest is None:
        return None
    row, col = deepest
    if polarity == "official":  # gt read at [column, row]; square maps only, as officially
        positive = bool(ref[col, row]) if col < ref.shape[0] and row < ref.shape[1] else False
    else:
        positive = bool(ref[row, col])
    return int(col), int(row), positive


def add_corrective_clicks(maps: Tensor, fine_logits: Tensor, gt: Tensor,
                          polarity: str = "correct", sigma: float = G.SIGMA
                          ) -> tuple[Tensor, list[tuple[int, int, bool] | None]]:
    """New click maps ``[N, 2, S, S]``: ``maps`` with one corrective click per sample merged in.

    ``fine_logits``/``gt``: ``[N, 1, S, S]``. Returns the maps (same device) and the clicks.
    """
    logits = fine_logits.detach().float().cpu().numpy()[:, 0]
    ref = gt.detach().float().cpu().numpy()[:, 0]
    out = maps.detach().clone()
    clicks: list[tuple[int, int, bool] | None] = []
    for i in range(out.shape[0]):
        click = corrective_click(logits[i], ref[i], polarity)
        clicks.append(click)
        if click is not None:
            out[i] = G.add_click_torch(out[i], click[:2], click[2], sigma)
    return out, clicks


def refinement_step(model: IOGRefinementNetwork, x: Tensor, gt: Tensor, void: Tensor,
                    weights: Sequence[float], reduction: str, iou_skip: float = 0.95,
                    polarity: str = "correct", sigma: float = G.SIGMA
                    ) -> tuple[Tensor, dict[str, float], Tensor]:
    """Loss of one batch for the refinement network (module doc).

    Returns ``(loss, metrics, fine logits of iteration 0)``; metrics hold the per-output losses of
    iteration 0, ``loss0``, ``loss1`` (when computed), ``iou0`` and ``iou1``.
    """
    features = model.backbone_features(x)
    maps0 = x[:, 3:5]
    outs0 = model.decode(features, maps0)
    loss0, parts = multi_output_loss(outs0, gt, void, weights, reduction)
    iou0 = crop_iou(outs0[4], gt, void)
    metrics = dict(parts)
    metrics["loss0"] = float(loss0.detach())
    metrics["iou0"] = float(iou0.mean())
    if metrics["iou0"] >= iou_skip:
        return loss0, metrics, outs0[4]
    maps1, _ = add_corrective_clicks(maps0, outs0[4], gt, polarity, sigma)
    outs1 = model.decode(features, maps1)
    loss1, _ = multi_output_loss(outs1, gt, void, weights, reduction)
    metrics["loss1"] = float(loss1.detach())
    metrics["iou1"] = float(crop_iou(outs1[4], gt, void).mean())
    return 0.5 * loss0 + 0.5 * loss1, metrics, outs0[4]


@torch.no_grad()
def refinement_eval(model: IOGRefinementNetwork, x: Tensor, gt: Tensor, void: Tensor,
                    polarity: str = "correct", sigma: float = G.SIGMA
                    ) -> tuple[Tensor, Tensor, Tensor]:
    """``(fine logits of iteration 0, per-sample crop IoU without, with one simulated
    corrective click)``."""
    features = model.backbone_features(x)
    fine0 = model.decode_fine(features, x[:, 3:5])
    maps1, _ = add_corrective_clicks(x[:, 3:5], fine0, gt, polarity, sigma)
    fine1 = model.decode_fine(features, maps1)
    return fine0, crop_iou(fine0, gt, void), crop_iou(fine1, gt, void)
