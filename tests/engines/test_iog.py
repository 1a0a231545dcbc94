"""The IOG engine: single-object path and engine against the official outputs, batching across
images, clicks, refinement, precision.

Networks run with the parity fixtures' pseudo-random weights (tests/helpers/parity_weights.py),
so the official outputs are known without the released checkpoints. Bookkeeping tests (which crop
lands in which image, which clicks reach the network) use a small stand-in network whose logits
are a fixed function of its input, so that they run in milliseconds and any mix-up changes the
masks.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from iog_cases import (
    CASES,
    DATA,
    PARITY,
    REFINE_CASES,
    case_clicks_512,
    case_clicks_orig,
    case_image_and_mask,
    coco_mval_requests,
    load_case,
)
from parity_weights import parity_weights
from PIL import Image
from torch import Tensor, nn

from boxmask import guidance as G
from boxmask.api import segment_image
from boxmask.engines import SegmentRequest, create_engine, default_inside_points
from boxmask.engines.iog import IOGEngine, cpu_supports, predict_proba
from boxmask.models import build_iog
from boxmask.records import Click


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 1.0


def parity_net(arch: str, seed: int) -> nn.Module:
    net = build_iog(refinement=arch == "iog-refinement")
    net.load_state_dict(parity_weights(arch, seed), strict=True)
    return net.eval()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory):
    """``(arch, seed) -> path`` of a checkpoint file with the parity weights (written once)."""
    made: dict[tuple[str, int], object] = {}

    def make(arch: str, seed: int):
        if (arch, seed) not in made:
            path = tmp_path_factory.mktemp("weights") / f"{arch}-{seed}.pth"
            torch.save(parity_weights(arch, seed), path)
            made[arch, seed] = path
        return made[arch, seed]

    return make


@pytest.fixture
def engines():
    """``IOGEngine.from_network`` whose engines are closed after the test."""
    made: list[IOGEngine] = []

    def make(net: nn.Module, architecture: str = "iog", **options) -> IOGEngine:
        options.setdefault("device", "cpu")
        options.setdefault("mode", "eager")
        made.append(IOGEngine.from_network(net, architecture, **options))
        return made[-1]

    yield make
    for engine in made:
        engine.close()


def threshold_for(p: np.ndarray) -> float:
    """0.5, unless the official probabilities stay below it (the parity weights are random):
    then the 90th percentile of the non-zero probabilities, so that the masks compared are not
    empty."""
    if np.count_nonzero(p > 0.5) >= 0.01 * np.count_nonzero(p):
        return 0.5
    return float(np.quantile(p[p > 0], 0.9))


# --------------------------------------------------------------------------- official parity


@pytest.mark.parametrize("name", CASES)
def test_predict_proba_reproduces_the_official_probabilities(name: str) -> None:
    case = load_case(name)
    image, _ = case_image_and_mask(case)
    ref = np.load(PARITY / name / "prob_full.npz")["p"]
    box = case["tight_box_xyxy_inclusive"]
    inside = case_clicks_orig(case)[0]

    net = parity_net("iog", case["weights"]["seed"])
    p = predict_proba(net, image, box, inside)

    assert p.shape == ref.shape and p.dtype == np.float32
    assert np.abs(p - ref).mean() <= 0.02
    assert iou(p > 0.5, ref > 0.5) >= 0.97
    if np.array_equal(G.guidance_for_box(box, inside).clicks_512(), case_clicks_512(case)):
        np.testing.assert_allclose(p, ref, rtol=0, atol=1e-4)  # same clicks: same numbers
    # A network left in training mode is run in eval mode, and left as it was.
    net.train()
    np.testing.assert_array_equal(predict_proba(net, image, box, inside), p)
    assert net.training


@pytest.mark.parametrize("name", CASES)
def test_engine_masks_match_the_official_probabilities(name: str, checkpoint) -> None:
    case = load_case(name)
    image, _ = case_image_and_mask(case)
    ref = np.load(PARITY / name / "prob_full.npz")["p"]
    threshold = threshold_for(ref)
    path = checkpoint("iog", case["weights"]["seed"])
    engine = create_engine("iog", weights=str(path), threshold=threshold, device="cpu")
    try:
        request = SegmentRequest(image, np.array([case["tight_box_xyxy_inclusive"]]),
                                 inside=case_clicks_orig(case)[:1])
        [[pred]] = engine.segment([request])
    finally:
        engine.close()
    assert pred.mask.shape == ref.shape and pred.mask.dtype == bool
    assert np.count_nonzero(pred.mask) > 0
    assert iou(pred.mask, ref > threshold) >= 0.97
    cw, ch = G.crop_size(case["crop_box_xyxy_inclusive"])
    used = np.array([[c.x, c.y] for c in pred.clicks])
    np.testing.assert_allclose(used, case_clicks_orig(case), atol=max(cw, ch) / 512 + 1e-3)
    assert [(c.positive, c.kind) for c in pred.clicks] == [(True, "inside")] + [
        (False, "corner")] * 4
    assert pred.score == pred.extras["stability"]


def test_engine_describes_weights_precision_threshold_and_architecture(checkpoint) -> None:
    path = checkpoint("iog", 0)
    engine = create_engine("iog", weights=str(path), threshold=0.4, device="cpu", mode="eager")
    d = engine.describe()
    assert d["name"] == "iog" and d["architecture"] == "iog"
    assert d["weights_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert (d["precision"], d["threshold"]) == ("fp32", 0.4)
    assert isinstance(engine, IOGEngine)


def test_engine_needs_weights_and_names_a_missing_file(tmp_path) -> None:
    with pytest.raises(ValueError, match="needs weights"):
        create_engine("iog")
    with pytest.raises(FileNotFoundError, match="no such file"):
        create_engine("iog", weights=str(tmp_path / "missing.pth"))


# --------------------------------------------------------------------------- refinement


@pytest.mark.parametrize("name", REFINE_CASES)
def test_refinement_engine_applies_the_extra_click_like_the_official_network(
        name: str, checkpoint) -> None:
    case = load_case(name)
    source = re.search(r"\.\./(\w+)/input\.npz", case["input"]).group(1)
    base = load_case(source)
    image, _ = case_image_and_mask(base)
    crop_box = base["crop_box_xyxy_inclusive"]
    outs = np.load(PARITY / name / "outputs.npz")
    ref0 = G.probability_full(outs["fine0"][0, 0], crop_box, base["image_hw"])
    ref1 = G.probability_full(outs["fine1"][0, 0], crop_box, base["image_hw"])
    # the threshold where the click changes the official mask most
    threshold = max((0.5, 0.9, 0.95, 0.98, 0.99),
                    key=lambda t: np.count_nonzero((ref0 > t) != (ref1 > t)))
    changed = np.count_nonzero((ref0 > threshold) != (ref1 > threshold))
    assert changed > 0
    click_xy = G.points_from_512(np.array([case["dmap1"]["extra_click_512_xy"]]), crop_box)[0]
    positive = case["dmap1"]["polarity"].startswith("positive")
    box = base["tight_box_xyxy_inclusive"]
    request = SegmentRequest(image, np.array([box, box]),
                             inside=np.repeat(case_clicks_orig(base)[:1], 2, axis=0),
                             extra_clicks=[[], [Click(*click_xy, positive)]])
    engine = create_engine("iog", weights=str(checkpoint("iog-refinement",
                                                          case["weights"]["seed"])),
                           threshold=threshold, device="cpu", batch_size=2)
    assert engine.describe()["architecture"] == "iog-refinement"
    try:
        [[plain, refined]] = engine.segment([request])
    finally:
        engine.close()
    assert np.count_nonzero(plain.mask != (ref0 > threshold)) <= changed // 20
    assert np.count_nonzero(refined.mask != (ref1 > threshold)) <= changed // 20
    user = refined.clicks[-1]
    assert (user.kind, user.positive) == ("user", positive)
    np.testing.assert_allclose([user.x, user.y], click_xy, atol=1e-6)
    assert [c.kind for c in plain.clicks] == ["inside"] + ["corner"] * 4


@pytest.mark.parametrize("name", REFINE_CASES)
def test_segment_cli_with_refinement_clicks_uses_the_refinement_checkpoint(
        name: str, tmp_path: Path) -> None:
    """``boxmask segment --engine iog --click ...`` with an extra click and no ``--weights``
    takes IOG_PASCAL_SBD_REFINEMENT.pth from the cache and applies the click."""
    case = load_case(name)
    source = re.search(r"\.\./(\w+)/input\.npz", case["input"]).group(1)
    base = load_case(source)
    image, _ = case_image_and_mask(base)
    image_path = tmp_path / "image.png"
    Image.fromarray(image).save(image_path)
    home = tmp_path / "home"
    (home / "weights").mkdir(parents=True)
    torch.save(parity_weights("iog-refinement", case["weights"]["seed"]),
               home / "weights" / "IOG_PASCAL_SBD_REFINEMENT.pth")
    box = base["tight_box_xyxy_inclusive"]
    inside = case_clicks_orig(base)[0]
    extra = G.points_from_512(np.array([case["dmap1"]["extra_click_512_xy"]]),
                              base["crop_box_xyxy_inclusive"])[0]
    sign = "" if case["dmap1"]["polarity"].startswith("positive") else ",neg"
    out = tmp_path / "mask.png"
    proc = subprocess.run(
        [sys.executable, "-m", "boxmask", "segment", str(image_path), "--engine", "iog",
         "--device", "cpu", "--box", ",".join(map(str, box)),
         "--click", f"{inside[0]},{inside[1]}", "--click", f"{extra[0]},{extra[1]}{sign}",
         "--output", str(out)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "BOXMASK_HOME": str(home)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [c[3] for c in report["clicks"]] == ["inside"] + ["corner"] * 4 + ["user"]
    engine = create_engine("iog", weights=str(home / "weights" / "IOG_PASCAL_SBD_REFINEMENT.pth"),
                           device="cpu")
    try:
        expected = segment_image(image, tuple(box), engine=engine, clicks=[
            Click(float(inside[0]), float(inside[1]), True, kind="user"),
            Click(float(extra[0]), float(extra[1]), not sign, kind="user")])
    finally:
        engine.close()
    np.testing.assert_array_equal(np.asarray(Image.open(out)) > 0, expected.mask)


# --------------------------------------------------------------------------- bookkeeping


class EchoNet(nn.Module):
    """Stand-in IOG network: fine logits from the RGB and heatmap channels of its input."""

    def __init__(self) -> None:
        super().__init__()
        self.inputs: list[Tensor] = []

    def forward_fine(self, x: Tensor) -> Tensor:
        self.inputs.append(x.clone())
        return (x[:, 3:4] - x[:, 4:5]) / 32 + (x[:, 0:1] - x[:, 1:2]) / 16 - 1.0

    def fine_logits(self, x: Tensor, guidance: Tensor | None = None) -> Tensor:
        assert guidance is None  # the IOG architecture gets no click maps
        return self.forward_fine(x)


class EchoRefinementNet(nn.Module):
    """Stand-in refinement network: fine logits from the click map the engine passes."""

    def __init__(self) -> None:
        super().__init__()
        self.guides: list[Tensor] = []

    def backbone_features(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return (x, x, x, x)

    def decode(self, features: tuple[Tensor, ...], guidance: Tensor) -> list[Tensor]:
        self.guides.append(guidance.clone())
        fine = (guidance[:, 0:1] - guidance[:, 1:2]) / 32 + features[0][:, 0:1] / 255 - 1.0
        return [fine] * 5

    def fine_logits(self, x: Tensor, guidance: Tensor | None = None) -> Tensor:
        return self.decode(self.backbone_features(x), x[:, 3:5] if guidance is None
                           else guidance)[4]


def reference_mask(request: SegmentRequest, b: int, threshold: float = 0.5) -> np.ndarray:
    """The single-object path with the numpy functions and ``EchoNet``'s formula."""
    box = request.boxes[b]
    if request.inside is not None:
        inside = request.inside[b]
    else:
        inside = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
    x, g = G.preprocess_box(request.image, box, inside)
    fine = (x[3] - x[4]) / 32 + (x[0] - x[1]) / 16 - 1.0
    p = G.probability_full(fine, g.crop_box, request.image.shape[:2])
    return p > threshold


