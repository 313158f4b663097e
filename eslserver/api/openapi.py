"""The OpenAPI 3.1 document of the HTTP API, written once, here.

Operations are declared in `_OPERATIONS` (parameters, body, responses); `document()` adds
what the route table (`eslserver.api.table.all_routes`) already says — security, the roles
(``x-roles``) and the 401/403 answers of guarded routes, and the error answers every route
shares. The test suite checks both ways that the routes served and the routes documented are
the same set, and validates every response body it sees against the schema here.
"""

from __future__ import annotations

import copy
import functools
from typing import Any, Final

from eslserver.api.routes_images import MAX_UPLOAD_BYTES
from eslserver.api.routes_templates import NAME_PATTERN
from eslserver.api.routing import MAC_PATTERN, TEXT_MAX, TEXT_PATTERN
from eslserver.api.table import all_routes
from eslserver import pos_limits
from eslserver.auth import ROLES
from eslserver.ingest import STATUSES
from eslserver.pricing import MAX_UPDATE_ID
from firmware_proto.models import MODELS
from render.image_decode import MAX_PIXELS, MAX_SIDE, MEDIA_TYPES, STORED_MAX_SIDE
from render.image_refs import DIGEST_PATTERN, NAME_PATTERN as IMAGE_NAME_PATTERN
from render.templates import MAX_SOURCE_CHARS
from eslserver.metrics import JOB_STATES, LABEL_STATES

__all__ = ["document", "SCHEMAS"]

Schema = dict[str, Any]


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _null(t: str) -> Schema:
    return {"type": [t, "null"]}


def _obj(props: dict[str, Schema], required: tuple[str, ...] | None = None, *, extra: bool = False) -> Schema:
    return {"type": "object", "properties": props,
            "required": list(props) if required is None else list(required),
            "additionalProperties": extra}


def _list(item: str, *, paged: bool = False, cursor: bool = False) -> Schema:
    props: dict[str, Schema] = {"items": {"type": "array", "items": _ref(item)}}
    if paged:
        props.update(total={"type": "integer", "minimum": 0}, limit={"type": "integer", "minimum": 1},
                     offset={"type": "integer", "minimum": 0})
    if cursor:
        props["next_before"] = {"type": ["integer", "null"],
                                "description": "pass as `before` for the next (older) page; null at the end"}
    return _obj(props)


_TIME = {"type": "string", "format": "date-time"}
_TIME_OR_NULL = {"type": ["string", "null"], "format": "date-time"}
_HASH = {"type": ["string", "null"], "pattern": "^[0-9a-f]{16}$"}
_DECIMAL = {"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]+)?$", "description": "decimal as text"}
_ANY: Schema = {}

_ERROR_PROPS: Final[dict[str, Schema]] = {
    "error": {"type": "string", "description": "stable machine-readable code"},
    "detail": {"type": "string", "description": "human text naming the field and the value"},
    "field": {"type": "string", "description": "the input field at fault, when there is one"},
}

