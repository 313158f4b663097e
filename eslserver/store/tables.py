"""Every table at once, whatever it holds: the statements that move a whole database from one
engine to another (`eslserver.db_migrate`, ``esl db migrate-to``).

Each other module of `eslserver.store` owns one table and knows its columns; this one knows
none. It reads the tables, their columns, primary keys, identity columns and foreign keys
from the engine's own catalogue, so a table or a column a later migration adds is copied and
checked without a change here.

Rows are read in primary-key order in batches (keyset: each batch starts after the last key
of the one before, so a batch costs the same at the end of a large table as at its start).
Both engines must list rows in the same order, or digests taken over them in order could
never agree: SQLite compares text byte by byte, PostgreSQL by the database's locale, so on
PostgreSQL text keys are ordered ``COLLATE "C"`` (byte order, as SQLite's).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any, Final, NamedTuple

from eslserver.db.database import Connection, Reader, Row, fetchall, fetchone

__all__ = ["Column", "advance_identities", "columns", "data_tables", "has_rows", "insert_rows",
           "lock_for_copy", "read_rows", "references", "row_count"]

_TABLES: Final = {
    "sqlite": "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' "
              "ORDER BY name",
    "postgresql": "SELECT tablename AS name FROM pg_tables WHERE schemaname = current_schema() "
                  "AND tablename <> 'esl_schema_version' ORDER BY tablename",
}
"""The data tables: the engine's own bookkeeping (``sqlite_*``, PostgreSQL's schema-version
table) is no data and is never copied."""

_COLUMNS: Final = {
    "sqlite": "SELECT name, lower(type) AS type, pk AS key, 0 AS identity FROM pragma_table_info(?) ORDER BY cid",
    "postgresql": (
        "SELECT c.column_name AS name, c.data_type AS type, COALESCE(k.ordinal_position, 0) AS key, "
        "c.is_identity = 'YES' AS identity "
        "FROM information_schema.columns c "
        "LEFT JOIN information_schema.table_constraints t ON t.table_schema = c.table_schema "
        "AND t.table_name = c.table_name AND t.constraint_type = 'PRIMARY KEY' "
        "LEFT JOIN information_schema.key_column_usage k ON k.constraint_schema = t.constraint_schema "
        "AND k.constraint_name = t.constraint_name AND k.table_name = c.table_name AND k.column_name = c.column_name "
        "WHERE c.table_schema = current_schema() AND c.table_name = ? ORDER BY c.ordinal_position"),
}

_REFERENCES: Final = {
    "sqlite": 'SELECT DISTINCT "table" AS name FROM pragma_foreign_key_list(?) ORDER BY 1',
    "postgresql": ("SELECT DISTINCT r.relname AS name FROM pg_constraint f "
                   "JOIN pg_class t ON t.oid = f.conrelid JOIN pg_namespace n ON n.oid = t.relnamespace "
                   "JOIN pg_class r ON r.oid = f.confrelid "
                   "WHERE f.contype = 'f' AND n.nspname = current_schema() AND t.relname = ? ORDER BY 1"),
}

_TEXT: Final = ("text", "character varying", "character")
"""PostgreSQL's text types: a key column of one is ordered byte by byte (``COLLATE "C"``)."""


class Column(NamedTuple):
    """A column as the engine's catalogue describes it."""

    name: str
    type: str
    """Its declared type, lower case (SQLite: as written in the schema; PostgreSQL: ``text``,
    ``bigint``, ``bytea``, …)."""
    key: int
    """Its place in the primary key (1, 2, …); 0 when it is not part of it."""
    identity: bool
    """PostgreSQL numbers new rows in it (``GENERATED … AS IDENTITY``)."""


def _quote(name: str) -> str:
    """`name` as an SQL identifier (table and column names come from the catalogue, but are
    quoted all the same: a name is never SQL)."""
    return '"' + name.replace('"', '""') + '"'


async def data_tables(db: Reader) -> list[str]:
    """The names of the tables that hold data, sorted by name."""
    return [str(r["name"]) for r in await fetchall(db, _TABLES[db.engine])]


async def columns(db: Reader, table: str) -> list[Column]:
    """The columns of `table` in the order the schema declares them; `LookupError` naming the
    table if it has none (there is no such table)."""
    found = [Column(str(r["name"]), str(r["type"] or "").lower(), int(r["key"]), bool(r["identity"]))
             for r in await fetchall(db, _COLUMNS[db.engine], (table,))]
    if not found:
        raise LookupError(f"table {table!r}: not in the {db.engine} database")
    return found


