"""IOG guidance against the official implementation: crops, clicks, heatmaps, refinement clicks.

Every number of a parity case is read from its case.json (tests/fixtures/iog_parity/<case>/, see
tests/helpers/iog_cases.py), so a further case folder with the same layout is tested the same way.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from iog_cases import (
    CASES,
    DATA,
    FIXTURES,
    PARITY,
    REFINE_CASES,
    case_clicks_512,
    case_clicks_orig,
    case_image_and_mask,
    load_case,
)
from PIL import Image

from boxmask import guidance as G
from boxmask.boxes import mask_to_box

# --------------------------------------------------------------------------- parity: official chain


@pytest.mark.parametrize("name", CASES)
def test_preprocessing_from_mask_reproduces_the_official_input(name: str) -> None:
    case = load_case(name)
    image, mask = case_image_and_mask(case)
    x, g = G.preprocess_from_mask(image, mask)
    ref = np.load(PARITY / name / "input.npz")["x"][0]
    assert mask_to_box(mask) == tuple(case["tight_box_xyxy_inclusive"])
    assert g.crop_box == tuple(case["crop_box_xyxy_inclusive"])
    assert G.crop_size(g.crop_box)[::-1] == tuple(case["crop_hw"])
    np.testing.assert_array_equal(g.clicks_512(), case_clicks_512(case))
    assert x.dtype == np.float32 and x.shape == ref.shape
    for channel in range(5):
        np.testing.assert_allclose(x[channel], ref[channel], rtol=0, atol=1e-3,
                                   err_msg=f"channel {channel}")


@pytest.mark.parametrize("name", CASES)
def test_user_box_and_inside_point_give_the_official_clicks(name: str) -> None:
    """The user path (tight box + inside point in image pixels) lands on the simulated clicks;
    a corner may move by one 512-space pixel (rounding of the box mapping)."""
    case = load_case(name)
    g = G.guidance_for_box(case["tight_box_xyxy_inclusive"], case_clicks_orig(case)[0])
    assert g.crop_box == tuple(case["crop_box_xyxy_inclusive"])
    clicks = g.clicks_512()
    ref = case_clicks_512(case)
    np.testing.assert_array_equal(clicks[0], ref[0])
    assert np.abs(clicks[1:] - ref[1:]).max() <= 1


@pytest.mark.parametrize("name", CASES)
def test_clicks_map_back_to_image_pixels_with_the_cv2_pixel_centre_rule(name: str) -> None:
    case = load_case(name)
    back = G.points_from_512(case_clicks_512(case), case["crop_box_xyxy_inclusive"])
    np.testing.assert_allclose(back, case_clicks_orig(case), atol=1e-3)
    there = G.points_to_512(back, case["crop_box_xyxy_inclusive"])
    np.testing.assert_allclose(there, case_clicks_512(case), atol=1e-9)


def test_synthetic_ellipse_matches_the_official_reference() -> None:
    ref = json.loads((FIXTURES / "iog_preprocess_reference.json").read_text())
    h, w = ref["synthetic"]["H"], ref["synthetic"]["W"]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    mask = (((xx - 150) / 80) ** 2 + ((yy - 110) / 50) ** 2 <= 1).astype(np.float32)
    image = np.stack([xx % 256, yy % 256, np.full_like(xx, 77)], axis=2)

    x, g = G.preprocess_from_mask(image, mask)

    assert mask_to_box(mask > 0) == tuple(ref["gt_tight_bbox_xyxy"])
    assert g.crop_box == tuple(ref["crop_bbox_xyxy_relax30_zero_pad"])
    points = ref["iog_points_xy_in_512_crop"]
    expected = [points[k] for k in ("inside", "left_top", "left_bottom", "right_top",
                                    "right_bottom")]
    np.testing.assert_array_equal(g.clicks_512(), expected)
    assert list(x.shape) == ref["concat_shape_CHW"]
    for channel, (lo, hi) in enumerate(ref["channel_minmax"]):
        assert x[channel].min() == pytest.approx(lo, abs=1e-3)
        assert x[channel].max() == pytest.approx(hi, abs=1e-3)
    for key, values in ref["concat_sample_pixels_CHW_at_row_col"].items():
        row, col = (int(v) for v in key.split(","))
        np.testing.assert_allclose(x[:, row, col], values, atol=1e-3, err_msg=key)
    ix, iy = g.inside_512
    assert x[3, iy, ix + 5] == pytest.approx(ref["inside_heatmap_at_peak_plus_5px_x"], abs=1e-4)
    assert x[3, iy, ix + 10] == pytest.approx(ref["inside_heatmap_at_peak_plus_10px_x"], abs=1e-4)


# --------------------------------------------------------------------------- geometry


def test_box_mapping_agrees_with_the_official_click_simulation_on_box_masks() -> None:
    """For a rectangular object, mapping its box into 512-space gives the same corner clicks
    as the official simulation on the bilinear-resized mask (upsampled and downsampled crops)."""
    rng = np.random.default_rng(0)
    checked = 0
    while checked < 300:
        h, w = (int(v) for v in rng.integers(40, 1400, 2))
        x0, x1 = sorted(int(v) for v in rng.integers(0, w, 2))
        y0, y1 = sorted(int(v) for v in rng.integers(0, h, 2))
        if x1 - x0 < 1 or y1 - y0 < 1:
            continue
        mask = np.zeros((h, w), np.float32)
        mask[y0:y1 + 1, x0:x1 + 1] = 1
        crop_box = G.crop_box_for((x0, y0, x1, y1))
        simulated = G.clicks_from_mask(G.crop_resized(mask, crop_box))
        assert simulated is not None
        assert G.corner_clicks(G.box_to_512((x0, y0, x1, y1), crop_box)) == simulated[1], (
            (x0, y0, x1, y1), (h, w))
        checked += 1


def test_crop_box_is_not_clipped_and_pads_with_zeros() -> None:
    image = np.full((20, 30, 3), 200, np.uint8)
    crop_box = G.crop_box_for((0, 5, 9, 19))
    assert crop_box == (-30, -25, 39, 49)
    crop = G.crop_zero_padded(image, crop_box)
    assert crop.shape == (75, 70, 3)
    assert (crop[25:45, 30:60] == 200).all()
    crop[25:45, 30:60] = 0
    assert not crop.any()


def test_corner_clicks_clamp_to_512_not_511() -> None:
    assert G.corner_clicks((5, 3, 508, 511)) == ((0, 0), (0, 512), (512, 0), (512, 512))
    assert G.corner_clicks((100, 200, 300, 400)) == ((90, 190), (90, 410), (310, 190),
                                                     (310, 410))


def test_inside_point_rounds_to_the_nearest_512_pixel_and_stays_on_the_grid() -> None:
    crop_box = (0, 0, 1023, 1023)  # two image pixels per 512-space pixel
    assert G.points_to_512(np.array([[0.5, 1022.5]]), crop_box).tolist() == [[0.0, 511.0]]
    assert G.round_to_pixel(np.array([[2.5, -3.0], [600.0, 10.49]])).tolist() == [
        [3, 0], [511, 10]]


def test_box_thinner_than_a_512_pixel_maps_to_one_pixel() -> None:
    crop_box = (0, 0, 5119, 5119)  # ten image pixels per 512-space pixel
    assert G.box_to_512((100, 100, 101, 101), crop_box) == (10, 10, 10, 10)


def test_inside_click_is_the_first_deepest_pixel_and_the_crop_border_counts_as_background() -> None:
    full = np.ones((64, 64), np.float32)
    inside, corners = G.clicks_from_mask(full)
    assert inside == (31, 31)  # centre, not a corner: the border is background
    assert corners == ((0, 0), (0, 64), (64, 0), (64, 64))
    bar = np.zeros((64, 64), np.float32)
    bar[10:13, 5:40] = 1  # ties along the middle row: the first in row-major order wins
    inside, _ = G.clicks_from_mask(bar)
    assert inside == (6, 11)


def test_empty_mask_has_no_clicks() -> None:
    assert G.clicks_from_mask(np.zeros((32, 32), np.float32)) is None
    with pytest.raises(ValueError, match="empty mask"):
        G.preprocess_from_mask(np.zeros((32, 32, 3), np.uint8), np.zeros((32, 32), bool))


# --------------------------------------------------------------------------- heatmaps


def _direct_maps(clicks: np.ndarray, size: int = 512) -> np.ndarray:
    """The heatmaps evaluated pixel by pixel, the way the official helper does it."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)

    def gauss(c: np.ndarray) -> np.ndarray:
        return np.exp(-4 * np.log(2) * ((xx - c[0]) ** 2 + (yy - c[1]) ** 2) / 10.0**2)

    t = np.stack([gauss(clicks[0]), np.max([gauss(c) for c in clicks[1:]], axis=0)])
    t = t.astype(np.float32)
    return 255 * (t - t.min()) / (t.max() - t.min() + 1e-10)