SCHEMAS: Final[dict[str, Schema]] = {
    "Error": _obj(dict(_ERROR_PROPS), ("error", "detail")),
    "TemplateError": _obj({**_ERROR_PROPS, "line": _null("integer"), "kind": {"type": "string", "description": "syntax, security, undefined, runtime, markup, model, metadata, render or limit (a CPU, memory or time limit of the render processes)"},
        "template": {"type": "string"}}, ("error", "detail", "line", "kind")),
    "TemplateInUse": _obj({**_ERROR_PROPS, "labels": {"type": "array", "items": _obj(
        {"mac": {"type": "string"}, "model": {"type": "string"}})}}, ("error", "detail")),
    "PriceUpdate": {
        "type": "object",
        "description": "A price update: the same JSON a POS publishes on MQTT `esl/{store}/pos/prices` "
                       "(docs/mqtt.asyncapi.yaml). The store's field map may rename fields, so other "
                       "names are accepted and mapped; validation errors name the field and value.",
        "properties": {
            "sku": {"type": "string"}, "price": {"type": ["string", "number"]},
            "currency": {"type": "string"}, "name": {"type": "string"},
            "regular_price": {"type": ["string", "number", "null"]},
            "promo": {"type": ["object", "null"], "properties": {
                "price": {"type": ["string", "number"]}, "from": {"type": ["string", "null"]},
                "to": {"type": ["string", "null"]}}},
            "unit": {"type": ["object", "null"], "properties": {
                "size": {"type": ["string", "number"]}, "measure": {"type": "string"}}},
            "vat_rate": {"type": ["string", "number", "null"]}, "valid_from": {"type": ["string", "null"]},
            "seq": {"type": ["integer", "string", "null"]}, "attributes": {"type": ["object", "null"]},
            "ean": {"type": ["string", "null"]}, "url": {"type": ["string", "null"]},
            "image": {"type": ["string", "null"]}, "lowest_30d": {"type": ["string", "number", "null"]},
            "update_id": {"type": ["string", "null"], "pattern": f"^[ -~]{{1,{MAX_UPDATE_ID}}}$",
                          "description": "the POS's own id of this change; an item whose id was accepted before is "
                                         "answered `duplicate` and not applied again"},
        },
        "additionalProperties": True,
    },
    "PriceAccepted": _obj({
        "index": {"type": "integer", "minimum": 0}, "sku": {"type": "string"},
        "seq": {"type": ["integer", "null"], "description": "the item's `seq`, null when it had none"},
        "update_id": {"type": ["string", "null"], "description": "the item's `update_id`, null when it had none"},
        "status": {"type": "string", "enum": list(STATUSES),
                   "description": "`applied`; `scheduled` for its `valid_from`; ignored as `stale` (a `seq` not "
                                  "above the stored one) or as a `duplicate` (an `update_id` accepted before)"}}),
    "PriceItemError": _obj({
        "index": _null("integer"), "sku": _null("string"),
        "field": {"type": "string", "description": "the field as the POS named it (its field-map name, e.g. "
                                                   "`Cena`), dotted inside a group (`promo.price`)"},
        "canonical": {"type": "string", "description": "the canonical field it stands for (`price`); equal to "
                                                       "`field` when the store maps no name onto it"},
        "value": _ANY, "error": {"type": "string"}, "detail": {"type": "string"},
        "hint": {"type": ["string", "null"], "description": "a key that looks misspelt, with the name it "
                                                           "probably meant (\"'Cenna' is not a field: did "
                                                           "you mean Cena?\")"}}),
    "PriceResult": _obj({"accepted": {"type": "array", "items": _ref("PriceAccepted")},
                         "errors": {"type": "array", "items": _ref("PriceItemError")}}),
    "PriceRejected": _obj({**_ERROR_PROPS, "accepted": {"type": "array", "maxItems": 0},
                           "errors": {"type": "array", "items": _ref("PriceItemError"), "minItems": 1}},
                          ("error", "detail", "accepted", "errors")),
    "Label": _obj({
        "mac": {"type": "string", "pattern": "^([0-9A-F]{2}:){5}[0-9A-F]{2}$"},
        "sku": _null("string"), "model": {"type": "string"}, "gateway": _null("string"),
        "state": {"type": "string", "enum": list(LABEL_STATES)},
        "expected_hash": _HASH, "displayed_hash": _HASH,
        "battery_mv": _null("integer"), "temperature_c": _null("integer"), "rssi": _null("integer"),
        "last_seen": _TIME_OR_NULL, "updated_at": _TIME,
        "template": _null("string"), "aisle": _null("string"),
        "paired": {"type": "boolean", "description": "the label holds its key (pairing done): it can be commanded"},
    }),
    "ProductSummary": _obj({"sku": {"type": "string"}, "name": _null("string"), "price": _null("string"),
                            "currency": _null("string")}),
    "OpenJob": _obj({"id": {"type": "integer"}, "kind": {"type": "string"}, "state": {"type": "string"},
                     "attempts": {"type": "integer"}, "created_at": _TIME, "error": _null("string")}),
    "LabelList": _list("Label", paged=True),
    "FlashQueued": _obj({"job": {"type": "integer"}, "mac": {"type": "string"},
                         "seconds": {"type": "integer", "minimum": 1}}),
    "Event": _obj({"id": {"type": "integer"}, "at": _TIME, "gateway": _null("string"),
                   "kind": {"type": "string"}, "detail": _ANY}),
    "EventList": _list("Event", cursor=True),
    "Product": _obj({
        "sku": {"type": "string"}, "name": _null("string"), "price": _null("string"), "currency": _null("string"),
        "record": {"type": "object", "description": "the stored canonical record (eslserver.pricing)"},
        "seq": _null("integer"), "updated_at": _TIME, "next_change_at": _TIME_OR_NULL,
        "labels": {"type": "integer", "minimum": 0, "description": "labels bound to this product"},
        "created_by_pos": {"type": "boolean", "description": "a POS created it (its SKU was unknown and the store's "
                                                           "`unknown_sku` is `create`); false once a person changed it"},
    }),
    "ProductList": _list("Product", paged=True),
    "PricePeriod": _obj({"id": {"type": "integer"}, "price": _DECIMAL, "start_at": _TIME, "end_at": _TIME_OR_NULL,
                         "reduction": {"type": "boolean"}, "seq": _null("integer"), "source": {"type": "string"},
                         "recorded_at": _TIME}),
    "ScheduledUpdate": _obj({"id": {"type": "integer"}, "fields": {"type": "object"}, "seq": _null("integer"),
                             "valid_from": _TIME, "received_at": _TIME, "source": {"type": "string"}}),
    "Gateway": _obj({"id": {"type": "string"}, "status": {
                         "type": "string", "enum": ["online", "degraded", "offline", "incompatible"],
                         "description": "degraded: connected, but its radio is down (info.radio, info.radio_since); "
                                        "incompatible: it speaks a protocol older than the server needs "
                                        "(info.protocol, info.error). Jobs go only to online gateways whose "
                                        "public key is registered (info.public_key). info.server_key: the "
                                        "fingerprint of the server key the gateway trusts (after a key "
                                        "rotation, whether it followed)"},
                     "last_seen": _TIME_OR_NULL,
                     "labels": {"type": "integer", "minimum": 0}, "info": {"type": "object"}}),
    "GatewayList": _list("Gateway"),
    "Job": _obj({
        "id": {"type": "integer"}, "mac": {"type": "string"}, "gateway": _null("string"),
        "kind": {"type": "string", "enum": ["pair", "image", "command"]},
        "state": {"type": "string", "enum": list(JOB_STATES)},
        "image_hash": _HASH, "base_hash": _HASH, "region": _null("string"), "delta": {"type": "boolean"},
        "format": _null("integer"), "attempts": {"type": "integer"}, "next_attempt_at": _TIME,
        "created_at": _TIME, "sent_at": _TIME_OR_NULL, "finished_at": _TIME_OR_NULL, "origin_at": _TIME_OR_NULL,
        "error": _null("string"),
    }),
    "JobList": _list("Job", paged=True),
    "AuditEntry": _obj({"id": {"type": "integer"}, "at": _TIME, "actor": {"type": "string"},
                        "role": {"type": "string"}, "action": {"type": "string"}, "target": {"type": "string"},
                        "before": _ANY, "after": _ANY}),
    "AuditList": _list("AuditEntry", cursor=True),
    "TemplateInfo": _obj({"name": {"type": "string"},
                          "version": {"type": "integer", "minimum": 0, "description": "0: the shipped template"},
                          "models": {"type": "array", "items": {"type": "string"}},
                          "description": {"type": "string"},
                          "origin": {"type": "string", "enum": ["shipped", "database"]},
                          "updated_at": _TIME_OR_NULL, "updated_by": _null("string")}),
    "TemplateList": _list("TemplateInfo"),
    "TemplateSource": _obj({"name": {"type": "string"}, "version": {"type": "integer", "minimum": 0},
                            "source": {"type": "string"}}),
    "TemplateSaved": _obj({"name": {"type": "string"}, "version": {"type": "integer", "minimum": 1}}),
    "Summary": _obj({
        "at": _TIME,
        "labels": {"type": "object", "additionalProperties": {"type": "integer"}},
        "labels_up_to_date": {"type": "integer"}, "labels_low_battery": {"type": "integer"},
        "battery_below": {"type": "integer"},
        "gateways": {"type": "object", "additionalProperties": {"type": "integer"}},
        "open_jobs": _obj({"queued": {"type": "integer"}, "sent": {"type": "integer"}}),
        "updates_last_hour": {"type": "integer"},
        "time_to_shelf_s": _obj({"count": {"type": "integer"}, "p50": _null("number"), "p99": _null("number")}),
    }),
    "Me": _obj({"name": {"type": "string"}, "role": {"type": "string", "enum": ["pos", "merchandiser", "tech", "admin"]},
                "stores": {"type": ["array", "null"], "items": {"type": "string"}}}),
    "Store": _obj({"id": {"type": "string"}, "name": {"type": "string"}, "currency": {"type": "string"},
                   "language": {"type": "string"}, "country": {"type": "string"}, "timezone": {"type": "string"}}),
    "StoreList": _obj({"items": {"type": "array", "items": _ref("Store")}, "default": {"type": "string"}}),
    "Health": _obj({"status": {"type": "string", "enum": ["ok", "degraded"]},
                    "database": {"type": "string", "description": "ok, or error: … (disk full, read-only, corrupt)"},
                    "mqtt": {"type": "string", "enum": ["connected", "disconnected", "disabled"]},
                    "reasons": {"type": "array", "items": {"type": "string"}, "minItems": 1,
                                "description": "only when degraded: 'database: disk full (…)', 'database: "
                                               "read-only (…)', 'database: corrupt (quick_check: …)', "
                                               "'broker: disconnected since …'"}},
                   ("status", "database", "mqtt")),
}
SCHEMAS["ImportRow"] = _obj({
    "line": {"type": "integer", "minimum": 1, "description": "the row's line in the file (for the report)"},
    "fields": {"type": "object", "description": "product fields as in a price update (sku required; sku alone: "
                                              "bind the label to a product already in the catalogue)"},
    "label": _null("string"), "template": _null("string"), "model": _null("string")}, ("line", "fields"))
