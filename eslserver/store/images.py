"""The ``images`` table: every statement on it.

Every image the server rendered, whole and compressed, by its content hash: the base a
region or delta update is computed against, the whole image a job falls back to, and the
PNGs of the API. Rows are never changed (same hash, same image). Writes take the caller's
transaction connection and never commit; reads take a `Reader` (the transaction's
connection, or the `Database` for committed data).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

import aiosqlite

from eslserver.db.database import Database, Reader, fetchone, placeholders

__all__ = ["add_many", "get", "payloads"]


async def get(conn: Reader, digest: str) -> aiosqlite.Row | None:
    """``model, format, payload`` of the image; None when it is not stored."""
    return await fetchone(conn, "SELECT model, format, payload FROM images WHERE hash = ?", (digest,))


async def payloads(db: Database, digests: Collection[str]) -> dict[str, tuple[int, bytes]]:
    """``hash → (format, payload)`` of those of `digests` that are stored."""
    if not digests:
        return {}
    keys = sorted(digests)
    rows = await db.read(f"SELECT hash, format, payload FROM images WHERE hash IN ({placeholders(keys)})", keys)
    return {r["hash"]: (r["format"], r["payload"]) for r in rows}


async def add_many(conn: aiosqlite.Connection, rows: Iterable[tuple[str, str, int, bytes, str]]) -> None:
    """Store images, ``(hash, model, format, payload, created_at)`` each; one already stored
    is left as it is (one ``executemany``)."""
    await conn.executemany("INSERT OR IGNORE INTO images (hash, model, format, payload, created_at) "
                           "VALUES (?, ?, ?, ?, ?)", rows)
