"""``POST /api/v1/prices``: the POS price feed over HTTP (same ingest as MQTT).

The body is one price update (a JSON object) or a batch (an array). Items are validated one
by one; accepted ones are committed before the response. Status:

* 200 ``{"accepted": […], "errors": […]}`` when at least one item was accepted (applied,
  scheduled, stale or duplicate: ignored) or the batch was empty — the accepted items are the
  confirmation (index, sku, seq, update_id, status; as MQTT's ``pos/acks``), the errors list
  the rejected items (index, sku, field, value, error, detail), the rest of the batch is applied;
* 400 when every item was rejected: the same two lists plus ``error`` and ``detail`` (the
  item's own code and detail for a single item or a message refused whole, such as more than
  `eslserver.pos_limits.MAX_ITEMS` items; ``batch_rejected`` for a batch);
* 503 with ``Retry-After`` when the database cannot commit (disk full, locked, read-only):
  nothing of the request was applied; send it again (duplicates are recognised).

Items are limited as on MQTT (`eslserver.pos_limits`), and a body that is not UTF-8 is read
with ``errors="surrogateescape"``, so that only the items holding such bytes are refused.

``POST /api/v1/prices/history`` (admin only) imports prices a product had in the past, each
item with the ``valid_from`` it took effect (`eslserver.history_import`); the POS feed
refuses a ``valid_from`` more than ``valid_from_tolerance_s`` in the past. Same answers.
"""

from __future__ import annotations

from typing import Any, Final

from aiohttp import web

from eslserver.api.errors import ApiError, bad_input
from eslserver.api.routes_misc import ADMIN_ONLY
from eslserver.api.routing import Call, Route, json_response, parse_json, read_body
from eslserver.history_import import import_history
from eslserver.ingest import IngestResult, Unavailable

__all__ = ["ROUTES", "PRICE_ROLES", "MAX_PRICE_BODY"]

PRICE_ROLES: Final = frozenset({"pos", "merchandiser", "tech"})
"""Who may change prices: the POS feed, merchandisers editing a price in the web UI, and store
techs (``esl price SKU 4.99`` and ``esl import`` in the technician's CLI); every change is
audited under the token's name."""
MAX_PRICE_BODY: Final = 4 * 1024 * 1024


async def _read(call: Call) -> tuple[bytes, dict[str, Any] | list[Any]]:
    _, body = await read_body(call.request, MAX_PRICE_BODY, ("application/json",))
    # a syntax error is the caller's, answered before ingest; bytes that are not UTF-8 inside
    # a string refuse only their item (ingest reads them as MQTT does: surrogateescape)
    parsed = parse_json(body.decode("utf-8", "surrogateescape"))
    if not isinstance(parsed, (dict, list)):
        raise bad_input("body", parsed, "a price update object or an array of them", code="invalid_body")
    return body, parsed


async def post_prices(call: Call) -> web.StreamResponse:
    body, parsed = await _read(call)
    try:
        result = await call.server.ingest.submit(body, source="http", actor=call.who)
    except Unavailable as exc:
        call.server.metrics.pos_retries.labels("http").inc()
        raise _unavailable(exc) from exc
    return _answer(parsed, result)


async def post_history(call: Call) -> web.StreamResponse:
    _, parsed = await _read(call)
    items = [parsed] if isinstance(parsed, dict) else parsed
    try:
        result = await import_history(call.server.ingest, items, actor=call.who)
    except Unavailable as exc:
        raise _unavailable(exc) from exc
    return _answer(parsed, result)


def _unavailable(exc: Unavailable) -> ApiError:
    return ApiError(503, "unavailable", f"not stored, nothing of this request was applied: {exc.reason}; "
                    f"send it again in {exc.retry_after_s} s", headers={"Retry-After": str(exc.retry_after_s)})


def _answer(parsed: dict[str, Any] | list[Any], result: IngestResult) -> web.StreamResponse:
    out = {"accepted": list(result.accepted), "errors": list(result.errors)}
    if result.errors and not result.accepted:
        field: str | None = None
        if len(result.errors) == 1 and (isinstance(parsed, dict) or result.errors[0].get("index") is None):
            first = result.errors[0]
            code, detail = str(first.get("error", "invalid_update")), str(first.get("detail", ""))
            field = first.get("field") if isinstance(first.get("field"), str) else None
        else:
            code, detail = "batch_rejected", f"all {len(result.errors)} items were rejected"
        raise ApiError(400, code, detail, field=field, extra=out)
    return json_response(out)


ROUTES: Final = (
    Route("POST", "/api/v1/prices", post_prices, PRICE_ROLES, body_limit=MAX_PRICE_BODY),
    Route("POST", "/api/v1/prices/history", post_history, ADMIN_ONLY, body_limit=MAX_PRICE_BODY),
)
