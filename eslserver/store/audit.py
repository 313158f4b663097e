"""The ``audit`` table: every statement on it.

Rows are only ever appended (`insert`, inside the transaction of the change they record),
read back newest first, and deleted by age (`prune_before`, ``retention_audit_days``). What is audited, and how before/after are written as JSON, is
`eslserver.audit`'s business; this module stores and finds the text it is given.
"""

from __future__ import annotations

from typing import Final

from eslserver.db.database import Connection, Database, Row, escape_like
from eslserver.store import paging
from eslserver.store._listing import batch_limit, equal_to

__all__ = ["insert", "newest", "count_since", "prune_before"]

_SELECT: Final = "SELECT id, at, actor, role, action, target, before, after FROM audit"


async def insert(conn: Connection, at: str, actor: str, role: str, action: str, target: str,
                 before: str | None, after: str | None) -> None:
    """Append one row inside the caller's transaction (it commits, or not, with the change)."""
    await conn.execute(
        "INSERT INTO audit (at, actor, role, action, target, before, after) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (at, actor, role, action, target, before, after))


async def newest(db: Database, *, before: int | None, limit: int, actor: str | None = None,
                 action: str | None = None, target: str | None = None,
                 action_prefix: str | None = None) -> list[Row]:
    """One page of committed rows (``id``, ``at``, ``actor``, ``role``, ``action``, ``target``,
    ``before``, ``after``), newest first, matching every filter given: `actor`, `action` and
    `target` exactly, `action_prefix` as the start of the action (``"label."``)."""
    where, params = equal_to({"actor": actor, "action": action, "target": target})
    if action_prefix is not None:
        where.append("action LIKE ? ESCAPE '\\'")
        params.append(escape_like(action_prefix) + "%")
    return await paging.newest_first(db, _SELECT, where, params, before=before, limit=limit)


async def count_since(db: Database, action: str, since: str) -> int:
    """How many committed rows of `action` were written at or after `since`."""
    row = await db.read_one("SELECT COUNT(*) FROM audit WHERE action = ? AND at >= ?", (action, since))
    return int(row[0]) if row else 0


async def prune_before(conn: Connection, cutoff_iso: str, limit: int) -> int:
    """Delete at most `limit` rows written before `cutoff_iso`, oldest first; how many
    (index ``audit_at``)."""
    batch_limit(limit)
    cur = await conn.execute("DELETE FROM audit WHERE id IN (SELECT id FROM audit WHERE at < ? ORDER BY at LIMIT ?)",
                             (cutoff_iso, limit))
    return cur
