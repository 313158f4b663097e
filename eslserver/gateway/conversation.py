"""The gateway's half of a conversation with one label, over any `Link`, and the job runner.

Two layers, both built only on the public gateway side of `firmware_proto` (`GatewaySession`,
its sealed `ImageSender`, `JobSession`) and the `Link` / `Radio` interfaces, so they drive an
in-memory link, the loopback TCP radio and BLE alike:

- `Conversation`, `pair_label`, `push_image`, `converge`: pair a label and push an image, as
  tests and benchmarks need it (no jobs, no counters budget);
- `run_job`: one job envelope (`firmware_proto.envelope`) carried out to the end, an `Ack` or a
  `Nack` (`eslserver.gateway.events`): connect when the label listens (retried on each of its
  check-ins until the job's deadline), then pair / transfer / command within the job's counter
  budget, with every counter noted durably before it is used (``reserve``). The gateway holds
  no label key: it forwards the server's pair request or job ticket unchanged, seals with the
  job key only, and ends the job with the label's final word (its `JobStatus`, or the
  check-in under its new key), which it forwards raw for the server to verify.

`CheckinTracker` remembers each label's latest check-in (bounded), lets a job wait for the next
one, and decides which check-ins are news worth forwarding to the server.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Protocol

from eslserver.gateway.events import Ack, Nack, NackCode, utc_now
from firmware_proto.ble_gatt import BleGattError, CompactCheckin
from firmware_proto.commands import EslError
from firmware_proto.envelope import (
    BudgetExhausted,
    CommandJob,
    ImageJob,
    JobEnvelope,
    JobSession,
    PairJob,
)
from firmware_proto.errors import AuthError, ProtocolError
from firmware_proto.frames import (
    Checkin,
    CheckinFlag,
    ControlResponse,
    Frame,
    ImageStatusRequest,
    JobStatus,
    address_bytes,
    address_str,
    parse_frame,
)
from firmware_proto.gateway import GatewaySession
from firmware_proto.image import Region, image_hash
from firmware_proto.link import Link, Radio
from firmware_proto.transfer import TransferResult, best_payload

__all__ = [
    "GatewayError", "TransferOutcome", "Conversation", "Target", "pair_label", "push_image", "converge",
    "HeardCheckin", "CheckinTracker", "JobSettings", "Reserve", "run_job", "first_reservation",
]

log = logging.getLogger(__name__)


class GatewayError(ConnectionError):
    """The label did not answer in time (after every retry)."""


@dataclass(frozen=True, slots=True)
class TransferOutcome:
    """How an image push ended. ``done``: the label verified the hash and displays it."""

    done: bool
    error: str | None
    error_code: int
    attempts: int
    frames_sent: int
    timeouts: int


class Opens(Protocol):
    """What turns the label's bytes into a frame the conversation believes (`ProtocolError`
    otherwise): a `GatewaySession`, a `JobSession`, or the pairing's `_PairWatch`."""

    def open(self, data: bytes) -> Frame: ...


