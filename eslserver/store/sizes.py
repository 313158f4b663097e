"""How many rows each table holds: the one read that looks at every table (it writes none).

Operators watch these (``esl_table_rows``) to see that retention keeps each table bounded.
The tables are the database's own list, so a table a later migration adds is counted
without a change here. One ``COUNT(*)`` per table, each its own short read (SQLite counts
through the table's smallest index), so API reads interleave with them.
"""

from __future__ import annotations

from typing import Final

from eslserver.db.database import Database

__all__ = ["table_rows"]

_TABLES: Final = ("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' "
                  "ORDER BY name")


async def table_rows(db: Database) -> dict[str, int]:
    """Rows per table (every table of the schema, SQLite's internal ones aside), by name."""
    out: dict[str, int] = {}
    for row in await db.read(_TABLES):
        name = str(row["name"])
        quoted = name.replace('"', '""')
        counted = await db.read_one(f'SELECT COUNT(*) FROM "{quoted}"')
        out[name] = int(counted[0]) if counted else 0
    return out
