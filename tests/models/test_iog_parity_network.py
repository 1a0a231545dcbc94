"""Numerical parity of the IOG networks with the official implementation.

Every case folder under tests/fixtures/iog_parity holds the official network's input and outputs for
the deterministic weights of tests/helpers/parity_weights.py (see the folder's README). Everything
a test needs (seed, input file) is read from the case's case.json, so further case folders with
the same layout are picked up without code changes.

Check for every logit map: ``max|out - ref| <= 1e-3 * max|ref| + 1e-4`` (README section 6: float32
reimplementations stay ~200x inside it; BGR input or an ``align_corners=False`` upsampling exceed it
~200x, which the last tests confirm on the same weights).
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from parity_weights import PARITY, parity_weights

from boxmask.models import build_iog, load_checkpoint

RTOL, ATOL = 1e-3, 1e-4
MAPS = ("coarse0", "coarse1", "coarse2", "coarse3", "fine")  # order of the network's outputs
COARSE_STRIDE = 4  # stored coarse maps are the 512^2 outputs subsampled [..., ::4, ::4]


def _cases(*files: str) -> list[Path]:
    return sorted(
        p for p in PARITY.iterdir()
        if (p / "case.json").is_file() and all((p / f).is_file() for f in files)
    )


MAIN_CASES = _cases("input.npz", "outputs.npz")
REFINE_CASES = _cases("dmaps.npz", "outputs.npz")


def read_case(folder: Path) -> dict:
    return json.loads((folder / "case.json").read_text())


def error_and_budget(out: torch.Tensor, ref: np.ndarray) -> tuple[float, float]:
    """``(max |out - ref|, tolerance)`` of one logit map."""
    ref_t = torch.as_tensor(ref)
    out = out.detach().to("cpu", torch.float32)
    assert out.shape == ref_t.shape, (out.shape, ref_t.shape)
    return (out - ref_t).abs().max().item(), RTOL * ref_t.abs().max().item() + ATOL


@functools.cache
def weights(arch: str, seed: int) -> dict[str, torch.Tensor]:
    return parity_weights(arch, seed)


@pytest.fixture(scope="module")
def iog():
    return build_iog()


def load_case_weights(model: torch.nn.Module, case: dict, arch: str) -> torch.nn.Module:
    return load_checkpoint(model, weights(arch, int(case["weights"]["seed"]))).eval()


@pytest.fixture(scope="module")
def main_run(iog):
    """``run(folder) -> (outputs, fine_128)``: one full forward per case, cached."""
    runs: dict[Path, tuple[list[torch.Tensor], torch.Tensor]] = {}

    def run(folder: Path) -> tuple[list[torch.Tensor], torch.Tensor]:
        if folder not in runs:
            load_case_weights(iog, read_case(folder), "iog")
            x = torch.from_numpy(np.load(folder / "input.npz")["x"])
            captured: list[torch.Tensor] = []
            hook = iog.Fine_net.register_forward_hook(lambda m, i, o: captured.append(o))
            try:
                with torch.no_grad():
                    outs = iog(x)
            finally:
                hook.remove()
            runs[folder] = (outs, captured[0])
        return runs[folder]

    return run


@pytest.mark.parametrize("name", MAPS)
@pytest.mark.parametrize("folder", MAIN_CASES, ids=lambda p: p.name)
def test_iog_network_reproduces_the_official_logits(main_run, folder, name):
    outs, _ = main_run(folder)
    out = outs[MAPS.index(name)]
    assert out.shape[-2:] == (512, 512)
    if name != "fine":
        out = out[..., ::COARSE_STRIDE, ::COARSE_STRIDE]
    err, budget = error_and_budget(out, np.load(folder / "outputs.npz")[name])
    assert err <= budget, f"{folder.name}/{name}: max|diff| {err:.3g} > {budget:.3g}"


@pytest.mark.parametrize("folder", REFINE_CASES, ids=lambda p: p.name)
def test_refinement_network_reproduces_the_official_logits_per_guidance_map(folder):
    case = read_case(folder)
    source = re.search(r"([\w./-]+\.npz)", case["input"])
    key = re.search(r"\(key (\w+)\)", case["input"])
    assert source, f"case.json 'input' names no .npz file: {case['input']!r}"
    x = torch.from_numpy(np.load(folder / source.group(1))[key.group(1) if key else "x"])
    model = load_case_weights(build_iog(refinement=True), case, "iog-refinement")
    dmaps = np.load(folder / "dmaps.npz")
    refs = np.load(folder / "outputs.npz")
    names = sorted(k for k in dmaps.files if k.startswith("dmap"))
    assert names, "no dmap* arrays"
    with torch.no_grad():
        features = model.backbone_features(x)  # once, as the official forward does
        for name in names:
            fine = model.decode(features, torch.from_numpy(dmaps[name]))[4]
            ref_name = "fine" + name.removeprefix("dmap")
            err, budget = error_and_budget(fine, refs[ref_name])
            assert err <= budget, f"{folder.name}/{ref_name}: max|diff| {err:.3g} > {budget:.3g}"


# --- the tolerance bites: known deviations on the same weights must fail the check -------------


@pytest.mark.parametrize("folder", MAIN_CASES, ids=lambda p: p.name)
def test_final_upsampling_without_align_corners_fails_the_check(main_run, folder):
    outs, fine_128 = main_run(folder)
    same = F.interpolate(fine_128, size=(512, 512), mode="bilinear", align_corners=True)
    assert torch.equal(same, outs[4])  # the hook captured the map the output was made from
    wrong = F.interpolate(fine_128, size=(512, 512), mode="bilinear", align_corners=False)
    err, budget = error_and_budget(wrong, np.load(folder / "outputs.npz")["fine"])
    assert err > 10 * budget


@pytest.mark.parametrize("folder", MAIN_CASES, ids=lambda p: p.name)
def test_bgr_input_fails_the_check(iog, folder):
    load_case_weights(iog, read_case(folder), "iog")
    x = torch.from_numpy(np.load(folder / "input.npz")["x"])
    with torch.no_grad():
        fine = iog.forward_fine(x[:, [2, 1, 0, 3, 4]])
    err, budget = error_and_budget(fine, np.load(folder / "outputs.npz")["fine"])
    assert err > 10 * budget


# --- the weights themselves ----------------------------------------------------------------------

FINGERPRINT = json.loads((PARITY / "weights_fingerprint.json").read_text())
FINGERPRINTED = {
    entry: ("iog" if m.group(1) == "main" else "iog-refinement", int(m.group(2)))
    for entry in FINGERPRINT
    if (m := re.fullmatch(r"(main|refinement)_seed(\d+)", entry))
}
EXACT_RANDN = torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")


def _sample(sd: dict[str, torch.Tensor], expr: str) -> list[float]:
    """Values of ``name[i,j,:k]`` (or a whole tensor ``name``) as a flat list."""
    m = re.fullmatch(r"([\w.]+?)(?:\[(.*)\])?", expr)
    index: list[int | slice] = []
    for part in m.group(2).split(",") if m.group(2) else []:
        if ":" in part:
            lo, hi = part.split(":")
            index.append(slice(int(lo) if lo else None, int(hi) if hi else None))
        else:
            index.append(int(part))
    return sd[m.group(1)][tuple(index)].flatten().tolist()


@pytest.mark.parametrize("entry", sorted(FINGERPRINTED))
def test_recipe_weights_match_the_fingerprint_sums_and_samples(entry):
    fp = FINGERPRINT[entry]
    sd = weights(*FINGERPRINTED[entry])
    total = sum(t.double().sum().item() for t in sd.values())
    total_abs = sum(t.double().abs().sum().item() for t in sd.values())
    assert total == pytest.approx(fp["sum_float64"], rel=1e-6)
    assert total_abs == pytest.approx(fp["sum_abs_float64"], rel=1e-6)
    samples = {k: v for k, v in fp.items() if isinstance(v, list)}
    assert samples
    for expr, values in samples.items():
        assert _sample(sd, expr) == pytest.approx(values, abs=1e-5), expr


@pytest.mark.skipif(
    not EXACT_RANDN,
    reason="torch.randn differs by up to 2.3e-6 off the AVX2/AVX-512 kernels, so the recipe's "
    f"bytes (not its sums) differ on this CPU ({torch.backends.cpu.get_cpu_capability()})",
)
@pytest.mark.parametrize("entry", sorted(FINGERPRINTED))
def test_recipe_weights_match_the_fingerprint_sha256(entry):
    digest = hashlib.sha256()
    for t in weights(*FINGERPRINTED[entry]).values():
        if t.dtype == torch.float32:  # num_batches_tracked (int64) is not part of the hash
            digest.update(t.numpy().tobytes())
    assert digest.hexdigest() == FINGERPRINT[entry]["sha256_float32_bytes_in_key_order"]
