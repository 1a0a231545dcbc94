"""Structure of the IOG networks: checkpoint layout, outputs, fine-only paths, inference rewrites.

Numerical agreement with the official implementation is tested in test_iog_parity_network.py; the
tests here use small inputs (the heads always work at 128^2 and output 512^2, whatever the input
size) so that they stay cheap.
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from parity_weights import KEY_LISTS, parity_weights
from torch import nn

from boxmask.models import IOGNetwork, IOGRefinementNetwork, build_iog

SMALL = 64  # input side: layer4 is 4x4, all fixed-size resampling still applies


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out - ref).abs().max() / ref.abs().max()).item()


@pytest.fixture(scope="module")
def iog() -> IOGNetwork:
    model = build_iog()
    model.load_state_dict(parity_weights("iog", 0), strict=True)
    return model


@pytest.fixture(scope="module")
def refinement() -> IOGRefinementNetwork:
    model = build_iog(refinement=True)
    model.load_state_dict(parity_weights("iog-refinement", 1), strict=True)
    return model


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    return torch.rand(2, 5, SMALL, SMALL, generator=g) * 255


@pytest.fixture(scope="module")
def guidance() -> torch.Tensor:
    g = torch.Generator().manual_seed(8)
    return torch.rand(2, 2, SMALL, SMALL, generator=g) * 255


@pytest.fixture(scope="module")
def iog_outputs(iog: IOGNetwork, x: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        return iog(x)


@pytest.mark.parametrize(
    ("refine", "arch"), [(False, "iog"), (True, "iog-refinement")], ids=["iog", "refinement"]
)
def test_state_dict_names_shapes_and_order_equal_the_official_network(refine, arch):
    expected = json.loads(KEY_LISTS[arch].read_text())
    model = build_iog(refinement=refine)
    got = [[name, list(t.shape)] for name, t in model.state_dict().items()]
    assert len(got) == len(expected)
    assert got == expected


def test_build_iog_returns_the_right_class_in_eval_mode():
    assert isinstance(build_iog(), IOGNetwork)
    model = build_iog(refinement=True)
    assert isinstance(model, IOGRefinementNetwork)
    assert not any(m.training for m in model.modules())


def test_forward_returns_five_512_logit_maps_per_sample(iog_outputs):
    assert len(iog_outputs) == 5
    for out in iog_outputs:
        assert out.shape == (2, 1, 512, 512)
        assert out.dtype == torch.float32
        assert torch.isfinite(out).all()
    # logits, not probabilities: the official model has no sigmoid
    assert min(o.min().item() for o in iog_outputs) < 0


def test_forward_fine_equals_the_fifth_output(iog, x, iog_outputs):
    with torch.no_grad():
        fine = iog.forward_fine(x)
    assert torch.equal(fine, iog_outputs[4])


def test_samples_in_a_batch_do_not_influence_each_other(iog, x, iog_outputs):
    with torch.no_grad():
        single = iog.forward_fine(x[1:])
    assert relative_error(single, iog_outputs[4][1:]) < 1e-5


def test_refinement_forward_is_backbone_once_then_decode(refinement, x, guidance):
    x, guidance = x[:1], guidance[:1]
    with torch.no_grad():
        features = refinement.backbone_features(x)
        assert [f.shape[1] for f in features] == [2048, 1024, 512, 256]
        decoded = refinement.decode(features, guidance)
        fine = refinement.decode_fine(features, guidance)
        forward = refinement(x, guidance)
    assert len(decoded) == 5 and all(d.shape == (1, 1, 512, 512) for d in decoded)
    assert torch.equal(fine, decoded[4])
    assert all(torch.equal(a, b) for a, b in zip(forward, decoded, strict=True))


def test_refinement_output_depends_on_the_guidance_map(refinement, x, guidance):
    with torch.no_grad():
        features = refinement.backbone_features(x[:1])
        with_clicks = refinement.decode_fine(features, guidance[:1])
        without = refinement.decode_fine(features, torch.zeros_like(guidance[:1]))
    assert (with_clicks - without).abs().max().item() > 1e-2


def test_channels_last_model_matches_the_default_layout(iog, x, iog_outputs):
    model = build_iog().to(memory_format=torch.channels_last)
    model.load_state_dict(iog.state_dict())
    with torch.no_grad():
        fine = model.forward_fine(x[:1].contiguous(memory_format=torch.channels_last))
    assert relative_error(fine, iog_outputs[4][:1]) < 1e-4


def test_conv_batchnorm_folding_by_fx_keeps_the_outputs(iog, x, iog_outputs):
    from torch.fx.experimental.optimization import fuse

    fused = fuse(iog)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    assert n_bn == 4  # only the BN(1) after each coarse head's upsampling cannot be folded
    with torch.no_grad():
        outs = fused(x[:1])
    for out, ref in zip(outs, iog_outputs, strict=True):
        assert relative_error(out, ref[:1]) < 1e-4


def test_torchscript_compiles_forward_and_forward_fine(iog, x, iog_outputs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated in torch 2.x
        scripted = torch.jit.script(iog)
    with torch.no_grad():
        fine = scripted.forward_fine(x[:1])
    assert relative_error(fine, iog_outputs[4][:1]) < 1e-5
