"""The ``gateways`` table: every statement on it.

One row per gateway of a store: its last status (``online``/``offline``, from its retained
status topic or a status event), when it was last heard, and the figures of its last status
event (``info``, JSON). Writes take the caller's transaction connection and never commit;
reads take a `Reader` (the transaction's connection, or the `Database` for committed data).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import aiosqlite

from eslserver.db.database import Database, Reader, fetchone

__all__ = ["count_by_status", "count_online", "listing", "online", "set_status", "status"]


async def status(conn: Reader, store: str, gateway: str) -> str | None:
    """The gateway's recorded status; None when it was never heard of."""
    row = await fetchone(conn, "SELECT status FROM gateways WHERE store = ? AND id = ?", (store, gateway))
    return None if row is None else str(row["status"])


async def set_status(conn: aiosqlite.Connection, store: str, gateway: str, status: str, *, now: str,
                     info: Mapping[str, Any] | None) -> None:
    """Record the gateway's status, heard `now` (added if new); `info` replaces the stored
    figures, None keeps them."""
    await conn.execute(
        "INSERT INTO gateways (store, id, status, last_seen, info) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT (store, id) DO UPDATE SET status = excluded.status, last_seen = excluded.last_seen, "
        "info = CASE WHEN ? THEN excluded.info ELSE gateways.info END",
        (store, gateway, status, now, json.dumps(dict(info or {})), info is not None))


async def online(db: Database, store: str) -> list[str]:
    """The ids of `store`'s online gateways, the most recently heard first."""
    return [r["id"] for r in await db.read(
        "SELECT id FROM gateways WHERE store = ? AND status = 'online' ORDER BY last_seen DESC", (store,))]


async def count_online(db: Database) -> int:
    """Online gateways, all stores."""
    row = await db.read_one("SELECT COUNT(*) FROM gateways WHERE status = 'online'")
    return row[0] if row else 0


async def count_by_status(db: Database, store: str) -> dict[str, int]:
    """`store`'s gateways per status."""
    return {str(r[0]): r[1] for r in await db.read(
        "SELECT status, COUNT(*) FROM gateways WHERE store = ? GROUP BY status", (store,))}


async def listing(db: Database, store: str) -> list[aiosqlite.Row]:
    """`store`'s gateways by id: ``id, status, last_seen, info`` (JSON text) and ``n_labels``,
    how many labels it last heard. Counts ``labels`` too; it lives here because it lists gateways."""
    return await db.read(
        "SELECT g.id, g.status, g.last_seen, g.info, "
        "(SELECT COUNT(*) FROM labels l WHERE l.store = g.store AND l.gateway = g.id) AS n_labels "
        "FROM gateways g WHERE g.store = ? ORDER BY g.id", (store,))
