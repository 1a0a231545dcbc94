"""Inside-point policies on real images: where the click goes, when iterating stops, what is
recorded, and a conversion that uses a policy end to end."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from boxmask.api import convert
from boxmask.engines import create_engine
from boxmask.engines.base import (
    Engine,
    Prediction,
    SegmentRequest,
    default_inside_points,
    iog_clicks,
)
from boxmask.jobs.plan import Settings
from boxmask.points import (
    POLICIES,
    IteratePolicy,
    create_policy,
    interior_point,
    network_distance,
)

DATA = Path(__file__).parent / "data"
COCO_SOURCE = DATA / "readers" / "coco" / "instances_mval.json"

# pycocotools 2.0 with numpy 2 warns on every decode; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def instance(dataset: str, image: str) -> tuple[np.ndarray, tuple[int, int, int, int], np.ndarray]:
    """(RGB image, tight GT box, GT mask) of one bundled instance (``gt > 0``)."""
    folder = DATA / dataset
    with open(folder / "boxes_from_masks.csv", newline="") as f:
        row = next(r for r in csv.DictReader(f) if r["image"] == image)
    rgb = np.asarray(Image.open(folder / "img" / image).convert("RGB"))
    gt = np.asarray(Image.open(folder / row["mask"])) > 0
    box = tuple(int(row[k]) for k in ("x_min", "y_min", "x_max", "y_max"))
    return rgb, box, gt


def on(mask: np.ndarray, point) -> bool:
    x, y = (int(np.floor(v + 0.5)) for v in point)
    return bool(mask[y, x])


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def inside_click(pred: Prediction) -> tuple[float, float]:
    (click,) = [c for c in pred.clicks if c.kind == "inside"]
    return click.x, click.y


def run(policy, engine, rgb, boxes, inside=None) -> list[Prediction]:
    request = SegmentRequest(image=rgb, boxes=np.array(boxes), inside=inside)
    return policy.segment(engine, [request])[0]


# --------------------------------------------------------------------------- the interior point


def test_a_filled_box_keeps_its_centre_as_interior_point():
    # A rectangle's deepest points form a ridge through its centre; the tie goes to the point
    # nearest the current one, so a full box does not push the click off centre.
    mask = np.zeros((200, 300), bool)
    box = (40, 50, 239, 109)  # 200 x 60, centre (139.5, 79.5)
    mask[50:110, 40:240] = True
    x, y = interior_point(mask, box, near=(139.5, 79.5))
    assert abs(x - 139.5) <= 0.5 and abs(y - 79.5) <= 0.5


def test_the_interior_point_of_a_ring_lies_on_the_ring_not_in_its_hole():
    yy, xx = np.mgrid[:201, :201]
    r = np.hypot(xx - 100, yy - 100)
    ring = (r >= 40) & (r <= 90)
    x, y = interior_point(ring, (10, 10, 190, 190), near=(100, 100))
    assert ring[y, x]
    assert 55 <= np.hypot(x - 100, y - 100) <= 75  # the middle of the band is at radius 65


def test_the_interior_point_ignores_the_mask_outside_the_box_and_none_for_an_empty_box():
    mask = np.zeros((100, 100), bool)
    mask[:, :60] = True  # a big region, mostly left of the box
    box = (50, 20, 90, 80)
    x, y = interior_point(mask, box, near=(70, 50))
    assert 50 <= x <= 59 and 20 <= y <= 80  # the strip of the mask inside the box
    assert interior_point(mask, (70, 20, 90, 80)) is None


# --------------------------------------------------------------------------- iterate, real images


@pytest.mark.parametrize("dataset,image", [("coco_mval", "elephant00_000000183648.jpg"),
                                           ("davis", "102.jpg")])
def test_iterate_moves_an_off_object_centre_onto_the_object_without_losing_iou(dataset, image):
    rgb, box, gt = instance(dataset, image)
    assert not on(gt, default_inside_points(np.array([box]))[0])  # the centre misses the object
    engine = create_engine("grabcut")
    centre = run(create_policy("center"), engine, rgb, [box])[0]
    final = run(create_policy("iterate"), engine, rgb, [box])[0]
    assert on(gt, inside_click(final))
    assert iou(final.mask, gt) >= iou(centre.mask, gt) - 1e-9
    assert 2 <= final.extras["inside_rounds"] <= 3
    assert final.extras["inside_source"] == "mask"
    assert final.extras["inside_moved_px"] > 10


def test_iterate_is_deterministic_on_a_real_image():
    rgb, box, _ = instance("davis", "102.jpg")
    a = run(create_policy("iterate"), create_engine("grabcut"), rgb, [box])[0]
    b = run(create_policy("iterate"), create_engine("grabcut"), rgb, [box])[0]
    assert np.array_equal(a.mask, b.mask)
    assert [c.to_json() for c in a.clicks] == [c.to_json() for c in b.clicks]
    assert a.extras == b.extras


def test_iterate_with_the_box_engine_stops_at_once_on_the_centre():
    rgb, box, _ = instance("coco_mval", "bear00_000000243075.jpg")
    pred = run(create_policy("iterate"), create_engine("box"), rgb, [box])[0]
    assert pred.extras["inside_rounds"] == 1 and pred.extras["inside_stop"] == "stable"
    assert pred.extras["inside_source"] == "center"
    assert inside_click(pred) == tuple(default_inside_points(np.array([box]))[0])


# --------------------------------------------------------------------------- the stop rule


class DiskEngine(Engine):
    """Masks are disks of radius 12 px whose centre is ``place(box, inside point)``; records the
    number of boxes of every call."""

    name = "disk"

    def __init__(self, place) -> None:
        self.place = place
        self.calls: list[int] = []

    def segment(self, requests):
        self.calls.append(sum(len(r.boxes) for r in requests))
        out = []
        for r in requests:
            h, w = r.image.shape[:2]
            yy, xx = np.mgrid[:h, :w]
            preds = []
            for box, p in zip(r.boxes, r.inside, strict=True):
                cx, cy = self.place(tuple(box), tuple(p))
                mask = np.hypot(xx - cx, yy - cy) <= 12 if cx is not None else np.zeros((h, w),
                                                                                      bool)
                preds.append(Prediction(mask, 1.0, iog_clicks(tuple(box), tuple(p))))
            out.append(preds)
        return out


IMAGE = np.zeros((120, 200, 3), np.uint8)
BOXES = [(10, 10, 89, 109), (110, 10, 189, 109)]


def test_a_point_that_settles_stops_and_only_moving_boxes_run_again():
    # box 0: the object sits off centre (the point moves once, then stays); box 1: on the centre
    def place(box, p):
        return (30, 30) if box == BOXES[0] else (149.5, 59.5)

    engine = DiskEngine(place)
    preds = run(IteratePolicy(max_rounds=5), engine, IMAGE, BOXES)
    assert engine.calls == [2, 1]
    assert [p.extras["inside_rounds"] for p in preds] == [2, 1]
    assert [p.extras["inside_stop"] for p in preds] == ["stable", "stable"]
    x, y = inside_click(preds[0])  # the disk's centre, or a pixel beside it as deep (tie margin)
    assert abs(x - 30) <= 1 and abs(y - 30) <= 1


def test_a_point_that_keeps_moving_stops_after_max_rounds_with_the_last_point_used():
    engine = DiskEngine(lambda box, p: (p[0] + 15, p[1]))  # the object runs away from the click
    (pred,) = run(IteratePolicy(max_rounds=3), engine, IMAGE, BOXES[:1])
    assert engine.calls == [1, 1, 1]
    assert pred.extras["inside_stop"] == "max_rounds" and pred.extras["inside_rounds"] == 3
    centre = default_inside_points(np.array(BOXES[:1]))[0]
    x, y = inside_click(pred)  # the click of the third run: two moves of ~15 px
    assert 28 <= x - centre[0] <= 32 and abs(y - centre[1]) <= 0.5


def test_moves_below_the_tolerance_or_below_one_pixel_count_as_stable():
    box = (10, 10, 89, 109)  # centre (49.5, 59.5); its IOG crop is 140 x 160 px
    near = DiskEngine(lambda b, p: (52, 62))  # 3.5 image px away: ~12 network px
    assert 11 < network_distance((52, 62), (49.5, 59.5), box) < 13
    (pred,) = run(IteratePolicy(tolerance=15.0), near, IMAGE, [box])
    assert (pred.extras["inside_stop"], pred.extras["inside_rounds"]) == ("stable", 1)
    (pred,) = run(IteratePolicy(tolerance=2.0), near, IMAGE, [box])
    assert (pred.extras["inside_stop"], pred.extras["inside_rounds"]) == ("stable", 2)
    beside = DiskEngine(lambda b, p: (50, 60))  # the pixel next to a half-pixel centre
    (pred,) = run(IteratePolicy(tolerance=0.0), beside, IMAGE, [box])
    assert (pred.extras["inside_stop"], pred.extras["inside_rounds"]) == ("stable", 1)


def test_an_empty_mask_keeps_the_previous_point():
    engine = DiskEngine(lambda box, p: (None, None))
    (pred,) = run(IteratePolicy(), engine, IMAGE, BOXES[:1])
    assert pred.extras["inside_stop"] == "empty" and pred.extras["inside_rounds"] == 1
    assert inside_click(pred) == tuple(default_inside_points(np.array(BOXES[:1]))[0])
    assert engine.calls == [1]


def test_given_inside_points_are_used_as_they_are():
    engine = DiskEngine(lambda box, p: (30, 30))
    given = np.array([[60.0, 90.0]])
    for name in ("iterate", "grabcut"):
        (pred,) = run(create_policy(name), engine, IMAGE, BOXES[:1], inside=given)
        assert inside_click(pred) == (60.0, 90.0)
        assert pred.extras["inside_source"] == "given"


# --------------------------------------------------------------------------- grabcut and stage1


def test_grabcut_policy_picks_the_interior_point_of_the_grabcut_mask_then_runs_the_engine_once():
    rgb, box, gt = instance("coco_mval", "elephant00_000000183648.jpg")
    picked = create_engine("grabcut").segment(
        [SegmentRequest(rgb, np.array([box]), default_inside_points(np.array([box])))])[0][0]
    engine = DiskEngine(lambda b, p: p)
    (pred,) = run(create_policy("grabcut"), engine, rgb, [box])
    assert engine.calls == [1]
    point = inside_click(pred)
    assert picked.mask[int(point[1]), int(point[0])]
    assert on(gt, point)  # the centre is off this elephant; GrabCut's interior point is on it
    assert pred.extras["inside_source"] == "mask"


@pytest.fixture(scope="module")
def stage1_checkpoint(tmp_path_factory) -> Path:
    """A randomly initialised reduced-width stage-1 network (behaviour, not quality)."""
    import torch

    from boxmask.models import IOGConfig, build_model, export_checkpoint

    torch.manual_seed(0)
    net = build_model(IOGConfig.preset("tiny", input_size=64))
    path = tmp_path_factory.mktemp("stage1") / "stage1_tiny.pth"
    return export_checkpoint(net, path, extra={"task": "stage1"})


def test_stage1_policy_runs_the_engine_with_the_networks_points(stage1_checkpoint):
    from boxmask.models.stage1 import load_stage1, stage1_inside_points

    rgb, box, _ = instance("davis", "102.jpg")
    boxes = [box, (300, 200, 500, 400)]
    expected = stage1_inside_points(load_stage1(stage1_checkpoint), rgb, np.array(boxes))
    engine = DiskEngine(lambda b, p: p)
    policy = create_policy("stage1", weights=str(stage1_checkpoint), device="cpu")
    preds = run(policy, engine, rgb, boxes)
    assert engine.calls == [2]
    for pred, b, p in zip(preds, boxes, expected, strict=True):
        x, y = inside_click(pred)
        assert (x, y) == pytest.approx(tuple(p))
        assert b[0] - 1 <= x <= b[2] + 1 and b[1] - 1 <= y <= b[3] + 1
        assert pred.extras["inside_source"] == "stage1"
    d = policy.describe()
    assert d["weights"] == "stage1_tiny.pth" and d["input_size"] == 64
    assert d["weights_sha256"] == hashlib.sha256(stage1_checkpoint.read_bytes()).hexdigest()


def test_stage1_without_weights_or_with_an_iog_checkpoint_is_refused(tmp_path):
    from boxmask.models import IOGConfig, build_model, export_checkpoint

    with pytest.raises(ValueError, match="needs a stage-1 checkpoint"):
        create_policy("stage1")
    with pytest.raises(FileNotFoundError):
        create_policy("stage1", weights=str(tmp_path / "missing.pth"))
    iog = export_checkpoint(build_model(IOGConfig.preset("tiny", input_size=64)),
                            tmp_path / "iog.pth", extra={"task": "iog"})
    with pytest.raises(ValueError, match="not 'stage1'"):
        create_policy("stage1", weights=str(iog))


def test_describe_names_the_settings_and_unknown_policies_or_options_are_refused():
    assert create_policy("center").describe() == {"name": "center"}
    d = create_policy("iterate", max_rounds=4, tolerance=1.5).describe()
    assert (d["name"], d["max_rounds"], d["tolerance"]) == ("iterate", 4, 1.5)
    d = create_policy("grabcut", grabcut_options={"iterations": 3}).describe()
    assert d["name"] == "grabcut" and d["grabcut"]["iterations"] == 3
    assert set(POLICIES) == {"center", "iterate", "grabcut", "u2net", "stage1"}
    with pytest.raises(ValueError, match="unknown inside-point policy"):
        create_policy("corner")
    with pytest.raises(ValueError, match="iterate"):
        create_policy("iterate", rounds=2)
    with pytest.raises(ValueError, match="max_rounds"):
        create_policy("iterate", max_rounds=0)


def test_iterate_works_with_the_iog_engine_and_its_clicks_show_the_final_point():
    import torch

    from boxmask.engines.iog import IOGEngine
    from boxmask.models import IOGConfig, build_model

    torch.manual_seed(0)
    engine = IOGEngine.from_network(build_model(IOGConfig.preset("tiny")), device="cpu",
                                    mode="eager")
    rgb, box, _ = instance("davis", "102.jpg")
    policy = IteratePolicy(max_rounds=2)
    (pred,) = run(policy, engine, rgb, [box])
    assert 1 <= pred.extras["inside_rounds"] <= 2
    x, y = inside_click(pred)
    assert box[0] - 1 <= x <= box[2] + 1 and box[1] - 1 <= y <= box[3] + 1
    if pred.extras["inside_source"] == "mask":  # the click IOG got is the moved point
        centre = default_inside_points(np.array([box]))[0]
        assert np.hypot(x - centre[0], y - centre[1]) > 1


# --------------------------------------------------------------------------- conversion


def test_a_conversion_with_iterate_records_the_policy_in_the_plan_and_the_sidecar(tmp_path):
    settings = Settings(input_format="coco", input=str(COCO_SOURCE),
                        images_root=str(DATA / "coco_mval" / "img"), formats=["coco"],
                        engine="grabcut", inside_point="iterate",
                        inside_options={"max_rounds": 2}, limit=2)
    out = tmp_path / "out"
    summary = convert(settings, out, progress=False)
    assert summary["complete"] and summary["masks"] == 2
    plan = json.loads((out / "plan.json").read_text())
    assert plan["contract"]["settings"]["inside_point"] == "iterate"
    assert plan["contract"]["settings"]["inside_options"] == {"max_rounds": 2}
    lines = [json.loads(x) for x in (out / "masks.jsonl").read_text().splitlines()]
    assert [x["inside_policy"] for x in lines] == ["iterate", "iterate"]
    for x in lines:
        m = x["metrics"]
        assert 1 <= m["inside_rounds"] <= 2
        assert m["inside_stop"] in ("stable", "empty", "max_rounds")
        assert sum(1 for c in x["clicks"] if c[3] == "inside") == 1