def mixed_requests() -> list[SegmentRequest]:
    voc = np.asarray(Image.open(DATA / "voc2012" / "JPEGImages" / "2007_000063.jpg")
                     .convert("RGB"))
    coco = coco_mval_requests(4)
    return [
        SegmentRequest(voc, np.array([[123, 115, 379, 275], [75, 1, 428, 374]]),
                       inside=np.array([[250.0, 180.0], [300.4, 200.6]])),
        coco[3],                                  # bear: the box touches the image border
        SegmentRequest(coco[1].image, np.array([[70, 211, 376, 426], [0, 0, 40, 30],
                                                [500, 300, 639, 426]])),
    ]


@pytest.mark.parametrize("batch_size", [1, 4])
def test_boxes_of_several_images_come_back_in_order_whatever_the_batching(
        batch_size: int, engines) -> None:
    requests = mixed_requests()
    results = engines(EchoNet(), batch_size=batch_size).segment(requests)
    assert [len(r) for r in results] == [2, 1, 3]
    for request, preds in zip(requests, results, strict=True):
        for b, pred in enumerate(preds):
            expected = reference_mask(request, b)
            assert pred.mask.shape == request.image.shape[:2]
            assert np.count_nonzero(expected) > 0
            assert np.array_equal(pred.mask, expected), (b, batch_size)


