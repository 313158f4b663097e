"""A whole store in the test's event loop, from real parts: server, gateway, simulated labels.

    async with shop(tmp_path, broker_url, labels=4) as s:
        await s.seed([{"sku": "A", "price": "4.99", "name": "Mleko"}])
        await s.bind({mac: "A" for mac in s.macs})
        await s.converged()                       # every bound label shows its expected image
        await s.publish_prices([...])             # as a POS would, on MQTT (QoS 1)

The server runs with one render process, a short debounce and short deadlines so that
retries happen within a test; everything else is as in production (MQTT broker given by
the caller, SQLite file in tmp_path, the loopback radio over TCP, the gateway's spool).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eslserver.config import Settings, load_settings
from eslserver.gateway.bridge import Gateway, GatewayConfig
from eslserver.gateway.links.loopback import LoopbackRadio
from eslserver.mqtt import Message, MqttConnection, MqttSettings
from eslserver.server import SYSTEM, Server
from eslserver.trust import register_gateway_key
from firmware_proto.models import get_model
from render.batch import render_batch
from render.context import Store
from render.templates import load_template
from simulator.radio_server import RadioServer
from simulator.store import SimStore, StoreConfig

__all__ = ["Shop", "shop", "shop_settings", "expected_hash_for"]


def shop_settings(data_dir: Path, broker_url: str | None, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"data_dir": data_dir, "http_port": 0, "broker_url": broker_url, "debounce_ms": 5,
                              "render_workers": 1, "job_deadline_s": 4, "retry_base_s": 0.2, "retry_max_s": 1.0}
    values.update(overrides)
    return load_settings(None, environ={}, overrides=values)


def expected_hash_for(record: Mapping[str, Any], model: str = "2.9-bwry", template: str = "shelf-2.9",
                      *, settings: Settings) -> str:
    """The hash of `record` drawn independently of the server (what the label must end up showing)."""
    result = render_batch(load_template(template), [dict(record)], model=model,
                          store=Store(settings.store_name, settings.currency))[0]
    assert result.hash is not None, result.error
    return result.hash.hex()


@dataclass
class Shop:
    server: Server
    store: SimStore
    gateway: Gateway
    settings: Settings
    pos: MqttConnection

    @property
    def macs(self) -> list[str]:
        return list(self.store.labels)

    async def seed(self, records: list[dict[str, Any]]) -> None:
        result = await self.server.ingest.submit(records, source="test", actor=SYSTEM)
        assert not result.errors, result.errors

    async def bind(self, bindings: Mapping[str, str]) -> None:
        for mac, sku in bindings.items():
            await self.server.labels.bind(mac, sku, actor=SYSTEM, model=self.store.labels[mac].model.name)

    async def publish_prices(self, payload: object) -> None:
        await self.pos.publish(self.server.topics.pos_prices, json.dumps(payload).encode(), qos=1)

    async def label(self, mac: str) -> dict[str, Any]:
        state = await self.server.labels.state(mac)
        assert state is not None
        return state

    async def converged(self, macs: list[str] | None = None, timeout: float = 30.0) -> dict[str, dict[str, Any]]:
        """Wait until every label in `macs` (default all) is ok and the simulated label itself
        shows the expected hash; return their states."""
        macs = macs or self.macs
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            states = {mac: await self.label(mac) for mac in macs}
            done = all(st["state"] == "ok" and st["expected_hash"] is not None
                       and self.store.labels[mac].displayed_hash.hex() == st["expected_hash"]
                       for mac, st in states.items())
            if done:
                return states
            if loop.time() > deadline:
                raise AssertionError(f"labels did not converge in {timeout} s: {states}")
            await asyncio.sleep(0.05)


@asynccontextmanager
async def shop(tmp_path: Path, broker_url: str, *, labels: int = 4, models: tuple[str, ...] = ("2.9-bwry",),
               gateway: Mapping[str, Any] | None = None, sim_state: Path | None = None,
               **overrides: Any) -> AsyncIterator[Shop]:
    """`overrides` are server settings; `gateway` more `GatewayConfig` fields (``status_interval_s``);
    `sim_state` a simulator state file the labels keep their keys, counters and screens in."""
    settings = shop_settings(tmp_path / "data", broker_url, **overrides)
    async with Server(settings) as server:
        await server.add_identity("gateway", "gw1", reset=True)  # registered: the server listens to it
        store = SimStore(StoreConfig(labels=labels, models=models, always_listening=True, wake_interval_s=2.0,
                                     state_file=sim_state))
        radio = RadioServer(store, "127.0.0.1", 0)
        async with store, radio:
            host, port = radio.address
            assert server.signing_key is not None
            bridge = Gateway(GatewayConfig(store=settings.store, gateway_id="gw1", data_dir=tmp_path / "gw",
                                           concurrency=16, server_key=server.signing_key.public,
                                           **(gateway or {})),
                             LoopbackRadio(host, port), MqttSettings.from_url(broker_url))
            await register_gateway_key(server.db, settings.store, "gw1", bridge.key.public, actor=SYSTEM)
            async with bridge, MqttConnection(MqttSettings.from_url(broker_url), client_id="test-pos",
                                             clean_session=True) as pos:
                await pos.connected.wait()
                yield Shop(server, store, bridge, settings, pos)


async def collect(url: str, topic: str) -> tuple[MqttConnection, list[Message]]:
    """A subscriber that appends every message on `topic` to the returned list (enter it)."""
    got: list[Message] = []

    async def handler(message: Message) -> None:
        got.append(message)

    conn = MqttConnection(MqttSettings.from_url(url), client_id=f"test-sub-{id(got)}", clean_session=True)
    conn.subscribe(topic, handler, qos=1)
    return conn, got


def model_of(store: SimStore, mac: str) -> str:
    return get_model(store.labels[mac].model.name).name
