"""The ``uploaded_images`` table: every statement on it.

Images uploaded through the API, keyed by the SHA-256 of the PNG the server made of each
(`render.image_decode.normalise`); a name is optional and unique within a store. Rows are
inserted, named once, and deleted; the PNG under a digest never changes. Checking uploads,
caching them and handing them to render jobs are `eslserver.uploads`' business. Writes take
the caller's transaction connection and never commit; reads take a `Reader`.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Final

from eslserver.db.database import Connection, Database, Reader, Row, fetchone, placeholders

__all__ = ["COLUMNS", "index", "get", "by_name", "pngs", "insert", "set_name", "delete", "page"]

COLUMNS: Final = "digest, store, name, media_type, width, height, bytes, created_at, created_by"
"""What a row says about its image (everything but the PNG)."""
_IN_MAX: Final = 500


async def index(db: Database, store: str) -> list[Row]:
    """``digest`` and ``name`` of every committed upload (a digest names an image in any
    store; ``name`` is None unless the image was named in `store`)."""
    return await db.read("SELECT digest, CASE WHEN store = ? THEN name END AS name FROM uploaded_images "
                         "ORDER BY digest", (store,))


async def get(conn: Reader, digest: str) -> Row | None:
    """The row of `digest` (`COLUMNS`); None when no upload has it."""
    return await fetchone(conn, f"SELECT {COLUMNS} FROM uploaded_images WHERE digest = ?", (digest,))


async def by_name(conn: Reader, store: str, name: str) -> Row | None:
    """The row named `name` in `store` (`COLUMNS`); None when no upload has that name."""
    return await fetchone(conn, f"SELECT {COLUMNS} FROM uploaded_images WHERE store = ? AND name = ?",
                          (store, name))


async def pngs(db: Database, digests: Collection[str]) -> dict[str, bytes]:
    """``digest → PNG`` of those of `digests` that are stored (committed)."""
    keys = sorted(digests)
    out: dict[str, bytes] = {}
    for i in range(0, len(keys), _IN_MAX):
        part = keys[i:i + _IN_MAX]
        rows = await db.read(f"SELECT digest, png FROM uploaded_images WHERE digest IN ({placeholders(part)})", part)
        out.update((r["digest"], bytes(r["png"])) for r in rows)
    return out


async def insert(conn: Connection, *, digest: str, store: str, name: str | None, media_type: str,
                 width: int, height: int, png: bytes, created_at: str, created_by: str) -> None:
    """Store a new upload (the digest must be new; a name taken in the store is refused by
    the unique index, `sqlite3.IntegrityError`)."""
    await conn.execute(
        "INSERT INTO uploaded_images (digest, store, name, media_type, width, height, bytes, png, created_at, "
        "created_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (digest, store, name, media_type, width, height, len(png), png, created_at, created_by))


async def set_name(conn: Connection, digest: str, name: str) -> None:
    """Name an upload that had no name (the caller checked that it had none)."""
    await conn.execute("UPDATE uploaded_images SET name = ? WHERE digest = ? AND name IS NULL", (name, digest))


async def delete(conn: Connection, digest: str) -> None:
    """Forget an upload."""
    await conn.execute("DELETE FROM uploaded_images WHERE digest = ?", (digest,))


async def page(db: Database, store: str, limit: int, offset: int) -> tuple[int, list[Row]]:
    """(how many `store` has, one page of their rows (`COLUMNS`), newest first)."""
    total = await db.read_one("SELECT COUNT(*) FROM uploaded_images WHERE store = ?", (store,))
    rows = await db.read(f"SELECT {COLUMNS} FROM uploaded_images WHERE store = ? "
                         "ORDER BY created_at DESC, digest LIMIT ? OFFSET ?", (store, limit, offset))
    return (int(total[0]) if total else 0), rows
