"""The two database engines themselves: what the storage layer relies on, checked on a real
SQLite file and a real PostgreSQL database, so that a store module written once behaves the
same on both.

- Schema parity: whatever migrations exist, both engines migrate to the same tables, columns,
  primary keys, unique constraints and indexes, and PostgreSQL's versions are SQLite's.
- `numbered` (``?`` → ``$n``) as a property: in order, never inside a string or identifier.
- The `Database` contract on both engines: rollback and `after_commit`, savepoints, row
  counts, ``RETURNING``, ``IN (NULL)``, `integrity_error`, reads that see committed data only.
- PostgreSQL's own cases: a statement cancelled half-way, migrations run once (also by two
  instances starting together), another program's database refused, lost connections, and
  passwords kept out of locations and errors.
- Health: real driver errors mapped to the right reason; `esl serve` on a database that does
  not answer, or is not PostgreSQL, ends in one line.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import secrets
import subprocess
import sys
import time
import traceback
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import hypothesis
import hypothesis.strategies as st
import pytest

from eslserver.db.database import SCHEMA_VERSION, Database, DatabaseError, migrations, placeholders
from eslserver.db.postgres import PostgresDatabase, numbered, redact
from eslserver.db.sqlite import SqliteDatabase
from eslserver.health import database_fault
from tests.postgres import ADMIN_URL, engine_db, fresh_database  # noqa: F401  (engine_db: a fixture)

TEMPLATE = "INSERT INTO templates (name, source, version, updated_at) VALUES (?, ?, ?, ?)"
PRICE = ("INSERT INTO price_history (store, sku, price, start_at, reduction, source, recorded_at) "
         "VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id")
CLOSED_PORT = 1
"""Nothing listens on 127.0.0.1:1: a connection there is refused at once."""


def _template(name: str, version: int = 1) -> tuple[Any, ...]:
    return (name, "<svg/>", version, "2026-12-04T19:00:00Z")


def _price(sku: str) -> tuple[Any, ...]:
    return ("s1", sku, "4.99", "2026-12-04T19:00:00Z", 0, "test", "2026-12-04T19:00:00Z")


async def _names(db: Database) -> list[str]:
    return [r["name"] for r in await db.read("SELECT name FROM templates ORDER BY name")]


def _database_name(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


def _as_user(url: str, user: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{user}@{parts.hostname}:{parts.port or 5432}"))


@asynccontextmanager
async def _admin() -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(ADMIN_URL, timeout=10)
    try:
        yield conn
    finally:
        await conn.close()


async def _until(condition: Any, what: str, timeout: float = 5) -> None:
    """Poll the async `condition` until it is true (a server's state seen from outside)."""
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def _running(admin: asyncpg.Connection, database: str, query: str) -> bool:
    return bool(await admin.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND state = 'active' AND query = $2",
        database, query))


# -- 1. schema parity ---------------------------------------------------------------------

Schema = dict[str, Any]


