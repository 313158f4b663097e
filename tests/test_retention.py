"""Retention: old rows go in small batches, what is still used or still read stays.

Real parts: the server's SQLite file (migrated as the server migrates it), the owner modules'
own statements, the real pricing functions (the lowest price of 30 days is computed and the
label drawn before and after pruning), a real server's /metrics over HTTP, and settings
loaded as `esl serve` loads them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any


import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eslserver import pricing
from eslserver.config import MIN_PRICE_HISTORY_DAYS, ConfigError, Settings, load_settings
from eslserver.db.database import Connection, Database
from eslserver.history_import import import_history
from eslserver.ingest import price_periods
from eslserver.metrics import Metrics
from eslserver.retention import Retention, history_to_prune
from eslserver.server import SYSTEM, Server
from eslserver.store import audit as audit_rows
from eslserver.store import events as event_rows
from eslserver.store import images as image_rows
from eslserver.store import jobs as job_rows
from eslserver.store import products
from eslserver.timeutil import iso, utcnow
from tests.pipeline_shop import expected_hash_for
from tests.postgres import engine_db  # noqa: F401  (fixture: SQLite and PostgreSQL)
from tests.test_metrics import scrape

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


def _settings(tmp_path: Path, **overrides: Any) -> Settings:
    return load_settings(None, environ={}, overrides={"data_dir": tmp_path / "data", "http_port": 0, **overrides})


class CountingDatabase(Database):
    """The real database (SQLite or PostgreSQL), counting its write transactions (how many a round takes)."""

    transactions: int


@pytest.fixture
async def db(engine_db: Database) -> AsyncIterator[CountingDatabase]:
    counting: Any = engine_db
    counting.transactions = 0
    plain = engine_db.transaction

    @contextlib.asynccontextmanager
    async def transaction() -> AsyncIterator[Connection]:
        async with plain() as conn:
            counting.transactions += 1
            yield conn

    counting.transaction = transaction
    yield counting


def _ago(days: float) -> str:
    return iso(NOW - timedelta(days=days))


async def _ids(db: Database, table: str, key: str = "id") -> set[Any]:
    return {r[0] for r in await db.read(f"SELECT {key} FROM {table}")}


async def _label(conn: Connection, mac: str, *, expected: str | None = None,
                 displayed: str | None = None) -> None:
    await conn.execute("INSERT INTO labels (mac, store, model, updated_at, expected_hash, displayed_hash) "
                       "VALUES (?, 'demo', '2.9-bwry', ?, ?, ?)", (mac, _ago(0), expected, displayed))


async def _job(conn: Connection, mac: str, state: str, *, finished_days: float | None,
               created_days: float = 100, image: str | None = None, base: str | None = None) -> int:
    return await job_rows.insert(conn, {
        "store": "demo", "mac": mac, "kind": "image", "state": state, "image_hash": image, "base_hash": base,
        "next_attempt_at": _ago(created_days), "created_at": _ago(created_days),
        "finished_at": None if finished_days is None else _ago(finished_days)})


# -- jobs, events, audit, images -----------------------------------------------------------

async def test_old_rows_go_and_what_is_open_or_used_stays(db: CountingDatabase, tmp_path: Path) -> None:
    async with db.transaction() as conn:
        await _label(conn, "AA:00:00:00:00:01", expected="e" * 64, displayed="d" * 64)
        jobs = {
            "done_old": await _job(conn, "AA:00:00:00:00:01", "done", finished_days=15),
            "failed_old": await _job(conn, "AA:00:00:00:00:01", "failed", finished_days=40),
            "superseded_old": await _job(conn, "AA:00:00:00:00:01", "superseded", finished_days=20,
                                         image="f" * 64),
            "done_young": await _job(conn, "AA:00:00:00:00:01", "done", finished_days=13),
            # open for months (a label away all that time): never deleted
            "queued_ancient": await _job(conn, "AA:00:00:00:00:01", "queued", finished_days=None,
                                         created_days=300, image="a" * 64),
            "sent_ancient": await _job(conn, "AA:00:00:00:00:01", "sent", finished_days=None,
                                       created_days=300, image="c" * 64, base="b" * 64),
        }
        await event_rows.add_many(conn, [event_rows.Event(_ago(d), "demo", None, None, "nack", {"d": d})
                                         for d in (31, 29, 400)])
        for d in (366, 364):
            await audit_rows.insert(conn, _ago(d), "admin", "admin", "label.bind", f"d{d}", None, None)
        images = {
            "expected": "e" * 64, "displayed": "d" * 64, "open_job": "a" * 64, "open_base": "b" * 64,
            "open_sent": "c" * 64, "only_finished_job": "f" * 64, "unused_old": "0" * 64, "unused_young": "1" * 64,
        }
        await image_rows.add_many(conn, [(digest, "2.9-bwry", 1, b"x", _ago(6 if name == "unused_young" else 90))
                                         for name, digest in images.items()])
    report = await Retention(db, _settings(tmp_path), Metrics()).run(NOW)

    assert await _ids(db, "jobs") == {jobs[k] for k in ("done_young", "queued_ancient", "sent_ancient")}
    assert sorted(json.loads(r["detail"])["d"] for r in await db.read("SELECT detail FROM events")) == [29]
    assert await _ids(db, "audit", "target") == {"d364"}
    kept = {name for name, digest in images.items() if digest in await _ids(db, "images", "hash")}
    assert kept == {"expected", "displayed", "open_job", "open_base", "open_sent", "unused_young"}
    assert report.deleted == {"jobs": 3, "events": 2, "audit": 1, "images": 2, "pos_update_ids": 0,
                              "price_history": 0}


async def test_zero_keeps_everything(db: CountingDatabase, tmp_path: Path) -> None:
    async with db.transaction() as conn:
        await event_rows.add_many(conn, [event_rows.Event(_ago(3000), None, None, None, "nack", {})])
        await image_rows.add_many(conn, [("0" * 64, "2.9-bwry", 1, b"x", _ago(3000))])
        await _job(conn, "AA:00:00:00:00:01", "done", finished_days=3000)
        await audit_rows.insert(conn, _ago(3000), "admin", "admin", "label.bind", "x", None, None)
    forever = _settings(tmp_path, retention_jobs_days=0, retention_events_days=0, retention_audit_days=0,
                        retention_images_days=0, retention_price_history_days=0)
    report = await Retention(db, forever, Metrics()).run(NOW)
    assert set(report.batches) == {"pos_update_ids"}  # its own setting has no "forever"
    for table in ("events", "images", "jobs", "audit"):
        assert len(await _ids(db, table, "id" if table != "images" else "hash")) == 1, table


async def test_a_prune_of_1200_rows_takes_three_transactions_of_at_most_500(db: CountingDatabase, tmp_path: Path) -> None:
    async with db.transaction() as conn:
        await event_rows.add_many(conn, [event_rows.Event(_ago(60 + i / 1000), None, None, None, "nack", {})
                                         for i in range(1200)])
        await event_rows.add(conn, event_rows.Event(_ago(1), None, None, None, "nack", {}))
    metrics = Metrics()
    keep_others = _settings(tmp_path, retention_jobs_days=0, retention_audit_days=0, retention_images_days=0,
                            retention_price_history_days=0)
    retention = Retention(db, keep_others, metrics, batch=500)
    before = db.transactions
    report = await retention.run(NOW)
    assert report.batches["events"] == [500, 500, 200]
    assert db.transactions - before == 3 + len(report.batches["pos_update_ids"])
    assert len(await _ids(db, "events")) == 1
    assert metrics.registry.get_sample_value("esl_retention_deleted_total", {"table": "events"}) == 1200


async def test_a_round_lets_other_writers_in_between_its_batches(db: CountingDatabase, tmp_path: Path) -> None:
    async with db.transaction() as conn:
        await event_rows.add_many(conn, [event_rows.Event(_ago(60), None, None, None, "nack", {})
                                         for _ in range(5000)])
    retention = Retention(db, _settings(tmp_path), Metrics(), batch=500)
    order: list[str] = []
    waits: list[float] = []
    loop = asyncio.get_running_loop()

    async def ingest() -> None:  # a POS writing as fast as it can while the round runs
        while not round_task.done():
            asked = loop.time()
            async with db.transaction() as conn:
                waits.append(loop.time() - asked)
                await event_rows.add(conn, event_rows.Event(_ago(0), None, None, None, "ingest", {}))
            order.append("ingest")
            await asyncio.sleep(0)

    async def pruning() -> None:
        report = await retention.run(NOW)
        assert report.batches["events"] == [500] * 10 + [0]
        order.append("round done")

    round_task = asyncio.create_task(pruning())
    await asyncio.gather(round_task, ingest())
    assert order.index("round done") > 5, order  # the writer got in while the round was still deleting
    assert max(waits) < 2.0  # one small batch at most (generous: a busy CI machine)


@pytest.mark.parametrize("limit", [0, -1, True, 2.5])
async def test_a_batch_without_a_bound_is_refused(db: CountingDatabase, limit: Any) -> None:
    """SQLite reads ``LIMIT -1`` as no limit at all: one batch would hold the lock for a table."""
    async with db.transaction() as conn:
        await event_rows.add(conn, event_rows.Event(_ago(400), None, None, None, "nack", {}))
        for prune in (job_rows.prune_before, event_rows.prune_before, audit_rows.prune_before,
                      image_rows.prune_before):
            with pytest.raises(ValueError, match="limit"):
                await prune(conn, _ago(0), limit)
    assert len(await _ids(db, "events")) == 1


async def test_images_in_use_do_not_slow_the_sweep_down_or_stop_it(db: CountingDatabase, tmp_path: Path) -> None:
    """Thousands of old images still shown, a few unused ones among and after them: one round
    finds every unused one, looking at each old image once (not once per batch)."""
    async with db.transaction() as conn:
        rows, unused = [], []
        for i in range(300):
            digest = f"{i:064x}"
            rows.append((digest, "2.9-bwry", 1, b"x", _ago(100 - i / 10)))
            if i % 37 == 5:
                unused.append(digest)
            else:
                await _label(conn, f"AA:00:00:00:{i // 256:02X}:{i % 256:02X}", expected=digest)
        await image_rows.add_many(conn, rows)
    retention = Retention(db, _settings(tmp_path), Metrics(), batch=2, max_batches=1000)
    report = await retention.run(NOW)
    assert report.deleted["images"] == len(unused)
    assert not set(unused) & await _ids(db, "images", "hash")
    assert len(report.batches["images"]) <= 300 // (2 * 4) + 4  # a window of 8 images per batch


async def test_a_sweep_cut_short_goes_on_next_round(db: CountingDatabase, tmp_path: Path) -> None:
    async with db.transaction() as conn:
        await image_rows.add_many(conn, [(f"{i:064x}", "2.9-bwry", 1, b"x", _ago(100 - i / 10)) for i in range(40)])
        for i in range(39):
            await _label(conn, f"AA:00:00:00:00:{i:02X}", displayed=f"{i:064x}")
    retention = Retention(db, _settings(tmp_path), Metrics(), batch=1, max_batches=5)
    rounds = 0
    while f"{39:064x}" in await _ids(db, "images", "hash"):
        await retention.run(NOW)
        rounds += 1
        assert rounds < 10, "the sweep starts from the oldest image again each round"
    assert len(await _ids(db, "images", "hash")) == 39


# -- price history -------------------------------------------------------------------------

def _at(days: float) -> str:
    return (utcnow() - timedelta(days=days)).isoformat()


async def _shown(server: Server, sku: str, when: datetime) -> tuple[str | None, str]:
    """The lowest price of 30 days the label shows at `when`, and the label's image hash."""
    row = await products.get(server.db, server.settings.store, sku)
    assert row is not None
    periods = (await price_periods(server.db, server.settings.store, [sku]))[sku]
    record = pricing.product_for_render(pricing.record_from_json(row["record"]), periods, when)
    return record.get("lowest_30d"), expected_hash_for({**record, "sku": sku}, settings=server.settings)


