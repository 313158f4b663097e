"""Keyset paging, newest first, for the append-only tables (``audit``, ``events``).

Shared by their owning modules so the paging query is written once; it names no table: the
caller passes its own ``SELECT … FROM table`` and conditions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from eslserver.db.database import Database, Row

__all__ = ["newest_first"]


async def newest_first(db: Database, select: str, where: Sequence[str], params: Sequence[Any], *,
                       before: int | None, limit: int) -> list[Row]:
    """Up to `limit` committed rows of `select` (the query up to its WHERE clause) matching
    every condition in `where`, by descending ``id``; `before` (an id) continues a listing
    after the last row of its previous page."""
    clauses, args = list(where), list(params)
    if before is not None:
        clauses.append("id < ?")
        args.append(before)
    clause = (" WHERE " + " AND ".join(clauses)) if clauses else ""
    return await db.read(f"{select}{clause} ORDER BY id DESC LIMIT ?", [*args, limit])