async def _sqlite_schema(db: Database) -> Schema:
    tables = [r[0] for r in await db.read(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
    columns: dict[str, set[str]] = {}
    keys: dict[str, tuple[str, ...]] = {}
    unique: set[tuple[str, tuple[str, ...]]] = set()
    for table in tables:
        info = await db.read("SELECT name, pk FROM pragma_table_info(?)", (table,))
        columns[table] = {r["name"] for r in info}
        keys[table] = tuple(r["name"] for r in sorted(info, key=lambda r: r["pk"]) if r["pk"])
        for index in await db.read("SELECT name FROM pragma_index_list(?) WHERE origin = 'u'", (table,)):
            unique.add((table, await _sqlite_index_columns(db, index["name"])))
    indexes = {r["name"]: (r["tbl_name"], await _sqlite_index_columns(db, r["name"])) for r in await db.read(
        "SELECT name, tbl_name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")}
    return {"columns": columns, "primary keys": keys, "unique": unique, "indexes": indexes}


async def _sqlite_index_columns(db: Database, index: str) -> tuple[str, ...]:
    return tuple(r["name"] for r in await db.read("SELECT name FROM pragma_index_info(?) ORDER BY seqno", (index,)))


async def _postgres_schema(db: Database) -> Schema:
    columns: dict[str, set[str]] = {}
    for r in await db.read(
            "SELECT c.table_name, c.column_name FROM information_schema.columns c "
            "JOIN information_schema.tables t ON t.table_schema = c.table_schema AND t.table_name = c.table_name "
            "WHERE c.table_schema = current_schema() AND t.table_type = 'BASE TABLE' AND c.table_name <> ?",
            ("esl_schema_version",)):
        columns.setdefault(r["table_name"], set()).add(r["column_name"])
    keys: dict[str, tuple[str, ...]] = {table: () for table in columns}
    unique: set[tuple[str, tuple[str, ...]]] = set()
    for r in await db.read(
            "SELECT t.relname AS tbl, c.contype::text AS kind, "
            "       array_agg(a.attname::text ORDER BY k.ord) AS cols "
            "FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid "
            "CROSS JOIN LATERAL unnest(c.conkey) WITH ORDINALITY AS k(attnum, ord) "
            "JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.attnum "
            "WHERE t.relnamespace = current_schema()::regnamespace AND c.contype IN ('p', 'u') "
            "GROUP BY t.relname, c.conname, c.contype"):
        if r["kind"] == "p":
            keys[r["tbl"]] = tuple(r["cols"])
        else:
            unique.add((r["tbl"], tuple(r["cols"])))
    indexes = {r["idx"]: (r["tbl"], tuple(r["cols"])) for r in await db.read(
        "SELECT i.relname AS idx, t.relname AS tbl, array_agg(a.attname::text ORDER BY k.ord) AS cols "
        "FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class t ON t.oid = x.indrelid "
        "CROSS JOIN LATERAL unnest(x.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord) "
        "LEFT JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.attnum "
        "WHERE t.relnamespace = current_schema()::regnamespace "
        "AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = x.indexrelid) "
        "GROUP BY i.relname, t.relname")}
    return {"columns": columns, "primary keys": keys, "unique": unique, "indexes": indexes}


def test_every_postgresql_migration_has_its_sqlite_twin_and_both_end_at_the_schema_version() -> None:
    sqlite_steps = {version: name for version, name, _ in migrations("sqlite")}
    postgres_steps = [(version, name) for version, name, _ in migrations("postgresql")]
    assert postgres_steps, "no PostgreSQL migrations"
    assert [v for v, _ in postgres_steps if v not in sqlite_steps] == []
    assert max(sqlite_steps) == postgres_steps[-1][0] == SCHEMA_VERSION
    # after the baseline, a step is the same change on both: the same name
    assert [(v, n) for v, n in postgres_steps[1:] if sqlite_steps[v] != n] == []


async def test_both_engines_migrate_to_the_same_tables_columns_keys_and_indexes(tmp_path: Path) -> None:
    async with SqliteDatabase(tmp_path / "esl.db") as lite:
        expected = await _sqlite_schema(lite)
    async with fresh_database() as url, PostgresDatabase(url) as pg:
        got = await _postgres_schema(pg)
        version = await pg.read("SELECT version FROM esl_schema_version")
    assert [r[0] for r in version] == [SCHEMA_VERSION]
    assert "labels" in expected["columns"] and expected["indexes"], "the SQLite schema was not read"
    assert sorted(got["columns"]) == sorted(expected["columns"]), "tables"
    for part in ("columns", "primary keys"):
        differ = {t: (expected[part][t], got[part][t]) for t in expected[part] if expected[part][t] != got[part][t]}
        assert differ == {}, f"{part} (SQLite, PostgreSQL)"
    assert got["unique"] == expected["unique"], "unique constraints"
    assert sorted(got["indexes"]) == sorted(expected["indexes"]), "index names"
    assert got["indexes"] == expected["indexes"], "indexed tables and columns"


# -- 2. numbered() ------------------------------------------------------------------------

_PLAIN = st.text(st.characters(codec="utf-8", exclude_characters="'\"?$0123456789", exclude_categories=("Cs",)),
                 max_size=8)
_QUOTED = st.text(st.sampled_from("ab ?'\"\\;-"), max_size=6)
_TOKEN = st.one_of(
    st.just(("?", "?")),
    _PLAIN.map(lambda t: ("text", t)),
    _QUOTED.map(lambda t: ("text", "'" + t.replace("'", "''") + "'")),   # a string literal
    _QUOTED.map(lambda t: ("text", '"' + t.replace('"', '""') + '"')),   # a quoted identifier
)


@hypothesis.settings(max_examples=300, derandomize=True, database=None, deadline=None)
@hypothesis.given(st.lists(_TOKEN, max_size=12))
def test_numbered_numbers_the_placeholders_outside_quotes_in_order(tokens: list[tuple[str, str]]) -> None:
    sql = "".join(text for _, text in tokens)
    expected, count = [], 0
    for kind, text in tokens:
        if kind == "?":
            count += 1
            text = f"${count}"
        expected.append(text)
    out = numbered(sql)
    assert out == "".join(expected)
    assert [int(n) for n in re.findall(r"\$(\d+)", out)] == list(range(1, count + 1))


def test_numbered_on_the_statements_the_store_writes() -> None:
    assert numbered("SELECT * FROM t WHERE a = ? AND b IN (?, ?)") == "SELECT * FROM t WHERE a = $1 AND b IN ($2, $3)"
    assert numbered("UPDATE t SET note = 'why?', \"odd?col\" = ? WHERE x LIKE ? ESCAPE '\\'") == \
        "UPDATE t SET note = 'why?', \"odd?col\" = $1 WHERE x LIKE $2 ESCAPE '\\'"
    assert numbered("SELECT 'it''s ?' || ?") == "SELECT 'it''s ?' || $1"


# -- 3. the Database contract on both engines ------------------------------------------------

async def test_a_transaction_that_raises_is_rolled_back_and_its_callbacks_never_run(engine_db: Database) -> None:
    db = engine_db
    called: list[str] = []
    with pytest.raises(RuntimeError, match="^a bug$"):
        async with db.transaction() as conn:
            await conn.execute(TEMPLATE, _template("lost"))
            db.after_commit(lambda: called.append("lost"))
            raise RuntimeError("a bug")
    assert called == [] and await _names(db) == []
    async with db.transaction() as conn:
        await conn.execute(TEMPLATE, _template("kept"))
        db.after_commit(lambda: called.append("kept"))
        assert called == []  # only once committed
    assert called == ["kept"] and await _names(db) == ["kept"]
    with pytest.raises(DatabaseError, match="no transaction is open"):
        db.after_commit(lambda: None)


async def test_a_savepoint_that_raises_undoes_only_its_own_part(engine_db: Database) -> None:
    db = engine_db
    called: list[str] = []
    async with db.transaction() as conn:
        await conn.execute(TEMPLATE, _template("before"))
        db.after_commit(lambda: called.append("before"))
        async with db.savepoint(conn):
            await conn.execute(TEMPLATE, _template("good part"))
            db.after_commit(lambda: called.append("good part"))
        with pytest.raises(db.integrity_error):
            async with db.savepoint(conn):
                await conn.execute(TEMPLATE, _template("bad part"))
                db.after_commit(lambda: called.append("bad part"))
                await conn.execute(TEMPLATE, _template("before"))  # taken: the part fails
        assert conn.in_transaction
        await conn.execute(TEMPLATE, _template("after"))  # the transaction goes on
        assert [r["name"] for r in await conn.fetchall("SELECT name FROM templates ORDER BY name")] == \
            ["after", "before", "good part"]
    assert called == ["before", "good part"]
    assert await _names(db) == ["after", "before", "good part"]


async def test_execute_counts_the_rows_changed_and_ignored_inserts_count_zero(engine_db: Database) -> None:
    async with engine_db.transaction() as conn:
        assert await conn.execute(TEMPLATE, _template("a")) == 1
        assert await conn.execute(TEMPLATE + " ON CONFLICT (name) DO NOTHING", _template("a")) == 0
        assert await conn.execute(TEMPLATE + " ON CONFLICT DO NOTHING", _template("b")) == 1
        await conn.executemany(TEMPLATE, [_template("c"), _template("d")])
        await conn.executemany(TEMPLATE, [])
        assert await conn.execute("UPDATE templates SET version = version + 1") == 4
        assert await conn.execute("UPDATE templates SET version = 7 WHERE name = ?", ("nobody",)) == 0
        assert await conn.execute("DELETE FROM templates WHERE name IN (?, ?)", ("a", "b")) == 2
        assert await conn.execute("DELETE FROM templates WHERE name = 'c'") == 1  # no parameters
        assert await conn.execute("DELETE FROM templates WHERE name = ?", ("a",)) == 0
    assert await _names(engine_db) == ["d"]


async def test_insert_returning_gives_the_new_ids(engine_db: Database) -> None:
    async with engine_db.transaction() as conn:
        (first,) = await conn.fetchall(PRICE, _price("A1"))
        second = await conn.fetchone(PRICE, _price("B2"))
        assert second is not None and second["id"] > first["id"] == first[0]
        assert [dict(r) for r in await conn.fetchall("SELECT id, sku FROM price_history ORDER BY id")] == \
            [{"id": first["id"], "sku": "A1"}, {"id": second["id"], "sku": "B2"}]


async def test_an_empty_in_list_matches_nothing(engine_db: Database) -> None:
    db = engine_db
    async with db.transaction() as conn:
        await conn.executemany(TEMPLATE, [_template("a"), _template("b"), _template("c")])
        sql = "SELECT name FROM templates WHERE name IN ({}) ORDER BY name"
        assert await conn.fetchall(sql.format(placeholders([])), []) == []
        assert [r[0] for r in await conn.fetchall(sql.format(placeholders(["a", "c"])), ["a", "c"])] == ["a", "c"]
        assert await conn.execute(f"DELETE FROM templates WHERE name IN ({placeholders([])})") == 0
    assert await db.read(sql.format(placeholders([]))) == []
    assert await db.read(f"SELECT name FROM templates WHERE name NOT IN ({placeholders(['b'])})", ["b"]) != []


async def test_a_duplicate_primary_key_raises_integrity_error_which_is_no_health_fault(engine_db: Database) -> None:
    db = engine_db
    with pytest.raises(db.integrity_error) as raised:
        async with db.transaction() as conn:
            await conn.execute(TEMPLATE, _template("a"))
            await conn.execute(TEMPLATE, _template("a"))
    assert database_fault(raised.value) is None  # the request's fault, not the database's
    assert await _names(db) == []


async def test_reads_see_committed_data_only(engine_db: Database) -> None:
    db = engine_db
    async with db.transaction() as conn:
        await conn.execute(TEMPLATE, _template("a"))
    async with db.transaction() as conn:
        await conn.execute(TEMPLATE, _template("b"))
        await conn.execute("UPDATE templates SET version = 2 WHERE name = ?", ("a",))
        assert [tuple(r) for r in await conn.fetchall("SELECT name, version FROM templates ORDER BY name")] == \
            [("a", 2), ("b", 1)]
        assert [tuple(r) for r in await db.read("SELECT name, version FROM templates ORDER BY name")] == [("a", 1)]
        assert await db.read_one("SELECT name FROM templates WHERE name = ?", ("b",)) is None
    assert [tuple(r) for r in await db.read("SELECT name, version FROM templates ORDER BY name")] == \
        [("a", 2), ("b", 1)]


# -- 4. PostgreSQL's own cases ------------------------------------------------------------

async def test_a_statement_cancelled_half_way_leaves_nothing_and_the_next_transaction_runs_at_once() -> None:
    async with fresh_database() as url, PostgresDatabase(url) as db, _admin() as admin:
        async def slow() -> None:
            async with db.transaction() as conn:
                await conn.execute(TEMPLATE, _template("half"))
                await conn.fetchall("SELECT pg_sleep(5)")

        task = asyncio.create_task(slow())
        await _until(lambda: _running(admin, _database_name(url), "SELECT pg_sleep(5)"), "pg_sleep to run")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        started = time.monotonic()
        async with db.transaction() as conn:
            assert await conn.fetchall("SELECT name FROM templates") == []
            await conn.execute(TEMPLATE, _template("next"))
        assert time.monotonic() - started < 1.5
        assert await _names(db) == ["next"]

        async def gone() -> bool:  # the server does not go on sleeping for a client that left
            return not await _running(admin, _database_name(url), "SELECT pg_sleep(5)")
        await _until(gone, "the cancelled statement to end", timeout=3)


async def test_an_open_on_a_migrated_database_migrates_nothing(caplog: pytest.LogCaptureFixture) -> None:
    applying = re.compile(r"^applying migration (\S+) to ")
    async with fresh_database() as url:
        with caplog.at_level(logging.INFO, logger="eslserver.db.postgres"):
            async with PostgresDatabase(url) as db:
                async with db.transaction() as conn:
                    await conn.execute(TEMPLATE, _template("kept"))
            first = [m.group(1) for r in caplog.records if (m := applying.match(r.getMessage()))]
            caplog.clear()
            async with PostgresDatabase(url) as db:
                assert await _names(db) == ["kept"]
                assert [r[0] for r in await db.read("SELECT version FROM esl_schema_version")] == [SCHEMA_VERSION]
            again = [r.getMessage() for r in caplog.records if applying.match(r.getMessage())]
    assert first == [name for _, name, _ in migrations("postgresql")]
    assert again == []


async def test_two_instances_opening_a_new_database_together_migrate_it_once(caplog: pytest.LogCaptureFixture) -> None:
    async with fresh_database() as url:
        one, two = PostgresDatabase(url), PostgresDatabase(url)
        with caplog.at_level(logging.INFO, logger="eslserver.db.postgres"):
            try:
                await asyncio.gather(one.open(), two.open())
                async with one.transaction() as conn:
                    await conn.execute(TEMPLATE, _template("by one"))
                assert await _names(two) == ["by one"]
            finally:
                await one.close()
                await two.close()
        applied = [r.getMessage().split()[2] for r in caplog.records if r.getMessage().startswith("applying migration")]
        assert applied == [name for _, name, _ in migrations("postgresql")]
        raw = await asyncpg.connect(url, timeout=10)
        try:
            assert [r[0] for r in await raw.fetch("SELECT version FROM esl_schema_version")] == [SCHEMA_VERSION]
        finally:
            await raw.close()


async def test_another_programs_database_is_refused_naming_its_tables_and_left_as_it_was() -> None:
    async with fresh_database() as url:
        raw = await asyncpg.connect(url, timeout=10)
        try:
            await raw.execute("CREATE TABLE customers (id BIGINT PRIMARY KEY, name TEXT)")
            with pytest.raises(DatabaseError, match=r"is not an eslserver database \(it has the tables customers "
                                                    r"and no schema version\)"):
                await PostgresDatabase(url).open()
            assert [r[0] for r in await raw.fetch(
                "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")] == ["customers"]
        finally:
            await raw.close()


async def test_a_database_the_user_may_not_write_is_refused_with_a_database_error() -> None:
    """PostgreSQL 15 lets only the owner create tables in ``public``: a server given a user that
    may connect but not create must stop with one line naming the database, not a traceback."""
    role = f"esl_test_{secrets.token_hex(4)}"
    async with _admin() as admin:
        await admin.execute(f'CREATE ROLE "{role}" LOGIN')
        try:
            async with fresh_database() as url:
                owner = await asyncpg.connect(url, timeout=10)
                try:
                    await owner.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")  # as on PostgreSQL 15+
                finally:
                    await owner.close()
                target = _as_user(url, role)
                with pytest.raises(DatabaseError) as raised:
                    await PostgresDatabase(target).open()
                assert redact(target) in str(raised.value) and "permission denied" in str(raised.value)
        finally:
            await admin.execute(f'DROP ROLE IF EXISTS "{role}"')


@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql://esl:s3cret@db.example:5432/shop", "postgresql://esl:***@db.example:5432/shop"),
    ("postgresql://esl:s3cret@[::1]:5432/shop", "postgresql://esl:***@[::1]:5432/shop"),
    ("postgresql://esl:s3cret@db1:5432,db2:5433/shop", "postgresql://esl:***@db1:5432,db2:5433/shop"),
    ("postgresql://esl:s3cret@db.example:port/shop", "postgresql://esl:***@db.example:port/shop"),
    ("postgres://:s3cret@/shop?host=/run/postgresql", "postgres://:***@/shop?host=/run/postgresql"),
    ("postgresql://esl@db.example/shop?sslmode=require&password=s3cret",
     "postgresql://esl@db.example/shop?sslmode=require&password=***"),
    ("postgresql://esl@db.example/shop", "postgresql://esl@db.example/shop"),
])
def test_redact_hides_the_password_wherever_the_url_holds_it(url: str, shown: str) -> None:
    assert redact(url) == shown
    assert PostgresDatabase(url).location == shown


