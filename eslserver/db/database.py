"""The database, whichever engine holds it: what the storage layer (`eslserver.store`) and
the rest of the server see of it.

Two engines sit behind the same interface: SQLite (`eslserver.db.sqlite`, the embedded
default: one file, one server) and PostgreSQL (`eslserver.db.postgres`, for a chain and for
several server instances on one database). Statements are written once, with ``?``
placeholders, in the SQL both engines understand; the PostgreSQL engine numbers the
placeholders. Where the two really differ (a JSON field, the list of tables) a store module
asks `Connection.engine` / `Database.engine`, never the type of an object.

A `Database` gives write transactions (`transaction`: one at a time per process, so
coroutines never interleave statements inside each other's transactions; a transaction that
returned is durable) and reads of committed data (`read`). A `Connection` is the open
transaction: `execute` (how many rows changed), `executemany`, `fetchall`, `fetchone`.
"""

from __future__ import annotations

import abc
import contextlib
import re
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any, Final, Protocol

__all__ = ["ENGINES", "SCHEMA_VERSION", "Connection", "Database", "DatabaseError", "Reader", "Row",
           "escape_like", "fetchall", "fetchone", "is_conflict", "is_database_url", "migrations", "open_database",
           "placeholders", "redact", "row_lock"]

ENGINES: Final = ("sqlite", "postgresql")

_PASSWORD_PARAM = re.compile(r"([?&]password=)[^&#]*", re.IGNORECASE)
_MIGRATION_RE = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
_PACKAGES: Final = {"sqlite": "eslserver.db.migrations", "postgresql": "eslserver.db.migrations_postgresql"}


class DatabaseError(RuntimeError):
    """The database cannot be opened or migrated (names the file or server and the step)."""


class Row(Protocol):
    """A result row: by column name (``row["mac"]``) or position (``row[0]``); ``dict(row)``."""

    def __getitem__(self, key: str | int, /) -> Any: ...

    def keys(self) -> Iterable[str]: ...


def migrations(engine: str = "sqlite") -> list[tuple[int, str, str]]:
    """(version, file name, SQL) of every migration shipped for `engine`, in order. SQLite's
    start at 1; PostgreSQL's start at its baseline (the whole schema of the first release that
    had the engine) and go on in step with SQLite's: version N is the same schema on both."""
    out: list[tuple[int, str, str]] = []
    for entry in resources.files(_PACKAGES[engine]).iterdir():
        match = _MIGRATION_RE.match(entry.name)
        if match:
            out.append((int(match.group(1)), entry.name, entry.read_text(encoding="utf-8")))
    out.sort()
    first = 1 if engine == "sqlite" else (out[0][0] if out else 1)
    for expected, (version, name, _) in enumerate(out, start=first):
        if version != expected:
            raise DatabaseError(f"{engine} migration {name}: expected version {expected:04d}")
    return out


SCHEMA_VERSION: Final = len(migrations("sqlite"))