CASES: dict[str, tuple[list[dict[str, Any]], str]] = {
    # a promotion in force now: the 30 days before it read the price set 45 days ago
    "promotion": ([{"price": "12.00", "valid_from": _at(500)},
                   {"price": "7.00", "valid_from": _at(480)},  # long ago: no longer read
                   {"price": "11.00", "promo": {"price": "5.00", "from": _at(300), "to": _at(290)},
                    "valid_from": _at(310)},
                   {"price": "8.00", "valid_from": _at(45)},
                   {"price": "8.00", "promo": {"price": "6.00", "from": _at(10), "to": _at(-10)},
                    "valid_from": _at(11)}], "8.00"),
    # reduced for 200 days (regular price above the price): the rule reads the 30 days before
    # day -200, far older than the retention; a careless age-only prune would drop them
    "long reduction": ([{"price": "12.00", "valid_from": _at(300)},
                        {"price": "11.00", "valid_from": _at(260)},
                        {"price": "9.00", "regular_price": "12.00", "valid_from": _at(200)}], "11.00"),
    # a progressive reduction: 9.00 from day -120, deepened to 8.00 on day -60 without a break
    "progressive": ([{"price": "10.20", "valid_from": _at(450)},
                     {"price": "10.00", "valid_from": _at(400)},
                     {"price": "10.50", "valid_from": _at(150)},
                     {"price": "9.00", "regular_price": "10.50", "valid_from": _at(120)},
                     {"price": "8.00", "regular_price": "10.50", "valid_from": _at(60)}], "10.50"),
}


