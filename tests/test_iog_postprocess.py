"""IOG post-processing against the official implementation: sigmoid, bicubic resize, paste-back,
and the stability score."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from iog_cases import CASES, PARITY, load_case

from boxmask import guidance as G


@pytest.mark.parametrize("name", CASES)
def test_paste_back_of_the_stored_logits_reproduces_the_official_probabilities(name: str) -> None:
    case = load_case(name)
    fine = np.load(PARITY / name / "outputs.npz")["fine"]
    ref = np.load(PARITY / name / "prob_full.npz")["p"]
    p = G.probability_full(fine[0, 0], case["crop_box_xyxy_inclusive"], case["image_hw"])
    assert p.shape == tuple(case["image_hw"]) and p.dtype == np.float32
    np.testing.assert_allclose(p, ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", CASES)
def test_torch_paste_back_matches_the_official_probabilities(name: str) -> None:
    case = load_case(name)
    fine = torch.from_numpy(np.load(PARITY / name / "outputs.npz")["fine"])
    ref = np.load(PARITY / name / "prob_full.npz")["p"]
    crop = G.probability_crop_torch(fine, case["crop_box_xyxy_inclusive"]).numpy()
    p = G.paste(crop, case["crop_box_xyxy_inclusive"], case["image_hw"])
    np.testing.assert_allclose(p, ref, rtol=0, atol=1e-5)


def test_paste_keeps_only_the_part_of_the_crop_inside_the_image() -> None:
    crop = np.arange(1, 6 * 8 + 1, dtype=np.float32).reshape(6, 8)  # 8 wide, 6 high
    out = G.paste(crop, (-3, 2, 4, 7), (5, 4))                      # 3 columns left of the image
    expected = np.zeros((5, 4), np.float32)
    expected[2:5, 0:4] = crop[0:3, 3:7]
    np.testing.assert_array_equal(out, expected)
    assert not G.paste(crop, (10, 10, 17, 15), (5, 4)).any()        # crop entirely outside


def test_probabilities_are_zero_outside_the_crop_box() -> None:
    logits = np.full((512, 512), 4.0, np.float32)
    p = G.probability_full(logits, (10, 20, 49, 39), (60, 80))
    assert p[20:40, 10:50] == pytest.approx(1 / (1 + np.exp(-4.0)), abs=1e-6)
    p[20:40, 10:50] = 0
    assert not p.any()


def test_stability_score_is_the_iou_of_the_masks_at_the_two_thresholds() -> None:
    logits = np.full((1, 1, 32, 32), -5.0, np.float32)
    logits[0, 0, :10, :10] = 3.0      # p = 0.95: in both masks (100 px)
    logits[0, 0, 20:, 20:] = 0.5      # p = 0.62: only in the loose mask at 0.25 (144 px)
    logits[0, 0, 15, :] = -0.8        # p = 0.31: only in the loose mask (32 px)
    assert G.stability_score(logits, 0.25) == pytest.approx(100 / 276)
    assert G.stability_score(logits, 0.15) == pytest.approx(100 / 244)  # 0.31 < 0.35
    assert G.stability_score(logits, 0.1) == 1.0                        # 0.62 > 0.6
    twin = G.stability_score_torch(torch.from_numpy(logits), 0.25)
    assert twin.shape == (1,) and twin.item() == pytest.approx(100 / 276)


def test_stability_score_of_an_empty_prediction_is_zero() -> None:
    logits = np.full((2, 1, 16, 16), -6.0, np.float32)
    logits[1, 0, 4:8, 4:8] = 6.0
    assert G.stability_score(logits[0]) == 0.0
    assert G.stability_score_torch(torch.from_numpy(logits)).tolist() == [0.0, 1.0]