SCHEMAS["ImportResult"] = _obj({
    "line": {"type": "integer"}, "sku": {"type": "string"},
    "product": {"type": "string", "enum": ["created", "updated", "unchanged", "none"]},
    "label": _null("string"), "binding": {"type": ["string", "null"], "enum": ["bound", "unchanged", None]}})
SCHEMAS["ImportError"] = _obj({"line": {"type": "integer"}, "sku": _null("string"), "field": {"type": "string"},
                               "value": _ANY, "error": {"type": "string"}, "detail": {"type": "string"}})
SCHEMAS["ImportReport"] = _obj({"results": {"type": "array", "items": _ref("ImportResult")},
                                "errors": {"type": "array", "items": _ref("ImportError")}})
SCHEMAS["UploadedImage"] = _obj({
    "digest": {"type": "string", "pattern": DIGEST_PATTERN, "description": "SHA-256 of the PNG the server keeps"},
    "name": {"type": ["string", "null"], "pattern": IMAGE_NAME_PATTERN},
    "src": {"type": "string", "pattern": r"^sha256:[0-9a-f]{64}$",
            "description": "what an `<image src>` or a product's `image` names it by (as may `name`)"},
    "width": {"type": "integer", "minimum": 1, "maximum": STORED_MAX_SIDE},
    "height": {"type": "integer", "minimum": 1, "maximum": STORED_MAX_SIDE},
    "bytes": {"type": "integer", "minimum": 1, "description": "size of the PNG kept"},
    "media_type": {"type": "string", "enum": list(MEDIA_TYPES), "description": "what was uploaded"},
    "created_at": _TIME, "created_by": {"type": "string"}})
