"""The database engine: SQLite through aiosqlite (WAL, ordered migrations, serialised write
transactions). It names no table: every statement on a table is in `eslserver.store`."""

from eslserver.db.database import SCHEMA_VERSION, Database, DatabaseError

__all__ = ["SCHEMA_VERSION", "Database", "DatabaseError"]
