"""The ``pos_update_ids`` table: every statement on it.

The ``update_id`` a POS chose for an item, once the item was accepted (applied, scheduled or
stale), so that the same item sent again is recognised and answered ``duplicate`` instead of
applied twice (`eslserver.ingest`). A POS re-sends what it saw no confirmation for, so a
duplicate is normal, not an error. Rows are written in the transaction of the change they
stand for, and pruned by age (``pos_update_ids_days``) in small batches.
"""

from __future__ import annotations

from eslserver.db.database import Connection, Reader, Row, fetchone

__all__ = ["seen", "remember", "prune_before", "count"]


async def seen(conn: Reader, store: str, update_id: str) -> Row | None:
    """The first acceptance of `update_id` in `store` (``sku``, ``status``, ``seen_at``), or None."""
    return await fetchone(conn, "SELECT sku, status, seen_at FROM pos_update_ids WHERE store = ? AND update_id = ?",
                          (store, update_id))


async def remember(conn: Connection, store: str, update_id: str, sku: str, status: str,
                   seen_at: str) -> None:
    """Record that `update_id` was accepted with `status`, inside the caller's transaction (so
    the id is kept exactly when the change it stands for is committed). An id already kept
    stays as it was first recorded."""
    await conn.execute(
        "INSERT INTO pos_update_ids (store, update_id, sku, status, seen_at) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT (store, update_id) DO NOTHING",
        (store, update_id, sku, status, seen_at))


async def prune_before(conn: Connection, cutoff_iso: str, limit: int) -> int:
    """Forget at most `limit` ids (of any store) accepted before `cutoff_iso`, oldest first;
    returns how many went. Small batches keep the write transaction short."""
    if limit < 1:
        raise ValueError(f"limit: expected an integer >= 1, got {limit!r}")
    cursor = await conn.execute(
        "DELETE FROM pos_update_ids WHERE (store, update_id) IN "
        "(SELECT store, update_id FROM pos_update_ids WHERE seen_at < ? ORDER BY seen_at LIMIT ?)",
        (cutoff_iso, limit))
    return cursor


async def count(conn: Reader) -> int:
    """How many ids are kept (all stores): for table-size metrics."""
    row = await fetchone(conn, "SELECT COUNT(*) FROM pos_update_ids")
    return int(row[0]) if row else 0
