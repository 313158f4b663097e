"""The ``events`` table: every statement on it.

What happened to labels that the audit log does not cover because no person did it: a label
discovered, a job refused (nack), a render error. Rows are only added, never changed, and deleted by age (`prune_before`).
Writes take the caller's transaction connection and never commit; reads take the `Database`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from eslserver.db.database import Connection, Database, Row
from eslserver.store import paging
from eslserver.store._listing import batch_limit

__all__ = ["Event", "add", "add_many", "for_label", "prune_before"]


@dataclass(frozen=True, slots=True)
class Event:
    """One event to record; `detail` is stored as JSON."""

    at: str
    store: str | None
    mac: str | None
    gateway: str | None
    kind: str
    detail: Mapping[str, Any]


async def add_many(conn: Connection, events: Iterable[Event]) -> None:
    """Record `events` (one ``executemany``)."""
    await conn.executemany("INSERT INTO events (at, store, mac, gateway, kind, detail) VALUES (?, ?, ?, ?, ?, ?)",
                           [(e.at, e.store, e.mac, e.gateway, e.kind, json.dumps(dict(e.detail))) for e in events])


async def add(conn: Connection, event: Event) -> None:
    """Record one event."""
    await add_many(conn, (event,))


async def for_label(db: Database, mac: str, *, before: int | None, limit: int) -> list[Row]:
    """``id, at, gateway, kind, detail`` (JSON text) of the label's events, newest first, up to
    `limit`, below id `before` when given."""
    return await paging.newest_first(db, "SELECT id, at, gateway, kind, detail FROM events", ["mac = ?"], [mac],
                              before=before, limit=limit)


async def prune_before(conn: Connection, cutoff_iso: str, limit: int) -> int:
    """Delete at most `limit` events recorded before `cutoff_iso`, oldest first; how many
    (index ``events_at``)."""
    batch_limit(limit)
    cur = await conn.execute("DELETE FROM events WHERE id IN (SELECT id FROM events WHERE at < ? ORDER BY at LIMIT ?)",
                             (cutoff_iso, limit))
    return cur
