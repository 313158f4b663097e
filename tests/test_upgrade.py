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
import io
import json
import shutil
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, closing
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from eslserver import pricing
from eslserver.db import database
from eslserver.db import sqlite as sqlite_engine
from eslserver.db.sqlite import SqliteDatabase
from eslserver.ingest import price_periods
from eslserver.server import SYSTEM, Server
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
    async with SqliteDatabase(db):
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
        monkeypatch.setattr(sqlite_engine, "migrations", lambda engine="sqlite", upto=version: shipped[:upto])
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
    monkeypatch.setattr(sqlite_engine, "migrations", lambda engine="sqlite": [*shipped, careless])
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
            assert await _ok(get, "/api/v1/me", token["token"]) == {"name": token["name"], "role": role, "stores": None}
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


def _keys_in_clear(db: Path) -> list[bytes]:
    """The label keys and pairing keys the release stored in clear (16 bytes each)."""
    with closing(sqlite3.connect(db)) as conn:
        return [bytes(r[0]) for r in conn.execute(
            "SELECT label_key FROM labels WHERE length(label_key) = 16 UNION ALL "
            "SELECT command FROM jobs WHERE kind = 'pair' AND length(command) = 16")]


def _database_bytes(data: Path) -> bytes:
    """The database's files as they are on disk (``esl.db`` and its ``-wal`` and ``-shm``)."""
    return b"".join(p.read_bytes() for p in sorted(data.glob("esl.db*")))


async def test_the_labels_the_release_paired_take_new_prices(release: Release, broker: str) -> None:
    exp = release.expected
    sim = exp["simulator"]
    admin = exp["tokens"]["admin"]["token"]
    queued = [j["id"] for j in exp["jobs"] if j["state"] == "queued" and j["mac"] in exp["shown"]]
    assert queued, "the fixture should leave jobs queued for labels that are there"
    clear = _keys_in_clear(release.db)  # the release kept them in clear; the first start seals them
    assert clear and all(key in _database_bytes(release.data) for key in clear)
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
        assert not _keys_in_clear(release.db)
        on_disk = _database_bytes(release.data)  # no copy left in free pages or the WAL either
        assert not [key.hex() for key in clear if key in on_disk]


