"""Headless Chromium driven over the DevTools protocol: open a page, wait until it shows some
text, screenshot it. Debian's ``chromium`` package and the ``websockets`` client; no browser
download, no driver binary."""

import base64
import contextlib
import itertools
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


def find_chromium() -> str | None:
    for name in CHROMIUM_NAMES:
        if path := shutil.which(name):
            return path
    return None


class Browser:
    """One headless Chromium with one page; ``with Browser() as b: b.open(url) ...``."""

    def __init__(self, width: int = 1400, height: int = 860):
        self.width, self.height = width, height
        self._ids = itertools.count(1)
        # what the page reported while commands ran (see :meth:`watch_page`)
        self.console_errors: list[str] = []
        self.requested_urls: list[str] = []

    def __enter__(self) -> "Browser":
        from websockets.sync.client import connect

        chromium = find_chromium()
        if chromium is None:
            raise RuntimeError(
                "Chromium not found: install Debian's 'chromium' package "
                "(make test does, with .ci/system-packages)"
            )
        self._profile = Path(tempfile.mkdtemp(prefix="kp-chromium-"))
        self._process = subprocess.Popen(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--hide-scrollbars",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                f"--user-data-dir={self._profile}",
                f"--window-size={self.width},{self.height}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        port_file = self._profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                raise RuntimeError("Chromium did not open its DevTools port")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as r:
            page = next(t for t in json.load(r) if t["type"] == "page")
        self._stack = contextlib.ExitStack()
        self._ws = self._stack.enter_context(
            connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=30)
        )
        self.call("Page.enable")
        self.call(
            "Emulation.setDeviceMetricsOverride",
            width=self.width,
            height=self.height,
            deviceScaleFactor=1,
            mobile=False,
        )
        return self

    def __exit__(self, *exc) -> None:
        stack = getattr(self, "_stack", None)
        if stack is not None:
            stack.close()
        self._process.terminate()
        try:
            self._process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(timeout=20)
        shutil.rmtree(self._profile, ignore_errors=True)

    def call(self, method: str, **params):
        """Send one DevTools command and return its result; events that arrive in between
        are recorded when they are console errors or requests (:meth:`watch_page`), else
        dropped."""
        message_id = next(self._ids)
        self._ws.send(json.dumps({"id": message_id, "method": method, "params": params}))
        while True:
            reply = json.loads(self._ws.recv(timeout=60))
            if "method" in reply:
                self._record(reply["method"], reply.get("params", {}))
            if reply.get("id") == message_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def watch_page(self) -> None:
        """Record console errors, uncaught exceptions and failed loads in
        :attr:`console_errors`, and every URL the page requests in :attr:`requested_urls`."""
        self.call("Runtime.enable")
        self.call("Log.enable")
        self.call("Network.enable")

    def _record(self, method: str, params: dict) -> None:
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            args = params.get("args", [])
            self.console_errors.append(" ".join(str(a.get("value", a)) for a in args))
        elif method == "Runtime.exceptionThrown":
            self.console_errors.append(str(params.get("exceptionDetails", params)))
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            self.console_errors.append(params["entry"].get("text", ""))
        elif method == "Network.requestWillBeSent":
            self.requested_urls.append(params.get("request", {}).get("url", ""))
        elif method == "Network.loadingFailed":
            self.console_errors.append(f"load failed: {params.get('errorText')}")

    def evaluate(self, expression: str):
        result = self.call(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def wait_for_text(self, texts: list[str], timeout: float = 60) -> str:
        """Wait until the page's visible text contains every one of ``texts``; returns it."""
        deadline = time.monotonic() + timeout
        body = ""
        while time.monotonic() < deadline:
            body = self.evaluate("document.body ? document.body.innerText : ''") or ""
            if all(t in body for t in texts):
                return body
            time.sleep(0.5)
        missing = [t for t in texts if t not in body]
        raise TimeoutError(f"page never showed {missing}; it shows:\n{body[:2000]}")

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def screenshot_when_still(
        self, path: Path, timeout: float = 30, ready: Callable[[bytes], bool] | None = None
    ) -> Path:
        """A screenshot once two taken 0.5 s apart are identical (animations, zoom-to-fit
        and late data have settled) and ``ready`` (given the PNG bytes) holds, or the last one
        after ``timeout``. A page can sit still while it waits for data: ``ready`` says what
        the finished page shows."""
        deadline = time.monotonic() + timeout
        previous = None
        while True:
            png = base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])
            settled = png == previous and (ready is None or ready(png))
            if settled or time.monotonic() > deadline:
                path.write_bytes(png)
                return path
            previous = png
            time.sleep(0.5)
