"""Storage: SQLite through aiosqlite (WAL, ordered migrations), and the queries per table."""

from eslserver.db.database import SCHEMA_VERSION, Database, DatabaseError

__all__ = ["SCHEMA_VERSION", "Database", "DatabaseError"]