async def _until(check: Callable[[], Awaitable[bool]], timeout: float = 60.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        assert loop.time() < deadline, f"{check.__name__}: not within {timeout} s"
        await asyncio.sleep(0.1)


async def test_migration_0004_adds_the_pos_update_ids_and_the_release_data_recognises_a_resent_item(
        release: Release, monkeypatch: pytest.MonkeyPatch) -> None:
    """0004 (``pos_update_ids``): on the release's data, an empty table keyed by store and
    update id; then the server answers an item sent twice with the same ``update_id`` as a
    duplicate, applied once."""
    shipped = database.migrations()
    assert shipped[3][1] == "0004_pos_update_ids.sql"
    monkeypatch.setattr(sqlite_engine, "migrations", lambda engine="sqlite": shipped[:4])
    await _open(release.db)
    assert _user_version(release.db) == 4
    with closing(sqlite3.connect(release.db)) as conn:
        info = conn.execute("PRAGMA table_info(pos_update_ids)").fetchall()
        assert [(r[1], r[5]) for r in info] == [("store", 1), ("update_id", 2), ("sku", 0), ("status", 0),
                                                ("seen_at", 0)]
        assert conn.execute("SELECT COUNT(*) FROM pos_update_ids").fetchone()[0] == 0
    monkeypatch.undo()
    settings = shop_settings(release.data, None, **release.expected["settings"])
    async with Server(settings, mqtt=False, http=False, render_processes=False) as server:
        item = {"sku": "200130", "price": "5.29", "update_id": "till-upgrade-1"}
        first = await server.ingest.submit([item], source="http", actor=SYSTEM)
        again = await server.ingest.submit([item], source="http", actor=SYSTEM)
        history = await server.db.read("SELECT COUNT(*) FROM price_history WHERE sku = '200130' AND price = '5.29'")
    assert [a["status"] for a in first.accepted + again.accepted] == ["applied", "duplicate"]
    assert history[0][0] == 1


async def test_a_release_database_takes_uploaded_images(release: Release) -> None:
    """Migration 0003 adds ``uploaded_images`` to what the release wrote: the upgraded server
    stores an upload, names it, serves it to a render job and forgets it; the table itself
    refuses a digest that is not a SHA-256 and a name taken twice in one store (not across
    stores, and any number of images may have no name)."""
    from PIL import Image as PILImage

    from eslserver.auth import Actor

    settings = shop_settings(release.data, None, **release.expected["settings"])
    picture = io.BytesIO()
    PILImage.new("RGB", (16, 16), (200, 20, 20)).save(picture, format="PNG")
    who = Actor("upgrade-test", "merchandiser")
    async with Server(settings, mqtt=False, http=False, render_processes=False) as server:
        image, created = await server.uploads.upload(picture.getvalue(), "image/png", "logo", actor=who)
        assert created and image.name == "logo" and (image.width, image.height) == (16, 16)
        job = await server.uploads.image_set([], [{"sku": "200130", "image": "logo"}])
        assert job.refs == {"logo": image.digest} and job.pngs[image.digest] == await server.uploads.png(image.digest)
        assert await server.uploads.delete(image.digest, actor=who) == image
        assert (await server.uploads.image_set([], [{"image": "logo"}])).refs == {}
    insert = ("INSERT INTO uploaded_images (digest, store, name, media_type, width, height, bytes, png, created_at, "
              "created_by) VALUES (?, ?, ?, 'image/png', 1, 1, 1, x'00', '2026-01-01T00:00:00+00:00', 't')")
    with closing(sqlite3.connect(release.db)) as conn:
        conn.execute(insert, ("a" * 64, "s1", "logo"))
        conn.execute(insert, ("b" * 64, "s2", "logo"))
        conn.execute(insert, ("c" * 64, "s1", None))
        conn.execute(insert, ("d" * 64, "s1", None))
        for digest, store, name in (("e" * 64, "s1", "logo"), ("short", "s1", None), ("a" * 64, "s3", None)):
            with pytest.raises(sqlite3.IntegrityError):
                conn.execute(insert, (digest, store, name))


async def test_migration_0006_indexes_what_retention_prunes_by(release: Release) -> None:
    """After the upgrade, a retention round years later on the release's data uses the new
    indexes and deletes only what nothing uses: queued jobs, images the labels show or expect,
    and each SKU's current price stay."""
    from eslserver.config import load_settings
    from eslserver.metrics import Metrics
    from eslserver.retention import Retention

    await _open(release.db)
    with closing(sqlite3.connect(release.db)) as conn:
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        queued = {r[0] for r in conn.execute("SELECT id FROM jobs WHERE state IN ('queued', 'sent')")}
        shown = {h for r in conn.execute("SELECT expected_hash, displayed_hash FROM labels") for h in r if h}
        plan = " ".join(str(r[3]) for r in conn.execute(
            "EXPLAIN QUERY PLAN SELECT id FROM events WHERE at < '2030' ORDER BY at LIMIT 500"))
    assert {"jobs_finished", "events_at", "audit_at", "images_created", "labels_expected_hash",
            "labels_displayed_hash", "jobs_open_image", "jobs_open_base", "price_history_start"} <= indexes
    assert "events_at" in plan
    assert queued and shown

    later = parse_iso(release.expected["lowest_30d_at"]) + timedelta(days=3 * 365)
    async with SqliteDatabase(release.db) as db:
        before = {sku: pricing.selling_price_at(periods, later)
                  for sku, periods in (await price_periods(db, "demo", list(release.expected["products"]))).items()}
        report = await Retention(db, load_settings(None, environ={}), Metrics()).run(later)
        after = {sku: pricing.selling_price_at(periods, later)
                 for sku, periods in (await price_periods(db, "demo", list(release.expected["products"]))).items()}
        assert report.deleted["jobs"] > 0 and report.deleted["audit"] > 0 and report.deleted["price_history"] > 0
        assert {r[0] for r in await db.read("SELECT id FROM jobs")} == queued
        assert shown <= {r[0] for r in await db.read("SELECT hash FROM images")}
        assert after == before and all(price is not None for price in after.values())


async def test_migration_0005_adds_the_key_check_and_the_first_start_seals_the_release_keys(
        release: Release, monkeypatch: pytest.MonkeyPatch) -> None:
    """0005 (``secrets_check``) only adds an empty table: the release's keys stay as they were
    through the migration. The first start then makes the secret key file (0600), records the
    key's check value and seals every key in place; each opens, on its own row only, to the
    key the release stored; a start with another key is refused."""
    from eslserver.keyvault import KeyMismatchError, SealError

    clear_labels = _keys_by_row(release.db)
    assert clear_labels and all(len(key) == 16 for key in clear_labels.values())
    shipped = database.migrations()
    assert shipped[4][1] == "0005_key_check.sql"
    monkeypatch.setattr(sqlite_engine, "migrations", lambda engine="sqlite": shipped[:5])
    await _open(release.db)
    with closing(sqlite3.connect(release.db)) as conn:
        assert conn.execute("SELECT COUNT(*) FROM secrets_check").fetchone()[0] == 0
    assert _keys_by_row(release.db) == clear_labels
    monkeypatch.undo()

    settings = shop_settings(release.data, None, **release.expected["settings"])
    async with Server(settings, mqtt=False, http=False, render_processes=False) as server:
        sealed = _keys_by_row(release.db)
        assert sealed.keys() == clear_labels.keys()
        for (table, row, mac), value in sealed.items():
            assert len(value) == 45 and server.vault.open_label_key("demo", mac, value) == clear_labels[table, row, mac]
        (table, row, mac), value = next(iter(sealed.items()))
        with pytest.raises(SealError):
            server.vault.open_label_key("demo", "AA:BB:CC:DD:EE:FF", value)
    assert (release.data / "secret.key").stat().st_mode & 0o777 == 0o600
    with closing(sqlite3.connect(release.db)) as conn:
        assert conn.execute("SELECT COUNT(*) FROM secrets_check").fetchone()[0] == 1
    other = shop_settings(release.data, None, **release.expected["settings"], secret_key="cd" * 32)
    with pytest.raises(KeyMismatchError):
        async with Server(other, mqtt=False, http=False, render_processes=False):
            pass


def _keys_by_row(db: Path) -> dict[tuple[str, str, str], bytes]:
    """Every stored label key and pairing key: (table, row, mac) → the stored bytes."""
    with closing(sqlite3.connect(db)) as conn:
        labels = conn.execute("SELECT 'labels', mac, mac, label_key FROM labels WHERE label_key IS NOT NULL")
        pairs = conn.execute("SELECT 'jobs', id, mac, command FROM jobs WHERE kind = 'pair'")
        return {(r[0], str(r[1]), r[2]): bytes(r[3]) for r in [*labels, *pairs]}


async def test_migration_0007_adds_the_mqtt_identities_and_the_release_server_makes_its_own(
        release: Release, monkeypatch: pytest.MonkeyPatch) -> None:
    """0007 (``mqtt_identities``): on the release's data, an empty table keyed by user name that
    refuses a store-less gateway or a server with a store; then the first start of the server
    makes its own identity (``server/INSTANCE``), and a gateway registered on the old data is
    the one the server listens to."""
    from eslserver.identities import list_identities

    await _migrated_to(release, monkeypatch, "0007_mqtt_identities.sql")
    with closing(sqlite3.connect(release.db)) as conn:
        assert [(r[1], r[5]) for r in conn.execute("PRAGMA table_info(mqtt_identities)")] == [
            ("username", 1), ("role", 0), ("store", 0), ("name", 0), ("password_hash", 0), ("created_at", 0),
            ("updated_at", 0), ("revoked_at", 0)]
        assert conn.execute("SELECT COUNT(*) FROM mqtt_identities").fetchone()[0] == 0
        for username, role, store in (("gateway/x", "gateway", None), ("server/a", "server", "s1"),
                                      ("admin/s1/a", "admin", "s1")):
            with pytest.raises(sqlite3.IntegrityError):
                conn.execute("INSERT INTO mqtt_identities VALUES (?, ?, ?, 'a', '$7$', 'now', 'now', NULL)",
                             (username, role, store))
    settings = shop_settings(release.data, None, **release.expected["settings"])
    async with Server(settings, mqtt=False, http=False, render_processes=False) as server:
        await server.add_identity("gateway", release.expected["simulator"]["gateway"])
        listed = [i.username for i in await list_identities(server.db)]
        assert server.identities.allows(release.expected["simulator"]["gateway"])
        assert not server.identities.allows("someone-else")
    assert listed == [f"gateway/{settings.store}/{release.expected['simulator']['gateway']}",
                      f"server/{settings.instance}"]


async def _migrated_to(release: Release, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """The release's database, migrated up to the migration file `name` and no further."""
    shipped = database.migrations()
    version = next(v for v, file_name, _ in shipped if file_name == name)
    with monkeypatch.context() as patch:
        patch.setattr(sqlite_engine, "migrations", lambda engine="sqlite": shipped[:version])
        await _open(release.db)
    assert _user_version(release.db) == version


async def test_migration_0008_adds_gateway_keys_protocols_and_key_loss_empty(release: Release) -> None:
    """0008 (trust): a gateway's registered public key and announced protocol, and when a keyed
    label checked in without its key. A release's gateways have neither (they must be registered
    and announce protocol 2 before jobs go to them again); no label has lost its key."""
    await _open(release.db)
    with closing(sqlite3.connect(release.db)) as conn:
        gateways = conn.execute("SELECT id, public_key, protocol FROM gateways").fetchall()
        lost = conn.execute("SELECT COUNT(*) FROM labels WHERE key_lost_at IS NOT NULL").fetchone()[0]
        keyed = conn.execute("SELECT COUNT(*) FROM labels WHERE label_key IS NOT NULL").fetchone()[0]
    assert gateways and all(key is None and protocol is None for _, key, protocol in gateways)
    assert lost == 0 and keyed > 0  # the release's keys stay, and nothing says they were lost


async def test_migration_0009_adds_label_leases_none_held(release: Release) -> None:
    """0009 (several instances): the lease an instance holds on the dirty labels it renders.
    A release's labels hold none: whatever they left dirty is claimable by the first start."""
    await _open(release.db)
    with closing(sqlite3.connect(release.db)) as conn:
        held = conn.execute("SELECT COUNT(*) FROM labels WHERE lease_owner IS NOT NULL OR lease_until IS NOT NULL")
        total = conn.execute("SELECT COUNT(*) FROM labels").fetchone()[0]
        assert held.fetchone()[0] == 0 and total > 0


async def test_migration_0010_adds_token_stores_every_release_token_unrestricted(release: Release) -> None:
    """0010 (a chain): the stores a token is restricted to. A release's tokens are restricted to
    none (NULL: every store), as they were."""
    await _open(release.db)
    with closing(sqlite3.connect(release.db)) as conn:
        scoped = conn.execute("SELECT COUNT(*) FROM tokens WHERE stores IS NOT NULL").fetchone()[0]
        total = conn.execute("SELECT COUNT(*) FROM tokens").fetchone()[0]
    assert scoped == 0 and total > 0


async def test_migration_0011_gives_every_release_store_the_polish_locale(release: Release) -> None:
    """0011 (a chain): a store's language, country and time zone. A release's store was the
    Polish demo's: pl, PL, Europe/Warsaw."""
    await _open(release.db)
    with closing(sqlite3.connect(release.db)) as conn:
        rows = conn.execute("SELECT language, country, timezone FROM stores").fetchall()
    assert rows and set(rows) == {("pl", "PL", "Europe/Warsaw")}
