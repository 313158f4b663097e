"""Honest health: real faults (a read-only database, a full disk on a tmpfs made by the test,
pages overwritten with random bytes, a broker stopped) turn `/healthz` degraded with the
reason and the ``esl_health`` gauges to 0, and both come back when the fault goes away."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import random
import shutil
import sqlite3
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from eslserver.auth import create_token
from eslserver.config import load_settings
from eslserver.db.database import DatabaseError
from eslserver.db.sqlite import SqliteDatabase
from eslserver.health import Health
from eslserver.server import SYSTEM, Server
from tests.brokers import MosquittoBroker
from tests.test_api_schema import ApiClient, Reply, add_products, api, sql  # noqa: F401  (fixture)

PAGE = 4096


async def _health(api: ApiClient) -> Reply:
    return await api.call("GET", "/healthz", role=None)  # checked against the OpenAPI document


async def _until(api: ApiClient, status: str, timeout: float = 30.0) -> Reply:
    """/healthz once its status is `status` (the housekeeping loop runs every 2 s)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        reply = await _health(api)
        if reply.json["status"] == status or loop.time() > deadline:
            return reply
        await asyncio.sleep(0.2)


async def _gauge(api: ApiClient, component: str) -> str:
    text = (await api.call("GET", "/metrics", role=None)).body.decode()
    prefix = f'esl_health{{component="{component}"}} '
    return next(line.removeprefix(prefix) for line in text.splitlines() if line.startswith(prefix))


def _products(n: int, size: int) -> list[dict[str, Any]]:
    """`n` products of about `size` bytes each (in an attribute: a name has at most 200 characters)."""
    return [{"sku": f"S{i:05d}", "price": "1.99", "name": f"Produkt {i}", "attributes": {"note": "x" * size}}
            for i in range(n)]


async def test_a_read_only_database_is_degraded_with_the_reason_and_recovers(api: ApiClient) -> None:
    assert (await _health(api)).json == {"status": "ok", "database": "ok", "mqtt": "disabled"}
    assert await _gauge(api, "database") == "1.0"
    await api.server.db.writer.execute("PRAGMA query_only = ON")  # SQLite refuses every write: SQLITE_READONLY
    reply = await api.call("POST", "/api/v1/prices", role="pos", json=_products(1, 10), check=False)
    assert reply.status >= 500
    reply = await _health(api)
    assert reply.status == 503 and reply.json["status"] == "degraded"
    assert reply.json["reasons"][0].startswith("database: read-only"), reply.json
    assert reply.json["database"].startswith("error: read-only")
    assert await _gauge(api, "database") == "0.0"
    await api.server.db.writer.execute("PRAGMA query_only = OFF")
    reply = await _until(api, "ok")  # the probe write of housekeeping sees writes work again
    assert reply.status == 200 and reply.json == {"status": "ok", "database": "ok", "mqtt": "disabled"}
    assert await _gauge(api, "database") == "1.0"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 6 MB tmpfs mounted for the test (root only)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs for a full disk: {done.stderr.strip() or done.returncode}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(directory: Path) -> Path:
    """A file that takes every free byte of `directory`'s file system."""
    filler = directory / "filler"
    chunk = b"\0" * 65536
    with filler.open("wb", buffering=0) as f:
        try:
            while True:
                f.write(chunk)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
        for size in (4096, 512, 1):  # the last partial chunks too
            try:
                while True:
                    f.write(b"\0" * size)
            except OSError:
                pass
    return filler


@pytest.fixture
async def api_on_small_disk(small_disk: Path) -> AsyncIterator[ApiClient]:
    settings = load_settings(environ={}, overrides={"data_dir": small_disk / "data", "http_port": 0})
    async with Server(settings, mqtt=False, render_processes=False) as server:
        tokens = {role: await create_token(server.db, role, f"test-{role}") for role in ("pos", "admin")}
        async with aiohttp.ClientSession() as session:
            yield ApiClient(f"http://127.0.0.1:{server.http_port}", session, server, tokens)


async def test_a_full_disk_is_degraded_with_the_reason_and_recovers_when_space_is_freed(
        api_on_small_disk: ApiClient) -> None:
    api = api_on_small_disk
    assert (await _health(api)).json["status"] == "ok"
    filler = _fill(api.server.db.path.parent)
    assert shutil.disk_usage(filler.parent).free < 64 * 1024
    reply = await api.call("POST", "/api/v1/prices", role="pos", json=_products(400, 400), check=False)
    assert reply.status >= 500, reply.body[:300]
    reply = await _health(api)
    assert reply.status == 503 and reply.json["status"] == "degraded", reply.json
    assert any(r.startswith("database: disk full") for r in reply.json["reasons"]), reply.json
    assert await _gauge(api, "database") == "0.0"
    await asyncio.sleep(2.5)  # a housekeeping round on the full disk: still degraded, no false recovery
    assert (await _health(api)).json["status"] == "degraded"
    filler.unlink()
    reply = await _until(api, "ok")
    assert reply.status == 200 and reply.json["status"] == "ok", reply.json
    reply = await api.call("POST", "/api/v1/prices", role="pos", json=_products(400, 400))
    assert reply.status == 200 and not reply.json["errors"]


