"""The one version of each mask measure, and its empty-mask rule (nothing to measure -> 0.0)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from boxmask.maskmath import (
    deepest_pixel,
    depth,
    mask_iou,
    sigmoid_cuts,
    stability,
    stability_torch,
)


def test_mask_iou_counts_pixels_and_leaves_void_out():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    a[0, :2] = True
    b[0, 1:3] = True
    assert mask_iou(a, b) == pytest.approx(1 / 3)
    void = np.zeros((4, 4), bool)
    void[0, 2] = True
    assert mask_iou(a, b, void) == pytest.approx(1 / 2)


def test_empty_masks_measure_zero():
    empty = np.zeros((3, 3), bool)
    assert mask_iou(empty, empty) == 0.0
    assert stability(np.zeros((3, 3)), 0.4, 0.6) == 0.0
    assert deepest_pixel(empty) is None


def test_stability_is_the_ratio_of_the_two_cuts():
    x = np.array([[0.1, 0.45, 0.55, 0.7, 0.9]])
    assert stability(x, 0.4, 0.6) == pytest.approx(2 / 4)


def test_stability_counts_pixels_above_the_two_cuts_on_probabilities_and_logits():
    probs = (np.arange(100) / 100).reshape(10, 10)
    # > 0.605: 0.61..0.99 (39 values); > 0.405: 0.41..0.99 (59 values)
    assert stability(probs, 0.405, 0.605) == pytest.approx(39 / 59)
    # SAM's cuts at logits -1 and +1, i.e. p > 0.731 over p > 0.269
    logits = np.log(np.clip(probs, 1e-3, 1 - 1e-3) / (1 - np.clip(probs, 1e-3, 1 - 1e-3)))
    expected = (probs > 1 / (1 + np.exp(-1))).sum() / (probs > 1 / (1 + np.exp(1))).sum()
    assert stability(logits, -1.0, 1.0) == pytest.approx(expected)
    lo, hi = sigmoid_cuts(0.25)
    assert 1 / (1 + np.exp(-lo)) == pytest.approx(0.25)
    assert 1 / (1 + np.exp(-hi)) == pytest.approx(0.75)
    with pytest.raises(ValueError):
        sigmoid_cuts(0.5)


def test_stability_torch_is_the_batched_twin():
    rng = np.random.default_rng(0)
    maps = rng.normal(size=(5, 1, 16, 16)).astype(np.float32)
    maps[3] = -9.0  # nothing above the lower cut: 0.0, as in the numpy reference
    lo, hi = sigmoid_cuts(0.2)
    out = stability_torch(torch.from_numpy(maps), lo, hi)
    assert out.dtype == torch.float32 and out.shape == (5,)
    ref = [stability(m, lo, hi) for m in maps]
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-6)
    assert out[3].item() == 0.0


def test_deepest_pixel_and_the_border_rule():
    m = np.zeros((5, 9), bool)
    m[:, :] = True
    assert deepest_pixel(m) == (2, 2)  # first row-major maximum, the border is background
    half = np.zeros((3, 6), bool)
    half[:, :3] = True  # touches the left border; background only on the right
    assert deepest_pixel(half) == (1, 1)
    assert deepest_pixel(half, border_is_background=False) == (0, 0)
    m2 = np.zeros((7, 7), bool)
    m2[1:6, 1:6] = True
    assert deepest_pixel(m2) == (3, 3)
    # anisotropic pixels: depth across the narrow axis counts double
    assert depth(m2, sampling=(2.0, 1.0))[3, 3] == pytest.approx(3.0)
