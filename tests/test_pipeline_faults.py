"""Fault tolerance of the whole pipeline, with real processes killed on the way.

A store as it runs in production: Mosquitto (started here on a free port), `esl serve`,
`esl gateway --radio sim://…` and `esl simulate` (30 labels) as child processes, a POS
publishing price batches on MQTT (QoS 1, persistent session). In the middle of a repricing
(image jobs in flight, read from the server's SQLite file) one part dies by SIGKILL and is
started again; afterwards every label must converge (state ok, the hash the label itself
reported equal to the expected one) on the image of the *last* price published for its
product, drawn here independently, and every accepted price must be in the products table
and in the price history, once, in order; every label's retained state message must say so.
A broker that comes back empty must get every label's retained state again.

Then: a label that stays unreachable is marked offline after `max_attempts` (not retried
for ever) and caught up without anyone's help when it checks in again; the retained
label-state message has the shape docs/mqtt.asyncapi.yaml gives and ends up with the
displayed hash equal to the expected one.
"""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from eslserver.config import Settings, load_settings
from eslserver.mqtt import Message, MqttConnection, MqttSettings
from eslserver.server import SYSTEM, Server
from eslserver.timeutil import iso, utcnow
from eslserver.topics import Kind, Topics
from simulator.store import label_address
from tests.brokers import MosquittoBroker, broker_url, free_port, mosquitto  # noqa: F401  (broker_url: fixture)
from tests.dbread import read_only
from tests.pipeline_shop import collect, expected_hash_for, shop
from tests.processes import (
    GATEWAY_READY,
    SERVE_READY,
    SIMULATE_READY,
    ChildProcess,
    Processes,
    esl_argv,
    trust_gateway,
)

STORE = "faults"
TOPICS = Topics("esl", STORE)
GATEWAY = "gw1"
LABELS = 30
SKUS = 10
MODEL = "2.9-bwry"


def _price(batch: int, index: int) -> str:
    """A price no other (batch, product) has: every accepted update is a new history row."""
    return str(Decimal("3.00") + Decimal(batch) + Decimal(index) / 100)


@dataclass
class Catalogue:
    """What the POS has published, in order: the source of truth the store must converge to."""

    records: dict[str, dict[str, Any]]
    published: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def initial(cls) -> Catalogue:
        records: dict[str, dict[str, Any]] = {f"3000{i:02d}": {"sku": f"3000{i:02d}", "name": f"Produkt testowy {i}", "price": _price(0, i),
                                    "seq": 1} for i in range(SKUS)}
        return cls(records, {sku: [r["price"]] for sku, r in records.items()})

    def batch(self, batch: int, skus: list[str]) -> list[dict[str, Any]]:
        """Batch number `batch` (1, 2, …) repricing `skus`; recorded as published."""
        items = []
        for sku in skus:
            index = int(sku[-2:])
            item: dict[str, Any] = {"sku": sku, "price": _price(batch, index), "seq": batch + 1}
            self.records[sku] = {**self.records[sku], "price": item["price"], "seq": item["seq"]}
            self.published[sku].append(item["price"])
            items.append(item)
        return items


# -- the store: processes, database, POS -----------------------------------------------------------


_read = read_only  # a read-only connection never checkpoints the WAL a killed server left


