"""Products: search the catalogue, show one with its price history and Omnibus prior price.

Prices are changed through ``POST /prices`` (the same validation as the POS feed); these
routes only read, but for an admin's ``POST /products/{sku}/seq-reset``. ``q`` matches a SKU or name (substring, case-insensitive) or an EAN
exactly, so a scanner's barcode finds its product.
"""

from __future__ import annotations

from typing import Any, Final

from aiohttp import web

from eslserver import pricing
from eslserver.api.errors import not_found
from eslserver.api.routes_misc import ADMIN_ONLY
from eslserver.api.routes_labels import json_column
from eslserver.api.routing import ANY_ROLE, Call, Route, json_response, page_params, query_int, query_text
from eslserver.store import labels as label_rows
from eslserver.audit import record_audit
from eslserver.store import products
from eslserver.timeutil import utcnow

__all__ = ["ROUTES", "product_json"]

_HISTORY_MAX: Final = 1000


def product_json(row: Any, labels: int) -> dict[str, Any]:
    """A products row (+ its bound-label count) → the product summary of the API."""
    record = json_column(row["record"])
    if not isinstance(record, dict):
        record = {}
    return {"sku": row["sku"], "name": record.get("name"), "price": record.get("price"),
            "currency": record.get("currency"), "record": record, "seq": row["seq"],
            "updated_at": row["updated_at"], "next_change_at": row["next_change_at"], "labels": labels,
            "created_by_pos": bool(row["created_by_pos"])}


async def list_products(call: Call) -> web.StreamResponse:
    request = call.request
    q = query_text(request, "q")
    limit, offset = page_params(request, default=50, maximum=500)
    total, rows = await products.search(call.server.db, call.server.settings.store, q, limit=limit, offset=offset)
    return json_response({"items": [product_json(r, r["n_labels"]) for r in rows],
                          "total": total, "limit": limit, "offset": offset})


async def show_product(call: Call) -> web.StreamResponse:
    sku = call.request.match_info["sku"]
    store = call.server.settings.store
    db = call.server.db
    row = await products.summary(db, store, sku)
    if row is None:
        raise not_found("unknown_sku", f"sku {sku!r} is not in the catalogue", field="sku")
    history_limit = query_int(call.request, "history", default=100, lo=0, hi=_HISTORY_MAX)
    rows = (await products.history(db, store, [sku]))[sku]
    periods = [pricing.PricePeriod.from_row(r["price"], r["start_at"], r["end_at"], r["reduction"]) for r in rows]
    out = product_json(row, row["n_labels"])
    now = utcnow()
    selling = pricing.selling_price_at(periods, now)
    out["selling_price"] = str(selling) if selling is not None else out["price"]
    lowest = pricing.product_for_render(out["record"], periods, now).get("lowest_30d")
    out["lowest_30d"] = None if lowest is None else str(lowest)
    out["history"] = [{"id": r["id"], "price": r["price"], "start_at": r["start_at"], "end_at": r["end_at"],
                       "reduction": bool(r["reduction"]), "seq": r["seq"], "source": r["source"],
                       "recorded_at": r["recorded_at"]}
                      for r in reversed(rows[-history_limit:] if history_limit else [])]
    scheduled = await products.scheduled(db, store, sku)
    out["scheduled"] = [{"id": r["id"], "fields": json_column(r["fields"]), "seq": r["seq"],
                         "valid_from": r["valid_from"], "received_at": r["received_at"], "source": r["source"]}
                        for r in scheduled]
    labels = await label_rows.bound_to(db, store, sku, limit=1000)
    out["bound_labels"] = [{"mac": r["mac"], "state": r["state"]} for r in labels]
    return json_response(out)


async def reset_seq(call: Call) -> web.StreamResponse:
    """Forget a SKU's POS seq (after a forged or corrupt one was applied): audited, admin only."""
    sku = call.request.match_info["sku"]
    async with call.server.db.transaction() as conn:
        try:
            forgotten = await products.reset_seq(conn, call.server.settings.store, sku)
        except LookupError:
            raise not_found("unknown_sku", f"sku {sku!r} is not in the catalogue", field="sku") from None
        await record_audit(conn, call.who, "price.seq_reset", sku, {"seq": forgotten}, {"seq": None})
    return json_response({"sku": sku, "seq": None, "previous_seq": forgotten})


ROUTES: Final = (
    Route("GET", "/api/v1/products", list_products, ANY_ROLE),
    Route("GET", "/api/v1/products/{sku}", show_product, ANY_ROLE),
    Route("POST", "/api/v1/products/{sku}/seq-reset", reset_seq, ADMIN_ONLY),
)