def test_gpu_preprocessing_path_gives_the_numpy_inputs(engines) -> None:
    """The torch crop/heatmap path (used on CUDA) run on the CPU feeds the same inputs."""
    requests = mixed_requests()
    nets = {}
    for preprocess in ("numpy", "torch"):
        nets[preprocess] = EchoNet()
        engines(nets[preprocess], batch_size=3, preprocess=preprocess).segment(requests)
    a, b = (torch.cat(nets[k].inputs).numpy() for k in ("numpy", "torch"))
    assert a.shape == b.shape == (6, 5, 512, 512)
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-3)


def test_default_inside_point_is_the_box_centre_and_clicks_come_back_in_image_pixels(
        engines) -> None:
    [request] = coco_mval_requests(1)
    [[pred]] = engines(EchoNet()).segment([request])
    x0, y0, x1, y1 = request.boxes[0]
    crop_w, crop_h = x1 - x0 + 61, y1 - y0 + 61
    inside, *corners = pred.clicks
    assert (inside.kind, inside.positive) == ("inside", True)
    assert abs(inside.x - (x0 + x1) / 2) <= crop_w / 1024 + 1e-9
    assert abs(inside.y - (y0 + y1) / 2) <= crop_h / 1024 + 1e-9
    assert [(c.kind, c.positive) for c in corners] == [("corner", False)] * 4
    # a corner is 10 512-space pixels (of sx x sy image pixels) beyond the first/last pixel
    # whose centre lies inside the box's edges x0 - 0.5 .. x1 + 0.5
    sx, sy = crop_w / 512, crop_h / 512
    left, top = (x0 - 0.5 - 10 * sx, x0 - 0.5 - 9 * sx), (y0 - 0.5 - 10 * sy, y0 - 0.5 - 9 * sy)
    right, bottom = (x1 + 0.5 + 9 * sx, x1 + 0.5 + 10 * sx), (y1 + 0.5 + 9 * sy,
                                                               y1 + 0.5 + 10 * sy)
    for corner, (xs, ys) in zip(corners, [(left, top), (left, bottom), (right, top),
                                          (right, bottom)], strict=True):
        assert xs[0] - 1e-9 <= corner.x <= xs[1] + 1e-9
        assert ys[0] - 1e-9 <= corner.y <= ys[1] + 1e-9


