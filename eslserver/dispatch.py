"""Outbox → gateways, and what gateways report back: acks, nacks, check-ins, status.

Claiming a job is one transaction: the job becomes ``sent`` (with its gateway and attempt)
and the label's transmit counter moves past the job's counter budget, so the counters a job
may use are never handed out twice, whatever dies afterwards. Publishing happens after the
commit; a job whose publish or gateway was lost comes back by its deadline (``sent`` too
long → retried). Per gateway at most ``max_in_flight`` jobs are out; per label one, oldest
first (a pairing before the image it enables).

Trust (docs/protocol.md, "Jobs and trust"): envelopes are signed with the server's key and
go only to gateways whose public key is registered and that speak `PROTOCOL_VERSION`; they
carry no label or factory key, only the job's ticket and its job key sealed to the gateway.
The server's counter reservation is the only truth about transmit counters: counters a
gateway reports are not read.

Acks close jobs only with the label's own final word: the ack must carry the label's status
frame, authenticated with the label key (for a pairing: its check-in under the new key), with
a counter above the last one seen, from the gateway the job was sent to. Only that frame sets
``displayed_hash``, ``state ok``, counters or the label's gateway; an ack without it confirms
nothing (counted, and retried like an unreachable label). Nacks retry with exponential
backoff and jitter, until ``max_attempts`` when an unreachable label is marked ``offline``;
nacks of envelopes a gateway refused to run (unsigned, replayed, …) change nothing.
An offline (or failed) label that checks in again is caught up at once: its labels are
marked dirty, the pipeline finds the image it should show differs from the one it reports,
and a fresh job goes out. Check-ins are verified here with the label key (gateways forward
them raw), so a forged or replayed check-in cannot claim a label shows the right price; a
key-less check-in from a label that has a key changes nothing but raises a ``key_lost``
event: only a technician re-pairs it (`eslserver.labels.Labels.reset`). New labels a gateway
reports (discoveries) are limited per gateway (``discovery_burst``, then
``discovery_rate_per_min``): more are dropped and counted, so made-up labels cannot pile up.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime, timedelta
from typing import Any, Final

from eslserver.config import Settings
from eslserver.db.database import Connection, Database, is_conflict
from eslserver.gateway.events import (
    PROTOCOL_VERSION,
    REFUSAL_CODES,
    Ack,
    Checkin,
    EventError,
    Nack,
    NackCode,
    Status,
    parse_event,
)
from eslserver.jobs import JobKind, Outbox
from eslserver.keyvault import KeyVault, SealError
from eslserver.logs import FailureLog
from eslserver.metrics import Metrics
from eslserver.ratelimit import Buckets
from eslserver.store import events as event_rows
from eslserver.store import gateways as gateway_rows
from eslserver.store import images as image_rows
from eslserver.store import jobs as job_rows
from eslserver.store import labels as label_rows
from eslserver.timeutil import iso, parse_iso, utcnow
from firmware_proto.auth import (
    REPLAY_WINDOW,
    Direction,
    FrameKey,
    ReplayWindow,
    derive_factory_key,
    seal,
    verify,
    wrap_key,
)
from firmware_proto.commands import EslError
from firmware_proto.envelope import (
    CommandJob,
    EnvelopeError,
    ImageJob,
    JobEnvelope,
    PairJob,
    credentials,
)
from firmware_proto.errors import ProtocolError
from firmware_proto.frames import Checkin as CheckinFrame
from firmware_proto.frames import CheckinFlag, JobStatus, PairRequest, address_bytes, address_str, parse_frame
from firmware_proto.gateway import GatewaySession
from firmware_proto.image import ImageFormat, Region
from firmware_proto.models import MODELS_BY_ID
from firmware_proto.transfer import TransferResult, part_size_for
from firmware_proto.trust import SigningKey

__all__ = ["Dispatcher", "Publish", "backoff_s", "counter_budget"]

log = logging.getLogger(__name__)

Publish = Callable[[str, bytes, int, bool], Awaitable[None]]
"""(topic, payload, qos, retain) → published."""

_SENT_GRACE_S = 10.0
_CLAIM_LIMIT = 128  # also bounds publishes in flight: aiomqtt scans its pending calls per publish
_EVENT_BATCH = 500
_CONFLICT_RETRIES = 3  # a batch aborted for another instance's transaction is applied again


def counter_budget(payload_len: int, max_frame: int = 244) -> int:
    """Counters one job may use: every part a few times over plus status traffic."""
    parts = max(1, math.ceil(payload_len / part_size_for(max_frame)))
    return 256 + 8 * parts


def backoff_s(attempts: int, settings: Settings, rng: random.Random) -> float:
    """Delay before attempt ``attempts + 1``: exponential, capped, with ±50 % jitter."""
    base = min(settings.retry_max_s, settings.retry_base_s * 2.0 ** max(0, attempts - 1))
    return float(base * (0.5 + rng.random()))


class Dispatcher:
    """Sends jobs, reads gateway events. `poke` when jobs were queued; `run` is the task body."""

    def __init__(self, db: Database, settings: Settings, metrics: Metrics, publish: Publish, *, vault: KeyVault,
                 on_states: Callable[[Iterable[str]], None] = lambda macs: None,
                 on_dirty: Callable[[], None] = lambda: None) -> None:
        self.db = db
        self.settings = settings
        self.topics = settings.topics
        self.metrics = metrics
        self.publish = publish
        self.on_states = on_states
        self.on_dirty = on_dirty
        self.outbox = Outbox(db, metrics)
        self._wake = asyncio.Event()
        self._rng = random.Random()
        self._warned: set[tuple[str, str]] = set()
        self._inbox: list[tuple[str, Ack | Nack | Checkin | Status, asyncio.Future[None]]] = []
        self._inbox_wake = asyncio.Event()
        self._dirtied = False
        self.vault = vault
        self.factory_secret = settings.label_factory_secret
        self._discoveries = Buckets(settings.discovery_rate_per_min / 60.0, settings.discovery_burst)
        """New labels per gateway (`Settings.discovery_rate_per_min`, ``discovery_burst``)."""
        self.signer: SigningKey | None = None
        """The server's signing key (`eslserver.signing`); set before `run` sends anything."""

    def poke(self) -> None:
        self._wake.set()

    # -- sending ------------------------------------------------------------------------------
    async def run(self) -> None:
        failure = FailureLog(log, "dispatcher", store=self.settings.store)
        while True:
            self._wake.clear()  # before looking: a poke while we look is not lost
            try:
                await self.requeue_overdue()
                sent = await self.dispatch_once()
                delay = 0.0 if sent else await self._next_timer()
                failure.ok()
            except Exception as exc:  # outermost boundary of the loop
                failure.failed(exc, retry_s=1.0)
                delay = 1.0
            if delay <= 0:
                continue  # more may go at once
            try:
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def _next_timer(self) -> float:
        due = await job_rows.next_attempt_at(self.db)
        delay = 5.0
        if due:
            delay = min(delay, max(0.01, (parse_iso(due) - utcnow()).total_seconds()))
        return delay

    async def dispatch_once(self) -> int:
        """Claim what may go now and publish it; returns how many jobs went out."""
        now = utcnow()
        store = self.settings.store
        if self.signer is None:
            return 0
        gateways = await gateway_rows.online(self.db, store, min_protocol=PROTOCOL_VERSION)
        if not gateways:
            return 0
        busy = await job_rows.sent_per_gateway(self.db, store)
        room = {gw: self.settings.max_in_flight - busy.get(gw, 0) for gw in gateways}
        if sum(max(0, r) for r in room.values()) <= 0:
            return 0
        first_choice = next(iter(gateways))
        out: list[tuple[str, bytes]] = []
        async with self.db.transaction() as conn:
            rows = await job_rows.claimable(conn, store, iso(now), _CLAIM_LIMIT)
            for row in rows:
                gw = row["gateway"] if row["gateway"] in room else first_choice
                if room.get(gw, 0) <= 0:
                    continue
                try:
                    built = await self._envelope(conn, row, now, gw, gateways[gw])
                except (EnvelopeError, ValueError, KeyError) as exc:
                    await self._fail(conn, row["id"], row["mac"], f"cannot build the job: {exc}", now)
                    continue
                if built is None:
                    continue
                envelope, budget = built
                await job_rows.mark_sent(conn, row["id"], gw, iso(now))
                if budget:
                    await label_rows.reserve_counters(conn, row["mac"], budget)
                room[gw] -= 1
                out.append((gw, envelope.to_bytes(self.signer)))
        if out:
            await asyncio.gather(*(self.publish(self.topics.gateway_jobs(gw), data, 1, False) for gw, data in out))
        return len(out)

    async def _envelope(self, conn: Connection, row: Any, now: datetime, gateway: str,
                        gateway_key: bytes) -> tuple[JobEnvelope, int] | None:
        """The envelope of a claimed job for `gateway` and the counters it reserves. The
        server builds every frame that needs the label's or the factory's key itself: the
        pair request, or the job ticket with the job key sealed to `gateway_key`."""
        mac, kind, job_id = row["mac"], row["kind"], row["id"]
        attempt = min(255, row["attempts"] + 1)
        common: dict[str, Any] = {"job_id": job_id, "mac": mac, "deadline_s": self.settings.job_deadline_s,
                                  "attempt": attempt, "store": self.settings.store, "gateway": gateway,
                                  "issued_ms": int(now.timestamp() * 1000)}
        if kind == JobKind.PAIR:
            new_key = self._clear_key(mac, row["command"])
            await label_rows.use_factory_counter(conn, mac)
            return PairJob(pair_request=self._pair_request(mac, new_key, row["factory_counter"] + 1),
                           **common), 0
        if row["label_key"] is None:  # the pairing failed for good: start it again, the image waits behind it
            await self.outbox.ensure_pair(conn, store=self.settings.store, mac=mac, now=now,
                                          sealed_key=self.vault.new_label_key(self.settings.store, mac))
            return None
        key = self._clear_key(mac, row["label_key"])

        def keys(budget: int) -> dict[str, Any]:
            first = row["tx_counter"] + 1
            return {"rx_highest": row["rx_highest"],
                    **credentials(label_key=key, gateway_key=gateway_key, job_id=job_id, attempt=attempt, mac=mac,
                                  store=self.settings.store, gateway=gateway, first=first, last=first + budget - 1)}

        if kind == JobKind.COMMAND:
            spec = json.loads(row["command"])
            budget = 64
            return CommandJob.make(spec["name"], **keys(budget), **common, **spec["params"]), budget
        payload, fmt = row["payload"], row["format"]
        region = base = None
        delta = bool(row["delta"])
        if row["base_hash"] is not None and row["base_hash"] == row["displayed_hash"]:
            base = bytes.fromhex(row["base_hash"])
            if row["region"]:
                x, y, w, h = (int(v) for v in row["region"].split(","))
                region = Region(x, y, w, h)
        elif row["base_hash"] is not None:  # the label moved on since this was planned: whole image
            full = await image_rows.get(conn, row["image_hash"])
            if full is None:
                raise KeyError(f"image {row['image_hash']} is not stored")
            payload, fmt, delta = full["payload"], full["format"], False
        budget = counter_budget(len(payload))
        return ImageJob(image_format=ImageFormat(fmt), image_hash=bytes.fromhex(row["image_hash"]), payload=payload,
                        region=region, base_hash=base, delta=delta, **keys(budget), **common), budget

    def _pair_request(self, mac: str, new_key: bytes, counter: int) -> bytes:
        """The sealed pair request: `new_key` wrapped under the label's factory key, at the
        factory-key `counter`. Built here, so the factory key never leaves the server."""
        factory_key = derive_factory_key(self.factory_secret, mac)
        address = address_bytes(mac)
        frame = PairRequest(wrapped_key=wrap_key(factory_key, address, counter, new_key))
        return seal(frame, FrameKey(factory_key), address, Direction.TO_LABEL, counter)

    def _clear_key(self, mac: str, sealed: bytes) -> bytes:
        """The clear key of label `mac` from its sealed form (`eslserver.keyvault`): the one
        place the server opens a label key, to build an envelope or verify a frame. A key
        sealed for another label or under another secret key raises `SealError`."""
        return self.vault.open_label_key(self.settings.store, mac, sealed)

    async def _fail(self, conn: Connection, job_id: int, mac: str, reason: str, now: datetime) -> None:
        log.error("job %d for %s failed: %s", job_id, mac, reason,
                  extra={"store": self.settings.store, "job": job_id, "mac": mac})
        await self.outbox.finish(conn, job_id, "failed", now, error=reason)
        await label_rows.mark_failed(conn, mac, now=iso(now))

    async def requeue_overdue(self) -> None:
        """Jobs sent longer ago than their deadline allows: the gateway (or the publish) was
        lost; treat it as an unreachable attempt."""
        cutoff = utcnow() - timedelta(seconds=self.settings.job_deadline_s + _SENT_GRACE_S)
        rows = await job_rows.overdue(self.db, iso(cutoff))
        if not rows:
            return
        changed: set[str] = set()
        async with self.db.transaction() as conn:
            for row in rows:
                changed |= await self._nack(conn, None, Nack(
                    job=row["id"], mac=row["mac"], code="unreachable",
                    reason="no answer from the gateway before the deadline", retry=True))
        self.on_states(changed)

    # -- events -------------------------------------------------------------------------------
    async def on_event(self, gateway: str, payload: bytes) -> None:
        """One message from ``…/gateway/{gateway}/events``; returns once its effect is committed.

        Acks, nacks and check-ins are applied in batches (one transaction for all the events
        waiting, a savepoint each, so one bad event costs only itself): under a repricing
        thousands arrive a second, and one commit each would be the bottleneck.
        """
        try:
            event = parse_event(payload)
        except EventError as exc:
            self._warn_once(gateway, "bad_event", "gateway %s sent a bad event: %s", gateway, exc)
            return
        if isinstance(event, Status):
            # connected but deaf: "degraded" (no jobs are routed to it) until its radio is back
            status = "online" if event.radio == "up" else "degraded"
            await self.set_gateway(gateway, status, protocol=event.protocol, info={
                "in_flight": event.in_flight, "spooled": event.spooled, "labels_heard": event.labels_heard,
                "radio": event.radio, "radio_since": None if event.radio_since is None else iso(event.radio_since),
                "server_key": event.server_key})
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._inbox.append((gateway, event, done))
        self._inbox_wake.set()
        await done

    async def run_events(self) -> None:
        """The task that applies queued gateway events, a batch per transaction."""
        while True:
            await self._inbox_wake.wait()
            self._inbox_wake.clear()
            while self._inbox:
                batch, self._inbox = self._inbox[:_EVENT_BATCH], self._inbox[_EVENT_BATCH:]
                # labels are locked in MAC order (each event of one label still in arrival order):
                # instances applying batches at once on one database never wait on each other in a circle
                batch.sort(key=lambda item: getattr(item[1], "mac", ""))
                try:
                    changed = await self._apply_batch(batch)
                except Exception as exc:  # the database itself failed: the messages are not acked
                    for _, _, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc)
                    continue
                for _, _, fut in batch:
                    if not fut.done():
                        fut.set_result(None)
                if self._dirtied:  # only now can the pipeline's reader see the marks
                    self._dirtied = False
                    self.on_dirty()
                if changed:
                    self.on_states(changed)
                self.poke()

    async def _apply_batch(self, batch: list[tuple[str, Any, asyncio.Future[None]]]) -> set[str]:
        """One transaction for the batch, a savepoint per event; run again when the database
        aborted it for another instance's transaction (a deadlock, `is_conflict`)."""
        for attempt in range(_CONFLICT_RETRIES):
            changed: set[str] = set()
            try:
                async with self.db.transaction() as conn:
                    for gateway, event, _ in batch:
                        try:
                            async with self.db.savepoint(conn):
                                changed |= await self._apply_event(conn, gateway, event)
                        except Exception as exc:  # one event's failure must not lose the batch
                            if is_conflict(exc):
                                raise
                            log.exception("applying %s from gateway %s failed", type(event).__name__, gateway,
                                          extra=_fields(self.settings.store, gateway, event))
                return changed
            except Exception as exc:
                if not is_conflict(exc) or attempt == _CONFLICT_RETRIES - 1:
                    raise
                self._dirtied = False
        raise AssertionError("unreachable")

    async def _apply_event(self, conn: Connection, gateway: str | None,
                           event: Ack | Nack | Checkin | Status) -> set[str]:
        if isinstance(event, Ack):
            assert gateway is not None
            return await self._ack(conn, gateway, event)
        if isinstance(event, Nack):
            return await self._nack(conn, gateway, event)
        if isinstance(event, Checkin):
            assert gateway is not None
            return await self._checkin(conn, gateway, event)
        return set()

    async def set_gateway(self, gateway: str, status: str, *, info: dict[str, Any] | None = None,
                          protocol: int | None = None) -> None:
        """Record a gateway's status (retained ``online``/``offline`` or a status event, which
        names the `protocol` version it speaks). A gateway known to speak a protocol older than
        `PROTOCOL_VERSION` is ``incompatible`` rather than online: it gets no jobs, and its
        status says why, naming both versions."""
        now = iso(utcnow())
        store = self.settings.store
        async with self.db.transaction() as conn:
            before = await gateway_rows.status(conn, store, gateway)
            if protocol is not None:
                await gateway_rows.set_protocol(conn, store, gateway, protocol)
            known = await gateway_rows.protocol(conn, store, gateway)
            if known is not None and known < PROTOCOL_VERSION and status != "offline":
                status = "incompatible"
                info = {**(info or {}), "error": _too_old(known)}
            await gateway_rows.set_status(conn, store, gateway, status, now=now, info=info)
        if before != status:
            if status == "incompatible":
                assert known is not None
                log.warning("gateway %s is refused: %s", gateway, _too_old(known),
                            extra={"store": store, "gateway": gateway})
            else:
                log.info("gateway %s is %s", gateway, status, extra={"store": store, "gateway": gateway})
            if status == "offline":
                # its jobs will not be answered: hand them back now rather than at their deadline
                async with self.db.transaction() as conn:
                    await job_rows.requeue_sent_by(conn, gateway, now)
            self.poke()

    async def mark_silent(self, now: datetime) -> set[str]:
        """Labels that missed ``offline_after_missed`` check-ins become ``offline`` (one
        statement), pending jobs or not: a label that stops waking would otherwise stay ``ok``
        forever. Its next check-in brings it back (`_seen`). Returns the labels changed."""
        silent_s = self.settings.checkin_interval_s * self.settings.offline_after_missed
        async with self.db.transaction() as conn:
            macs = await label_rows.mark_silent_offline(
                conn, self.settings.store, heard_before=iso(now - timedelta(seconds=silent_s)), now=iso(now))
        if len(macs) > 10:  # e.g. a whole gateway's labels: one line, not thousands
            log.warning("%d labels are offline: not heard for %g s (%d check-ins missed), e.g. %s", len(macs),
                        silent_s, self.settings.offline_after_missed, ", ".join(macs[:5]),
                        extra={"store": self.settings.store})
        else:
            for mac in macs:
                log.warning("label %s is offline: not heard for %g s (%d check-ins missed)", mac, silent_s,
                            self.settings.offline_after_missed, extra={"store": self.settings.store, "mac": mac})
        if macs:
            self.on_states(set(macs))
        return set(macs)

    async def _ack(self, conn: Connection, gateway: str, ev: Ack) -> set[str]:
        """An ack finishes its job only with the label's own final word (`_final_word`) from
        the gateway the job was sent to; without it nothing changes and the job is retried."""
        now = utcnow()
        label = await label_rows.for_event(conn, ev.mac)  # the label first, then its job: one lock order
        job = await job_rows.get(conn, ev.job, ev.mac)
        if job is None or label is None:
            self._warn_once(gateway, "unknown_job", "gateway %s acked unknown job %d (%s)", gateway, ev.job, ev.mac)
            return set()
        if not self._from_its_gateway(job, gateway, ev):  # first: whatever the job's state, it is not its word
            self._unconfirmed("wrong_gateway")
            return set()
        if job["state"] not in ("queued", "sent"):
            return set()  # a duplicate, or a job already over
        final = self._final_word(ev.job, job, label, ev.mac, ev.status)
        if isinstance(final, str):
            self._unconfirmed(final)
            self._warn_once(gateway, f"unconfirmed_{final}", "gateway %s acked job %d of %s without the label's "
                            "own word (%s): nothing changed, the job is retried", gateway, ev.job, ev.mac,
                            _WHY_UNCONFIRMED[final])
            if job["state"] != "sent" or (ev.attempt is not None and ev.attempt != min(255, job["attempts"])):
                return set()  # an earlier delivery's ack: the current one is still out
            return await self._nack(conn, gateway, Nack(
                job=ev.job, mac=ev.mac, code="unconfirmed", retry=True, attempt=ev.attempt,
                reason=f"ack without the label's final word: {_WHY_UNCONFIRMED[final]}"))
        changed = await self._believe(conn, gateway, job, label, final, now=now)
        failure = _failure(job, final)
        if failure is None:
            await self.outbox.finish(conn, ev.job, "done", now)
            return changed
        code, retry, reason = failure  # the gateway acked what the label calls a failure
        return changed | await self._nack(conn, gateway, Nack(job=ev.job, mac=ev.mac, code=code, retry=retry,
                                                              attempt=ev.attempt, reason=reason))

    def _final_word(self, job_id: int, job: Any, label: Any, mac: str,
                    raw: bytes | None) -> JobStatus | CheckinFrame | str:
        """The label's final word on job `job_id` if `raw` is one, else why not (a key of
        `_WHY_UNCONFIRMED`). For an image or command job: a `JobStatus` about this job from
        this label, authenticated with its long-term key, counter above the highest seen. For
        a pairing: its check-in with the paired flag, authenticated with the job's new key."""
        if raw is None:
            return "missing"
        try:
            frame = parse_frame(raw)
        except ProtocolError:
            return "malformed"
        address = address_bytes(mac)
        if frame.address != address or frame.auth is None:
            return "wrong_frame"
        try:
            if job["kind"] == JobKind.PAIR:
                if not isinstance(frame, CheckinFrame) or not frame.status_flags & CheckinFlag.PAIRED:
                    return "wrong_frame"
                key = self._clear_key(mac, job["command"])
            else:
                if not isinstance(frame, JobStatus) or frame.job_id != job_id:
                    return "wrong_frame"
                if label["label_key"] is None:
                    return "no_key"
                if frame.auth.counter <= label["rx_highest"]:
                    return "replayed"
                key = self._clear_key(mac, label["label_key"])
        except SealError:  # sealed for another label or under another secret key
            return "no_key"
        try:
            verify(frame, FrameKey(key), address, Direction.FROM_LABEL)
        except ProtocolError:
            return "bad_tag"
        return frame

    async def _believe(self, conn: Connection, gateway: str | None, job: Any, label: Any,
                       final: JobStatus | CheckinFrame, *, now: datetime) -> set[str]:
        """Record what the label's verified final word says: its counters, what it shows, its
        sensors (the RSSI it measured too), the gateway that carried it (and for a pairing, its
        new key)."""
        assert final.address is not None and final.auth is not None
        mac = address_str(final.address)
        if job["kind"] == JobKind.PAIR:  # a new key: both counters start again under it
            await label_rows.set_key(conn, mac, job["command"], tx_counter=final.rx_counter,
                                     rx_highest=final.auth.counter)
        else:
            await label_rows.advance_counters(conn, mac, tx_counter=final.rx_counter, rx_highest=final.auth.counter)
        await self._seen(conn, mac, gateway, now, displayed=final.displayed_hash.hex(), battery_mv=final.battery_mv,
                         temperature_c=final.temperature_c, rssi=final.rssi, label=label)
        return {mac}

    def _unconfirmed(self, reason: str) -> None:
        self.db.after_commit(lambda: self.metrics.acks_unconfirmed.labels(reason).inc())

    async def _seen(self, conn: Connection, mac: str, gateway: str | None, now: datetime, *,
                    displayed: str | None, battery_mv: int | None, temperature_c: float | None, rssi: int | None,
                    label: Any) -> None:
        """A label was heard (ack or authenticated check-in): its sensors and state."""
        temp = None if temperature_c is None else round(temperature_c)
        await label_rows.record_seen(conn, mac, now=iso(now), gateway=gateway, displayed_hash=displayed,
                                     battery_mv=battery_mv, temperature_c=temp, rssi=rssi)
        shown = displayed if displayed is not None else None
        if label["sku"] is None:
            return
        if shown is not None and shown == label["expected_hash"]:
            if label["origin_at"] is not None:
                self.metrics.time_to_shelf.observe(max(0.0, (now - parse_iso(label["origin_at"])).total_seconds()))
            await label_rows.set_up_to_date(conn, mac)
            if label["state"] in ("offline", "failed"):
                log.info("label %s is back and up to date", mac, extra={"store": self.settings.store, "mac": mac})
        elif label["state"] in ("offline", "failed", "ok"):
            if label["state"] != "ok":
                log.info("label %s is back (was %s); catching it up", mac, label["state"],
                         extra={"store": self.settings.store, "mac": mac})
            open_job = await job_rows.has_open(conn, mac)
            await label_rows.set_pending(conn, mac)
            if not open_job:
                await label_rows.mark_dirty(conn, iso(now), mac=mac)
                self._dirtied = True  # the pipeline is told after the commit

    async def _nack(self, conn: Connection, gateway: str | None, ev: Nack) -> set[str]:
        """A job ended without success: retried, or failed. Nacks of envelopes the gateway
        refused to run change nothing (anybody who can publish on its job topic can cause
        one); a nack from another gateway than the job's, or about an earlier delivery, is
        ignored. A verified final word in it (a refused image) is recorded like an ack's."""
        now = utcnow()
        if ev.code in REFUSAL_CODES:
            self._refused(gateway, ev)
            return set()
        label = await label_rows.for_event(conn, ev.mac)  # the label first, then its job: one lock order
        job = await job_rows.get(conn, ev.job, ev.mac)
        if job is None or (gateway is not None and not self._from_its_gateway(job, gateway, ev)):
            return set()
        if job["state"] != "sent":
            return set()  # a duplicate, or already handed back
        if ev.attempt is not None and ev.attempt != min(255, job["attempts"]):
            return set()  # about an earlier delivery: the current one is still out
        changed = {ev.mac}
        if ev.status is not None:
            final = "missing" if label is None else self._final_word(ev.job, job, label, ev.mac, ev.status)
            if not isinstance(final, str):
                changed |= await self._believe(conn, gateway, job, label, final, now=now)
        await event_rows.add(conn, event_rows.Event(iso(now), self.settings.store, ev.mac, gateway, "nack",
                                                    {"job": ev.job, "code": ev.code, "reason": ev.reason}))
        if ev.code == "base_mismatch":
            await job_rows.requeue_whole_image(conn, ev.job, iso(now), ev.reason)
            self.metrics.jobs_retried.labels(ev.code).inc()
        elif ev.retry and job["attempts"] < self.settings.max_attempts:
            delay = backoff_s(job["attempts"], self.settings, self._rng)
            await job_rows.requeue(conn, ev.job, iso(now + timedelta(seconds=delay)), f"{ev.code}: {ev.reason}")
            self.metrics.jobs_retried.labels(ev.code).inc()
        else:
            state = "offline" if ev.code in ("unreachable", "budget", "unconfirmed") else "failed"
            await self.outbox.finish(conn, ev.job, "failed", now, error=f"{ev.code}: {ev.reason}")
            await label_rows.record_failure(conn, ev.mac, state, now=iso(now))
            log.warning("label %s is %s after %d attempts: %s", ev.mac, state, job["attempts"], ev.reason,
                        extra=_fields(self.settings.store, gateway, ev))
        return changed

    def _refused(self, gateway: str | None, ev: Nack) -> None:
        """A gateway refused an envelope: counted and logged (once per gateway and reason)."""
        self.db.after_commit(lambda: self.metrics.envelopes_refused.labels(ev.code).inc())
        hint = {"wrong_key": " (is the key registered for it its current one? esl trust gateway)",
                "bad_signature": " (does its server_public_key match esl trust server-key?)",
                "expired": " (are the server's and the gateway's clocks right?)"}.get(ev.code, "")
        self._warn_once(gateway or "?", f"refused_{ev.code}", "gateway %s refused job %d of %s (%s): %s%s",
                        gateway, ev.job, ev.mac, ev.code, ev.reason, hint)

    async def _checkin(self, conn: Connection, gateway: str, ev: Checkin) -> set[str]:
        try:
            frame = parse_frame(ev.frame)
        except ProtocolError as exc:
            self._warn_once(gateway, "bad_checkin", "gateway %s forwarded a bad check-in: %s", gateway, exc)
            return set()
        if not isinstance(frame, CheckinFrame) or frame.address is None or address_str(frame.address) != ev.mac:
            self._warn_once(gateway, "bad_checkin", "gateway %s forwarded a check-in not from %s", gateway, ev.mac)
            return set()
        now = utcnow()
        changed = False
        row = await label_rows.for_event(conn, ev.mac)
        if row is None:
            model = MODELS_BY_ID.get(frame.model_id)
            if model is None:
                self._warn_once(ev.mac, "model", "label %s has unknown model id %d", ev.mac, frame.model_id)
                return set()
            if not self._discoveries.take(gateway):  # a flood of made-up labels (issue 13): rows cost
                self.metrics.discoveries_dropped.labels(gateway).inc()
                self._warn_once(gateway, "discoveries", "gateway %s reports new labels faster than "
                                "discovery_rate_per_min allows (%g a minute after %d); dropping the rest, e.g. %s",
                                gateway, self.settings.discovery_rate_per_min, self.settings.discovery_burst, ev.mac)
                return set()
            self.metrics.discoveries.labels(gateway).inc()
            await label_rows.discover(conn, mac=ev.mac, store=self.settings.store, model=model.name, gateway=gateway,
                                      rssi=ev.rssi, battery_mv=frame.battery_mv, now=iso(now),
                                      factory_counter=frame.rx_counter if frame.auth is None else 0)
            await event_rows.add(conn, event_rows.Event(iso(now), self.settings.store, ev.mac, gateway, "discovered",
                                                        {"model": model.name}))
            log.info("discovered label %s (%s) via %s", ev.mac, model.name, gateway,
                     extra=_fields(self.settings.store, gateway, ev))
            changed = True
        elif frame.auth is None and row["label_key"] is not None:
            # it had a key: reset, or anybody pretending; nothing changes until a technician says so
            if await label_rows.note_key_lost(conn, ev.mac, now=iso(now)):
                await event_rows.add(conn, event_rows.Event(iso(now), self.settings.store, ev.mac, gateway, "key_lost",
                                                            {"rx_counter": frame.rx_counter}))
                self.db.after_commit(self.metrics.labels_reset.inc)
                log.warning("label %s checked in without its key (reset?) via %s: it is not paired again on its "
                            "own word; if it was reset, pair it again: esl pair --reset %s", ev.mac, gateway, ev.mac,
                            extra=_fields(self.settings.store, gateway, ev))
        elif frame.auth is None:  # the label has no key and never had one (or a technician reset it)
            await label_rows.record_unkeyed_checkin(conn, ev.mac, factory_counter=frame.rx_counter, gateway=gateway,
                                                    rssi=ev.rssi, now=iso(now))
            if row["sku"] is not None:
                if await self.outbox.ensure_pair(conn, store=self.settings.store, mac=ev.mac, now=now,
                                                 sealed_key=self.vault.new_label_key(self.settings.store, ev.mac)):
                    await label_rows.mark_dirty(conn, iso(now), mac=ev.mac, pending=True)
                    self._dirtied = True  # the pipeline is told after the commit
                    changed = True
        else:
            key = await self._verify(conn, row, ev, frame)
            if key is None:
                return set()
            await label_rows.advance_counters(conn, ev.mac, tx_counter=frame.rx_counter,
                                              rx_highest=frame.auth.counter)
            await self._seen(conn, ev.mac, gateway, now, displayed=frame.displayed_hash.hex(),
                             battery_mv=frame.battery_mv, temperature_c=frame.temperature_c, rssi=ev.rssi,
                             label=row)
            changed = True
        return {ev.mac} if changed else set()

    async def _verify(self, conn: Connection, row: Any, ev: Checkin, frame: CheckinFrame) -> bytes | None:
        """The key the check-in is authenticated with (adopting a pairing whose ack was lost)."""
        candidates: list[tuple[bytes, int | None]] = []
        if row["label_key"] is not None:
            candidates.append((row["label_key"], None))
        for pair in await job_rows.open_pairings(conn, ev.mac):
            candidates.append((pair["command"], pair["id"]))
        stale = False
        for sealed, pair_job in candidates:
            try:
                key = self._clear_key(ev.mac, sealed)
            except SealError as exc:
                self._warn_once(ev.mac, "sealed_key", "check-in from %s: %s", ev.mac, exc)
                continue
            # nothing at or below the highest counter we know is believed: the window's mask is
            # not kept, and a check-in older than frames already seen is stale news at best
            window = (ReplayWindow(highest=row["rx_highest"], mask=(1 << REPLAY_WINDOW) - 1)
                      if pair_job is None else ReplayWindow())
            try:
                GatewaySession(ev.mac, key, rx=window).open(ev.frame)
            except ProtocolError:
                if pair_job is None and frame.auth is not None and frame.auth.counter <= row["rx_highest"]:
                    stale = stale or _authentic(ev.mac, key, ev.frame)
                continue
            if pair_job is not None:
                await label_rows.set_key(conn, ev.mac, sealed, tx_counter=frame.rx_counter, rx_highest=0)
                await self.outbox.finish(conn, pair_job, "done", utcnow())
            return key
        if stale:  # the label's own, overtaken by newer frames (or replayed): it changes nothing
            log.debug("check-in from %s is older than frames already seen (counter %d <= %d); ignored", ev.mac,
                      frame.auth.counter if frame.auth else -1, row["rx_highest"])
            self.db.after_commit(lambda: self.metrics.events_refused.labels("stale_checkin").inc())
            return None
        self._warn_once(ev.mac, "checkin_auth", "check-in from %s failed authentication (forged, or under "
                                                 "another key)", ev.mac)
        return None

    def _from_its_gateway(self, job: Any, gateway: str, ev: Ack | Nack) -> bool:
        """Whether `gateway` is the one job `ev` is about was sent to. Only that gateway speaks
        for the job: an ack or nack from any other (a forged ``gateway/evil/events``, or a
        gateway the job was taken from) would move the label, its counters or its state."""
        if job["gateway"] == gateway:
            return True
        self.metrics.events_refused.labels("wrong_gateway").inc()
        self._warn_once(gateway, "wrong_gateway", "gateway %s spoke for job %d (%s) sent to %s; ignored",
                        gateway, ev.job, ev.mac, job["gateway"])
        return False

    def _warn_once(self, who: str, kind: str, msg: str, *args: object) -> None:
        if (who, kind) not in self._warned:
            self._warned.add((who, kind))
            log.warning(msg, *args)



