"""The server process: storage, POS ingest, pipeline, dispatch, MQTT and HTTP, wired once.

MQTT identities (`eslserver.identities`): the server connects as its own, its embedded broker
enforces everyone's access rules, and it acts only on gateways that are registered.

`Server` owns every resource it starts (database, render processes, the embedded broker
when no broker URL is configured, the MQTT connection, the HTTP site and its background
tasks) and releases them in reverse order on `aclose`. Parts can be left out (``mqtt=False``,
``http=False``) for tools and tests that need only some of it; nothing else changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import shutil
import time
from collections.abc import AsyncIterator, Coroutine, Iterable
from datetime import datetime, timedelta
from typing import Any

from aiohttp import web

from eslserver import pos_limits
from eslserver.auth import Actor
from eslserver.broker import EmbeddedBroker
from eslserver.config import ConfigError, Settings
from eslserver.db.database import Database, DatabaseError, open_database
from eslserver.health import Health, database_fault
from eslserver.identities import Credentials, IdentityRegistry, ensure_server_identity, server_password
from eslserver.ingest import Unavailable, ack_message, error_message
from eslserver.instance_lock import InstanceLock
from eslserver.jobs import Outbox
from eslserver.keyvault import KeyVault
from eslserver.label_templates import Templates
from eslserver.logs import FailureLog
from eslserver.metrics import Metrics
from eslserver.mqtt import Message, MqttConnection, MqttError, MqttSettings, Retry, redact_url
from eslserver.mqtt_access import AccessSnapshot, Identity, Role
from eslserver.render_worker import warm_up
from eslserver.retention import Retention
from eslserver.signing import SigningKeyError, load_signer
from eslserver.startup import StartupError, http_tls_context, is_loopback, listen_error, os_reason
from eslserver.store import gateways as gateway_rows
from eslserver.store import jobs as job_rows
from eslserver.store import labels as label_rows
from eslserver.store import stores
from eslserver.store_services import StoreServices, StoreView, settings_for
from eslserver.timeutil import iso, utcnow
from eslserver.topics import Kind, Topic, TopicError, Topics
from eslserver.uploads import Uploads
from firmware_proto.trust import SigningKey
from render.isolate import LimitedPool

__all__ = ["SYSTEM", "Server"]

log = logging.getLogger(__name__)

SYSTEM = Actor("eslserver", "admin")
"""The actor of changes the server makes by itself (scheduled prices, promotions)."""
POS_MQTT = Actor("mqtt", "pos")
_ROOM_BYTES = 1 << 20
"""Free space on the database's file system that ends a "disk full" fault."""
_FIRST_CONNECT_GRACE = timedelta(seconds=10)
_IDENTITIES_EVERY_S = 1.0
"""Seconds between reads of the MQTT identities (``esl identities`` changes them from another process)."""
_SIZES_EVERY_S = 60.0
"""Seconds between counts of every table's rows (``esl_table_rows``): never per scrape."""
"""How long a server that has never reached its broker waits before calling it a fault."""


def shared_prefix(vault: KeyVault) -> str:
    """``$share/GROUP/``: the shared-subscription group of every instance (the broker hands each
    message to one of them). GROUP is derived from the secret key the instances share, not a
    fixed name: Mosquitto checks a subscriber's right to read only as it delivers, so a client
    that joined the group under a known name would be handed its share of the POS messages
    and drop them; a client without the key cannot name the group."""
    return "$share/esl-" + vault.derive("mqtt-shared-group").hex()[:20] + "/"
_CHANGES = "esl_changes"
"""The channel instances tell each other's live event streams on (PostgreSQL NOTIFY)."""
_NOTIFY_MAX = 7000
"""NOTIFY payloads stay under PostgreSQL's 8000 bytes; a larger change reaches local watchers only."""
_STORES_EVERY_S = 2.0
"""Seconds between reads of the ``stores`` table (``esl stores add`` adds a store from another process)."""
_LEAD_EVERY_S = 5.0
"""Seconds between an instance's bids for a role another instance holds (the schedule loop)."""


