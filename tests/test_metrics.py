"""The server's Prometheus metrics agree with each other and with the database.

Real parts: the server with its SQLite file and render process, Mosquitto or the embedded
broker, the gateway and simulated labels (`tests.pipeline_shop`), and /metrics over HTTP.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from eslserver.db.database import DatabaseError
from eslserver.db.sqlite import SqliteDatabase
from eslserver.server import SYSTEM, Server
from eslserver.timeutil import iso, utcnow
from tests.brokers import broker_url  # noqa: F401  (fixture: mosquitto and amqtt)
from tests.pipeline_shop import expected_hash_for, shop, shop_settings

MILK: dict[str, Any] = {"sku": "100100", "name": "Mleko 3,2% 1 l", "price": "3.49", "seq": 1}
BREAD: dict[str, Any] = {"sku": "100200", "name": "Chleb żytni 500 g", "price": "5.99", "seq": 1}
MAC1, MAC2 = "AA:BB:CC:00:01:01", "AA:BB:CC:00:01:02"


async def scrape(server: Server) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of GET /metrics, as (name, sorted labels) → value."""
    async with aiohttp.ClientSession() as http, \
            http.get(f"http://127.0.0.1:{server.http_port}/metrics") as reply:
        assert reply.status == 200
        text = await reply.text()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def job_counters(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]
                 ) -> tuple[Counter[str], Counter[tuple[str, str]]]:
    created: Counter[str] = Counter()
    finished: Counter[tuple[str, str]] = Counter()
    for (name, labels), value in samples.items():
        tags = dict(labels)
        if name == "esl_jobs_created_total":
            created[tags["kind"]] += int(value)
        elif name == "esl_jobs_finished_total":
            finished[(tags["kind"], tags["outcome"])] += int(value)
    return created, finished


async def assert_counters_match_the_table(server: Server) -> tuple[Counter[str], Counter[tuple[str, str]]]:
    """created - Σ finished = open jobs, per kind; each finished outcome = jobs in that state."""
    created, finished = job_counters(await scrape(server))
    rows = await server.db.read("SELECT kind, state, COUNT(*) AS n FROM jobs GROUP BY kind, state")
    in_table = {(r["kind"], r["state"]): r["n"] for r in rows}
    for kind in ("pair", "image", "command"):
        ended = sum(n for (k, _), n in finished.items() if k == kind)
        still_open = in_table.get((kind, "queued"), 0) + in_table.get((kind, "sent"), 0)
        assert created[kind] >= ended, (kind, created, finished)
        assert created[kind] - ended == still_open, (kind, created, finished, in_table)
        for outcome in ("done", "failed", "superseded"):
            assert finished[(kind, outcome)] == in_table.get((kind, outcome), 0), (kind, outcome, finished, in_table)
    return created, finished


async def test_job_counters_agree_through_a_real_pipeline(tmp_path: Path, broker_url: str) -> None:  # noqa: F811
    async with shop(tmp_path, broker_url, labels=3) as s:
        await s.seed([MILK, BREAD])
        a, b, c = s.macs
        await s.bind({a: MILK["sku"], b: MILK["sku"], c: BREAD["sku"]})
        await s.converged()
        await s.publish_prices([{"sku": MILK["sku"], "price": "2.99", "seq": 2},
                                {"sku": BREAD["sku"], "price": "6.49", "seq": 2}])
        want = expected_hash_for({**MILK, "price": "2.99"}, settings=s.settings)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        while (await s.label(a))["expected_hash"] != want and loop.time() < deadline:
            await asyncio.sleep(0.05)
        await s.converged()
        created, finished = await assert_counters_match_the_table(s.server)
        # every label was paired once and then shown two images; a pairing queued on a label's
        # first check-in may end before the pipeline writes what it read: no second pairing
        jobs = await s.server.db.read("SELECT id, mac, kind, state, created_at, finished_at FROM jobs ORDER BY id")
        assert created["pair"] == 3 and finished[("pair", "done")] == 3, "\n".join(str(tuple(r)) for r in jobs)
        assert finished[("image", "done")] >= 6


async def test_superseded_and_commands_are_counted_and_open_jobs_adopted_at_start(tmp_path: Path) -> None:
    settings = shop_settings(tmp_path / "data", None, render_workers=1)
    # no MQTT: nothing is sent, so a newer image supersedes the queued one
    async with Server(settings, mqtt=False, render_processes=False) as server:
        await server.ingest.submit([MILK, BREAD], source="test", actor=SYSTEM)
        await server.labels.bind(MAC1, MILK["sku"], actor=SYSTEM, model="2.9-bwry")
        await server.labels.bind(MAC2, BREAD["sku"], actor=SYSTEM, model="2.9-bwry")
        await wait_for_jobs(server, "SELECT COUNT(*) FROM jobs WHERE kind = 'image' AND state = 'queued'", 2)
        await server.ingest.submit({"sku": MILK["sku"], "price": "2.99", "seq": 2}, source="test", actor=SYSTEM)
        await wait_for_jobs(server, "SELECT COUNT(*) FROM jobs WHERE state = 'superseded'", 1)
        await server.labels.unbind(MAC2, actor=SYSTEM)
        async with server.db.transaction() as conn:  # as if paired: a command may go to it
            await conn.execute("UPDATE labels SET label_key = ? WHERE mac = ?", (b"k" * 16, MAC1))
        await server.labels.flash(MAC1, seconds=3, actor=SYSTEM)
        created, finished = await assert_counters_match_the_table(server)
        assert finished[("image", "superseded")] == 2 and created["command"] == 1
        assert created["pair"] == 2 and created["image"] == 3
    # a restart finds 4 jobs open (2 pairings, MAC1's image, the flash): they will end in this
    # run, so this run counts them as its own; nothing has ended in it yet
    async with Server(settings, mqtt=False, render_processes=False) as again:
        created, finished = job_counters(await scrape(again))
        assert created == Counter({"pair": 2, "image": 1, "command": 1}) and not sum(finished.values())


