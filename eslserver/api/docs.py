"""Human-readable API docs at ``/api/docs``: Swagger UI over the server's OpenAPI document.

The reader needs nothing but the server: Swagger UI's files come from an installed Python
package (``swagger-ui-bundle-v2``, import name ``swagger_ui_bundle``), never from a CDN, so the
page works in a store without internet and loads nothing from another origin. The page and
the script that starts the UI are ours (``static/docs.html``, ``docs.js``): no inline code, so
the page is served under the web UI's Content-Security-Policy, unchanged.

Like the web UI, the docs are a fallback (a middleware answering GET and HEAD that no route
matched), never routes: the route table stays exactly the API the OpenAPI document describes.
The Swagger UI files are read once, on first use; a missing or too old bundle (Swagger UI
before 5 cannot show OpenAPI 3.1) is reported at start-up and answered with a JSON 503
naming the problem, rather than keeping the server from starting.
"""

from __future__ import annotations

import functools
import logging
import re
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Final

from aiohttp import web
from aiohttp.typedefs import Handler

from eslserver.api.routing import json_response
from eslserver.web.routes import static_response, unmatched_read

__all__ = ["DOCS_PATH", "DocsUnavailable", "docs_files", "setup_docs"]

log = logging.getLogger(__name__)

DOCS_PATH: Final = "/api/docs"
_OURS: Final = ("docs.html", "docs.js", "docs.css")
_VENDOR: Final = ("swagger-ui.css", "swagger-ui-bundle.js", "favicon-32x32.png")
_MIN_MAJOR: Final = 5  # first Swagger UI that renders OpenAPI 3.1


class DocsUnavailable(RuntimeError):
    """The Swagger UI files are missing or too old; the message says which and how to fix it."""


def _vendor_folder() -> Traversable:
    try:
        root = resources.files("swagger_ui_bundle") / "vendor"
    except ModuleNotFoundError:
        raise DocsUnavailable("swagger_ui_bundle: not installed (pip install swagger-ui-bundle-v2)") from None
    found = []
    for entry in root.iterdir() if root.is_dir() else ():
        match = re.fullmatch(r"swagger-ui-(\d+)\.\d+\.\d+", entry.name)
        if match and entry.is_dir():
            found.append((int(match.group(1)), entry))
    if not found:
        raise DocsUnavailable(f"swagger_ui_bundle: no swagger-ui-X.Y.Z folder in {root}")
    major, folder = max(found, key=lambda pair: pair[0])
    if major < _MIN_MAJOR:
        raise DocsUnavailable(f"swagger_ui_bundle: {folder.name} cannot show OpenAPI 3.1; expected Swagger UI "
                              f"{_MIN_MAJOR} or newer (pip install swagger-ui-bundle-v2; the older "
                              "swagger-ui-bundle installs the same module name)")
    return folder


@functools.cache
def docs_files() -> dict[str, bytes]:
    """The files under ``/api/docs/`` by name (``docs.html`` is the page), read once."""
    folder = _vendor_folder()
    files = {}
    for name in _VENDOR:
        entry = folder / name
        if not entry.is_file():
            raise DocsUnavailable(f"swagger_ui_bundle: {name} missing from {folder}")
        files[name] = entry.read_bytes()
    ours = resources.files("eslserver.api") / "static"
    for name in _OURS:
        files[name] = (ours / name).read_bytes()
    return files


@web.middleware
async def _docs(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not unmatched_read(request):
        return await handler(request)
    path = request.path
    if path == DOCS_PATH + "/":
        raise web.HTTPFound(DOCS_PATH)
    if path == DOCS_PATH:
        name = "docs.html"
    elif path.startswith(DOCS_PATH + "/") and path[len(DOCS_PATH) + 1:] in _OURS + _VENDOR:
        name = path[len(DOCS_PATH) + 1:]  # only these names: no folders, no ".."
    else:
        return await handler(request)
    try:
        files = docs_files()
    except DocsUnavailable as exc:
        return json_response({"error": "docs_unavailable", "detail": str(exc)}, status=503)
    return static_response(name, files[name])


def setup_docs(app: web.Application) -> None:
    """Serve the API docs from `app` (call before the application starts)."""
    try:
        _vendor_folder()
    except DocsUnavailable as exc:
        log.error("the API docs at %s are unavailable: %s", DOCS_PATH, exc)
    app.middlewares.append(_docs)
