"""Several `esl serve` instances on one PostgreSQL database and one Mosquitto, sharing the work
of a chain's two stores.

Three instances (``--instance s1/s2/s3``, ``mqtt_shared``: POS messages and gateway events as
shared subscriptions) serving two stores, each store with its gateway and 15 simulated labels,
all real processes. Each store's POS, with an outbox (an ``update_id`` per item, re-sending what
stays unconfirmed), reprices every product; in the middle of it one instance dies by SIGKILL,
and the POS goes on. Afterwards, in both stores:

- every label converges on the image of its product's newest price (state ok, the label's own
  reported hash equal to the expected one, drawn here independently);
- every update the server confirmed as applied is in the price history exactly once, none it
  called stale is, and each product's history is in ``seq`` order whatever instance handled
  which message;
- the surviving instances both did part of the drawing (their own metrics), and took over what
  the dead one had claimed once its lease ran out.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import urllib.request
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg

from eslserver.config import Settings, load_settings
from eslserver.server import SYSTEM, Server
from eslserver.stores_admin import add_store
from eslserver.topics import Topics
from simulator.store import label_address
from tests.brokers import MosquittoBroker, free_port
from tests.pipeline_shop import expected_hash_for
from tests.pos_outbox import OutboxPos
from tests.postgres import fresh_database
from tests.processes import GATEWAY_READY, SERVE_READY, SIMULATE_READY, ChildProcess, Processes, esl_argv, trust_gateway

STORES = ("chain", "chain2")
GATEWAY = "gw1"
LABELS = 15
SKUS = 5
MODEL = "2.9-bwry"
INSTANCES = ("s1", "s2", "s3")


def _price(batch: int, index: int) -> str:
    """A price no other (batch, product) has: every applied update is a history row of its own."""
    return str(Decimal("3.00") + Decimal(batch) + Decimal(index) / 100)


def _sku(index: int) -> str:
    return f"5000{index:02d}"


async def _rows(url: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(url)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


def _rendered(port: int) -> float:
    """``esl_labels_rendered_total`` of the instance serving HTTP on `port`."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:  # noqa: S310 - loopback
        text = reply.read().decode()
    found = re.search(r"^esl_labels_rendered_total (\S+)$", text, re.M)
    return float(found[1]) if found else 0.0


async def _seed(settings: Settings, bindings: dict[str, dict[str, str]]) -> None:
    async with Server(settings, mqtt=False, http=False, render_processes=False) as server:
        await add_store(server.db, settings, STORES[1], name="Sklep 2", currency="PLN", actor=SYSTEM)
    async with Server(settings, mqtt=False, http=False, render_processes=False) as server:
        for store in STORES:
            services = server.stores[store]
            await server.add_identity("gateway", GATEWAY, store=store, reset=True)
            result = await services.ingest.submit(
                [{"sku": _sku(i), "name": f"Produkt {i}", "price": _price(0, i), "seq": 1} for i in range(SKUS)],
                source="cli", actor=SYSTEM)
            assert not result.errors, result.errors
            async with server.db.transaction() as conn:
                for mac, sku in bindings[store].items():
                    assert await services.labels.register(conn, mac, MODEL, sku=sku, gateway=GATEWAY)


