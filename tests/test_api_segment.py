"""``boxmask.api.segment_file``: one box of one image file into a mask PNG, and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from boxmask import api
from boxmask.cli import cli
from boxmask.imageio import ImageDecodeError
from boxmask.masks import decode_png
from boxmask.pipeline import PipelineError


@pytest.fixture
def image_file(tmp_path: Path) -> Path:
    """A 64 x 48 image: a white square (x 20..39, y 10..29) on a dark, slightly noisy ground."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 30, size=(48, 64, 3), dtype=np.uint8)
    rgb[10:30, 20:40] = 230
    path = tmp_path / "square.png"
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


def test_segment_file_writes_the_mask_as_a_png(image_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "masks" / "box.png"
    pred = api.segment_file(image_file, (16, 6, 43, 33), out, engine="box")
    data = out.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    stored = decode_png(data)
    assert stored.shape == (48, 64) and set(np.unique(stored)) == {0, 255}
    np.testing.assert_array_equal(stored > 0, pred.mask)
    assert int(pred.mask.sum()) == 28 * 28 and pred.mask[6:34, 16:44].all()
    assert Image.open(out).size == (64, 48)


def test_segment_file_with_grabcut_finds_the_square(image_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "grabcut.png"
    pred = api.segment_file(image_file, (16, 6, 43, 33), out, engine="grabcut")
    stored = cv2.imread(str(out), cv2.IMREAD_GRAYSCALE) > 0
    np.testing.assert_array_equal(stored, pred.mask)
    truth = np.zeros((48, 64), dtype=bool)
    truth[10:30, 20:40] = True
    assert (truth & stored).sum() / (truth | stored).sum() > 0.8


def test_segment_file_reports_a_mask_it_cannot_write(image_file: Path, tmp_path: Path) -> None:
    taken = tmp_path / "taken"
    taken.mkdir()
    with pytest.raises(api.MaskWriteError, match=f"cannot write the mask to {taken}") as raised:
        api.segment_file(image_file, (16, 6, 43, 33), taken, engine="box")
    assert isinstance(raised.value, OSError) and raised.value.__cause__ is not None
    assert list(taken.iterdir()) == []


def test_segment_file_reports_a_mask_it_cannot_encode(image_file: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(mask: np.ndarray) -> bytes:
        raise ValueError("PNG encoding failed")

    monkeypatch.setattr(api, "encode_binary_png", refuse)
    out = tmp_path / "m.png"
    with pytest.raises(api.MaskWriteError, match="cannot encode the mask for .*PNG encoding"):
        api.segment_file(image_file, (16, 6, 43, 33), out, engine="box")
    assert not out.exists()


def test_segment_file_refuses_bad_input(image_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.png"
    with pytest.raises(ValueError, match="entirely outside"):
        api.segment_file(image_file, (100, 100, 120, 120), out, engine="box")
    with pytest.raises(ValueError, match="four pixel coordinates"):
        api.segment_file(image_file, (1, 2, 3), out, engine="box")
    with pytest.raises(PipelineError, match="--weights applies to the network engines"):
        api.segment_file(image_file, (16, 6, 43, 33), out, engine="grabcut", weights="w.pth")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    with pytest.raises(ImageDecodeError):
        api.segment_file(broken, (16, 6, 43, 33), out, engine="box")
    assert not out.exists()


def test_default_weights_are_chosen_in_one_place() -> None:
    assert api.default_weights("iog") == "IOG_PASCAL_SBD.pth"
    assert api.default_weights("iog", refining=True) == "IOG_PASCAL_SBD_REFINEMENT.pth"
    assert all(api.default_weights(e) is None for e in ("u2net", "fused", "grabcut", "box"))


def test_segment_command_prints_the_mask_and_maps_errors(image_file: Path,
                                                         tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "cli.png"
    res = runner.invoke(cli, ["segment", str(image_file), "--box", "16,6,43,33", "--engine",
                              "box", "--output", str(out)])
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    assert info["output"] == str(out) and info["area"] == 28 * 28
    assert int((cv2.imread(str(out), cv2.IMREAD_GRAYSCALE) > 0).sum()) == 28 * 28
    not_a_folder = tmp_path / "file.txt"
    not_a_folder.write_text("")
    res = runner.invoke(cli, ["segment", str(image_file), "--box", "16,6,43,33", "--engine",
                              "box", "--output", str(not_a_folder / "m.png")])
    assert res.exit_code == 1 and "cannot write the mask" in res.output
    res = runner.invoke(cli, ["segment", str(image_file), "--box", "16,6,43,33", "--engine",
                              "grabcut", "--weights", "w.pth", "--output", str(out)])
    assert res.exit_code == 2 and "--weights applies to" in res.output
    res = runner.invoke(cli, ["segment", str(image_file), "--box", "16,6,43,33", "--engine",
                              "box", "--stage1-weights", "s.pth", "--output", str(out)])
    assert res.exit_code == 2 and "--stage1-weights applies to" in res.output
