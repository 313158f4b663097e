"""``esl db migrate-to``: a store's SQLite database moved to PostgreSQL, all of it or nothing.

The source is a data directory a real server wrote (prices submitted several times, so a
price history; labels bound, so pairing jobs with sealed keys; a label with its sealed key;
gateways; a token; a scheduled update). After the move:

- every table holds as many rows on PostgreSQL as in SQLite, the price history and the
  label keys are identical (read back here with plain sqlite3 and asyncpg, not with the code
  under test), and a server started on PostgreSQL with the same data directory opens it:
  its secret key matches, the label key opens, the token verifies, the prices are there, and
  the rows it adds take new ids (the identity sequences were moved past the copied ones);
- a target holding anything is refused with the table named, and nothing is written;
- a copy that does not match (a row lost, a price or a key changed on the way) is found by
  the check and rolled back: the target stays empty;
- a source PostgreSQL could not store faithfully (a key in clear, a value of the wrong type)
  is refused, naming the table, row and column, never the value;
- the command line: the counts and "verified: …", exit 2 on a URL that is not PostgreSQL's,
  exit 1 on one that does not answer, and the URL's password never printed.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import shutil
import socket
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from typer.testing import CliRunner

from eslserver.auth import create_token, verify_token
from eslserver.cli import app
from eslserver.db.postgres import PostgresDatabase
from eslserver.db.sqlite import SqliteDatabase
from eslserver.db_migrate import MigrationError, TargetNotEmptyError, migrate_to
from eslserver.server import SYSTEM, Server
from eslserver.store import labels as label_rows
from eslserver.store import products, tables
from eslserver.store.sizes import table_rows
from eslserver.timeutil import utcnow
from eslserver.trust import register_gateway_key
from tests.pipeline_shop import shop_settings
from tests.postgres import ADMIN_URL, fresh_database
from tests.processes import esl_argv
from tests.test_cli_errors import _env

MACS = ("02:E5:00:00:00:01", "02:E5:00:00:00:02", "02:E5:00:00:00:03")
CLEAR_KEY = bytes(range(16))


@dataclass(frozen=True)
class Source:
    data: Path
    token: str
    store: str

    @property
    def db(self) -> Path:
        return self.data / "esl.db"


async def _populate(data: Path) -> Source:
    """A data directory as a server leaves it after some days of work."""
    settings = shop_settings(data, None)
    async with Server(settings, mqtt=False, http=False, render_processes=False) as server:
        for day in range(4):  # each a new price: a price history of several periods per SKU
            result = await server.ingest.submit(
                [{"sku": "A1", "price": f"{4 + day}.99", "name": "Mleko"},
                 {"sku": "B2", "price": f"{2 + day}.50", "name": "Chleb"},
                 {"sku": "C3", "price": f"1{day}.00", "name": "Kawa ziarnista"}], source="test", actor=SYSTEM)
            assert not result.errors, result.errors
        later = (utcnow() + timedelta(days=3)).isoformat()
        result = await server.ingest.submit([{"sku": "A1", "price": "3.33", "valid_from": later}],
                                            source="test", actor=SYSTEM)
        assert result.accepted[0]["status"] == "scheduled"
        for mac, sku in zip(MACS, ("A1", "B2", "C3")):
            await server.labels.bind(mac, sku, actor=SYSTEM, model="2.9-bwry")  # a pairing job each
        async with server.db.transaction() as conn:  # the first label's pairing acknowledged
            sealed = server.vault.seal_label_key(settings.store, MACS[0], CLEAR_KEY)
            await label_rows.set_key(conn, MACS[0], sealed, tx_counter=5, rx_highest=7)
        for gateway in ("gw1", "gw2", "gw3"):  # composite keys (store, id), over several batches
            await register_gateway_key(server.db, settings.store, gateway, bytes([len(gateway)]) * 32, actor=SYSTEM)
        token = await create_token(server.db, "pos", "till-1")
    return Source(data, token, settings.store)


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Source:
    """One data directory written once by a real server (tests copy it: `source`)."""
    return asyncio.run(_populate(tmp_path_factory.mktemp("written") / "data"))


@pytest.fixture
def source(written: Source, tmp_path: Path) -> Source:
    data = tmp_path / "data"
    shutil.copytree(written.data, data, ignore=shutil.ignore_patterns("server.lock"))
    return Source(data, written.token, written.store)


def _sqlite(path: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as conn:
        return list(conn.execute(sql))


async def _pg(url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    conn = await asyncpg.connect(url)
    try:
        return [tuple(r) for r in await conn.fetch(sql, *params)]
    finally:
        await conn.close()


async def _counts(target: str | Path) -> dict[str, int]:
    db = PostgresDatabase(target) if isinstance(target, str) else SqliteDatabase(target)
    async with db:
        return await table_rows(db)


async def test_the_copy_is_complete_and_the_server_runs_on_it(source: Source) -> None:
    seen: list[tuple[str, int, int]] = []
    async with fresh_database() as url:
        # batches of 2: every table of more than two rows is read over several keyset pages
        report = await migrate_to(source.db, url, progress=lambda *p: seen.append(p), batch=2)

        before = await _counts(source.db)
        assert report.rows == before == await _counts(url)
        assert report.rows["price_history"] >= 12 and report.rows["jobs"] >= 3 and report.rows["gateways"] == 3
        assert report.rows["scheduled_updates"] == 1 and report.rows["tokens"] == 1
        assert report.total_rows == sum(before.values()) and report.seconds > 0
        assert list(report.rows).index("stores") < list(report.rows).index("products")  # its foreign key
        assert ("price_history", report.rows["price_history"], report.rows["price_history"]) in seen

        history = "SELECT * FROM price_history ORDER BY id"
        assert await _pg(url, history) == _sqlite(source.db, history)
        keys = "SELECT mac, label_key FROM labels ORDER BY mac"
        assert await _pg(url, keys) == _sqlite(source.db, keys)
        pairs = "SELECT id, command FROM jobs WHERE kind = 'pair' ORDER BY id"
        assert await _pg(url, pairs) == _sqlite(source.db, pairs) and len(await _pg(url, pairs)) >= 2
        check = "SELECT check_value FROM secrets_check"
        assert await _pg(url, check) == _sqlite(source.db, check)

        settings = shop_settings(source.data, None, database_url=url)  # the same data directory: its secret.key
        async with Server(settings, mqtt=False, http=False, render_processes=False) as server:
            assert server.db.engine == "postgresql"
            [(sealed,)] = await _pg(url, f"SELECT label_key FROM labels WHERE mac = '{MACS[0]}'")
            assert server.vault.open_label_key(source.store, MACS[0], sealed) == CLEAR_KEY
            actor = await verify_token(server.db, source.token)
            assert actor is not None and actor.role == "pos"
            record = await products.get(server.db, source.store, "C3")
            assert record is not None and '"13.00"' in record["record"]
            assert (await server.labels.state(MACS[1]) or {}).get("sku") == "B2"
            # new rows take ids past the copied ones: no collision with the price history
            result = await server.ingest.submit([{"sku": "A1", "price": "9.99"}], source="test", actor=SYSTEM)
            assert not result.errors and result.accepted[0]["status"] == "applied"
            await server.labels.bind("02:E5:00:00:00:09", "A1", actor=SYSTEM, model="2.9-bwry")  # a new job
        [(newest,)] = await _pg(url, "SELECT max(id) FROM price_history")
        assert newest > max(r[0] for r in _sqlite(source.db, "SELECT id FROM price_history"))


async def test_a_target_that_holds_anything_is_refused_and_nothing_is_written(source: Source) -> None:
    async with fresh_database() as url:
        async with PostgresDatabase(url) as db:  # another server's first token (and its audit row), nothing else
            await create_token(db, "admin", "someone")
        with pytest.raises(TargetNotEmptyError, match=r"not empty: table audit already holds rows \(and tokens\); "
                                                      r"migrate-to never merges"):
            await migrate_to(source.db, url)
        after = await _counts(url)
        assert after["tokens"] == after["audit"] == 1 and sum(after.values()) == 2

    async with fresh_database() as url:  # a second run onto a finished migration: nothing doubles
        first = await migrate_to(source.db, url)
        with pytest.raises(TargetNotEmptyError, match=r"table audit already holds rows \(and .*price_history"):
            await migrate_to(source.db, url)
        assert await _counts(url) == first.rows


def _lose_one_row(rows: list[tuple[Any, ...]], table: str) -> list[tuple[Any, ...]]:
    return rows[1:] if table == "audit" else rows


def _change_a_price(rows: list[tuple[Any, ...]], table: str) -> list[tuple[Any, ...]]:
    if table != "price_history":
        return rows
    return [(*rows[0][:3], "0.01", *rows[0][4:]), *rows[1:]]  # id, store, sku, price, …


def _swap_keys(rows: list[tuple[Any, ...]], table: str) -> list[tuple[Any, ...]]:
    if table != "jobs":
        return rows
    commands = [r for r in rows if r[4] == "pair"]
    first, second = commands[0][12], commands[1][12]  # jobs.command: a pairing's sealed new key
    return [(*r[:12], second if r[12] == first else first if r[12] == second else r[12], *r[13:]) for r in rows]


@pytest.mark.parametrize(("damage", "error"), [
    (_lose_one_row, r"table audit: (\d+) rows in SQLite, \1 copied, \d+ in PostgreSQL"),
    (_change_a_price, r"table price_history: price history differ"),
    (_swap_keys, r"table jobs: pairing keys .* differ"),
])
async def test_a_copy_that_does_not_match_is_rolled_back(source: Source, monkeypatch: pytest.MonkeyPatch,
                                                          damage: Any, error: str) -> None:
    """What the check is for: a copy damaged on the way (here by a faulty insert) is found, and
    the target is left as empty as it was."""
    insert = tables.insert_rows

    async def faulty(conn: Any, table: str, names: Any, rows: Any) -> None:
        await insert(conn, table, names, damage(list(rows), table))

    monkeypatch.setattr(tables, "insert_rows", faulty)
    async with fresh_database() as url:
        with pytest.raises(MigrationError, match=error) as caught:
            await migrate_to(source.db, url)
        assert "\\x" not in str(caught.value) and "b'" not in str(caught.value)  # never a key
        assert sum((await _counts(url)).values()) == 0


@pytest.mark.parametrize(("sql", "error"), [
    (f"UPDATE labels SET label_key = X'{CLEAR_KEY.hex()}' WHERE mac = '{MACS[0]}'",
     r"holds 1 label keys and 0 pairing keys in clear .*start the server once on it first"),
    ("UPDATE price_history SET reduction = 'half' WHERE id = 2",
     r"price_history row id=2: column reduction holds a str, which PostgreSQL's bigint column cannot take"),
    (f"UPDATE labels SET aisle = 'A' || char(0) || 'B' WHERE mac = '{MACS[1]}'",
     rf"labels row mac='{MACS[1]}': column aisle holds a NUL character in text"),
])
async def test_a_source_postgresql_would_not_store_as_it_is_is_refused(source: Source, sql: str, error: str) -> None:
    with sqlite3.connect(source.db) as conn:
        conn.execute(sql)
    async with fresh_database() as url:
        with pytest.raises(MigrationError, match=error):
            await migrate_to(source.db, url)
        assert sum((await _counts(url)).values()) == 0


@asynccontextmanager
async def _icu_database() -> AsyncIterator[str]:
    """A fresh database whose text order is ICU's English one (case and punctuation weighed as
    people read them), not byte order: what a PostgreSQL installed with a locale has."""
    name = f"esl_test_icu_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(ADMIN_URL, timeout=10)
    try:
        try:
            await admin.execute(f"CREATE DATABASE {name} TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US' "
                                "LOCALE 'C.UTF-8'")
        except asyncpg.PostgresError as exc:
            pytest.skip(f"this PostgreSQL cannot make an ICU database: {exc}")
    finally:
        await admin.close()
    try:
        yield urlunsplit(urlsplit(ADMIN_URL)._replace(path="/" + name))
    finally:
        admin = await asyncpg.connect(ADMIN_URL, timeout=10)
        try:
            await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        finally:
            await admin.close()


async def test_rows_are_read_in_byte_order_on_both_engines_whatever_the_locale(source: Source) -> None:
    """Digests over rows in key order agree only if both engines list the rows in the same
    order: SQLite compares text byte by byte, a PostgreSQL database by its locale."""
    ids = ["GW2", "gw_3", "Gw-4", "gw10", "gw9"]
    with sqlite3.connect(source.db) as conn:
        conn.execute("DELETE FROM gateways")
        conn.executemany("INSERT INTO gateways (store, id, status, info) VALUES (?, ?, 'online', '{}')",
                         [(store, gw) for store in (source.store, "b-store", "B_store") for gw in ids])
    async with _icu_database() as url:
        locale_order = [r[0] for r in await _pg(url, "SELECT x FROM unnest($1::text[]) x ORDER BY x", ids)]
        assert locale_order != sorted(ids)  # the locale's order is not byte order: the test means something
        await migrate_to(source.db, url, batch=2)
        async with SqliteDatabase(source.db) as lite, PostgresDatabase(url) as pg:
            read = {db.engine: [(r["store"], r["id"]) async for rows in tables.read_rows(db, "gateways", batch=2)
                                for r in rows] for db in (lite, pg)}
    assert read["sqlite"] == read["postgresql"] == sorted(read["sqlite"], key=lambda k: [p.encode() for p in k])
    assert len(read["sqlite"]) == 15


async def test_the_command_line_prints_the_counts_and_the_check(source: Source, tmp_path: Path) -> None:
    async with fresh_database() as url:
        proc = await asyncio.create_subprocess_exec(
            *esl_argv("db", "migrate-to", url, "--data", str(source.data)), cwd=tmp_path, env=_env(),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()
        counts = await _counts(url)
    text = out.decode()
    assert f"verified: {len(counts)} tables, {sum(counts.values())} rows, price history and keys identical" in text
    assert re.search(rf"^ +price_history +{counts['price_history']}$", text, re.MULTILINE), text
    assert "secret.key" in text and "--database URL" in text and "ESL_DATABASE_URL" in text


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_bad_url_is_refused_and_a_password_is_never_printed(source: Source) -> None:
    """Sync: the command runs its own event loop."""
    cli = CliRunner()
    wrong = cli.invoke(app, ["db", "migrate-to", "mysql://esl:Hunter2-secret@db/esl", "--data", str(source.data)])
    assert wrong.exit_code == 2 and "expected postgresql://" in wrong.output
    assert "Hunter2" not in wrong.output

    port = cli.invoke(app, ["db", "migrate-to", "postgresql://esl:Hunter2-secret@db:port/esl", "--data",
                            str(source.data)])
    assert port.exit_code == 2 and "Hunter2" not in port.output

    url = f"postgresql://esl:Hunter2%2Fsecret@127.0.0.1:{_closed_port()}/esl"
    closed = cli.invoke(app, ["db", "migrate-to", url, "--data", str(source.data)])
    assert closed.exit_code == 1, closed.output
    assert "cannot open database postgresql://esl:***@127.0.0.1:" in closed.output
    assert "Hunter2" not in closed.output and len(closed.output.strip().splitlines()) == 1

    nowhere = cli.invoke(app, ["db", "migrate-to", url, "--data", str(source.data.parent / "nowhere")])
    assert nowhere.exit_code == 1 and "no eslserver database in data directory" in nowhere.output
    assert not (source.data.parent / "nowhere").exists()  # no new database made where there was none
