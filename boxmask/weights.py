"""Registry, download cache and verification of the released IOG checkpoints.

The official checkpoints are published on Google Drive only (no hashes or sizes given). A download
goes to ``<cache>/weights/<file>.part`` (resumed with an HTTP ``Range`` request when interrupted),
is renamed atomically to ``<cache>/weights/<file>`` when complete, and its sha256 is recorded
beside it in ``<file>.sha256`` (``sha256sum`` format). ``verify`` re-checks a cached file against
that record and against the network's state-dict layout.

Cache folder: ``$BOXMASK_HOME`` if set, else ``$XDG_CACHE_HOME/boxmask``, else ``~/.cache/boxmask``.
``$BOXMASK_WEIGHTS_MIRROR`` (a base URL) makes ``fetch`` download ``<mirror>/<file>`` instead of
the Google Drive URL, e.g. from an institute's file server.
"""

from __future__ import annotations

import contextlib
import html
import http.client
import http.cookiejar
import logging
import os
import re
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .atomic import atomic_write_text, fsync_dir

log = logging.getLogger(__name__)

HOME_ENV = "BOXMASK_HOME"
MIRROR_ENV = "BOXMASK_WEIGHTS_MIRROR"
CHUNK = 1 << 20
SIZE_TOLERANCE = (0.99, 1.05)
"""A checkpoint is plausibly complete if its size is within these factors of the tensor payload
(the payload excludes the pickle/zip overhead; torch 0.4 files lack ``num_batches_tracked``)."""

_IOG_PAYLOAD = 209_005_080
_REFINEMENT_PAYLOAD = 214_249_536


@dataclass(frozen=True)
class WeightsEntry:
    """One released checkpoint."""

    name: str
    """File name, also the registry key."""
    arch: str
    """``"iog"`` or ``"iog-refinement"`` (see ``boxmask.models.build_iog``)."""
    drive_id: str
    """Google Drive file id."""
    payload_bytes: int
    """Bytes of tensor data in the checkpoint (the file is slightly larger)."""
    description: str
    sha256: str | None = None
    """Known sha256 of the official file; None where it has not been published."""

    @property
    def url(self) -> str:
        """Direct-download URL (Google Drive)."""
        return f"https://drive.google.com/uc?export=download&id={self.drive_id}"

    @property
    def page_url(self) -> str:
        """The Drive page linked from the official README (for a manual download)."""
        return f"https://drive.google.com/file/d/{self.drive_id}/view?usp=sharing"


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