@pytest.mark.parametrize("url", [
    f"postgresql://esl:s3cret@127.0.0.1:{CLOSED_PORT}/shop",
    f"postgresql://esl@127.0.0.1:{CLOSED_PORT}/shop?password=s3cret",
    "postgresql://esl:s3cret@127.0.0.1:notaport/shop",
])
async def test_a_failed_open_names_the_database_without_its_password(url: str) -> None:
    with pytest.raises(DatabaseError) as raised:
        await PostgresDatabase(url).open()
    message = str(raised.value)
    assert message.startswith(f"cannot open database {redact(url)}: ") and "***" in message
    assert "s3cret" not in "".join(traceback.format_exception(raised.value))


# -- 5. health on real driver errors ------------------------------------------------------

async def test_a_refused_connection_is_the_database_unreachable() -> None:
    with pytest.raises(DatabaseError) as raised:
        await PostgresDatabase(f"postgresql://esl@127.0.0.1:{CLOSED_PORT}/shop").open()
    cause = raised.value.__cause__
    assert isinstance(cause, OSError), repr(cause)
    fault = database_fault(cause)
    assert fault is not None and fault[0] == "database" and fault[1].startswith("database: unreachable ("), fault


async def test_a_backend_terminated_during_a_read_is_a_database_fault() -> None:
    async with fresh_database() as url, PostgresDatabase(url) as db, _admin() as admin:
        faults: list[BaseException | None] = []
        db.on_fault = faults.append
        read = asyncio.create_task(db.read("SELECT pg_sleep(5)"))
        await _until(lambda: _running(admin, _database_name(url), "SELECT pg_sleep(5)"), "pg_sleep to run")
        await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 "
                            "AND query = 'SELECT pg_sleep(5)'", _database_name(url))
        with pytest.raises(db.errors) as raised:
            await read
        fault = database_fault(raised.value)
        assert fault is not None and fault[0] == "database", (repr(raised.value), fault)
        assert faults == [raised.value]
        assert [tuple(r) for r in await db.read("SELECT 1")] == [(1,)]  # the pool connects again


