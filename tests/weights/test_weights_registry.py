"""The checkpoint registry: cache layout, resolving, downloading (with resume) and verification.

Downloads are served by a local HTTP server on 127.0.0.1 (with Range support written here); no
test contacts the internet.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import re
import socket
import threading
import time
from pathlib import Path

import pytest
import torch
from parity_weights import KEY_LISTS

from boxmask import weights
from boxmask.weights import WeightsError, WeightsNotFoundError

NAME = "IOG_PASCAL.pth"
DRIVE_IDS = {  # from the official README (reference section 2.3)
    "IOG_PASCAL_SBD.pth": "1Lm1hhMhhjjnNwO4Pf7SC6tXLayH2iH0l",
    "IOG_PASCAL.pth": "1GLZIQlQ-3KUWaGTQ1g_InVcqesGfGcpW",
    "IOG_PASCAL_SBD_REFINEMENT.pth": "1VdOFUZZbtbYt9aIMugKhMKDA6EuqKG30",
}


@pytest.fixture(autouse=True)
def cache(weights_home) -> Path:
    return weights_home


@pytest.fixture(scope="module")
def payload() -> bytes:
    """A small real checkpoint file (4 MiB of tensors), as bytes."""
    g = torch.Generator().manual_seed(3)
    state = {
        "psp4.stages.0.1.weight": torch.randn(512, 2048, 1, 1, generator=g),
        "psp4.stages.0.2.weight": torch.randn(512, generator=g),
    }
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves ``server.files[path]``; honours ``Range: bytes=N-`` unless ``server.ranges`` is off;
    drops the connection once after ``server.drop_at`` bytes when that is set."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:
        srv = self.server
        srv.requests.append((self.path, self.headers.get("Range")))
        entry = srv.files.get(self.path)
        if entry is None:
            self.send_error(404)
            return
        body, content_type = entry
        start = 0
        m = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if m and srv.ranges:
            start = int(m.group(1))
            if start >= len(body):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        time.sleep(srv.delay_s)
        if srv.drop_at is not None and srv.drop_at > start:
            self.wfile.write(body[start:srv.drop_at])
            self.wfile.flush()
            srv.drop_at = None  # once
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(body[start:])


@pytest.fixture
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    srv.files, srv.requests, srv.ranges, srv.drop_at, srv.delay_s = {}, [], True, None, 0.0
    srv.base = f"http://127.0.0.1:{srv.server_address[1]}"
    thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _serve(server, payload: bytes, path: str = f"/files/{NAME}") -> str:
    server.files[path] = (payload, "application/octet-stream")
    return server.base + path


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- registry and cache ---------------------------------------------------------------------------


def test_registry_lists_the_three_released_checkpoints(cache):
    rows = {row["name"]: row for row in weights.list_weights() if row["source"] == "google-drive"}
    assert set(rows) == set(DRIVE_IDS)
    for name, drive_id in DRIVE_IDS.items():
        assert drive_id in rows[name]["url"] and drive_id in rows[name]["page_url"]
        assert rows[name]["path"] is None and rows[name]["sha256"] is None
    assert rows["IOG_PASCAL_SBD_REFINEMENT.pth"]["arch"] == "iog-refinement"
    assert rows["IOG_PASCAL_SBD.pth"]["arch"] == rows["IOG_PASCAL.pth"]["arch"] == "iog"
    assert round(rows["IOG_PASCAL.pth"]["approx_size_bytes"] / 1e6, 1) == 209.0
    assert round(rows["IOG_PASCAL_SBD_REFINEMENT.pth"]["approx_size_bytes"] / 1e6, 1) == 214.2


def test_cache_lives_under_boxmask_home(cache, monkeypatch, tmp_path):
    assert weights.weights_path(NAME) == cache / "weights" / NAME
    monkeypatch.delenv("BOXMASK_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert weights.weights_path(NAME) == tmp_path / "user" / ".cache" / "boxmask" / "weights" / NAME


def test_resolve_accepts_a_file_on_disk_or_a_cached_name(tmp_path, server, payload):
    own = tmp_path / "my_iog.pth"
    own.write_bytes(payload)
    assert weights.resolve_weights(own) == own
    assert weights.resolve_weights(str(own)) == own
    with pytest.raises(WeightsNotFoundError) as info:
        weights.resolve_weights(NAME)
    assert "boxmask weights fetch IOG_PASCAL.pth" in str(info.value)
    assert DRIVE_IDS[NAME] in str(info.value)  # where to download it by hand
    weights.fetch(NAME, url=_serve(server, payload), progress=False)
    assert weights.resolve_weights(NAME) == weights.weights_path(NAME)


def test_resolve_rejects_an_unknown_name():
    with pytest.raises(FileNotFoundError, match="not a known weights name"):
        weights.resolve_weights("IOG_COCO.pth")


# --- download -------------------------------------------------------------------------------------


def test_fetch_downloads_renames_atomically_and_records_sha256(server, payload):
    path = weights.fetch(NAME, url=_serve(server, payload), progress=False)
    assert path == weights.weights_path(NAME)
    assert path.read_bytes() == payload
    assert not path.with_name(NAME + ".part").exists()
    assert weights.recorded_sha256(path) == _sha(payload)
    assert path.with_name(NAME + ".sha256").read_text() == f"{_sha(payload)}  {NAME}\n"
    assert server.requests == [(f"/files/{NAME}", None)]


def test_fetch_uses_the_mirror_from_the_environment(server, payload, monkeypatch):
    _serve(server, payload, path=f"/mirror/{NAME}")
    monkeypatch.setenv("BOXMASK_WEIGHTS_MIRROR", server.base + "/mirror/")
    assert weights.fetch(NAME, progress=False).read_bytes() == payload


def test_fetch_resumes_with_a_range_request_after_the_connection_drops(server, payload):
    server.drop_at = 1_500_000
    path = weights.fetch(NAME, url=_serve(server, payload), progress=False, retry_wait_s=0)
    assert path.read_bytes() == payload
    assert server.requests == [(f"/files/{NAME}", None), (f"/files/{NAME}", "bytes=1500000-")]
    assert weights.recorded_sha256(path) == _sha(payload)


def test_interrupted_fetch_keeps_the_part_and_a_later_call_resumes(server, payload):
    server.drop_at = 1_000_000
    url = _serve(server, payload)
    with pytest.raises(WeightsError, match="again to resume"):
        weights.fetch(NAME, url=url, progress=False, retries=0)
    part = weights.weights_path(NAME).with_name(NAME + ".part")
    assert part.read_bytes() == payload[:1_000_000]
    assert not weights.weights_path(NAME).exists()
    path = weights.fetch(NAME, url=url, progress=False, retries=0)
    assert path.read_bytes() == payload
    assert server.requests[-1] == (f"/files/{NAME}", "bytes=1000000-")


def test_fetch_restarts_when_the_server_ignores_ranges(server, payload):
    server.drop_at, server.ranges = 700_000, False
    path = weights.fetch(NAME, url=_serve(server, payload), progress=False, retry_wait_s=0)
    assert path.read_bytes() == payload


def test_fetch_returns_a_cached_file_without_contacting_the_server(server, payload):
    url = _serve(server, payload)
    weights.fetch(NAME, url=url, progress=False)
    server.requests.clear()
    assert weights.fetch(NAME, url=url, progress=False) == weights.weights_path(NAME)
    assert server.requests == []


def test_concurrent_fetches_of_one_file_download_it_once(server, payload):
    server.delay_s = 0.3
    url = _serve(server, payload)
    paths: list[Path] = []
    threads = [
        threading.Thread(target=lambda: paths.append(weights.fetch(NAME, url=url, progress=False)))
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert paths == [weights.weights_path(NAME)] * 3
    assert paths[0].read_bytes() == payload
    assert len(server.requests) == 1


def test_fetch_follows_a_google_drive_style_confirmation_form(server, payload):
    # Drive answers large files with a "can't scan for viruses" page holding a download form
    form = (
        f'<html><body><form id="download-form" action="{server.base}/download" method="get">'
        '<input type="hidden" name="id" value="abc"><input type="hidden" name="export" '
        'value="download"><input type="hidden" name="confirm" value="t">'
        '<input type="hidden" name="uuid" value="1234-5678"></form></body></html>'
    )
    server.files["/uc?export=download&id=abc"] = (form.encode(), "text/html; charset=utf-8")
    server.files["/download?id=abc&export=download&confirm=t&uuid=1234-5678"] = (
        payload, "application/octet-stream",
    )
    path = weights.fetch(NAME, url=server.base + "/uc?export=download&id=abc", progress=False)
    assert path.read_bytes() == payload
    assert len(server.requests) == 2


def test_old_drive_confirm_links_are_understood():
    page = '<a id="uc-download-link" href="/uc?export=download&amp;confirm=Ab_1&amp;id=xyz">'
    url = weights.drive_confirm_url(page, "https://drive.google.com/uc?export=download&id=xyz")
    assert url == "https://drive.google.com/uc?export=download&confirm=Ab_1&id=xyz"
    assert weights.drive_confirm_url("<html>quota exceeded</html>", "https://x/") is None


def test_an_html_page_instead_of_the_file_is_an_error(server):
    server.files["/quota"] = (b"<html>Too many users have viewed this file</html>", "text/html")
    with pytest.raises(WeightsError, match="HTML page"):
        weights.fetch(NAME, url=server.base + "/quota", progress=False)
    assert not weights.weights_path(NAME).exists()


def test_a_missing_url_is_an_error_without_retries(server):
    with pytest.raises(WeightsError, match="404"):
        weights.fetch(NAME, url=server.base + "/nothing.pth", progress=False, retry_wait_s=0)
    assert len(server.requests) == 1


# --- verification ---------------------------------------------------------------------------------


def test_verify_reports_a_corrupted_download(server, payload):
    path = weights.fetch(NAME, url=_serve(server, payload), progress=False)
    report = weights.verify(NAME)
    assert report["present"] and report["loads"] and report["sha256_matches"]
    assert report["sha256"] == report["sha256_recorded"] == _sha(payload)
    # a 4 MiB file is not a 209 MB IOG checkpoint: reported, not raised
    assert not report["size_plausible"] and not report["keys_match"] and not report["ok"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    report = weights.verify(NAME)
    assert not report["sha256_matches"]
    assert any("differs from the recorded" in e for e in report["errors"])


def test_verify_of_a_file_not_downloaded_says_how_to_fetch_it():
    report = weights.verify(NAME)
    assert not report["present"] and not report["ok"]
    assert "boxmask weights fetch IOG_PASCAL.pth" in report["errors"][0]


def test_an_installed_full_size_checkpoint_verifies_ok(tmp_path):
    keys = json.loads(KEY_LISTS["iog"].read_text())
    state = {
        name: torch.zeros(shape, dtype=torch.int64 if not shape else torch.float32)
        for name, shape in keys
    }
    source = tmp_path / "downloaded_by_hand.pth"
    torch.save(state, source)
    path = weights.install(NAME, source)
    report = weights.verify(NAME)
    assert report["ok"], report["errors"]
    assert report["size_plausible"] and report["keys_match"] and report["sha256_matches"]
    assert report["size_bytes"] == path.stat().st_size
    with pytest.raises(WeightsError, match="iog-refinement"):
        weights.install("IOG_PASCAL_SBD_REFINEMENT.pth", source)


def test_install_refuses_a_file_that_is_not_an_iog_checkpoint(tmp_path, payload):
    source = tmp_path / "other.pth"
    source.write_bytes(payload)
    with pytest.raises(WeightsError, match="not an IOG checkpoint"):
        weights.install(NAME, source)
    assert not weights.weights_path(NAME).exists()