@pytest.mark.parametrize("case", sorted(CASES))
async def test_the_price_history_the_lowest_price_rule_reads_is_kept(tmp_path: Path, case: str) -> None:
    items, lowest = CASES[case]
    config = _settings(tmp_path, retention_price_history_days=MIN_PRICE_HISTORY_DAYS)
    async with Server(config, mqtt=False, http=False, render_processes=False) as server:
        result = await import_history(server.ingest, [{"sku": "P1", "name": "Kawa", **item} for item in items],
                                      actor=SYSTEM)
        assert not result.errors, result.errors
        now = utcnow()
        moments = [now, now + timedelta(days=1), now + timedelta(days=20)]
        before = [await _shown(server, "P1", when) for when in moments]
        assert before[0][0] is not None and Decimal(before[0][0]) == Decimal(lowest)
        rows_before = (await products.history(server.db, "demo", ["P1"]))["P1"]

        report = await server.retention.run(now)

        rows_after = (await products.history(server.db, "demo", ["P1"]))["P1"]
        assert report.deleted["price_history"] == len(rows_before) - len(rows_after) > 0  # it did prune
        assert [await _shown(server, "P1", when) for when in moments] == before
        assert rows_after[-1]["id"] == rows_before[-1]["id"]  # the latest change stays
        assert (await server.retention.run(now)).deleted["price_history"] == 0