def get_entry(name: str) -> WeightsEntry:
    """The registry entry ``name`` (a file name such as ``IOG_PASCAL_SBD.pth``)."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise WeightsError(f"unknown weights {name!r}; known: {', '.join(REGISTRY)}") from None


def weights_path(name: str) -> Path:
    """Where ``name`` lives in the cache (whether or not it has been downloaded)."""
    return cache_dir() / "weights" / get_entry(name).name


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


def list_weights() -> list[dict[str, Any]]:
    """One dict per registry entry: name, arch, description, url, page_url, approx_size_bytes,
    path (cached file or None), size_bytes (of the cached file or None), sha256 (recorded or
    None)."""
    rows = []
    for entry in REGISTRY.values():
        path = weights_path(entry.name)
        cached = path.is_file()
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
        })
    return rows


def _how_to_get(entry: WeightsEntry) -> str:
    return (
        f"download it with `boxmask weights fetch {entry.name}`, or open {entry.page_url} in a "
        f"browser and register the file with `boxmask weights install {entry.name} <file>`"
    )


def resolve_weights(name_or_path: str | os.PathLike) -> Path:
    """A checkpoint file to load: an existing path, or a registry name already in the cache.

    Raises ``WeightsNotFoundError`` saying how to obtain the file otherwise.
    """
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    name = str(name_or_path)
    if name in REGISTRY:
        cached = weights_path(name)
        if cached.is_file():
            return cached
        raise WeightsNotFoundError(
            f"{name} is not in the cache ({cached}); {_how_to_get(REGISTRY[name])}"
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
        fcntl = None
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

    ``url`` overrides the source (else ``$BOXMASK_WEIGHTS_MIRROR/<name>``, else Google Drive). An
    interrupted download is kept as ``<file>.part`` and resumed with a ``Range`` request, both on
    the ``retries`` automatic retries and on a later call. The sha256 of the completed file is
    recorded in ``<file>.sha256``; a file already cached is returned unless ``force``. Concurrent
    calls for the same file (threads or processes sharing the cache) download it once.
    """
    entry = get_entry(name)
    dest = weights_path(name)
    if dest.is_file() and not force:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(dest):
        if dest.is_file() and not force:  # fetched by another process while we waited
            return dest
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
    from .models.checkpoint import sha256_file

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

    The file must be a loadable checkpoint of the entry's architecture (checked before copying).
    """
    from .models.checkpoint import CheckpointError, detect_architecture

    entry = get_entry(name)
    source = Path(source).expanduser()
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
# verification


def verify(name: str) -> dict[str, Any]:
    """Check the cached file of ``name``; never raises for a bad file.

    Returns ``present``, ``path``, ``size_bytes``, ``size_plausible`` (within ``SIZE_TOLERANCE`` of
    the tensor payload), ``sha256``, ``sha256_recorded``, ``sha256_matches`` (against the record
    and, where known, the official hash), ``loads`` (``torch.load`` with ``weights_only=True``),
    ``keys_match`` (names and shapes equal the network's), ``errors`` (list of str) and ``ok``.
    """
    from .models.checkpoint import sha256_file

    entry = get_entry(name)
    path = weights_path(name)
    result: dict[str, Any] = {
        "name": name, "path": path, "present": path.is_file(), "size_bytes": None,
        "size_plausible": False, "sha256": None, "sha256_recorded": None,
        "sha256_matches": False, "loads": False, "keys_match": False, "errors": [], "ok": False,
    }
    errors: list[str] = result["errors"]
    if not result["present"]:
        errors.append(f"not downloaded: {_how_to_get(entry)}")
        return result
    size = path.stat().st_size
    lo, hi = (entry.payload_bytes * f for f in SIZE_TOLERANCE)
    result.update(size_bytes=size, size_plausible=lo <= size <= hi)
    if not result["size_plausible"]:
        errors.append(f"size {size} B, expected about {entry.payload_bytes} B")
    digest = sha256_file(path)
    recorded = recorded_sha256(path)
    expected = [h for h in (recorded, entry.sha256) if h]
    result.update(sha256=digest, sha256_recorded=recorded,
                  sha256_matches=bool(expected) and all(h == digest for h in expected))
    if not expected:
        errors.append("no sha256 recorded (file not fetched/installed by boxmask)")
    elif not result["sha256_matches"]:
        errors.append(f"sha256 {digest} differs from the recorded {expected[0]}: file changed")
    _check_layout(entry, path, result)
    result["ok"] = not errors
    return result


def _check_layout(entry: WeightsEntry, path: Path, result: dict[str, Any]) -> None:
    import torch

    from .models.checkpoint import CheckpointError, check_state_dict, read_state_dict
    from .models.iog import IOGNetwork
    from .models.refinement import IOGRefinementNetwork

    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # legacy (non-zip) files cannot be memory-mapped
            state = torch.load(path, map_location="cpu", weights_only=True)
        result["loads"] = True
        with torch.device("meta"):
            model = IOGRefinementNetwork() if entry.arch == "iog-refinement" else IOGNetwork()
        check_state_dict(model, read_state_dict(state))
        result["keys_match"] = True
    except CheckpointError as exc:
        result["errors"].append(str(exc))
    except Exception as exc:  # unpickling/zip errors of a damaged file
        result["errors"].append(f"cannot load: {type(exc).__name__}: {exc}")
