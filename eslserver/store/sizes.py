"""How many rows each table holds: the one read that looks at every table (it writes none).

Operators watch these (``esl_table_rows``) to see that retention keeps each table bounded.
The tables are the database's own list, so a table a later migration adds is counted
without a change here. One ``COUNT(*)`` per table, each its own short read (SQLite counts
through the table's smallest index), so API reads interleave with them.
"""

from __future__ import annotations

import os
from eslserver.db.database import Database
from eslserver.store import tables

__all__ = ["database_bytes", "table_rows"]

async def table_rows(db: Database) -> dict[str, int]:
    """Rows per table (every table of the schema, the engine's own bookkeeping aside), by name."""
    return {name: await tables.row_count(db, name) for name in await tables.data_tables(db)}


async def database_bytes(db: Database) -> int:
    """What the disk holds of the database: the SQLite file and its write-ahead log, or what
    PostgreSQL reports for the whole database."""
    if db.path is None:
        row = await db.read_one("SELECT pg_database_size(current_database())")
        return int(row[0]) if row else 0
    total = 0
    for path in (db.path, db.path.with_name(db.path.name + "-wal")):
        try:
            total += os.stat(path).st_size
        except FileNotFoundError:
            pass
    return total
