"""A headless Chromium for tests, driven over the DevTools protocol (no dependency beyond aiohttp).

    async with launch(tmp_path / "chromium") as browser:      # skips the test without chromium
        page = await browser.new_page(width=820, height=1180)
        await page.goto(url)
        await page.fill("#token", token); await page.press("Enter")
        await page.wait_for("document.querySelector('#stat-ok').textContent === '4'", what="4 labels ok")
        await page.click("#nav a[data-view=shelf]")          # real mouse events at the element's centre
        await page.screenshot(tmp_path / "shelf.png")
        page.exceptions                                       # uncaught JavaScript errors, CSP violations

Everything runs in the test's event loop: one reader task per browser (named, cancelled on
close) dispatches answers by id and events by session. Chromium runs with a throw-away
profile in the given folder, is told to close over the protocol, and is killed if it does
not exit in time, so a test never leaves a browser behind. `CHROMIUM` is the executable
(``ESL_CHROMIUM`` in the environment, else ``chromium`` / ``chromium-browser`` /
``google-chrome`` on the PATH) or None.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import logging
import os
import shutil
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

__all__ = ["CHROMIUM", "Browser", "BrowserError", "Page", "launch", "needs_chromium"]

log = logging.getLogger(__name__)


def _find() -> str | None:
    explicit = os.environ.get("ESL_CHROMIUM")
    if explicit:
        return explicit
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


CHROMIUM: str | None = _find()
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium is not installed (apt-get install chromium; or set ESL_CHROMIUM)")

_START_TIMEOUT_S = 30.0
_CALL_TIMEOUT_S = 30.0
_KEYS: dict[str, tuple[str, int, str]] = {  # key -> (code, Windows virtual key code, text typed)
    "Enter": ("Enter", 13, "\r"), "Tab": ("Tab", 9, ""), "Escape": ("Escape", 27, ""),
    "Backspace": ("Backspace", 8, ""), "Space": ("Space", 32, " "), "ArrowDown": ("ArrowDown", 40, ""),
    "ArrowUp": ("ArrowUp", 38, ""), "Home": ("Home", 36, ""), "End": ("End", 35, ""),
}


class BrowserError(AssertionError):
    """The browser answered with an error, or a page did not reach the awaited state."""


class _Connection:
    """One DevTools websocket: calls by id, events handed to per-session listeners."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.listeners: dict[str | None, list[Callable[[str, dict[str, Any]], None]]] = {}
        self.reader = asyncio.create_task(self._read(), name="cdp-reader")

    async def call(self, method: str, params: dict[str, Any] | None = None, session: str | None = None,
                   timeout: float = _CALL_TIMEOUT_S) -> dict[str, Any]:
        ident = next(self._ids)
        message: dict[str, Any] = {"id": ident, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[ident] = future
        try:
            await self.ws.send_str(json.dumps(message))
            async with asyncio.timeout(timeout):
                return await future
        finally:
            self._waiting.pop(ident, None)

    async def _read(self) -> None:
        try:
            async for msg in self.ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                data = json.loads(msg.data)
                if "id" in data:
                    future = self._waiting.get(data["id"])
                    if future is not None and not future.done():
                        if "error" in data:
                            future.set_exception(BrowserError(f"{data['error']}"))
                        else:
                            future.set_result(data.get("result", {}))
                    continue
                for listener in self.listeners.get(data.get("sessionId"), []):
                    listener(data.get("method", ""), data.get("params", {}))
        finally:
            for future in self._waiting.values():
                if not future.done():
                    future.set_exception(BrowserError("the browser connection closed"))


class Page:
    """One tab. Methods raise `BrowserError` naming what was awaited when it does not happen."""

    def __init__(self, conn: _Connection, session: str, target: str) -> None:
        self._conn = conn
        self.session = session
        self.target = target
        self.exceptions: list[str] = []
        """Uncaught JavaScript exceptions, console.error calls and CSP violations, as text."""
        self.log: list[str] = []
        """Everything the page logged (network errors included: a 422 answer is logged there)."""
        self._loaded = asyncio.Event()
        conn.listeners.setdefault(session, []).append(self._on_event)

    def _on_event(self, method: str, params: dict[str, Any]) -> None:
        if method == "Page.loadEventFired":
            self._loaded.set()
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            text = details.get("exception", {}).get("description") or details.get("text", "exception")
            self.exceptions.append(f"{text} ({details.get('url', '')}:{details.get('lineNumber', '?')})")
        elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
            self.exceptions.append("console.error: " + " ".join(
                str(a.get("value", a.get("description", ""))) for a in params.get("args", [])))
        elif method == "Log.entryAdded":
            entry = params.get("entry", {})
            text = f"{entry.get('level')}/{entry.get('source')}: {entry.get('text')} {entry.get('url', '')}"
            self.log.append(text)
            if entry.get("source") == "security" or "Content Security Policy" in str(entry.get("text")):
                self.exceptions.append(text)

    async def call(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return await self._conn.call(method, params, self.session)

    async def goto(self, url: str, timeout: float = 15.0) -> None:
        self._loaded.clear()
        answer = await self.call("Page.navigate", {"url": url})
        if answer.get("errorText"):
            raise BrowserError(f"navigating to {url}: {answer['errorText']}")
        if not answer.get("loaderId"):
            return  # a same-document navigation (only the #fragment changed): no load event
        try:
            async with asyncio.timeout(timeout):
                await self._loaded.wait()
        except TimeoutError:
            raise BrowserError(f"{url} did not finish loading in {timeout} s") from None

    async def evaluate(self, expression: str) -> Any:
        """The JSON value of `expression` (promises awaited); a thrown error is a BrowserError."""
        answer = await self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                      "awaitPromise": True, "userGesture": True})
        if "exceptionDetails" in answer:
            details = answer["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise BrowserError(f"evaluating {expression[:120]!r}: {text}")
        return answer.get("result", {}).get("value")

    async def wait_for(self, expression: str, *, what: str, timeout: float = 15.0, interval: float = 0.05) -> Any:
        """Poll `expression` until it is truthy; its value. `what` names the awaited state."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        last: Any = None
        while True:
            last = await self.evaluate(expression)
            if last:
                return last
            if loop.time() > deadline:
                raise BrowserError(f"waited {timeout} s for {what}; last value {last!r}; "
                                   f"page exceptions {self.exceptions}")
            await asyncio.sleep(interval)

    async def text(self, selector: str) -> str:
        value = await self.evaluate(f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
                                    f" return e ? e.textContent : null; }})()")
        if value is None:
            raise BrowserError(f"no element matches {selector!r}")
        return str(value)

    async def _centre(self, selector: str) -> tuple[float, float]:
        box = await self.evaluate(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)}); if (!e) return null;"
            " e.scrollIntoView({block: 'center', inline: 'center'}); const r = e.getBoundingClientRect();"
            " return [r.left + r.width / 2, r.top + r.height / 2, r.width, r.height]; })()")
        if box is None:
            raise BrowserError(f"no element matches {selector!r}")
        x, y, w, h = box
        if w <= 0 or h <= 0:
            raise BrowserError(f"{selector!r} is not visible (size {w}x{h})")
        return x, y

    async def click(self, selector: str) -> None:
        """A real left click (mouse moved, pressed, released) at the element's centre."""
        x, y = await self._centre(selector)
        await self.call("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": x, "y": y})
        for kind in ("mousePressed", "mouseReleased"):
            await self.call("Input.dispatchMouseEvent",
                            {"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1})

    async def focus(self, selector: str) -> None:
        found = await self.evaluate(f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
                                    " if (!e) return false; e.focus(); return document.activeElement === e; })()")
        if not found:
            raise BrowserError(f"cannot focus {selector!r}")

    async def fill(self, selector: str, text: str) -> None:
        """Replace the field's content as typing would (select all, then insert: input events fire)."""
        await self.focus(selector)
        await self.evaluate("document.activeElement.select()")
        if text:
            await self.call("Input.insertText", {"text": text})
        else:
            await self.press("Backspace")

    async def type(self, text: str) -> None:
        """Insert `text` at the caret of the focused element."""
        await self.call("Input.insertText", {"text": text})

    async def press(self, key: str) -> None:
        """Press and release one key (names as in `_KEYS`) in the focused element."""
        code, vk, text = _KEYS[key]
        down: dict[str, Any] = {"type": "keyDown" if text else "rawKeyDown", "key": key, "code": code,
                                "windowsVirtualKeyCode": vk, "nativeVirtualKeyCode": vk}
        if text:
            down.update(text=text, unmodifiedText=text)
        await self.call("Input.dispatchKeyEvent", down)
        await self.call("Input.dispatchKeyEvent", {"type": "keyUp", "key": key, "code": code,
                                                   "windowsVirtualKeyCode": vk, "nativeVirtualKeyCode": vk})

    async def screenshot(self, path: Path) -> Path:
        answer = await self.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": False})
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(answer["data"]))
        return path


class Browser:
    """A running headless Chromium (see `launch`)."""

    def __init__(self, process: asyncio.subprocess.Process, http: aiohttp.ClientSession,
                 conn: _Connection) -> None:
        self.process = process
        self._http = http
        self._conn = conn

    async def new_page(self, *, width: int = 1280, height: int = 800) -> Page:
        target = (await self._conn.call("Target.createTarget", {"url": "about:blank"}))["targetId"]
        session = (await self._conn.call("Target.attachToTarget", {"targetId": target, "flatten": True}))["sessionId"]
        page = Page(self._conn, session, target)
        for method in ("Page.enable", "Runtime.enable", "Log.enable"):
            await page.call(method)
        await page.call("Emulation.setDeviceMetricsOverride",
                        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
        return page

    async def close(self) -> None:
        with contextlib.suppress(BrowserError, TimeoutError, ConnectionError, aiohttp.ClientError):
            await self._conn.call("Browser.close", timeout=5.0)
        try:
            async with asyncio.timeout(10.0):
                await self.process.wait()
        except TimeoutError:
            log.warning("chromium did not exit after Browser.close; killing it")
            self.process.kill()
            await self.process.wait()
        await self._conn.ws.close()
        self._conn.reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._conn.reader
        await self._http.close()


async def _devtools_url(profile: Path, process: asyncio.subprocess.Process) -> str:
    """The browser's websocket URL, from the DevToolsActivePort file Chromium writes."""
    port_file = profile / "DevToolsActivePort"
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _START_TIMEOUT_S
    while True:
        if port_file.exists():
            lines = port_file.read_text().split("\n")
            if len(lines) >= 2 and lines[0].strip().isdigit() and lines[1].strip():
                return f"ws://127.0.0.1:{lines[0].strip()}{lines[1].strip()}"
        if process.returncode is not None:
            raise BrowserError(f"chromium exited with status {process.returncode} before it listened "
                               f"(see {profile / 'chromium.log'})")
        if loop.time() > deadline:
            raise BrowserError(f"chromium did not open its DevTools port in {_START_TIMEOUT_S} s")
        await asyncio.sleep(0.05)


@asynccontextmanager
async def launch(profile: Path, *, executable: str | None = None) -> AsyncIterator[Browser]:
    """Start headless Chromium with a fresh profile in `profile`; skips the test without one."""
    exe = executable or CHROMIUM
    if exe is None:
        pytest.skip("headless Chromium is not installed (apt-get install chromium; or set ESL_CHROMIUM)")
    profile.mkdir(parents=True, exist_ok=True)
    (profile / "DevToolsActivePort").unlink(missing_ok=True)  # a reused profile: not the last run's port
    args = ["--headless", "--disable-gpu", "--remote-debugging-port=0", f"--user-data-dir={profile}",
            "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--disable-sync",
            "--disable-background-networking", "--disable-component-update", "--disable-dev-shm-usage",
            "--disable-features=Translate,MediaRouter,OptimizationHints", "--hide-scrollbars", "--mute-audio",
            "--password-store=basic", "--use-mock-keychain", "about:blank"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        args.insert(0, "--no-sandbox")  # Chromium refuses to run as root with its sandbox (CI runs as root)
    with open(profile / "chromium.log", "wb") as errors:  # noqa: ASYNC230 (a local file, opened once)
        process = await asyncio.create_subprocess_exec(exe, *args, stdin=asyncio.subprocess.DEVNULL,
                                                       stdout=asyncio.subprocess.DEVNULL, stderr=errors)
    http: aiohttp.ClientSession | None = None
    browser: Browser | None = None
    try:
        url = await _devtools_url(profile, process)
        http = aiohttp.ClientSession()
        ws = await http.ws_connect(url, max_msg_size=0, heartbeat=None)
        browser = Browser(process, http, _Connection(ws))
        yield browser
    finally:
        if browser is not None:
            await browser.close()
        else:
            if http is not None:
                await http.close()
            if process.returncode is None:
                process.kill()
            await process.wait()
