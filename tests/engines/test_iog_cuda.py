"""The IOG engine on a CUDA device: fp32 parity with TF32 off, the torch crop/heatmap path on the
GPU, and fp16/bf16 autocast against fp32. Skipped where torch sees no CUDA device.

The same cases as on the CPU (every folder of tests/fixtures/iog_parity, numbers from its
case.json), so a held-out case is checked on the GPU too.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from iog_cases import CASES, PARITY, case_clicks_orig, case_image_and_mask, load_case
from parity_weights import parity_weights
from test_iog import EchoNet, bf16_requests, iou, mixed_requests, parity_input_agreement

from boxmask.engines import SegmentRequest
from boxmask.engines.iog import IOGEngine, disable_tf32, predict_proba
from boxmask.models import build_iog

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

RTOL, ATOL = 1e-3, 1e-4  # the parity budget: max|out - ref| <= RTOL * max|ref| + ATOL
MAPS = ("coarse0", "coarse1", "coarse2", "coarse3", "fine")


def cuda_net(seed: int) -> torch.nn.Module:
    net = build_iog()
    net.load_state_dict(parity_weights("iog", seed), strict=True)
    return net.eval().cuda()


@pytest.mark.parametrize("name", CASES)
def test_the_network_on_cuda_reproduces_the_official_outputs(name: str) -> None:
    case = load_case(name)
    disable_tf32()
    net = cuda_net(case["weights"]["seed"])
    x = torch.from_numpy(np.load(PARITY / name / "input.npz")["x"]).cuda()
    refs = np.load(PARITY / name / "outputs.npz")
    with torch.inference_mode():
        outs = net(x)
    for key, out in zip(MAPS, outs, strict=True):
        out = out.float().cpu()
        if key != "fine":
            out = out[..., ::4, ::4]
        ref = torch.from_numpy(refs[key])
        assert (out - ref).abs().max().item() <= RTOL * ref.abs().max().item() + ATOL, key


def test_torch_preprocessing_on_cuda_gives_the_numpy_inputs() -> None:
    requests = mixed_requests()
    inputs = {}
    for device, preprocess in (("cpu", "numpy"), ("cuda", "torch")):
        net = EchoNet()
        engine = IOGEngine.from_network(net, device=device, mode="eager", batch_size=3,
                                        preprocess=preprocess)
        try:
            engine.segment(requests)
        finally:
            engine.close()
        inputs[device] = torch.cat([t.float().cpu() for t in net.inputs]).numpy()
    assert inputs["cpu"].shape == inputs["cuda"].shape == (6, 5, 512, 512)
    np.testing.assert_allclose(inputs["cpu"], inputs["cuda"], rtol=0, atol=1e-3)


@pytest.mark.parametrize("name", CASES)
def test_predict_proba_on_cuda_matches_the_official_probabilities(name: str) -> None:
    case = load_case(name)
    image, _ = case_image_and_mask(case)
    ref = np.load(PARITY / name / "prob_full.npz")["p"]
    p = predict_proba(cuda_net(case["weights"]["seed"]), image, case["tight_box_xyxy_inclusive"],
                      case_clicks_orig(case)[0])
    assert np.abs(p - ref).mean() <= 0.02
    assert iou(p > 0.5, ref > 0.5) >= 0.97


def engine_masks(seed: int, precision: str, requests: list[SegmentRequest]) -> list[np.ndarray]:
    engine = IOGEngine.from_network(cuda_net(seed), device="cuda", precision=precision,
                                    mode="eager", batch_size=8)
    try:
        return [r[0].mask for r in engine.segment(requests)]
    finally:
        engine.close()


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_autocast_masks_agree_with_fp32_on_the_parity_inputs(precision: str) -> None:
    """Mean mask IoU against fp32 on every parity case: >= 0.995 at 0.5, >= 0.985 where the fp32
    mask covers half the box (see ``parity_input_agreement``)."""
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    agreement = parity_input_agreement(cuda_net, "cuda", precision)
    assert np.mean([a for a, _ in agreement]) >= 0.995, agreement
    assert np.mean([b for _, b in agreement]) >= 0.985, agreement


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_autocast_flips_only_pixels_that_fp32_finds_uncertain(precision: str) -> None:
    """On real COCO images with the seed-5 weights (masks neither empty nor full): reduced
    precision changes only pixels whose fp32 probability is within 0.1 of the threshold."""
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    requests = bf16_requests()
    net = cuda_net(5)
    p32 = [predict_proba(net, r.image, r.boxes[0], r.inside[0]) for r in requests]
    reduced = engine_masks(5, precision, requests)
    for p, m in zip(p32, reduced, strict=True):
        flipped = (p > 0.5) != m
        assert np.all(np.abs(p[flipped] - 0.5) < 0.1)
    assert np.mean([iou(p > 0.5, m) for p, m in zip(p32, reduced, strict=True)]) >= 0.97