async def test_a_read_on_a_backend_terminated_while_idle_is_a_database_fault_or_works() -> None:
    """Terminated while the pool keeps it idle: the next read on it either finds the pool has
    connected again, or fails; asyncpg then raises a lost connection, or (the server's last
    words read, the close not yet) `InternalClientError` "another operation (2) is in
    progress". Every failure must be the database's fault, and the read after it works."""
    async with fresh_database() as url, PostgresDatabase(url) as db, _admin() as admin:
        faults: list[BaseException | None] = []
        db.on_fault = faults.append
        failed: list[BaseException] = []
        for _ in range(20):
            await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
                                _database_name(url))
            try:
                await db.read("SELECT 1")
            except db.errors as exc:
                failed.append(exc)
                break
        assert failed, "the read never met the terminated connection"
        fault = database_fault(failed[0])
        assert fault is not None and fault[0] == "database", (repr(failed[0]), fault)
        assert faults == failed
        assert [tuple(r) for r in await db.read("SELECT 1")] == [(1,)]


def test_asyncpgs_broken_protocol_state_is_a_lost_connection_but_a_stale_statement_cache_is_not() -> None:
    broken = asyncpg.exceptions.InternalClientError("cannot switch to state 12; another operation (2) is in progress")
    assert database_fault(broken) == ("database", f"database: connection lost ({broken})")
    assert database_fault(asyncpg.exceptions.OutdatedSchemaCacheError("cached statement plan is invalid")) is None
    assert database_fault(asyncpg.InterfaceError("cannot perform operation: another operation is in progress")) is None


