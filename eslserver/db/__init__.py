"""The database engines: SQLite (embedded default) and PostgreSQL, behind one interface
(`eslserver.db.database`). They name no table: every statement on a table is in `eslserver.store`."""

from eslserver.db.database import SCHEMA_VERSION, Database, DatabaseError, open_database

__all__ = ["SCHEMA_VERSION", "Database", "DatabaseError", "open_database"]
