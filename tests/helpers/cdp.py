"""Headless Chromium driven over the Chrome DevTools Protocol, for tests that press keys.

The browser talks over ``--remote-debugging-pipe`` (file descriptors 3 and 4, NUL-terminated
JSON messages), so no port is opened and no websocket library is needed. Key presses and clicks
go through ``Input.dispatchKeyEvent`` / ``Input.dispatchMouseEvent``: the page sees trusted
events, as from a person. Downloads land in a folder given to ``Browser.setDownloadBehavior``.

    with Browser(downloads=tmp_path) as b:
        b.open(url)
        b.press("g")
        b.click("#export")
        b.wait_for_download("verdicts.jsonl")
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import queue
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from browser import require_chromium

TIMEOUT_S = 30.0


class Browser:
    """One headless Chromium with one page, driven over CDP."""

    def __init__(self, downloads: Path | None = None, window: tuple[int, int] = (1400, 1000)):
        self.binary = require_chromium()
        self.downloads = downloads
        self.window = window
        self._next = 0
        self._replies: dict[int, queue.Queue] = {}
        self.events: queue.Queue = queue.Queue()
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ process and pipe
    def __enter__(self) -> Browser:
        self._profile = tempfile.TemporaryDirectory(prefix="boxmask-cdp-")
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()
        # above any descriptor the child's 3 and 4 could clobber
        high_r = fcntl.fcntl(to_child_r, fcntl.F_DUPFD, 20)
        high_w = fcntl.fcntl(from_child_w, fcntl.F_DUPFD, 20)
        os.close(to_child_r)
        os.close(from_child_w)

        def wire() -> None:
            os.dup2(high_r, 3)
            os.dup2(high_w, 4)

        w, h = self.window
        cmd = [self.binary, "--headless", "--no-sandbox", "--disable-gpu",
               "--disable-background-networking", "--disable-component-update",
               "--disable-default-apps", "--disable-sync", "--no-first-run",
               "--no-default-browser-check", "--mute-audio", "--remote-debugging-pipe",
               f"--user-data-dir={self._profile.name}", f"--window-size={w},{h}",
               "about:blank"]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, pass_fds=(3, 4), preexec_fn=wire,
                                     env={**os.environ, "HOME": self._profile.name})
        os.close(high_r)
        os.close(high_w)
        self._stderr: list[bytes] = []
        threading.Thread(target=self._read_stderr, daemon=True).start()
        threading.Thread(target=self._read, daemon=True).start()
        try:
            self._attach()
        except Exception:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            if self.proc.poll() is None:
                try:
                    self.call("Browser.close", timeout=5)
                except (RuntimeError, TimeoutError):
                    pass
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        finally:
            for fd in (self._to_child, self._from_child):
                try:
                    os.close(fd)
                except OSError:
                    pass
            self._profile.cleanup()

    def _read_stderr(self) -> None:
        for line in self.proc.stderr:
            self._stderr.append(line)

    def _read(self) -> None:
        buf = b""
        while True:
            try:
                chunk = os.read(self._from_child, 65536)
            except OSError:
                return
            if not chunk:
                return
            buf += chunk
            while b"\0" in buf:
                raw, buf = buf.split(b"\0", 1)
                msg = json.loads(raw)
                if "id" in msg and msg["id"] in self._replies:
                    self._replies[msg["id"]].put(msg)
                else:
                    self.events.put(msg)

    def call(self, method: str, params: dict | None = None, *, session: str | None = None,
             timeout: float = TIMEOUT_S) -> dict:
        """Send one command; its ``result`` (raises on a protocol error)."""
        with self._lock:
            self._next += 1
            mid = self._next
            self._replies[mid] = queue.Queue()
        msg: dict[str, Any] = {"id": mid, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_child, json.dumps(msg).encode() + b"\0")
        try:
            reply = self._replies[mid].get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"no reply to {method} in {timeout} s: "
                               f"{b''.join(self._stderr)[-2000:]!r}") from None
        finally:
            self._replies.pop(mid, None)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def _attach(self) -> None:
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            pages = [t for t in self.call("Target.getTargets")["targetInfos"]
                     if t["type"] == "page"]
            if pages or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        target = pages[0]["targetId"] if pages else \
            self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.call("Target.attachToTarget",
                                 {"targetId": target, "flatten": True})["sessionId"]
        if self.downloads is not None:
            self.call("Browser.setDownloadBehavior",
                      {"behavior": "allow", "downloadPath": str(self.downloads),
                       "eventsEnabled": True})
        self.page("Page.enable")
        self.page("Runtime.enable")

    def page(self, method: str, params: dict | None = None) -> dict:
        """A command to the page's session."""
        return self.call(method, params, session=self.session)

    # ------------------------------------------------------------------------ actions
    def _wait_event(self, method: str, timeout: float = TIMEOUT_S) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {method} in {timeout} s")
            try:
                msg = self.events.get(timeout=left)
            except queue.Empty:
                continue
            if msg.get("method") == method:
                return msg.get("params", {})

    def _drain(self) -> None:
        while not self.events.empty():
            self.events.get_nowait()

    def open(self, url: str) -> None:
        """Navigate and wait for the load event."""
        self._drain()
        self.page("Page.navigate", {"url": url})
        self._wait_event("Page.loadEventFired")

    def reload(self) -> None:
        self._drain()
        self.page("Page.reload", {"ignoreCache": True})
        self._wait_event("Page.loadEventFired")

    def eval(self, expression: str) -> Any:
        """The JSON value of a JavaScript expression in the page."""
        res = self.page("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                             "awaitPromise": True})
        if "exceptionDetails" in res:
            raise RuntimeError(f"{expression}: {res['exceptionDetails']}")
        return res["result"].get("value")

    def wait_until(self, expression: str, timeout: float = TIMEOUT_S) -> Any:
        """Poll a JavaScript expression until it is truthy; its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.eval(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"{expression} stayed false for {timeout} s")
            time.sleep(0.1)

    def screenshot(self, png: Path) -> Path:
        """A PNG of the viewport, written to ``png``."""
        shot = self.page("Page.captureScreenshot", {"format": "png"})
        Path(png).write_bytes(base64.b64decode(shot["data"]))
        return Path(png)

    def press(self, key: str) -> None:
        """One key press (down, up) of a printable key or of ArrowLeft / ArrowRight."""
        named = {"ArrowRight": ("ArrowRight", 39), "ArrowLeft": ("ArrowLeft", 37)}
        if key in named:
            code, vk = named[key]
            down = {"type": "rawKeyDown", "key": key, "code": code,
                    "windowsVirtualKeyCode": vk}
        else:
            code = f"Digit{key}" if key.isdigit() else f"Key{key.upper()}"
            down = {"type": "keyDown", "key": key, "code": code, "text": key,
                    "unmodifiedText": key, "windowsVirtualKeyCode": ord(key.upper())}
        self.page("Input.dispatchKeyEvent", down)
        self.page("Input.dispatchKeyEvent", {**down, "type": "keyUp", "text": ""})

    def click(self, selector: str) -> None:
        """A left mouse click in the middle of the first element matching ``selector``."""
        box = self.eval(f"""(function () {{
            var el = document.querySelector({json.dumps(selector)});
            if (!el) {{ return null; }}
            el.scrollIntoView({{block: "center"}});
            var r = el.getBoundingClientRect();
            return [r.left + r.width / 2, r.top + r.height / 2];
        }})()""")
        if box is None:
            raise LookupError(f"no element matches {selector}")
        x, y = box
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.page("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y,
                                                   "button": "left", "clickCount": 1})

    def wait_for_download(self, name: str, timeout: float = TIMEOUT_S) -> Path:
        """The downloaded file ``name`` once Chromium has finished writing it."""
        if self.downloads is None:
            raise ValueError("the browser was opened without a downloads folder")
        path = Path(self.downloads) / name
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if path.is_file() and not list(Path(self.downloads).glob("*.crdownload")):
                return path
            time.sleep(0.05)
        raise TimeoutError(f"{name} was not downloaded in {timeout} s; the folder holds "
                           f"{sorted(p.name for p in Path(self.downloads).iterdir())}")
