"""Losses, crop IoU, corrective-click simulation, optimiser groups and schedules."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from boxmask import guidance as G
from boxmask.models import IOGConfig, build_model
from boxmask.training.config import recipe
from boxmask.training.losses import bce_loss, crop_iou, multi_output_loss
from boxmask.training.optim import lr_factor, param_groups
from boxmask.training.refine import add_corrective_clicks, corrective_click, refinement_step


def official_class_cross_entropy(output: torch.Tensor, label: torch.Tensor,
                                 void: torch.Tensor) -> torch.Tensor:
    """The formula of the official ``class_cross_entropy_loss`` (reference 5.1), written out:
    stable BCE per pixel, void zeroed, summed over pixels, divided by the batch size."""
    labels = (label >= 0.5).float()
    gt_zero = (output >= 0).float()
    val = output * (labels - gt_zero) - torch.log(1 + torch.exp(output - 2 * output * gt_zero))
    w = (void <= 0.5).float()
    return (-(labels * val * w) - ((1 - labels) * val * w)).sum() / output.shape[0]


@pytest.fixture
def maps() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 1, 16, 16, generator=g) * 4
    gt = torch.rand(3, 1, 16, 16, generator=g)
    void = (torch.rand(3, 1, 16, 16, generator=g) > 0.8).float()
    return logits, gt, void


def test_summed_bce_equals_the_official_loss_formula(maps):
    logits, gt, void = maps
    assert torch.allclose(bce_loss(logits, gt, void, "sum"),
                          official_class_cross_entropy(logits, gt, void), rtol=1e-5)


def test_void_pixels_do_not_count_and_mean_divides_by_the_valid_pixels(maps):
    logits, gt, void = maps
    moved = logits.clone()
    moved[void > 0.5] = 1e4 * torch.sign(0.5 - gt[void > 0.5])  # hopelessly wrong, but void
    assert torch.allclose(bce_loss(moved, gt, void), bce_loss(logits, gt, void))
    valid = (void <= 0.5).sum()
    assert torch.allclose(bce_loss(logits, gt, void, "mean") * valid,
                          bce_loss(logits, gt, void, "sum") * logits.shape[0], rtol=1e-5)


def test_multi_output_loss_weights_the_five_outputs(maps):
    logits, gt, void = maps
    outs = [logits + k for k in range(5)]
    total, parts = multi_output_loss(outs, gt, void, (1, 1, 1, 2, 1), "mean")
    expected = sum(w * bce_loss(o, gt, void, "mean") for w, o in zip((1, 1, 1, 2, 1), outs,
                                                                       strict=True))
    assert torch.allclose(total, expected)
    assert list(parts) == ["coarse0", "coarse1", "coarse2", "coarse3", "fine"]


def test_crop_iou_counts_pixels_and_ignores_void():
    gt = torch.zeros(1, 1, 10, 10)
    gt[..., :5, :] = 1
    logits = torch.full((1, 1, 10, 10), -5.0)
    logits[..., :4, :] = 5
    assert crop_iou(logits, gt).item() == pytest.approx(40 / 50)
    void = torch.zeros_like(gt)
    void[..., 4, :] = 1  # the missed row is void
    assert crop_iou(logits, gt, void).item() == pytest.approx(1.0)


# --------------------------------------------------------------------------- corrective clicks


def square_case() -> tuple[np.ndarray, np.ndarray]:
    gt = np.zeros((64, 64), np.float32)
    gt[8:56, 8:56] = 1
    return gt, np.where(gt > 0.5, 5.0, -5.0).astype(np.float32)


def test_missed_object_part_gets_a_positive_click_at_its_centre():
    gt, logits = square_case()
    logits[10:30, 36:54] = -5.0  # a missed block: rows 10..29, columns 36..53
    x, y, positive = corrective_click(logits, gt)
    assert positive and 10 <= y <= 29 and 36 <= x <= 53
    # deepest inside the block: 9 px from its nearest side (the block is 18 columns wide)
    assert min(y - 10, 29 - y, x - 36, 53 - x) + 1 == 9


def test_false_positive_region_gets_a_negative_click():
    gt, logits = square_case()
    logits[58:64, 0:30] = 5.0
    x, y, positive = corrective_click(logits, gt)
    assert not positive and y >= 58 and x < 30


def test_official_polarity_reads_the_ground_truth_transposed():
    gt = np.zeros((64, 64), np.float32)
    gt[40:64, :] = 1  # the object: a band over the bottom rows
    logits = np.where(gt > 0.5, 5.0, -5.0).astype(np.float32)
    logits[44:60, 4:28] = -5.0  # a missed block, left in the band
    x, y, positive = corrective_click(logits, gt, "correct")
    assert positive and gt[y, x] == 1
    assert gt[x, y] == 0  # the transposed pixel (row = x < 40) is background...
    assert corrective_click(logits, gt, "official")[2] is False  # so the official one is negative


def test_perfect_prediction_gets_no_click():
    gt, logits = square_case()
    assert corrective_click(logits, gt) is None


def test_corrective_clicks_are_merged_into_their_channel():
    gt, logits = square_case()
    logits[10:30, 36:54] = -5.0
    maps = torch.zeros(1, 2, 64, 64)
    new, clicks = add_corrective_clicks(maps, torch.from_numpy(logits)[None, None],
                                        torch.from_numpy(gt)[None, None], sigma=10)
    x, y, positive = clicks[0]
    assert positive and new[0, 0, y, x] == 255 and not new[0, 1].any()
    expected = G.add_click(np.zeros((2, 64, 64), np.float32), (x, y), True, sigma=10)
    np.testing.assert_array_equal(new[0].numpy(), expected)


def test_refinement_step_trains_the_click_branch_on_the_cpu():
    torch.manual_seed(0)
    model = build_model(IOGConfig.preset("tiny", "iog-refinement", input_size=64)).train()
    x = torch.rand(2, 5, 64, 64) * 255
    gt = torch.zeros(2, 1, 64, 64)
    gt[..., 16:48, 16:48] = 1
    loss, metrics, fine = refinement_step(model, x, gt, torch.zeros_like(gt), (1, 1, 1, 2, 1),
                                          "mean", iou_skip=0.95, sigma=2.5)
    assert torch.isfinite(loss) and fine.shape == (2, 1, 64, 64)
    assert "loss1" in metrics and "iou1" in metrics  # an untrained net is far from 0.95 IoU
    loss.backward()
    assert model.iog_points[0].weight.grad.abs().sum() > 0


# --------------------------------------------------------------------------- optimisation


def test_official_groups_put_the_backbone_at_a_tenth_of_the_heads_rate():
    model = build_model(IOGConfig.preset("tiny"))
    groups = {g["name"]: g for g in param_groups(model, recipe("official"))}
    assert set(groups) == {"backbone", "heads"}
    assert groups["backbone"]["lr"] == 1e-8 and groups["heads"]["lr"] == 1e-7
    n_backbone = sum(p.numel() for p in model.backbone.parameters())
    assert sum(p.numel() for p in groups["backbone"]["params"]) == n_backbone
    assert all(g["weight_decay"] == 5e-4 for g in groups.values())


def test_modern_groups_do_not_decay_batchnorm():
    model = build_model(IOGConfig.preset("tiny"))
    groups = {g["name"]: g for g in param_groups(model, recipe("modern"))}
    assert groups["heads-no-decay"]["weight_decay"] == 0
    assert all(p.ndim == 1 for p in groups["heads-no-decay"]["params"])
    assert all(p.ndim == 4 for p in groups["heads"]["params"])


def test_schedules():
    official = recipe("official")
    assert all(lr_factor(s, official, 100) == 1.0 for s in (0, 50, 99))
    modern = recipe("modern", warmup_steps=10)
    assert lr_factor(0, modern, 110) == pytest.approx(0.1)
    assert lr_factor(9, modern, 110) == pytest.approx(1.0)
    assert lr_factor(60, modern, 110) == pytest.approx(0.01 + 0.99 * 0.5)
    assert lr_factor(110, modern, 110) == pytest.approx(0.01)
    assert math.isclose(lr_factor(10, modern, 110), 1.0)