def _authentic(mac: str, key: bytes, raw: bytes) -> bool:
    """Whether `raw` is a frame of `mac` under `key`, whatever its counter: a stale frame of the
    label's own, told apart from a forged one so that only forgeries are warned about."""
    try:
        GatewaySession(mac, key, rx=ReplayWindow()).open(raw)
    except ProtocolError:
        return False
    return True


_WHY_UNCONFIRMED: Final = {
    "missing": "no status frame", "malformed": "the status frame does not parse",
    "wrong_frame": "not this label's final word on this job", "no_key": "the server holds no key for the label",
    "replayed": "the status frame's counter is not above the last one seen",
    "bad_tag": "the status frame does not authenticate under the label's key",
    "wrong_gateway": "the job was sent to another gateway",
}
"""Why an ack confirmed nothing (the ``reason`` of ``esl_acks_unconfirmed_total``)."""


def _failure(job: Any, final: JobStatus | CheckinFrame) -> tuple[NackCode, bool, str] | None:
    """What a verified final word that reports a failure means for the job: (nack code, retry,
    reason); None when it reports success (every pairing confirmation does)."""
    if not isinstance(final, JobStatus) or final.result == 0:
        return None
    code = final.result
    if job["kind"] == JobKind.COMMAND:
        transient = code in (EslError.RETRY, EslError.QUEUE_FULL, EslError.INSUFFICIENT_RESOURCES)
        if code == EslError.INSUFFICIENT_BATTERY:
            return "low_battery", False, f"label answered error {code:#04x}"
        return "refused", transient, f"label answered error {code:#04x}"
    if code == TransferResult.BASE_MISMATCH:
        return "base_mismatch", False, "label refused the update: it shows another image"
    if code == TransferResult.INSUFFICIENT_BATTERY:
        return "low_battery", False, f"label refused the image: error {code:#04x}"
    return "refused", False, f"label refused the image: error {code:#04x}"


def _too_old(version: int) -> str:
    return (f"it speaks protocol {version}, this server needs {PROTOCOL_VERSION} (signed envelopes, job keys, "
            f"the label's own final word): upgrade the gateway")


def _fields(store: str, gateway: str | None, event: Ack | Nack | Checkin | Status) -> dict[str, Any]:
    """The structured log fields of a gateway event (`eslserver.logs`)."""
    fields: dict[str, Any] = {"store": store, "gateway": gateway}
    for name in ("mac", "job"):
        if getattr(event, name, None) is not None:
            fields[name] = getattr(event, name)
    return fields
