"""GrabCut engine on real COCO-MVal / DAVIS instances and on the awkward boxes datasets contain.

Real instances come with their ground-truth masks and the tight boxes in ``boxes_from_masks.csv``
(inclusive ``x_min..x_max``, the library convention).
"""

from __future__ import annotations

import csv
from functools import cache
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from boxmask.engines import SegmentRequest, create_engine
from boxmask.engines.grabcut import GrabCutEngine, ellipse_mask, fg_posterior
from boxmask.imageio import decode_image
from boxmask.records import Click

DATA = Path(__file__).parents[1] / "data"


@cache
def instance(dataset: str, image: str) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int, int]]:
    """(RGB image, bool GT mask, library box) of one bundled instance."""
    folder = DATA / dataset
    with open(folder / "boxes_from_masks.csv", newline="") as f:
        row = next(r for r in csv.DictReader(f) if r["image"] == image)
    gt = np.asarray(Image.open(folder / row["mask"])) > 0  # COCO-MVal: 255, DAVIS palette: 1
    box = tuple(int(row[k]) for k in ("x_min", "y_min", "x_max", "y_max"))
    return decode_image(folder / "img" / image).rgb, gt, box


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.logical_and(a, b).sum() / np.logical_or(a, b).sum())


@cache
def engine() -> GrabCutEngine:
    eng = create_engine("grabcut")
    assert isinstance(eng, GrabCutEngine)
    return eng


def segment_one(image, box, eng=None, **request):
    eng = eng or engine()
    return eng.segment([SegmentRequest(image, np.array([box]), **request)])[0][0]


