"""Labels: list with filters, show, bind/unbind (pairing), flash the LED, images, events.

Writes go through `server.labels` (which audits them); reads through `eslserver.store`. A label
JSON is the label state (docs/mqtt.asyncapi.yaml, ``LabelState``) plus ``template`` and
``aisle``; the detail adds the bound product's name and price and the open jobs.
"""

from __future__ import annotations

import json
from typing import Any, Final

from aiohttp import web

from eslserver.api.errors import ApiError, bad_input, not_found
from eslserver.api.routing import (
    ANY_ROLE, Call, Route, json_object, json_response, newest_first, normalise_mac, page_params, query_bool,
    json_int, query_choice, query_int, query_text, read_json,
)
from eslserver.labels import LabelError, state_json
from eslserver.metrics import LABEL_STATES
from eslserver.store import events as event_rows
from eslserver.store import jobs as job_rows
from eslserver.store import labels as label_rows
from eslserver.store import products
from firmware_proto.models import MODELS

__all__ = ["ROUTES", "TECH_ROLES", "label_json", "label_error", "json_column"]

TECH_ROLES: Final = frozenset({"tech"})
_MAX_BODY: Final = 16 * 1024
_FIELDS_OF: Final = {"unknown_sku": "sku", "unknown_label": "mac", "bad_mac": "mac", "bad_seconds": "seconds",
                     "unknown_template": "template", "unknown_model": "model"}
_PNG_CACHE: Final = "private, no-cache"


def label_json(row: Any) -> dict[str, Any]:
    """A labels row (`eslserver.store.labels.get`) → the label JSON of the API: the label state, plus
    ``template``, ``aisle`` and ``paired`` (the label holds a key: it can be commanded)."""
    out = state_json(row)
    out["template"] = row["template"]
    out["aisle"] = row["aisle"]
    out["paired"] = bool(row["paired"])
    return out


def label_error(exc: LabelError) -> ApiError:
    return ApiError(exc.status, exc.code, exc.detail, field=_FIELDS_OF.get(exc.code))


