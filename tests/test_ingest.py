"""POS ingest into a real SQLite file: durability, seq ordering, schedules, field maps, audit;
and the storage layer's migrations."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from eslserver.db.database import SCHEMA_VERSION, DatabaseError
from eslserver.db.sqlite import SqliteDatabase
from eslserver.server import SYSTEM, Server
from eslserver.timeutil import utcnow
from tests.pipeline_shop import shop_settings


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    settings = shop_settings(tmp_path / "data", None, field_map={"Product_ID": "sku", "Cena": "price"})
    async with Server(settings, mqtt=False, http=False, render_processes=False) as srv:
        yield srv


def _rows(path: Path, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    """Read through a separate connection: what is there is on disk, not in our process."""
    with sqlite3.connect(path) as conn:
        return list(conn.execute(sql, params))


async def test_accepted_updates_are_committed_before_submit_returns(server: Server) -> None:
    result = await server.ingest.submit(b'[{"Product_ID": "A1", "Cena": "4.99", "name": "Mleko"}, '
                                        b'{"Product_ID": "B2", "Cena": "4,99x"}]', source="mqtt", actor=SYSTEM)
    assert result.accepted == [{"index": 0, "sku": "A1", "seq": None, "update_id": None, "status": "applied"}]
    (err,) = result.errors
    assert (err["index"], err["sku"], err["field"], err["canonical"], err["value"]) == (1, "B2", "Cena", "price",
                                                                                       "4,99x")
    rows = _rows(server.db.path, "SELECT sku, record FROM products")
    assert [r[0] for r in rows] == ["A1"] and json.loads(str(rows[0][1]))["price"] == "4.99"
    assert _rows(server.db.path, "SELECT price, reduction FROM price_history WHERE sku = 'A1'") == [("4.99", 0)]
    audit = _rows(server.db.path, "SELECT actor, action, target, before, after FROM audit WHERE action LIKE 'price.%'")
    assert audit[0][:4] == ("eslserver", "price.update", "A1", None)
    assert json.loads(str(audit[0][4]))["price"] == "4.99"


async def test_seq_orders_updates_and_counts_stale_ones(server: Server) -> None:
    submit = server.ingest.submit
    await submit([{"sku": "A1", "price": "5.00", "seq": 10}], source="mqtt", actor=SYSTEM)
    r = await submit([{"sku": "A1", "price": "4.00", "seq": 9}, {"sku": "A1", "price": "4.50", "seq": 10},
                      {"sku": "A1", "price": "6.00", "seq": 11}], source="mqtt", actor=SYSTEM)
    assert [a["status"] for a in r.accepted] == ["stale", "stale", "applied"]
    assert server.metrics.updates_stale.labels("mqtt")._value.get() == 2
    rec = _rows(server.db.path, "SELECT record, seq FROM products WHERE sku = 'A1'")[0]
    assert json.loads(str(rec[0]))["price"] == "6.00" and rec[1] == 11


async def test_scheduled_change_waits_for_its_time_and_yields_to_newer_seq(server: Server) -> None:
    later = utcnow() + timedelta(hours=1)
    await server.ingest.submit([{"sku": "A1", "price": "5.00", "seq": 1},
                                {"sku": "B2", "price": "2.00", "seq": 1}], source="http", actor=SYSTEM)
    r = await server.ingest.submit([{"sku": "A1", "price": "3.00", "seq": 2, "valid_from": later.isoformat()},
                                    {"sku": "B2", "price": "1.00", "seq": 2, "valid_from": later.isoformat()}],
                                   source="http", actor=SYSTEM)
    assert [a["status"] for a in r.accepted] == ["scheduled", "scheduled"]
    assert await server.ingest.next_due() == later.replace(microsecond=later.microsecond)
    # B2 gets a newer change now: the POS's newest instruction wins over the pending one
    await server.ingest.submit([{"sku": "B2", "price": "2.50", "seq": 3}], source="http", actor=SYSTEM)
    assert await server.ingest.apply_due(utcnow(), SYSTEM) == 0  # nothing due yet
    assert await server.ingest.apply_due(later + timedelta(seconds=1), SYSTEM) == 1
    prices = dict(_rows(server.db.path, "SELECT sku, json_extract(record, '$.price') FROM products"))
    assert prices == {"A1": "3.00", "B2": "2.50"}
    assert _rows(server.db.path, "SELECT COUNT(*) FROM scheduled_updates") == [(0,)]


async def test_promotion_boundaries_redraw_labels(server: Server) -> None:
    start = utcnow() + timedelta(minutes=5)
    end = start + timedelta(minutes=10)
    await server.ingest.submit([{"sku": "A1", "price": "5.00", "promo": {"price": "3.99", "from": start.isoformat(),
                                                                          "to": end.isoformat()}}],
                               source="http", actor=SYSTEM)
    async with server.db.transaction() as conn:
        await server.labels.register(conn, "02:E5:00:00:00:01", "2.9-bwry", sku="A1")
    await server.db.writer.execute("UPDATE labels SET dirty = 0")
    assert await server.ingest.next_due() == start
    assert await server.ingest.apply_due(start, SYSTEM) == 1
    assert _rows(server.db.path, "SELECT dirty <> 0 FROM labels") == [(1,)]
    nxt = await server.ingest.next_due()
    assert nxt is not None and end < nxt <= end + timedelta(seconds=1)


async def test_migrations_are_ordered_and_refuse_a_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "esl.db"
    async with SqliteDatabase(path) as db:
        row = await db.read_one("PRAGMA user_version")
        assert row is not None and row[0] == SCHEMA_VERSION
        tables = {r[0] for r in await db.read("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert {"stores", "products", "price_history", "labels", "gateways", "templates", "jobs", "events",
                "audit", "tokens", "images", "scheduled_updates"} <= tables
        mode = await db.read_one("PRAGMA journal_mode")
        assert mode is not None and mode[0] == "wal"
    async with SqliteDatabase(path):  # reopening applies nothing twice
        pass
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(DatabaseError, match="newer than this eslserver"):
        await SqliteDatabase(path).open()
