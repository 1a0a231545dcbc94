"""Loading IOG checkpoints: the released raw-state-dict format, common wrappers, clear errors."""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import pytest
import torch
from parity_weights import parity_weights

from boxmask.models import (
    CheckpointError,
    IOGNetwork,
    IOGRefinementNetwork,
    build_from_checkpoint,
    build_iog,
    detect_architecture,
    load_checkpoint,
    sha256_file,
)

PROBE = "Fine_net.final_predict.1.weight"


@pytest.fixture(scope="module")
def iog_state() -> dict[str, torch.Tensor]:
    return parity_weights("iog", 0)


@pytest.fixture(scope="module")
def refinement_state() -> dict[str, torch.Tensor]:
    return parity_weights("iog-refinement", 1)


@pytest.fixture(scope="module")
def iog() -> IOGNetwork:
    return build_iog()


def _reset_probe(model: torch.nn.Module) -> None:
    with torch.no_grad():
        model.get_parameter(PROBE).zero_()


def test_torch04_style_file_without_num_batches_tracked_loads(iog, iog_state, tmp_path):
    # torch 0.4.0 wrote no num_batches_tracked and used the legacy (non-zip) container
    old = OrderedDict((k, v) for k, v in iog_state.items() if not k.endswith("num_batches_tracked"))
    assert len(old) == 918 - 153
    path = tmp_path / "IOG_old.pth"
    torch.save(old, path, _use_new_zipfile_serialization=False)
    _reset_probe(iog)
    assert load_checkpoint(iog, path) is iog
    state = iog.state_dict()
    assert all(torch.equal(state[k], v) for k, v in old.items())
    assert state["backbone.bn1.num_batches_tracked"].item() == 0


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: {"state_dict": sd, "epoch": 99},
        lambda sd: {"model": sd},
        lambda sd: {"net": sd},
        lambda sd: {f"module.{k}": v for k, v in sd.items()},  # nn.DataParallel
        lambda sd: {"state_dict": {f"module.{k}": v for k, v in sd.items()}},
    ],
    ids=["state_dict", "model", "net", "module-prefix", "wrapped-and-prefixed"],
)
def test_wrapped_or_prefixed_state_dicts_load(iog, iog_state, wrap):
    _reset_probe(iog)
    load_checkpoint(iog, wrap(iog_state))
    assert torch.equal(iog.get_parameter(PROBE), iog_state[PROBE])


def test_mismatch_error_names_missing_unexpected_and_mismatched_keys(iog, iog_state):
    bad = dict(iog_state)
    del bad["backbone.conv1.weight"]
    bad["head.extra.weight"] = torch.zeros(3)
    bad["psp4.bottleneck.0.weight"] = torch.zeros(512, 4224, 1, 1)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(iog, bad)
    msg = str(info.value)
    assert isinstance(info.value, ValueError)
    assert "1 missing keys: backbone.conv1.weight" in msg
    assert "1 unexpected keys: head.extra.weight" in msg
    assert "1 shape mismatches: psp4.bottleneck.0.weight: checkpoint [512, 4224, 1, 1]" in msg


def test_refinement_checkpoint_into_iog_fails_with_counts_and_first_names(iog, refinement_state):
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(iog, refinement_state)
    msg = str(info.value)
    assert "30 unexpected keys: iog_points.0.weight" in msg
    assert "(25 more)" in msg  # only the first few are listed
    assert "shape mismatches: psp4.stages.0.1.weight" in msg


def test_failed_load_leaves_the_model_unchanged(iog, iog_state, refinement_state):
    load_checkpoint(iog, iog_state)
    with pytest.raises(CheckpointError):
        load_checkpoint(iog, refinement_state)
    assert torch.equal(iog.get_parameter(PROBE), iog_state[PROBE])


def test_architecture_is_detected_from_the_keys(iog_state, refinement_state):
    assert detect_architecture(iog_state) == "iog"
    assert detect_architecture(refinement_state) == "iog-refinement"
    assert detect_architecture({"state_dict": refinement_state}) == "iog-refinement"


def test_build_from_checkpoint_returns_the_matching_network(iog_state, refinement_state):
    main = build_from_checkpoint(iog_state)
    refine = build_from_checkpoint({f"module.{k}": v for k, v in refinement_state.items()})
    assert type(main) is IOGNetwork and type(refine) is IOGRefinementNetwork
    assert not main.training and not refine.training
    assert torch.equal(main.get_parameter(PROBE), iog_state[PROBE])
    assert torch.equal(refine.get_parameter(PROBE), refinement_state[PROBE])


def test_a_non_iog_checkpoint_is_rejected_by_detection():
    resnet_like = {"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(10, 512)}
    with pytest.raises(CheckpointError, match="not an IOG checkpoint"):
        detect_architecture(resnet_like)


class _Config:
    """An arbitrary Python object: pickling it stores a reference to code."""

    lr = 1e-8


def test_checkpoint_with_pickled_objects_is_refused(tmp_path):
    path = tmp_path / "with_code.pth"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "config": _Config()}, path)
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        detect_architecture(path)


def test_truncated_or_missing_file_raises_checkpoint_error(tmp_path, iog_state):
    path = tmp_path / "cut.pth"
    small = {k: iog_state[k] for k in list(iog_state)[:40]}
    torch.save(small, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError):
        detect_architecture(path)
    with pytest.raises(CheckpointError, match="not found"):
        detect_architecture(tmp_path / "absent.pth")


def test_sha256_file_matches_the_standard_test_vector(tmp_path):
    path = tmp_path / "abc.bin"
    path.write_bytes(b"abc")  # FIPS 180-2 example: SHA-256("abc")
    assert sha256_file(path) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    big = tmp_path / "big.bin"
    big.write_bytes(bytes(range(256)) * 10_000)  # spans several read chunks
    assert sha256_file(big, chunk_size=4096) == hashlib.sha256(big.read_bytes()).hexdigest()
