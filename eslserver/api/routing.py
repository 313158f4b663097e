"""The route table's value types and the input helpers every handler uses.

A `Route` names its method, path, handler and the roles that may call it; `create_app`
registers each behind the token check, and the OpenAPI test compares this table with the
document both ways. Handlers receive a `Call` (request, server, actor) instead of reaching
for global state. Query parameters and bodies are parsed here, once, into typed values or an
`ApiError` naming the field and the value.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final

from aiohttp import web

from eslserver import labels
from eslserver.api.backend import Backend
from eslserver.api.errors import ApiError, bad_input
from eslserver.auth import Actor

__all__ = [
    "Call", "Route", "Handler", "ANY_ROLE", "PUBLIC", "json_response", "query_int", "query_bool",
    "query_choice", "query_text", "read_json", "json_int", "read_body", "parse_json", "json_object", "normalise_mac",
    "page_params", "newest_first", "dumps", "MAX_JSON_BODY", "DOCUMENT_KEY", "MAC_PATTERN", "TEXT_MAX",
    "TEXT_PATTERN",
]

API_PREFIX: Final = "/api/v1"
STORE_PREFIX: Final = "/api/v1/stores/{store}"
"""Where a store's routes are served for any store of the chain (the plain paths: the configured store)."""
MAX_JSON_BODY: Final = 4 * 1024 * 1024
"""Largest JSON body any route takes (a POS batch of ~10,000 items)."""

ANY_ROLE: Final[frozenset[str]] = frozenset()
"""Any valid token (read endpoints)."""
PUBLIC: Final = None
"""No token at all (metrics, health, the OpenAPI document)."""

DOCUMENT_KEY: Final = web.AppKey[Callable[[], dict[str, Any]]]("eslserver.openapi")
"""The application's OpenAPI document, set by `create_app`: the handler serving it reads it
here, because the document is built from the route table that handler is part of."""

_INT_RE: Final = re.compile(r"^-?[0-9]{1,19}$")
MAC_PATTERN: Final = r"^(?:[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){5}|[0-9A-Fa-f]{2}(?:-[0-9A-Fa-f]{2}){5}|[0-9A-Fa-f]{12})$"
"""A MAC in a request: one kind of separator (``:``, ``-`` or none) throughout. The OpenAPI
document states this same pattern, so what it promises and what is checked cannot drift."""
_MAC_RE: Final = re.compile(MAC_PATTERN)
TEXT_MAX: Final = 200
TEXT_PATTERN: Final = r"^[^\x00-\x1f\x7f-\x9f]+$"
"""A text query parameter: no control characters (the document states the same)."""
_TEXT_RE: Final = re.compile(TEXT_PATTERN)


@dataclass(frozen=True, slots=True)
class Call:
    """One request as a handler sees it."""

    request: web.Request
    server: Backend
    actor: Actor | None

    @property
    def who(self) -> Actor:
        """The caller (routes that need a token always have one)."""
        if self.actor is None:
            raise RuntimeError(f"{self.request.path}: handler needs an actor but the route is public")
        return self.actor


