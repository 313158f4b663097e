"""The human-readable API docs at ``/api/docs``, over real HTTP and in a real headless Chromium.

The page is Swagger UI from an installed package, started by our own served script on the
server's OpenAPI document: every file comes from this server (no CDN), the page runs under the
web UI's Content-Security-Policy, and the browser shows every documented operation.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from importlib import resources
from pathlib import Path

import aiohttp
import pytest

from eslserver.api.app import create_app
from eslserver.api.docs import DOCS_PATH, docs_files
from eslserver.api.openapi import document
from eslserver.config import load_settings
from eslserver.server import Server
from eslserver.web.routes import CONTENT_SECURITY_POLICY
from tests.browser import launch, needs_chromium

OURS = Path(__file__).resolve().parents[1] / "eslserver" / "api" / "static"
ASSETS = {"swagger-ui.css": "text/css", "swagger-ui-bundle.js": "text/javascript", "favicon-32x32.png": "image/png",
          "docs.js": "text/javascript", "docs.css": "text/css"}


@pytest.fixture
async def base(tmp_path: Path) -> AsyncIterator[str]:
    settings = load_settings(environ={}, overrides={"data_dir": tmp_path / "data", "http_port": 0})
    async with Server(settings, mqtt=False, render_processes=False) as server:
        yield f"http://127.0.0.1:{server.http_port}"


async def test_the_page_and_its_assets_are_served_from_this_server(base: str) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(base + DOCS_PATH) as r:
            page = await r.text()
            assert r.status == 200 and r.content_type == "text/html"
            assert r.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
        assert page == (OURS / "docs.html").read_text()
        assert re.search(r"<script(?![^>]*src=)", page) is None, "inline script"
        assert "<style" not in page and " style=" not in page
        linked = re.findall(r'(?:src|href)="([^"]+)"', page)
        assert {url.rsplit("/", 1)[1] for url in linked} == set(ASSETS)
        assert all(url.startswith(DOCS_PATH + "/") for url in linked), linked
        for name, ctype in ASSETS.items():
            async with session.get(f"{base}{DOCS_PATH}/{name}") as r:
                assert r.status == 200 and r.content_type == ctype, (name, r.status, r.content_type)
                assert r.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
                assert await r.read() == docs_files()[name]
        async with session.get(base + DOCS_PATH + "/", allow_redirects=False) as r:
            assert r.status == 302 and r.headers["Location"] == DOCS_PATH
        async with session.head(base + DOCS_PATH + "/docs.js") as r:
            assert r.status == 200 and r.content_length == len((OURS / "docs.js").read_bytes())


def test_the_ui_comes_from_the_installed_package_and_our_files_name_no_other_host() -> None:
    files = docs_files()
    bundle = resources.files("swagger_ui_bundle") / "vendor"
    assert any((d / "swagger-ui-bundle.js").read_bytes() == files["swagger-ui-bundle.js"] for d in bundle.iterdir())
    for name in ("docs.html", "docs.js", "docs.css"):
        text = files[name].decode()
        assert "http://" not in text and "https://" not in text and "//cdn" not in text, name
    assert "'/api/v1/openapi.json'" in files["docs.js"].decode()
    assert "validatorUrl: null" in files["docs.js"].decode()  # the default posts the document to swagger.io


@pytest.mark.parametrize("path", ["/api/docs/nothing.js", "/api/docs/%2e%2e/static/docs.js", "/api/docs/index.html",
                                  "/api/docs/swagger-ui.js.map", "/api/docs/vendor/swagger-ui.css",
                                  "/api/docsx", "/api/docs/docs.html/"])
async def test_only_the_named_files_are_served(base: str, path: str) -> None:
    async with aiohttp.ClientSession() as session, session.get(base + path) as r:
        assert r.status == 404 and r.content_type == "application/json", path
        assert (await r.json())["error"] == "not_found"


async def test_the_docs_are_not_routes_and_answer_only_reads(base: str, tmp_path: Path) -> None:
    async with aiohttp.ClientSession() as session, session.post(base + DOCS_PATH) as r:
        assert r.status == 404 and (await r.json())["error"] == "not_found"
    settings = load_settings(environ={}, overrides={"data_dir": tmp_path / "other"})
    app = create_app(Server(settings, mqtt=False, http=False, render_processes=False))
    paths = {str(r.get_info().get("path") or r.get_info().get("formatter")) for r in app.router.resources()}
    assert not any(p.startswith(DOCS_PATH) for p in paths), paths


@needs_chromium
async def test_chromium_shows_every_operation_with_no_policy_violation(base: str, tmp_path: Path) -> None:
    operations = sum(len(ops) for ops in document()["paths"].values())
    async with launch(tmp_path / "chromium") as browser:
        page = await browser.new_page()
        await page.goto(base + DOCS_PATH)
        shown = await page.wait_for(
            f"document.querySelectorAll('.opblock').length === {operations} && "
            "document.querySelectorAll('.opblock').length",
            what=f"{operations} operations listed", timeout=30)
        assert shown == operations
        summaries = await page.evaluate(
            "[...document.querySelectorAll('.opblock-summary-path')].map((e) => e.dataset.path || e.textContent)")
        assert "/api/v1/prices" in " ".join(summaries)
        assert await page.evaluate("document.querySelector('.info .title').textContent.startsWith('eslserver')")
        origins = await page.evaluate(
            "[location.origin, ...performance.getEntriesByType('resource').map((e) => new URL(e.name).origin)]")
        assert set(origins) == {base}, origins
        assert page.exceptions == [], page.exceptions
