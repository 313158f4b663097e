"""`esl demo`: a whole store in one process, built from the real parts.

The server (with the embedded broker unless a broker URL is given), a simulated store radio
with a few hundred labels (`simulator`), a gateway bridging MQTT and that radio exactly as
``esl gateway --radio sim://…`` does, a catalogue made from the sample products, every label
bound to a product, and a small POS that publishes price changes on MQTT every few seconds
(logged one line each; ``feed_interval_s=0`` turns it off, so an integrator's own prices stay).
Each label's screen is written as a PNG under ``{data}/snapshots`` when it changes. The gateway
and the POS are registered as MQTT identities of the store, like a real store's (new passwords
each run: only their hashes are kept), and the POS's credentials are printed for your own POS;
the embedded broker refuses anonymous clients.

The catalogue starts with five weeks of price history, recorded by the admin's historic
import (`eslserver.history_import`: POS-shaped updates with a past ``valid_from``, which
the POS path itself refuses), so promotions show the prior
price ("lowest in the 30 days before the reduction") from the first picture. The simulated
labels keep their keys, counters and screens in ``{data}/simulator/{store}.json`` (as real
labels keep them in flash), so a second demo on the same data continues where the first
stopped instead of finding labels that lost their keys.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from eslserver.auth import create_token
from eslserver.config import Settings
from eslserver.gateway.bridge import Gateway, GatewayConfig
from eslserver.gateway.links.loopback import LoopbackRadio
from eslserver.history_import import import_history
from eslserver.identities import Credentials
from eslserver.ingest import current_prices
from eslserver.mqtt import MqttConnection, MqttSettings
from eslserver.server import SYSTEM, Server
from eslserver.signals import run_until_signal
from eslserver.store_services import StoreServices
from eslserver.stores_admin import add_store
from eslserver.store import labels as label_rows
from eslserver.timeutil import utcnow
from eslserver.trust import register_gateway_key
from render.context import parse_when
from render.samples import sample_catalogue
from simulator.radio_server import RadioServer
from simulator.snapshots import SnapshotWriter
from simulator.store import SimStore, StoreConfig

__all__ = ["DEMO_MODELS", "DEMO_POS", "HISTORY_DAYS", "DemoConfig", "demo_catalogue", "demo_price_history", "run_demo"]

log = logging.getLogger(__name__)

DEMO_MODELS = ("2.9-bwry",) * 12 + ("4.2-bwry", "4.2-bwry", "1.54-bw", "7.5-bwry")
"""The mix of label models in the demo store (cycled): mostly 2.9" shelf labels."""
HISTORY_DAYS = 35
"""How far back the demo catalogue's price history starts (more than the 30 days of the rule)."""
DEMO_POS = "demo-pos"
"""The name of the demo's POS identity (``pos/{store}/demo-pos``): its built-in feed, and yours."""


@dataclass(frozen=True, slots=True)
class DemoConfig:
    """What `run_demo` runs; ``feed_interval_s=0`` means no POS feed at all."""

    labels: int = 300
    feed_interval_s: float = 3.0
    feed_size: int = 5
    duration_s: float | None = None
    seed: int = 0
    gateway: str = "gw1"
    wake_interval_s: float = 30.0
    stores: int = 1
    """Stores of a chain, each with its own labels, gateway and POS (one server serves them all)."""


def demo_catalogue(count: int, now: datetime | None = None) -> list[dict[str, Any]]:
    """`count` products: the sample catalogue, then variants of it with their own SKU and price.

    A promoted product keeps the sample's ``lowest_30d``: not to be sent (the server works
    it out from its price history), but to build that history (`demo_price_history`)."""
    base = sample_catalogue(now or utcnow())
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
            if rec.get("lowest_30d"):
                rec["lowest_30d"] = str(Decimal(str(rec["lowest_30d"])) + step)
        out.append(rec)
    return out


