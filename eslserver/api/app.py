"""`create_app(backend)`: the aiohttp application serving ``/api/v1``, ``/metrics``, ``/healthz``,
the web UI (``/ui/``) and the API docs (``/api/docs``).

No global state: the server (any `Backend`) is kept under a typed `web.AppKey`; each route
is registered behind one guard that reads the bearer token (401 when it is missing or not
valid, 403 when its role may not call the route) and hands the handler a `Call`. One
middleware turns every error — ours (`ApiError`), aiohttp's (404 unknown path, 405, 413) and
unexpected ones (logged, 500) — into the JSON error body.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final

from aiohttp import web
from aiohttp.typedefs import Handler as AiohttpHandler

from eslserver.api import routes_live
from eslserver.api.backend import Backend
from eslserver.api.docs import setup_docs
from eslserver.api.errors import ApiError
from eslserver.api.openapi import document
from eslserver.api.routing import DOCUMENT_KEY, MAX_JSON_BODY, Call, Route, json_response, normalise_mac
from eslserver.api.table import all_routes
from eslserver.auth import ROLES, Actor, verify_token
from eslserver.web import setup_web

__all__ = ["create_app", "SERVER_KEY", "ROUTES_KEY", "all_routes", "API_PREFIX"]

log = logging.getLogger(__name__)

API_PREFIX: Final = "/api/v1"
SERVER_KEY: Final = web.AppKey[Backend]("eslserver.server")
ROUTES_KEY: Final = web.AppKey[tuple[Route, ...]]("eslserver.routes")
BODY_LIMIT_KEY: Final = web.AppKey[int]("eslserver.body_limit")

_REASONS: Final = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large",
                   415: "unsupported_media_type", 400: "bad_request"}


def _unauthorised(code: str, detail: str) -> ApiError:
    return ApiError(401, code, detail, headers={"WWW-Authenticate": 'Bearer realm="eslserver"'})


async def _actor(request: web.Request, server: Backend) -> Actor:
    header = request.headers.get("Authorization")
    if header is None:
        raise _unauthorised("missing_token", "Authorization: expected 'Bearer esl_…', got no header")
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        # the scheme is quoted only when it looks like one: a bare token sent without
        # "Bearer " would otherwise be echoed (and logged by whoever logs the answer)
        shown = f"scheme {scheme!r}" if scheme.isalpha() and len(scheme) <= 20 else "no scheme"
        raise _unauthorised("invalid_token", f"Authorization: expected 'Bearer esl_…', got {shown}")
    actor = await verify_token(server.db, token.strip())
    if actor is None:
        raise _unauthorised("invalid_token", "Authorization: the token is unknown, revoked or malformed")
    return actor


def _query_names(doc: dict[str, Any], route: Route) -> frozenset[str] | None:
    """The query parameters the document gives `route` (None: the route is not documented)."""
    op = doc.get("paths", {}).get(route.path, {}).get(route.method.lower())
    if op is None:
        return None
    return frozenset(p["name"] for p in op.get("parameters", ()) if p.get("in") == "query")


async def _store_view(request: web.Request, route: Route, server: Backend, actor: Actor | None) -> Backend:
    """The server as the route sees it: one store of the chain (``/api/v1/stores/{store}/…``,
    or the configured store on the plain paths), or the whole chain. A token restricted to
    some stores gets only those (``store_forbidden``), and a label is found only in its own
    store: no path reaches another store's data."""
    if route.chain is not None:
        if actor is not None and actor.stores is not None and (route.chain == "whole" or route.method != "GET"):
            raise ApiError(403, "store_forbidden", f"a token restricted to stores {', '.join(sorted(actor.stores))} "
                                                   f"may not {route.method} {route.path} (it concerns every store)")
        return server
    if route.store_scoped:
        store = request.match_info.get("store", "")
        view = server.for_store(store)
        if view is None:
            raise ApiError(404, "unknown_store", f"store: no store {store[:64]!r} is served here (esl stores list)",
                           field="store")
    else:
        view = server
    if actor is not None and not actor.may_store(view.settings.store):
        raise ApiError(403, "store_forbidden", f"store: this token may act on {', '.join(sorted(actor.stores or ()))} "
                                               f"only, not on {view.settings.store!r}", field="store")
    mac = request.match_info.get("mac")
    if mac is not None:
        try:
            found = await view.store_of_label(normalise_mac(mac))
        except ApiError:
            found = None  # a malformed MAC: the handler says so
        if found is not None and found != view.settings.store:  # another store's: as if unknown here
            raise ApiError(404, "unknown_label", f"mac: no label {mac[:64]!r} in store {view.settings.store!r}",
                           field="mac")
    return view


