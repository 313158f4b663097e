"""The catalogue's tables: ``products``, ``price_history`` and ``scheduled_updates``.

Every statement on these three tables is here; they are one module because a price change
writes all of them in one transaction (`eslserver.ingest`). Writes take the caller's
transaction connection and never commit; reads take a `Reader` (the transaction's
connection, or the `Database` for committed data). Records and scheduled fields are stored
as the JSON text `eslserver.pricing` writes; this module neither reads nor shapes them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Final

from eslserver.db.database import Connection, Database, Reader, Row, escape_like, fetchall, fetchone, placeholders

__all__ = [
    "HistoryRow", "exists", "get", "seq", "take_turn", "upsert", "records", "due_changes", "set_next_change", "next_due",
    "search", "summary", "add_history", "history", "schedule", "scheduled_max_seq", "due_scheduled",
    "drop_scheduled", "scheduled", "reset_seq", "last_change", "history_groups", "delete_history",
]

HistoryRow = tuple[str, str, str | None, int, int | None, str, str]
"""One price period to write: (price, start_at, end_at, reduction 0/1, seq, source, recorded_at)."""

_IN_MAX: Final = 500  # SKUs per IN (...) list, well under SQLite's bound on parameters


# -- products -----------------------------------------------------------------------------
async def exists(conn: Reader, store: str, sku: str) -> bool:
    """True when `sku` is in `store`'s catalogue."""
    return await fetchone(conn, "SELECT 1 FROM products WHERE store = ? AND sku = ?", (store, sku)) is not None


async def get(conn: Reader, store: str, sku: str) -> Row | None:
    """The product's ``record`` (JSON text) and ``seq``; None when it is not in the catalogue."""
    return await fetchone(conn, "SELECT record, seq FROM products WHERE store = ? AND sku = ?", (store, sku))


async def seq(conn: Reader, store: str, sku: str) -> int | None:
    """The highest POS ``seq`` applied to the product; None when it has none or is unknown."""
    row = await fetchone(conn, "SELECT seq FROM products WHERE store = ? AND sku = ?", (store, sku))
    return None if row is None else row[0]


async def upsert(conn: Connection, store: str, sku: str, record: str, seq: int | None,
                 updated_at: str, next_change_at: str | None, *, by_pos: bool | None = False) -> None:
    """Make `record` the product's current one (inserted, or replacing the stored row whole).
    ``created_by_pos`` is set when a POS (`by_pos`) inserts the product and cleared by a change
    that is not a POS's; None leaves it as it is (the server applying a scheduled change)."""
    await conn.execute(
        "INSERT INTO products (store, sku, record, seq, updated_at, next_change_at, created_by_pos) "
        "VALUES (?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (store, sku) DO UPDATE SET record = excluded.record, seq = excluded.seq, "
        "updated_at = excluded.updated_at, next_change_at = excluded.next_change_at, "
        "created_by_pos = CASE WHEN CAST(? AS INTEGER) IS NULL THEN products.created_by_pos "
        "WHEN products.created_by_pos <> 0 AND excluded.created_by_pos <> 0 THEN 1 ELSE 0 END",
        (store, sku, record, seq, updated_at, next_change_at, int(bool(by_pos)), None if by_pos is None else int(by_pos)))


async def take_turn(conn: Connection, store: str, sku: str) -> None:
    """Wait until no other transaction handles the SKU, and keep it until this one ends.
    Instances sharing a PostgreSQL database apply the updates of one SKU one after the
    other, each seeing what the previous one committed (its ``seq``, its ``update_id``s), so
    the order is ``seq``'s whichever instance got which message. One server per SQLite file
    writes one transaction at a time: nothing to wait for there."""
    if conn.engine == "postgresql":
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext(?))", (f"{store}/{sku}",))


async def reset_seq(conn: Connection, store: str, sku: str) -> int | None:
    """Forget the SKU's POS ``seq`` (applied and scheduled), so the POS's next one is accepted
    whatever it is; returns the seq forgotten. Raises LookupError for an unknown SKU."""
    row = await fetchone(conn, "SELECT seq FROM products WHERE store = ? AND sku = ?", (store, sku))
    if row is None:
        raise LookupError(sku)
    pending = await scheduled_max_seq(conn, store, sku)
    await conn.execute("UPDATE products SET seq = NULL WHERE store = ? AND sku = ?", (store, sku))
    await conn.execute("UPDATE scheduled_updates SET seq = NULL WHERE store = ? AND sku = ?", (store, sku))
    return max((v for v in (row[0], pending) if v is not None), default=None)