SCHEMAS["UploadedImageList"] = _list("UploadedImage", paged=True)
SCHEMAS["LabelDetail"] = copy.deepcopy(SCHEMAS["Label"])
SCHEMAS["LabelDetail"]["properties"].update(
    product={"oneOf": [_ref("ProductSummary"), {"type": "null"}]},
    open_jobs={"type": "array", "items": _ref("OpenJob")})
SCHEMAS["LabelDetail"]["required"] += ["product", "open_jobs"]
SCHEMAS["ProductDetail"] = copy.deepcopy(SCHEMAS["Product"])
SCHEMAS["ProductDetail"]["properties"].update(
    selling_price=_null("string"),
    lowest_30d={"type": ["string", "null"],
                "description": "prior price of the reduction in force now (Omnibus), null without one"},
    history={"type": "array", "items": _ref("PricePeriod"), "description": "newest first"},
    scheduled={"type": "array", "items": _ref("ScheduledUpdate")},
    bound_labels={"type": "array", "items": _obj({"mac": {"type": "string"}, "state": {"type": "string"}})})
SCHEMAS["ProductDetail"]["required"] += ["selling_price", "lowest_30d", "history", "scheduled", "bound_labels"]


def _json(schema: str | Schema, description: str) -> dict[str, Any]:
    s = _ref(schema) if isinstance(schema, str) else schema
    return {"description": description, "content": {"application/json": {"schema": s}}}


def _png(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}}


def _err(description: str, schema: str = "Error") -> dict[str, Any]:
    return _json(schema, description)


def _q(name: str, schema: Schema, description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


def _p(name: str, description: str, schema: Schema | None = None) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": schema or {"type": "string"},
            "description": description}


def _body(schema: str | Schema, *, text: Schema | None = None) -> dict[str, Any]:
    content: dict[str, Any] = {"application/json": {"schema": _ref(schema) if isinstance(schema, str) else schema}}
    if text is not None:
        content["text/plain"] = {"schema": text}
    return {"required": True, "content": content}


def _page(maximum: int) -> list[dict[str, Any]]:
    return [_q("limit", {"type": "integer", "minimum": 1, "maximum": maximum}, "page size"),
            _q("offset", {"type": "integer", "minimum": 0, "maximum": 10**9}, "items to skip")]


_PAGE = _page(1000)
_TEXT: Final[Schema] = {"type": "string", "minLength": 1, "maxLength": TEXT_MAX, "pattern": TEXT_PATTERN}
_MAC_SCHEMA: Final[Schema] = {"type": "string", "pattern": MAC_PATTERN}
_MAC = _p("mac", "AA:BB:CC:DD:EE:FF (aa-bb-…, aabbcc… accepted)", _MAC_SCHEMA)
_NAME = _p("name", "template name (`preview` is reserved)", {"type": "string", "pattern": NAME_PATTERN})
_BEFORE = {"type": "integer", "minimum": 1, "maximum": 2**63 - 1}
_CURSOR = [_q("limit", {"type": "integer", "minimum": 1, "maximum": 1000}, "page size")]
_BATTERY = {"type": "integer", "minimum": 0, "maximum": 100_000}
_MODEL: Final[Schema] = {"type": ["string", "null"], "enum": [*MODELS, None]}
_SOURCE: Final[Schema] = {"type": "string", "minLength": 1, "maxLength": MAX_SOURCE_CHARS, "pattern": r"\S",
                          "description": "the template text (not blank)"}
_BAD = _err("a parameter or body field is invalid (named in `field` and `detail`)")
_BODY_ERRORS = {"400": _BAD, "413": _err("body too large"), "415": _err("wrong Content-Type")}
_NO_LABEL = _err("unknown label (`unknown_label`)")

_PRICES_BODY = _body({"oneOf": [_ref("PriceUpdate"), {"type": "array", "items": _ref("PriceUpdate")}]})
_PRICES_ANSWERS = {"200": _json("PriceResult", "accepted items, and errors for the rejected ones"),
                   "400": _json({"oneOf": [_ref("PriceRejected"), _ref("Error")]},
                                "every item rejected, or the body is not JSON"),
                   "413": _err("body too large"), "415": _err("wrong Content-Type"),
                   "503": {**_err("the database cannot commit now (`unavailable`: disk full, locked, read-only; "
                                  "the detail names the reason): nothing of the request was applied, send it "
                                  "again after `Retry-After` seconds"),
                           "headers": {"Retry-After": {"description": "seconds to wait before sending again",
                                                       "schema": {"type": "integer", "minimum": 1}}}}}

