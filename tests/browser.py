"""Headless Debian chromium driven over the DevTools protocol, for the tests that look at pages: the
viewer's and the run report's. In CI (`CI` set) a missing chromium is a failure, not a skip."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

CHROMIUM = Path("/usr/bin/chromium")

# marks a browser test: skipped without chromium on a developer's machine, failed without it in CI
needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists() and not os.environ.get("CI"),
    reason="needs Debian's chromium (apt-get install chromium)",
)


def wait_for(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


class Chromium:
    """One headless chromium with one page. `screenshot()` grabs the page; `evaluate(js)` runs a script in
    it; `console_errors` collects what the page reported as errors (console.error, uncaught exceptions,
    failed loads) since `open`."""

    FLAGS = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--enable-unsafe-swiftshader",  # viser draws with WebGL: software GL, no GPU
        "--remote-debugging-port=0",
        "--window-size=1280,800",
    ]

    def __init__(self, url: str, profile: Path):
        if not CHROMIUM.exists():
            raise AssertionError(f"{CHROMIUM} is missing: apt-get install chromium")
        profile.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [str(CHROMIUM), *self.FLAGS, f"--user-data-dir={profile}", url],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        port_file = profile / "DevToolsActivePort"
        wait_for(port_file.exists, 30, "chromium's DevTools port")
        port = int(port_file.read_text().split()[0])
        targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list"))
        self.ws_url = next(t for t in targets if t["type"] == "page")["webSocketDebuggerUrl"]
        self.console_errors: list[str] = []
        self._next_id = 0

    def _call(self, ws, method: str, params: dict | None = None) -> dict:
        """Send one command and return its result, collecting the error events that arrive meanwhile."""
        self._next_id += 1
        ws.send(json.dumps({"id": self._next_id, "method": method, "params": params or {}}))
        while True:
            message = json.loads(ws.recv())
            if message.get("id") == self._next_id:
                if "error" in message:
                    raise AssertionError(f"{method}: {message['error']}")
                return message.get("result", {})
            self._collect(message)

    def _collect(self, event: dict) -> None:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.exceptionThrown":
            self.console_errors.append(params["exceptionDetails"].get("text", "exception"))
        elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
            self.console_errors.append(
                " ".join(str(a.get("value", a.get("description"))) for a in params["args"])
            )
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            self.console_errors.append(f"{params['entry'].get('text')} ({params['entry'].get('url', '')})")

    def open(self, url: str, settle_s: float = 1.0) -> None:
        """Navigate to `url` with error collection on, wait for its load event, then `settle_s`."""
        from websockets.sync.client import connect

        with connect(self.ws_url, max_size=None) as ws:
            for domain in ("Runtime", "Log", "Page"):
                self._call(ws, f"{domain}.enable")
            self._call(ws, "Page.navigate", {"url": url})
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                event = json.loads(ws.recv(timeout=60))
                self._collect(event)
                if event.get("method") == "Page.loadEventFired":
                    break
            else:
                raise AssertionError(f"{url} did not load within 60 s")
            end = time.monotonic() + settle_s
            while (left := end - time.monotonic()) > 0:
                try:
                    self._collect(json.loads(ws.recv(timeout=left)))
                except TimeoutError:
                    break

    def evaluate(self, expression: str):
        """The JSON value of a JavaScript expression on the page."""
        from websockets.sync.client import connect

        with connect(self.ws_url, max_size=None) as ws:
            result = self._call(ws, "Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def screenshot(self) -> np.ndarray:
        from PIL import Image
        from websockets.sync.client import connect

        with connect(self.ws_url, max_size=None) as ws:
            reply = self._call(ws, "Page.captureScreenshot", {"format": "png"})
        return np.asarray(Image.open(io.BytesIO(base64.b64decode(reply["data"]))).convert("RGB"))

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
