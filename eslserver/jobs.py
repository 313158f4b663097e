"""The outbox: durable jobs for gateways, written in the same transaction as what caused them.

A job is ``queued`` until the dispatcher claims it (``sent``, with the gateway it went to),
then ``done`` or back to ``queued`` with a later ``next_attempt_at`` (retry), or ``failed``.
A newer image for a label turns its older queued image jobs into ``superseded``. At most one
job per label is ``sent`` at a time, oldest first, so a pairing always precedes the image.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

import aiosqlite

from eslserver.db.database import fetchone
from eslserver.timeutil import iso

__all__ = ["OPEN_STATES", "JobKind", "ensure_pair_job", "insert_job"]

OPEN_STATES: Final = ("queued", "sent")


class JobKind:
    PAIR: Final = "pair"
    IMAGE: Final = "image"
    COMMAND: Final = "command"


async def insert_job(conn: aiosqlite.Connection, *, store: str, mac: str, kind: str, now: datetime,
                     origin_at: str | None = None, **columns: Any) -> int:
    """Queue a job; `columns` are other job columns (image_hash, payload, command, …)."""
    names = ["store", "mac", "kind", "state", "next_attempt_at", "created_at", "origin_at", *columns]
    values = [store, mac, kind, "queued", iso(now), iso(now), origin_at, *columns.values()]
    cur = await conn.execute(f"INSERT INTO jobs ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
                             values)
    assert cur.lastrowid is not None
    return cur.lastrowid


async def ensure_pair_job(conn: aiosqlite.Connection, *, store: str, mac: str, now: datetime,
                          new_key: bytes) -> bool:
    """Queue a pairing for `mac` unless one is open; True if one was queued."""
    row = await fetchone(conn, "SELECT 1 FROM jobs WHERE mac = ? AND kind = 'pair' AND state IN ('queued', 'sent')",
                         (mac,))
    if row is not None:
        return False
    await insert_job(conn, store=store, mac=mac, kind=JobKind.PAIR, now=now, command=new_key)
    return True
