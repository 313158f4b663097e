"""Moving a store's SQLite database to PostgreSQL, all of it or nothing, and proving the copy
(``esl db migrate-to``).

A store outgrows its one SQLite file when a chain wants several server instances on one
database. The move must lose nothing the server is trusted with: price history (the law asks
for it), the label keys (without them every label must be paired again by hand) and the token
hashes. So the copy is one PostgreSQL transaction that first finds every table empty (a
target that holds anything is refused: two stores' data are never merged), and it commits
only after checking, inside that transaction, what it wrote: row counts of every table, and
SHA-256 digests over the price history and the keys read back from PostgreSQL against those
of the rows read from SQLite. A mismatch rolls everything back.

The source is read inside one SQLite write transaction: one consistent moment of it, and no
other process (a server left running on it) can change it meanwhile; what such a process
tries to write waits, then fails, rather than being lost after the copy.

Label keys move sealed, as they are: they open under the same secret key
(`eslserver.keyvault`), so the server started on PostgreSQL needs the data directory's
``secret.key`` (or the same ``ESL_SECRET_KEY``). Keys an older release stored in clear are
refused: the server seals them at its first start on the SQLite file, and only sealed keys
should ever reach another database.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from eslserver.db.database import SCHEMA_VERSION, Connection, Reader, Row, is_database_url, redact
from eslserver.db.postgres import PostgresDatabase
from eslserver.db.sqlite import SqliteDatabase
from eslserver.store import jobs as job_rows
from eslserver.store import labels as label_rows
from eslserver.store import tables

__all__ = ["MigrationError", "MigrationReport", "Progress", "TargetNotEmptyError", "migrate_to"]

Progress = Callable[[str, int, int], None]
"""Told ``(table, rows copied so far, rows in the table)`` as a table starts (0 copied) and
after each batch."""

_BATCH: Final = 500


class MigrationError(RuntimeError):
    """The database cannot be moved, or the copy does not match the source (names the table and
    what differs; never a key or a value)."""


class TargetNotEmptyError(MigrationError):
    """The target database already holds rows: it is never merged into."""


@dataclass(frozen=True)
class _Identical:
    """Rows that must be identical on both sides, compared by a SHA-256 over them in key
    order: `columns` of `table` (all of them when None), of the rows `only` accepts."""

    table: str
    what: str
    columns: tuple[str, ...] | None = None
    only: Callable[[Mapping[str, Any]], bool] | None = None


_IDENTICAL: Final = (
    _Identical("price_history", "price history"),
    _Identical("labels", "label keys (labels.label_key)", ("mac", "label_key")),
    _Identical("jobs", "pairing keys (jobs.command of pair jobs)", ("id", "command"),
               only=lambda row: row["kind"] == "pair"),
    _Identical("secrets_check", "the secret key's check value (secrets_check)"),
)


@dataclass(frozen=True)
class MigrationReport:
    """What was copied: rows per table (in the order they were copied) and how long it took."""

    source: str
    target: str
    """The target's URL without its password."""
    rows: dict[str, int]
    seconds: float
    schema_version: int = SCHEMA_VERSION
    identical: tuple[str, ...] = field(default=tuple(c.what for c in _IDENTICAL))
    """What was proved identical row for row (besides every table's row count)."""

    @property
    def total_rows(self) -> int:
        return sum(self.rows.values())


class _Digest:
    """SHA-256 over rows, each value framed by its type and length, so that values that print
    alike (``1`` and ``'1'``, ``b''`` and NULL) or rows that concatenate alike never match."""

    def __init__(self, check: _Identical, names: Sequence[str]) -> None:
        self.check = check
        self.names = tuple(check.columns or names)
        """The columns hashed, in this order on both sides (the source's order of all of them when
        the check names none: a column order that differs between the engines changes nothing)."""
        self.hash = hashlib.sha256()
        self.rows = 0

    def add(self, row: Mapping[str, Any] | Row) -> None:
        if self.check.only is not None and not self.check.only(row):
            return
        self.rows += 1
        for name in self.names:
            self.hash.update(_framed(row[name]))

    def hexdigest(self) -> str:
        return self.hash.hexdigest()


