"""The ``secrets_check`` table: every statement on it.

One row at most: a constant sealed under the server's secret key (`eslserver.keyvault`), so
that a server started with another key finds out at start, before it fails every job. What
the value is and how it is checked are the key vault's; this module only stores it.
"""

from __future__ import annotations

from eslserver.db.database import Connection, Reader, fetchone

__all__ = ["get", "put"]


async def get(conn: Reader) -> bytes | None:
    """The stored check value; None when no key has been recorded yet (a new database, or
    one an older release wrote)."""
    row = await fetchone(conn, "SELECT check_value FROM secrets_check WHERE id = 1")
    return None if row is None else bytes(row["check_value"])


async def put(conn: Connection, check_value: bytes, *, now: str) -> None:
    """Record the check value of the key the database is written with from now on (only when
    none is stored: a second key never replaces the first one silently)."""
    await conn.execute("INSERT INTO secrets_check (id, check_value, created_at) VALUES (1, ?, ?)",
                       (check_value, now))