async def references(db: Reader, table: str) -> set[str]:
    """The tables `table`'s foreign keys point at (they must be filled before it); itself not
    included."""
    return {str(r["name"]) for r in await fetchall(db, _REFERENCES[db.engine], (table,))} - {table}


def _key(cols: Sequence[Column], table: str) -> list[Column]:
    key = sorted((c for c in cols if c.key), key=lambda c: c.key)
    if not key:
        raise LookupError(f"table {table!r}: has no primary key to read it in order by")
    return key


def _ordered(db: Reader, column: Column) -> str:
    if db.engine == "postgresql" and column.type in _TEXT:
        return f'{_quote(column.name)} COLLATE "C"'
    return _quote(column.name)


async def read_rows(db: Reader, table: str, names: Sequence[str] | None = None, *,
                    cols: Sequence[Column] | None = None, batch: int = 500) -> AsyncIterator[list[Row]]:
    """The rows of `table` in primary-key order (byte order for text on both engines), `batch`
    rows at a time: the columns `names` (default all), followed by those of the primary key
    that `names` leaves out (the next batch starts after the last key). `cols`: the table's
    `columns`, when the caller read them already."""
    if batch < 1:
        raise ValueError(f"batch: expected at least 1 row, got {batch}")
    cols = list(cols) if cols is not None else await columns(db, table)
    key = _key(cols, table)
    known = {c.name for c in cols}
    wanted = list(names) if names is not None else [c.name for c in cols]
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise LookupError(f"table {table!r}: no column {', '.join(map(repr, unknown))}")
    selected = wanted + [c.name for c in key if c.name not in wanted]
    head = f"SELECT {', '.join(map(_quote, selected))} FROM {_quote(table)}"
    order = ", ".join(_ordered(db, c) for c in key)
    after = (f"{_ordered(db, key[0])} > ?" if len(key) == 1
             else f"({order}) > ({', '.join('?' for _ in key)})")
    last: tuple[Any, ...] | None = None
    while True:
        if last is None:
            rows = await fetchall(db, f"{head} ORDER BY {order} LIMIT ?", (batch,))
        else:
            rows = await fetchall(db, f"{head} WHERE {after} ORDER BY {order} LIMIT ?", (*last, batch))
        if not rows:
            return
        yield rows
        if len(rows) < batch:
            return
        last = tuple(rows[-1][c.name] for c in key)


async def insert_rows(conn: Connection, table: str, names: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Insert `rows` (values in the order of `names`) as they are, ids included: one
    ``executemany``."""
    marks = ", ".join("?" for _ in names)
    await conn.executemany(f"INSERT INTO {_quote(table)} ({', '.join(map(_quote, names))}) VALUES ({marks})", rows)


async def lock_for_copy(conn: Connection, tables: Sequence[str]) -> None:
    """Keep every other writer out of `tables` until the transaction ends (readers go on), so
    that a table found empty stays empty while it is filled. PostgreSQL only: an SQLite write
    transaction already keeps every other writer out."""
    if conn.engine == "postgresql" and tables:
        await conn.execute(f"LOCK TABLE {', '.join(map(_quote, tables))} IN EXCLUSIVE MODE")


async def has_rows(db: Reader, table: str) -> bool:
    """True when `table` holds at least one row (without counting them all)."""
    return await fetchone(db, f"SELECT 1 FROM {_quote(table)} LIMIT 1") is not None


async def row_count(db: Reader, table: str) -> int:
    """How many rows `table` holds."""
    row = await fetchone(db, f"SELECT COUNT(*) FROM {_quote(table)}")
    return int(row[0]) if row else 0


async def advance_identities(conn: Connection, table: str, cols: Sequence[Column]) -> None:
    """Move each identity column's sequence past the largest value `table` holds, so that the
    rows the server adds next do not take the ids of rows copied in with theirs (an insert
    with an explicit id leaves the sequence where it was). Nothing to do on SQLite: a new
    row's id there is always past the largest."""
    if conn.engine != "postgresql":
        return
    for column in cols:
        if column.identity:
            await conn.execute(f"SELECT setval(pg_get_serial_sequence(?, ?), COALESCE(MAX({_quote(column.name)}), 0) "
                               f"+ 1, false) FROM {_quote(table)}", (_quote(table), column.name))
