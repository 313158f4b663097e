"""`esl demo`: a whole store in one process, built from the real parts.

The server (with the embedded broker unless a broker URL is given), a simulated store radio
with a few hundred labels (`simulator`), a gateway bridging MQTT and that radio exactly as
``esl gateway --radio sim://…`` does, a catalogue made from the sample products, every label
bound to a product, and a small POS that publishes price changes on MQTT every few seconds.
Each label's screen is written as a PNG under ``{data}/snapshots`` when it changes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from eslserver.auth import create_token
from eslserver.cli.serve_cmds import run_until_signal
from eslserver.config import Settings
from eslserver.gateway.bridge import Gateway, GatewayConfig
from eslserver.gateway.links.loopback import LoopbackRadio
from eslserver.mqtt import MqttConnection, MqttSettings
from eslserver.server import SYSTEM, Server
from eslserver.timeutil import utcnow
from render.samples import sample_catalogue
from simulator.radio_server import RadioServer
from simulator.snapshots import SnapshotWriter
from simulator.store import SimStore, StoreConfig

__all__ = ["DEMO_MODELS", "DemoConfig", "demo_catalogue", "run_demo"]

log = logging.getLogger(__name__)

DEMO_MODELS = ("2.9-bwry",) * 12 + ("4.2-bwry", "4.2-bwry", "1.54-bw", "7.5-bwry")
"""The mix of label models in the demo store (cycled): mostly 2.9" shelf labels."""


@dataclass(frozen=True, slots=True)
class DemoConfig:
    labels: int = 300
    feed_interval_s: float = 3.0
    feed_size: int = 5
    duration_s: float | None = None
    seed: int = 0
    gateway: str = "gw1"
    wake_interval_s: float = 30.0


def demo_catalogue(count: int) -> list[dict[str, Any]]:
    """`count` products: the sample catalogue, then variants of it with their own SKU and price."""
    base = sample_catalogue(utcnow())
    out: list[dict[str, Any]] = []
    for i in range(count):
        rec = json.loads(json.dumps(base[i % len(base)], default=str))
        if i >= len(base):
            rec["sku"] = f"{rec['sku']}-{i // len(base)}"
            step = Decimal(i // len(base)) / 10
            rec["price"] = str(Decimal(str(rec["price"])) + step)
            rec.pop("ean", None)
            if rec.get("promo"):
                rec["promo"]["price"] = str(Decimal(str(rec["promo"]["price"])) + step)
        rec.pop("lowest_30d", None)  # the server works it out from its own price history
        out.append(rec)
    return out


async def run_demo(settings: Settings, config: DemoConfig, *, print_line: Callable[[str], None] = print,
                   stop: asyncio.Event | None = None) -> None:
    """Run the demo store until SIGINT/SIGTERM, `stop`, or ``duration_s``."""
    async with Server(settings) as server:
        assert server.broker_url is not None
        catalogue = demo_catalogue(config.labels)
        have = await server.db.read_one("SELECT COUNT(*) FROM products WHERE store = ?", (settings.store,))
        if not have or have[0] == 0:
            result = await server.ingest.submit(catalogue, source="demo", actor=SYSTEM)
            if result.errors:
                log.warning("demo catalogue: %d products refused: %s", len(result.errors), result.errors[:3])
        store = SimStore(StoreConfig(labels=config.labels, models=DEMO_MODELS, seed=config.seed,
                                     wake_interval_s=config.wake_interval_s, always_listening=True,
                                     start_spread_s=1.0))
        async with server.db.transaction() as conn:
            for i, (mac, label) in enumerate(store.labels.items()):
                await server.labels.register(conn, mac, label.model.name, sku=catalogue[i]["sku"],
                                             gateway=config.gateway)
        server.pipeline.poke()
        radio_server = RadioServer(store, "127.0.0.1", 0)
        snapshots = SnapshotWriter(store, settings.data_dir / "snapshots", min_interval_s=1.0)
        async with store, radio_server:
            await snapshots.start()
            host, port = radio_server.address
            gateway = Gateway(GatewayConfig(store=settings.store, gateway_id=config.gateway,
                                            data_dir=settings.data_dir / "gateway", prefix=settings.topic_prefix,
                                            concurrency=settings.max_in_flight),
                              LoopbackRadio(host, port), MqttSettings.from_url(server.broker_url))
            async with gateway:
                token = await create_token(server.db, "admin", "demo")
                print_line(f"eslserver demo store '{settings.store}': {config.labels} simulated labels")
                print_line(f"  http    http://{settings.http_host}:{server.http_port}/  "
                           f"(web UI /ui/, API /api/v1/, metrics /metrics)")
                print_line(f"  broker  {server.broker_url}  (POS topic {server.topic('pos', 'prices')})")
                print_line(f"  token   {token}   (admin)")
                print_line(f"  screens {(settings.data_dir / 'snapshots').resolve()}")
                feed = asyncio.create_task(_pos_feed(server, catalogue, config), name="demo-pos-feed")
                summary = asyncio.create_task(_summaries(server, print_line), name="demo-summary")
                try:
                    waiters = [asyncio.create_task(run_until_signal() if stop is None else stop.wait())]
                    if config.duration_s is not None:
                        waiters.append(asyncio.create_task(asyncio.sleep(config.duration_s)))
                    _, pending = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                    for task in pending:
                        task.cancel()
                    await asyncio.gather(*pending, return_exceptions=True)
                finally:
                    for task in (feed, summary):
                        task.cancel()
                    await asyncio.gather(feed, summary, return_exceptions=True)
            await snapshots.aclose()
        print_line(f"stopped: {await _summary_line(server)}")


async def _pos_feed(server: Server, catalogue: list[dict[str, Any]], config: DemoConfig) -> None:
    """A POS: every interval, a batch of price changes published on MQTT (QoS 1)."""
    assert server.broker_url is not None
    rng = random.Random(config.seed)
    prices = {rec["sku"]: Decimal(str(rec["price"])) for rec in catalogue}
    seq = int(utcnow().timestamp())
    async with MqttConnection(MqttSettings.from_url(server.broker_url), client_id=f"demo-pos-{server.settings.store}",
                              clean_session=True) as pos:
        while True:
            await asyncio.sleep(config.feed_interval_s)
            batch = []
            for sku in rng.sample(sorted(prices), min(config.feed_size, len(prices))):
                change = Decimal(rng.choice((-30, -20, -10, 10, 20, 50))) / 100
                prices[sku] = max(Decimal("0.49"), prices[sku] + change)
                seq += 1
                batch.append({"sku": sku, "price": str(prices[sku]), "seq": seq})
            await pos.publish(server.topic("pos", "prices"), json.dumps(batch).encode(), qos=1)


async def _summary_line(server: Server) -> str:
    rows = await server.db.read("SELECT state, COUNT(*) FROM labels GROUP BY state ORDER BY state")
    return "labels " + " ".join(f"{r[0]}={r[1]}" for r in rows)


async def _summaries(server: Server, print_line: Callable[[str], None]) -> None:
    while True:
        await asyncio.sleep(10.0)
        print_line(await _summary_line(server))
