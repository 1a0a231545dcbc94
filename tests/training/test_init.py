"""Initialisation from ImageNet ResNet-101 files and IOG checkpoints; the stage-1 inside points."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

from boxmask.models import CheckpointError, IOGConfig, build_iog, build_model, export_checkpoint
from boxmask.models.stage1 import stage1_inside_points
from boxmask.training.init import init_from_checkpoint, init_from_imagenet, official_init


@pytest.fixture(scope="module")
def resnet101_file(tmp_path_factory) -> tuple[str, dict[str, torch.Tensor]]:
    """A torchvision resnet101 state dict (random init: no download) saved like the real one."""
    torch.manual_seed(0)
    state = torchvision.models.resnet101(weights=None).state_dict()
    path = tmp_path_factory.mktemp("imagenet") / "resnet101-random.pth"
    torch.save(state, path)
    return str(path), state


def test_imagenet_init_copies_every_backbone_key_and_zero_pads_the_stem(resnet101_file):
    path, src = resnet101_file
    model = build_iog()
    report = init_from_imagenet(model, path)
    state = model.state_dict()
    stem = state["backbone.conv1.weight"]
    assert stem.shape == (64, 5, 7, 7)
    assert torch.equal(stem[:, :3], src["conv1.weight"]) and not stem[:, 3:].any()
    for key, value in src.items():
        if key.startswith("fc.") or key == "conv1.weight":
            continue
        assert torch.equal(state[f"backbone.{key}"], value), key
    assert sorted(report.unused) == ["fc.bias", "fc.weight"]
    assert not any(k.startswith("backbone.") for k in report.fresh)
    assert {k.split(".")[0] for k in report.fresh} == {"Coarse_net", "Fine_net", "psp4"}


def test_imagenet_init_of_a_reduced_model_is_refused(resnet101_file):
    with pytest.raises(CheckpointError, match="does not fit the backbone"):
        init_from_imagenet(build_model(IOGConfig.preset("tiny")), resnet101_file[0])


def test_official_init_follows_the_fan_out_rule():
    model = build_model(IOGConfig.preset("small"))
    official_init(model)
    w = model.backbone.layer3[0].conv2.weight  # 3x3, 64 out -> std sqrt(2 / (9 * 64))
    assert abs(w.std().item() - (2 / (9 * w.shape[0])) ** 0.5) < 0.01
    assert torch.equal(model.Coarse_net.laterals[0][1].weight,
                       torch.ones_like(model.Coarse_net.laterals[0][1].weight))


def test_stage1_starts_from_an_iog_checkpoint_entirely(tmp_path):
    torch.manual_seed(1)
    iog = build_model(IOGConfig.preset("tiny"))
    path = export_checkpoint(iog, tmp_path / "iog.pth")
    stage1 = build_model(IOGConfig.preset("tiny"))
    report = init_from_checkpoint(stage1, path)
    assert report.fresh == [] and report.unused == []
    for k, v in iog.state_dict().items():
        assert torch.equal(stage1.state_dict()[k], v)


def test_refinement_net_from_an_iog_checkpoint_starts_as_the_iog_net(tmp_path):
    torch.manual_seed(2)
    cfg = IOGConfig.preset("tiny", input_size=64)
    iog = build_model(cfg)
    official_init(iog)
    with torch.no_grad():  # non-trivial BN statistics, as in a trained checkpoint
        for m in iog.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    refine = build_model(IOGConfig.preset("tiny", "iog-refinement", input_size=64))
    report = init_from_checkpoint(refine, iog.state_dict())
    assert any("expanded" in n for n in report.notes)
    assert all(k.startswith("iog_points.") for k in report.fresh)
    x = torch.rand(2, 5, 64, 64) * 255
    guidance = torch.rand(2, 2, 64, 64) * 255
    with torch.no_grad():
        expected = iog.eval()(x)[4]
        got = refine.eval().decode(refine.backbone_features(x), guidance)[4]
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_unrelated_checkpoint_is_refused():
    with pytest.raises(CheckpointError):
        init_from_checkpoint(build_model(IOGConfig.preset("tiny")),
                             {"backbone.conv1.weight": torch.zeros(3, 3, 3, 3),
                              "Fine_net.final_predict.1.weight": torch.zeros(1)})


# --------------------------------------------------------------------------- stage 1 inference


class BrightPixels(torch.nn.Module):
    """A stand-in stage-1 network: the object is where the red channel is bright. It checks that
    it gets the stage-1 input (empty inside channel, corner clicks present)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.config = IOGConfig(input_size=size)
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def fine_logits(self, x: torch.Tensor, guidance: torch.Tensor | None = None) -> torch.Tensor:
        assert guidance is None and not x[:, 3].any() and x[:, 4].amax() == 255
        return torch.where(x[:, :1] > 128, 10.0, -10.0)


@pytest.mark.parametrize("size", [512, 128])
def test_stage1_inside_points_are_the_centres_of_the_predicted_objects(size):
    image = np.zeros((300, 400, 3), np.uint8)
    yy, xx = np.mgrid[:300, :400]
    discs = [(100.0, 80.0, 40.0), (290.0, 200.0, 60.0), (380.0, 40.0, 15.0)]  # cx, cy, r
    boxes = []
    for cx, cy, r in discs:
        disc = (xx - cx) ** 2 + (yy - cy) ** 2 <= r**2
        image[disc] = 255
        ys, xs = np.nonzero(disc)
        boxes.append((xs.min(), ys.min(), xs.max(), ys.max()))
    points = stage1_inside_points(BrightPixels(size), image, np.array(boxes), batch_size=2)
    assert points.shape == (3, 2) and points.dtype == np.float64
    for (cx, cy, r), (px, py) in zip(discs, points, strict=True):
        tolerance = 1.5 if size == 512 else 2.5 * 2 * (r + 30) / size
        assert np.hypot(px - cx, py - cy) <= tolerance, ((cx, cy), (px, py))


def test_stage1_falls_back_to_the_box_centre_when_nothing_is_found():
    image = np.zeros((100, 100, 3), np.uint8)
    points = stage1_inside_points(BrightPixels(128), image, [(10, 20, 30, 60)])
    np.testing.assert_array_equal(points, [[20.0, 40.0]])
    assert stage1_inside_points(BrightPixels(128), image, np.zeros((0, 4))).shape == (0, 2)