async def records(db: Database, store: str) -> list[Row]:
    """Every product's ``sku`` and ``record`` (committed), by SKU."""
    return await db.read("SELECT sku, record FROM products WHERE store = ? ORDER BY sku", (store,))


async def due_changes(conn: Connection, store: str, now: str) -> list[Row]:
    """Products (``sku``, ``record``, ``next_change_at``) whose promotion starts or ends by `now`."""
    return await fetchall(conn, "SELECT sku, record, next_change_at FROM products WHERE store = ? "
                                "AND next_change_at <= ?", (store, now))


async def set_next_change(conn: Connection, store: str, sku: str, at: str | None) -> None:
    """When the product's label must next be redrawn for a promotion (None: never)."""
    await conn.execute("UPDATE products SET next_change_at = ? WHERE store = ? AND sku = ?", (at, store, sku))


async def next_due(db: Database, store: str) -> str | None:
    """The earliest time a scheduled update or a promotion boundary is due (None: nothing is);
    one read over ``scheduled_updates`` and ``products``."""
    row = await db.read_one(
        "SELECT MIN(t) FROM (SELECT MIN(valid_from) AS t FROM scheduled_updates WHERE store = ? "
        "UNION ALL SELECT MIN(next_change_at) FROM products WHERE store = ?) AS due", (store, store))
    return row[0] if row and row[0] else None


# the API's product summary: the product and how many labels show it (a read of `products`
# that counts in `labels`, so it is this module's)
_SUMMARY: Final = ("SELECT p.sku, p.record, p.seq, p.updated_at, p.next_change_at, p.created_by_pos, "
                   "(SELECT COUNT(*) FROM labels l WHERE l.store = p.store AND l.sku = p.sku) AS n_labels "
                   "FROM products p")


def _field(db: Database, name: str) -> str:
    """The text of field `name` of a product's JSON ``record``, in the engine's own words."""
    if db.engine == "postgresql":
        return f"(p.record::json ->> '{name}')"
    return f"json_extract(p.record, '$.{name}')"


async def search(db: Database, store: str, q: str | None, *, limit: int,
                 offset: int) -> tuple[int, list[Row]]:
    """(how many match, one page of them) as `summary` rows. `q` matches a SKU or name
    (substring, case-insensitive) or an EAN exactly; exact SKU / EAN matches come first,
    then by SKU. Two reads, as the count and the page are separate questions."""
    where = "p.store = ?"
    params: list[Any] = [store]
    order = "p.sku"
    order_params: list[Any] = []
    if q is not None:
        name, ean = _field(db, "name"), _field(db, "ean")
        where += (f" AND (lower(p.sku) LIKE ? ESCAPE '\\' OR lower({name}) LIKE ? ESCAPE '\\' "
                  f"OR {ean} = ? OR p.sku = ?)")
        pattern = f"%{escape_like(q.lower())}%"
        params += [pattern, pattern, q, q]
        order = f"(p.sku = ? OR {ean} = ?) DESC, p.sku"
        order_params = [q, q]
    total = await db.read_one(f"SELECT COUNT(*) FROM products p WHERE {where}", params)
    rows = await db.read(f"{_SUMMARY} WHERE {where} ORDER BY {order} LIMIT ? OFFSET ?",
                         [*params, *order_params, limit, offset])
    return (total[0] if total else 0), rows


async def summary(db: Database, store: str, sku: str) -> Row | None:
    """``sku``, ``record``, ``seq``, ``updated_at``, ``next_change_at``, ``created_by_pos`` and
    ``n_labels`` (labels bound to it) of one product; None when it is not in the catalogue."""
    return await db.read_one(f"{_SUMMARY} WHERE p.store = ? AND p.sku = ?", (store, sku))


# -- price_history ------------------------------------------------------------------------
async def add_history(conn: Connection, store: str, sku: str, periods: Sequence[HistoryRow]) -> None:
    """Append price periods to the SKU's history, in order (one executemany)."""
    if periods:
        await conn.executemany(
            "INSERT INTO price_history (store, sku, price, start_at, end_at, reduction, seq, source, recorded_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", [(store, sku, *period) for period in periods])