def _framed(value: Any) -> bytes:
    if value is None:
        return b"N"
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, int):
        data, tag = str(value).encode(), b"I"
    elif isinstance(value, str):
        data, tag = value.encode("utf-8", "surrogatepass"), b"S"
    elif isinstance(value, (bytes, bytearray, memoryview)):
        data, tag = bytes(value), b"B"
    elif isinstance(value, float):
        data, tag = repr(value).encode(), b"F"
    else:
        raise MigrationError(f"cannot compare a value of type {type(value).__name__}")
    return tag + len(data).to_bytes(8, "big") + data


_FITS: Final = {"text": (str,), "character varying": (str,), "bigint": (int,), "integer": (int,),
                "smallint": (int,), "bytea": (bytes, bytearray, memoryview)}
"""The Python values a PostgreSQL column type takes as they are (others: not checked)."""


def _check_fits(table: str, names: Sequence[str], types: Mapping[str, str], key: Sequence[str],
                rows: Sequence[Sequence[Any]]) -> None:
    """Refuse, naming the table, the row's key and the column (never the value), a value that
    PostgreSQL would not store as it is: SQLite stores any value in any column, PostgreSQL
    only values of the column's type, and text without NUL characters."""
    for values in rows:
        for name, value in zip(names, values):
            if value is None:
                continue
            fits = _FITS.get(types[name])
            if fits is not None and (not isinstance(value, fits) or isinstance(value, bool)):
                why = f"a {type(value).__name__}"
            elif isinstance(value, str) and "\x00" in value:
                why = "a NUL character in text"
            else:
                continue
            where = ", ".join(f"{k}={values[names.index(k)]!r}" for k in key)
            raise MigrationError(f"{table} row {where}: column {name} holds {why}, which PostgreSQL's "
                                 f"{types[name]} column cannot take as it is; correct the row in SQLite first")


def _copy_order(refs: Mapping[str, set[str]]) -> list[str]:
    """The tables, each after those its foreign keys point at (by name where free to choose)."""
    order: list[str] = []
    done: set[str] = set()
    pending = sorted(refs)
    while pending:
        ready = [t for t in pending if refs[t] & set(refs) <= done]
        if not ready:
            raise MigrationError(f"the foreign keys of tables {', '.join(pending)} form a cycle: no order to copy "
                                 "them in")
        order.append(ready[0])
        done.add(ready[0])
        pending.remove(ready[0])
    return order


async def _refuse_clear_keys(source: SqliteDatabase) -> None:
    labels = await label_rows.keys_in_clear(source)
    pairings = await job_rows.pair_keys_in_clear(source)
    if labels or pairings:
        raise MigrationError(f"{source.location} holds {len(labels)} label keys and {len(pairings)} pairing keys "
                             "in clear (an older release's): start the server once on it first (it seals them "
                             "under the secret key), then migrate")


async def _same_schema(src: Reader, dst: Reader) -> list[str]:
    """The data tables, the same on both sides (else `MigrationError` naming the difference)."""
    mine, theirs = set(await tables.data_tables(src)), set(await tables.data_tables(dst))
    if mine != theirs:
        raise MigrationError(f"the schemas differ (both at version {SCHEMA_VERSION}): tables only in SQLite: "
                             f"{', '.join(sorted(mine - theirs)) or 'none'}; only in PostgreSQL: "
                             f"{', '.join(sorted(theirs - mine)) or 'none'}")
    return sorted(mine)


async def _refuse_rows(dst: Reader, names: Sequence[str], location: str) -> None:
    occupied = [t for t in names if await tables.has_rows(dst, t)]
    if occupied:
        raise TargetNotEmptyError(
            f"{location} is not empty: table {occupied[0]} already holds rows"
            + (f" (and {', '.join(occupied[1:])})" if occupied[1:] else "")
            + "; migrate-to never merges two stores: give it a new, empty database")