def demo_price_history(record: dict[str, Any], now: datetime) -> list[dict[str, Any]]:
    """POS updates that build `record` with `HISTORY_DAYS` of past prices, oldest first.

    Each carries a ``valid_from`` in the past, so the server records it at that time exactly
    as if the POS had sent it then. A promoted product had its regular price, then for a week
    the sample's ``lowest_30d``, then its regular price again, and the promotion from its
    start: so the prior price the server computes is that ``lowest_30d``. Other products were
    a little dearer five weeks ago. The last update is `record` itself (without ``lowest_30d``).
    """
    price = Decimal(str(record["price"]))
    final = {k: v for k, v in record.items() if k != "lowest_30d"}
    first = {k: v for k, v in final.items() if k != "promo"}
    promo = record.get("promo") or {}
    lowest = record.get("lowest_30d")
    if promo.get("from") and lowest:
        start = min(parse_when(promo["from"]), now)
        steps: list[tuple[datetime, dict[str, Any]]] = [
            (start - timedelta(days=HISTORY_DAYS), first),
            (start - timedelta(days=21), {"sku": record["sku"], "price": str(lowest)}),
            (start - timedelta(days=14), {"sku": record["sku"], "price": str(price)}),
            (start - timedelta(days=7), final),
        ]
    else:
        dearer = (price * Decimal("1.08")).quantize(Decimal("0.01"))
        steps = [(now - timedelta(days=HISTORY_DAYS), {**first, "price": str(dearer)}),
                 (now - timedelta(days=20), final)]
    return [{**update, "valid_from": when.isoformat()} for when, update in steps]


@dataclass
class _Shop:
    """One demo store running: its parts, its POS identity and catalogue."""

    services: StoreServices
    sim: SimStore
    pos: Credentials
    catalogue: list[dict[str, Any]]
    prices: dict[str, Decimal]


async def _open_shop(stack: AsyncExitStack, server: Server, store: str, index: int, config: DemoConfig,
                     broker: MqttSettings) -> _Shop:
    """Store `store` of the demo (the `index`-th): its gateway and POS identities, catalogue with
    price history, simulated labels (numbered on from the previous store's), snapshots and gateway."""
    settings = server.settings
    services = server.stores[store]
    gateway_id = await server.add_identity("gateway", config.gateway, store=store, reset=True)
    pos_id = await server.add_identity("pos", DEMO_POS, store=store, reset=True)
    now = utcnow()
    catalogue = demo_catalogue(config.labels, now)
    prices = await current_prices(server.db, store)
    history = [update for rec in catalogue if rec["sku"] not in prices for update in demo_price_history(rec, now)]
    if history:  # products a previous run on this data did not have yet
        result = await import_history(services.ingest, history, actor=SYSTEM, source="demo")
        if result.errors:
            log.warning("demo catalogue: %d updates refused: %s", len(result.errors), result.errors[:3])
        prices = await current_prices(server.db, store)
    sim = SimStore(StoreConfig(labels=config.labels, models=DEMO_MODELS, seed=config.seed,
                               wake_interval_s=config.wake_interval_s, always_listening=True, start_spread_s=1.0,
                               first_label=index * config.labels + 1,
                               state_file=settings.data_dir / "simulator" / f"{store}.json"))
    async with server.db.transaction() as conn:
        for i, (mac, label) in enumerate(sim.labels.items()):
            await services.labels.register(conn, mac, label.model.name, sku=catalogue[i]["sku"], gateway=config.gateway)
    services.pipeline.poke()
    radio_server = RadioServer(sim, "127.0.0.1", 0)
    # the first store's screens where a one-store demo always put them, the others' beside
    folder = settings.data_dir / "snapshots" if index == 0 else settings.data_dir / "snapshots" / store
    snapshots = SnapshotWriter(sim, folder, min_interval_s=1.0)
    await stack.enter_async_context(sim)
    await stack.enter_async_context(radio_server)
    await snapshots.start()
    stack.push_async_callback(snapshots.aclose)
    host, port = radio_server.address
    assert server.signing_key is not None
    gateway = Gateway(GatewayConfig(store=store, gateway_id=config.gateway,
                                    data_dir=settings.data_dir / ("gateway" if index == 0 else f"gateway-{store}"),
                                    prefix=settings.topic_prefix, concurrency=settings.max_in_flight,
                                    server_key=server.signing_key.public),
                      LoopbackRadio(host, port), gateway_id.apply(broker))
    # one process, both ends: each learns the other's public key as registration would
    await register_gateway_key(server.db, store, config.gateway, gateway.key.public, actor=SYSTEM)
    await stack.enter_async_context(gateway)
    return _Shop(services, sim, pos_id, catalogue, prices)


