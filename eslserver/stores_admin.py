"""Adding the stores a server serves: a chain's stores are data, not process settings.

`add_store` checks a store as the server will use it (its id as an MQTT topic level, its
currency, its POS field map: `eslserver.store_services.settings_for`) before it is written,
audited (``store.add`` / ``store.change``); a running server serves it within seconds (it
reads the ``stores`` table every `eslserver.server._STORES_EVERY_S`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from eslserver.audit import Who, record_audit
from eslserver.config import ConfigError, Settings
from eslserver.db.database import Database
from eslserver.store import stores as store_rows
from eslserver.store_services import settings_for
from eslserver.timeutil import iso, utcnow

__all__ = ["StoreError", "add_store", "list_stores"]


class StoreError(ValueError):
    """A store that cannot be served as given (names the field and the value)."""


async def add_store(db: Database, settings: Settings, store: str, *, name: str, currency: str,
                    field_map: Mapping[str, str] | None = None, language: str | None = None,
                    country: str | None = None, timezone: str | None = None, actor: Who) -> dict[str, Any]:
    """Add `store` (or change an existing one's name, currency, field map, language, country and
    time zone; None: the configured store's); its row."""
    row = {"id": store, "name": name, "currency": currency, "field_map": json.dumps(dict(field_map or {})),
           "language": language or settings.language, "country": country or settings.country,
           "timezone": timezone or settings.timezone}
    try:
        settings_for(settings, row)  # the server would refuse to serve it: refuse to write it
    except ConfigError as exc:
        raise StoreError(str(exc)) from None
    async with db.transaction() as conn:
        before = await store_rows.get(conn, store)
        await store_rows.upsert(conn, store, name, currency, row["field_map"], iso(utcnow()),
                                language=row["language"], country=row["country"], timezone=row["timezone"])
        after = {**_public(row), "field_map": dict(field_map or {})}
        await record_audit(conn, actor, "store.add" if before is None else "store.change", f"store:{store}",
                           None if before is None else _public(before), after)
    return {"id": store, **after}


async def list_stores(db: Database) -> list[dict[str, Any]]:
    """Every store: ``id, name, currency, field_map, language, country, timezone, created_at``, by id."""
    return [{"id": r["id"], **_public(r), "created_at": r["created_at"]} for r in await store_rows.listing(db)]


def _public(row: Any) -> dict[str, Any]:
    """What a store's row says, as the audit log and the listing show it."""
    return {"name": row["name"], "currency": row["currency"], "field_map": json.loads(row["field_map"]),
            "language": row["language"], "country": row["country"], "timezone": row["timezone"]}