def _quiet(task: asyncio.Future[None]) -> None:
    """A change not told to the other instances is a dashboard a moment behind, never an error."""
    if not task.cancelled() and task.exception() is not None:
        log.debug("telling the other instances failed: %r", task.exception())


class Server:
    """One eslserver instance. ``async with Server(settings) as server:``."""

    def __init__(self, settings: Settings, *, mqtt: bool = True, http: bool = True,
                 render_processes: bool = True) -> None:
        self.settings = settings
        self.use_mqtt = mqtt
        self.use_http = http
        self.render_processes = render_processes
        self.db: Database = open_database(settings.database)
        self._instance_lock = InstanceLock(settings.data_dir)
        self.metrics = Metrics()
        self.health = Health(self.metrics.health)
        """Ok, or degraded with the reasons (`/healthz`, ``esl_health``)."""
        self.db.on_fault = self._database_fault
        self._broker_down_since: datetime | None = None
        self._broker_ever_up = False
        self._next_db_check = 0.0
        self.executor: LimitedPool | None = None
        self.preview_pool: LimitedPool | None = None
        self.broker: EmbeddedBroker | None = None
        self.broker_url: str | None = settings.broker_url
        self.topics: Topics = settings.topics
        """This store's MQTT topics: every topic the server publishes or subscribes to."""
        self.mqtt: MqttConnection | None = None
        self.signing_key: SigningKey | None = None
        """The key every job envelope is signed with (`eslserver.signing.load_signer`: with the previous
        key's endorsement while a rotation is under way); loaded at start with MQTT."""
        self.http_port: int | None = None
        self._runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._state_queue: set[str] = set()
        self._watchers: set[asyncio.Queue[dict[str, Any]]] = set()
        self._state_wake = asyncio.Event()
        self._self_id = f"{settings.instance}-{os.getpid()}-{id(self):x}"
        self._schedule_wake = asyncio.Event()
        self.vault = KeyVault(settings)
        """Seals and opens label keys (loaded at `start`: its key must be the database's)."""
        self.uploads = Uploads(self.db, settings)
        """Images uploaded through the API (one index and PNG cache for previews and the pipeline)."""
        self._bad_stores: set[str] = set()
        self._unknown_stores: set[str] = set()
        self.stores: dict[str, StoreServices] = {}
        """What runs for each store served (`eslserver.store_services`), by store id: the
        configured store's at once, the others of the ``stores`` table from `start` on."""
        default = self._services(settings)
        self.ingest, self.pipeline, self.dispatcher, self.labels = (default.ingest, default.pipeline,
                                                                    default.dispatcher, default.labels)
        """The configured store's parts (the API's and the CLI's store, until they are scoped)."""
        self.templates = Templates(self.db, settings, on_dirty=self._dirty, on_states=self.publish_states,
                                   uploads=self.uploads)
        self.retention = Retention(self.db, settings, self.metrics)
        self.identities = IdentityRegistry(self.db, settings, self.metrics, on_change=self._identities_changed)
        """The MQTT identities: the access rules of the embedded broker, the registered gateways."""
        self.credentials: Credentials | None = None
        """The server's own MQTT identity and password (known once started)."""
        """Deletes what the ``retention_*`` settings let go (its own loop, `_retention_loop`)."""

    # -- wiring callbacks ---------------------------------------------------------------------
    def _services(self, settings: Settings) -> StoreServices:
        """The parts that serve the store of `settings`, registered in `stores`."""
        uploads = self.uploads if settings.store == self.settings.store else Uploads(self.db, settings)
        uploads.pool = self.uploads.pool
        services = StoreServices.make(self.db, settings, self.metrics, vault=self.vault, uploads=uploads,
                                      publish=self._publish, on_states=self.publish_states,
                                      on_prices=self._ingested, on_change=self._schedule_wake.set)
        services.pipeline.executor = self.executor
        services.dispatcher.signer = self.signing_key
        self.stores[settings.store] = services
        return services

    def _poke_dispatchers(self) -> None:
        for services in self.stores.values():
            services.dispatcher.poke()

    def _dirty(self) -> None:
        """Labels of any store may have been marked (a template changed): every pipeline looks."""
        for services in self.stores.values():
            services.pipeline.poke()
        self._schedule_wake.set()

    def _ingested(self, accepted: int, rejected: int) -> None:
        self.notify({"type": "prices", "accepted": accepted, "rejected": rejected})

    def publish_states(self, macs: Iterable[str]) -> None:
        """Queue the retained label-state messages of `macs` (coalesced), and tell watchers."""
        macs = list(macs)
        self.notify({"type": "labels", "macs": macs})
        if self.mqtt is None:
            return
        self._state_queue.update(macs)
        self._state_wake.set()

    def notify(self, change: dict[str, Any]) -> None:
        """Hand a change to every `watch` iterator (live dashboards), here and, through the
        database, in the other instances that share it; never blocks: a watcher that falls
        behind loses the oldest changes, not the server's time."""
        self._tell_watchers(change)
        if self.db.engine != "sqlite":  # other instances may share the database
            payload = json.dumps({"from": self._self_id, "change": change})
            if len(payload) < _NOTIFY_MAX:
                task = asyncio.ensure_future(self.db.broadcast(_CHANGES, payload))
                task.add_done_callback(_quiet)

    def _changes_elsewhere(self, payload: str) -> None:
        """A change another instance made (its `notify`), for this instance's watchers."""
        try:
            message = json.loads(payload)
        except ValueError:
            return
        if isinstance(message, dict) and message.get("from") != self._self_id and isinstance(message.get("change"), dict):
            self._tell_watchers(message["change"])

    def _tell_watchers(self, change: dict[str, Any]) -> None:
        for queue in list(self._watchers):
            if queue.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
            queue.put_nowait(change)

    async def watch(self) -> AsyncIterator[dict[str, Any]]:
        """Changes as they happen: ``{"type": "labels", "macs": [...]}``,
        ``{"type": "prices", "accepted": n, "rejected": n}``, ``{"type": "gateway", ...}``."""
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=1000)
        self._watchers.add(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            self._watchers.discard(queue)

    async def _publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        if self.mqtt is None:
            raise RuntimeError("this server runs without MQTT")
        await self.mqtt.publish(topic, payload, qos=qos, retain=retain)

    def _database_fault(self, exc: BaseException | None) -> None:
        if exc is None:
            # a small commit can go through on a full disk (SQLite reuses its journal's space):
            # a full disk is over when it has room again
            if not self.health.is_disk_full or self._disk_has_room():
                self.health.clear("database")
            return
        fault = database_fault(exc)
        if fault is not None:
            component, reason = fault
            self.health.fault(component, reason, sticky=component == "database_integrity")

    def check_broker(self) -> None:
        """Bring the broker's health up to date with the MQTT connection (housekeeping and
        `/healthz` call it, so a lost broker shows at once)."""
        if self.mqtt is None:
            return
        if self.mqtt.is_connected:
            self._broker_down_since = None
            self._broker_ever_up = True
            self.health.clear("broker")
            return
        if self._broker_down_since is None:
            self._broker_down_since = utcnow()
        if not self._broker_ever_up and utcnow() - self._broker_down_since < _FIRST_CONNECT_GRACE:
            return  # still making its first connection: not a fault (and no "recovered" warning)
        self.health.broker_down(self._broker_down_since)

    async def _check_database(self) -> None:
        """The periodic ``quick_check``, and while writes are failing a probe write (only when
        the disk has room again: a probe that fills the last bytes would prove nothing)."""
        interval = self.settings.db_check_interval_s
        if interval > 0 and time.monotonic() >= self._next_db_check:
            self._next_db_check = time.monotonic() + interval
            problem = await self.db.quick_check()
            if problem is None:
                self.health.clear("database_integrity")
            else:
                self.health.fault("database_integrity", f"database: corrupt (quick_check: {problem})")
        if self.health.reason("database") is not None and self._disk_has_room():
            with contextlib.suppress(*self.db.errors):  # the fault stays, `on_fault` was told
                await self.db.probe_write()

    def _disk_has_room(self) -> bool:
        if self.db.path is None:  # a database server watches its own disk
            return True
        return shutil.disk_usage(self.db.path.parent).free >= _ROOM_BYTES

    # -- lifecycle ------------------------------------------------------------------------------
    async def __aenter__(self) -> Server:
        try:
            await self.start()
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        s = self.settings
        if self.db.path is not None:  # SQLite: one server per data directory
            try:
                self._instance_lock.acquire()
            except OSError as exc:
                raise StartupError("data_dir", f"cannot use the data directory {s.data_dir}: {os_reason(exc)}") from exc
        try:
            await self.db.open()
        except (OSError, DatabaseError) as exc:
            reason = os_reason(exc) if isinstance(exc, OSError) else str(exc)
            if self.db.path is None:
                raise StartupError("database_url", f"cannot use the database: {reason}") from exc
            raise StartupError("data_dir", f"cannot use the data directory {s.data_dir}: {reason}") from exc
        try:
            await self.vault.load(self.db)  # the wrong secret key stops the start here, before any job
            await self._ensure_store()
            await self._load_stores()
            password = server_password(self.vault, s.instance)
            self.credentials = await ensure_server_identity(self.db, s.instance, password)
            await self.identities.refresh()
            await self._stop_unregistered_gateways()
        except self.db.errors as exc:  # locked by another process past busy_timeout, read-only, full, unreachable
            raise StartupError("data_dir" if self.db.path is not None else "database_url",
                               f"cannot write the database {self.db.location}: {exc}") from exc
        await Outbox(self.db, self.metrics).adopt_open()
        if self.render_processes:
            # the pipeline's render processes, and a small pool of its own for previews and
            # template checks, so a template bomb in the editor never delays the shelf
            self.executor = LimitedPool(s.workers, s.template_limits, initializer=warm_up, name="render")
            for services in self.stores.values():
                services.pipeline.executor = self.executor
            self.preview_pool = LimitedPool(min(2, s.workers), s.template_limits, initializer=warm_up,
                                            name="preview")
            self.templates.pool = self.uploads.pool = self.preview_pool  # uploads are decoded there too
            for services in self.stores.values():
                services.uploads.pool = self.preview_pool
        if self.use_mqtt:
            try:
                self.signing_key = load_signer(s)
                for services in self.stores.values():
                    services.dispatcher.signer = self.signing_key
            except SigningKeyError as exc:
                raise StartupError("data_dir", str(exc)) from exc
            log.info("server public key (every gateway's server_public_key): %s", self.signing_key.public.hex(),
                     extra={"store": s.store})
            if self.broker_url is None:
                self.broker = EmbeddedBroker(port=s.mqtt_port, implementation=s.embedded_broker,
                                             access=self.identities.snapshot,
                                             directory=s.data_dir / "broker")
                await self.broker.__aenter__()
                self.broker_url = self.broker.url
            self.mqtt = MqttConnection(self._mqtt_settings(),
                                       client_id=f"eslserver-{s.store}-{s.instance}", clean_session=False,
                                       on_connect=self._on_connect)
            # POS messages and gateway events go to one instance each, when several share a database
            shared = shared_prefix(self.vault) if s.mqtt_shared else ""
            # every store's (esl/+/pos/prices): a store added while the server runs is served at once
            self.mqtt.subscribe(shared + self.topics.every_store(Kind.POS_PRICES), self._on_prices, qos=1,
                                concurrency=64)
            # many handlers wait at once so that their events are applied in one batch
            self.mqtt.subscribe(shared + self.topics.every_store(Kind.GATEWAY_EVENTS), self._on_gateway_event,
                                qos=1, concurrency=256)
            self.mqtt.subscribe(self.topics.every_store(Kind.GATEWAY_STATUS), self._on_gateway_status, qos=1)
            await self.mqtt.__aenter__()
        await self.db.listen(_CHANGES, self._changes_elsewhere)
        for services in list(self.stores.values()):
            self._run_store(services)
        self._spawn(self._stores_loop(), "stores")
        self._spawn(self._schedule_loop(), "scheduler")
        self._spawn(self._housekeeping(), "housekeeping")
        self._spawn(self._retention_loop(), "retention")
        if self.mqtt is not None:
            self._spawn(self._state_loop(), "label-states")
            self._spawn(self._identities_loop(), "identities")
        if self.use_http:
            from eslserver.api.app import create_app
            self._runner = web.AppRunner(create_app(self), access_log=None)
            await self._runner.setup()
            tls = None
            if s.http_tls_cert is not None and s.http_tls_key is not None:
                tls = http_tls_context(s.http_tls_cert, s.http_tls_key)
            elif not is_loopback(s.http_host):
                log.warning("HTTP listens on %s without TLS: bearer tokens and prices cross the network in clear; "
                            "set http_tls_cert and http_tls_key, or put a TLS reverse proxy in front and listen "
                            "on 127.0.0.1", s.http_host)
            site = web.TCPSite(self._runner, s.http_host, s.http_port, ssl_context=tls)
            try:
                await site.start()
            except OSError as exc:
                raise listen_error("HTTP", s.http_host, s.http_port, exc, port_setting="http_port",
                                   host_setting="http_host") from exc
            sockets = self._runner.addresses
            self.http_port = sockets[0][1] if sockets else s.http_port
        log.info("eslserver %s/%s started (database %s, broker %s, http %s)", s.store, s.instance, self.db.location,
                 redact_url(self.broker_url or "none"), f"{self.http_scheme}://{s.http_host}:{self.http_port}"
                 if self.use_http else "off")

    @property
    def http_scheme(self) -> str:
        """``https`` when the API is served over TLS (`http_tls_cert`), else ``http``."""
        return "https" if self.settings.http_tls_cert is not None else "http"

    async def aclose(self) -> None:
        """Stop everything this server started; safe to call twice."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.mqtt is not None:
            mqtt, self.mqtt = self.mqtt, None
            await mqtt.aclose()
        if self.broker is not None:
            broker, self.broker = self.broker, None
            await broker.aclose()
        for pool in (self.executor, self.preview_pool):
            if pool is not None:
                await asyncio.to_thread(pool.close)
        self.executor = self.preview_pool = self.templates.pool = self.uploads.pool = None
        for services in self.stores.values():
            services.pipeline.executor = None
        await self.db.close()
        self._instance_lock.release()

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=f"eslserver-{name}")
        task.add_done_callback(self._task_done)
        self._tasks.append(task)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        """A background loop ends only when cancelled: anything else is a bug, said loudly."""
        if not task.cancelled() and task.exception() is not None:
            log.critical("%s stopped: %s", task.get_name(), task.exception(), exc_info=task.exception(),
                         extra={"store": self.settings.store})

    async def _ensure_store(self) -> None:
        s = self.settings
        async with self.db.transaction() as conn:
            await stores.upsert(conn, s.store, s.store_name, s.currency, json.dumps(dict(s.field_map)), iso(utcnow()),
                                language=s.language, country=s.country, timezone=s.timezone)

    async def _load_stores(self) -> list[StoreServices]:
        """Parts for every store of the ``stores`` table not served yet; the new ones. A store
        whose row does not make valid settings is logged (once per start) and left out."""
        added = []
        for row in await stores.listing(self.db):
            if row["id"] in self.stores or row["id"] in self._bad_stores:
                continue
            try:
                added.append(self._services(settings_for(self.settings, row)))
            except ConfigError as exc:
                self._bad_stores.add(row["id"])
                log.error("not serving %s", exc, extra={"store": row["id"]})
        return added

    def _run_store(self, services: StoreServices) -> None:
        """The loops of one store: drawing, and with MQTT sending jobs and applying events."""
        self._spawn(services.pipeline.run(), f"pipeline {services.store}")
        if self.mqtt is not None:
            self._spawn(services.dispatcher.run(), f"dispatcher {services.store}")
            self._spawn(services.dispatcher.run_events(), f"gateway-events {services.store}")

    async def _stores_loop(self) -> None:
        """Serve the stores ``esl stores add`` adds while the server runs (another process)."""
        failure = FailureLog(log, "reading the stores", store=self.settings.store)
        while True:
            await asyncio.sleep(_STORES_EVERY_S)
            try:
                await self.serve_new_stores()
                failure.ok()
            except Exception as exc:  # the outermost boundary of the loop: log once, try again
                failure.failed(exc, retry_s=_STORES_EVERY_S)

    def for_store(self, store: str) -> StoreView | None:
        """The server as the HTTP API sees it for `store` (`StoreView`); None if not served."""
        services = self.stores.get(store)
        return None if services is None else StoreView(self, services)

    async def store_of_label(self, mac: str) -> str | None:
        """The store label `mac` belongs to; None for a label nobody knows."""
        return (await label_rows.stores_of(self.db, [mac])).get(mac)

    async def serve_new_stores(self) -> list[str]:
        """Serve the stores added to the database since (``esl stores add``, `add_store`) at
        once, rather than within `_STORES_EVERY_S`; their ids."""
        added = await self._load_stores()
        for services in added:
            log.info("serving store %s (%s)", services.store, services.settings.store_name,
                     extra={"store": services.store})
            self._run_store(services)
            if self.mqtt is not None:
                self._state_queue.update(await label_rows.macs(self.db, services.store))
                self._state_wake.set()
        return [services.store for services in added]

    def _services_of(self, topic: str) -> tuple[StoreServices, Topic] | None:
        """The store a message on one of our topics is for, and the topic; None for a store
        this server does not serve (logged once per store)."""
        parsed = Topic.parse(topic)
        services = self.stores.get(parsed.store)
        if services is None:
            if parsed.store not in self._unknown_stores:
                self._unknown_stores.add(parsed.store)
                log.warning("messages for store %r, which this server does not serve, are ignored "
                            "(esl stores add %s)", parsed.store, parsed.store)
            return None
        return services, parsed

    # -- MQTT handlers ------------------------------------------------------------------------
    async def _on_connect(self) -> None:
        self.metrics.mqtt_connected.set(1)
        self.check_broker()
        # a broker without persistence forgets retained messages when it restarts: state them again
        for services in list(self.stores.values()):
            services.dispatcher.poke()
            self._state_queue.update(await label_rows.macs(self.db, services.store))
        self._state_wake.set()

    async def _on_prices(self, message: Message) -> None:
        """One POS message: stored, then confirmed item by item on ``pos/acks`` (after the
        commit: a broker's PUBACK only says the broker has it) and answered on ``pos/errors``
        for its rejected items. A database that cannot commit is not the message's fault:
        `Retry` leaves it unacknowledged and handles it again."""
        found = self._services_of(message.topic)
        if found is None:
            return
        services = found[0]
        try:
            result = await services.ingest.submit(message.payload, source="mqtt", actor=POS_MQTT,
                                                  max_bytes=pos_limits.MAX_MESSAGE_BYTES)
        except Unavailable as exc:
            self.metrics.pos_retries.labels("mqtt").inc()
            raise Retry(exc.reason) from exc
        if result.accepted:
            await self._publish(services.topics.pos_acks, ack_message(result), 1, False)
        if result.errors:
            await self._publish(services.topics.pos_errors, error_message(result), 1, False)

    def _gateway_of(self, topic: str) -> tuple[StoreServices, str] | None:
        """The store and gateway a message on one of our gateway topics came from (None for a
        store not served; `TopicError` for a topic that names no gateway)."""
        found = self._services_of(topic)
        if found is None:
            return None
        services, parsed = found
        if parsed.gateway is None:  # the subscriptions' filters make this impossible
            raise TopicError(f"topic {topic!r} names no gateway")
        return services, parsed.gateway

    async def _on_gateway_event(self, message: Message) -> None:
        found = self._gateway_of(message.topic)
        if found is None:
            return
        services, gateway = found
        if not self.identities.allows(gateway, store=services.store):  # not registered: nothing it says counts
            return
        await services.dispatcher.on_event(gateway, message.payload)

    async def _on_gateway_status(self, message: Message) -> None:
        found = self._gateway_of(message.topic)
        if found is None or not message.payload:
            return  # a store not served, or a retained status cleared (by us, below)
        services, gateway = found
        if not self.identities.allows(gateway, store=services.store):
            if message.retain:  # a forged "online" would otherwise greet every server start
                await self._clear_status(gateway, services.store)
            return
        status = message.payload.decode("utf-8", "replace").strip().lower()
        if status not in ("online", "offline"):
            log.warning("gateway status %r on %s is neither online nor offline", status, message.topic)
            return
        await services.dispatcher.set_gateway(gateway, status)
        self.notify({"type": "gateway", "store": services.store, "gateway": gateway, "status": status})

    async def _clear_status(self, gateway: str, store: str | None = None) -> None:
        """Clear the retained status of `gateway` (an empty retained message), so that no
        subscriber, and no later server start, reads an unregistered or revoked gateway as online."""
        if self.mqtt is None:
            return
        topics = self.stores[store].topics if store in self.stores else self.topics
        try:
            await self._publish(topics.gateway_status(gateway), b"", 1, True)
        except (MqttError, TopicError) as exc:
            log.warning("could not clear the retained status of gateway %s: %s", gateway, exc,
                        extra={"store": self.settings.store, "gateway": gateway})
            return
        log.info("cleared the retained status of gateway %s (not registered)", gateway,
                 extra={"store": self.settings.store, "gateway": gateway})

    # -- MQTT identities --------------------------------------------------------------------------
    def _mqtt_settings(self) -> MqttSettings:
        """How the server reaches its broker: the embedded one always as its own identity, an
        external one too unless ``mqtt_username`` names another."""
        settings = MqttSettings.from_settings(self.settings, self.broker_url)
        if self.credentials is not None and (self.broker is not None or settings.username is None):
            settings = dataclasses.replace(settings, username=self.credentials.username,
                                           password=self.credentials.password)
        return settings

    async def add_identity(self, role: Role | str, name: str, *, store: str | None = None,
                           reset: bool = False) -> Credentials:
        """Make an MQTT identity of this server's store (or `store`), as ``esl gateways add`` and
        ``esl identities add`` do, and let the broker know at once; with `reset`, give an
        existing one a new password. The demo makes its gateway's and POS's this way, tests theirs."""
        role = Role(role)
        identity = Identity(role, name, None if role is Role.SERVER else (store or self.settings.store))
        return await self.identities.add(identity, SYSTEM, reset=reset)

    async def _identities_changed(self, snapshot: AccessSnapshot, gone: set[str]) -> None:
        """New access rules: the embedded broker applies them (dropping who they no longer let
        in), and a gateway no longer registered loses its retained status; its jobs were handed
        back in the transaction that revoked it."""
        if self.broker is not None and self.broker.access is not None:
            await self.broker.set_access(snapshot)
        for gateway in sorted(gone):
            await self._clear_status(gateway)
        if gone:
            self._poke_dispatchers()

    async def _stop_unregistered_gateways(self) -> None:
        """Gateways recorded online that are not registered (data from before identities, or a
        revocation this server missed) get no more jobs: offline, their jobs in flight requeued."""
        for services in list(self.stores.values()):
            store = services.store
            stray = self.identities.unregistered(await gateway_rows.online_ids(self.db, store), store=store)
            if stray:
                log.warning("gateways %s are not registered: no jobs go to them and their events are ignored "
                            "until they are ('esl gateways add %s/ID')", ", ".join(stray), store,
                            extra={"store": store})
            for gateway in stray:
                await services.dispatcher.set_gateway(gateway, "offline")

    async def _identities_loop(self) -> None:
        failure = FailureLog(log, "reading MQTT identities", store=self.settings.store)
        while True:
            await asyncio.sleep(_IDENTITIES_EVERY_S)
            try:
                await self.identities.refresh()
                failure.ok()
            except Exception as exc:  # the outermost boundary of the loop: log once, try again
                failure.failed(exc, retry_s=_IDENTITIES_EVERY_S)

    # -- background loops -----------------------------------------------------------------------
    async def _state_loop(self) -> None:
        failure = FailureLog(log, "publishing label states", store=self.settings.store)
        while True:
            await self._state_wake.wait()
            self._state_wake.clear()
            while self._state_queue:
                batch = [self._state_queue.pop() for _ in range(min(100, len(self._state_queue)))]
                try:
                    states = await self.labels.states(batch)
                    where = await label_rows.stores_of(self.db, batch)
                    await asyncio.gather(*(self._publish(Topics(self.topics.prefix, where[st["mac"]]).label_state(
                        st["mac"]), json.dumps(st).encode(), 1, True) for st in states if st["mac"] in where))
                    failure.ok()
                except Exception as exc:  # the broker went away mid-batch: try these again later
                    failure.failed(exc, retry_s=1.0)
                    self._state_queue.update(batch)
                    await asyncio.sleep(1.0)

    async def _schedule_loop(self) -> None:
        failure = FailureLog(log, "scheduler", store=self.settings.store)
        while True:
            self._schedule_wake.clear()  # before looking: a change while we look is not lost
            if not await self.db.lead("scheduler"):  # another instance applies what is due
                await asyncio.sleep(_LEAD_EVERY_S)
                continue
            try:
                delay = 60.0
                for services in list(self.stores.values()):
                    due = await services.ingest.next_due()
                    now = utcnow()
                    if due is not None and due <= now:
                        await services.ingest.apply_due(now, SYSTEM)
                        delay = 0.0  # look again at once: more may be due by now
                    elif due is not None:
                        delay = min(delay, (due - now).total_seconds())
                failure.ok()
            except Exception as exc:
                failure.failed(exc, retry_s=1.0)
                delay = 1.0
            if delay <= 0:
                continue
            try:
                async with asyncio.timeout(max(0.001, delay)):
                    await self._schedule_wake.wait()
            except TimeoutError:
                pass

    async def _housekeeping(self) -> None:
        failure = FailureLog(log, "housekeeping (label and job gauges)", store=self.settings.store)
        checks = FailureLog(log, "health checks (quick_check, probe write)", store=self.settings.store)
        self._next_db_check = time.monotonic() + self.settings.db_check_interval_s  # start checked the file
        while True:
            self.check_broker()
            try:
                await self._check_database()
                checks.ok()
            except Exception as exc:
                checks.failed(exc, retry_s=2.0)
            try:
                if await self.db.lead("offline-marking"):
                    for services in list(self.stores.values()):
                        await services.dispatcher.mark_silent(utcnow())
                labels = await label_rows.count_by_state(self.db)
                jobs = await job_rows.count_by_state(self.db)
                self.metrics.set_states(labels, jobs, await gateway_rows.count_online(self.db))
                if self.mqtt is not None:
                    self.metrics.mqtt_connected.set(1 if self.mqtt.is_connected else 0)
                failure.ok()
            except Exception as exc:
                failure.failed(exc, retry_s=2.0)
            await asyncio.sleep(2.0)

    async def _retention_loop(self) -> None:
        """Housekeeping that takes longer than a gauge: table sizes every minute (at once at
        the start) and a retention round every ``retention_interval_s`` (the first one that
        long after the start, so a restart is quiet). A round deletes in small transactions
        and yields between them, so ingest and gateway events wait for one batch at most."""
        failure = FailureLog(log, "retention (pruning old rows, counting table sizes)", store=self.settings.store)
        interval = self.settings.retention_interval_s
        next_round = time.monotonic() + interval
        next_sizes = 0.0
        while True:
            try:
                if time.monotonic() >= next_round:
                    next_round = time.monotonic() + interval
                    if await self.db.lead("retention"):
                        await self.retention.run()
                    next_sizes = 0.0  # show what the round freed
                if time.monotonic() >= next_sizes:
                    next_sizes = time.monotonic() + _SIZES_EVERY_S
                    await self.retention.measure()
                failure.ok()
            except Exception as exc:  # the outermost boundary of the loop: log once, try again later
                failure.failed(exc, retry_s=min(interval, _SIZES_EVERY_S))
                next_sizes = time.monotonic() + min(interval, _SIZES_EVERY_S)
            await asyncio.sleep(max(0.01, min(next_round, next_sizes) - time.monotonic()))