class Conversation:
    """A link plus a queue of the frames that came back on it."""

    def __init__(self, link: Link, session: Opens) -> None:
        self.link = link
        self.session = session
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()
        self.frames_sent = 0
        self.bad_frames = 0
        self.last_raw = b""
        """The bytes of the frame `next_frame` returned last (a final word is forwarded raw)."""
        link.set_frame_callback(self.queue.put_nowait)

    async def send_all(self, frames: list[bytes]) -> None:
        for frame in frames:
            self.frames_sent += 1
            await self.link.send(frame)

    async def next_frame(self, timeout_s: float) -> Frame | None:
        """The next frame that opens (verifies) under the session; None on timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            try:
                async with asyncio.timeout(remaining):
                    data = await self.queue.get()
            except TimeoutError:
                return None
            try:
                frame = self.session.open(data)
            except ProtocolError as exc:
                self.bad_frames += 1
                log.debug("dropped a frame from %s: %s", self.link.address, exc)
                continue
            self.last_raw = bytes(data)
            return frame


async def pair_label(conv: Conversation, factory_key: bytes, new_key: bytes, *,
                     label_rx_counter: int = 0, timeout_s: float = 0.25, attempts: int = 40) -> Checkin:
    """Give the label `new_key`; return its check-in authenticated under it."""
    for _ in range(attempts):
        await conv.send_all([conv.session.pair(factory_key, new_key, label_rx_counter=label_rx_counter)])
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while (remaining := deadline - loop.time()) > 0:
            frame = await conv.next_frame(remaining)
            if isinstance(frame, Checkin) and frame.auth is not None and frame.status_flags & CheckinFlag.PAIRED:
                return frame
    raise GatewayError(f"label {conv.link.address} did not confirm pairing after {attempts} tries")


async def push_image(conv: Conversation, framebuffer: bytes, *, region: Region | None = None,
                     base_hash: bytes | None = None, full_hash: bytes | None = None,
                     payload: bytes | None = None, timeout_s: float = 0.25,
                     attempts: int = 10) -> TransferOutcome:
    """Send an image (or, with `region`, the region's pixels) until the label displays it.

    `framebuffer` is the packed whole-screen result; for a region update pass the region's
    packed pixels as `payload` and the label's current hash as `base_hash`. A transfer that
    gives up (label silent) is retried with a new offer, which resumes where the label is.
    """
    target = full_hash if full_hash is not None else image_hash(framebuffer)
    data, fmt = best_payload(payload if payload is not None else framebuffer)
    timeouts = 0
    for attempt in range(1, attempts + 1):
        # a retry resumes: the label kept the parts it got, so the offer goes alone first
        sender = conv.session.send_image(data, fmt, target, region=region, base_hash=base_hash,
                                         max_frame=conv.link.max_frame, resume=attempt > 1)
        await conv.send_all(sender.start())
        while not sender.finished:
            frame = await conv.next_frame(timeout_s)
            if frame is None:
                timeouts += 1
                out = sender.on_timeout()
            else:
                out = sender.handle(frame)
            await conv.send_all(out)
        if sender.done:
            return TransferOutcome(True, None, 0, attempt, conv.frames_sent, timeouts)
        code = sender.sender.error_code
        if code != TransferResult.TOO_MANY_ROUNDS:  # the label refused: retrying will not help
            return TransferOutcome(False, sender.error, code, attempt, conv.frames_sent, timeouts)
    return TransferOutcome(False, "label did not finish", 0, attempts, conv.frames_sent, timeouts)


@dataclass(frozen=True, slots=True)
class Target:
    """What the gateway wants a label to show, and how to pair it."""

    factory_key: bytes = field(repr=False)  # keys stay out of reprs (logs, tracebacks)
    label_key: bytes = field(repr=False)
    framebuffer: bytes


async def converge(radio: Radio, targets: dict[str, Target], *, concurrency: int = 200,
                   timeout_s: float = 0.25, attempts: int = 10,
                   connect_retry_s: float = 0.05, connect_attempts: int = 100) -> dict[str, TransferOutcome]:
    """Pair every label in `targets` and push its image, `concurrency` conversations at a time.

    Returns each label's outcome. A label that does not answer a connect (asleep, off the air)
    is retried every ``connect_retry_s``, as a gateway would on the label's next check-in.
    """
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency!r}")
    gate = asyncio.Semaphore(concurrency)
    results: dict[str, TransferOutcome] = {}

    async def one(address: str, target: Target) -> None:
        async with gate:
            link = await radio.open_link(address)
            try:
                for _ in range(connect_attempts):
                    try:
                        await link.connect()
                        break
                    except ConnectionError:
                        await asyncio.sleep(connect_retry_s)
                else:
                    results[address] = TransferOutcome(False, "never reachable", 0, 0, 0, 0)
                    return
                conv = Conversation(link, GatewaySession(address))
                await pair_label(conv, target.factory_key, target.label_key, timeout_s=timeout_s)
                results[address] = await push_image(conv, target.framebuffer, timeout_s=timeout_s,
                                                    attempts=attempts)
            except GatewayError as exc:
                results[address] = TransferOutcome(False, str(exc), 0, 0, 0, 0)
            finally:
                await link.close()

    async with asyncio.TaskGroup() as group:
        for address, target in targets.items():
            group.create_task(one(address, target), name=f"converge-{address}")
    return results


# -- check-ins heard on the radio ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HeardCheckin:
    """A label's check-in as the radio heard it (CRC checked; tag not verified)."""

    mac: str
    frame: bytes
    checkin: Checkin
    rssi: int
    at: datetime
    seen: float
    """The event loop's clock when heard."""


class CheckinTracker:
    """Each label's latest check-in (the newest ``max_labels`` labels), and waiting for the next.

    `record` returns True when the check-in is news to forward to the server: the first from a
    label in ``coalesce_s`` seconds, or one whose content (flags, displayed image) changed.
    A label's repeated check-ins inside that window are kept (its latest is always known) but
    not forwarded, so a label stuck in a reboot loop cannot flood the broker.
    """

    def __init__(self, *, coalesce_s: float = 1.0, max_labels: int = 100_000) -> None:
        if not math.isfinite(coalesce_s) or coalesce_s < 0:
            raise ValueError(f"coalesce_s must be a finite number >= 0, got {coalesce_s!r}")
        if max_labels < 1:
            raise ValueError(f"max_labels must be >= 1, got {max_labels!r}")
        self.coalesce_s = coalesce_s
        self.max_labels = max_labels
        self._latest: OrderedDict[str, HeardCheckin] = OrderedDict()
        self._forwarded: dict[str, HeardCheckin] = {}
        self._generation: dict[str, int] = {}
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self.heard = 0
        self.coalesced = 0
        self.malformed = 0
        self.compact = 0

    @property
    def labels_heard(self) -> int:
        return len(self._latest)

    def latest(self, mac: str) -> HeardCheckin | None:
        return self._latest.get(mac.upper())

    def generation(self, mac: str) -> int:
        """How many check-ins from `mac` were recorded (to wait for one after a given point)."""
        return self._generation.get(mac.upper(), 0)

    def record(self, mac: str, frame: bytes, rssi: int) -> bool:
        """Note a check-in heard on the radio; True if it should be forwarded."""
        mac = mac.upper()
        try:
            parsed = parse_frame(frame)
        except ProtocolError as exc:
            if self._compact(mac, frame):
                return False
            self.malformed += 1
            log.debug("dropped a malformed check-in from %s: %s", mac, exc)
            return False
        if (not isinstance(parsed, Checkin) or parsed.address is None
                or address_str(parsed.address) != mac):
            self.malformed += 1
            log.debug("dropped a frame heard as a check-in from %s: %r", mac, parsed)
            return False
        loop = asyncio.get_running_loop()
        heard = HeardCheckin(mac, bytes(frame), parsed, rssi, utc_now(), loop.time())
        self.heard += 1
        self._latest[mac] = heard
        self._latest.move_to_end(mac)
        self._generation[mac] = self._generation.get(mac, 0) + 1
        while len(self._latest) > self.max_labels:
            old, _ = self._latest.popitem(last=False)
            self._forwarded.pop(old, None)
            self._generation.pop(old, None)
        self._wake_waiters(mac)
        last = self._forwarded.get(mac)
        if (last is not None and heard.seen - last.seen < self.coalesce_s
                and last.checkin.status_flags == parsed.status_flags
                and last.checkin.displayed_hash == parsed.displayed_hash):
            self.coalesced += 1
            return False
        self._forwarded[mac] = heard
        return True

    def _wake_waiters(self, mac: str) -> None:
        for fut in self._waiters.pop(mac, []):
            if not fut.done():
                fut.set_result(None)

    def _compact(self, mac: str, data: bytes) -> bool:
        """A BLE advertisement's compact check-in (`firmware_proto.ble_gatt.CompactCheckin`):
        the label is awake, so waiting jobs connect now; it is not a frame the server can
        verify, so it is neither kept as the latest check-in nor forwarded."""
        try:
            CompactCheckin.from_bytes(data)
        except (BleGattError, ValueError):
            return False
        self.compact += 1
        if mac not in self._generation and len(self._generation) >= 2 * self.max_labels:
            del self._generation[next(iter(self._generation))]  # bounded: forget the oldest
        self._generation[mac] = self._generation.get(mac, 0) + 1
        self._wake_waiters(mac)
        return True

    async def wait(self, mac: str, timeout_s: float, *, since: int | None = None) -> bool:
        """Wait up to `timeout_s` for a check-in from `mac` (after generation `since`, if given:
        one that came in already returns at once). True if one came."""
        mac = mac.upper()
        if since is not None and self.generation(mac) > since:
            return True
        if timeout_s <= 0:
            return False
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(mac, []).append(fut)
        try:
            async with asyncio.timeout(timeout_s):
                await fut
            return True
        except TimeoutError:
            return False
        finally:
            waiters = self._waiters.get(mac)
            if waiters is not None and fut in waiters:
                waiters.remove(fut)
                if not waiters:
                    del self._waiters[mac]


# -- the job runner --------------------------------------------------------------------------

Reserve = Callable[[int], Awaitable[None]]
"""Durably note "this job may have used counters up to N" before any of them is used."""


@dataclass(frozen=True, slots=True)
class JobSettings:
    """How patiently a job talks to a label.

    ``reply_timeout_s``: silence before asking again (per frame exchange);
    ``connect_retry_s``: a refused connect is retried on the label's next check-in, or after
    this long if none is heard; ``window``: image parts per round (bounded, so a protocol step
    never seals more than ``window + 2`` frames); ``max_timeouts`` / ``attempts``: how long a
    connected label may stay silent before the job waits for its next check-in;
    ``reserve_chunk``: counters noted per durable write.
    """

    reply_timeout_s: float = 0.3
    connect_retry_s: float = 2.0
    window: int = 64
    max_timeouts: int = 6
    attempts: int = 8
    reserve_chunk: int = 64

    def __post_init__(self) -> None:
        for name in ("reply_timeout_s", "connect_retry_s"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        for name in ("window", "max_timeouts", "attempts", "reserve_chunk"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")


_SILENT = None  # a conversation that ended because the label stopped answering


class _PairWatch:
    """The pairing's "session": the gateway has no key to verify with, so it believes nothing;
    it picks out this label's check-ins (to forward raw) and drops everything else."""

    def __init__(self, mac: str) -> None:
        self.address = address_bytes(mac)

    def open(self, data: bytes) -> Frame:
        frame = parse_frame(data)
        if not isinstance(frame, Checkin) or frame.address != self.address:
            raise AuthError(f"{type(frame).__name__}: not this label's check-in")
        return frame


class _JobRun:
    """One job from start to `Ack` / `Nack`. See `run_job`."""

    def __init__(self, radio: Radio, job: JobEnvelope, *, job_key: bytes | None,
                 checkins: CheckinTracker | None, settings: JobSettings, deadline: float,
                 used_through: int, reserved: int, reserve: Reserve | None) -> None:
        self.radio = radio
        self.job = job
        self.checkins = checkins
        self.settings = settings
        self.deadline = deadline
        self.reserve = reserve
        self.frames = 0
        self.connects = 0
        self.silences = 0
        self.last_error = ""
        self.conv: Conversation | None = None
        self.session: JobSession | None = None
        self.ticket_heard = False  # the label answered under the job key: it has the ticket
        self.watch: Opens
        if isinstance(job, PairJob):
            self.watch = _PairWatch(job.mac)
        elif isinstance(job, (ImageJob, CommandJob)):
            if job_key is None:
                raise TypeError(f"job {job.job_id}: an image or command job needs its job key")
            self.session = JobSession(job, job_key, start=used_through)
            if reserve is not None:
                self.session.reserved = min(self.session.limit, max(self.session.tx_counter, reserved))
            self.watch = self.session
        else:
            raise TypeError(f"unknown job type {type(job).__name__}")

    # -- results --------------------------------------------------------------------------
    def nack(self, code: NackCode, reason: str, *, retry: bool, status: bytes | None = None) -> Nack:
        return Nack(job=self.job.job_id, mac=self.job.mac, code=code, reason=reason[:1000], retry=retry,
                    attempt=self.job.attempt, status=status)

    def _frames(self) -> int:
        return self.frames + (self.conv.frames_sent if self.conv is not None else 0)

    def ack(self, final: JobStatus | Checkin, raw: bytes) -> Ack:
        """The ack carrying the label's final word, raw (the fields beside it are what the
        gateway read in it, for people; the server reads the frame)."""
        return Ack(job=self.job.job_id, mac=self.job.mac, attempt=self.job.attempt, status=raw,
                   displayed_hash=final.displayed_hash, frames=self._frames(), battery_mv=final.battery_mv,
                   rssi=final.rssi, temperature_c=final.temperature_c)

    def _outcome(self) -> Ack | Nack:
        """The job's result from the label's `JobStatus` (in ``session.final``)."""
        assert self.session is not None and self.session.final is not None
        final, raw = self.session.final
        if final.result == 0:
            return self.ack(final, raw)
        code = final.result
        if isinstance(self.job, CommandJob):
            try:
                name = EslError(code).name.lower()
            except ValueError:
                name = f"error {code:#04x}"
            reason = f"label answered {name} to {self.job.command.name}"
            if code == EslError.INSUFFICIENT_BATTERY:
                return self.nack("low_battery", reason, retry=False, status=raw)
            transient = code in (EslError.RETRY, EslError.QUEUE_FULL, EslError.INSUFFICIENT_RESOURCES)
            return self.nack("refused", reason, retry=transient, status=raw)
        reason = f"label refused the image: error {code:#04x}"
        if code == TransferResult.BASE_MISMATCH:
            return self.nack("base_mismatch", reason + " (send the whole image)", retry=False, status=raw)
        if code == TransferResult.INSUFFICIENT_BATTERY:
            return self.nack("low_battery", reason, retry=False, status=raw)
        return self.nack("refused", reason, retry=False, status=raw)

    # -- counters -------------------------------------------------------------------------
    async def ensure(self, n: int) -> None:
        """Note durably the counters the next protocol step may use (up to `n` frames)."""
        s = self.session
        if s is None or self.reserve is None:
            return
        if min(s.limit, s.tx_counter + n) <= s.reserved:
            return
        new = min(s.limit, s.tx_counter + n + self.settings.reserve_chunk)
        await self.reserve(new)
        s.reserved = new

    # -- the loop -------------------------------------------------------------------------
    async def run(self) -> Ack | Nack:
        loop = asyncio.get_running_loop()
        mac = self.job.mac
        while True:
            gen = self.checkins.generation(mac) if self.checkins is not None else 0
            if self.connects and loop.time() >= self.deadline:
                return self._unreachable()
            self.connects += 1
            result = await self._attempt()
            if result is not _SILENT:
                return result
            wait = min(self.settings.connect_retry_s, self.deadline - loop.time())
            if self.checkins is not None:
                await self.checkins.wait(mac, wait, since=gen)
            elif wait > 0:
                await asyncio.sleep(wait)

    async def _attempt(self) -> Ack | Nack | None:
        """One connect and, if the label answers, one conversation; None: try again later."""
        try:
            link = await self.radio.open_link(self.job.mac)
        except LookupError as exc:  # a radio that knows its labels (the in-memory one)
            self.last_error = f"open_link: {exc}"
            return _SILENT
        try:
            await link.connect()
        except ConnectionError as exc:
            self.last_error = f"connect: {exc}"
            await link.close()
            return _SILENT
        conv = self.conv = Conversation(link, self.watch)
        try:
            result = await self._converse(conv)
        except BudgetExhausted as exc:
            final = self.session.final if self.session is not None else None
            return self.nack("budget", str(exc), retry=True, status=None if final is None else final[1])
        except ConnectionError as exc:  # the link dropped mid-conversation
            self.last_error = f"link: {exc}"
            result = _SILENT
        finally:
            self.frames += conv.frames_sent
            self.conv = None
            await link.close()
        if result is _SILENT:
            self.silences += 1
        return result

    def _unreachable(self) -> Nack:
        why = f"label did not answer within {self.job.deadline_s} s ({self.connects} connects"
        if self.silences:
            why += f", went silent {self.silences} times"
        why += ")"
        if self.last_error:
            why += f"; last: {self.last_error}"
        heard = self.checkins.latest(self.job.mac) if self.checkins is not None else None
        if heard is not None and heard.checkin.auth is None and self.session is not None:
            why += "; its last check-in was unauthenticated (not paired?)"
        return self.nack("unreachable", why, retry=True)

    async def _converse(self, conv: Conversation) -> Ack | Nack | None:
        if isinstance(self.job, PairJob):
            return await self._pair(conv, self.job)
        if self.session is not None and self.session.final is not None:
            return self._outcome()  # the label's final word came on an earlier connection
        if isinstance(self.job, ImageJob):
            return await self._image(conv, self.job)
        assert isinstance(self.job, CommandJob)
        return await self._command(conv, self.job)

    def _heard_checkin(self) -> Checkin | None:
        """The label's latest check-in, unverified (the gateway has no label key): used only as
        a hint (a transfer to resume), never believed."""
        heard = self.checkins.latest(self.job.mac) if self.checkins is not None else None
        return None if heard is None else heard.checkin

    async def _send_ticket(self, conv: Conversation) -> None:
        """The server's ticket, unchanged, until the label has answered under the job key."""
        if not self.ticket_heard:
            assert isinstance(self.job, (ImageJob, CommandJob))
            await conv.send_all([self.job.ticket])

    async def _next(self, conv: Conversation, timeout_s: float) -> Frame | None:
        frame = await conv.next_frame(timeout_s)
        if frame is not None and not isinstance(frame, JobStatus):
            self.ticket_heard = True  # it verified under the job key
        return frame

    async def _await_final(self, conv: Conversation, ask: Callable[[], Frame]) -> bool:
        """After the label's last answer, its `JobStatus` (sent with it, or again when asked
        with a frame that still uses the job's counters); False if it stays silent."""
        session = self.session
        assert session is not None
        for _ in range(self.settings.max_timeouts):
            if session.final is not None:
                return True
            frame = await self._next(conv, self.settings.reply_timeout_s)
            if frame is None and session.final is None:
                await self.ensure(1)
                await conv.send_all([session.seal(ask())])
        return session.final is not None

    # -- the three kinds ------------------------------------------------------------------
    async def _pair(self, conv: Conversation, job: PairJob) -> Ack | None:
        loop = asyncio.get_running_loop()
        for _ in range(self.settings.attempts):
            await conv.send_all([job.pair_request])
            until = loop.time() + self.settings.reply_timeout_s
            while (left := until - loop.time()) > 0:
                frame = await conv.next_frame(left)
                if (isinstance(frame, Checkin) and frame.auth is not None
                        and frame.status_flags & CheckinFlag.PAIRED):
                    return self.ack(frame, conv.last_raw)
        self.last_error = f"no answer to {self.settings.attempts} pairing requests"
        return _SILENT

    async def _image(self, conv: Conversation, job: ImageJob) -> Ack | Nack | None:
        session = self.session
        assert session is not None
        checkin = self._heard_checkin()
        resume = self.silences > 0 or (checkin is not None and bool(checkin.status_flags & CheckinFlag.TRANSFER_PENDING))
        headroom = self.settings.window + 2
        await self.ensure(headroom)
        sealed = session.send_update(job.update, max_frame=conv.link.max_frame, window=self.settings.window,
                                     max_timeouts=self.settings.max_timeouts, resume=resume)
        sender = sealed.sender  # frames sealed one by one below, so a budget cut sends all it can
        await self._send_ticket(conv)
        await self._send(conv, sender.start())
        while not sender.finished and session.final is None:
            frame = await self._next(conv, self.settings.reply_timeout_s)
            if isinstance(frame, JobStatus):
                break
            await self.ensure(headroom)
            if frame is None:
                await self._send_ticket(conv)  # lost? the label ignores it if it has it
            await self._send(conv, sender.on_timeout() if frame is None else sender.handle(frame))
        if session.final is None and sender.finished:
            tid = sender.offer.transfer_id
            await self._await_final(conv, lambda: ImageStatusRequest(transfer_id=tid))
        if session.final is not None:
            return self._outcome()
        if sender.done:
            self.last_error = "the label displayed the image, but its final word was not heard"
        else:
            self.last_error = sender.error or f"transfer failed with code {sender.error_code:#04x}"
        return _SILENT  # the next connection asks again (the label repeats its final word)

    async def _send(self, conv: Conversation, frames: list[Frame]) -> None:
        """Seal and send each frame in turn (`BudgetExhausted` after the last one that fits)."""
        session = self.session
        assert session is not None
        for frame in frames:
            await conv.send_all([session.seal(frame)])

    async def _command(self, conv: Conversation, job: CommandJob) -> Ack | Nack | None:
        session = self.session
        assert session is not None
        loop = asyncio.get_running_loop()
        for _ in range(self.settings.attempts):
            await self.ensure(1)
            command = replace(job.command, seq=session.next_seq())
            await self._send_ticket(conv)
            await conv.send_all([session.seal(command)])
            until = loop.time() + self.settings.reply_timeout_s
            while (left := until - loop.time()) > 0 and session.final is None:
                frame = await self._next(conv, left)
                if isinstance(frame, ControlResponse):
                    await self._await_final(conv, lambda: replace(job.command, seq=session.next_seq()))
                    break
            if session.final is not None:
                return self._outcome()
        self.last_error = f"no final word after {self.settings.attempts} {job.command.name} commands"
        return _SILENT


def first_reservation(job: JobEnvelope, settings: JobSettings) -> int:
    """The counters to note with a job when it is spooled, so that its first protocol steps
    (the whole of most jobs) need no further durable write: pass it as ``reserved``. A
    pairing uses no counter of the gateway's (the server sealed its one frame)."""
    if isinstance(job, PairJob):
        return 0
    assert isinstance(job, (ImageJob, CommandJob))
    return min(job.counter_limit, job.first + settings.window + 2 + settings.reserve_chunk)


async def run_job(radio: Radio, job: JobEnvelope, *, job_key: bytes | None = None,
                  checkins: CheckinTracker | None = None, settings: JobSettings = JobSettings(),
                  deadline: float | None = None, used_through: int = 0, reserved: int = 0,
                  reserve: Reserve | None = None) -> Ack | Nack:
    """Carry out `job` on the label it names; return the `Ack` or `Nack` to publish.

    Connects when the label listens: a refused connect is retried on the label's next check-in
    (from `checkins`) or every ``settings.connect_retry_s``, until ``deadline`` (event-loop
    time; default: now + ``job.deadline_s``), then `Nack` "unreachable" (retry). At least one
    connect is always tried, so a job resumed after a restart past its deadline still gets a
    chance. A label that goes silent mid-job is waited for the same way; an image transfer then
    resumes where the label is (as it does when the label's check-in shows TRANSFER_PENDING).

    An image or command job needs ``job_key`` (`firmware_proto.envelope.open_job_key`): it
    sends the job's ticket first, seals only with counters in the ticket's range (`JobSession`)
    and nacks "budget" (retry) rather than go past it. The job ends with the label's final word,
    forwarded raw in the ack (or in the nack of a refused image or command). With ``reserve``
    (the spool's `note_used`), no counter above ``reserved`` is used before ``reserve(n)``
    returned for an ``n`` covering it; ``used_through`` is the highest counter a previous run of
    this job may have used (a restart), and the job starts above it. A pairing forwards the
    server's pair request as it is and acks with the label's check-in under its new key.

    Never raises for anything the label or the radio does (a radio that is down makes the label
    unreachable); cancellation propagates, and so does whatever ``reserve`` raises (a spool that
    cannot be written: the job must not go on without its counters noted).
    """
    loop = asyncio.get_running_loop()
    end = loop.time() + job.deadline_s if deadline is None else deadline
    run = _JobRun(radio, job, job_key=job_key, checkins=checkins, settings=settings, deadline=end,
                  used_through=used_through, reserved=reserved, reserve=reserve)
    result = await run.run()
    log.debug("job %d for %s: %s after %d frames", job.job_id, job.mac, type(result).__name__, run.frames)
    return result