def test_heatmaps_are_fwhm_gaussians_with_the_corner_channel_as_their_max() -> None:
    clicks = np.array([[200, 260], [3, 40], [3, 512], [480, 40], [480, 512]])
    maps = G.guidance_maps(clicks[0], clicks[1:])
    np.testing.assert_allclose(maps, _direct_maps(clicks), rtol=0, atol=1e-4)
    assert maps[0, 260, 200] == 255 and maps[0, 260, 205] == pytest.approx(127.5)


def test_torch_heatmaps_match_numpy() -> None:
    rng = np.random.default_rng(3)
    batch = []
    for _ in range(3):
        x0, x1 = sorted(rng.integers(0, 513, 2))
        y0, y1 = sorted(rng.integers(0, 513, 2))
        inside = rng.integers(0, 512, 2)
        batch.append([inside, (x0, y0), (x0, y1), (x1, y0), (x1, y1)])
    clicks = np.array(batch, dtype=np.int64)
    maps = G.guidance_maps_torch(torch.from_numpy(clicks)).numpy()
    for i, c in enumerate(clicks):
        np.testing.assert_allclose(maps[i], G.guidance_maps(c[0], c[1:]), rtol=0, atol=1e-4)


# --------------------------------------------------------------------------- torch crop twin


@pytest.mark.parametrize("name", CASES)
def test_torch_crop_matches_the_official_input(name: str) -> None:
    case = load_case(name)
    image, _ = case_image_and_mask(case)
    ref = np.load(PARITY / name / "input.npz")["x"][0, :3]
    chw = torch.from_numpy(np.array(image)).permute(2, 0, 1)
    out = G.crop_resized_torch(chw, case["crop_box_xyxy_inclusive"]).numpy()
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-3)


