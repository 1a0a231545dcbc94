"""Download of a checkpoint over HTTP(S), as Google Drive serves it: confirmation pages, cookies,
resuming an interrupted download with a ``Range`` request, retries.

The IOG checkpoints are published on Google Drive only (no hashes or sizes given). ``download``
writes ``<file>.part`` in the cache (``boxmask.weights.store`` renames it into place).
``$BOXMASK_WEIGHTS_MIRROR`` (a base URL) makes it download ``<mirror>/<file>`` instead of the
Google Drive URL, e.g. from an institute's file server.
"""

from __future__ import annotations

import html
import http.client
import http.cookiejar
import logging
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm

from .registry import CHUNK, WeightsEntry, WeightsError

log = logging.getLogger(__name__)

MIRROR_ENV = "BOXMASK_WEIGHTS_MIRROR"


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

def download(
    entry: WeightsEntry,
    part: Path,
    url: str | None,
    progress: bool,
    retries: int,
    retry_wait_s: float,
    timeout_s: float,
) -> None:
    """Download ``entry`` to ``part`` (resuming what is there), from ``url``, else
    ``$BOXMASK_WEIGHTS_MIRROR/<name>``, else Google Drive; ``WeightsError`` unless a complete
    PyTorch checkpoint arrives (a partial download is kept to resume, anything else removed)."""
    if url is None:
        mirror = os.environ.get(MIRROR_ENV)
        url = f"{mirror.rstrip('/')}/{entry.name}" if mirror else entry.url
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