async def test_a_connection_lost_between_two_statements_is_a_database_fault() -> None:
    """The server ends the connection while the transaction waits between statements: the next
    statement fails as a lost connection (health degraded; the message is retried, not
    rejected as bad), that exception is the one raised, and the next transaction works."""
    async with fresh_database() as url, PostgresDatabase(url) as db, _admin() as admin:
        faults: list[BaseException | None] = []
        db.on_fault = faults.append
        with pytest.raises(db.errors) as raised:
            async with db.transaction() as conn:
                await conn.execute(TEMPLATE, _template("lost"))
                pid = (await conn.fetchall("SELECT pg_backend_pid()"))[0][0]
                await admin.execute("SELECT pg_terminate_backend($1)", pid)

                async def lost() -> bool:
                    return not conn.in_transaction  # the server rolled it all back
                await _until(lost, "the connection to be seen lost")
                await conn.fetchall("SELECT name FROM templates")
        assert isinstance(raised.value, asyncpg.ConnectionDoesNotExistError), repr(raised.value)  # SQLSTATE 08003
        fault = database_fault(raised.value)
        assert fault is not None and fault[0] == "database", (repr(raised.value), fault)
        assert faults and faults[0] is raised.value
        async with db.transaction() as conn:
            await conn.execute(TEMPLATE, _template("next"))
        assert await _names(db) == ["next"]
        assert faults[-1] is None  # the commit told health that writes work again