def _guard(route: Route, query: frozenset[str] | None) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    roles = route.roles

    async def handler(request: web.Request) -> web.StreamResponse:
        server = request.app[SERVER_KEY]
        actor: Actor | None = None
        if roles is not None:
            actor = await _actor(request, server)
            if roles and not actor.may(roles):
                allowed = ", ".join(r for r in ROLES if r in roles or r == "admin")
                raise ApiError(403, "forbidden",
                               f"role {actor.role!r} may not {route.method} {route.path}; needs one of {allowed}")
        server = await _store_view(request, route, server, actor)
        if query is not None and roles is not None:
            # a misspelt filter (`?stat=offline`) must not silently answer with everything
            unknown = sorted(set(request.query) - query)
            if unknown:
                known = ", ".join(sorted(query)) or "none"
                raise ApiError(400, "unknown_parameter",
                               f"query parameter {unknown[0][:100]!r} is not one of {route.method} "
                               f"{route.path}'s parameters ({known})", field=unknown[0][:100])
        return await route.handler(Call(request, server, actor))

    handler.__name__ = getattr(route.handler, "__name__", "handler")
    return handler


@web.middleware
async def _errors(request: web.Request, handler: AiohttpHandler) -> web.StreamResponse:
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except ApiError as exc:
        answer = json_response(exc.to_json(), status=exc.status, headers=exc.headers or None)
        if exc.close_connection:
            await answer.prepare(request)
            await answer.write_eof()
            request.protocol.force_close()  # no lingering to drain a body we refused unread
        return answer
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _REASONS.get(exc.status, f"http_{exc.status}")
        detail = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
        if exc.status == 404:
            detail = f"no route {request.method} {request.path}"
        elif exc.status == 413:
            detail = f"body: expected at most {request.app[BODY_LIMIT_KEY]} bytes"
        elif exc.status == 405:
            detail = f"method {request.method} is not allowed on {request.path}"
        headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        return json_response({"error": code, "detail": detail}, status=exc.status, headers=headers or None)
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return json_response({"error": "internal", "detail": "internal server error (logged on the server)"},
                             status=500)


async def _headers(request: web.Request, response: web.StreamResponse) -> None:
    """No MIME sniffing anywhere; JSON answers (tokens' views of the store) are never cached."""
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    if response.content_type == "application/json":
        response.headers.setdefault("Cache-Control", "no-store")


def create_app(server: Backend, *, routes: Sequence[Route] | None = None) -> web.Application:
    """The HTTP application for `server` (which the caller opens and closes): in practice the
    `eslserver.server.Server` passing itself, which satisfies `Backend`."""
    table = tuple(all_routes() if routes is None else routes)
    biggest = max((r.body_limit for r in table), default=MAX_JSON_BODY)
    app = web.Application(middlewares=[_errors], client_max_size=biggest)
    app.on_response_prepare.append(_headers)
    app[SERVER_KEY] = server
    app[ROUTES_KEY] = table
    app[BODY_LIMIT_KEY] = biggest
    app[DOCUMENT_KEY] = document
    doc = document()
    for route in table:
        guard = _guard(route, _query_names(doc, route))
        if route.method == "GET":  # HEAD wherever GET: same headers and status, no body
            app.router.add_get(route.path, guard, allow_head=True)
        else:
            app.router.add_route(route.method, route.path, guard)
    routes_live.setup_live(app)
    setup_web(app)
    setup_docs(app)
    return app