def test_score_is_the_stability_of_the_fine_logits(engines) -> None:
    requests = mixed_requests()[:1]
    net = EchoNet()
    [[a, b]] = engines(net, stability_delta=0.2, batch_size=2).segment(requests)  # one input
    fine = net.forward_fine(net.inputs[0]).numpy()
    assert a.score == pytest.approx(G.stability_score(fine[0], 0.2))
    assert b.score == pytest.approx(G.stability_score(fine[1], 0.2))
    assert 0 < a.score < 1 and a.extras == {"stability": a.score}


def test_extra_clicks_are_merged_into_the_refinement_guidance_in_order(engines) -> None:
    [request] = coco_mval_requests(1)
    x0, y0, x1, y1 = request.boxes[0]
    clicks = [Click(x0 + 5.0, y0 + 6.0, True), Click(x1 - 4.0, y1 - 3.0, False),
              Click(x0 + 7.0, y0 + 6.0, True)]
    request.extra_clicks = [clicks]
    net = EchoRefinementNet()
    [[pred]] = engines(net, "iog-refinement").segment([request])
    g = G.guidance_for_box(request.boxes[0], ((x0 + x1) / 2, (y0 + y1) / 2))
    expected = G.guidance_maps(g.inside_512, g.corners_512)
    points = G.round_to_pixel(G.points_to_512(np.array([[c.x, c.y] for c in clicks]),
                                              g.crop_box))
    for (px, py), click in zip(points, clicks, strict=True):
        expected = G.add_click(expected, (px, py), click.positive)
    np.testing.assert_array_equal(net.guides[0][0].numpy(), expected)
    assert [(c.kind, c.positive) for c in pred.clicks[5:]] == [
        ("user", True), ("user", False), ("user", True)]
    assert pred.extras["refinement_clicks"] == 3


