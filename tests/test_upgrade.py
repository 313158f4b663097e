"""A data directory written by the last release opens with this code and keeps everything.

``tests/fixtures/release-0.1.0/`` is what release 0.1.0 left behind after some use: its
database (products with price history and a promotion, a scheduled change, labels paired
with their keys, tokens of every role, a custom template, jobs done and queued, events,
audit), the simulated labels' flash, and what the release answered over its API
(``expected.json``, with the token strings). ``tests/fixtures/make_release_datadir.py`` made
it from the release's own code and says how to make it again.

Each test works on a copy:

- every later migration, one at a time, keeps every row the release wrote, column by column
  (the release's own columns: a migration may add, never lose or change);
- a careless migration (dropping keys, history rows, a column, a table) is caught by that
  same comparison, so the check above cannot pass by comparing nothing;
- the server starts on the directory and serves what was kept (tokens still verify, the
  revoked one does not; products, history and the promoted product's 30-day lowest price;
  template; bindings; jobs), then, with the same simulated labels back behind a gateway,
  delivers the jobs the release left queued and a new price, authenticated with the keys
  the release stored.

A new release adds its directory next to this one (``release-X.Y.Z``); every test runs
for every directory.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, closing
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from eslserver import pricing
from eslserver.db import database
from eslserver.db.database import Database
from eslserver.server import Server
from eslserver.timeutil import parse_iso
from tests.brokers import broker  # noqa: F401  (a fixture)
from tests.pipeline_shop import shop, shop_settings

FIXTURES = Path(__file__).resolve().parent / "fixtures"
RELEASES = sorted(p.parent for p in FIXTURES.glob("release-*/expected.json"))


@dataclass(frozen=True, slots=True)
class Release:
    """A copy of one release's data directory, and what that release said about it."""

    data: Path
    expected: dict[str, Any]

    @property
    def db(self) -> Path:
        return self.data / "esl.db"


@pytest.fixture(params=RELEASES, ids=lambda p: p.name)
def release(request: pytest.FixtureRequest, tmp_path: Path) -> Release:
    data = tmp_path / "data"  # where tests.pipeline_shop.shop keeps the server's data
    shutil.copytree(request.param, data)
    return Release(data, json.loads((data / "expected.json").read_text(encoding="utf-8")))


def test_there_is_a_release_to_upgrade_from() -> None:
    assert RELEASES, f"no release-*/expected.json under {FIXTURES}"


# --- rows, compared with plain sqlite3 (the release's schema, not today's code) ---------------

@dataclass(frozen=True, slots=True)
class Table:
    name: str
    columns: tuple[str, ...]
    key: tuple[str, ...]


Snapshot = dict[Table, dict[tuple[Any, ...], dict[str, Any]]]


def _tables(db: Path) -> list[Table]:
    with closing(sqlite3.connect(db)) as conn:
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                                            "AND name NOT LIKE 'sqlite_%' ORDER BY name")]
        out = []
        for name in names:
            info = conn.execute(f'PRAGMA table_info("{name}")').fetchall()  # cid, name, type, notnull, dflt, pk
            columns = tuple(r[1] for r in info)
            key = tuple(r[1] for r in sorted((r for r in info if r[5]), key=lambda r: r[5])) or columns
            out.append(Table(name, columns, key))
    return out


def _rows(db: Path, table: Table) -> dict[tuple[Any, ...], dict[str, Any]]:
    with closing(sqlite3.connect(db)) as conn:
        listed = ", ".join(f'"{c}"' for c in table.columns)
        found = conn.execute(f'SELECT {listed} FROM "{table.name}"').fetchall()
    rows = [dict(zip(table.columns, r)) for r in found]
    return {tuple(r[k] for k in table.key): r for r in rows}


def snapshot(db: Path) -> Snapshot:
    return {table: _rows(db, table) for table in _tables(db)}


def lost(before: Snapshot, db: Path) -> list[str]:
    """What of `before` the database `db` no longer holds as it was: one line per table that
    cannot be read, per row gone, per row whose value in one of its columns changed."""
    problems: list[str] = []
    for table, rows in before.items():
        try:
            now = _rows(db, table)
        except sqlite3.Error as exc:
            problems.append(f"{table.name}: {exc}")
            continue
        for key, row in rows.items():
            after = now.get(key)
            if after is None:
                problems.append(f"{table.name} {key}: row gone")
            elif after != row:
                changed = {c: (row[c], after[c]) for c in row if row[c] != after[c]}
                problems.append(f"{table.name} {key}: changed {changed}")
    return problems


