"""The SQLite engine: one file (WAL) through aiosqlite, ordered migrations, serialised write
transactions. The embedded default; one server process per file.

Writes go through one connection, one transaction at a time (`transaction`), so coroutines
never interleave statements inside each other's transactions; reads that do not need to see
an open transaction use a second connection (`read`), which WAL lets run beside a writer.
``synchronous=FULL``: a transaction that returned from `transaction` is on disk, so what was
acknowledged survives a kill -9 and a power cut. Other processes (``esl tokens create``
while the server runs) open the same file; ``busy_timeout`` makes them wait their turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Iterable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite

from eslserver.db.database import SCHEMA_VERSION, Connection, Database, DatabaseError, Row, migrations
from eslserver.private_files import create_private, tighten

__all__ = ["SqliteConnection", "SqliteDatabase"]

log = logging.getLogger(__name__)


class SqliteConnection(Connection):
    """The open transaction on the writer connection. Each call is one hop into aiosqlite's
    thread (a statement and its row count, or its rows, together)."""

    engine = "sqlite"

    def __init__(self, raw: aiosqlite.Connection) -> None:
        self.raw = raw

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        return int(await self.raw._execute(_rowcount, self.raw._conn, sql, params))

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        await self.raw.executemany(sql, rows)

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return list(await self.raw.execute_fetchall(sql, params))

    @property
    def in_transaction(self) -> bool:
        return self.raw.in_transaction


def _rowcount(conn: sqlite3.Connection, sql: str, params: Sequence[Any]) -> int:
    cur = conn.execute(sql, params)
    try:
        return max(0, cur.rowcount)
    finally:
        cur.close()


class SqliteDatabase(Database):
    """The server's database in one SQLite file."""

    engine = "sqlite"
    integrity_error = sqlite3.IntegrityError
    errors = (sqlite3.Error,)

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        self._path = Path(path)
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()
        self._conn: SqliteConnection | None = None

    @property
    def path(self) -> Path:
        return self._path

    @property
    def location(self) -> str:
        return str(self._path)

    async def open(self) -> SqliteDatabase:
        """Connect, check the file (`quick_check`; a file that is not an eslserver database is
        refused) and migrate; `DatabaseError` names the file and what is wrong with it.

        A new file is created 0600 in a 0700 directory (SQLite gives its ``-wal`` and ``-shm``
        the file's mode); an existing one readable by others is tightened: it holds label
        keys, sealed, and what anyone needs to find out who may change prices."""
        if not create_private(self.path):
            tighten(self.path, also=("-wal", "-shm"))
        try:
            self._writer = await self._connect()
            self._conn = SqliteConnection(self._writer)
            await self._check_file(self._writer)
            await self._migrate(self._writer)
            self._reader = await self._connect()
            await self._reader.execute("PRAGMA query_only = ON")
        except Exception:
            await self.close()
            raise
        return self

    async def _connect(self) -> aiosqlite.Connection:
        try:
            conn = await aiosqlite.connect(self.path, isolation_level=None)
        except Exception as exc:
            raise DatabaseError(f"cannot open database {str(self.path)!r}: {exc}") from exc
        conn.row_factory = aiosqlite.Row
        try:
            await conn.execute("PRAGMA busy_timeout = 10000")
            await conn.execute("PRAGMA journal_mode = WAL")
            await conn.execute("PRAGMA synchronous = FULL")
            await conn.execute("PRAGMA foreign_keys = ON")
        except sqlite3.Error as exc:
            # close it, or its thread keeps the process alive after the error (a garbage
            # file used to leave `esl serve` hanging after its traceback)
            await conn.close()
            raise DatabaseError(f"{self.path}: {exc}") from exc
        return conn

    async def _check_file(self, conn: aiosqlite.Connection) -> None:
        """Refuse a damaged file (``quick_check``) or another program's database (tables, but
        no schema version of ours) before a migration writes into it."""
        try:
            problem = await self._quick_check(conn)
            async with conn.execute("PRAGMA user_version") as cur:
                row = await cur.fetchone()
            tables = sorted(r["name"] for r in await conn.execute_fetchall("PRAGMA main.table_list")
                            if r["type"] == "table" and not r["name"].startswith("sqlite_"))
        except sqlite3.Error as exc:
            raise DatabaseError(f"{self.path} is corrupt or not a database: {exc}") from exc
        if problem is not None:
            raise DatabaseError(f"{self.path} is corrupt (quick_check: {problem}); restore it from a backup")
        if (int(row[0]) if row else 0) == 0 and tables:
            raise DatabaseError(f"{self.path} is not an eslserver database (it has the tables "
                                f"{', '.join(tables[:5])}{', …' if len(tables) > 5 else ''} and no schema version)")

    @staticmethod
    async def _quick_check(conn: aiosqlite.Connection) -> str | None:
        rows = await conn.execute_fetchall("PRAGMA quick_check(5)")
        found = [line.strip() for r in rows for line in str(r[0]).splitlines()]
        if found == ["ok"]:
            return None
        # one line for a one-line error: without SQLite's "*** in database main ***" headers
        return "; ".join(line for line in found if line and not line.startswith("***"))

    async def quick_check(self) -> str | None:
        """SQLite's ``quick_check`` on a connection of its own, so that neither writes nor the
        API's reads wait for it (it reads the whole file; its page cache starts empty, so it
        reads the disk, not what an older check cached): None when the file is sound, else
        the first problems found (raises when it cannot run)."""
        if self._writer is None:
            raise DatabaseError(f"database {str(self.path)!r} is not open")
        conn = await self._connect()
        try:
            await conn.execute("PRAGMA query_only = ON")
            return await self._quick_check(conn)
        finally:
            await conn.close()

    async def probe_write(self) -> None:
        """One small write transaction (the schema version, rewritten as it is), so that
        health learns that writes work again without waiting for the next real one."""
        async with self.transaction() as conn:
            row = await conn.fetchone("PRAGMA user_version")
            await conn.execute(f"PRAGMA user_version = {int(row[0]) if row else 0}")

    async def _migrate(self, conn: aiosqlite.Connection) -> None:
        async with conn.execute("PRAGMA user_version") as cur:
            row = await cur.fetchone()
        current = int(row[0]) if row else 0
        if current > SCHEMA_VERSION:
            raise DatabaseError(f"{self.path}: schema version {current} is newer than this eslserver "
                                f"({SCHEMA_VERSION}); upgrade eslserver")
        for version, name, sql in migrations("sqlite"):
            if version <= current:
                continue
            log.info("applying migration %s to %s", name, self.path)
            try:
                # one script = one transaction: all of a migration or none of it
                await conn.executescript(f"BEGIN IMMEDIATE;\n{sql}\nPRAGMA user_version = {version};\nCOMMIT;")
            except Exception as exc:
                if conn.in_transaction:
                    await conn.execute("ROLLBACK")
                raise DatabaseError(f"{self.path}: migration {name} failed: {exc}") from exc

    async def backup_to(self, target: Path) -> None:
        """A consistent copy of the committed database in the new file `target` (created 0600),
        through SQLite's online backup API on the read connection: one read transaction, so
        writers go on meanwhile and the copy is one moment of the database, whatever is in
        the WAL (a copy of the file alone would miss what the WAL holds)."""
        if self._reader is None:
            raise DatabaseError(f"database {str(self.path)!r} is not open")
        if not create_private(target):
            raise DatabaseError(f"backup target {str(target)!r} already exists")
        copy = await aiosqlite.connect(target, isolation_level=None)
        try:
            await self._reader.backup(copy)
            await copy.execute("PRAGMA journal_mode = DELETE")  # one self-contained file
        finally:
            await copy.close()

    async def compact(self) -> None:
        """Rewrite the file without its free pages (``VACUUM``) and fold the WAL into it: after
        secrets were replaced, their old bytes are gone from the disk file, not merely
        unlinked. Takes as long as copying the database; meant for a one-time upgrade step."""
        async with self._lock:
            await self.writer.execute("VACUUM")
            await self.writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    async def close(self) -> None:
        """Close both connections; safe to call twice."""
        self._conn = None
        for attr in ("_reader", "_writer"):
            conn = getattr(self, attr)
            setattr(self, attr, None)
            if conn is not None:
                await conn.close()

    @property
    def writer(self) -> aiosqlite.Connection:
        if self._writer is None:
            raise DatabaseError(f"database {str(self.path)!r} is not open")
        return self._writer

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[SqliteConnection]:
        """A write transaction (BEGIN IMMEDIATE … COMMIT); rolled back if the block raises."""
        async with self._lock:
            conn = self.writer
            if self._conn is None:
                raise DatabaseError(f"database {str(self.path)!r} is not open")
            try:
                await _finish_even_if_cancelled(conn.execute("BEGIN IMMEDIATE"), conn)
            except sqlite3.Error as exc:
                self._fault(exc)
                raise
            self._after_commit = []
            try:
                yield self._conn
            except BaseException as exc:
                self._after_commit = None
                self._fault(exc)
                if conn.in_transaction:
                    await conn.execute("ROLLBACK")
                raise
            try:
                await _finish_even_if_cancelled(conn.execute("COMMIT"), conn)
                callbacks = self._after_commit
            except sqlite3.Error as exc:
                self._fault(exc)
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        await conn.execute("ROLLBACK")
                raise
            finally:
                self._after_commit = None
            self._committed(callbacks)

    async def read(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """Rows from a query on the read connection (sees committed data only)."""
        if self._reader is None:
            raise DatabaseError(f"database {str(self.path)!r} is not open")
        # one call into the connection's thread: a statement left open between an execute and
        # its fetch would let other readers' queries run inside its older snapshot
        try:
            return list(await self._reader.execute_fetchall(sql, params))
        except sqlite3.Error as exc:
            self._fault(exc)
            raise

    def _fault(self, exc: BaseException | None) -> None:
        if exc is None or isinstance(exc, sqlite3.Error):
            super()._fault(exc)


async def _finish_even_if_cancelled(statement: Awaitable[Any], conn: aiosqlite.Connection) -> None:
    """Run a BEGIN or COMMIT to its end even when the task awaiting it is cancelled (a client
    gone, a shutdown): the statement runs in aiosqlite's thread whatever happens here, and a
    BEGIN that went through behind a cancelled await would leave the one writer connection
    inside a transaction, failing every later write with "cannot start a transaction within a
    transaction". On cancellation: wait for the statement, roll back what it left open, go on
    with the cancellation."""
    task = asyncio.ensure_future(statement)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await task
            if conn.in_transaction:
                await conn.execute("ROLLBACK")
        raise