def blob_image(h: int = 120, w: int = 160, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A noisy grey-green background with a red elliptical object in the middle, and its mask."""
    rng = np.random.default_rng(seed)
    img = np.clip(rng.normal((90, 140, 90), 18, (h, w, 3)), 0, 255)
    obj = np.zeros((h, w), np.uint8)
    cv2.ellipse(obj, (w // 2, h // 2), (w // 4, h // 4), 0, 0, 360, 1, -1)
    img[obj > 0] = np.clip(rng.normal((200, 40, 50), 18, (int(obj.sum()), 3)), 0, 255)
    return img.astype(np.uint8), obj > 0


# Floor 0.75: on these instances plain rect-mode GrabCut on the full image (the benchmark's
# baseline) scores 0.56-0.73 (suitcase 0.56, skateboard 0.63, DAVIS 119 0.66, DAVIS 170 0.73), so
# it fails the floor; the engine scores 0.85-0.94, leaving room for numeric drift between OpenCV
# builds. The orange is an easy instance both pass (0.98), a guard against a broken pipeline.
@pytest.mark.parametrize("dataset, image", [
    ("coco_mval", "suitcase00_000000475678.jpg"),
    ("coco_mval", "skateboard00_000000169356.jpg"),
    ("coco_mval", "orange00_000000050679.jpg"),
    ("davis", "119.jpg"),
    ("davis", "170.jpg"),
])
def test_mask_matches_ground_truth_on_real_instances(dataset, image):
    rgb, gt, box = instance(dataset, image)
    pred = segment_one(rgb, box)
    assert pred.mask.shape == gt.shape and pred.mask.dtype == bool
    assert iou(pred.mask, gt) > 0.75
    assert 0.0 <= pred.score <= 1.0


def test_same_input_gives_identical_mask_and_score():
    rgb, _, box = instance("davis", "170.jpg")
    a = segment_one(rgb, box)
    cv2.setRNGSeed(12345)  # whatever state OpenCV's RNG is in, the engine re-seeds it
    b = segment_one(rgb, box, eng=GrabCutEngine())
    assert np.array_equal(a.mask, b.mask)
    assert a.score == b.score


def test_clicks_record_inside_point_and_box_corners():
    rgb, _, box = instance("davis", "170.jpg")
    x0, y0, x1, y1 = box
    pred = segment_one(rgb, box)
    inside = [c for c in pred.clicks if c.kind == "inside"]
    corners = [c for c in pred.clicks if c.kind == "corner"]
    assert len(inside) == 1 and inside[0].positive
    assert (inside[0].x, inside[0].y) == ((x0 + x1) / 2, (y0 + y1) / 2)
    assert {(c.x, c.y) for c in corners} == {(x0, y0), (x1, y0), (x0, y1), (x1, y1)}
    assert not any(c.positive for c in corners)


def test_given_inside_point_is_used_and_lands_in_the_mask():
    rgb, gt, box = instance("davis", "119.jpg")
    ys, xs = np.nonzero(gt)
    point = (float(xs[len(xs) // 3]), float(ys[len(ys) // 3]))  # an object pixel off-centre
    pred = segment_one(rgb, box, inside=np.array([point]))
    inside = next(c for c in pred.clicks if c.kind == "inside")
    assert (inside.x, inside.y) == point
    assert pred.mask[int(point[1]), int(point[0])]


def _largest_error_spot(mask: np.ndarray, gt: np.ndarray) -> tuple[int, int, bool]:
    """The interior-most pixel ``(x, y)`` of the larger error kind, and whether it is a missed
    object pixel (needs a positive click) or a wrong background pixel (negative click)."""
    fn, fp = gt & ~mask, mask & ~gt
    missed = fn.sum() >= fp.sum()
    err = fn if missed else fp
    dist = cv2.distanceTransform(np.pad(err, 1).astype(np.uint8), cv2.DIST_L2, 5)[1:-1, 1:-1]
    y, x = np.unravel_index(np.argmax(dist), dist.shape)
    return int(x), int(y), bool(missed)


@pytest.mark.parametrize("dataset, image, positive", [
    ("coco_mval", "giraffe00_000000302452.jpg", True),   # legs missed: a positive click
    ("davis", "272.jpg", False),                         # background swallowed: a negative click
])
def test_extra_click_on_the_largest_error_fixes_it_and_raises_iou(dataset, image, positive):
    rgb, gt, box = instance(dataset, image)
    before = segment_one(rgb, box)
    x, y, missed = _largest_error_spot(before.mask, gt)
    assert missed == positive  # the instance shows the error kind this case is about
    click = Click(x, y, positive)
    after = segment_one(rgb, box, extra_clicks=[[click]])
    assert after.mask[y, x] == positive
    assert (after.mask.sum() > before.mask.sum()) == positive
    assert iou(after.mask, gt) > iou(before.mask, gt) + 0.02
    assert click in after.clicks


def test_negative_click_overrides_the_default_inside_point():
    rgb, _, box = instance("davis", "170.jpg")
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    assert segment_one(rgb, box).mask[int(cy), int(cx)]
    pred = segment_one(rgb, box, extra_clicks=[[Click(cx, cy, False)]])
    assert not pred.mask[int(cy), int(cx)]


def test_whole_image_box_separates_object_from_background():
    img, obj = blob_image()
    h, w = obj.shape
    pred = segment_one(img, (0, 0, w - 1, h - 1))
    assert "fallback" not in pred.extras and "flag" not in pred.extras
    assert iou(pred.mask, obj) > 0.9
    assert pred.score > 0.5


def test_whole_image_box_that_separates_nothing_scores_zero():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)  # one colour distribution
    pred = segment_one(img, (0, 0, 119, 89))
    # Band and interior share one colour distribution: nothing can be cut away, and the colour
    # models agreeing with the cut (agreement 1) must not pass for confidence.
    assert pred.mask.mean() > 0.95
    assert pred.extras["flag"] == "no_background" and pred.score == 0.0


def test_whole_image_box_on_a_real_frame_never_errors():
    rgb, gt, _ = instance("davis", "170.jpg")
    h, w = gt.shape
    pred = segment_one(rgb, (0, 0, w - 1, h - 1))
    assert pred.mask.any()
    assert 0.0 <= pred.score <= 1.0
    assert pred.extras["crop_xyxy"] == [0, 0, w - 1, h - 1]


@pytest.mark.parametrize("size", [(2, 2), (3, 5), (6, 6)])
def test_tiny_box_gets_the_inscribed_ellipse(size):
    rgb, _, _ = instance("davis", "170.jpg")
    bw, bh = size
    box = (100, 50, 100 + bw - 1, 50 + bh - 1)
    pred = segment_one(rgb, box)
    assert pred.extras["fallback"] == "tiny_box"
    assert pred.score == 0.0
    inside_box = np.zeros(pred.mask.shape, bool)
    inside_box[50:50 + bh, 100:100 + bw] = True
    assert pred.mask.any() and not (pred.mask & ~inside_box).any()
    if size == (2, 2):
        assert pred.mask.sum() == 4  # every pixel centre of a 2x2 box is inside the ellipse
    if size == (6, 6):
        assert pred.mask[50 + 2, 100 + 2] and not pred.mask[50, 100]  # centre in, corner out


def test_ellipse_mask_is_symmetric_and_touches_each_side():
    e = ellipse_mask(9, 15)
    assert np.array_equal(e, e[::-1]) and np.array_equal(e, e[:, ::-1])
    assert e[0].any() and e[-1].any() and e[:, 0].any() and e[:, -1].any()
    assert not e[0, 0]


def test_box_touching_the_border_reaches_the_border():
    rgb, gt, box = instance("coco_mval", "book00_000000375278.jpg")  # right side on the border
    assert box[2] == gt.shape[1] - 1
    pred = segment_one(rgb, box)
    assert iou(pred.mask, gt) > 0.85
    assert pred.mask[:, -1].any()


def test_object_cut_by_the_image_border():
    img, obj = blob_image()
    img, obj = img[:, 60:], obj[:, 60:]  # the ellipse now runs off the left edge
    cols = np.flatnonzero(obj.any(axis=0))
    rows = np.flatnonzero(obj.any(axis=1))
    box = (0, int(rows[0]), int(cols[-1]), int(rows[-1]))
    pred = segment_one(img, box)
    assert iou(pred.mask, obj) > 0.9
    assert pred.mask[:, 0].any()


def test_several_boxes_and_requests_come_back_in_order():
    img, obj = blob_image()
    rgb, _, box = instance("davis", "170.jpg")
    out = engine().segment([
        SegmentRequest(img, np.array([(40, 30, 119, 89), (0, 0, 5, 5)])),
        SegmentRequest(rgb, np.array([box])),
    ])
    assert [len(p) for p in out] == [2, 1]
    assert iou(out[0][0].mask, obj) > 0.9
    assert out[0][1].extras["fallback"] == "tiny_box"
    assert out[1][0].mask.shape == rgb.shape[:2]


def test_uniform_image_does_not_break_the_engine():
    img = np.full((80, 100, 3), 128, np.uint8)
    pred = segment_one(img, (20, 20, 79, 59))
    assert pred.mask.any()
    assert 0.0 <= pred.score <= 1.0


def test_score_is_a_probability_on_real_instances():
    for dataset, image in [("coco_mval", "orange00_000000050679.jpg"), ("davis", "136.jpg")]:
        rgb, _, box = instance(dataset, image)
        pred = segment_one(rgb, box)
        assert 0.0 <= pred.score <= 1.0
        assert 0.0 <= pred.extras["stability"] <= 1.0


def test_posterior_prefers_the_model_fitted_to_the_colour():
    # Two one-component models: foreground around red, background around green.
    def model(mean):
        m = np.zeros(65)
        m[0] = 1.0
        m[5:8] = mean
        m[20:29] = (np.eye(3) * 100.0).ravel()
        return m[None]
    p = fg_posterior(np.array([[200, 40, 40], [40, 200, 40]]), model((40, 200, 40)),
                     model((200, 40, 40)))
    assert p[0] > 0.99 and p[1] < 0.01


def test_describe_records_every_option_and_rejects_unknown_modes():
    d = create_engine("grabcut", iterations=3, keep="largest").describe()
    assert d["name"] == "grabcut" and d["iterations"] == 3 and d["keep"] == "largest"
    assert d != GrabCutEngine().describe()
    with pytest.raises(ValueError):
        GrabCutEngine(keep="biggest")
