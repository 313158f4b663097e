"""One server, two stores: stores are data, each served with its own prices, currency,
gateway and topics, and nothing of one reaches the other.

Real parts: Mosquitto, the server, one gateway per store over the loopback radio to its own
simulated labels, POS messages on each store's own topic. The second store is added while the
server runs (as ``esl stores add`` does from another process) and is served within seconds.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

from eslserver.gateway.bridge import Gateway, GatewayConfig
from eslserver.gateway.links.loopback import LoopbackRadio
from eslserver.mqtt import MqttConnection, MqttSettings
from eslserver.server import SYSTEM, Server
from eslserver.store_services import settings_for
from eslserver.stores_admin import StoreError, add_store
from eslserver.trust import register_gateway_key
from simulator.radio_server import RadioServer
from simulator.store import SimStore, StoreConfig
from tests.brokers import mosquitto
from tests.pipeline_shop import expected_hash_for, shop_settings
from tests.postgres import database_url  # noqa: F401  (fixture: SQLite and PostgreSQL)

LABELS = 2


@asynccontextmanager
async def _store_radio(stack: AsyncExitStack, server: Server, store: str, first: int, url: str,
                       tmp_path: Path) -> AsyncIterator[SimStore]:
    """Simulated labels of `store` (addresses from `first`) and its registered gateway ``gw``."""
    sim = SimStore(StoreConfig(labels=LABELS, always_listening=True, wake_interval_s=2.0, first_label=first))
    radio = RadioServer(sim, "127.0.0.1", 0)
    await stack.enter_async_context(sim)
    await stack.enter_async_context(radio)
    await server.add_identity("gateway", "gw", store=store, reset=True)
    assert server.signing_key is not None
    bridge = Gateway(GatewayConfig(store=store, gateway_id="gw", data_dir=tmp_path / f"gw-{store}", concurrency=8,
                                   server_key=server.signing_key.public),
                     LoopbackRadio(*radio.address), MqttSettings.from_url(url))
    await register_gateway_key(server.db, store, "gw", bridge.key.public, actor=SYSTEM)
    await stack.enter_async_context(bridge)
    yield sim


async def _until(what: str, check: Any, timeout: float = 40.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        await asyncio.sleep(0.05)


async def test_one_server_serves_two_stores_each_its_own_prices_and_labels(
        tmp_path: Path, database_url: str | None) -> None:  # noqa: F811
    async with mosquitto() as url:
        settings = shop_settings(tmp_path / "data", url, store="s1", store_name="Sklep 1", currency="PLN",
                                 database_url=database_url)
        async with Server(settings) as server, AsyncExitStack() as stack, \
                MqttConnection(MqttSettings.from_url(url), client_id="test-pos", clean_session=True) as pos:
            await pos.connected.wait()
            # the second store, added while the server runs: its own name, currency and POS field names
            await add_store(server.db, settings, "s2", name="Magasin 2", currency="EUR",
                            field_map={"Code": "sku", "Prix": "price"}, language="fr", country="FR",
                            timezone="Europe/Paris", actor=SYSTEM)
            await _until("store s2 served", lambda: asyncio.sleep(0, "s2" in server.stores), timeout=10)
            s2 = settings_for(settings, {"id": "s2", "name": "Magasin 2", "currency": "EUR",
                                         "field_map": json.dumps({"Code": "sku", "Prix": "price"}),
                                         "language": "fr", "country": "FR", "timezone": "Europe/Paris"})
            one = await stack.enter_async_context(_store_radio(stack, server, "s1", 1, url, tmp_path))
            two = await stack.enter_async_context(_store_radio(stack, server, "s2", 101, url, tmp_path))

            # the same SKU in both stores, at two prices, each on its own store's topic and in its own words
            await pos.publish("esl/s1/pos/prices", json.dumps([{"sku": "A", "name": "Mleko", "price": "3.49"}]), qos=1)
            await pos.publish("esl/s2/pos/prices", json.dumps([{"Code": "A", "name": "Lait", "Prix": "1.19"}]), qos=1)
            await pos.publish("esl/s9/pos/prices", json.dumps([{"sku": "A", "price": "0.01"}]), qos=1)  # not served
            await _until("both products", lambda: _both(server))
            for mac in one.labels:
                await server.stores["s1"].labels.bind(mac, "A", actor=SYSTEM, model="2.9-bwry")
            for mac in two.labels:
                await server.stores["s2"].labels.bind(mac, "A", actor=SYSTEM, model="2.9-bwry")

            async def shows(sim: SimStore, record: dict[str, Any], store_settings: Any) -> bool:
                want = expected_hash_for(record, settings=store_settings)
                states = await server.labels.states(list(sim.labels))
                return len(states) == LABELS and all(
                    st["state"] == "ok" and st["expected_hash"] == want
                    and sim.labels[st["mac"]].displayed_hash.hex() == want for st in states)

            first = {"sku": "A", "name": "Mleko", "price": "3.49"}
            second = {"sku": "A", "name": "Lait", "price": "1.19"}
            await _until("store 1 shows 3.49 zł", lambda: shows(one, first, settings))
            await _until("store 2 shows 1,19 €", lambda: shows(two, second, s2))
            assert expected_hash_for(second, settings=s2) != expected_hash_for(second, settings=settings)

            # a change in store 2 redraws store 2 only
            before = {mac: one.labels[mac].displayed_hash for mac in one.labels}
            await pos.publish("esl/s2/pos/prices", json.dumps([{"Code": "A", "Prix": "0.99"}]), qos=1)
            await _until("store 2 shows 0,99 €", lambda: shows(two, {**second, "price": "0.99"}, s2))
            assert {mac: one.labels[mac].displayed_hash for mac in one.labels} == before
            rows = {(r["store"], r["sku"]): r for r in await server.db.read("SELECT store, sku, record FROM products")}
            assert set(rows) == {("s1", "A"), ("s2", "A")}  # nothing for the store not served
            assert json.loads(rows[("s1", "A")]["record"])["price"] == "3.49"


async def _both(server: Server) -> bool:
    return len(await server.db.read("SELECT 1 FROM products WHERE sku = 'A'")) == 2


async def test_a_store_that_cannot_be_served_is_refused_naming_the_field(tmp_path: Path) -> None:
    settings = shop_settings(tmp_path / "data", None)
    async with Server(settings, mqtt=False, http=False, render_processes=False) as server:
        for store, currency, extra, error in (("s/2", "EUR", {}, "store"), ("s2", "euro", {}, "currency"),
                                              ("+", "EUR", {}, "store"), ("s2", "EUR", {"language": "FR"}, "language"),
                                              ("s2", "EUR", {"country": "france"}, "country"),
                                              ("s2", "EUR", {"timezone": "../../etc/passwd"}, "timezone"),
                                              ("s2", "EUR", {"timezone": "Europe/Atlantis"}, "timezone")):
            try:
                await add_store(server.db, settings, store, name="X", currency=currency, actor=SYSTEM, **extra)
            except StoreError as exc:
                assert error in str(exc), exc
            else:
                raise AssertionError(f"{store!r}/{currency!r} was accepted")
        assert [r["id"] for r in await server.db.read("SELECT id FROM stores")] == [settings.store]


async def test_esl_stores_add_and_list_beside_the_server(tmp_path: Path) -> None:
    settings = shop_settings(tmp_path / "data", None)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESL_")}
    async with Server(settings, mqtt=False, http=False, render_processes=False) as server:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "from eslserver.cli import main; main()", "stores", "add", "s7", "--name",
            "Sklep 7", "--currency", "PLN", "--field-map", '{"Kod": "sku"}', "--data", str(settings.data_dir),
            env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        _, err = await proc.communicate()
        assert proc.returncode == 0, err
        await _until("store s7 served", lambda: asyncio.sleep(0, "s7" in server.stores), timeout=10)
        assert server.stores["s7"].settings.field_map == {"Kod": "sku"}
        audit = await server.db.read("SELECT action, target FROM audit WHERE action LIKE 'store.%'")
        assert [(r["action"], r["target"]) for r in audit] == [("store.add", "store:s7")]
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "from eslserver.cli import main; main()", "stores", "list", "--json", "--data",
            str(settings.data_dir), env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await proc.communicate()
        assert proc.returncode == 0, err
        assert [s["id"] for s in json.loads(out)] == sorted([settings.store, "s7"])


async def test_a_token_restricted_to_one_store_sees_and_changes_nothing_else(tmp_path: Path) -> None:
    """The attacks a till or a technician of store 2 could try on store 1 through the API."""
    import aiohttp

    from eslserver.auth import create_token

    settings = shop_settings(tmp_path / "data", None, store="s1", store_name="Sklep 1")
    async with Server(settings, mqtt=False, render_processes=False) as server, aiohttp.ClientSession() as http:
        await add_store(server.db, settings, "s2", name="Sklep 2", currency="PLN", actor=SYSTEM)
        await _until("store s2 served", lambda: asyncio.sleep(0, "s2" in server.stores), timeout=10)
        admin = await create_token(server.db, "admin", "head office")
        tech2 = await create_token(server.db, "tech", "tech of s2", stores=["s2"])
        admin2 = await create_token(server.db, "admin", "manager of s2", stores=["s2"])
        merch2 = await create_token(server.db, "merchandiser", "merch of s2", stores=["s2"])
        base = f"http://127.0.0.1:{server.http_port}"

        async def call(method: str, path: str, token: str, body: Any = None) -> tuple[int, Any]:
            async with http.request(method, base + path, json=body,
                                    headers={"Authorization": f"Bearer {token}"}) as reply:
                return reply.status, (await reply.json(content_type=None) if reply.content_length != 0 else None)

        mac1, mac2 = "AA:00:00:00:01:01", "AA:00:00:00:02:01"
        assert (await call("POST", "/api/v1/prices", admin, [{"sku": "A", "price": "3.49", "name": "Mleko"}]))[0] == 200
        assert (await call("POST", "/api/v1/stores/s2/prices", admin2, [{"sku": "A", "price": "1.99", "name": "Mleko"}]))[0] == 200
        assert (await call("PUT", f"/api/v1/labels/{mac1}/binding", admin, {"sku": "A", "model": "2.9-bwry"}))[0] == 200
        status, _ = await call("PUT", f"/api/v1/stores/s2/labels/{mac2}/binding", tech2, {"sku": "A", "model": "2.9-bwry"})
        assert status == 200

        # its own store: fine, and only its own labels
        status, body = await call("GET", "/api/v1/stores/s2/labels", tech2)
        assert status == 200 and [item["mac"] for item in body["items"]] == [mac2]
        # another store, by the plain paths (the configured store) or by name: refused
        for method, path, payload in (("GET", "/api/v1/labels", None), ("GET", "/api/v1/stores/s1/labels", None),
                                      ("GET", "/api/v1/stores/s1/products/A", None),
                                      ("POST", "/api/v1/stores/s1/prices", [{"sku": "A", "price": "0.01"}]),
                                      ("DELETE", f"/api/v1/stores/s1/labels/{mac1}/binding", None),
                                      ("GET", "/api/v1/summary", None)):
            status, body = await call(method, path, admin2, payload)
            assert status == 403 and body["error"] == "store_forbidden", (method, path, body)
        # another store's label through its own store's path: as if it did not exist, and untouched
        for method, path, payload in (("GET", f"/api/v1/stores/s2/labels/{mac1}", None),
                                      ("DELETE", f"/api/v1/stores/s2/labels/{mac1}/binding", None),
                                      ("PUT", f"/api/v1/stores/s2/labels/{mac1}/binding", {"sku": "A"}),
                                      ("POST", f"/api/v1/stores/s2/labels/{mac1}/flash", {"seconds": 2})):
            status, body = await call(method, path, tech2, payload)
            assert status == 404 and body["error"] == "unknown_label", (method, path, body)
        status, body = await call("GET", f"/api/v1/stores/s2/labels/{mac1}", admin)  # not even head office
        assert status == 404
        status, body = await call("GET", f"/api/v1/labels/{mac1}", admin)
        assert status == 200 and body["sku"] == "A" and body["state"] != "unpaired"
        # what the whole chain shares: read, never change; what concerns every store: nothing
        assert (await call("GET", "/api/v1/templates", merch2))[0] == 200
        status, body = await call("PUT", "/api/v1/templates/shelf-2.9", merch2, {"source": "x"})
        assert status == 403 and body["error"] == "store_forbidden"
        for path in ("/api/v1/audit", "/api/v1/events/stream?limit=1"):
            status, body = await call("GET", path, admin2)
            assert status == 403 and body["error"] == "store_forbidden", path
        # stores that are not there, or not store names
        for path in ("/api/v1/stores/nope/labels", "/api/v1/stores/..%2Fs1/labels", "/api/v1/stores/%2B/labels"):
            status, body = await call("GET", path, admin)
            assert status == 404, (path, body)
        # prices stayed each store's own
        rows = {(r["store"], r["sku"]): json.loads(r["record"])["price"]
                for r in await server.db.read("SELECT store, sku, record FROM products")}
        assert rows == {("s1", "A"): "3.49", ("s2", "A"): "1.99"}


async def test_the_technician_cli_works_on_the_store_it_is_given(tmp_path: Path) -> None:
    """``esl labels --store s2``: that store's labels only; a label of another store is not found."""
    from eslserver.auth import create_token

    settings = shop_settings(tmp_path / "data", None, store="s1")
    async with Server(settings, mqtt=False, render_processes=False) as server:
        await add_store(server.db, settings, "s2", name="Sklep 2", currency="PLN", actor=SYSTEM)
        await server.serve_new_stores()
        for store, mac in (("s1", "AA:00:00:00:01:01"), ("s2", "AA:00:00:00:02:01")):
            async with server.db.transaction() as conn:
                await server.stores[store].labels.register(conn, mac, "2.9-bwry")
        token = await create_token(server.db, "tech", "tech of s2", stores=["s2"])
        env = {k: v for k, v in os.environ.items() if not k.startswith("ESL_")}
        env["ESL_CLI_CONFIG"] = str(tmp_path / "none.toml")

        async def esl(*args: str) -> tuple[int, str, str]:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", "from eslserver.cli import main; main()", *args, "--server",
                f"http://127.0.0.1:{server.http_port}", "--token", token, env=env,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            out, err = await proc.communicate()
            assert proc.returncode is not None
            return proc.returncode, out.decode(), err.decode()

        code, out, err = await esl("labels", "--store", "s2", "--json")
        assert code == 0, err
        assert [item["mac"] for item in json.loads(out)] == ["AA:00:00:00:02:01"]
        code, out, err = await esl("label", "AA:00:00:00:01:01", "--store", "s2")
        assert code != 0 and "AA:00:00:00:01:01" in err
        code, out, err = await esl("labels", "--json")  # the server's own store: not this token's
        assert code != 0 and ("store_forbidden" in err or "may act on s2" in err), err