async def run_demo(settings: Settings, config: DemoConfig, *, print_line: Callable[[str], None] = print,
                   stop: asyncio.Event | None = None) -> None:
    """Run the demo store (or ``config.stores`` stores of a chain: the configured one, then
    ``{store}-2``…) until SIGINT/SIGTERM, `stop`, or ``duration_s``."""
    async with Server(settings) as server, AsyncExitStack() as stack:
        assert server.broker_url is not None
        stores = [settings.store]
        for n in range(2, config.stores + 1):
            stores.append(f"{settings.store}-{n}")
            await add_store(server.db, settings, stores[-1], name=f"{settings.store_name} {n}",
                            currency=settings.currency, actor=SYSTEM)
        await server.serve_new_stores()
        broker = MqttSettings.from_settings(settings, server.broker_url)
        shops = [await _open_shop(stack, server, store, n, config, broker) for n, store in enumerate(stores)]
        token = await create_token(server.db, "admin", "demo")
        what = f"store '{settings.store}'" if len(shops) == 1 else f"chain of {len(shops)} stores ({', '.join(stores)})"
        print_line(f"eslserver demo {what}: {config.labels} simulated labels" + (" each" if len(shops) > 1 else ""))
        print_line(f"  http    {server.http_scheme}://{settings.http_host}:{server.http_port}/  "
                   f"(web UI /ui/, API /api/v1/, metrics /metrics)")
        print_line(f"  broker  {server.broker_url}  (POS topic {', '.join(s.services.topics.pos_prices for s in shops)})")
        for shop in shops:
            print_line(f"  pos     user {shop.pos.username}  password {shop.pos.password}  (MQTT; anonymous clients "
                       "are refused)")
        print_line(f"  token   {token}   (admin)")
        print_line(f"  screens {(settings.data_dir / 'snapshots').resolve()}")
        tasks = [asyncio.create_task(_summaries(server, print_line), name="demo-summary")]
        if config.feed_interval_s > 0:
            print_line(f"  POS     {config.feed_size} price changes every {config.feed_interval_s:g} s "
                       f"{'per store ' if len(shops) > 1 else ''}(--no-feed turns it off)")
            tasks += [asyncio.create_task(_pos_feed(shop.services, shop.pos.apply(broker), shop.catalogue,
                                                    shop.prices, config), name=f"demo-pos-feed {shop.services.store}")
                      for shop in shops]
        else:
            print_line("  POS     off: prices change only when you send them")
        try:
            waiters = [asyncio.create_task(run_until_signal() if stop is None else stop.wait())]
            if config.duration_s is not None:
                waiters.append(asyncio.create_task(asyncio.sleep(config.duration_s)))
            _, pending = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        await stack.aclose()
        print_line(f"stopped: {await _summary_line(server)}")


async def _pos_feed(services: StoreServices, broker: MqttSettings, catalogue: list[dict[str, Any]],
                    stored: dict[str, Decimal], config: DemoConfig) -> None:
    """A POS: every interval, a batch of price changes published on MQTT (QoS 1), each
    logged once the broker has it, from the price the server had when the demo started."""
    rng = random.Random(config.seed)
    names = {rec["sku"]: rec.get("name") or "" for rec in catalogue}
    prices = {rec["sku"]: stored.get(rec["sku"], Decimal(str(rec["price"]))) for rec in catalogue}
    seq = int(utcnow().timestamp())
    async with MqttConnection(broker, client_id=f"demo-pos-{services.store}", clean_session=True) as pos:
        while True:
            await asyncio.sleep(config.feed_interval_s)
            batch = []
            changes: list[tuple[str, Decimal, Decimal]] = []
            for sku in rng.sample(sorted(prices), min(config.feed_size, len(prices))):
                change = Decimal(rng.choice((-30, -20, -10, 10, 20, 50))) / 100
                old, prices[sku] = prices[sku], max(Decimal("0.49"), prices[sku] + change)
                seq += 1
                batch.append({"sku": sku, "price": str(prices[sku]), "seq": seq})
                changes.append((sku, old, prices[sku]))
            await pos.publish(services.topics.pos_prices, json.dumps(batch).encode(), qos=1)
            for sku, old, new in changes:
                log.info("POS price %s %s: %s → %s", sku, names[sku], old, new)


async def _summary_line(server: Server) -> str:
    counts = await label_rows.count_by_state(server.db)
    return "labels " + " ".join(f"{state}={n}" for state, n in counts.items())


async def _summaries(server: Server, print_line: Callable[[str], None]) -> None:
    while True:
        await asyncio.sleep(10.0)
        print_line(await _summary_line(server))