_OPERATIONS: Final[dict[tuple[str, str], dict[str, Any]]] = {
    ("POST", "/api/v1/prices"): {
        "summary": "Submit price updates (one object or a batch)",
        "description": "Items are validated one by one; accepted ones are committed before the answer, "
                       "which is their confirmation (as `esl/{store}/pos/acks` on MQTT). "
                       "200 when at least one item was accepted (or the batch is empty); 400 when every "
                       "item was rejected (`error` is the item's code for a single object or a message refused "
                       "whole, `batch_rejected` for a batch). Stale items (older `seq`) and duplicates (an "
                       "`update_id` accepted before) are accepted and ignored. 503 with `Retry-After` when the "
                       "database cannot commit: nothing was applied, send the same request again. Limits as on "
                       f"MQTT: at most {pos_limits.MAX_ITEMS} items, `name` {pos_limits.MAX_NAME} characters, "
                       f"other strings {pos_limits.MAX_TEXT}, `attributes` {pos_limits.MAX_ATTRIBUTES_KEYS} names "
                       f"and {pos_limits.MAX_ATTRIBUTES_BYTES} bytes as JSON; text with a NUL, a lone surrogate "
                       "or bytes that are not "
                       "UTF-8 refuses its item only (`invalid_text`), as does a field over its limit "
                       "(`too_large`).",
        "requestBody": _PRICES_BODY, "responses": _PRICES_ANSWERS,
    },
    ("POST", "/api/v1/prices/history"): {
        "summary": "Import historic prices (admin; audited as `price.import_history`)",
        "description": "Prices a product had before this server knew it, each item with the past "
                       "`valid_from` at which it took effect; applied oldest first, and only after the SKU's "
                       "latest recorded change, so recorded history is never rewritten (the POS feed refuses a "
                       "`valid_from` more than `valid_from_tolerance_s` in the past). Answers as `POST /prices`.",
        "requestBody": _PRICES_BODY, "responses": _PRICES_ANSWERS,
    },
    ("POST", "/api/v1/products/{sku}/seq-reset"): {
        "summary": "Forget a SKU's POS `seq` (admin; audited as `price.seq_reset`)",
        "description": "After a forged or corrupt `seq` was stored, every genuine update would be stale "
                       "(or refused as `seq_jump` with `max_seq_jump` set): the POS's next `seq` is accepted "
                       "whatever it is.",
        "parameters": [_p("sku", "product SKU (percent-encode '/' as %2F)")],
        "responses": {"200": _json(_obj({"sku": {"type": "string"}, "seq": {"type": "null"},
                                         "previous_seq": {"type": ["integer", "null"]}}), "the seq is forgotten"),
                      "404": _err("unknown SKU (`unknown_sku`)")},
    },
    ("GET", "/api/v1/products"): {
        "summary": "Search the catalogue",
        "parameters": [_q("q", _TEXT, "SKU or name substring, or an exact EAN"), *_page(500)],
        "responses": {"200": _json("ProductList", "products, exact SKU/EAN matches first"), "400": _BAD},
    },
    ("GET", "/api/v1/products/{sku}"): {
        "summary": "A product with price history, scheduled changes and the 30-day lowest price",
        "parameters": [_p("sku", "product SKU (percent-encode '/' as %2F)"),
                       _q("history", {"type": "integer", "minimum": 0, "maximum": 1000}, "history rows (newest first), default 100")],
        "responses": {"200": _json("ProductDetail", "the product"), "400": _BAD,
                      "404": _err("unknown SKU (`unknown_sku`)")},
    },
    ("GET", "/api/v1/labels"): {
        "summary": "Labels, filtered",
        "parameters": [
            _q("state", {"type": "string", "enum": list(LABEL_STATES)}, "label state (unpaired: not bound)"),
            _q("gateway", _TEXT, "gateway id"), _q("sku", _TEXT, "bound SKU"),
            _q("aisle", _TEXT, "aisle"), _q("model", _TEXT, "label model"),
            _q("template", _TEXT, "template named on the label"),
            _q("battery_below", _BATTERY, "battery under this many mV"),
            _q("stale", {"type": "boolean"}, "true: not showing its expected image; false: showing it"),
            _q("paired", {"type": "boolean"}, "true: holds its key (pairing done); false: not paired yet"),
            *_PAGE],
        "responses": {"200": _json("LabelList", "labels by MAC"), "400": _BAD},
    },
    ("GET", "/api/v1/labels/{mac}"): {
        "summary": "One label: state, product, open jobs",
        "parameters": [_MAC],
        "responses": {"200": _json("LabelDetail", "the label"), "400": _BAD, "404": _NO_LABEL},
    },
    ("PUT", "/api/v1/labels/{mac}/binding"): {
        "summary": "Bind a label to a product (pairs it first if needed)",
        "description": "`model` registers a label no gateway has reported yet. Audited.",
        "parameters": [_MAC],
        "requestBody": _body(_obj({"sku": {"type": "string", "minLength": 1, "maxLength": 64, "pattern": r"\S"},
                                   "template": _null("string"), "model": _MODEL}, ("sku",))),
        "responses": {"200": _json("Label", "the label after binding"), **_BODY_ERRORS,
                      "404": _err("unknown label, SKU or template (`unknown_label`, `unknown_sku`, "
                                  "`unknown_template`)")},
    },
    ("DELETE", "/api/v1/labels/{mac}/binding"): {
        "summary": "Unbind a label (it keeps its image until bound again)",
        "parameters": [_MAC],
        "responses": {"200": _json("Label", "the label after unbinding"), "400": _BAD, "404": _NO_LABEL},
    },
    ("POST", "/api/v1/labels/{mac}/flash"): {
        "summary": "Flash the label's LED (find it on the shelf)",
        "parameters": [_MAC],
        "requestBody": _body(_obj({"seconds": {"type": "integer", "minimum": 1, "maximum": 3600}}, ())),
        "responses": {"202": _json("FlashQueued", "command job queued"), **_BODY_ERRORS, "404": _NO_LABEL,
                      "409": _err("the label is not paired yet (`not_paired`)")},
    },
    ("POST", "/api/v1/labels/{mac}/reset"): {
        "summary": "Pair a label again that lost its key (a technician's reset)",
        "description": "Forgets the label's key and pairs it again with its factory key; its image "
                       "follows. A label that checks in without its key is never re-paired on its own "
                       "word (its events show `key_lost`): a technician decides, here or with "
                       "`esl pair --reset MAC`. Audited.",
        "parameters": [_MAC],
        "responses": {"200": _json("Label", "the label, pending its pairing"), "400": _BAD, "404": _NO_LABEL},
    },
    ("GET", "/api/v1/labels/{mac}/image/expected.png"): {
        "summary": "The image the label should show",
        "parameters": [_MAC],
        "responses": {"200": _png("PNG"), "400": _BAD, "404": _err("unknown label or no image (`no_image`)")},
    },
    ("GET", "/api/v1/labels/{mac}/image/displayed.png"): {
        "summary": "The image the label reports it shows (by its reported hash)",
        "parameters": [_MAC],
        "responses": {"200": _png("PNG"), "400": _BAD, "404": _err("unknown label or no image (`no_image`)")},
    },
    ("GET", "/api/v1/labels/{mac}/events"): {
        "summary": "The label's events (acks, nacks, check-ins), newest first",
        "parameters": [_MAC, *_CURSOR, _q("before", _BEFORE, "events older than this id")],
        "responses": {"200": _json("EventList", "events"), "400": _BAD, "404": _NO_LABEL},
    },
    ("GET", "/api/v1/labels/{mac}/history"): {
        "summary": "The label's audit trail (bound, unbound, flashed), newest first",
        "parameters": [_MAC, *_CURSOR, _q("before", _BEFORE, "entries older than this id")],
        "responses": {"200": _json("AuditList", "audit entries of this label"), "400": _BAD, "404": _NO_LABEL},
    },
    ("POST", "/api/v1/import"): {
        "summary": "Import catalogue rows (products and the labels showing them)",
        "description": "Rows parsed from a catalogue file (at most 1000 a request; `esl import` sends a CSV in "
                       "chunks). Each row is validated as a price update and its binding checked, then applied "
                       "whole or not at all; a product or binding already as the row says is left alone, so "
                       "re-sending rows changes nothing. Audited.",
        "requestBody": _body(_obj({"rows": {"type": "array", "items": _ref("ImportRow")}})),
        "responses": {"200": _json("ImportReport", "one result per applied row, one error per rejected row"),
                      **_BODY_ERRORS},
    },
    ("GET", "/api/v1/images/{hash}.png"): {
        "summary": "Any stored image by content hash (immutable, cacheable)",
        "parameters": [_p("hash", "16 hex digits", {"type": "string", "pattern": "^[0-9a-fA-F]{16}$"})],
        "responses": {"200": _png("PNG"), "400": _BAD, "404": _err("not stored (`no_image`)")},
    },
    ("POST", "/api/v1/images"): {
        "summary": "Upload an image (merchandiser; audited as `image.upload`)",
        "description": f"The body is the image ({', '.join(MEDIA_TYPES)}, at most {MAX_UPLOAD_BYTES} bytes, "
                       f"at most {MAX_SIDE}×{MAX_SIDE} and {MAX_PIXELS} pixels as its header declares: checked "
                       "before any pixel is decoded). The server keeps its own PNG of the first frame (RGB, or RGBA "
                       f"with transparency; scaled to at most {STORED_MAX_SIDE} pixels a side), named by that PNG's "
                       "SHA-256. `<image src>` and a product's `image` then take `src` (`sha256:<digest>`) or "
                       "`name`. The same image again answers 200 with the stored one (naming it, if it had no "
                       "name).",
        "parameters": [_q("name", {"type": "string", "pattern": IMAGE_NAME_PATTERN},
                          "a name unique in the store (`logo-bio`)")],
        "requestBody": {"required": True, "content": {t: {"schema": {"type": "string", "format": "binary"}}
                                                      for t in MEDIA_TYPES}},
        "responses": {"201": _json("UploadedImage", "stored"),
                      "200": _json("UploadedImage", "this image was stored already"),
                      **_BODY_ERRORS,
                      "409": _err("the name names another image (`name_taken`), or this image is stored under "
                                  "another name (`image_exists`)"),
                      "422": _err("not an image of its Content-Type, damaged (`invalid_image`), or larger than the "
                                  "limits (`image_too_large`); `field` is `body`")},
    },
    ("GET", "/api/v1/images"): {
        "summary": "Uploaded images, newest first",
        "parameters": _PAGE,
        "responses": {"200": _json("UploadedImageList", "uploaded images"), "400": _BAD},
    },
    ("GET", "/api/v1/images/{digest}"): {
        "summary": "An uploaded image, as the PNG the server keeps (immutable, cacheable)",
        "parameters": [_p("digest", "SHA-256, 64 lower-case hex digits", {"type": "string", "pattern": DIGEST_PATTERN})],
        "responses": {"200": _png("PNG"), "400": _BAD, "404": _err("no such upload (`unknown_image`)")},
    },
    ("DELETE", "/api/v1/images/{digest}"): {
        "summary": "Delete an uploaded image (merchandiser; audited as `image.delete`)",
        "description": "Labels showing it keep their image until they are next drawn, which then shows the "
                       "missing-image placeholder; a POS `image` naming it is refused from then on.",
        "parameters": [_p("digest", "SHA-256, 64 lower-case hex digits", {"type": "string", "pattern": DIGEST_PATTERN})],
        "responses": {"200": _json("UploadedImage", "the image deleted"), "400": _BAD,
                      "404": _err("no such upload (`unknown_image`)")},
    },
    ("GET", "/api/v1/gateways"): {
        "summary": "Gateways and how many labels each serves",
        "responses": {"200": _json("GatewayList", "gateways by id")},
    },
    ("GET", "/api/v1/templates"): {
        "summary": "Templates",
        "responses": {"200": _json("TemplateList", "templates")},
    },
    ("GET", "/api/v1/templates/{name}"): {
        "summary": "A template's source and version",
        "parameters": [_NAME],
        "responses": {"200": _json("TemplateSource", "the template"), "400": _BAD,
                      "404": _err("no such template (`unknown_template`)")},
    },
    ("PUT", "/api/v1/templates/{name}"): {
        "summary": "Write a template (validated; audited; labels using it are redrawn)",
        "description": "JSON `{source, base_version?}` or the raw source as text/plain. A template that "
                       "fails is answered 422 with its line and is not stored.",
        "parameters": [_NAME],
        "requestBody": _body(_obj({"source": _SOURCE, "base_version": {"type": "integer", "minimum": 0}},
                                  ("source",)), text=_SOURCE),
        "responses": {"200": _json("TemplateSaved", "stored as this version"), **_BODY_ERRORS,
                      "409": _err("`base_version` is not the current version (`version_conflict`), or bound "
                                  "labels drawn with it have a model the new version does not declare "
                                  "(`template_in_use`, with those `labels`)", "TemplateInUse"),
                      "422": _err("the template fails (`template_error`, with its line)", "TemplateError")},
    },
    ("POST", "/api/v1/templates/preview"): {
        "summary": "Render a template (stored by name, or unsaved source) as PNG",
        "requestBody": _body({"oneOf": [
            _obj({"source": _SOURCE, "sku": _null("string"), "model": _MODEL}, ("source",)),
            _obj({"name": {"type": "string"}, "sku": _null("string"), "model": _MODEL}, ("name",))]}),
        "responses": {"200": _png("the rendered label"), **_BODY_ERRORS,
                      "404": _err("unknown template or SKU"),
                      "422": _err("the template fails (`template_error`, with its line)", "TemplateError")},
    },
    ("GET", "/api/v1/jobs"): {
        "summary": "Jobs (the outbox), newest first",
        "parameters": [_q("state", {"type": "string", "enum": list(JOB_STATES)}, "job state"),
                       _q("kind", {"type": "string", "enum": ["pair", "image", "command"]}, "job kind"),
                       _q("gateway", _TEXT, "gateway id"), _q("mac", _MAC_SCHEMA, "label"),
                       *_PAGE],
        "responses": {"200": _json("JobList", "jobs"), "400": _BAD},
    },
    ("GET", "/api/v1/audit"): {
        "summary": "The audit log, newest first",
        "parameters": [_q("actor", _TEXT, "who"), _q("action", _TEXT, "e.g. price.update"),
                       _q("target", _TEXT, "e.g. a SKU or MAC"),
                       *_CURSOR, _q("before", _BEFORE, "entries older than this id")],
        "responses": {"200": _json("AuditList", "audit entries"), "400": _BAD},
    },
    ("GET", "/api/v1/summary"): {
        "summary": "Dashboard numbers: labels by state, gateways, open jobs, last hour's updates and time-to-shelf",
        "parameters": [_q("battery_below", _BATTERY, "low-battery threshold, mV")],
        "responses": {"200": _json("Summary", "the numbers"), "400": _BAD},
    },
    ("GET", "/api/v1/events/stream"): {
        "summary": "Live changes as server-sent events (dashboards, the web UI's shelf)",
        "description": "One event per change, named by its type (`labels` with `macs`, `prices` with "
                       "`accepted` and `rejected`, …), data as JSON. The first event is `ready` (the "
                       "subscription is live: load state after it); a comment line every 15 s keeps the "
                       "stream alive. The stream ends when the server shuts down, or after `limit` events.",
        "parameters": [_q("limit", {"type": "integer", "minimum": 1, "maximum": 1_000_000},
                          "end after this many events (ready included)")],
        "responses": {"200": {"description": "text/event-stream",
                              "content": {"text/event-stream": {}}},
                      "400": _BAD},
    },
    ("GET", "/api/v1/me"): {
        "summary": "Who this token is: its name and role (sign-in check)",
        "responses": {"200": _json("Me", "the token's name and role, and the stores it is restricted to "
                                         "(null: every store)")},
    },
    ("GET", "/api/v1/stores"): {
        "summary": "The stores of the chain this server serves (those a restricted token may use)",
        "responses": {"200": _json("StoreList", "stores by id, and the configured store (the plain paths')")},
    },
    ("GET", "/metrics"): {
        "summary": "Prometheus metrics",
        "responses": {"200": {"description": "Prometheus text format",
                              "content": {"text/plain": {"schema": {"type": "string"}}}}},
    },
    ("GET", "/healthz"): {
        "summary": "Health: database and broker, degraded with the reasons",
        "responses": {"200": _json("Health", "the database works (status degraded, with reasons, when the broker "
                                             "is down)"),
                      "503": _json("Health", "the database fails: disk full, read-only, corrupt, or not answering")},
    },
    ("GET", "/api/v1/openapi.json"): {
        "summary": "This document",
        "responses": {"200": {"description": "OpenAPI 3.1", "content": {"application/json": {"schema": {
            "type": "object"}}}}},
    },
}


