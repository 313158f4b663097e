"""The ``images`` table: every statement on it.

Every image the server rendered, whole and compressed, by its content hash: the base a
region or delta update is computed against, the whole image a job falls back to, and the
PNGs of the API. Rows are never changed (same hash, same image); one nothing uses any more
is deleted by age (`prune_before`). Writes take the caller's
transaction connection and never commit; reads take a `Reader` (the transaction's
connection, or the `Database` for committed data).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Final

from eslserver.db.database import Connection, Database, Reader, Row, fetchall, fetchone, placeholders
from eslserver.store._listing import batch_limit

__all__ = ["Sweep", "add_many", "get", "payloads", "prune_before"]


async def get(conn: Reader, digest: str) -> Row | None:
    """``model, format, payload`` of the image; None when it is not stored."""
    return await fetchone(conn, "SELECT model, format, payload FROM images WHERE hash = ?", (digest,))


async def payloads(db: Database, digests: Collection[str]) -> dict[str, tuple[int, bytes]]:
    """``hash → (format, payload)`` of those of `digests` that are stored."""
    if not digests:
        return {}
    keys = sorted(digests)
    rows = await db.read(f"SELECT hash, format, payload FROM images WHERE hash IN ({placeholders(keys)})", keys)
    return {r["hash"]: (r["format"], r["payload"]) for r in rows}


async def add_many(conn: Connection, rows: Iterable[tuple[str, str, int, bytes, str]]) -> None:
    """Store images, ``(hash, model, format, payload, created_at)`` each; one already stored
    is left as it is (one ``executemany``)."""
    await conn.executemany("INSERT INTO images (hash, model, format, payload, created_at) "
                           "VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING", rows)


# an image in use: a label shows or expects it, or an open job sends it or was built against
# it (reads ``labels`` and ``jobs``, through the indexes of migration 0006)
_UNUSED: Final = ("NOT EXISTS (SELECT 1 FROM labels l WHERE l.expected_hash = i.hash) "
                  "AND NOT EXISTS (SELECT 1 FROM labels l WHERE l.displayed_hash = i.hash) "
                  "AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.state IN ('queued', 'sent') AND j.image_hash = i.hash) "
                  "AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.state IN ('queued', 'sent') AND j.base_hash = i.hash)")
_SCAN: Final = 4
"""A swept `prune_before` looks at up to this many images per image it may delete."""


@dataclass(slots=True)
class Sweep:
    """How far one pass over the old images has got (the ``(created_at, hash)`` of the last
    one looked at). Images in use stay however old they are, and a store's labels keep
    thousands of them; `prune_before` with a sweep looks at each once per pass, instead of
    again at every batch, so each batch holds the write lock for a bounded time."""

    after: tuple[str, str] = ("", "")
    done: bool = False


async def prune_before(conn: Connection, cutoff_iso: str, limit: int, *,
                       sweep: Sweep | None = None) -> int:
    """Delete at most `limit` images stored before `cutoff_iso` that nothing uses any more, the
    oldest first; how many. Never one that a label shows (``displayed_hash``) or expects
    (``expected_hash``), or that an open job sends or uses as its delta base: the check and
    the delete run in the caller's write transaction, so a label or job that takes an image
    up cannot slip between them. Reads ``labels`` and ``jobs``.

    With `sweep`, looks only at the next ``limit * 4`` old images after ``sweep.after`` and
    moves it on (``sweep.done`` once it reached `cutoff_iso`): fewer than `limit` deleted
    then does not mean that none are left."""
    batch_limit(limit)
    if sweep is None:
        cur = await conn.execute(f"DELETE FROM images WHERE hash IN (SELECT i.hash FROM images i "
                                 f"WHERE i.created_at < ? AND {_UNUSED} ORDER BY i.created_at LIMIT ?)",
                                 (cutoff_iso, limit))
        return cur
    if sweep.done:
        return 0
    rows = await fetchall(conn, f"SELECT i.hash, i.created_at, ({_UNUSED}) AS unused FROM images i "
                                f"WHERE i.created_at < ? AND (i.created_at, i.hash) > (?, ?) "
                                f"ORDER BY i.created_at, i.hash LIMIT ?", (cutoff_iso, *sweep.after, limit * _SCAN))
    unused: list[str] = []
    for row in rows:
        sweep.after = (row["created_at"], row["hash"])
        if row["unused"]:
            unused.append(row["hash"])
            if len(unused) == limit:
                break
    else:
        sweep.done = len(rows) < limit * _SCAN
    if not unused:
        return 0
    cur = await conn.execute(f"DELETE FROM images WHERE hash IN ({placeholders(unused)})", unused)
    return cur