def test_extra_clicks_with_the_main_checkpoint_ask_for_the_refinement_checkpoint(
        engines) -> None:
    [request] = coco_mval_requests(1)
    request.extra_clicks = [[Click(100.0, 120.0, True)]]
    with pytest.raises(ValueError, match="refinement checkpoint"):
        engines(EchoNet()).segment([request])


def test_unsupported_cpu_precision_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.setattr(torch.cpu, probe, lambda: False, raising=False)
    with pytest.raises(ValueError, match="not supported natively by this CPU"):
        IOGEngine.from_network(EchoNet(), device="cpu", precision="bf16")
    with pytest.raises(ValueError, match="precision must be one of"):
        IOGEngine.from_network(EchoNet(), device="cpu", precision="int8")


def test_empty_requests_give_empty_results(engines) -> None:
    engine = engines(EchoNet())
    image = np.zeros((10, 10, 3), np.uint8)
    assert engine.segment([SegmentRequest(image, np.zeros((0, 4)))]) == [[]]
    assert engine.segment([]) == []


# --------------------------------------------------------------------------- precision


def bf16_requests() -> list[SegmentRequest]:
    """The first parity case's image and box, and the first 7 COCO-MVal images with theirs
    (inside point: the box centre)."""
    case = load_case(CASES[0])
    image, _ = case_image_and_mask(case)
    coco = coco_mval_requests(7)
    for r in coco:
        r.inside = default_inside_points(r.boxes)
    return [SegmentRequest(image, np.array([case["tight_box_xyxy_inclusive"]]),
                           inside=case_clicks_orig(case)[:1])] + coco


def bf16_masks(net: nn.Module, requests: list[SegmentRequest]) -> list[np.ndarray]:
    engine = IOGEngine.from_network(net, device="cpu", precision="bf16", batch_size=4)
    try:
        return [r[0].mask for r in engine.segment(requests)]
    finally:
        engine.close()