def json_column(text: str | None) -> Any:
    """A JSON text column as a value (a column that is not JSON comes back as its text)."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def _mac(call: Call) -> str:
    return normalise_mac(call.request.match_info["mac"])


async def list_labels(call: Call) -> web.StreamResponse:
    request = call.request
    where = label_rows.LabelFilter(
        store=call.server.settings.store, state=query_choice(request, "state", LABEL_STATES),
        gateway=query_text(request, "gateway"), sku=query_text(request, "sku"), aisle=query_text(request, "aisle"),
        model=query_text(request, "model"), template=query_text(request, "template"),
        battery_below=query_int(request, "battery_below", default=None, lo=0, hi=100_000),
        paired=query_bool(request, "paired"), stale=query_bool(request, "stale"))
    limit, offset = page_params(request, default=100, maximum=1000)
    total, rows = await label_rows.page(call.server.db, where, limit, offset)
    return json_response({"items": [label_json(r) for r in rows], "total": total, "limit": limit, "offset": offset})


async def _label_row(call: Call, mac: str) -> Any:
    row = await label_rows.get(call.server.db, mac)
    if row is None:
        raise not_found("unknown_label", f"label {mac} is not known", field="mac")
    return row


def _product_summary(record_text: str | None, sku: str | None) -> dict[str, Any] | None:
    if record_text is None or sku is None:
        return None
    record = json_column(record_text)
    if not isinstance(record, dict):
        return None
    return {"sku": sku, "name": record.get("name"), "price": record.get("price"),
            "currency": record.get("currency")}


async def show_label(call: Call) -> web.StreamResponse:
    mac = _mac(call)
    row = await _label_row(call, mac)
    out = label_json(row)
    db = call.server.db
    product = None
    if row["sku"] is not None:
        prow = await products.get(db, call.server.settings.store, row["sku"])
        product = _product_summary(prow["record"] if prow else None, row["sku"])
    out["product"] = product
    out["open_jobs"] = [dict(j) for j in await job_rows.open_for_label(db, mac)]
    return json_response(out)


async def put_binding(call: Call) -> web.StreamResponse:
    mac = _mac(call)
    body = json_object(await read_json(call.request, _MAX_BODY), ("sku", "template", "model"), ("sku",))
    sku = body["sku"]
    if not isinstance(sku, str) or not sku.strip() or len(sku) > 64:
        raise bad_input("sku", sku, "a SKU (1-64 characters)", code="invalid_body")
    template = body.get("template")
    if template is not None:
        if not isinstance(template, str):
            raise bad_input("template", template, "a template name", code="invalid_body")
        if await call.server.templates.get(template) is None:
            raise not_found("unknown_template", f"template: no template {template!r}", field="template")
    model = body.get("model")
    if model is not None:
        if not isinstance(model, str) or model not in MODELS:
            raise bad_input("model", model, "one of " + ", ".join(MODELS), code="invalid_body")
    try:
        await call.server.labels.bind(mac, sku, actor=call.who, template=template, model=model)
    except LabelError as exc:
        raise label_error(exc) from None
    return json_response(label_json(await _label_row(call, mac)))


async def delete_binding(call: Call) -> web.StreamResponse:
    mac = _mac(call)
    try:
        await call.server.labels.unbind(mac, actor=call.who)
    except LabelError as exc:
        raise label_error(exc) from None
    return json_response(label_json(await _label_row(call, mac)))


async def post_flash(call: Call) -> web.StreamResponse:
    mac = _mac(call)
    body = json_object(await read_json(call.request, _MAX_BODY), ("seconds",))
    raw_seconds = body.get("seconds", 10)
    seconds = json_int(raw_seconds)
    if seconds is None or not 1 <= seconds <= 3600:
        raise bad_input("seconds", raw_seconds, "an integer 1..3600", code="invalid_body")
    try:
        job = await call.server.labels.flash(mac, seconds=seconds, actor=call.who)
    except LabelError as exc:
        raise label_error(exc) from None
    return json_response({"job": job, "mac": mac, "seconds": seconds}, status=202)


async def post_reset(call: Call) -> web.StreamResponse:
    """A technician re-pairs a label that lost its key (never done on a label's own word)."""
    mac = _mac(call)
    try:
        await call.server.labels.reset(mac, actor=call.who)
    except LabelError as exc:
        raise label_error(exc) from None
    return json_response(label_json(await _label_row(call, mac)))


async def _png(call: Call, digest: str | None, what: str) -> web.StreamResponse:
    if digest is None:
        raise not_found("no_image", f"label has no {what} image yet")
    png = await call.server.templates.image_png(digest)
    if png is None:
        raise not_found("no_image", f"the {what} image {digest} is not stored on this server")
    return web.Response(body=png, content_type="image/png",
                        headers={"ETag": f'"{digest}"', "Cache-Control": _PNG_CACHE})


async def expected_png(call: Call) -> web.StreamResponse:
    row = await _label_row(call, _mac(call))
    return await _png(call, row["expected_hash"], "expected")


async def displayed_png(call: Call) -> web.StreamResponse:
    row = await _label_row(call, _mac(call))
    return await _png(call, row["displayed_hash"], "displayed")


async def image_png(call: Call) -> web.StreamResponse:
    """Any stored image by its content hash: immutable, so cacheable for good."""
    digest = call.request.match_info["hash"].lower()
    if not (len(digest) == 16 and all(c in "0123456789abcdef" for c in digest)):
        raise bad_input("hash", call.request.match_info["hash"], "16 hex digits")
    png = await call.server.templates.image_png(digest)
    if png is None:
        raise not_found("no_image", f"image {digest} is not stored on this server", field="hash")
    return web.Response(body=png, content_type="image/png",
                        headers={"ETag": f'"{digest}"', "Cache-Control": "private, max-age=31536000, immutable"})


async def label_events(call: Call) -> web.StreamResponse:
    mac = _mac(call)
    await _label_row(call, mac)
    db = call.server.db
    return await newest_first(call, lambda before, limit: event_rows.for_label(db, mac, before=before, limit=limit),
                              lambda r: {"id": r["id"], "at": r["at"], "gateway": r["gateway"], "kind": r["kind"],
                                         "detail": json_column(r["detail"])})


ROUTES: Final = (
    Route("GET", "/api/v1/labels", list_labels, ANY_ROLE),
    Route("GET", "/api/v1/labels/{mac}", show_label, ANY_ROLE),
    Route("PUT", "/api/v1/labels/{mac}/binding", put_binding, TECH_ROLES, body_limit=_MAX_BODY),
    Route("DELETE", "/api/v1/labels/{mac}/binding", delete_binding, TECH_ROLES),
    Route("POST", "/api/v1/labels/{mac}/flash", post_flash, TECH_ROLES, body_limit=_MAX_BODY),
    Route("POST", "/api/v1/labels/{mac}/reset", post_reset, TECH_ROLES),
    Route("GET", "/api/v1/labels/{mac}/image/expected.png", expected_png, ANY_ROLE),
    Route("GET", "/api/v1/labels/{mac}/image/displayed.png", displayed_png, ANY_ROLE),
    Route("GET", "/api/v1/labels/{mac}/events", label_events, ANY_ROLE),
    Route("GET", "/api/v1/images/{hash}.png", image_png, ANY_ROLE, chain="shared"),
)