async def _until(what: str, check: Any, procs: Processes, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s\n{procs.logs()}")
        await asyncio.sleep(0.1)


async def test_three_instances_share_two_stores_repricing_and_one_killed_9_loses_nothing(tmp_path: Path) -> None:
    broker = MosquittoBroker(free_port())
    await broker.start()
    try:
        async with fresh_database() as url, Processes(tmp_path / "procs") as procs:
            env = {"ESL_DATA_DIR": str(tmp_path / "data"), "ESL_DATABASE_URL": url, "ESL_BROKER_URL": broker.url,
                   "ESL_STORE": STORES[0], "ESL_HTTP_PORT": "0", "ESL_DEBOUNCE_MS": "20", "ESL_JOB_DEADLINE_S": "3",
                   "ESL_RETRY_BASE_S": "0.2", "ESL_RETRY_MAX_S": "1", "ESL_RENDER_WORKERS": "1",
                   "ESL_RENDER_BATCH": "8", "ESL_RENDER_LEASE_S": "3", "ESL_MQTT_SHARED": "true",
                   "ESL_LOG_LEVEL": "info"}
            settings = load_settings(None, environ=env)
            bindings = {store: {label_address(n * LABELS + i + 1): _sku(i % SKUS) for i in range(LABELS)}
                        for n, store in enumerate(STORES)}
            await _seed(settings, bindings)
            radios: dict[str, str] = {}
            for n, store in enumerate(STORES):
                sim = procs.spawn(f"simulate-{store}", esl_argv(
                    "simulate", "--labels", str(LABELS), "--always-listening", "--wake-interval", "2", "--listen",
                    "127.0.0.1:0", "--summary-interval", "60", "--first-label", str(n * LABELS + 1)))
                ready = await sim.start(ready=SIMULATE_READY)
                assert ready is not None
                radios[store] = f"sim://{ready[1]}:{ready[2]}"
            servers: dict[str, ChildProcess] = {name: procs.spawn(f"serve-{name}", esl_argv("serve", "--instance", name),
                                                                  env=env) for name in INSTANCES}
            ports: dict[str, int] = {}
            for name, child in servers.items():
                started = await child.start(ready=SERVE_READY, timeout=60)
                assert started is not None
                ports[name] = int(started[1])
            for store in STORES:
                trust = await trust_gateway(settings.data_dir, tmp_path / f"gw-{store}", store, GATEWAY,
                                            database_url=url)
                gateway = procs.spawn(f"gateway-{store}", esl_argv(
                    "gateway", "--broker", broker.url, "--radio", radios[store], "--store", store, "--id", GATEWAY,
                    "--data", str(tmp_path / f"gw-{store}"), "--status-interval", "1", *trust))
                await gateway.start(ready=GATEWAY_READY)

            newest = {store: {_sku(i): {"sku": _sku(i), "name": f"Produkt {i}", "price": _price(0, i), "seq": 1}
                              for i in range(SKUS)} for store in STORES}
            store_settings = {STORES[0]: settings, STORES[1]: dataclasses.replace(settings, store=STORES[1],
                                                                                 store_name="Sklep 2")}

            async def converged() -> bool:
                rows = {r["mac"]: r for r in await _rows(url, "SELECT mac, state, displayed_hash FROM labels")}
                for store in STORES:
                    want = {sku: expected_hash_for(rec, MODEL, settings=store_settings[store])
                            for sku, rec in newest[store].items()}
                    if not all(mac in rows and rows[mac]["state"] == "ok" and rows[mac]["displayed_hash"] == want[sku]
                               for mac, sku in bindings[store].items()):
                        return False
                return True

            await _until("every label shows its first price", converged, procs, 90)

            async with OutboxPos(broker.url, Topics("esl", STORES[0]), client_id="test-pos-1") as pos1, \
                    OutboxPos(broker.url, Topics("esl", STORES[1]), client_id="test-pos-2") as pos2:
                tills = {STORES[0]: pos1, STORES[1]: pos2}

                def batch(n: int, indexes: range) -> list[dict[str, Any]]:
                    return [{"sku": _sku(i), "price": _price(n, i), "seq": n + 1, "update_id": f"b{n}-{_sku(i)}"}
                            for i in indexes]

                first = batch(1, range(SKUS))
                for till in tills.values():
                    await till.publish(first)

                async def jobs_in_flight() -> bool:
                    return bool(await _rows(url, "SELECT 1 FROM jobs WHERE kind = 'image' AND state = 'sent' LIMIT 1"))

                await _until("image jobs in flight", jobs_in_flight, procs, 30)
                servers["s1"].kill()  # SIGKILL, its claims and open transactions with it
                second, third = batch(2, range(SKUS // 2)), batch(3, range(SKUS // 2, SKUS))
                sent = [item["update_id"] for item in (*first, *second, *third)]
                applied: dict[str, set[str]] = {}
                for store, till in tills.items():
                    await till.publish(second)
                    await till.publish(third)
                for store, till in tills.items():
                    await till.until_confirmed(sent, timeout=90, resend_after=5)
                    applied[store] = {uid for uid in sent if till.status(uid) == "applied"}
                    assert {till.status(uid) for uid in sent} <= {"applied", "stale", "duplicate"}
                    for item in (*first, *second, *third):
                        current = newest[store][item["sku"]]
                        if item["update_id"] in applied[store] and item["seq"] >= current["seq"]:
                            newest[store][item["sku"]] = {**current, "price": item["price"], "seq": item["seq"]}
                await _until("every label shows its newest price", converged, procs, 120)

            # every applied update in its store's history once, nothing else, each product in seq order
            for store in STORES:
                history = await _rows(url, "SELECT sku, price, seq FROM price_history WHERE store = $1 ORDER BY id",
                                      store)
                by_sku: dict[str, list[tuple[str, int]]] = {}
                for row in history:
                    by_sku.setdefault(row["sku"], []).append((row["price"], row["seq"]))
                counts = Counter((row["sku"], row["price"]) for row in history)
                assert max(counts.values()) == 1, counts.most_common(3)
                for item in (*first, *second, *third):
                    there = counts[(item["sku"], item["price"])]
                    assert there == (1 if item["update_id"] in applied[store] else 0), (store, item)
                for sku, rows in by_sku.items():
                    seqs = [seq for _, seq in rows]
                    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), (store, sku, rows)

            # the survivors both drew labels: the work was shared, and the dead one's claims taken over
            rendered = {name: _rendered(ports[name]) for name in ("s2", "s3")}
            assert all(n > 0 for n in rendered.values()), rendered
            leased = await _rows(url, "SELECT mac FROM labels WHERE lease_owner IS NOT NULL")
            assert not leased, leased
    finally:
        broker.kill()
        await broker.aclose()