def parity_input_agreement(net_for_seed, device: str, precision: str) -> list[tuple[float, float]]:
    """Per parity case: IoU of the reduced-precision mask with the fp32 one at the threshold 0.5,
    and at the median fp32 probability inside the box.

    The parity weights' probabilities stay below 0.5 (empty masks at 0.5, which agree
    trivially), so the second threshold, where the fp32 mask covers half the box, is the one
    that tells: random networks are indecisive, with many logits near any threshold."""
    out = []
    for name in CASES:
        case = load_case(name)
        image, _ = case_image_and_mask(case)
        box, inside = case["tight_box_xyxy_inclusive"], case_clicks_orig(case)[0]
        net = net_for_seed(case["weights"]["seed"])
        p32 = predict_proba(net, image, box, inside)
        x0, y0, x1, y1 = box
        median = float(np.median(p32[y0:y1 + 1, x0:x1 + 1]))
        request = [SegmentRequest(image, np.array([box]), inside=np.array([inside]))]
        ious = []
        for threshold in (0.5, median):
            engine = IOGEngine.from_network(net, device=device, precision=precision,
                                            mode="eager", batch_size=1, threshold=threshold)
            try:
                [[pred]] = engine.segment(request)
            finally:
                engine.close()
            ious.append(iou(p32 > threshold, pred.mask))
        out.append((ious[0], ious[1]))
    return out


@pytest.mark.skipif(not cpu_supports("bf16"), reason="this CPU has no native bf16")
def test_bf16_masks_agree_with_fp32_on_the_parity_inputs() -> None:
    """bf16 vs fp32 on every parity case's image, box, clicks and weights: mean IoU >= 0.995 at
    0.5, >= 0.985 where the fp32 mask covers half the box (measured: 1.0 and 0.992)."""
    agreement = parity_input_agreement(lambda seed: parity_net("iog", seed), "cpu", "bf16")
    assert np.mean([a for a, _ in agreement]) >= 0.995, agreement
    assert np.mean([b for _, b in agreement]) >= 0.985, agreement


@pytest.mark.slow
@pytest.mark.skipif(not cpu_supports("bf16"), reason="this CPU has no native bf16")
def test_bf16_changes_only_pixels_that_fp32_finds_uncertain() -> None:
    """bf16 vs fp32 on the parity image and real COCO images with random (parity-recipe) weights.

    Seed 5 gives masks covering a third to four fifths of these boxes (the parity cases' seeds
    give nearly empty masks, which would agree trivially). Such random networks are far less
    decisive than a trained one: about a fifth of their logits lie within +-0.25 of 0, where
    bf16's rounding (about 5 % of the logit range after 100+ layers) flips pixels. So the check
    is that bf16 flips only pixels whose fp32 probability is within 0.1 of the threshold, and
    that the masks still overlap closely (measured mean IoU 0.987)."""
    requests = bf16_requests()
    net = parity_net("iog", 5)
    p32 = [predict_proba(net, r.image, r.boxes[0], r.inside[0]) for r in requests]
    m16 = bf16_masks(net, requests)
    ious = []
    for p, m in zip(p32, m16, strict=True):
        assert np.count_nonzero(p > 0.5) > 0
        flipped = (p > 0.5) != m
        assert np.all(np.abs(p[flipped] - 0.5) < 0.1)
        ious.append(iou(p > 0.5, m))
    assert np.mean(ious) >= 0.97, ious


@pytest.mark.slow
@pytest.mark.skipif(not cpu_supports("bf16"), reason="this CPU has no native bf16")
def test_bf16_masks_agree_with_fp32_with_the_released_weights() -> None:
    """Mean IoU >= 0.99 between bf16 and fp32 masks with the released IOG_PASCAL_SBD.pth."""
    from boxmask.models import build_from_checkpoint
    from boxmask.weights import WeightsNotFoundError, resolve_weights

    try:
        path = resolve_weights("IOG_PASCAL_SBD.pth")
    except WeightsNotFoundError as exc:
        pytest.skip(f"released weights not in the cache: {exc}")
    net = build_from_checkpoint(path)
    requests = bf16_requests()
    engine = IOGEngine.from_network(net, device="cpu", precision="fp32", batch_size=4)
    try:
        m32 = [r[0].mask for r in engine.segment(requests)]
    finally:
        engine.close()
    m16 = bf16_masks(net, requests)
    ious = [iou(a, b) for a, b in zip(m32, m16, strict=True)]
    assert np.mean(ious) >= 0.99, ious
