"""The PostgreSQL engine: asyncpg, a small pool, the same statements as SQLite.

For a chain and for several server instances on one database. asyncpg because throughput
decides here: it speaks PostgreSQL's binary protocol itself (no libpq, no text parsing of
every value), prepares each statement once per connection and caches it, and runs an
``executemany`` as one pipelined round trip; psycopg's async mode goes through libpq and its
text format and costs several times the CPU per row in published and our own measurements.

Statements are written with ``?`` placeholders, as for SQLite; `numbered` turns them into
``$1, $2, …`` once per statement text (cached). Column types are the SQLite ones made
strict: TEXT, BIGINT, BYTEA; times stay ISO 8601 UTC text and money decimal text, so the
two engines store the same values and `esl db migrate-to` copies them as they are.

Writes of one process go through one transaction at a time, as with SQLite (so coroutines
never interleave statements inside each other's transactions); reads take any pooled
connection and see committed data. Each transaction commits durably (``synchronous_commit``
is the server's, on by default). Migrations run under an advisory lock, so instances
started together migrate once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final

import asyncpg

from eslserver.db.database import SCHEMA_VERSION, Connection, Database, DatabaseError, Row, migrations, redact

__all__ = ["PostgresConnection", "PostgresDatabase", "numbered", "redact"]

log = logging.getLogger(__name__)

_MIGRATION_LOCK: Final = 0x45534C00  # "ESL\0": the advisory lock migrations run under
_LEAD_LOCKS: Final = 0x45534C01  # "ESL\1": the advisory locks of `lead`, one per role
_VERSION_TABLE: Final = "esl_schema_version"
_TOKEN = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|\?")


@functools.lru_cache(maxsize=2048)
def numbered(sql: str) -> str:
    """`sql` with its ``?`` placeholders numbered ``$1, $2, …`` (not those inside quotes)."""
    count = 0

    def number(match: re.Match[str]) -> str:
        nonlocal count
        if match.group(0) != "?":
            return match.group(0)
        count += 1
        return f"${count}"

    return _TOKEN.sub(number, sql)


async def _finish(statement: Awaitable[Any]) -> None:
    """Run a BEGIN or COMMIT to its end even when the task awaiting it is cancelled (a client
    gone, a shutdown), then go on with the cancellation: a COMMIT cut off half-way would leave
    the connection busy and nobody knowing whether the transaction committed."""
    task = asyncio.ensure_future(statement)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await task
        raise


async def _rollback(raw: asyncpg.Connection) -> bool:
    """Roll back the open transaction; False when the connection cannot (a statement of it was
    cancelled half-way, or it is gone): then it must not be used again."""
    try:
        await _finish(asyncio.wait_for(raw.execute("ROLLBACK"), 10))
    except Exception:  # noqa: BLE001 - whatever the reason, this connection is done
        return False
    return True


def _closed(raw: asyncpg.Connection) -> bool:
    """True when the connection under `raw` is gone: closed, or already taken back by the pool
    (asyncpg does that the moment the server ends a pooled connection, and every call on it
    then raises `InterfaceError`)."""
    try:
        return raw.is_closed()
    except asyncpg.InterfaceError:
        return True


async def _statement(raw: asyncpg.Connection, run: Callable[[], Awaitable[Any]]) -> Any:
    """`run()`, a statement on `raw`. On a connection the server ended between two statements
    asyncpg raises "connection has been released back to the pool" (an `InterfaceError`, as
    for a mistake of the caller); raise a lost connection (SQLSTATE 08003) instead, so that
    health sees the database at fault and a message that failed so is retried, not rejected."""
    try:
        return await run()
    except asyncpg.InterfaceError as exc:
        if not _closed(raw):
            raise
        raise asyncpg.ConnectionDoesNotExistError(f"the connection to the database was lost ({exc})") from exc


def _terminate(raw: asyncpg.Connection) -> None:
    """Close `raw` at once (no goodbye to the server); nothing to do if it is gone already."""
    with contextlib.suppress(asyncpg.InterfaceError):  # the pool took it back when it closed
        raw.terminate()


def _count(status: str) -> int:
    """The row count at the end of a command status (``UPDATE 3``, ``INSERT 0 1``)."""
    tail = status.rsplit(" ", 1)[-1]
    return int(tail) if tail.isdigit() else 0


class PostgresConnection(Connection):
    """The open transaction on one pooled connection."""

    engine = "postgresql"

    def __init__(self, raw: asyncpg.Connection) -> None:
        self.raw = raw

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        if params:
            return _count(await _statement(self.raw, lambda: self.raw.execute(numbered(sql), *params)))
        return _count(await _statement(self.raw, lambda: self.raw.execute(numbered(sql))))

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        batch = list(rows)
        if batch:
            await _statement(self.raw, lambda: self.raw.executemany(numbered(sql), batch))

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return list(await _statement(self.raw, lambda: self.raw.fetch(numbered(sql), *params)))

    @property
    def in_transaction(self) -> bool:
        """False also once the connection is lost: the server rolled the transaction back."""
        return not _closed(self.raw) and self.raw.is_in_transaction()


class PostgresDatabase(Database):
    """The server's database on a PostgreSQL server (`url`: ``postgresql://user@host/db``)."""

    engine = "postgresql"
    integrity_error = asyncpg.IntegrityConstraintViolationError
    errors = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.exceptions.InternalClientError)
    """`InternalClientError` too: asyncpg raises it when the server's last words on a connection
    (``terminating connection``) arrive while no statement runs, at the next statement."""

    def __init__(self, url: str, *, pool_size: int = 4) -> None:
        super().__init__()
        self.url = url
        self._pool: asyncpg.Pool | None = None
        self._pool_size = pool_size
        self._lock = asyncio.Lock()
        self._leads: dict[str, asyncpg.Connection] = {}
        self._listener: asyncpg.Connection | None = None

    @property
    def location(self) -> str:
        return redact(self.url)

    async def open(self) -> PostgresDatabase:
        try:
            self._pool = await asyncpg.create_pool(self.url, min_size=1, max_size=self._pool_size,
                                                   command_timeout=60)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, ValueError) as exc:
            raise DatabaseError(f"cannot open database {self.location}: {exc}") from exc
        try:
            await self._migrate()
        except Exception as exc:
            await self.close()
            if isinstance(exc, self.errors):  # a user who may not create tables, a lost connection
                raise DatabaseError(f"cannot open database {self.location}: {exc}") from exc
            raise
        return self

    async def _migrate(self) -> None:
        assert self._pool is not None
        steps = migrations("postgresql")
        if not steps or steps[-1][0] != SCHEMA_VERSION:
            raise DatabaseError(f"this eslserver's PostgreSQL migrations end at "
                                f"{steps[-1][0] if steps else 0}, its schema is version {SCHEMA_VERSION}")
        async with self._pool.acquire() as conn:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
                current = await self._version(conn)
                if current > SCHEMA_VERSION:
                    raise DatabaseError(f"{self.location}: schema version {current} is newer than this eslserver "
                                        f"({SCHEMA_VERSION}); upgrade eslserver")
                if 0 < current < steps[0][0] - 1:
                    raise DatabaseError(f"{self.location}: schema version {current} predates PostgreSQL support")
                for version, name, sql in steps:
                    if version <= current:
                        continue
                    log.info("applying migration %s to %s", name, self.location)
                    try:
                        async with conn.transaction():  # a savepoint: the error names the step
                            await conn.execute(sql)
                    except asyncpg.PostgresError as exc:
                        raise DatabaseError(f"{self.location}: migration {name} failed: {exc}") from exc
                    await conn.execute(f"UPDATE {_VERSION_TABLE} SET version = $1", version)

    async def _version(self, conn: asyncpg.Connection) -> int:
        """The schema version (0 for an empty database); refuses another program's database."""
        exists = await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", _VERSION_TABLE)
        if exists:
            return int(await conn.fetchval(f"SELECT version FROM {_VERSION_TABLE}"))
        tables = [r[0] for r in await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() ORDER BY tablename")]
        if tables:
            raise DatabaseError(f"{self.location} is not an eslserver database (it has the tables "
                                f"{', '.join(tables[:5])}{', …' if len(tables) > 5 else ''} and no schema version)")
        await conn.execute(f"CREATE TABLE {_VERSION_TABLE} (version BIGINT NOT NULL)")
        await conn.execute(f"INSERT INTO {_VERSION_TABLE} (version) VALUES (0)")
        return 0

    # -- several instances -------------------------------------------------------------
    async def lead(self, role: str) -> bool:
        """An advisory lock per role, held by a connection of its own for as long as it lives:
        the instance holding it runs the role; when that instance dies, its connection goes,
        PostgreSQL drops the lock and the next instance that asks takes the role over."""
        conn = self._leads.get(role)
        if conn is not None and not conn.is_closed():
            return True
        self._leads.pop(role, None)
        try:
            conn = await asyncpg.connect(self.url, timeout=10)
        except (*self.errors, asyncio.TimeoutError):
            return False
        try:
            held = await conn.fetchval("SELECT pg_try_advisory_lock($1, hashtext($2))", _LEAD_LOCKS, role)
        except self.errors:
            held = False
        except BaseException:  # cancelled (the server stops): the connection must not outlive it
            conn.terminate()
            raise
        if not held or self._pool is None:  # not ours, or the database closed meanwhile
            conn.terminate()
            return False
        log.info("this instance now runs %s", role)
        self._leads[role] = conn
        return True

    async def broadcast(self, channel: str, payload: str) -> None:
        await self.pool.execute("SELECT pg_notify($1, $2)", channel, payload)

    async def listen(self, channel: str, callback: Callable[[str], None]) -> None:
        """LISTEN on a connection of its own (opened at the first call, kept until `close`)."""
        if self._listener is None or self._listener.is_closed():
            self._listener = await asyncpg.connect(self.url, timeout=10)
        await self._listener.add_listener(channel, lambda _conn, _pid, _channel, payload: callback(payload))

    async def close(self) -> None:
        for conn in [*self._leads.values(), *([self._listener] if self._listener is not None else [])]:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 5)
        self._leads.clear()
        self._listener = None
        pool, self._pool = self._pool, None
        if pool is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pool.close(), 10)
            pool.terminate()

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise DatabaseError(f"database {self.location} is not open")
        return self._pool

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[PostgresConnection]:
        """A write transaction (BEGIN … COMMIT); rolled back if the block raises. A connection
        whose statement was cancelled half-way, or that cannot roll back, is closed rather
        than handed to the next transaction (the server rolls back what it left open)."""
        async with self._lock:
            try:
                raw = await self.pool.acquire()
            except self.errors as exc:
                self._fault(exc)
                raise
            clean = False
            try:
                try:
                    await _finish(_statement(raw, lambda: raw.execute("BEGIN")))
                except self.errors as exc:
                    self._fault(exc)
                    raise
                self._after_commit = []
                try:
                    yield PostgresConnection(raw)
                except BaseException as exc:
                    self._after_commit = None
                    self._fault(exc)
                    clean = await _rollback(raw)
                    raise
                try:
                    await _finish(_statement(raw, lambda: raw.execute("COMMIT")))
                    callbacks = self._after_commit
                except BaseException as exc:
                    self._fault(exc)
                    clean = not _closed(raw) and (not raw.is_in_transaction() or await _rollback(raw))
                    raise
                finally:
                    self._after_commit = None
                clean = True
                self._committed(callbacks)
            finally:
                await self._release(raw, clean)

    async def _release(self, raw: asyncpg.Connection, clean: bool) -> None:
        if not clean:
            _terminate(raw)
        try:
            await asyncio.shield(self.pool.release(raw, timeout=10))
        except Exception:  # noqa: BLE001 - a broken connection: the pool makes a new one
            _terminate(raw)

    async def read(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        try:
            async with self.pool.acquire() as raw:
                return list(await _statement(raw, lambda: raw.fetch(numbered(sql), *params)))
        except self.errors as exc:
            self._fault(exc)
            raise

    def _fault(self, exc: BaseException | None) -> None:
        if exc is None or isinstance(exc, self.errors):
            super()._fault(exc)

    async def probe_write(self) -> None:
        async with self.transaction() as conn:
            await conn.execute(f"UPDATE {_VERSION_TABLE} SET version = version")
