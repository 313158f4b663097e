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

from typing import Final

from aiohttp import web

from eslserver.api.errors import ApiError, bad_input, not_found
from eslserver.api.routes_misc import audit_item
from eslserver.api.routing import (
    ANY_ROLE,
    Call,
    Route,
    json_object,
    json_response,
    newest_first,
    normalise_mac,
    read_json,
)
from eslserver.catalogue import MAX_ROWS, CatalogueError, apply_rows, row_from_json
from eslserver.store import audit
from eslserver.store import labels as label_rows

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
        server = call.server
        report = await apply_rows(rows, call.who, db=server.db, settings=server.settings, labels=server.labels,
                                  templates=server.templates)
    except CatalogueError as exc:
        raise ApiError(400, "invalid_body", str(exc), field="rows") from None
    return json_response(report.to_json())


async def label_history(call: Call) -> web.StreamResponse:
    mac = normalise_mac(call.request.match_info["mac"])
    if await label_rows.get(call.server.db, mac) is None:
        raise not_found("unknown_label", f"label {mac} is not known", field="mac")
    db = call.server.db
    return await newest_first(call, lambda before, limit: audit.newest(
        db, before=before, limit=limit, target=mac, action_prefix="label."), audit_item)


ROUTES: Final = (
    Route("POST", "/api/v1/import", post_import, IMPORT_ROLES, body_limit=MAX_IMPORT_BODY),
    Route("GET", "/api/v1/labels/{mac}/history", label_history, ANY_ROLE),
)
