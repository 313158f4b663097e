"""Read a server's SQLite file from outside the server, as a test or a benchmark observer does.

    rows = read_only(db_path, "SELECT sku, price FROM price_history WHERE store = ?", ("demo",))

A read-only connection never checkpoints or rewrites the WAL that a running (or SIGKILLed)
server left, so reading cannot change what the server finds when it starts again. A reader
that arrives while the server holds a lock, or while SQLite recovers a WAL, is told "busy":
it asks again for up to `patience_s` seconds.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

__all__ = ["read_only"]


def read_only(db: Path, sql: str, params: tuple[Any, ...] = (), *, patience_s: float = 10.0) -> list[sqlite3.Row]:
    """The rows of `sql` on a read-only connection to `db` (rows indexable by column name)."""
    deadline = time.monotonic() + patience_s
    while True:
        try:
            conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
            try:
                conn.row_factory = sqlite3.Row
                return conn.execute(sql, params).fetchall()
            finally:
                conn.close()
        except sqlite3.OperationalError:  # busy, or the WAL being recovered: ask again
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