class Connection(abc.ABC):
    """An open write transaction (`Database.transaction`); statements use ``?`` placeholders."""

    engine: str
    """``sqlite`` or ``postgresql``: for the few statements the engines spell differently."""

    @abc.abstractmethod
    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement; how many rows it inserted, changed or deleted."""

    @abc.abstractmethod
    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """Run one statement once per row of parameters (one call into the engine)."""

    @abc.abstractmethod
    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """The rows of a query (or of a statement's ``RETURNING``), seeing this transaction's writes."""

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        """The first row of `fetchall`, or None."""
        return next(iter(await self.fetchall(sql, params)), None)

    @property
    @abc.abstractmethod
    def in_transaction(self) -> bool:
        """False once the engine rolled the whole transaction back by itself (SQLite does on a
        full disk): then nothing of it will commit."""


class Database(abc.ABC):
    """The server's database. `open` before use, `close` after (or ``async with``)."""

    engine: str
    """``sqlite`` or ``postgresql``."""
    integrity_error: type[Exception]
    """What the engine raises when a constraint refuses a write (a unique name taken)."""
    errors: tuple[type[Exception], ...]
    """What the engine raises when the database (not the statement) fails: a full disk, a lock
    held too long, a lost connection."""

    def __init__(self) -> None:
        self._after_commit: list[Callable[[], None]] | None = None
        self.on_fault: Callable[[BaseException | None], None] | None = None
        """Told of every error of a transaction or a read (what it means for health is
        `eslserver.health.database_fault`'s business), and of every commit (None): the server's
        health follows the database without parsing its log."""

    # -- lifecycle ---------------------------------------------------------------------
    @abc.abstractmethod
    async def open(self) -> Database:
        """Connect, check and migrate; `DatabaseError` names what is wrong."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Close every connection; safe to call twice."""

    async def __aenter__(self) -> Database:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    @abc.abstractmethod
    def location(self) -> str:
        """Where the data is, for logs and errors (a file path, or a URL without its password)."""

    @property
    def path(self) -> Path | None:
        """The database file (SQLite); None for a database on a server."""
        return None

    # -- transactions ------------------------------------------------------------------
    @abc.abstractmethod
    def transaction(self) -> AbstractAsyncContextManager[Connection]:
        """A write transaction, committed when the block ends, rolled back if it raises."""

    @asynccontextmanager
    async def savepoint(self, conn: Connection) -> AsyncIterator[None]:
        """A part of the open transaction that fails alone: if the block raises, its writes and
        its `after_commit` callbacks are undone, and the exception goes on. Some errors leave no
        savepoint to go back to (SQLite rolls a whole transaction back by itself on a full disk
        or an I/O error; a lost PostgreSQL connection took its transaction with it): then the
        block's own exception goes on as it was (the caller sees ``conn.in_transaction`` false,
        and that nothing of it will commit)."""
        pending = self._pending()
        mark = len(pending)
        await conn.execute("SAVEPOINT part")
        try:
            yield
        except BaseException:
            if conn.in_transaction:
                with contextlib.suppress(*self.errors):
                    await conn.execute("ROLLBACK TO part")
                    await conn.execute("RELEASE part")
            del pending[mark:]
            raise
        await conn.execute("RELEASE part")

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Call `callback` once the open transaction has committed, never if it rolls back:
        what counts database changes (metrics) then counts only what really happened."""
        self._pending().append(callback)

    def _pending(self) -> list[Callable[[], None]]:
        if self._after_commit is None:
            raise DatabaseError("no transaction is open (use `async with db.transaction()`)")
        return self._after_commit

    def _committed(self, callbacks: list[Callable[[], None]]) -> None:
        self._fault(None)
        for callback in callbacks:
            callback()

    def _fault(self, exc: BaseException | None) -> None:
        if self.on_fault is not None:
            self.on_fault(exc)

    # -- reads -------------------------------------------------------------------------
    @abc.abstractmethod
    async def read(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """Rows of a query on committed data (never inside a transaction of this process)."""

    async def read_one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        rows = await self.read(sql, params)
        return rows[0] if rows else None

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """`read`: a `Database` answers a `Reader`'s questions with committed data."""
        return await self.read(sql, params)

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        return await self.read_one(sql, params)

    # -- several instances -------------------------------------------------------------
    async def lead(self, role: str) -> bool:
        """True while this process is the one instance that runs `role` (the schedule loop,
        retention): asked again before each round. One server per SQLite file: always."""
        return True

    async def broadcast(self, channel: str, payload: str) -> None:
        """Tell the other instances on this database (`listen`); nobody else to tell on SQLite."""

    async def listen(self, channel: str, callback: Callable[[str], None]) -> None:
        """Call `callback` with what other instances `broadcast` on `channel`."""

    # -- housekeeping ------------------------------------------------------------------
    async def quick_check(self) -> str | None:
        """None when the stored data is sound, else the first problems found (SQLite's
        ``quick_check``; a database server checks its own pages, so there: None)."""
        return None

    @abc.abstractmethod
    async def probe_write(self) -> None:
        """One small write transaction, so that health learns that writes work again without
        waiting for the next real one."""

    async def compact(self) -> None:
        """Rewrite the stored data without its free space, after secrets were replaced."""

    async def backup_to(self, target: Path) -> None:
        """A consistent copy of the committed database in the new file `target`."""
        raise DatabaseError(f"{self.location}: back up a {self.engine} database with its own tools "
                            "(pg_dump), not `esl backup`")


Reader = Connection | Database
"""Where a read runs: an open transaction (sees its own writes), or the `Database` (committed
data only). Storage operations that both a transaction and a plain reader need take either."""


async def fetchall(conn: Reader, sql: str, params: Sequence[Any] = ()) -> list[Row]:
    """Rows from a query inside a transaction, or from the committed data when `conn` is the
    `Database`."""
    return await conn.fetchall(sql, params)


async def fetchone(conn: Reader, sql: str, params: Sequence[Any] = ()) -> Row | None:
    """The first row of `fetchall`, or None."""
    return await conn.fetchone(sql, params)


def row_lock(conn: Reader, *, skip_locked: bool = False, of: str = "") -> str:
    """The clause that locks the rows a query of an open transaction reads until it commits,
    so that server instances sharing a PostgreSQL database take turns on them (``FOR UPDATE``,
    ``OF`` the tables named in `of`; `skip_locked`: rows another instance holds are left out
    instead of waited for). Empty on SQLite, where one server writes one transaction at a
    time, and for a read of committed data."""
    if not isinstance(conn, Connection) or conn.engine != "postgresql":
        return ""
    return " FOR UPDATE" + (f" OF {of}" if of else "") + (" SKIP LOCKED" if skip_locked else "")


def is_conflict(exc: BaseException) -> bool:
    """True for a transaction the database aborted because another one got in its way (a
    deadlock or a serialisation failure between server instances): running it again is the cure."""
    return getattr(exc, "sqlstate", None) in ("40001", "40P01")


def placeholders(items: Iterable[object]) -> str:
    """``?, ?, ?`` for an IN (...) list; ``NULL`` for none (``IN (NULL)`` matches nothing, as an
    empty list would, and PostgreSQL refuses ``IN ()``)."""
    return ", ".join("?" for _ in items) or "NULL"


def escape_like(text: str) -> str:
    """`text` matched literally by ``LIKE ? ESCAPE '\\'`` (its ``%``, ``_`` and ``\\`` escaped);
    add the wildcards around it."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def redact(url: str) -> str:
    """`url` without its password (``user:***@``, ``password=***``), for logs and errors.

    Works on the text, not on a parse of it: the URLs that most need showing are the wrong
    ones (a port that is not a number, several hosts, ``[::1]``), which `urlsplit` refuses or
    rewrites, and an error about a URL must never become a traceback that prints it whole."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    authority, tail = rest[:end], rest[end:]
    userinfo, at, hosts = authority.rpartition("@")
    if at and ":" in userinfo:
        authority = f"{userinfo.split(':', 1)[0]}:***@{hosts}"
    return f"{scheme}://{authority}" + _PASSWORD_PARAM.sub(r"\1***", tail)


def is_database_url(target: str | Path) -> bool:
    """True for a database server's URL (``postgresql://…``, ``postgres://…``)."""
    return isinstance(target, str) and target.split("://", 1)[0] in ("postgresql", "postgres")


def open_database(target: str | Path) -> Database:
    """The (unopened) database at `target`: a ``postgresql://`` URL, or an SQLite file path."""
    if is_database_url(target):
        from eslserver.db.postgres import PostgresDatabase
        return PostgresDatabase(str(target))
    if isinstance(target, str) and "://" in target:
        raise DatabaseError(f"database: expected a postgresql:// URL or a file path, got {target.split('://')[0]}://…")
    from eslserver.db.sqlite import SqliteDatabase
    return SqliteDatabase(target)

