"""The ``gateways`` table: every statement on it.

One row per gateway of a store: its last status (``online``/``offline``, from its retained
status topic or a status event; ``incompatible`` for one too old for this server), when it
was last heard, the figures of its last status event (``info``, JSON), the protocol version
it announced and its registered X25519 public key (job keys are sealed to it). Writes take the caller's transaction connection and never commit;
reads take a `Reader` (the transaction's connection, or the `Database` for committed data).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from eslserver.db.database import Connection, Database, Reader, Row, fetchone

__all__ = ["count_by_status", "count_online", "forget_public_key", "listing", "online", "online_ids", "protocol", "public_key", "set_protocol",
           "set_public_key", "set_status", "status"]


async def status(conn: Reader, store: str, gateway: str) -> str | None:
    """The gateway's recorded status; None when it was never heard of."""
    row = await fetchone(conn, "SELECT status FROM gateways WHERE store = ? AND id = ?", (store, gateway))
    return None if row is None else str(row["status"])


async def set_status(conn: Connection, store: str, gateway: str, status: str, *, now: str,
                     info: Mapping[str, Any] | None) -> None:
    """Record the gateway's status, heard `now` (added if new); `info` replaces the stored
    figures, None keeps them."""
    await conn.execute(
        "INSERT INTO gateways (store, id, status, last_seen, info) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT (store, id) DO UPDATE SET status = excluded.status, last_seen = excluded.last_seen, "
        "info = CASE WHEN ? THEN excluded.info ELSE gateways.info END",
        (store, gateway, status, now, json.dumps(dict(info or {})), info is not None))


async def online(db: Database, store: str, *, min_protocol: int) -> dict[str, bytes]:
    """`store`'s online gateways that can take jobs: id → registered public key, the most
    recently heard first. A gateway with no registered key, or that has not announced at least
    `min_protocol`, is left out (no envelope could be sealed to it or read by it)."""
    return {r["id"]: bytes(r["public_key"]) for r in await db.read(
        "SELECT id, public_key FROM gateways WHERE store = ? AND status = 'online' AND public_key IS NOT NULL "
        "AND protocol >= ? ORDER BY last_seen DESC", (store, min_protocol))}


async def online_ids(db: Database, store: str) -> list[str]:
    """The ids of every gateway of `store` recorded online, able to take jobs or not."""
    return [r["id"] for r in await db.read("SELECT id FROM gateways WHERE store = ? AND status = 'online' "
                                           "ORDER BY last_seen DESC", (store,))]


async def public_key(conn: Reader, store: str, gateway: str) -> bytes | None:
    """The gateway's registered X25519 public key; None when none is registered."""
    row = await fetchone(conn, "SELECT public_key FROM gateways WHERE store = ? AND id = ?", (store, gateway))
    return None if row is None or row["public_key"] is None else bytes(row["public_key"])


async def forget_public_key(conn: Connection, store: str, gateway: str) -> None:
    """A revoked gateway's key opens nothing any more: no job is sealed to it again."""
    await conn.execute("UPDATE gateways SET public_key = NULL WHERE store = ? AND id = ?", (store, gateway))


async def set_public_key(conn: Connection, store: str, gateway: str, key: bytes) -> None:
    """Register the gateway's public key (the gateway is added, ``offline``, if it is new)."""
    await conn.execute(
        "INSERT INTO gateways (store, id, status, public_key) VALUES (?, ?, 'offline', ?) "
        "ON CONFLICT (store, id) DO UPDATE SET public_key = excluded.public_key", (store, gateway, key))


async def protocol(conn: Reader, store: str, gateway: str) -> int | None:
    """The protocol version the gateway last announced; None before it announced one."""
    row = await fetchone(conn, "SELECT protocol FROM gateways WHERE store = ? AND id = ?", (store, gateway))
    return None if row is None or row["protocol"] is None else int(row["protocol"])


async def set_protocol(conn: Connection, store: str, gateway: str, version: int) -> None:
    """Record the protocol version the gateway announced (added, ``offline``, if it is new)."""
    await conn.execute("INSERT INTO gateways (store, id, status, protocol) VALUES (?, ?, 'offline', ?) "
                       "ON CONFLICT (store, id) DO UPDATE SET protocol = excluded.protocol", (store, gateway, version))


async def count_online(db: Database) -> int:
    """Online gateways, all stores."""
    row = await db.read_one("SELECT COUNT(*) FROM gateways WHERE status = 'online'")
    return row[0] if row else 0


async def count_by_status(db: Database, store: str) -> dict[str, int]:
    """`store`'s gateways per status."""
    return {str(r[0]): r[1] for r in await db.read(
        "SELECT status, COUNT(*) FROM gateways WHERE store = ? GROUP BY status", (store,))}


async def listing(db: Database, store: str) -> list[Row]:
    """`store`'s gateways by id: ``id, status, last_seen, info`` (JSON text), ``protocol``,
    ``public_key`` and ``n_labels``, how many labels it last heard. Counts ``labels`` too; it
    lives here because it lists gateways."""
    return await db.read(
        "SELECT g.id, g.status, g.last_seen, g.info, g.protocol, g.public_key, "
        "(SELECT COUNT(*) FROM labels l WHERE l.store = g.store AND l.gateway = g.id) AS n_labels "
        "FROM gateways g WHERE g.store = ? ORDER BY g.id", (store,))
