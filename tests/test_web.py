"""Serving the web UI, and the live event stream it reads — over real HTTP, without a browser.

The UI files are answered only where no API route matches (the route table stays the API's),
with a strict Content-Security-Policy; the event stream starts with ``ready``, carries each
change as it happens, and ends when the server closes even while a client is still reading.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from eslserver.api.app import create_app
from eslserver.auth import create_token
from eslserver.config import load_settings
from eslserver.server import SYSTEM, Server
from eslserver.web.routes import CONTENT_SECURITY_POLICY, static_files

STATIC = Path(__file__).resolve().parents[1] / "eslserver" / "web" / "static"


class Store:
    def __init__(self, server: Server, session: aiohttp.ClientSession, token: str) -> None:
        self.server, self.session, self.token = server, session, token
        self.base = f"http://127.0.0.1:{server.http_port}"

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    settings = load_settings(environ={}, overrides={"data_dir": tmp_path / "data", "http_port": 0})
    async with Server(settings, mqtt=False, render_processes=False) as server:
        token = await create_token(server.db, "pos", "till")
        async with aiohttp.ClientSession() as session:
            yield Store(server, session, token)


# --- the UI files -------------------------------------------------------------------------------

async def test_root_redirects_to_the_ui_and_the_page_is_served_with_its_policy(store: Store) -> None:
    async with store.session.get(store.base + "/", allow_redirects=False) as r:
        assert r.status == 302 and r.headers["Location"] == "/ui/"
    async with store.session.get(store.base + "/ui/") as r:
        body = await r.text()
        assert r.status == 200 and r.content_type == "text/html"
        assert r.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        assert r.headers["X-Frame-Options"] == "DENY"
    assert '<script type="module" src="app.js">' in body
    for name, ctype in (("app.js", "text/javascript"), ("app.css", "text/css"), ("shelf.js", "text/javascript")):
        async with store.session.get(f"{store.base}/ui/{name}") as r:
            assert r.status == 200 and r.content_type == ctype
            assert await r.read() == (STATIC / name).read_bytes()
    async with store.session.head(store.base + "/ui/app.js") as r:
        assert r.status == 200 and r.content_length == len((STATIC / "app.js").read_bytes())


@pytest.mark.parametrize("path", ["/ui/nothing.js", "/ui/../pyproject.toml", "/ui/%2e%2e/pyproject.toml",
                                  "/ui/static/app.js", "/ui/routes.py", "/ui/__init__.py"])
async def test_only_the_packaged_files_are_served(store: Store, path: str) -> None:
    async with store.session.get(store.base + path) as r:
        assert r.status == 404 and r.content_type == "application/json"
        assert (await r.json())["error"] == "not_found"


async def test_the_ui_never_shadows_the_api(store: Store) -> None:
    async with store.session.get(store.base + "/api/v1/nothing") as r:
        assert r.status == 404 and (await r.json())["error"] == "not_found"
    async with store.session.post(store.base + "/ui/") as r:  # only GET and HEAD
        assert r.status == 404
    async with store.session.get(store.base + "/api/v1/me") as r:
        assert r.status == 401


def test_the_route_table_stays_the_api(tmp_path: Path) -> None:
    settings = load_settings(environ={}, overrides={"data_dir": tmp_path})
    app = create_app(Server(settings, mqtt=False, http=False, render_processes=False))
    paths = {str(r.get_info().get("path") or r.get_info().get("formatter")) for r in app.router.resources()}
    assert not any(p.startswith("/ui") or p == "/" for p in paths), paths


def test_pages_load_nothing_from_elsewhere_and_run_no_inline_code() -> None:
    """What the Content-Security-Policy enforces in the browser, checked in the files too."""
    files = static_files()
    assert set(files) == {p.name for p in STATIC.iterdir() if p.is_file()}
    html = files["index.html"].decode()
    assert "<style" not in html and " style=" not in html and re.search(r"<script(?![^>]*src=)", html) is None
    assert re.search(r"\son[a-z]+=", html) is None, "inline event handler"
    for name, body in files.items():
        text = body.decode()
        assert "http://" not in text and "https://" not in text, f"{name} refers to another origin"
        assert "innerHTML" not in text and "eval(" not in text, f"{name} builds markup from text"


def test_every_input_has_a_label() -> None:
    html = static_files()["index.html"].decode()
    labelled = set(re.findall(r'<label for="([^"]+)"', html))
    for tag in re.findall(r"<(?:input|select|textarea)\b[^>]*>", html):
        ident = re.search(r'id="([^"]+)"', tag)
        assert ident is not None, tag
        assert ident.group(1) in labelled or "aria-label=" in tag, f"{tag} has no label"


# --- the event stream ---------------------------------------------------------------------------

async def _events(response: aiohttp.ClientResponse) -> AsyncIterator[tuple[str, object]]:
    name, data = "message", list[str]()
    while True:
        line = (await response.content.readline()).decode()
        if not line:
            return
        line = line.rstrip("\n")
        if line == "":
            if data:
                yield name, json.loads("\n".join(data))
            name, data = "message", []
        elif line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            data.append(line[6:])


async def test_stream_starts_ready_then_carries_each_change(store: Store) -> None:
    async with store.session.get(store.base + "/api/v1/events/stream", headers=store.auth) as r:
        assert r.status == 200 and r.content_type == "text/event-stream"
        assert r.headers["Cache-Control"] == "no-store"
        events = _events(r)
        name, data = await anext(events)
        assert name == "ready" and isinstance(data, dict)
        await store.server.ingest.submit([{"sku": "A", "price": "1.99"}, {"sku": "B", "price": "-1"}],
                                         source="test", actor=SYSTEM)
        async with asyncio.timeout(5):
            name, data = await anext(events)
        assert (name, data) == ("prices", {"type": "prices", "accepted": 1, "rejected": 1})


async def test_stream_limit_ends_it_and_bad_input_is_refused(store: Store) -> None:
    async with store.session.get(store.base + "/api/v1/events/stream?limit=1", headers=store.auth) as r:
        body = await r.text()
    assert r.status == 200 and body.startswith("retry: 2000\nevent: ready\n")
    async with store.session.get(store.base + "/api/v1/events/stream?limit=0", headers=store.auth) as r:
        assert r.status == 400 and (await r.json())["field"] == "limit"
    async with store.session.get(store.base + "/api/v1/events/stream") as r:
        assert r.status == 401 and (await r.json())["error"] == "missing_token"


async def test_stream_ends_when_the_server_closes_with_a_client_reading(tmp_path: Path) -> None:
    settings = load_settings(environ={}, overrides={"data_dir": tmp_path / "data", "http_port": 0})
    server = Server(settings, mqtt=False, render_processes=False)
    async with aiohttp.ClientSession() as session:
        async with server:
            token = await create_token(server.db, "admin", "boss")
            response = await session.get(f"http://127.0.0.1:{server.http_port}/api/v1/events/stream",
                                         headers={"Authorization": f"Bearer {token}"})
            events = _events(response)
            assert (await anext(events))[0] == "ready"
            assert len(server._watchers) == 1  # the stream is subscribed
            loop = asyncio.get_running_loop()
            started = loop.time()
        assert loop.time() - started < 5, "closing waited for the client to hang up"
        assert not server._watchers
        async with asyncio.timeout(5):  # the client sees the end of the stream
            assert [e async for e in events] == []
        response.release()


async def test_a_client_going_away_unsubscribes(store: Store) -> None:
    response = await store.session.get(store.base + "/api/v1/events/stream", headers=store.auth)
    assert (await anext(_events(response)))[0] == "ready"
    assert len(store.server._watchers) == 1
    response.close()  # the connection drops; the next change finds it gone
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while store.server._watchers and loop.time() < deadline:
        store.server.notify({"type": "labels", "macs": []})
        await asyncio.sleep(0.05)
    assert not store.server._watchers
