"""The ``stores`` table: every statement on it.

One row per store the server serves: its name, currency and POS field map, written from the
configuration at each start (the configuration is the source of truth; ``created_at`` keeps
the first start).
"""

from __future__ import annotations

from eslserver.db.database import Connection, Database, Reader, Row, fetchone

__all__ = ["upsert", "count", "listing", "get"]

_COLUMNS = "id, name, currency, field_map, created_at, language, country, timezone"


async def upsert(conn: Connection, store: str, name: str, currency: str, field_map: str,
                 created_at: str, *, language: str, country: str, timezone: str) -> None:
    """Insert the store, or update its name, currency, field map (JSON text), language,
    country and time zone, keeping the ``created_at`` of its first row."""
    await conn.execute(
        "INSERT INTO stores (id, name, currency, field_map, created_at, language, country, timezone) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (id) DO UPDATE SET name = excluded.name, currency = excluded.currency, "
        "field_map = excluded.field_map, language = excluded.language, country = excluded.country, "
        "timezone = excluded.timezone",
        (store, name, currency, field_map, created_at, language, country, timezone))


async def count(db: Database) -> int:
    """How many stores the committed data holds: a cheap read that proves the database answers
    (the health check)."""
    row = await db.read_one("SELECT COUNT(*) FROM stores")
    return int(row[0]) if row else 0


async def listing(db: Database) -> list[Row]:
    """Every store (committed): ``id, name, currency, field_map`` (JSON text), ``created_at``,
    ``language, country, timezone``, by id."""
    return await db.read(f"SELECT {_COLUMNS} FROM stores ORDER BY id")


async def get(conn: Reader, store: str) -> Row | None:
    """The row of `store` (as `listing`); None when there is none."""
    return await fetchone(conn, f"SELECT {_COLUMNS} FROM stores WHERE id = ?", (store,))