def test_the_lookback_of_a_long_reduction_is_its_first_step_less_30_days() -> None:
    def period(price: str, start: float, reduction: bool = False) -> pricing.PricePeriod:
        return pricing.PricePeriod(Decimal(price), NOW - timedelta(days=start), None, reduction)

    history = [period("12.00", 300), period("9.00", 200, True), period("8.00", 100, True)]
    assert pricing.lookback_start(history, NOW) == NOW - timedelta(days=230)
    assert pricing.lookback_start(history[:1], NOW) == NOW - timedelta(days=30)


@st.composite
def _histories(draw: st.DrawFn) -> tuple[list[tuple[int, pricing.PricePeriod]], datetime]:
    """A SKU's history as the server writes it (`pricing.periods_for_update` on the record as
    it was), updates spread over 600 days, and the time `now` of the last one or later."""
    record: dict[str, Any] | None = None
    rows: list[tuple[int, pricing.PricePeriod]] = []
    t = NOW - timedelta(days=600)
    money = st.integers(100, 2000).map(lambda c: Decimal(c).scaleb(-2))
    for _ in range(draw(st.integers(1, 12))):
        t += timedelta(hours=draw(st.integers(1, 24 * 120)))
        price = draw(money)
        item: dict[str, Any] = {"sku": "P", "price": str(price)}
        if draw(st.booleans()):
            item["regular_price"] = str(price + draw(st.integers(0, 300)) * Decimal("0.01"))
        if draw(st.booleans()):
            start = t + timedelta(hours=draw(st.integers(-48, 24 * 60)))
            end = start + timedelta(hours=draw(st.integers(1, 24 * 90)))
            item["promo"] = {"price": str(max(Decimal("0.01"), price - Decimal("0.50"))), "from": start.isoformat(),
                             "to": end.isoformat()}
        update = pricing.validate_update(item, default_currency="PLN")
        for period in pricing.periods_for_update(record, update, t):
            rows.append((len(rows) + 1, period))
        record = pricing.merge_record(record, update)
    now = t + timedelta(hours=draw(st.integers(0, 24 * 60)))
    return rows, now