async def test_a_unique_violation_on_postgresql_is_the_requests_fault() -> None:
    async with fresh_database() as url, PostgresDatabase(url) as db:
        with pytest.raises(asyncpg.UniqueViolationError) as raised:
            async with db.transaction() as conn:
                await conn.executemany(TEMPLATE, [_template("a"), _template("a")])
        assert isinstance(raised.value, db.integrity_error)
        assert database_fault(raised.value) is None


# -- 6. the command line ------------------------------------------------------------------

def _esl_serve(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESL_")}
    env.update(NO_COLOR="1", ESL_FACTORY_SECRET="5a" * 32)
    return subprocess.run([sys.executable, "-c", "from eslserver.cli import main; main()", "serve", *args,
                           "--data", str(tmp_path / "data")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)


def _errors(stderr: str) -> list[str]:
    """stderr without the log lines (``2026-12-04 19:00:00,000 INFO …``)."""
    return [line for line in stderr.splitlines() if line and not line[:4].isdigit()]


@pytest.mark.parametrize(("url", "shown"), [
    (f"postgresql://nobody@127.0.0.1:{CLOSED_PORT}/x", f"postgresql://nobody@127.0.0.1:{CLOSED_PORT}/x"),
    ("postgresql://nobody:s3cret@127.0.0.1:notaport/x", "postgresql://nobody:***@127.0.0.1:notaport/x"),
])
def test_serve_on_a_database_that_cannot_be_opened_says_so_in_one_line(tmp_path: Path, url: str, shown: str) -> None:
    result = _esl_serve(tmp_path, "--database", url)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr and "s3cret" not in result.stderr + result.stdout
    (line,) = _errors(result.stderr)
    assert line.startswith(f"esl serve: cannot use the database: cannot open database {shown}: "), line
    assert line.endswith("; change it with --database, database_url in esl.toml or ESL_DATABASE_URL"), line


def test_serve_on_a_database_url_that_is_not_postgresql_is_a_usage_error(tmp_path: Path) -> None:
    result = _esl_serve(tmp_path, "--database", "mysql://x")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert re.search(r"database_url: expected postgresql://", result.stderr), result.stderr