@dataclass
class Store:
    procs: Processes
    broker: MosquittoBroker
    sim: ChildProcess
    server: ChildProcess
    gateway: ChildProcess
    settings: Settings
    pos: MqttConnection
    catalogue: Catalogue
    bindings: dict[str, str]

    @property
    def db(self) -> Path:
        return self.settings.database_path

    def read(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        return _read(self.db, sql, params)

    async def publish(self, items: list[dict[str, Any]]) -> None:
        """As the POS: one batch, QoS 1 (returns once the broker has it)."""
        await self.pos.publish(TOPICS.pos_prices, json.dumps(items).encode(), qos=1, timeout=30)

    async def until(self, what: str, check: Callable[[], bool], timeout: float = 30.0,
                    interval: float = 0.05) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                if check():
                    return
            except sqlite3.OperationalError:  # busy / being recovered: ask again
                pass
            if loop.time() > deadline:
                raise AssertionError(f"{what}: not within {timeout} s\n{self.procs.logs()}")
            await asyncio.sleep(interval)

    def max_job(self) -> int:
        return int(self.read("SELECT COALESCE(MAX(id), 0) FROM jobs")[0][0])

    def image_jobs_sent_after(self, job_id: int) -> int:
        return int(self.read("SELECT COUNT(*) FROM jobs WHERE id > ? AND kind = 'image' AND state = 'sent'",
                             (job_id,))[0][0])

    def gateway_seen_after(self, stamp: str) -> bool:
        rows = self.read("SELECT status, last_seen FROM gateways WHERE store = ? AND id = ?", (STORE, GATEWAY))
        return bool(rows) and rows[0]["status"] == "online" and rows[0]["last_seen"] > stamp

    def wanted(self) -> dict[str, str]:
        """mac → the hash of the last price published for its product, drawn here."""
        by_sku = {sku: expected_hash_for(rec, MODEL, settings=self.settings)
                  for sku, rec in self.catalogue.records.items()}
        return {mac: by_sku[sku] for mac, sku in self.bindings.items()}

    async def converged(self, timeout: float = 35.0) -> dict[str, sqlite3.Row]:
        """Wait until every label is ok showing (by its own report) the image of its
        product's last published price; the label rows."""
        wanted = self.wanted()
        rows: dict[str, sqlite3.Row] = {}

        def done() -> bool:
            nonlocal rows
            rows = {r["mac"]: r for r in self.read("SELECT mac, state, expected_hash, displayed_hash FROM labels")}
            return all(mac in rows and rows[mac]["state"] == "ok" and rows[mac]["expected_hash"] == want
                       and rows[mac]["displayed_hash"] == want for mac, want in wanted.items())

        try:
            await self.until("every label shows its last price", done, timeout=timeout, interval=0.1)
        except AssertionError as exc:
            behind = {mac: dict(rows.get(mac, {})) for mac, want in wanted.items()
                      if mac not in rows or rows[mac]["displayed_hash"] != want or rows[mac]["state"] != "ok"}
            jobs = [dict(r) for r in self.read("SELECT id, mac, kind, state, attempts, error FROM jobs "
                                               "WHERE state IN ('queued', 'sent') ORDER BY id LIMIT 20")]
            raise AssertionError(f"{len(behind)} labels behind: {behind}\nopen jobs: {jobs}\n{exc}") from None
        return rows

    async def retained_states(self, timeout: float = 10.0) -> dict[str, Message]:
        """mac → the first label-state message a client subscribing now receives (the
        retained one, if the broker holds one) for every bound label, or what came in `timeout`."""
        first: dict[str, Message] = {}

        async def handler(message: Message) -> None:
            mac = TOPICS.parse(message.topic).mac
            assert mac is not None
            first.setdefault(mac, message)

        sub = MqttConnection(MqttSettings.from_url(self.broker.url), client_id="test-faults-states",
                             clean_session=True)
        sub.subscribe(TOPICS.filter(Kind.LABEL_STATE), handler, qos=1)
        async with sub:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while not set(self.bindings) <= set(first) and loop.time() < deadline:
                await asyncio.sleep(0.05)
        return first

    async def assert_states_retained(self) -> None:
        """Every label's retained state message says it shows what it should."""
        wanted = self.wanted()
        await asyncio.sleep(0.5)  # the last state changes on their way to the broker
        got = await self.retained_states()
        missing = sorted(set(wanted) - set(got))
        assert not missing, f"no retained state for {len(missing)} labels: {missing}"
        for mac, message in got.items():
            body = json.loads(message.payload)
            check_state_shape(body, mac)
            assert message.retain, (mac, body)
            assert (body["state"], body["expected_hash"], body["displayed_hash"]) == \
                ("ok", wanted[mac], wanted[mac]), (mac, body)

    def assert_nothing_lost(self) -> None:
        """Every published price is in the products table (the last one) and in the price
        history (all of them, in order, each once)."""
        products = {r["sku"]: r for r in self.read("SELECT sku, record, seq FROM products WHERE store = ?", (STORE,))}
        for sku, prices in self.catalogue.published.items():
            record = json.loads(products[sku]["record"])
            assert Decimal(str(record["price"])) == Decimal(prices[-1]), (sku, record, prices)
            assert products[sku]["seq"] == self.catalogue.records[sku]["seq"], (sku, products[sku]["seq"])
            history = [r["price"] for r in self.read("SELECT price FROM price_history WHERE store = ? AND sku = ? "
                                                     "ORDER BY id", (STORE, sku))]
            assert [Decimal(p) for p in history] == [Decimal(p) for p in prices], (sku, history, prices)


def _settings(data: Path, url: str) -> tuple[Settings, dict[str, str]]:
    env = {"ESL_DATA_DIR": str(data), "ESL_BROKER_URL": url, "ESL_STORE": STORE, "ESL_HTTP_PORT": "0",
           "ESL_DEBOUNCE_MS": "20", "ESL_JOB_DEADLINE_S": "3", "ESL_RETRY_BASE_S": "0.2", "ESL_RETRY_MAX_S": "1",
           "ESL_RENDER_WORKERS": "1", "ESL_LOG_LEVEL": "info"}
    return load_settings(None, environ=env), env


async def _seed(settings: Settings, catalogue: Catalogue, bindings: Mapping[str, str]) -> None:
    """The catalogue and the bound labels, written in the server's database before it runs."""
    async with Server(settings, mqtt=False, http=False, render_processes=False) as server:
        await server.add_identity("gateway", GATEWAY, reset=True)  # registered: the server listens to it
        result = await server.ingest.submit(list(catalogue.records.values()), source="cli", actor=SYSTEM)
        assert not result.errors, result.errors
        async with server.db.transaction() as conn:
            for mac, sku in bindings.items():
                assert await server.labels.register(conn, mac, MODEL, sku=sku, gateway=GATEWAY)


@asynccontextmanager
async def store(tmp_path: Path, *, wake_interval: float = 2.0) -> AsyncIterator[Store]:
    """Everything running, every label showing its first price. Labels listen all the time
    and check in every `wake_interval` seconds."""
    broker = MosquittoBroker(free_port())
    await broker.start()
    try:
        async with Processes(tmp_path / "procs") as procs:
            settings, env = _settings(tmp_path / "data", broker.url)
            catalogue = Catalogue.initial()
            skus = sorted(catalogue.records)
            bindings = {label_address(i + 1): skus[i % SKUS] for i in range(LABELS)}
            await _seed(settings, catalogue, bindings)
            sim = procs.spawn("simulate", esl_argv("simulate", "--labels", str(LABELS), "--always-listening",
                                                   "--wake-interval", str(wake_interval), "--listen", "127.0.0.1:0",
                                                   "--summary-interval", "60"))
            ready = await sim.start(ready=SIMULATE_READY)
            assert ready is not None
            radio = f"sim://{ready[1]}:{ready[2]}"
            server = procs.spawn("serve", esl_argv("serve"), env=env)
            await server.start(ready=SERVE_READY)
            trust = await trust_gateway(settings.data_dir, tmp_path / "gw", STORE, GATEWAY)
            gateway = procs.spawn("gateway", esl_argv("gateway", "--broker", broker.url, "--radio", radio,
                                                      "--store", STORE, "--id", GATEWAY, "--data",
                                                      str(tmp_path / "gw"), "--status-interval", "1", *trust))
            await gateway.start(ready=GATEWAY_READY)
            async with MqttConnection(MqttSettings.from_url(broker.url), client_id="test-faults-pos",
                                      clean_session=False) as pos:
                s = Store(procs, broker, sim, server, gateway, settings, pos, catalogue, bindings)
                await s.until("the server hears the gateway", lambda: s.gateway_seen_after(""))
                await s.converged(timeout=60)
                yield s
    finally:
        broker.kill()
        await broker.aclose()


# -- 1. kill -9 in the middle of a repricing -------------------------------------------------------


@pytest.mark.parametrize("victim", ["server", "gateway", "broker"])
async def test_kill_9_mid_repricing_loses_nothing_and_every_label_converges(tmp_path: Path, victim: str) -> None:
    async with store(tmp_path) as s:
        skus = sorted(s.catalogue.records)
        half, rest = skus[: SKUS // 2], skus[SKUS // 2:]
        before = s.max_job()
        await s.publish(s.catalogue.batch(1, skus))
        await s.until("image jobs in flight", lambda: s.image_jobs_sent_after(before) > 0, timeout=20, interval=0.005)
        if victim == "server":
            # batch 2 is with the broker (acknowledged to the POS), maybe already being handled
            await s.publish(s.catalogue.batch(2, half))
            s.server.kill()
            # while it is down the POS goes on: the broker keeps it for the server's session
            await s.publish(s.catalogue.batch(3, rest))
            await asyncio.sleep(0.5)
            await s.server.start(ready=SERVE_READY)
        elif victim == "gateway":
            s.gateway.kill()
            await s.publish(s.catalogue.batch(2, half))
            await asyncio.sleep(0.5)
            await s.gateway.start(ready=GATEWAY_READY)
            await s.publish(s.catalogue.batch(3, rest))
        else:
            s.broker.kill()
            await asyncio.sleep(0.5)
            restarted = iso(utcnow())
            await s.broker.start()
            # the broker lost every session and queued message (it keeps nothing on disk): the
            # POS publishes again once the server is subscribed again
            await s.until("the server back on the broker", lambda: s.gateway_seen_after(restarted), timeout=20)
            await s.publish(s.catalogue.batch(2, half))
        await s.publish(s.catalogue.batch(4, skus[:2] + skus[-2:]))
        await s.converged()
        s.assert_nothing_lost()
        await s.assert_states_retained()


async def test_label_states_are_retained_again_after_a_broker_restart(tmp_path: Path) -> None:
    """A broker that comes back without its retained messages (Mosquitto without persistence,
    or killed between two autosaves) gets every label's state again from the server, not
    only those of the labels that happen to check in or change afterwards (labels that check
    in every 10 minutes would leave integrations blind for that long)."""
    async with store(tmp_path, wake_interval=600) as s:
        await s.assert_states_retained()
        s.broker.kill()
        restarted = iso(utcnow())
        await s.broker.start()
        await s.until("the server back on the broker", lambda: s.gateway_seen_after(restarted), timeout=20)
        await s.assert_states_retained()


# -- 2. an unreachable label: offline after max_attempts, caught up when it is back -----------------

MILK: dict[str, Any] = {"sku": "100100", "name": "Mleko 3,2% 1 l", "price": "3.49", "seq": 1}
OFF_S = 8.0
MAX_ATTEMPTS = 2


async def test_unreachable_label_goes_offline_then_is_caught_up_when_it_checks_in(tmp_path: Path) -> None:
    # debounce_ms=0: the pipeline reads the database the moment it is poked (a debounce window
    # only narrows the races between a poke and the commit of what it announces)
    async with mosquitto() as url, shop(tmp_path, url, labels=2, max_attempts=MAX_ATTEMPTS, job_deadline_s=1,
                                        debounce_ms=0, retry_base_s=0.2, retry_max_s=0.4) as s:
        await s.seed([MILK])
        away, here = s.macs
        await s.bind({away: MILK["sku"], here: MILK["sku"]})
        await s.converged()
        loop = asyncio.get_running_loop()
        s.store.take_offline(away, OFF_S)
        back_at = loop.time() + OFF_S
        new = {**MILK, "price": "2.79", "seq": 2}
        await s.publish_prices({"sku": MILK["sku"], "price": new["price"], "seq": new["seq"]})
        want = expected_hash_for(new, settings=s.settings)

        async def until(what: str, check: Callable[[], Awaitable[bool]], timeout: float) -> None:
            deadline = loop.time() + timeout
            while not await check():
                if loop.time() > deadline:
                    jobs = await s.server.db.read("SELECT id, kind, state, attempts, image_hash, created_at, sent_at, "
                                                  "finished_at, error FROM jobs WHERE mac = ?", (away,))
                    events = await s.server.db.read("SELECT at, kind, detail FROM events WHERE mac = ?", (away,))
                    dirty = await s.server.db.read_one("SELECT dirty FROM labels WHERE mac = ?", (away,))
                    raise AssertionError(f"{what}: not within {timeout} s: {await s.label(away)}\n"
                                         f"dirty mark {dirty[0] if dirty else None}, pipeline batches "
                                         f"{s.server.pipeline.batches}\n"
                                         f"jobs: {[dict(j) for j in jobs]}\nevents: {[dict(e) for e in events]}\n"
                                         f"label shows {s.store.labels[away].displayed_hash.hex()}, want {want}")
                await asyncio.sleep(0.05)

        async def is_offline() -> bool:
            return bool((await s.label(away))["state"] == "offline")

        await until("offline", is_offline, timeout=OFF_S - 2)
        assert (await s.converged([here]))[here]["expected_hash"] == want  # the other label got it
        attempts = await s.server.db.read("SELECT state, attempts FROM jobs WHERE mac = ? AND image_hash = ?",
                                          (away, want))
        assert [tuple(r) for r in attempts] == [("failed", MAX_ATTEMPTS)]
        assert s.store.labels[away].displayed_hash.hex() != want
        state = await s.label(away)
        assert (state["expected_hash"], state["state"]) == (want, "offline")
        # not retried for ever: while it stays away nothing more is sent to it
        nacks = await s.server.db.read("SELECT COUNT(*) FROM events WHERE mac = ? AND kind = 'nack'", (away,))
        await asyncio.sleep(1.5)
        assert loop.time() < back_at - 0.5, "the label came back before the check was over (machine too slow)"
        assert nacks[0][0] == MAX_ATTEMPTS
        assert (await s.server.db.read("SELECT COUNT(*) FROM events WHERE mac = ? AND kind = 'nack'",
                                       (away,)))[0][0] == MAX_ATTEMPTS
        assert not await s.server.db.read("SELECT id FROM jobs WHERE mac = ? AND state IN ('queued', 'sent')",
                                          (away,))
        assert (await s.label(away))["state"] == "offline"

        # back on the air: its check-in alone brings it up to date
        async def caught_up() -> bool:
            st = await s.label(away)
            return (st["state"] == "ok" and st["displayed_hash"] == want
                    and s.store.labels[away].displayed_hash.hex() == want)

        await until("caught up after its check-in", caught_up, timeout=OFF_S + 15)
        assert loop.time() >= back_at - 0.1


# -- 3. the retained label state --------------------------------------------------------------------

STATE_KEYS = {"mac", "sku", "model", "gateway", "state", "expected_hash", "displayed_hash", "battery_mv",
              "temperature_c", "rssi", "last_seen", "updated_at"}
HEX16 = re.compile(r"^[0-9a-f]{16}$")
VOLATILE = ("last_seen", "updated_at", "battery_mv", "rssi", "temperature_c")
"""Fields every check-in may change."""


def check_state_shape(body: Any, mac: str) -> None:
    """The label-state JSON of docs/mqtt.asyncapi.yaml: these keys, these types."""
    assert isinstance(body, dict) and set(body) == STATE_KEYS, body
    assert body["mac"] == mac
    assert body["state"] in ("ok", "pending", "failed", "offline", "unpaired")
    assert isinstance(body["model"], str) and body["model"]
    for key in ("sku", "gateway"):
        assert body[key] is None or isinstance(body[key], str), (key, body)
    for key in ("expected_hash", "displayed_hash"):
        assert body[key] is None or HEX16.match(body[key]), (key, body)
    for key in ("battery_mv", "rssi"):
        assert body[key] is None or (isinstance(body[key], int) and not isinstance(body[key], bool)), (key, body)
    assert body["temperature_c"] is None or isinstance(body["temperature_c"], (int, float)), body
    for key in ("last_seen", "updated_at"):
        if body[key] is not None:
            when = datetime.fromisoformat(body[key])
            assert when.utcoffset() == timedelta(0), (key, body)


async def test_retained_label_state_has_the_design_shape_and_ends_up_to_date(
        tmp_path: Path, broker_url: str) -> None:  # noqa: F811
    async with shop(tmp_path, broker_url, labels=2) as s:
        topic = s.server.topics.filter(Kind.LABEL_STATE)
        live, seen = await collect(broker_url, topic)
        async with live:
            await live.connected.wait()
            await s.seed([MILK])
            mac = s.macs[0]
            await s.bind({mac: MILK["sku"]})
            await s.converged([mac])
            new = {**MILK, "price": "4.19", "seq": 2}
            await s.publish_prices({"sku": MILK["sku"], "price": new["price"], "seq": new["seq"]})
            want = expected_hash_for(new, settings=s.settings)
            mine = s.server.topics.label_state(mac)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 20

            def last() -> dict[str, Any] | None:
                bodies = [json.loads(m.payload) for m in seen if m.topic == mine]
                return bodies[-1] if bodies else None

            while not ((body := last()) and body["displayed_hash"] == want and body["state"] == "ok"):
                assert loop.time() < deadline, f"no up-to-date state message: {last()}"
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)  # a later (stale) message would show up now
            states = [json.loads(m.payload) for m in seen if m.topic == mine]
            for body in states:
                check_state_shape(body, mac)
            assert {b["state"] for b in states} >= {"ok", "pending"}, states  # pending once bound, then ok
            final = states[-1]
            assert final["expected_hash"] == final["displayed_hash"] == want, final
            assert final["sku"] == MILK["sku"] and final["model"] == "2.9-bwry" and final["gateway"] == "gw1"
            assert final["battery_mv"] is not None and final["rssi"] is not None and final["last_seen"] is not None
            assert s.store.labels[mac].displayed_hash.hex() == want
            now = await s.label(mac)  # what the server says (a check-in may have moved last_seen since)
            assert {k: v for k, v in final.items() if k not in VOLATILE} == \
                {k: v for k, v in now.items() if k not in VOLATILE}, (final, now)
        # a client that connects now gets that state at once (retained), and nothing for the unbound label
        late, got = await collect(broker_url, topic)
        async with late:
            await late.connected.wait()
            deadline = loop.time() + 10
            while not any(m.topic == mine for m in got):
                assert loop.time() < deadline, "no retained state"
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)
        retained = [m for m in got if m.topic == mine]
        assert retained[0].retain, [(m.retain, m.payload) for m in retained]
        body = json.loads(retained[0].payload)
        check_state_shape(body, mac)
        assert {k: v for k, v in body.items() if k not in VOLATILE} == \
            {k: v for k, v in final.items() if k not in VOLATILE}, (body, final)
        assert body["last_seen"] >= final["last_seen"]
