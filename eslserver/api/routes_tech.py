"""What the technician's CLI needs beyond the label routes: catalogue import, label history.

``POST /api/v1/import`` takes rows a client parsed from a catalogue CSV (see
`eslserver.catalogue`: the client decodes the file and settles duplicates, the server
validates and applies each row whole or not at all, in one transaction per request) and
answers one result per applied row and one error per rejected row, by line number. Re-sending
the same rows changes nothing.

``GET /api/v1/labels/{mac}/history`` is the audit trail of one label (bound, unbound,
flashed: when, by whom, before and after), for any token: the full audit log stays admin-only.
"""

from __future__ import annotations

from typing import Any, Final

from aiohttp import web

from eslserver.api.errors import ApiError, bad_input, not_found
from eslserver.api.routes_labels import json_column
from eslserver.api.routing import (
    ANY_ROLE,
    Call,
    Route,
    json_object,
    json_response,
    normalise_mac,
    query_int,
    read_json,
)
from eslserver.catalogue import MAX_ROWS, CatalogueError, apply_rows, row_from_json

__all__ = ["ROUTES", "IMPORT_ROLES", "MAX_IMPORT_BODY"]

IMPORT_ROLES: Final = frozenset({"tech", "merchandiser"})
MAX_IMPORT_BODY: Final = 4 * 1024 * 1024


async def post_import(call: Call) -> web.StreamResponse:
    body = json_object(await read_json(call.request, MAX_IMPORT_BODY), ("rows",), ("rows",))
    raw = body["rows"]
    if not isinstance(raw, list):
        raise bad_input("rows", type(raw).__name__, "an array of rows", code="invalid_body")
    if len(raw) > MAX_ROWS:
        raise bad_input("rows", f"{len(raw)} rows", f"at most {MAX_ROWS} rows a request", code="invalid_body")
    try:
        rows = [row_from_json(item, i) for i, item in enumerate(raw)]
        report = await apply_rows(call.server, rows, call.who)
    except CatalogueError as exc:
        raise ApiError(400, "invalid_body", str(exc), field="rows") from None
    return json_response(report.to_json())


async def label_history(call: Call) -> web.StreamResponse:
    mac = normalise_mac(call.request.match_info["mac"])
    db = call.server.db
    if await db.read_one("SELECT 1 FROM labels WHERE mac = ?", (mac,)) is None:
        raise not_found("unknown_label", f"label {mac} is not known", field="mac")
    limit = query_int(call.request, "limit", default=100, lo=1, hi=1000)
    before = query_int(call.request, "before", default=None, lo=1, hi=2**63 - 1)
    sql = "SELECT id, at, actor, role, action, target, before, after FROM audit WHERE target = ? AND action LIKE 'label.%'"
    params: list[Any] = [mac]
    if before is not None:
        sql += " AND id < ?"
        params.append(before)
    rows = await db.read(sql + " ORDER BY id DESC LIMIT ?", [*params, limit])
    items = [{"id": r["id"], "at": r["at"], "actor": r["actor"], "role": r["role"], "action": r["action"],
              "target": r["target"], "before": json_column(r["before"]), "after": json_column(r["after"])}
             for r in rows]
    return json_response({"items": items, "next_before": items[-1]["id"] if len(items) == limit else None})


ROUTES: Final = (
    Route("POST", "/api/v1/import", post_import, IMPORT_ROLES, body_limit=MAX_IMPORT_BODY),
    Route("GET", "/api/v1/labels/{mac}/history", label_history, ANY_ROLE),
)
