"""Headless Chromium for tests: the DOM of a page after its scripts ran.

Needs the ``chromium`` binary (Debian package ``chromium``; ``chromium-browser``,
``google-chrome`` and ``headless_shell`` are found too). ``require_chromium()`` skips the calling
test with the reason when it is missing, or fails it when the environment variable
``BOXMASK_REQUIRE_SYSTEM_TESTS=1`` says system tests must run. The browser gets a fresh profile
in a temporary folder, no network services, no sandbox (tests may run as root), no GPU.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass

import pytest

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable",
              "headless_shell")
TIMEOUT_S = 60


def find_chromium() -> str | None:
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


def require_chromium() -> str:
    """The Chromium binary, or skip (fail under ``BOXMASK_REQUIRE_SYSTEM_TESTS=1``)."""
    path = find_chromium()
    if path is None:
        reason = ("headless Chromium not found (install the Debian package 'chromium'); "
                  "looked for " + ", ".join(CANDIDATES))
        if os.environ.get("BOXMASK_REQUIRE_SYSTEM_TESTS") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return path


@dataclass
class BrowserRun:
    stdout: str
    stderr: str

    def console_errors(self) -> list[str]:
        """Console messages of the page that report an uncaught script error."""
        return [ln for ln in self.stderr.splitlines()
                if "CONSOLE" in ln and ("Uncaught" in ln or "Error" in ln)]


def run_chromium(url: str, *extra: str, window: tuple[int, int] = (1400, 1800),
                 budget_ms: int = 3000) -> BrowserRun:
    """Load ``url`` headless with ``extra`` flags (``--dump-dom``)."""
    binary = require_chromium()
    with tempfile.TemporaryDirectory(prefix="boxmask-chromium-") as profile:
        cmd = [binary, "--headless", "--no-sandbox", "--disable-gpu",
               "--disable-background-networking", "--disable-component-update",
               "--disable-default-apps", "--disable-sync", "--no-first-run",
               "--no-default-browser-check", "--hide-scrollbars", "--mute-audio",
               "--enable-logging=stderr", "--v=0", f"--user-data-dir={profile}",
               f"--window-size={window[0]},{window[1]}",
               f"--virtual-time-budget={budget_ms}", *extra, url]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S,
                              env={**os.environ, "HOME": profile})
    if proc.returncode != 0:
        raise RuntimeError(f"chromium exited with {proc.returncode}: {proc.stderr[-2000:]}")
    return BrowserRun(proc.stdout, proc.stderr)


def dump_dom(url: str) -> BrowserRun:
    """The serialised DOM (``stdout``) after the page's scripts ran."""
    return run_chromium(url, "--dump-dom")