async def last_change(conn: Reader, store: str, sku: str) -> str | None:
    """The start of the SKU's latest recorded price period (None: no history)."""
    row = await fetchone(conn, "SELECT MAX(start_at) FROM price_history WHERE store = ? AND sku = ?", (store, sku))
    return None if row is None else row[0]


async def history(db: Reader, store: str, skus: Iterable[str]) -> dict[str, list[Row]]:
    """Each SKU's price history in the order it was written: ``id``, ``price``, ``start_at``,
    ``end_at``, ``reduction``, ``seq``, ``source``, ``recorded_at``. Every SKU asked for is a
    key (an empty list when it has no history); one read per 500 SKUs."""
    out: dict[str, list[Row]] = {sku: [] for sku in skus}
    keys = list(out)
    for i in range(0, len(keys), _IN_MAX):
        part = keys[i:i + _IN_MAX]
        for row in await fetchall(db, "SELECT id, sku, price, start_at, end_at, reduction, seq, source, recorded_at "
                                      f"FROM price_history WHERE store = ? AND sku IN ({placeholders(part)}) "
                                      "ORDER BY id", (store, *part)):
            out[row["sku"]].append(row)
    return out


async def history_groups(db: Database, before_iso: str, after: tuple[str, str],
                         limit: int) -> list[Row]:
    """``store``, ``sku`` and ``old`` (how many of its periods start before `before_iso`) of
    the next `limit` SKUs with history after the key `after` (``(store, sku)``; ``("", "")``
    for the first), in key order: retention walks every SKU a few hundred at a time, each read
    short (a covering walk of index ``price_history_start``)."""
    return await db.read("SELECT store, sku, COUNT(CASE WHEN start_at < ? THEN 1 END) AS old FROM price_history "
                         "WHERE (store, sku) > (?, ?) GROUP BY store, sku ORDER BY store, sku LIMIT ?",
                         (before_iso, *after, limit))


async def delete_history(conn: Connection, ids: Sequence[int]) -> int:
    """Delete these price periods (by ``id``); how many. Which periods the lowest-price rule
    no longer needs is `eslserver.retention`'s business, decided in this same transaction."""
    deleted = 0
    for i in range(0, len(ids), _IN_MAX):
        part = list(ids[i:i + _IN_MAX])
        cur = await conn.execute(f"DELETE FROM price_history WHERE id IN ({placeholders(part)})", part)
        deleted += cur
    return deleted


# -- scheduled_updates --------------------------------------------------------------------
async def schedule(conn: Connection, store: str, sku: str, fields: str, seq: int | None,
                   valid_from: str, received_at: str, source: str) -> None:
    """Keep an update (`fields`, JSON text) to apply at `valid_from`."""
    await conn.execute(
        "INSERT INTO scheduled_updates (store, sku, fields, seq, valid_from, received_at, source) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)", (store, sku, fields, seq, valid_from, received_at, source))


async def scheduled_max_seq(conn: Reader, store: str, sku: str) -> int | None:
    """The highest ``seq`` among the SKU's scheduled updates (None: none has one)."""
    row = await fetchone(conn, "SELECT MAX(seq) FROM scheduled_updates WHERE store = ? AND sku = ?", (store, sku))
    return None if row is None else row[0]


async def due_scheduled(conn: Connection, store: str, now: str) -> list[Row]:
    """Scheduled updates due by `now` (``id``, ``sku``, ``fields``, ``seq``, ``valid_from``,
    ``received_at``, ``source``), oldest ``valid_from`` first."""
    return await fetchall(conn, "SELECT id, sku, fields, seq, valid_from, received_at, source "
                                "FROM scheduled_updates WHERE store = ? AND valid_from <= ? ORDER BY valid_from, id",
                          (store, now))


async def drop_scheduled(conn: Connection, update_id: int) -> None:
    """Forget one scheduled update (it was applied, or superseded)."""
    await conn.execute("DELETE FROM scheduled_updates WHERE id = ?", (update_id,))


async def scheduled(db: Database, store: str, sku: str) -> list[Row]:
    """The SKU's pending scheduled updates (committed), in the order they will apply."""
    return await db.read("SELECT id, fields, seq, valid_from, received_at, source FROM scheduled_updates "
                         "WHERE store = ? AND sku = ? ORDER BY valid_from, id", (store, sku))
