"""Headless Chromium for tests, driven over the Chrome DevTools Protocol (a websocket).

    async with Chromium.launch(tmp_path) as browser:
        await browser.goto("http://127.0.0.1:8000/dashboard")
        value = await browser.evaluate("document.title")
        save(Path("artifacts/page.png"), await browser.screenshot())
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, BinaryIO

import httpx
from websockets.asyncio.client import ClientConnection, connect

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
         "--disable-dev-shm-usage", "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
         "--window-size=1280,900", "--hide-scrollbars", "--mute-audio"]
START_TIMEOUT_S = 60.0


def chromium_binary() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def _start(profile: Path) -> tuple[subprocess.Popen[bytes], BinaryIO]:
    binary = chromium_binary()
    assert binary, "chromium is not installed: run `scripts/ensure-services.sh chromium` (make test does)"
    log = (profile / "chromium.log").open("wb")
    proc = subprocess.Popen([binary, *FLAGS, f"--user-data-dir={profile / 'data'}", "about:blank"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return proc, log


def save(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


class Chromium:
    def __init__(self, proc: subprocess.Popen[bytes], ws: ClientConnection, profile: Path) -> None:
        self.proc, self.ws, self.profile = proc, ws, profile
        self._ids = itertools.count(1)
        self.console: list[str] = []

    @classmethod
    @contextlib.asynccontextmanager
    async def launch(cls, profile: Path) -> AsyncIterator[Chromium]:
        proc, log = _start(profile)
        try:
            port = await cls._devtools_port(profile / "data", proc)
            ws_url = await cls._page_socket(port)
            async with connect(ws_url, max_size=64 * 2**20, open_timeout=30) as ws:
                browser = cls(proc, ws, profile)
                await browser.send("Runtime.enable")
                yield browser
        finally:
            proc.kill()
            proc.wait(10)
            log.close()

    @staticmethod
    async def _devtools_port(data_dir: Path, proc: subprocess.Popen[bytes]) -> int:
        marker = data_dir / "DevToolsActivePort"
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"chromium exited with {proc.returncode}; see {data_dir.parent}/chromium.log")
            if marker.exists():
                lines = marker.read_text().split()
                if lines:
                    return int(lines[0])
            await asyncio.sleep(0.1)
        raise RuntimeError("chromium did not open its DevTools port")

    @staticmethod
    async def _page_socket(port: int) -> str:
        async with httpx.AsyncClient(timeout=10) as c:
            for _ in range(100):
                targets = (await c.get(f"http://127.0.0.1:{port}/json/list")).json()
                pages = [t for t in targets if t.get("type") == "page"]
                if pages:
                    return str(pages[0]["webSocketDebuggerUrl"])
                await asyncio.sleep(0.1)
        raise RuntimeError("chromium has no page target")

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        msg_id = next(self._ids)
        await self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            msg = json.loads(await asyncio.wait_for(self.ws.recv(), 60))
            if msg.get("method") == "Runtime.consoleAPICalled":
                self.console.append(" ".join(str(a.get("value", a.get("description", "")))
                                             for a in msg["params"]["args"]))
            if msg.get("method") == "Runtime.exceptionThrown":
                self.console.append("exception: " + json.dumps(msg["params"]["exceptionDetails"])[:500])
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                result: dict[str, Any] = msg["result"]
                return result

    async def goto(self, url: str) -> None:
        await self.send("Page.enable")
        await self.send("Page.navigate", url=url)

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression (JSON-serialisable), awaiting a promise."""
        r = await self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expression[:80]}: {r['exceptionDetails']}")
        return r["result"].get("value")

    async def wait_for(self, expression: str, timeout_s: float = 60.0) -> Any:
        """Poll until ``expression`` is truthy; its value."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(RuntimeError):  # the page may be mid-navigation
                value = await self.evaluate(expression)
                if value:
                    return value
            await asyncio.sleep(0.2)
        raise AssertionError(f"timed out waiting for {expression!r}; console: {self.console[-5:]}")

    async def screenshot(self) -> bytes:
        """The whole page as PNG."""
        r = await self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        return base64.b64decode(r["data"])