async def wait_for_jobs(server: Server, query: str, want: int, timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        row = await server.db.read_one(query)
        if row is not None and row[0] >= want:
            return
        assert loop.time() < deadline, f"{query}: {row[0] if row else None} < {want}"
        await asyncio.sleep(0.02)


async def test_time_to_shelf_of_a_scheduled_change_counts_from_valid_from(tmp_path: Path,
                                                                          broker_url: str) -> None:  # noqa: F811
    async with shop(tmp_path, broker_url, labels=1) as s:
        await s.seed([MILK])
        mac = s.macs[0]
        await s.bind({mac: MILK["sku"]})
        await s.converged()
        histogram = s.server.metrics.time_to_shelf
        before = sample(histogram, "_sum"), sample(histogram, "_count")
        valid_from = utcnow() + timedelta(seconds=3)
        await s.publish_prices({"sku": MILK["sku"], "price": "1.99", "seq": 2, "valid_from": iso(valid_from)})
        want = expected_hash_for({**MILK, "price": "1.99"}, settings=s.settings)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while s.store.labels[mac].displayed_hash.hex() != want or sample(histogram, "_count") == before[1]:
            assert loop.time() < deadline, "the scheduled price never reached the label"
            await asyncio.sleep(0.05)
        since_valid_from = (utcnow() - valid_from).total_seconds()
        observed = sample(histogram, "_sum") - before[0]
        assert sample(histogram, "_count") - before[1] == 1
        # counted from valid_from: at most the time since then (from the message's arrival
        # it would be 3 s more); the job carries the same origin for the dashboard
        assert 0 <= observed <= since_valid_from, (observed, since_valid_from)
        job = await s.server.db.read_one("SELECT origin_at FROM jobs WHERE mac = ? AND kind = 'image' "
                                         "ORDER BY id DESC LIMIT 1", (mac,))
        assert job is not None and job["origin_at"] == iso(valid_from)


def sample(histogram: Any, suffix: str) -> float:
    for metric in histogram.collect():
        for s in metric.samples:
            if s.name.endswith(suffix):
                return float(s.value)
    raise AssertionError(f"no {suffix} sample")


async def test_metrics_have_process_metrics_and_no_created_series(tmp_path: Path) -> None:
    settings = shop_settings(tmp_path / "data", None)
    async with Server(settings, mqtt=False, render_processes=False) as server:
        await server.ingest.submit(MILK, source="test", actor=SYSTEM)
        samples = await scrape(server)
        names = {name for name, _ in samples}
        assert not [n for n in names if n.endswith("_created")], sorted(n for n in names if n.endswith("_created"))
        assert {"process_resident_memory_bytes", "process_cpu_seconds_total", "process_open_fds",
                "process_start_time_seconds", "python_info"} <= names, sorted(names)
        assert samples[("esl_price_updates_received_total", (("source", "test"),))] == 1
        assert ("esl_jobs_finished_total", (("kind", "image"), ("outcome", "superseded"))) in samples


async def test_counts_follow_commits_not_attempts(tmp_path: Path) -> None:
    """What `Outbox` counts is applied after COMMIT: a rolled-back transaction, or a failed
    savepoint inside one (one bad gateway event of a batch), counts nothing."""
    counted: list[str] = []
    async with SqliteDatabase(tmp_path / "esl.db") as db:
        async with db.transaction() as conn:
            db.after_commit(lambda: counted.append("kept"))
            with pytest.raises(ValueError):
                async with db.savepoint(conn):
                    await conn.execute("INSERT INTO stores (id, name, currency, created_at) "
                                       "VALUES ('s1', 's1', 'PLN', '2026-01-01T00:00:00.000000+00:00')")
                    db.after_commit(lambda: counted.append("undone"))
                    raise ValueError("this event fails")
            assert counted == []  # nothing before the commit
        assert counted == ["kept"]
        assert await db.read_one("SELECT 1 FROM stores WHERE id = 's1'") is None
        with pytest.raises(RuntimeError):
            async with db.transaction():
                db.after_commit(lambda: counted.append("rolled back"))
                raise RuntimeError("the transaction fails")
        assert counted == ["kept"]
        with pytest.raises(DatabaseError, match="no transaction is open"):
            db.after_commit(lambda: None)
