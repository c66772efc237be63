"""Open a page in headless Chromium (Debian's `chromium`) over the DevTools protocol: console errors, exceptions,
network requests, element boxes and a full-page screenshot. aiohttp (a Ray dependency) speaks the WebSocket."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip


@dataclass
class PageResult:
    errors: list[str] = field(default_factory=list)  # console errors, uncaught exceptions, failed loads
    requests: list[str] = field(default_factory=list)  # every URL the page requested
    evaluated: Any = None  # the value of the expression evaluated after load
    screenshot: bytes = b""  # PNG of the whole page


def open_page(path: str, expression: str, width: int = 1200, timeout: float = 60.0) -> PageResult:
    """Load `path` (a file, or an http:// URL), evaluate `expression` (awaited if it is a promise), screenshot."""
    profile = tempfile.mkdtemp(prefix="llmctl-chromium-")
    proc = subprocess.Popen([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0",
                             f"--window-size={width},900", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        port = _devtools_port(profile, proc, timeout)
        return asyncio.run(asyncio.wait_for(_drive(port, path, expression, width), timeout))
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(profile, ignore_errors=True)


def _devtools_port(profile: str, proc: subprocess.Popen, timeout: float) -> int:
    marker = os.path.join(profile, "DevToolsActivePort")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"chromium exited with {proc.returncode} before opening DevTools")
        if os.path.exists(marker):
            lines = open(marker).read().split()
            if lines:
                return int(lines[0])
        time.sleep(0.1)
    raise RuntimeError("chromium did not open its DevTools port")


class _Session:
    def __init__(self, ws) -> None:
        self.ws, self.next_id, self.events = ws, 0, []

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        await self.ws.send_str(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads((await self.ws.receive()).data)
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    async def until(self, method: str) -> None:
        while not any(e.get("method") == method for e in self.events):
            self.events.append(json.loads((await self.ws.receive()).data))


async def _drive(port: int, path: str, expression: str, width: int) -> PageResult:
    import aiohttp

    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/json/list") as resp:
            page = next(t for t in await resp.json() if t["type"] == "page")
        async with http.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws:
            s = _Session(ws)
            for domain in ("Page", "Runtime", "Log", "Network"):
                await s.call(f"{domain}.enable")
            url = path if "://" in path else "file://" + os.path.abspath(path)  # a local file or a served page
            await s.call("Page.navigate", url=url)
            await s.until("Page.loadEventFired")
            evaluated = await s.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
            height = (await s.call("Runtime.evaluate", expression="document.documentElement.scrollHeight",
                                   returnByValue=True))["result"]["value"]  # fmt: skip
            await s.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                         mobile=False)  # fmt: skip
            shot = await s.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
    result = PageResult(evaluated=evaluated["result"].get("value"), screenshot=base64.b64decode(shot["data"]))
    for e in s.events:
        method, params = e.get("method"), e.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            result.errors.append("console: " + " ".join(str(a.get("value", a)) for a in params.get("args", [])))
        elif method == "Runtime.exceptionThrown":
            result.errors.append("exception: " + json.dumps(params.get("exceptionDetails", {}))[:500])
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            result.errors.append(f"log: {params['entry'].get('text')} {params['entry'].get('url', '')}")
        elif method == "Network.loadingFailed":
            result.errors.append(f"load failed: {params.get('errorText')}")
        elif method == "Network.requestWillBeSent":
            result.requests.append(params["request"]["url"])
    return result