def _user_version(db: Path) -> int:
    with closing(sqlite3.connect(db)) as conn:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])


async def _open(db: Path) -> None:
    async with Database(db):
        pass


async def test_every_later_migration_keeps_every_row_the_release_wrote(release: Release,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    before = snapshot(release.db)
    empty = [t.name for t, rows in before.items() if not rows]
    assert not empty, f"the fixture should hold rows in every table, so that losing them shows: {empty}"
    start = release.expected["schema_version"]
    assert _user_version(release.db) == start
    shipped = database.migrations()
    for version in range(start + 1, len(shipped) + 1):  # one migration at a time: a failure names it
        monkeypatch.setattr(database, "migrations", lambda upto=version: shipped[:upto])
        await _open(release.db)
        assert _user_version(release.db) == version
        assert not lost(before, release.db), f"migration {shipped[version - 1][1]} lost data"
    monkeypatch.undo()
    await _open(release.db)  # as the server opens it
    assert _user_version(release.db) == database.SCHEMA_VERSION
    assert not lost(before, release.db)


CARELESS = {
    "labels": "UPDATE labels SET label_key = NULL WHERE label_key IS NOT NULL",
    "price_history": "DELETE FROM price_history WHERE reduction = 1",
    "tokens": "UPDATE tokens SET role = 'pos'",
    "products": "UPDATE products SET record = json_remove(record, '$.unit')",
    "events": "ALTER TABLE events DROP COLUMN detail",
    "templates": "ALTER TABLE templates RENAME TO label_templates",
}


@pytest.mark.parametrize("table", sorted(CARELESS))
async def test_a_migration_that_loses_data_is_caught(release: Release, monkeypatch: pytest.MonkeyPatch,
                                                      table: str) -> None:
    before = snapshot(release.db)
    shipped = database.migrations()
    version = len(shipped) + 1
    careless = (version, f"{version:04d}_careless.sql", CARELESS[table] + ";")
    monkeypatch.setattr(database, "migrations", lambda: [*shipped, careless])
    await _open(release.db)
    assert _user_version(release.db) == version  # it ran, through the real migration path
    problems = lost(before, release.db)
    assert problems, f"a migration that mangled {table} went unnoticed"
    assert all(p.startswith(f"{table}") for p in problems), problems


# --- the server on the kept data ----------------------------------------------------------------

Get = Callable[..., Awaitable[tuple[int, Any]]]


@asynccontextmanager
async def _http(server: Server) -> AsyncIterator[Get]:
    async with aiohttp.ClientSession(f"http://127.0.0.1:{server.http_port}") as session:
        async def get(path: str, token: str) -> tuple[int, Any]:
            async with session.get(path, headers={"Authorization": f"Bearer {token}"}) as response:
                return response.status, await response.json()

        yield get


async def _ok(get: Get, path: str, token: str) -> Any:
    status, body = await get(path, token)
    assert status == 200, (path, status, body)
    return body


async def test_the_server_serves_what_the_release_kept(release: Release) -> None:
    exp = release.expected
    admin = exp["tokens"]["admin"]["token"]
    settings = shop_settings(release.data, None, **exp["settings"])
    async with Server(settings, mqtt=False, render_processes=False) as server, _http(server) as get:
        for role, token in exp["tokens"].items():
            assert await _ok(get, "/api/v1/me", token["token"]) == {"name": token["name"], "role": role}
        status, body = await get("/api/v1/me", exp["revoked_token"])
        assert (status, body["error"]) == (401, "invalid_token")

        listed = await _ok(get, "/api/v1/products?limit=500", admin)
        assert {p["sku"] for p in listed["items"]} == set(exp["products"])
        for sku, kept in exp["products"].items():
            product = await _ok(get, f"/api/v1/products/{sku}?history=1000", admin)
            for field in ("record", "seq", "history", "scheduled"):
                assert product[field] == kept[field], (sku, field)
            assert [b["mac"] for b in product["bound_labels"]] == [b["mac"] for b in kept["bound_labels"]]
            # the prior price as of when the release computed it, from the history as kept
            periods = [pricing.PricePeriod.from_row(h["price"], h["start_at"], h["end_at"], h["reduction"])
                       for h in reversed(product["history"])]
            lowest = pricing.product_for_render(product["record"], periods,
                                                parse_iso(exp["lowest_30d_at"])).get("lowest_30d")
            assert (None if lowest is None else Decimal(str(lowest))) == \
                (None if kept["lowest_30d"] is None else Decimal(kept["lowest_30d"])), sku
        assert exp["products"][exp["promoted"]]["lowest_30d"] == "4.79"  # what the fixture was built to show

        template = exp["template"]
        assert await _ok(get, f"/api/v1/templates/{template['name']}", admin) == template

        for mac, kept in exp["labels"].items():
            label = await _ok(get, f"/api/v1/labels/{mac}", admin)
            assert {k: label[k] for k in ("sku", "model", "template", "gateway")} == \
                {k: kept[k] for k in ("sku", "model", "template", "gateway")}, mac
        assert (await _ok(get, f"/api/v1/labels/{exp['spare']}", admin))["state"] == "unpaired"

        jobs = {j["id"]: j for j in (await _ok(get, "/api/v1/jobs?limit=1000", admin))["items"]}
        for job in exp["jobs"]:  # no gateway is online here: nothing the release queued has moved
            assert {k: jobs[job["id"]][k] for k in job} == job


async def test_the_labels_the_release_paired_take_new_prices(release: Release, broker: str) -> None:
    exp = release.expected
    sim = exp["simulator"]
    admin = exp["tokens"]["admin"]["token"]
    queued = [j["id"] for j in exp["jobs"] if j["state"] == "queued" and j["mac"] in exp["shown"]]
    assert queued, "the fixture should leave jobs queued for labels that are there"
    async with shop(release.data.parent, broker, labels=sim["labels"], models=tuple(sim["models"]),
                    sim_state=release.data / sim["state_file"], **exp["settings"]) as s, _http(s.server) as get:
        assert s.gateway.config.gateway_id == sim["gateway"]
        assert sorted(s.macs) == sorted([*exp["shown"], exp["spare"]])  # the same labels, from their flash
        await s.converged(exp["shown"], timeout=60.0)  # what the release queued was delivered

        async def delivered() -> bool:
            jobs = {j["id"]: j for j in (await _ok(get, "/api/v1/jobs?limit=1000", admin))["items"]}
            return all(jobs[i]["state"] == "done" for i in queued)

        await _until(delivered)

        mac = next(m for m, label in exp["labels"].items() if label["sku"] == "200130")
        before = (await s.label(mac))["expected_hash"]
        await s.publish_prices([{"sku": "200130", "price": "5.29", "seq": 1000}])

        async def repriced() -> bool:
            return bool((await s.label(mac))["expected_hash"] != before)

        await _until(repriced)
        states = await s.converged([mac], timeout=60.0)  # shown, and reported in frames under the kept key
        assert states[mac]["displayed_hash"] == s.store.labels[mac].displayed_hash.hex()
        product = await _ok(get, "/api/v1/products/200130", admin)
        assert product["price"] == "5.29"
        assert (await s.label(exp["spare"]))["state"] == "unpaired"


async def _until(check: Callable[[], Awaitable[bool]], timeout: float = 60.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        assert loop.time() < deadline, f"{check.__name__}: not within {timeout} s"
        await asyncio.sleep(0.1)


async def test_migration_0003_adds_gateway_keys_protocols_and_key_loss_empty(release: Release) -> None:
    """0003 (trust): a gateway's registered public key and announced protocol, and when a keyed
    label checked in without its key. A release's gateways have neither (they must be registered
    and announce protocol 2 before jobs go to them again); no label has lost its key."""
    await _open(release.db)
    with closing(sqlite3.connect(release.db)) as conn:
        gateways = conn.execute("SELECT id, public_key, protocol FROM gateways").fetchall()
        lost = conn.execute("SELECT COUNT(*) FROM labels WHERE key_lost_at IS NOT NULL").fetchone()[0]
        keyed = conn.execute("SELECT COUNT(*) FROM labels WHERE label_key IS NOT NULL").fetchone()[0]
    assert gateways and all(key is None and protocol is None for _, key, protocol in gateways)
    assert lost == 0 and keyed > 0  # the release's keys stay, and nothing says they were lost