_STORE_PARAM: Final = {"name": "store", "in": "path", "required": True,
                       "description": "A store of the chain (`esl stores list`); the paths without it are the "
                                      "configured store's.",
                       "schema": {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"}}


@functools.cache
def _build() -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for route in all_routes():
        key = (route.method, route.plain_path)
        if key not in _OPERATIONS:
            raise KeyError(f"route {route.method} {route.path} is not documented in eslserver.api.openapi")
        op = copy.deepcopy(_OPERATIONS[key])
        responses = op.setdefault("responses", {})
        if route.store_scoped:  # the same operation for any store of the chain
            op["parameters"] = [_STORE_PARAM, *op.get("parameters", [])]
            op["summary"] = op.get("summary", "") + " (one store of the chain)"
            responses.setdefault("404", _err("no such store (`unknown_store`), or the resource is not there"))

        if route.roles is not None:
            roles = sorted(ROLES) if not route.roles else sorted({*route.roles, "admin"})
            op["security"] = [{"bearer": []}]
            op["x-roles"] = roles
            responses.setdefault("401", _err("missing or invalid token (`missing_token`, `invalid_token`)"))
            store = "a token restricted to other stores (`store_forbidden`)"
            responses.setdefault("403", _err(f"role not allowed (`forbidden`; needs {', '.join(roles)}), or {store}"
                                             if route.roles else store[0].upper() + store[1:]))
            # a query parameter the operation does not list is refused (`unknown_parameter`)
            responses.setdefault("400", _BAD)
        else:
            op["security"] = []
        if any(p.get("in") == "path" for p in op.get("parameters", [])):
            responses.setdefault("400", _BAD)
        responses.setdefault("500", _err("internal error (`internal`), logged on the server"))
        op["operationId"] = route.handler.__name__ + ("_in_store" if route.store_scoped else "")
        paths.setdefault(route.path, {})[route.method.lower()] = op
    missing = set(_OPERATIONS) - {(r.method, r.plain_path) for r in all_routes()}
    if missing:
        raise KeyError(f"documented operations without a route: {sorted(missing)}")
    return {
        "openapi": "3.1.0",
        "info": {"title": "eslserver", "version": "1",
                 "description": "Electronic shelf label server. Bearer tokens (`esl tokens create --role R`) "
                                "with roles pos, merchandiser, tech, admin; every valid token may read. Errors "
                                "are `{error, detail}` with a stable `error` code. HEAD answers wherever "
                                "GET does (same status and headers, no body)."},
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": copy.deepcopy(SCHEMAS),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "esl_<id>_<secret>"}},
        },
        "security": [{"bearer": []}],
    }


def document() -> dict[str, Any]:
    """The OpenAPI document (a fresh copy; built once per process)."""
    return copy.deepcopy(_build())
