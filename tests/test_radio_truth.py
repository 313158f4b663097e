"""Issue 14 item 6: the radio side tells the truth.

Real parts throughout: Mosquitto, the server (SQLite, HTTP), the gateway process object, and
the simulator's loopback radio server over TCP. The simulator's radio is stopped and started
again on the same port under a running gateway; a simulated label drops off the air.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from eslserver.auth import create_token
from eslserver.gateway.bridge import Gateway, GatewayConfig, GatewayConfigError
from eslserver.gateway.events import Status, parse_event
from eslserver.gateway.links.loopback import LoopbackRadio
from eslserver.gateway.radio_watch import RadioWatch
from eslserver.mqtt import Message, MqttConnection, MqttSettings
from eslserver.server import SYSTEM, Server
from eslserver.trust import register_gateway_key
from simulator.radio_server import RadioServer
from simulator.store import SimStore, StoreConfig
from tests.brokers import mosquitto
from tests.pipeline_shop import shop_settings

PRODUCTS = [{"sku": "A", "price": "4.99", "name": "Mleko"}, {"sku": "B", "price": "2.49", "name": "Chleb"}]


@dataclass
class Rig:
    server: Server
    store: SimStore
    gateway: Gateway
    port: int
    token: str
    seen: list[Message]

    async def wait(self, what: str, check: Callable[[], Any], timeout: float = 20.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            result = check()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return
            if loop.time() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            await asyncio.sleep(0.05)

    async def gateways(self) -> list[dict[str, Any]]:
        url = f"http://127.0.0.1:{self.server.http_port}/api/v1/gateways"
        async with aiohttp.ClientSession() as http, http.get(
                url, headers={"Authorization": f"Bearer {self.token}"}) as resp:
            assert resp.status == 200, await resp.text()
            items: list[dict[str, Any]] = (await resp.json())["items"]
            return items

    async def state(self, mac: str) -> str:
        st = await self.server.labels.state(mac)
        assert st is not None
        return str(st["state"])

    def statuses(self) -> list[Status]:
        out = []
        for m in self.seen:
            if m.topic.endswith("/events"):
                ev = parse_event(m.payload)
                if isinstance(ev, Status):
                    out.append(ev)
        return out

    def retained_states(self, mac: str) -> list[str]:
        return [json.loads(m.payload)["state"] for m in self.seen if m.topic.endswith(f"/label/{mac}/state")]


@asynccontextmanager
async def rig(tmp_path: Path, url: str, *, wake_interval_s: float = 0.3,
              **overrides: Any) -> AsyncIterator[tuple[Rig, Callable[[], Any]]]:
    """A store whose simulator radio the test can stop (`stop`) and start again on its port."""
    settings = shop_settings(tmp_path / "data", url, **overrides)
    async with Server(settings) as server:
        await server.add_identity("gateway", "gw1")  # registered: the server listens to it
        store = SimStore(StoreConfig(labels=2, always_listening=True, wake_interval_s=wake_interval_s))
        async with store:
            radio: RadioServer | None = RadioServer(store, "127.0.0.1", 0)
            await radio.start()
            host, port = radio.address

            async def stop() -> None:
                nonlocal radio
                if radio is not None:
                    await radio.aclose()
                    radio = None

            seen: list[Message] = []

            async def keep(message: Message) -> None:
                seen.append(message)

            sub = MqttConnection(MqttSettings.from_url(url), client_id="test-radio-truth", clean_session=True)
            sub.subscribe(f"{settings.topic_prefix}/{settings.store}/#", keep, qos=1)
            assert server.signing_key is not None
            gw = Gateway(GatewayConfig(store=settings.store, gateway_id="gw1", data_dir=tmp_path / "gw",
                                       status_interval_s=0.3, checkin_coalesce_s=0.1, radio_retry_min_s=0.1,
                                       radio_retry_max_s=0.4, server_key=server.signing_key.public),
                         LoopbackRadio(host, port), MqttSettings.from_url(url))
            await register_gateway_key(server.db, settings.store, "gw1", gw.key.public, actor=SYSTEM)
            try:
                async with sub, gw:
                    token = await create_token(server.db, "admin", "test")
                    yield Rig(server, store, gw, port, token, seen), stop
            finally:
                await stop()


async def converge(r: Rig) -> None:
    result = await r.server.ingest.submit(PRODUCTS, source="test", actor=SYSTEM)
    assert not result.errors
    for mac, sku in zip(sorted(r.store.labels), ("A", "B")):
        await r.server.labels.bind(mac, sku, actor=SYSTEM, model=r.store.labels[mac].model.name)

    async def all_ok() -> bool:
        return all([await r.state(mac) == "ok" for mac in r.store.labels])
    await r.wait("labels ok", all_ok)


async def test_a_restarted_simulator_is_reconnected_and_the_gateway_degraded_meanwhile(tmp_path: Path) -> None:
    async with mosquitto() as url, rig(tmp_path, url) as (r, stop):
        await converge(r)
        assert [g["status"] for g in await r.gateways()] == ["online"]
        mac_a = sorted(r.store.labels)[0]
        first = await r.server.labels.state(mac_a)
        assert first is not None
        first_hash = first["expected_hash"]

        await stop()  # `esl simulate` goes away under the running gateway
        await r.wait("a radio: down status event", lambda: any(s.radio == "down" for s in r.statuses()))
        down = next(s for s in r.statuses() if s.radio == "down")
        assert down.radio_since is not None and down.radio_since <= down.at

        async def degraded() -> bool:
            gws = await r.gateways()
            return gws[0]["status"] == "degraded" and gws[0]["info"]["radio"] == "down"
        await r.wait("the server's listing shows the gateway degraded", degraded)
        assert not r.gateway.radio.is_up

        # a price change while the radio is down waits; it flows once the radio is back
        await r.server.ingest.submit([{"sku": "A", "price": "3.99"}], source="test", actor=SYSTEM)
        restarted = RadioServer(r.store, "127.0.0.1", r.port)
        async with restarted:
            await r.wait("the radio reconnected", lambda: r.gateway.radio_watch.up and r.gateway.radio.is_up)
            assert r.gateway.radio_watch.reconnects == 1

            async def online() -> bool:
                return (await r.gateways())[0]["status"] == "online"
            await r.wait("the gateway back online", online)
            up = [s for s in r.statuses() if s.radio == "up" and s.at > down.at]
            assert up and up[0].radio_since is not None and up[0].radio_since > down.radio_since

            async def shows_new_price() -> bool:
                st = await r.server.labels.state(mac_a)
                assert st is not None
                return bool(st["state"] == "ok" and r.store.labels[mac_a].displayed_hash.hex() == st["expected_hash"]
                            and st["expected_hash"] != first_hash)
            await r.wait("jobs flow again: label A shows the new price", shows_new_price)


async def test_a_silent_label_goes_offline_with_nothing_pending_and_comes_back(tmp_path: Path) -> None:
    async with mosquitto() as url, rig(tmp_path, url, checkin_interval_s=1.0, offline_after_missed=3) as (r, _):
        await converge(r)
        silent, other = sorted(r.store.labels)
        r.store.take_offline(silent, 9.0)  # the simulator's offline fault: no check-ins for 9 s
        loop = asyncio.get_running_loop()
        gone = loop.time()

        async def offline() -> bool:
            return await r.state(silent) == "offline"
        await r.wait("the silent label offline", offline, timeout=8.0)
        assert loop.time() - gone >= 2.0  # not before it missed its check-ins (3 × 1 s)
        assert await r.state(other) == "ok"  # the other one keeps checking in
        row = await r.server.labels.state(silent)
        assert row is not None and row["expected_hash"] == row["displayed_hash"]  # nothing was pending
        await r.wait("its retained state says offline", lambda: "offline" in r.retained_states(silent))

        async def back() -> bool:
            return await r.state(silent) == "ok"
        await r.wait("back to ok by itself", back, timeout=15.0)
        await r.wait("its retained state says ok again", lambda: r.retained_states(silent)[-1] == "ok")
        assert "offline" not in r.retained_states(other)


def test_settings_and_backoff_are_checked() -> None:
    with pytest.raises(GatewayConfigError, match="radio_retry_min_s"):
        GatewayConfig(store="s", gateway_id="g", data_dir=Path("."), radio_retry_min_s=5.0, radio_retry_max_s=1.0)
    from eslserver.config import ConfigError, load_settings
    with pytest.raises(ConfigError, match="offline_after_missed.*0"):
        load_settings(None, environ={"ESL_OFFLINE_AFTER_MISSED": "0"})
    with pytest.raises(ConfigError, match="checkin_interval_s.*-1"):
        load_settings(None, environ={}, overrides={"checkin_interval_s": -1})
    watch = RadioWatch(LoopbackRadio("127.0.0.1", 1), min_s=0.5, max_s=8.0, rng=random.Random(1))
    delays = [watch.delay_s(n) for n in range(8)]
    assert all(0.25 * 2 ** min(n, 4) <= d <= min(8.0, 0.5 * 2 ** n) for n, d in enumerate(delays)), delays
    assert max(delays) <= 8.0