Handler = Callable[[Call], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class Route:
    """One endpoint: `roles` None = public, empty = any valid token, else those roles (and admin)."""

    method: str
    path: str
    handler: Handler
    roles: frozenset[str] | None
    body_limit: int = MAX_JSON_BODY
    chain: str | None = None
    """None: a store's (served for the configured store, and for every store under
    ``/api/v1/stores/{store}/…``); ``shared``: the whole chain's, which a token restricted to some
    stores may read but not change (templates); ``whole``: the whole chain's, not for such a
    token at all (the audit log, the live stream of every store)."""
    store_scoped: bool = False
    """This is the ``/api/v1/stores/{store}/…`` copy of a store's route (`scoped`)."""

    def scoped(self) -> Route:
        """The copy of this store route under ``/api/v1/stores/{store}/…``."""
        return dataclasses.replace(self, path=STORE_PREFIX + self.path[len(API_PREFIX):], store_scoped=True)

    @property
    def plain_path(self) -> str:
        """The path of the route this one is the store-scoped copy of (its own path if none)."""
        return API_PREFIX + self.path[len(STORE_PREFIX):] if self.store_scoped else self.path


def _json_default(value: object) -> object:
    if isinstance(value, Decimal):
        return str(value)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def dumps(body: object) -> str:
    return json.dumps(body, default=_json_default, ensure_ascii=False, separators=(",", ":"))


def json_response(body: object, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(body, status=status, headers=headers, dumps=dumps)


def _one(request: web.Request, name: str) -> str | None:
    values = request.query.getall(name, [])
    if len(values) > 1:
        raise bad_input(name, values, "one value")
    return values[0] if values else None


def query_int(request: web.Request, name: str, *, default: int | None, lo: int, hi: int) -> int | None:
    raw = _one(request, name)
    if raw is None:
        return default
    if not _INT_RE.fullmatch(raw):
        raise bad_input(name, raw, f"an integer {lo}..{hi}")
    value = int(raw)
    if not lo <= value <= hi:
        raise bad_input(name, raw, f"an integer {lo}..{hi}")
    return value


def query_bool(request: web.Request, name: str) -> bool | None:
    raw = _one(request, name)
    if raw is None:
        return None
    if raw.lower() in ("true", "1", "yes"):
        return True
    if raw.lower() in ("false", "0", "no"):
        return False
    raise bad_input(name, raw, "true or false")


def query_choice(request: web.Request, name: str, choices: Collection[str]) -> str | None:
    raw = _one(request, name)
    if raw is None:
        return None
    if raw not in choices:
        raise bad_input(name, raw, "one of " + ", ".join(choices))
    return raw


def query_text(request: web.Request, name: str, *, max_len: int = TEXT_MAX) -> str | None:
    raw = _one(request, name)
    if raw is None:
        return None
    if not raw or len(raw) > max_len or not _TEXT_RE.fullmatch(raw):
        raise bad_input(name, raw, f"1-{max_len} characters, no control characters")
    return raw


def page_params(request: web.Request, *, default: int = 100, maximum: int = 1000) -> tuple[int, int]:
    """``(limit, offset)`` from the query."""
    limit = query_int(request, "limit", default=default, lo=1, hi=maximum)
    offset = query_int(request, "offset", default=0, lo=0, hi=10**9)
    assert limit is not None and offset is not None
    return limit, offset


async def newest_first(call: Call, fetch: Callable[[int | None, int], Awaitable[Sequence[Any]]],
                       item: Callable[[Any], dict[str, Any]]) -> web.Response:
    """A listing of rows newest first by ``id``, ``limit`` at a time: ``before`` (an id from the
    last page's ``next_before``) continues it. `fetch(before, limit)` reads one page (a storage
    operation, e.g. `eslserver.store.audit.newest`); `item` turns a row into its JSON."""
    limit = query_int(call.request, "limit", default=100, lo=1, hi=1000)
    before = query_int(call.request, "before", default=None, lo=1, hi=2**63 - 1)
    assert limit is not None
    items = [item(r) for r in await fetch(before, limit)]
    return json_response({"items": items, "next_before": items[-1]["id"] if len(items) == limit else None})


def normalise_mac(value: str, field: str = "mac") -> str:
    """A MAC from a request (``aa-bb-cc-dd-ee-ff``, ``aabbccddeeff``, ``AA:BB:…``, one kind of
    separator throughout) in `eslserver.labels.normalise_mac`'s canonical form; ApiError if not."""
    if not isinstance(value, str) or not _MAC_RE.fullmatch(value):
        raise bad_input(field, value, "a MAC address such as AA:BB:CC:DD:EE:FF")
    return labels.normalise_mac(value)


def _media_type(request: web.Request) -> str:
    return request.content_type.lower() if request.headers.get("Content-Type") else ""


async def read_body(request: web.Request, limit: int, types: Collection[str]) -> tuple[str, bytes]:
    """``(media type, body)``: 415 when the content type is not one of `types`, 413 when the
    body is larger than `limit` bytes."""
    media = _media_type(request)
    if media not in types:
        raise ApiError(415, "unsupported_media_type",
                       f"Content-Type: expected {' or '.join(types)}, got {media or 'none'!r}",
                       field="Content-Type")
    if request.content_length is not None and request.content_length > limit:
        # answered without reading the body: the connection is closed after the answer
        # (`close_connection`) instead of lingering to drain it, which would hold up shutdown
        raise ApiError(413, "body_too_large", f"body: expected at most {limit} bytes, got {request.content_length}",
                       headers={"Connection": "close"}, close_connection=True)
    body = await request.read()
    if len(body) > limit:
        raise ApiError(413, "body_too_large", f"body: expected at most {limit} bytes, got {len(body)}")
    return media, body


def _refuse_constant(name: str) -> Any:
    raise ValueError(name)


def parse_json(body: bytes | str) -> Any:
    """JSON with numbers kept exact (Decimal), or a 400 naming where it broke (NaN and
    Infinity, which Python's parser would let through, are refused too). Text (`str`) is
    read as it is: a route that tolerates bytes that are not UTF-8 decodes them itself."""
    try:
        text = body if isinstance(body, str) else body.decode("utf-8")
        return json.loads(text, parse_float=Decimal, parse_constant=_refuse_constant)
    except UnicodeDecodeError as exc:
        raise ApiError(400, "invalid_json", f"body: expected UTF-8 JSON, got a bad byte at {exc.start}",
                       field="body") from None
    except json.JSONDecodeError as exc:
        raise ApiError(400, "invalid_json", f"body: expected JSON, {exc.msg} at line {exc.lineno} "
                                            f"column {exc.colno}", field="body") from None
    except ValueError as exc:  # a refused constant
        raise ApiError(400, "invalid_json", f"body: expected JSON, got {exc} (not a JSON value)",
                       field="body") from None
    except RecursionError:
        raise ApiError(400, "invalid_json", "body: expected JSON, got arrays or objects nested too deeply",
                       field="body") from None


async def read_json(request: web.Request, limit: int = MAX_JSON_BODY) -> Any:
    """The JSON body of a request (Content-Type application/json)."""
    _, body = await read_body(request, limit, ("application/json",))
    return parse_json(body)


def json_int(value: Any) -> int | None:
    """`value` as an int when it is a JSON integer (``3``, or ``3.0``: JSON Schema counts both as
    integers, and the document promises JSON Schema's meaning), else None (booleans too)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, Decimal) and value.is_finite() and value == value.to_integral_value():
        return int(value)
    return None


def json_object(value: Any, allowed: Collection[str], required: Collection[str] = ()) -> dict[str, Any]:
    """A JSON object with only `allowed` keys and every `required` one, else a 400."""
    if not isinstance(value, dict):
        raise bad_input("body", type(value).__name__ if not isinstance(value, (str, int)) else value,
                        "a JSON object", code="invalid_body")
    for key in value:
        if key not in allowed:
            raise bad_input(key, value[key], "no such field (allowed: " + ", ".join(allowed) + ")",
                            code="invalid_body")
    for key in required:
        if key not in value:
            raise ApiError(400, "invalid_body", f"{key}: required field is missing", field=key)
    return value
