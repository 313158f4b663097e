"""The ``templates`` table (edited label templates): every statement on it.

A row replaces the shipped template of its name; ``version`` counts saves from 1 (the
shipped one is version 0 and has no row). Checking a source before it is saved, and falling
back to the shipped templates, are `eslserver.label_templates`'.
"""

from __future__ import annotations

from collections.abc import Sequence

from eslserver.db.database import Connection, Database, Reader, Row, fetchone, placeholders

__all__ = ["stored", "get", "by_names", "save"]


async def stored(db: Database) -> list[Row]:
    """Every committed row: ``name``, ``version``, ``updated_at``, ``updated_by``, ``source``."""
    return await db.read("SELECT name, version, updated_at, updated_by, source FROM templates")


async def get(conn: Reader, name: str) -> Row | None:
    """``source`` and ``version`` of the stored template `name`; None when it has no row."""
    return await fetchone(conn, "SELECT source, version FROM templates WHERE name = ?", (name,))


async def by_names(db: Database, names: Sequence[str]) -> list[Row]:
    """``name``, ``version``, ``source`` of the committed rows among `names` (one read)."""
    return await db.read(f"SELECT name, version, source FROM templates WHERE name IN ({placeholders(names)})",
                         list(names))


async def save(conn: Connection, name: str, source: str, version: int, updated_at: str,
               updated_by: str | None) -> None:
    """Store `source` as version `version` of `name` (inserted, or replacing the row)."""
    await conn.execute(
        "INSERT INTO templates (name, source, version, updated_at, updated_by) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT (name) DO UPDATE SET source = excluded.source, version = excluded.version, "
        "updated_at = excluded.updated_at, updated_by = excluded.updated_by",
        (name, source, version, updated_at, updated_by))
