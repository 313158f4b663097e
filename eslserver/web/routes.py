"""Serve the web UI (static HTML, CSS and JavaScript from this package) at ``/ui/``.

The UI is a fallback, never a route: it answers only GET and HEAD requests that no API route
matched, under `UI_PREFIX` (``/`` redirects there). So the application's route table stays
exactly the API (the OpenAPI document's set), the UI can never shadow an API path, and an
unknown ``/api/…`` path is still the API's JSON 404.

Files are read from the package once per process (they are small), served with a strict
Content-Security-Policy (only this origin's scripts, styles, images and connections; no
inline code) and ``no-cache`` so that an upgraded server is picked up on the next load.
Everything the UI shows comes from the HTTP API with the user's bearer token, kept in the
tab's session storage.
"""

from __future__ import annotations

import functools
import logging
from importlib import resources
from typing import Final

from aiohttp import web
from aiohttp.typedefs import Handler
from aiohttp.web_urldispatcher import MatchInfoError

__all__ = ["CONTENT_SECURITY_POLICY", "UI_PREFIX", "setup_web", "static_files", "static_response", "unmatched_read"]

log = logging.getLogger(__name__)

UI_PREFIX: Final = "/ui/"
CONTENT_SECURITY_POLICY: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
_TYPES: Final = {
    ".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png",
    ".ico": "image/x-icon", ".json": "application/json",
}


@functools.cache
def static_files() -> dict[str, bytes]:
    """Every UI file by its name (``index.html`` …), read once from the package."""
    folder = resources.files("eslserver.web") / "static"
    files = {}
    for entry in folder.iterdir():
        name = entry.name
        suffix = name[name.rfind("."):] if "." in name else ""
        if entry.is_file() and suffix in _TYPES:
            files[name] = entry.read_bytes()
    if "index.html" not in files:
        raise RuntimeError(f"eslserver.web: {folder} has no index.html (package data missing?)")
    return files


def static_response(name: str, body: bytes) -> web.Response:
    """A packaged file as the UI serves it: its type by suffix, the strict CSP, ``no-cache``."""
    suffix = name[name.rfind("."):]
    headers = {"Content-Type": _TYPES[suffix], "Cache-Control": "no-cache",
               "Content-Security-Policy": CONTENT_SECURITY_POLICY, "Referrer-Policy": "no-referrer",
               "X-Frame-Options": "DENY"}
    return web.Response(body=body, headers=headers)  # aiohttp sends no body to a HEAD request


def unmatched_read(request: web.Request) -> bool:
    """A GET or HEAD that no API route matched: the only requests a static fallback may answer."""
    return isinstance(request.match_info, MatchInfoError) and request.method in ("GET", "HEAD")


@web.middleware
async def _ui(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not unmatched_read(request):
        return await handler(request)
    path = request.path
    if path in ("/", UI_PREFIX.rstrip("/")):
        raise web.HTTPFound(UI_PREFIX)
    if not path.startswith(UI_PREFIX):
        return await handler(request)
    name = path[len(UI_PREFIX):] or "index.html"
    files = static_files()
    if name not in files:  # no folders, no "..": only the names read from the package
        return await handler(request)
    return static_response(name, files[name])


def setup_web(app: web.Application) -> None:
    """Serve the UI from `app` (call before the application starts)."""
    static_files()  # fail at start-up, not on the first page load, when the files are missing
    app.middlewares.append(_ui)