async def _database_with_data(tmp_path: Path) -> Path:
    settings = load_settings(environ={}, overrides={"data_dir": tmp_path, "http_port": 0})
    async with Server(settings, mqtt=False, render_processes=False) as server:
        await server.ingest.submit(json.dumps(_products(300, 200)).encode(), source="http", actor=SYSTEM)
    return settings.database_path


def _overwrite_pages(path: Path, pages: list[int], seed: int = 14) -> None:
    """Random bytes over whole pages (numbered from 1, as SQLite does), behind SQLite's back."""
    rnd = random.Random(seed)
    with path.open("r+b") as f:
        for page in pages:
            f.seek((page - 1) * PAGE)
            f.write(rnd.randbytes(PAGE))
        f.flush()
        os.fsync(f.fileno())


async def test_a_database_with_overwritten_pages_is_refused_at_open(tmp_path: Path) -> None:
    path = await _database_with_data(tmp_path)
    assert path.stat().st_size > 10 * PAGE
    _overwrite_pages(path, [3, 5])
    with pytest.raises(DatabaseError, match=r"is corrupt \(quick_check: .+\); restore it from a backup"):
        await SqliteDatabase(path).open()


async def test_a_foreign_database_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY)")
    conn.close()
    with pytest.raises(DatabaseError, match="is not an eslserver database .*invoices"):
        await SqliteDatabase(path).open()
    with sqlite3.connect(path) as conn:  # nothing of ours was written into it
        assert [r[0] for r in conn.execute("SELECT name FROM sqlite_master")] == ["invoices"]
    conn.close()


async def test_the_periodic_quick_check_turns_health_degraded(tmp_path: Path) -> None:
    path = await _database_with_data(tmp_path)
    settings = load_settings(environ={}, overrides={"data_dir": tmp_path, "http_port": 0,
                                                    "db_check_interval_s": 3})
    async with Server(settings, mqtt=False, render_processes=False) as server:
        async with aiohttp.ClientSession() as session:
            api = ApiClient(f"http://127.0.0.1:{server.http_port}", session, server, {})
            assert (await _health(api)).json["status"] == "ok"
            _overwrite_pages(path, [3, 5])  # damaged while running, before the first periodic check
            reply = await _until(api, "degraded")
            assert reply.status == 503, reply.json
            assert any(r.startswith("database: corrupt") for r in reply.json["reasons"]), reply.json
            assert await _gauge(api, "database_integrity") == "0.0"


async def test_a_lost_broker_is_degraded_then_ok_when_it_is_back(tmp_path: Path) -> None:
    broker = MosquittoBroker()
    await broker.start()
    try:
        settings = load_settings(environ={}, overrides={"data_dir": tmp_path, "http_port": 0,
                                                        "broker_url": broker.url})
        async with Server(settings, render_processes=False) as server:
            assert server.mqtt is not None
            await asyncio.wait_for(server.mqtt.connected.wait(), 20)
            async with aiohttp.ClientSession() as session:
                api = ApiClient(f"http://127.0.0.1:{server.http_port}", session, server, {})
                assert (await _health(api)).json == {"status": "ok", "database": "ok", "mqtt": "connected"}
                await broker.stop()
                reply = await _until(api, "degraded")
                assert reply.status == 200, reply.json  # the HTTP API still works: not pulled
                assert reply.json["mqtt"] == "disconnected"
                assert reply.json["reasons"][0].startswith("broker: disconnected since 20"), reply.json
                assert await _gauge(api, "broker") == "0.0"
                await broker.start()
                reply = await _until(api, "ok", timeout=60)
                assert reply.json == {"status": "ok", "database": "ok", "mqtt": "connected"}
                assert await _gauge(api, "broker") == "1.0"
    finally:
        await broker.aclose()


def test_health_logs_each_change_once_and_keeps_corruption_met_in_use(caplog: pytest.LogCaptureFixture) -> None:
    health = Health()
    for _ in range(3):
        health.fault("database", "database: disk full (x)")
    health.clear("database")
    health.clear("database")
    assert [r.getMessage() for r in caplog.records] == [
        "health: database: disk full (x)", "health: database recovered (was: database: disk full (x))"]
    health.fault("database_integrity", "database: corrupt (y)", sticky=True)
    health.clear("database_integrity")  # a passing quick_check does not undo a bad read
    assert health.reasons == ["database: corrupt (y)"] and not health.database_ok
    with pytest.raises(ValueError, match="component: expected one of .*got 'disk'"):
        health.fault("disk", "x")


async def test_text_that_is_not_utf8_met_while_reading_turns_health_degraded(api: ApiClient) -> None:
    """The damage quick_check does not see (bytes in a text column that are not UTF-8): the
    read that meets it fails, and health says so until the server restarts."""
    await add_products(api, {"sku": "BAD1", "price": "1.00"})
    await sql(api, "UPDATE products SET record = CAST(x'7bff22' AS TEXT) WHERE sku = ?", "BAD1")
    reply = await api.call("GET", "/api/v1/products/BAD1", role="admin", check=False)
    assert reply.status == 500
    reply = await _health(api)
    assert reply.status == 503 and reply.json["status"] == "degraded"
    assert any("database: corrupt (Could not decode to UTF-8" in r for r in reply.json["reasons"]), reply.json
    assert await _gauge(api, "database_integrity") == "0.0"