async def migrate_to(source: Path, target_url: str, *, progress: Progress | None = None,
                     batch: int = _BATCH) -> MigrationReport:
    """Copy the SQLite database `source` (an eslserver's ``esl.db``) into the empty PostgreSQL
    database at `target_url`, in one transaction, and check the copy before committing it.

    Both are migrated to this release's schema first, as the server would. The target must
    not hold a row in any table (`TargetNotEmptyError`). `MigrationError` names the table and
    what differs when the copy does not match; then nothing was committed. The server must
    not run on `source` meanwhile (its writes would wait for the copy, then fail)."""
    started = time.monotonic()
    if not is_database_url(target_url):
        scheme = target_url.split("://", 1)[0] + "://…" if "://" in target_url else "no URL"
        raise MigrationError(f"target: expected a postgresql://user@host:port/database URL, got {scheme}")
    source = Path(source)
    if not source.is_file():
        raise MigrationError(f"no eslserver database at {source}")
    async with SqliteDatabase(source) as src_db, PostgresDatabase(target_url) as dst_db:
        await _refuse_clear_keys(src_db)
        async with src_db.transaction() as src, dst_db.transaction() as dst:
            names = await _same_schema(src, dst)
            await tables.lock_for_copy(dst, names)
            await _refuse_rows(dst, names, dst_db.location)
            order = _copy_order({t: await tables.references(dst, t) for t in names})
            counted: dict[str, tuple[int, int]] = {}
            digests: dict[str, _Digest] = {}
            for table in order:
                check = next((c for c in _IDENTICAL if c.table == table), None)
                counted[table] = await _copy_table(src, dst, table, check, digests, progress, batch)
            await _verify(dst, counted, digests, batch)
    return MigrationReport(source=str(source), target=redact(target_url),
                           rows={table: copied for table, (_, copied) in counted.items()},
                           seconds=time.monotonic() - started)


async def _copy_table(src: Connection, dst: Connection, table: str, check: _Identical | None,
                      digests: dict[str, _Digest], progress: Progress | None, batch: int) -> tuple[int, int]:
    """Copy one table's rows in key order: (rows SQLite counts in it, rows copied). With a
    `check`, its digest (in `digests`) takes each row as it is sent."""
    src_cols, dst_cols = await tables.columns(src, table), await tables.columns(dst, table)
    names = [c.name for c in src_cols]
    if set(names) != {c.name for c in dst_cols}:
        raise MigrationError(f"table {table}: the columns differ: only in SQLite: "
                             f"{', '.join(sorted(set(names) - {c.name for c in dst_cols})) or 'none'}; only in "
                             f"PostgreSQL: {', '.join(sorted({c.name for c in dst_cols} - set(names))) or 'none'}")
    types = {c.name: c.type for c in dst_cols}
    digest = _Digest(check, names) if check is not None else None
    if digest is not None:
        digests[table] = digest
    key = [c.name for c in sorted((c for c in src_cols if c.key), key=lambda c: c.key)]
    total = await tables.row_count(src, table)
    done = 0
    if progress is not None:
        progress(table, 0, total)
    async for rows in tables.read_rows(src, table, names, cols=src_cols, batch=batch):
        values = [tuple(row[n] for n in names) for row in rows]
        _check_fits(table, names, types, key, values)
        await tables.insert_rows(dst, table, names, values)
        if digest is not None:
            for row in rows:
                digest.add(row)
        done += len(values)
        if progress is not None:
            progress(table, done, total)
    await tables.advance_identities(dst, table, dst_cols)
    return total, done


async def _verify(dst: Reader, counted: Mapping[str, tuple[int, int]], digests: Mapping[str, _Digest],
                  batch: int) -> None:
    """Inside the copy's transaction: every table's row count in SQLite (in the same snapshot
    the rows were read in), copied and in PostgreSQL; the digests of the rows that must be
    identical, read back from PostgreSQL."""
    for table, (mine, copied) in counted.items():
        theirs = await tables.row_count(dst, table)
        if not theirs == mine == copied:
            raise MigrationError(f"table {table}: {mine} rows in SQLite, {copied} copied, {theirs} in PostgreSQL")
    for table, sent in digests.items():
        got = _Digest(sent.check, sent.names)
        async for rows in tables.read_rows(dst, table, batch=batch):
            for row in rows:
                got.add(row)
        if (got.rows, got.hexdigest()) != (sent.rows, sent.hexdigest()):
            raise MigrationError(f"table {table}: {sent.check.what} differ between SQLite and PostgreSQL "
                                 f"({sent.rows} rows compared in SQLite, {got.rows} in PostgreSQL; their SHA-256 "
                                 "digests differ)")
