"""Inference forms of the IOG networks (``boxmask.models.runtime``) and the engine's choice of one.

Every form must reproduce the official network's fine logits within the parity tolerance of
``test_iog_parity_network.py`` (``max|out - ref| <= 1e-3 * max|ref| + 1e-4``), on the parity
fixtures and their deterministic weights. ``freeze`` is checked on its second call (the first
returns the traced eager forward).

``compile`` takes 2-3 minutes on a 2-core CPU even for the tiny network, so its tests run only
with ``BOXMASK_TEST_COMPILE=1`` (skipped in CI); everything else here takes under a minute.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from test_iog_parity_network import (
    MAIN_CASES,
    REFINE_CASES,
    error_and_budget,
    load_case_weights,
    read_case,
)

from boxmask.device import cpu_kernels, cpu_supports
from boxmask.engines.iog import COMPILE_MIN_CROPS, IOGEngine, small_job_mode
from boxmask.models import build_iog
from boxmask.models.checkpoint import build_model
from boxmask.models.config import IOGConfig
from boxmask.models.runtime import FORMS, fine_runner, fold_batchnorm, inductor_cache_dir

COMPILE = os.environ.get("BOXMASK_TEST_COMPILE") == "1"
needs_compile = pytest.mark.skipif(not COMPILE, reason="torch.compile takes minutes on a small "
                                   "CPU: set BOXMASK_TEST_COMPILE=1")
CHEAP_FORMS = [f for f in FORMS if f != "compile"]
ALL_FORMS = CHEAP_FORMS + [pytest.param("compile", marks=needs_compile)]


def run_twice(runner, *args: torch.Tensor) -> torch.Tensor:
    """The runner's output on its second call (``freeze`` runs the frozen module from then on)."""
    with torch.inference_mode():
        runner(*args)
        return runner(*args)


def tiny_net(architecture: str = "iog", seed: int = 0) -> torch.nn.Module:
    """A tiny network with non-trivial BatchNorm statistics (so that folding has work to do)."""
    torch.manual_seed(seed)
    net = build_model(IOGConfig.preset("tiny", architecture=architecture))
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5)
    return net.eval()


# --- parity with the official logits, every form -------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("form", ALL_FORMS)
@pytest.mark.parametrize("folder", MAIN_CASES, ids=lambda p: p.name)
def test_every_form_reproduces_the_official_fine_logits(folder, form):
    net = load_case_weights(build_iog(), read_case(folder), "iog")
    x = torch.from_numpy(np.load(folder / "input.npz")["x"])
    fine = run_twice(fine_runner(net, "iog", form), x.contiguous(memory_format=torch.channels_last))
    err, budget = error_and_budget(fine, np.load(folder / "outputs.npz")["fine"])
    assert err <= budget, f"{form}: max|diff| {err:.3g} > {budget:.3g}"


@pytest.mark.slow
@pytest.mark.parametrize("form", ALL_FORMS)
@pytest.mark.parametrize("folder", REFINE_CASES, ids=lambda p: p.name)
def test_every_form_reproduces_the_official_refinement_logits(folder, form):
    import re

    case = read_case(folder)
    source = re.search(r"([\w./-]+\.npz)", case["input"]).group(1)
    key = re.search(r"\(key (\w+)\)", case["input"])
    x = torch.from_numpy(np.load(folder / source)[key.group(1) if key else "x"])
    dmaps = np.load(folder / "dmaps.npz")
    name = sorted(k for k in dmaps.files if k.startswith("dmap"))[-1]  # the one with clicks
    net = load_case_weights(build_iog(refinement=True), case, "iog-refinement")
    cl = torch.channels_last
    fine = run_twice(fine_runner(net, "iog-refinement", form), x.contiguous(memory_format=cl),
                     torch.from_numpy(dmaps[name]).contiguous(memory_format=cl))
    ref = np.load(folder / "outputs.npz")["fine" + name.removeprefix("dmap")]
    err, budget = error_and_budget(fine, ref)
    assert err <= budget, f"{form}: max|diff| {err:.3g} > {budget:.3g}"


# --- forms on a tiny network ---------------------------------------------------------------------


@pytest.mark.parametrize("form", ALL_FORMS)
@pytest.mark.parametrize("architecture", ["iog", "iog-refinement"])
def test_forms_agree_with_eager_across_batch_sizes(architecture, form):
    net = tiny_net(architecture)
    x = (torch.rand(2, 5, 128, 128) * 255).contiguous(memory_format=torch.channels_last)
    args = (x,) if architecture == "iog" else (x, x[:, 3:5].flip(1))  # 128^2: fast enough
    with torch.inference_mode():
        ref = net.fine_logits(*args)
        runner = fine_runner(net, architecture, form)
        outs = [runner(*args), runner(*args), runner(*[a[:1] for a in args])]
    budget = 1e-3 * ref.abs().max().item() + 1e-4
    for out, want in zip(outs, [ref, ref, ref[:1]], strict=True):
        assert (out - want).abs().max().item() <= budget


