"""Storage: SQLite through aiosqlite (WAL, ordered migrations), and the queries per table."""

from eslserver.db.database import Database, DatabaseError, SCHEMA_VERSION

__all__ = ["Database", "DatabaseError", "SCHEMA_VERSION"]
