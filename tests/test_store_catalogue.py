"""The storage modules of the catalogue and the access tables (products, price history,
scheduled updates, templates, tokens, audit, stores) on a real SQLite file and a real
PostgreSQL database: what each
operation promises, including the edges the domain code relies on."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

from eslserver.db.database import Database, escape_like, fetchall, fetchone
from eslserver.store import audit, products, stores, templates, tokens
from tests.postgres import engine_db  # noqa: F401  (fixture: SQLite and PostgreSQL)

STORE = "s1"
T0 = "2026-01-01T00:00:00+00:00"


@pytest.fixture
async def db(engine_db: Database) -> AsyncIterator[Database]:
    async with engine_db.transaction() as conn:
        await stores.upsert(conn, STORE, "Shop", "PLN", "{}", T0, language="pl", country="PL", timezone="Europe/Warsaw")
    yield engine_db


def _record(name: str, ean: str | None = None) -> str:
    return json.dumps({"name": name, "price": "1.00", **({"ean": ean} if ean else {})})


async def test_a_read_through_the_database_sees_only_committed_rows(db: Database) -> None:
    async with db.transaction() as conn:
        await products.upsert(conn, STORE, "A", _record("a"), 3, T0, None)
        assert (await products.get(conn, STORE, "A")) is not None  # the transaction sees its write
        assert await products.get(db, STORE, "A") is None  # the reader does not, yet
        assert await fetchall(db, "SELECT sku FROM products") == []
    row = await fetchone(db, "SELECT sku, seq FROM products")
    assert row is not None and tuple(row) == ("A", 3)
    assert await products.exists(db, STORE, "A") and not await products.exists(db, STORE, "B")
    assert not await products.exists(db, "other", "A")


async def test_seq_is_none_for_an_unknown_product_or_one_without_seq(db: Database) -> None:
    async with db.transaction() as conn:
        assert await products.seq(conn, STORE, "A") is None
        await products.upsert(conn, STORE, "A", _record("a"), None, T0, None)
        assert await products.seq(conn, STORE, "A") is None
        await products.upsert(conn, STORE, "A", _record("a"), 7, T0, None)
        assert await products.seq(conn, STORE, "A") == 7
        assert await products.scheduled_max_seq(conn, STORE, "A") is None
        await products.schedule(conn, STORE, "A", "{}", 9, "2026-02-01T00:00:00+00:00", T0, "mqtt")
        await products.schedule(conn, STORE, "A", "{}", None, "2026-01-15T00:00:00+00:00", T0, "mqtt")
        assert await products.scheduled_max_seq(conn, STORE, "A") == 9


async def test_history_keeps_write_order_for_every_sku_asked_past_one_in_list(db: Database) -> None:
    skus = [f"S{i:04d}" for i in range(1203)]  # three IN (...) reads
    async with db.transaction() as conn:
        for i, sku in enumerate(skus):
            if i % 2 == 0:
                await products.add_history(conn, STORE, sku, [
                    (f"{i}.00", T0, "2026-01-02T00:00:00+00:00", 0, i, "mqtt", T0),
                    (f"{i}.50", "2026-01-02T00:00:00+00:00", None, 1, i, "mqtt", T0)])
        await products.add_history(conn, STORE, "S0001", [])  # nothing to write is fine
    history = await products.history(db, STORE, reversed(skus))
    assert set(history) == set(skus)
    assert [r["price"] for r in history["S1202"]] == ["1202.00", "1202.50"]
    assert [bool(r["reduction"]) for r in history["S0000"]] == [False, True]
    assert history["S0001"] == []
    assert sum(len(v) for v in history.values()) == 2 * 602


async def test_due_scheduled_and_promotion_changes(db: Database) -> None:
    assert await products.next_due(db, STORE) is None
    async with db.transaction() as conn:
        await products.schedule(conn, STORE, "A", '{"price": "2"}', 1, "2026-01-03T00:00:00+00:00", T0, "http")
        await products.schedule(conn, STORE, "B", '{"price": "3"}', 1, "2026-01-01T12:00:00+00:00", T0, "http")
        await products.upsert(conn, STORE, "C", _record("c"), None, T0, "2026-01-02T00:00:00+00:00")
    assert await products.next_due(db, STORE) == "2026-01-01T12:00:00+00:00"
    async with db.transaction() as conn:
        due = await products.due_scheduled(conn, STORE, "2026-01-02T00:00:00+00:00")
        assert [r["sku"] for r in due] == ["B"]
        await products.drop_scheduled(conn, due[0]["id"])
        flips = await products.due_changes(conn, STORE, "2026-01-02T00:00:00+00:00")
        assert [(r["sku"], r["next_change_at"]) for r in flips] == [("C", "2026-01-02T00:00:00+00:00")]
        await products.set_next_change(conn, STORE, "C", None)
    assert await products.next_due(db, STORE) == "2026-01-03T00:00:00+00:00"
    assert [r["sku"] for r in await products.records(db, STORE)] == ["C"]
    assert [r["valid_from"] for r in await products.scheduled(db, STORE, "A")] == ["2026-01-03T00:00:00+00:00"]


async def test_search_matches_wildcards_literally_and_puts_exact_matches_first(db: Database) -> None:
    async with db.transaction() as conn:
        for sku, name, ean in (("100", "Milk 100%", None), ("1000", "Bread", "5901234123457"),
                               ("200", "Milk 2_5", None), ("300", "Milk 205", None), ("5901234123457", "Jam", None)):
            await products.upsert(conn, STORE, sku, _record(name, ean), None, T0, None)
        await conn.execute("INSERT INTO labels (mac, store, sku, model, updated_at) VALUES (?, ?, ?, ?, ?)",
                           ("AA:BB:CC:DD:EE:01", STORE, "200", "2.9-bwry", T0))
    total, rows = await products.search(db, STORE, "2_5", limit=10, offset=0)
    assert (total, [r["sku"] for r in rows]) == (1, ["200"])  # "_" is not "any character"
    total, rows = await products.search(db, STORE, "100%", limit=10, offset=0)
    assert (total, [r["sku"] for r in rows]) == (1, ["100"])
    total, rows = await products.search(db, STORE, "5901234123457", limit=10, offset=0)
    assert (total, [r["sku"] for r in rows]) == (2, ["1000", "5901234123457"])
    total, rows = await products.search(db, STORE, "100", limit=10, offset=0)
    assert [r["sku"] for r in rows] == ["100", "1000"]  # the exact SKU first
    total, rows = await products.search(db, STORE, None, limit=2, offset=1)
    assert (total, [r["sku"] for r in rows]) == (5, ["1000", "200"])
    summary = await products.summary(db, STORE, "200")
    assert summary is not None and summary["n_labels"] == 1 and json.loads(summary["record"])["name"] == "Milk 2_5"
    assert await products.summary(db, STORE, "nope") is None


def test_escape_like_escapes_the_escape_character_first() -> None:
    assert escape_like("a\\%_b") == "a\\\\\\%\\_b"


async def test_templates_save_replaces_the_row_and_reads_by_name(db: Database) -> None:
    async with db.transaction() as conn:
        assert await templates.get(conn, "shelf") is None
        await templates.save(conn, "shelf", "v1", 1, T0, "Anna")
        await templates.save(conn, "shelf", "v2", 2, T0, None)
        await templates.save(conn, "promo", "p1", 1, T0, "Ola")
    row = await templates.get(db, "shelf")
    assert row is not None and (row["source"], row["version"]) == ("v2", 2)
    assert sorted((r["name"], r["updated_by"]) for r in await templates.stored(db)) == [("promo", "Ola"),
                                                                                       ("shelf", None)]
    assert [r["name"] for r in await templates.by_names(db, ["shelf", "missing"])] == ["shelf"]
    assert await templates.by_names(db, []) == []


async def test_tokens_are_listed_oldest_first_and_revoked_in_place(db: Database) -> None:
    async with db.transaction() as conn:
        await tokens.insert(conn, "b" * 12, "h2", "pos", "till", "2026-01-02T00:00:00+00:00")
        await tokens.insert(conn, "a" * 12, "h1", "admin", "boss", "2026-01-02T00:00:00+00:00")
        await tokens.insert(conn, "c" * 12, "h3", "tech", "anna", T0, "s1,s2")
        assert await tokens.exists(conn, "a" * 12) and not await tokens.exists(conn, "d" * 12)
        await tokens.revoke(conn, "b" * 12, "2026-01-03T00:00:00+00:00")
    assert [r["id"] for r in await tokens.listing(db, include_revoked=True)] == ["c" * 12, "a" * 12, "b" * 12]
    assert [r["id"] for r in await tokens.listing(db, include_revoked=False)] == ["c" * 12, "a" * 12]
    cred = await tokens.credentials(db, "b" * 12)
    assert cred is not None and tuple(cred) == ("h2", "pos", "till", "2026-01-03T00:00:00+00:00", None)
    assert await tokens.credentials(db, "d" * 12) is None
    row = await tokens.get(db, "c" * 12)
    assert row is not None and row["revoked_at"] is None and row["created_at"] == T0 and row["stores"] == "s1,s2"


async def test_audit_pages_newest_first_with_filters(db: Database) -> None:
    async with db.transaction() as conn:
        for i, action in enumerate(("label.bind", "labelXbind", "label.unbind", "price.update", "label.bind")):
            await audit.insert(conn, f"2026-01-01T00:0{i}:00+00:00", "anna" if i < 3 else "ola", "tech", action,
                               "AA:BB:CC:DD:EE:01", None, json.dumps({"i": i}))
    rows = await audit.newest(db, before=None, limit=2, target="AA:BB:CC:DD:EE:01", action_prefix="label.")
    assert [r["action"] for r in rows] == ["label.bind", "label.unbind"]
    more = await audit.newest(db, before=rows[-1]["id"], limit=2, target="AA:BB:CC:DD:EE:01", action_prefix="label.")
    assert [json.loads(r["after"])["i"] for r in more] == [0]  # "labelXbind" is not a "label." action
    assert [r["action"] for r in await audit.newest(db, before=None, limit=10, actor="ola")] == [
        "label.bind", "price.update"]
    assert len(await audit.newest(db, before=None, limit=10)) == 5
    assert await audit.count_since(db, "price.update", "2026-01-01T00:03:00+00:00") == 1
    assert await audit.count_since(db, "price.update", "2026-01-01T00:03:01+00:00") == 0


async def test_store_upsert_keeps_its_first_creation_time(db: Database) -> None:
    async with db.transaction() as conn:
        await stores.upsert(conn, STORE, "Shop 2", "EUR", '{"Cena": "price"}', "2027-01-01T00:00:00+00:00",
                            language="fr", country="FR", timezone="Europe/Paris")
    row = await stores.get(db, STORE)
    assert row is not None and tuple(row) == (STORE, "Shop 2", "EUR", '{"Cena": "price"}', T0, "fr", "FR", "Europe/Paris")
    assert await stores.count(db) == 1