def test_folding_neither_changes_nor_copies_the_network():
    net = tiny_net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    folded = fold_batchnorm(net)
    def batchnorms(m: torch.nn.Module) -> int:
        return sum(isinstance(c, torch.nn.BatchNorm2d) for c in m.modules())

    assert batchnorms(folded) < batchnorms(net) // 2  # those after a convolution are gone
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())
    # layers without a BatchNorm to fold are the network's own, not copies
    own = {p.data_ptr() for p in net.parameters()}
    convs = [m for m in folded.modules() if isinstance(m, torch.nn.Conv2d)]
    shared = [m for m in convs if m.weight.data_ptr() in own]
    folded_convs = [m for m in convs if m.weight.data_ptr() not in own]
    assert shared and folded_convs


def test_unknown_form_is_refused():
    with pytest.raises(ValueError, match="unknown inference form"):
        fine_runner(tiny_net(), "iog", "jit")


# --- inductor cache ------------------------------------------------------------------------------


def test_inductor_cache_defaults_to_the_boxmask_cache(tmp_path, monkeypatch):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("BOXMASK_HOME", str(tmp_path))
    assert inductor_cache_dir() == tmp_path / "inductor"
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "inductor")


def test_inductor_cache_keeps_the_users_setting(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    monkeypatch.setenv("BOXMASK_HOME", str(tmp_path / "home"))
    assert inductor_cache_dir() == tmp_path / "mine"
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "mine")


# --- the engine's choice of form -----------------------------------------------------------------


def engine(**options) -> IOGEngine:
    return IOGEngine.from_network(tiny_net(), device="cpu", **options)


SMALL = small_job_mode(torch.device("cpu"))


@pytest.mark.parametrize(("crops", "mode"), [
    (None, SMALL), (1, SMALL), (COMPILE_MIN_CROPS["cpu"] - 1, SMALL),
    (COMPILE_MIN_CROPS["cpu"], "compile"), (10 * COMPILE_MIN_CROPS["cpu"], "compile")])
def test_auto_compiles_only_from_the_cpu_threshold(crops, mode):
    assert engine(expected_crops=crops).mode == mode


def test_small_jobs_freeze_only_in_fp32_on_an_avx2_cpu():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert small_job_mode(cpu, "fp32", kernels="AVX2") == "freeze"
    for kernels in ("AVX512", "DEFAULT", "SVE256"):
        assert small_job_mode(cpu, "fp32", kernels=kernels) == "fold"
    for precision in ("bf16", "fp16"):
        assert small_job_mode(cpu, precision, kernels="AVX2") == "fold"
        assert small_job_mode(cpu, precision, kernels="AVX512") == "fold"
    assert small_job_mode(cuda, "fp32", kernels="AVX2") == "fold"
    assert small_job_mode(cuda, "bf16") == "fold"
    assert small_job_mode(cpu) == small_job_mode(cpu, "fp32", kernels=cpu_kernels())


def test_the_engine_asks_this_cpu_for_its_kernels(monkeypatch):
    import boxmask.engines.iog as iog

    monkeypatch.setattr(iog, "cpu_kernels", lambda: "AVX2")
    assert engine(precision="fp32", expected_crops=40).mode == "freeze"
    monkeypatch.setattr(iog, "cpu_kernels", lambda: "AVX512")
    assert engine(precision="fp32", expected_crops=40).mode == "fold"


@pytest.mark.skipif(not cpu_supports("bf16"), reason="needs a CPU with native bf16")
def test_a_bf16_engine_on_the_cpu_folds_for_small_jobs(monkeypatch):
    import boxmask.engines.iog as iog

    monkeypatch.setattr(iog, "cpu_kernels", lambda: "AVX2")
    assert engine(precision="bf16", expected_crops=40).mode == "fold"


def test_expect_chooses_the_form_of_an_engine_built_before_the_plan():
    e = engine()
    assert e.mode == SMALL
    e.expect(COMPILE_MIN_CROPS["cpu"])
    assert e.mode == "compile"
    fixed = engine(mode="fold")
    fixed.expect(10 * COMPILE_MIN_CROPS["cpu"])
    assert fixed.mode == "fold"


def test_the_form_is_kept_once_the_engine_has_run():
    e = engine(batch_size=1)
    e.forward_batch(torch.rand(1, 5, 512, 512) * 255)
    e.expect(10 * COMPILE_MIN_CROPS["cpu"])
    assert e.mode == SMALL