@given(_histories(), st.integers(MIN_PRICE_HISTORY_DAYS, 400),
       st.lists(st.integers(0, 24 * 90), min_size=1, max_size=4))
@settings(max_examples=300, deadline=None, derandomize=True)
def test_pruning_never_changes_a_price_or_a_lowest_price_from_now_on(
        history: tuple[list[tuple[int, pricing.PricePeriod]], datetime], days: int, later: list[int]) -> None:
    rows, now = history
    gone = set(history_to_prune(rows, now, now - timedelta(days=days)))
    full = [p for _, p in rows]
    kept = [p for i, p in rows if i not in gone]
    for hours in later:
        when = now + timedelta(hours=hours)
        assert pricing.selling_price_at(kept, when) == pricing.selling_price_at(full, when)
        assert pricing.prior_price(kept, when) == pricing.prior_price(full, when)
    assert not gone & {i for i, p in rows if p.start >= now - timedelta(days=days)}  # never younger ones
    assert history_to_prune([(i, p) for i, p in rows if i not in gone], now, now - timedelta(days=days)) == []


# -- metrics and settings --------------------------------------------------------------------

async def test_table_sizes_and_deletions_on_metrics(tmp_path: Path) -> None:
    config = _settings(tmp_path, retention_interval_s=0.2)
    async with Server(config, mqtt=False, render_processes=False) as server:
        async with server.db.transaction() as conn:
            await event_rows.add_many(conn, [event_rows.Event(iso(utcnow() - timedelta(days=90)), None, None,
                                                              None, "nack", {}) for _ in range(7)])
            await event_rows.add(conn, event_rows.Event(iso(utcnow()), None, None, None, "nack", {}))
        tables = {r["name"] for r in await server.db.read(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")}
        samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        for _ in range(100):  # the first round runs retention_interval_s after the start
            samples = await scrape(server)
            if samples.get(("esl_retention_deleted_total", (("table", "events"),))) == 7 and \
                    samples.get(("esl_table_rows", (("table", "events"),))) == 1:
                break
            await asyncio.sleep(0.1)
        assert samples.get(("esl_retention_deleted_total", (("table", "events"),))) == 7
        rows = {dict(labels)["table"]: value for (name, labels), value in samples.items() if name == "esl_table_rows"}
        assert set(rows) == tables and rows["events"] == 1 and rows["stores"] == 1
        assert samples[("esl_database_bytes", ())] > 0


@pytest.mark.parametrize(("setting", "value"), [
    ("retention_price_history_days", "30"),  # shorter than the lowest-price rule reads
    ("retention_price_history_days", "1"),
    ("retention_jobs_days", "-1"),
    ("retention_events_days", "36501"),
    ("retention_audit_days", "a year"),
    ("retention_images_days", "1.5"),
    ("retention_interval_s", "0"),
    ("retention_interval_s", "nan"),
])
def test_invalid_retention_settings_are_refused_naming_setting_and_value(setting: str, value: str,
                                                                        tmp_path: Path) -> None:
    for source in _sources(tmp_path, setting, value):
        with pytest.raises(ConfigError) as info:
            source()
        assert setting in str(info.value) and value in str(info.value), str(info.value)


def _sources(tmp_path: Path, setting: str, value: str) -> Iterator[Any]:
    yield lambda: load_settings(None, environ={f"ESL_{setting.upper()}": value})
    toml = tmp_path / "esl.toml"
    literal = value if value.lstrip("-").replace(".", "", 1).isdigit() else json.dumps(value)
    toml.write_text(f"{setting} = {literal}\n", encoding="utf-8")
    yield lambda: load_settings(toml, environ={})


def test_the_defaults_are_a_retailers() -> None:
    s = load_settings(None, environ={})
    assert (s.retention_jobs_days, s.retention_events_days, s.retention_audit_days, s.retention_images_days,
            s.retention_price_history_days, s.retention_interval_s) == (14, 30, 365, 7, 400, 600.0)
    assert load_settings(None, environ={"ESL_RETENTION_PRICE_HISTORY_DAYS": "0"}).retention_price_history_days == 0
