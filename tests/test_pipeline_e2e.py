"""POS price change over MQTT → the right picture on the (simulated) label, end to end.

Real parts: Mosquitto (started by the test) and the embedded amqtt broker, the server with
its SQLite file (and, with Mosquitto, once more on a PostgreSQL database) and render process, the gateway with its spool, the loopback radio over TCP
and simulated labels checking their frames. Nothing of ours is faked.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from eslserver.timeutil import utcnow
from tests.brokers import embedded_broker, mosquitto
from tests.pipeline_shop import collect, expected_hash_for, shop
from tests.postgres import database_for


@pytest.fixture(params=[("mosquitto", "sqlite"), ("amqtt", "sqlite"), ("mosquitto", "postgresql")],
                ids=["mosquitto-sqlite", "amqtt-sqlite", "mosquitto-postgresql"])
async def backends(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[str, str | None]]:
    """(broker URL, database URL): each broker on SQLite, and PostgreSQL once (with Mosquitto)."""
    broker, engine = request.param
    async with (mosquitto() if broker == "mosquitto" else embedded_broker()) as url, \
            database_for(engine, tmp_path) as database:
        yield url, database

MILK = {"sku": "100100", "name": "Mleko 3,2% 1 l", "price": "3.49", "seq": 1}
BREAD = {"sku": "100200", "name": "Chleb żytni 500 g", "price": "5.99", "unit": {"size": 500, "measure": "g"}, "seq": 1}


async def test_price_on_mqtt_reaches_the_label(tmp_path: Path, backends: tuple[str, str | None]) -> None:
    broker_url, database_url = backends
    async with shop(tmp_path, broker_url, labels=3, database_url=database_url) as s:
        await s.seed([MILK, BREAD])
        a, b, c = s.macs
        await s.bind({a: MILK["sku"], b: MILK["sku"], c: BREAD["sku"]})
        first = await s.converged()
        assert first[a]["expected_hash"] == expected_hash_for(MILK, settings=s.settings)
        assert first[a]["displayed_hash"] == first[a]["expected_hash"]

        await s.publish_prices({"sku": MILK["sku"], "price": "2.99", "seq": 2})
        want = expected_hash_for({**MILK, "price": "2.99"}, settings=s.settings)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        while (await s.label(a))["expected_hash"] != want and loop.time() < deadline:
            await asyncio.sleep(0.05)
        after = await s.converged()
        for mac in (a, b):  # both labels of the product show the new price, as the label says itself
            assert after[mac]["expected_hash"] == want
            assert s.store.labels[mac].displayed_hash.hex() == want
        assert after[c] == first[c] or after[c]["displayed_hash"] == first[c]["displayed_hash"]
        history = await s.server.db.read("SELECT price FROM price_history WHERE sku = ? ORDER BY id", (MILK["sku"],))
        assert [r["price"] for r in history] == ["3.49", "2.99"]
        snapshot = s.store.labels[a].snapshot_png()
        assert snapshot.startswith(b"\x89PNG")


async def test_bad_item_is_answered_and_the_rest_applied(tmp_path: Path, backends: tuple[str, str | None]) -> None:
    broker_url, database_url = backends
    async with shop(tmp_path, broker_url, labels=1, database_url=database_url) as s:
        await s.seed([MILK])
        await s.bind({s.macs[0]: MILK["sku"]})
        await s.converged()
        sub, errors = await collect(broker_url, s.server.topics.pos_errors)
        async with sub:
            await sub.connected.wait()
            await s.publish_prices([{"sku": MILK["sku"], "price": "4.19", "seq": 2},
                                    {"sku": "100300", "price": "-1"},
                                    {"sku": MILK["sku"], "price": "9.99", "seq": 1}])  # stale: older seq
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10
            while not errors and loop.time() < deadline:
                await asyncio.sleep(0.05)
        assert errors, "no message on the error topic"
        body = json.loads(errors[0].payload)
        assert body["accepted"] == 2
        (err,) = body["errors"]
        assert (err["index"], err["sku"], err["field"], err["value"]) == (1, "100300", "price", "-1")
        want = expected_hash_for({**MILK, "price": "4.19"}, settings=s.settings)
        deadline = loop.time() + 20
        while (await s.label(s.macs[0]))["expected_hash"] != want and loop.time() < deadline:
            await asyncio.sleep(0.05)
        await s.converged()
        stale = s.server.metrics.updates_stale.labels("mqtt")._value.get()
        assert stale == 1


async def test_promotion_starts_and_ends_on_time(tmp_path: Path, backends: tuple[str, str | None]) -> None:
    broker_url, database_url = backends
    async with shop(tmp_path, broker_url, labels=1, database_url=database_url) as s:
        start = utcnow() + timedelta(seconds=2)
        end = start + timedelta(seconds=2)
        promo = {"price": "2.49", "from": start.isoformat(), "to": end.isoformat()}
        await s.seed([{**MILK, "promo": promo}])
        mac = s.macs[0]
        await s.bind({mac: MILK["sku"]})
        regular = (await s.converged())[mac]["displayed_hash"]
        seen: list[tuple[float, str]] = []
        loop = asyncio.get_running_loop()
        t0 = utcnow()
        deadline = loop.time() + 15
        while loop.time() < deadline and len({h for _, h in seen}) < 3:
            shown = s.store.labels[mac].displayed_hash.hex()
            if not seen or seen[-1][1] != shown:
                seen.append(((utcnow() - t0).total_seconds(), shown))
            if len(seen) >= 3 and seen[-1][1] == regular:
                break
            await asyncio.sleep(0.02)
        hashes = [h for _, h in seen]
        assert hashes[0] == regular and len(hashes) >= 3 and hashes[-1] == regular, seen
        on_at, off_at = seen[1][0], seen[2][0]
        # the promotion image appears once it starts and goes once it ends (not before)
        assert (start - t0).total_seconds() <= on_at < (start - t0).total_seconds() + 3, seen
        assert (end - t0).total_seconds() <= off_at < (end - t0).total_seconds() + 3, seen