@pytest.mark.parametrize("crop_box", [(-40, -25, 110, 70),     # beyond the top-left, upsampled
                                      (150, 100, 1500, 900),   # beyond the bottom-right, down
                                      (10, 20, 60, 1200),      # mixed scales
                                      (200, 150, 230, 160)])   # inside, strongly upsampled
def test_torch_crop_matches_cv2_on_real_image(crop_box: tuple[int, int, int, int]) -> None:
    image = np.asarray(Image.open(DATA / "voc2012" / "JPEGImages" / "2007_000063.jpg")
                       .convert("RGB"))
    ref = G.crop_resized(image, crop_box).transpose(2, 0, 1)
    chw = torch.from_numpy(np.array(image)).permute(2, 0, 1)
    out = G.crop_resized_torch(chw, crop_box).numpy()
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-3)


# --------------------------------------------------------------------------- refinement clicks


@pytest.mark.parametrize("name", REFINE_CASES)
def test_extra_click_merges_into_the_guidance_map_the_official_way(name: str) -> None:
    case = load_case(name)
    maps = np.load(PARITY / name / "dmaps.npz")
    click = case["dmap1"]["extra_click_512_xy"]
    positive = case["dmap1"]["polarity"].startswith("positive")
    merged = G.add_click(maps["dmap0"][0], click, positive)
    np.testing.assert_array_equal(merged, maps["dmap1"][0])
    twin = G.add_click_torch(torch.from_numpy(maps["dmap0"][0]), click, positive).numpy()
    np.testing.assert_array_equal(twin, maps["dmap1"][0])


def test_negative_click_goes_into_the_outside_channel() -> None:
    maps = np.zeros((2, 64, 64), np.float32)
    merged = G.add_click(maps, (20, 30), positive=False)
    assert merged[0].max() == 0
    assert merged[1, 30, 20] == 255 and merged.dtype == np.float32
    assert merged[1, 30, 25] == 127  # 127.5 truncated, as the official uint8 cast does
