"""Templates: list, read, write (validated, audited), preview as PNG.

Writing and previewing run merchandiser-supplied Jinja2 (sandboxed by `render.templates`),
so both need the ``merchandiser`` role (or ``admin``); reading is open to every token. A
template that fails is answered 422 with its line and kind and never replaces the stored
one. ``PUT`` takes ``{"source": …, "base_version": n}`` as JSON, or the raw source as
``text/plain`` (``curl --data-binary @shelf.j2``); with ``base_version`` a write over a
newer version is refused (409), so two editors do not overwrite each other unknowingly.
"""

from __future__ import annotations

import re
from typing import Final

from aiohttp import web

from eslserver.api.errors import ApiError, bad_input, conflict, not_found
from eslserver.api.routing import (
    ANY_ROLE, Call, Route, json_int, json_object, json_response, parse_json, read_body, read_json,
)
from eslserver.label_templates import TemplateInUse
from eslserver.store import products
from firmware_proto.models import MODELS
from render.templates import MAX_SOURCE_CHARS, TemplateError

__all__ = ["ROUTES", "NAME_PATTERN", "RESERVED_NAMES", "TEMPLATE_ROLES", "template_error"]

TEMPLATE_ROLES: Final = frozenset({"merchandiser"})
NAME_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
"""A template name (the OpenAPI document states this same pattern)."""
_NAME_RE: Final = re.compile(NAME_PATTERN)
_MAX_BODY: Final = 4 * MAX_SOURCE_CHARS + 1024  # UTF-8 worst case, JSON quoting aside
RESERVED_NAMES: Final = frozenset({"preview"})
"""Names a template may not take: ``/templates/preview`` is the preview route's path."""


def template_error(exc: TemplateError) -> ApiError:
    """422 with the template's line (null when the error has none) and the error kind."""
    return ApiError(422, "template_error", str(exc), field="source",
                    extra={"line": exc.line, "kind": exc.kind, "template": exc.template})


def _name(call: Call) -> str:
    name = call.request.match_info["name"]
    if not _NAME_RE.fullmatch(name):
        raise bad_input("name", name, "letters, digits, '_', '.', '-' (1-64, starting with a letter or digit)")
    return name


def _source(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise bad_input("source", value, "the template text", code="invalid_body")
    if len(value) > MAX_SOURCE_CHARS:
        raise bad_input("source", f"{len(value)} characters", f"at most {MAX_SOURCE_CHARS} characters",
                        code="invalid_body")
    return value


async def list_templates(call: Call) -> web.StreamResponse:
    return json_response({"items": [dict(t) for t in await call.server.templates.list()]})


async def get_template(call: Call) -> web.StreamResponse:
    name = _name(call)
    found = await call.server.templates.get(name)
    if found is None:
        raise not_found("unknown_template", f"no template {name!r}", field="name")
    source, version = found
    return json_response({"name": name, "version": version, "source": source})


async def put_template(call: Call) -> web.StreamResponse:
    name = _name(call)
    if name.lower() in RESERVED_NAMES:
        raise bad_input("name", name, "a name other than " + ", ".join(sorted(RESERVED_NAMES))
                        + " (reserved for the API's own paths)")
    media, body = await read_body(call.request, _MAX_BODY, ("application/json", "text/plain"))
    base: int | None = None
    if media == "text/plain":
        try:
            source = _source(body.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise bad_input("source", f"byte {exc.start}", "UTF-8 text", code="invalid_body") from None
    else:
        doc = json_object(parse_json(body), ("source", "base_version"), ("source",))
        source = _source(doc["source"])
        raw_base = doc.get("base_version")
        base = json_int(raw_base)
        if raw_base is not None and (base is None or base < 0):
            raise bad_input("base_version", raw_base, "the version the edit started from (an integer >= 0)",
                            code="invalid_body")
    templates = call.server.templates
    if base is not None:
        current = await templates.get(name)
        current_version = current[1] if current else 0
        if current_version != base:
            raise conflict("version_conflict", f"base_version: template {name!r} is at version {current_version}, "
                                               f"the edit started from {base}", field="base_version")
    try:
        version = await templates.save(name, source, actor=call.who)
    except TemplateError as exc:
        raise template_error(exc) from None
    except TemplateInUse as exc:  # the labels it would break, so the merchandiser can rebind them
        raise ApiError(409, "template_in_use", str(exc), field="source",
                       extra={"labels": [{"mac": mac, "model": model} for mac, model in exc.labels]}) from None
    return json_response({"name": name, "version": version})


async def preview(call: Call) -> web.StreamResponse:
    doc = json_object(await read_json(call.request, _MAX_BODY), ("source", "name", "sku", "model"))
    if ("source" in doc) == ("name" in doc):
        raise ApiError(400, "invalid_body", "body: expected exactly one of 'source' or 'name'", field="source")
    server = call.server
    source: str | None = None
    name: str | None = None
    if "name" in doc:
        raw = doc["name"]
        if not isinstance(raw, str):
            raise bad_input("name", raw, "a template name", code="invalid_body")
        if await server.templates.get(raw) is None:
            raise not_found("unknown_template", f"name: no template {raw!r}", field="name")
        name = raw
    else:
        source = _source(doc["source"])
    sku = doc.get("sku")
    if sku is not None:
        if not isinstance(sku, str):
            raise bad_input("sku", sku, "a SKU", code="invalid_body")
        if not await products.exists(server.db, server.settings.store, sku):
            raise not_found("unknown_sku", f"sku {sku!r} is not in the catalogue", field="sku")
    model = doc.get("model")
    if model is not None:
        if not isinstance(model, str) or model not in MODELS:
            raise bad_input("model", model, "one of " + ", ".join(MODELS), code="invalid_body")
    try:
        png = await server.templates.preview(source=source, name=name, sku=sku, model=model)
    except TemplateError as exc:
        raise template_error(exc) from None
    except KeyError:  # the product was deleted since the check above
        raise not_found("unknown_sku", f"sku {sku!r} is not in the catalogue", field="sku") from None
    return web.Response(body=png, content_type="image/png", headers={"Cache-Control": "no-store"})


ROUTES: Final = (
    Route("GET", "/api/v1/templates", list_templates, ANY_ROLE, chain="shared"),
    Route("GET", "/api/v1/templates/{name}", get_template, ANY_ROLE, chain="shared"),
    Route("PUT", "/api/v1/templates/{name}", put_template, TEMPLATE_ROLES, body_limit=_MAX_BODY, chain="shared"),
    Route("POST", "/api/v1/templates/preview", preview, TEMPLATE_ROLES, body_limit=_MAX_BODY, chain="shared"),
)
