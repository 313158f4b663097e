"""The gateway process: MQTT jobs in, radio conversations out, events back.

`Gateway` joins one broker connection (`eslserver.mqtt.MqttConnection`) to one radio
(`firmware_proto.link.Radio`: the loopback simulator radio or BLE, see `open_radio`):

- **Jobs** arrive on ``{prefix}/{store}/gateway/{id}/jobs`` (QoS 1, binary envelopes). Each is
  checked first: signed by the server (``server_public_key``), addressed to this store and
  gateway, issued not long ago (its deadline plus ``envelope_skew_s``), its job key sealed to
  this gateway's own key (`eslserver.gateway.identity`). One that fails is not run: it is
  nacked with the reason (``unsigned``, ``bad_signature``, ``misaddressed``, ``expired``,
  ``wrong_key``). When the server has rotated its key, an envelope signed by the new key and
  carrying the trusted key's endorsement of it is run, and the gateway trusts the new key alone
  from then on (`eslserver.gateway.server_key`). A good one is written to the spool (`JobSpool`,
  SQLite) *before* the handler returns, and the broker gets its PUBACK only then, so a kill -9
  loses nothing: spooled jobs resume at restart, unspooled ones are redelivered by the broker
  (persistent session). A
  redelivery of a job still running is recognised by (job id, attempt) and not run twice; one
  of a job already finished is a replay, nacked ``replayed``.
- Jobs run with at most ``concurrency`` in flight and one at a time per label, in arrival
  order per label (`eslserver.gateway.conversation.run_job`). The counters a job uses are
  noted in the spool before use, so a restarted gateway continues above them.
- **Events** (`eslserver.gateway.events`) go to ``…/events`` at QoS 1: the job's ack or nack
  (then the job leaves the spool), check-ins heard on the radio (coalesced per label), and a
  status line every ``status_interval_s`` and whenever the radio is lost or back.
- **Radio**: a radio lost while the gateway runs is reconnected with backoff
  (`eslserver.gateway.radio_watch`); meanwhile the status says ``radio: down`` and the server
  shows the gateway ``degraded``.
- **Presence**: ``…/status`` is ``online`` (retained) on every connect, followed by a status
  event naming the protocol version it speaks (`PROTOCOL_VERSION`; a server refuses a gateway
  too old for it); ``offline`` (retained) on a clean exit, and the last will ``offline`` when
  the connection dies.

A job with an undecodable envelope is nacked ``bad_job`` when its header names the job, and
otherwise logged and dropped (the server's deadline retries it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Self

from eslserver.gateway.conversation import (
    CheckinTracker,
    JobSettings,
    first_reservation,
    run_job,
)
from eslserver.gateway.events import Ack, Checkin, Event, EventError, Nack, Status
from eslserver.gateway.identity import load_or_create_key
from eslserver.gateway.radio_watch import RadioWatch
from eslserver.gateway.server_key import ServerKeyFileError, load_trusted_key, save_followed_key
from eslserver.gateway.spool import JobSpool, PutResult, SpoolError
from eslserver.logs import FailureLog
from eslserver.mqtt import Message, MqttConnection, MqttSettings, MqttUnavailable, Will
from eslserver.topics import TopicError, Topics, check_level
from firmware_proto.envelope import (
    CommandJob,
    EnvelopeError,
    ImageJob,
    JobEnvelope,
    follow_envelope,
    open_job_key,
    parse_envelope,
)
from firmware_proto.link import Radio
from firmware_proto.trust import GatewayKey, VerifyKey

__all__ = ["RadioSpecError", "GatewayConfigError", "GatewayConfig", "Gateway", "open_radio"]

log = logging.getLogger(__name__)


class RadioSpecError(ValueError):
    """A ``--radio`` value that names no radio (the message shows what is accepted)."""


class GatewayConfigError(ValueError):
    """A gateway setting out of range; names the field and the value."""


def open_radio(spec: str) -> Radio:
    """The radio a ``--radio`` value names: ``sim://HOST:PORT`` (the ``esl simulate`` loopback
    radio) or ``ble`` (this machine's Bluetooth adapter, through bleak). Not started yet."""
    if spec == "ble":
        from eslserver.gateway.links.ble import BleRadio  # only BLE needs bleak

        return BleRadio()
    if spec.startswith("sim://"):
        hostport = spec[len("sim://"):]
        host, sep, port_s = hostport.rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        if sep and host and port_s.isdigit() and 0 < int(port_s) < 65536:
            from eslserver.gateway.links.loopback import LoopbackRadio

            return LoopbackRadio(host, int(port_s))
    raise RadioSpecError(f"radio: expected sim://HOST:PORT or ble, got {spec!r}")


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """One gateway's identity and limits, validated once."""

    store: str
    gateway_id: str
    data_dir: Path
    prefix: str = "esl"
    concurrency: int = 8
    status_interval_s: float = 30.0
    radio_retry_min_s: float = 0.5
    radio_retry_max_s: float = 30.0
    checkin_coalesce_s: float = 1.0
    max_checkin_backlog: int = 10_000
    job: JobSettings = field(default_factory=JobSettings)
    server_key: VerifyKey | None = None
    """The server's Ed25519 public key (``server_public_key``); None refuses every job."""
    envelope_skew_s: float = 60.0
    """How far the server's and the gateway's clocks may disagree when judging an envelope's age."""

    def __post_init__(self) -> None:
        for name in ("store", "gateway_id", "prefix"):
            try:
                check_level(name, getattr(self, name))
            except TopicError as exc:
                raise GatewayConfigError(str(exc)) from None
        if not isinstance(self.concurrency, int) or not 1 <= self.concurrency <= 10_000:
            raise GatewayConfigError(f"concurrency must be an int in 1..10000, got {self.concurrency!r}")
        for name in ("status_interval_s", "checkin_coalesce_s", "radio_retry_min_s", "radio_retry_max_s"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0 <= value < 86_400:
                raise GatewayConfigError(f"{name} must be a number of seconds in 0..86400, got {value!r}")
        if self.status_interval_s == 0:
            raise GatewayConfigError("status_interval_s must be > 0, got 0")
        if not isinstance(self.envelope_skew_s, (int, float)) or not 0 <= self.envelope_skew_s <= 86_400:
            raise GatewayConfigError(f"envelope_skew_s must be a number of seconds in 0..86400, "
                                     f"got {self.envelope_skew_s!r}")
        if self.server_key is not None and not isinstance(self.server_key, VerifyKey):
            raise GatewayConfigError(f"server_key must be a VerifyKey, got {type(self.server_key).__name__}")
        if not 0 < self.radio_retry_min_s <= self.radio_retry_max_s:
            raise GatewayConfigError(f"radio_retry_min_s must be > 0 and <= radio_retry_max_s "
                                     f"({self.radio_retry_max_s!r}), got {self.radio_retry_min_s!r}")

    @property
    def topics(self) -> Topics:
        """The store's topics; this gateway's are ``topics.gateway_jobs(gateway_id)`` and so on."""
        return Topics(self.prefix, self.store)

    @property
    def client_id(self) -> str:
        return f"esl-gateway-{self.store}-{self.gateway_id}"

    @property
    def spool_path(self) -> Path:
        return Path(self.data_dir) / f"gateway-{self.store}-{self.gateway_id}.spool.sqlite3"

    @property
    def key_path(self) -> Path:
        """The gateway's own X25519 key (`eslserver.gateway.identity`)."""
        return Path(self.data_dir) / f"gateway-{self.store}-{self.gateway_id}.key"

    @property
    def server_key_path(self) -> Path:
        """The server key this gateway followed to after a rotation (`eslserver.gateway.server_key`)."""
        return Path(self.data_dir) / f"gateway-{self.store}-{self.gateway_id}.server.key.pub"


@dataclass(slots=True)
class _Job:
    envelope: JobEnvelope
    received_at: datetime
    used_through: int  # a previous run may have used counters up to this (0: never ran)
    reserved: int  # counters noted in the spool so far
    job_key: bytes | None = field(default=None, repr=False)  # opened with the gateway's key

    @property
    def key(self) -> tuple[int, int]:
        return self.envelope.job_id, self.envelope.attempt


class Gateway:
    """``async with Gateway(config, radio, mqtt_settings):`` runs the gateway until the block ends.

    Entering opens the spool, starts the radio, schedules the spooled jobs and starts the MQTT
    connection (it does not wait for the broker: jobs already spooled run meanwhile, and their
    results are published once it is reachable). Leaving stops the jobs (they stay spooled),
    publishes ``offline``, and closes everything.
    """

    def __init__(self, config: GatewayConfig, radio: Radio, mqtt: MqttSettings, *,
                 reconnect_min_s: float = 0.2, reconnect_max_s: float = 10.0) -> None:
        self.config = config
        self.radio = radio
        self.key: GatewayKey = load_or_create_key(config.key_path)[0]
        self.server_key: VerifyKey | None = load_trusted_key(config.server_key_path, config.server_key)
        """The server key envelopes must be signed by: ``server_public_key``, or the key the
        gateway followed to when the server rotated its key."""
        self.refused: dict[str, int] = {}
        """Envelopes refused, by nack code (unsigned, bad_signature, replayed, ...)."""
        self.checkins = CheckinTracker(coalesce_s=config.checkin_coalesce_s)
        self.radio_watch = RadioWatch(radio, min_s=config.radio_retry_min_s, max_s=config.radio_retry_max_s,
                                      check_s=min(1.0, config.radio_retry_min_s), on_change=self._radio_changed,
                                      store=config.store, gateway=config.gateway_id)
        self._status_now = asyncio.Event()
        self.spool = JobSpool(config.spool_path)
        topics = config.topics
        self.jobs_topic = topics.gateway_jobs(config.gateway_id)
        self.events_topic = topics.gateway_events(config.gateway_id)
        self.status_topic = topics.gateway_status(config.gateway_id)
        self.mqtt = MqttConnection(
            mqtt, client_id=config.client_id, clean_session=False,
            will=Will(self.status_topic, b"offline", qos=1, retain=True),
            on_connect=self._on_connect, reconnect_min_s=reconnect_min_s,
            reconnect_max_s=reconnect_max_s)
        self.mqtt.subscribe(self.jobs_topic, self._on_job, qos=1, concurrency=config.concurrency)
        self._slots = asyncio.Semaphore(config.concurrency)
        self._queues: dict[str, deque[_Job]] = {}
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._deliveries: dict[str, asyncio.Task[None]] = {}
        self._known: set[tuple[int, int]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._backlog: deque[Checkin] = deque()
        self._backlog_ready = asyncio.Event()
        self._dropped_checkins = 0
        self._bad_envelopes = 0
        self.in_flight = 0
        self._stopping = False
        self.results: dict[str, int] = {"ack": 0, "nack": 0}
        ids = {"store": config.store, "gateway": config.gateway_id}
        self._spool_failure = FailureLog(log, "job spool (jobs are held until it works)", **ids)
        self._job_failure = FailureLog(log, "running jobs inside the gateway", **ids)
        self._follow_failure = FailureLog(log, "keeping the server's new key (it is trusted once kept)", **ids)

    # -- lifecycle ----------------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        await self.spool.open()
        try:
            self.radio.set_checkin_callback(self._on_checkin)
            await self.radio.start()
            for spooled in await self.spool.pending():
                try:
                    envelope = parse_envelope(spooled.envelope)
                    job_key = self._job_key(envelope)
                except EnvelopeError as exc:  # cannot happen for what we spooled; never loop on it
                    log.error("spooled job %d is unreadable, dropped: %s", spooled.job_id, exc,
                              extra={"gateway": self.config.gateway_id, "job": spooled.job_id})
                    await self.spool.finish(spooled.job_id, spooled.attempt)
                    continue
                self._schedule(_Job(envelope, spooled.received_at, spooled.used_through, spooled.used_through,
                                    job_key))
            if self._known:
                log.info("resuming %d spooled jobs", len(self._known))
            await self.mqtt.__aenter__()
        except BaseException:
            await self._stop_tasks()
            await self.radio.close()
            await self.spool.close()
            raise
        self._spawn(self._publish_checkins(), "gateway-checkins")
        self._spawn(self._publish_status(), "gateway-status")
        self._spawn(self.radio_watch.run(), "gateway-radio-watch")
        log.info("gateway %s for store %s: jobs on %s, public key %s", self.config.gateway_id,
                 self.config.store, self.jobs_topic, self.key.public.hex())
        if self.server_key is not None:
            configured = self.config.server_key
            followed = "" if configured in (None, self.server_key) else (
                f", followed from the configured {configured.fingerprint}")  # type: ignore[union-attr]
            log.info("trusting server key %s%s", self.server_key.fingerprint, followed)
        else:
            log.warning("server_public_key is not set: every job will be refused (the server's signature "
                        "cannot be checked); set it to the key `esl trust server-key` prints")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stop_tasks()
        try:
            await self.mqtt.publish(self.status_topic, b"offline", qos=1, retain=True, timeout=2.0)
        except MqttUnavailable:
            log.warning("could not publish 'offline' (broker unreachable); the last will covers it")
        await self.mqtt.__aexit__(None, None, None)
        await self._stop_tasks()  # whatever a message handled during the close started
        self.radio.set_checkin_callback(None)
        await self.radio.close()
        await self.spool.close()

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set."""
        async with self:
            await stop.wait()

    def _spawn(self, coro: Coroutine[object, object, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("gateway task %s failed", task.get_name(), exc_info=task.exception())

    async def _stop_tasks(self) -> None:
        """Cancel every task until none is left: a label worker finishing its job while being
        stopped may hand a result over (`_deliver` then keeps the job spooled instead), and
        nothing may outlive the MQTT connection and the spool closed right after."""
        self._stopping = True
        while self._tasks:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        self._workers.clear()
        self._deliveries.clear()
        self._queues.clear()

    # -- MQTT side ----------------------------------------------------------------------------
    async def _on_connect(self) -> None:
        await self.mqtt.publish(self.status_topic, b"online", qos=1, retain=True)
        # at once, not at the next interval: the status names our protocol version (the server
        # routes no job to a gateway before it knows it), and "online" alone would hide a radio
        # that is down
        self._status_now.set()

    async def _publish(self, event: Event) -> None:
        await self.mqtt.publish(self.events_topic, event.to_json(), qos=1)

    async def _on_job(self, message: Message) -> None:
        """A job from the broker: check it, spool it (durably) and schedule it; the PUBACK follows."""
        received = datetime.now(UTC)
        try:
            envelope = self._check_envelope(message.payload, received)
            job_key = self._job_key(envelope)
        except EnvelopeError as exc:
            await self._bad_job(exc)
            return
        reserved = first_reservation(envelope, self.config.job)
        put = await self._spool_put(envelope, message.payload, received, reserved)
        job = _Job(envelope, received, 0, reserved, job_key)
        if put is PutResult.NEW:
            self._schedule(job)
        elif put is PutResult.DUPLICATE and job.key not in self._known:
            self._schedule(await self._respooled(job))
        elif put is PutResult.DONE:
            await self._bad_job(EnvelopeError(
                f"job {envelope.job_id} attempt {envelope.attempt} already ran here: a replay, not run again",
                job_id=envelope.job_id, mac=envelope.mac, attempt=envelope.attempt, code="replayed"))
        else:
            log.debug("job %d attempt %d delivered again while it runs; ignored", envelope.job_id,
                      envelope.attempt)

    def _check_envelope(self, payload: bytes, received: datetime) -> JobEnvelope:
        """The envelope if this gateway should run it: signed by the server, addressed here,
        not stale; `EnvelopeError` with the nack code otherwise."""
        server_key = self.server_key
        if server_key is None:
            job = parse_envelope(payload)
            raise EnvelopeError("no server_public_key is configured: the server's signature cannot be checked",
                                job_id=job.job_id, mac=job.mac, attempt=job.attempt, code="bad_signature")
        job, signer = follow_envelope(payload, server_key)
        ids = {"job_id": job.job_id, "mac": job.mac, "attempt": job.attempt}
        if (job.store, job.gateway) != (self.config.store, self.config.gateway_id):
            raise EnvelopeError(f"envelope is for gateway {job.store}/{job.gateway}, this is "
                                f"{self.config.store}/{self.config.gateway_id}", code="misaddressed", **ids)  # type: ignore[arg-type]
        now_ms = int(received.timestamp() * 1000)
        skew_ms = int(self.config.envelope_skew_s * 1000)
        if now_ms > job.expires_ms + skew_ms:
            raise EnvelopeError(f"envelope issued {(now_ms - job.issued_ms) / 1000:.0f} s ago, past its "
                                f"{job.deadline_s} s deadline", code="expired", **ids)  # type: ignore[arg-type]
        if job.issued_ms > now_ms + skew_ms:
            raise EnvelopeError(f"envelope issued {(job.issued_ms - now_ms) / 1000:.0f} s in the future "
                                f"(clocks apart by more than {self.config.envelope_skew_s:g} s?)",
                                code="expired", **ids)  # type: ignore[arg-type]
        if signer != server_key:
            self._follow(server_key, signer)
        return job

    def _follow(self, trusted: VerifyKey, new: VerifyKey) -> None:
        """Trust `new` instead of `trusted` (which endorsed it) from now on, once it is kept on
        disk: until then the next endorsed envelope tries again (and this one runs anyway)."""
        configured = self.config.server_key
        assert configured is not None  # a gateway with no key trusts nothing, so follows nothing
        try:
            save_followed_key(self.config.server_key_path, configured, new)
        except ServerKeyFileError as exc:
            self._follow_failure.failed(exc)
            return
        self._follow_failure.ok()
        if self.server_key == trusted:
            self.server_key = new
            log.info("the server rotated its key: now trusting server key %s, endorsed by %s (no longer trusted)",
                     new.fingerprint, trusted.fingerprint,
                     extra={"store": self.config.store, "gateway": self.config.gateway_id})
            self._status_now.set()  # tell the server at once which key this gateway trusts

    def _job_key(self, envelope: JobEnvelope) -> bytes | None:
        """The job key sealed to this gateway (None for a pairing, which needs none)."""
        if isinstance(envelope, (ImageJob, CommandJob)):
            return open_job_key(envelope, self.key)
        return None

    async def _spool_put(self, envelope: JobEnvelope, raw: bytes, received: datetime,
                         reserved: int) -> PutResult:
        """Spool the job, retrying while the disk refuses: returning without it spooled would
        let the broker forget a job nobody holds."""
        failures = 0
        while True:
            try:
                put = await self.spool.put(envelope.job_id, envelope.attempt, raw, received,
                                           used_through=reserved)
            except SpoolError as exc:
                failures += 1
                self._spool_failure.failed(exc, job=envelope.job_id, mac=envelope.mac)
                await asyncio.sleep(min(10.0, 0.5 * failures))
                continue
            self._spool_failure.ok()
            return put

    async def _respooled(self, job: _Job) -> _Job:
        for spooled in await self.spool.pending():
            if (spooled.job_id, spooled.attempt) == job.key:
                return _Job(job.envelope, spooled.received_at, spooled.used_through, spooled.used_through,
                            job.job_key)
        return job

    async def _bad_job(self, exc: EnvelopeError) -> None:
        """Refuse an envelope: logged (the first of each kind as a warning: anybody who can
        publish on the job topic can send many) and nacked when it names its job."""
        self._bad_envelopes += 1
        self.refused[exc.code] = seen = self.refused.get(exc.code, 0) + 1
        level = logging.WARNING if seen == 1 or exc.code == "bad_job" else logging.DEBUG
        if exc.job_id is None or exc.mac is None:
            log.log(level, "dropped an undecodable job envelope: %s", exc)
            return
        log.log(level, "refused job %d for %s (%s): %s", exc.job_id, exc.mac, exc.code, exc,
                extra={"gateway": self.config.gateway_id, "job": exc.job_id, "mac": exc.mac})
        try:
            nack = Nack(job=exc.job_id, mac=exc.mac, code=exc.code, reason=str(exc)[:1000],  # type: ignore[arg-type]
                        retry=False, attempt=exc.attempt)
        except EventError as err:
            log.warning("cannot nack job %d: %s", exc.job_id, err)
            return
        await self._publish(nack)

    # -- jobs ---------------------------------------------------------------------------------
    def _schedule(self, job: _Job) -> None:
        if self._stopping:  # a job that arrives while we stop stays spooled: resumed at restart
            return
        self._known.add(job.key)
        mac = job.envelope.mac
        self._queues.setdefault(mac, deque()).append(job)
        if mac not in self._workers:
            self._workers[mac] = self._spawn(self._label_worker(mac), f"gateway-label-{mac}")

    async def _label_worker(self, mac: str) -> None:
        """Runs `mac`'s jobs one after another, each in one of the ``concurrency`` slots.

        A result is handed to `_deliver` and the next job starts at once: jobs go on while the
        broker is unreachable, and their results follow, in order, when it is back.
        """
        queue = self._queues[mac]
        try:
            while queue:
                job = queue[0]
                async with self._slots:
                    self.in_flight += 1
                    try:
                        result = await self._run(job)
                    finally:
                        self.in_flight -= 1
                queue.popleft()
                if result is None:
                    self._known.discard(job.key)  # stays spooled: resumed at restart
                else:
                    self._deliver(job, result)
        finally:
            if self._workers.get(mac) is asyncio.current_task():
                del self._workers[mac]
                if not queue:
                    self._queues.pop(mac, None)

    def _deliver(self, job: _Job, result: Ack | Nack) -> None:
        """Publish `result`, then drop the job from the spool; a label's results go out in the
        order its jobs ran (the server must see a pairing's ack before the next job's)."""
        if self._stopping:  # not published: the job stays spooled and runs again at restart
            self._known.discard(job.key)
            return
        mac = job.envelope.mac
        previous = self._deliveries.get(mac)
        task = self._spawn(self._publish_result(job, result, previous),
                           f"gateway-result-{job.envelope.job_id}")
        self._deliveries[mac] = task

    async def _publish_result(self, job: _Job, result: Ack | Nack,
                              previous: asyncio.Task[None] | None) -> None:
        if previous is not None and not previous.done():
            await asyncio.wait([previous])  # its outcome is its own (logged if it failed)
        try:
            await self._publish(result)
            self.results[result.type] += 1
            await self.spool.finish(*job.key)
            self._known.discard(job.key)
        finally:
            mac = job.envelope.mac
            if self._deliveries.get(mac) is asyncio.current_task():
                del self._deliveries[mac]

    async def _run(self, job: _Job) -> Ack | Nack | None:
        env = job.envelope
        loop = asyncio.get_running_loop()
        left = env.deadline_s - (datetime.now(UTC) - job.received_at).total_seconds()
        reserve = partial(self.spool.note_used, env.job_id, env.attempt)
        try:
            result = await run_job(self.radio, env, job_key=job.job_key, checkins=self.checkins,
                                   settings=self.config.job, deadline=loop.time() + left,
                                   used_through=job.used_through, reserved=job.reserved, reserve=reserve)
        except SpoolError as exc:  # cannot note counters: must not go on; stays spooled
            self._spool_failure.failed(exc, job=env.job_id, mac=env.mac)
            return None
        except Exception as exc:  # a bug: report it (once while it lasts) rather than leave the server waiting
            self._job_failure.failed(exc, job=env.job_id, mac=env.mac)
            return Nack(job=env.job_id, mac=env.mac, code="refused", retry=True, attempt=env.attempt,
                        reason=f"gateway error: {type(exc).__name__}: {exc}"[:1000])
        self._job_failure.ok()
        return result

    # -- radio side ---------------------------------------------------------------------------
    def _on_checkin(self, mac: str, frame: bytes, rssi: int) -> None:
        if not self.checkins.record(mac, frame, rssi):
            return
        heard = self.checkins.latest(mac)
        if heard is None:
            return
        try:
            event = Checkin(mac=heard.mac, rssi=rssi, frame=heard.frame, at=heard.at)
        except EventError as exc:
            log.debug("check-in from %s not forwarded: %s", mac, exc)
            return
        if len(self._backlog) >= self.config.max_checkin_backlog:
            self._backlog.popleft()
            self._dropped_checkins += 1
            if self._dropped_checkins == 1:
                log.warning("check-ins pile up (broker unreachable?): dropping the oldest")
        self._backlog.append(event)
        self._backlog_ready.set()

    async def _publish_checkins(self) -> None:
        while True:
            await self._backlog_ready.wait()
            self._backlog_ready.clear()
            while self._backlog:
                batch = [self._backlog.popleft() for _ in range(min(64, len(self._backlog)))]
                await asyncio.gather(*(self._publish(ev) for ev in batch))

    def _radio_changed(self, up: bool) -> None:
        self._status_now.set()  # the server hears of it now, not at the next interval

    async def _publish_status(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.status_interval_s):
                    await self._status_now.wait()
            self._status_now.clear()
            if not self.mqtt.is_connected:
                continue  # a status is about now: do not queue stale ones
            try:
                await self.mqtt.publish(self.events_topic, self.status().to_json(), qos=1,
                                        timeout=self.config.status_interval_s)
            except MqttUnavailable:
                continue

    def status(self) -> Status:
        """The gateway's status now."""
        watch = self.radio_watch
        return Status(gateway=self.config.gateway_id, in_flight=self.in_flight,
                      spooled=len(self._known), labels_heard=self.checkins.labels_heard,
                      radio="up" if watch.up else "down", radio_since=watch.since,
                      server_key=None if self.server_key is None else self.server_key.fingerprint)
