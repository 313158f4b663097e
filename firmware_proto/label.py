"""The label side of the protocol, sans-IO: `LabelSession` (RAM) over `LabelFlash` (persisted).

`LabelSession.receive(frame_bytes)` returns the frames to send back and never raises on radio
input: a frame it refuses becomes a `FrameRejected` event (with the reason), because a label
cannot throw at the air. The simulator drives labels with this class; its events tell the
simulator what the panel and LED do.

Persistence rules (what survives a reboot is exactly `LabelFlash`):

- keys, the framebuffer on the panel, the in-flight image transfer (real labels write parts to
  SPI flash) and both counters;
- counters are written on every use, as an append-only log in a dedicated flash sector (4-byte
  records, one 4 KiB erase per 1024 frames: 10⁸ frames at 100k erase cycles), so after a reboot
  they continue exactly: the label never reuses a transmit counter (nonce reuse would break
  AES-CCM) and never accepts a replayed frame;
- if the gateway loses its counters (restored database, new gateway), the label's check-in
  carries ``rx_counter`` (the highest counter it accepted), authenticated, and the gateway
  continues above it.

Jobs (`firmware_proto.jobkeys`): a gateway never holds the label key. A job starts with the
server's `JobTicket` (authenticated with the label key, counter above every counter accepted
so far); the label derives the job key from it and accepts the job's frames under that key
only with counters inside the ticket's range, answering under the job key. When the job ends
(image displayed or refused, command answered) the label sends its final word, a `JobStatus`
authenticated with its long-term key, and forgets the job key; so does a new ticket. The last
`JobStatus` is kept (`LabelFlash.ended`) and sent again, unchanged, to a request that still
uses the ended job's counters (its answer was lost), at most `jobkeys.MAX_REPEATS` times; the
request itself does nothing. Frames
authenticated with the label key itself (only the server can make them: tools and tests that
hold the key) are accepted as before and end no job.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace

from firmware_proto.auth import Direction, FrameKey, ReplayWindow, seal, unwrap_key, verify
from firmware_proto.commands import BasicState, EslError, SensorIndex
from firmware_proto.errors import ProtocolError, TransferError
from firmware_proto.frames import (
    DEFAULT_MTU, Checkin, CheckinFlag, ControlCommand, ControlResponse, Frame, ImageOffer,
    ImagePart, ImageStatus, ImageStatusRequest, JobStatus, JobTicket, PairRequest, TransferState,
    address_bytes, parse_frame,
)
from firmware_proto.jobkeys import RESULT_OK, EndedJob, JobGrant, derive_job_key
from firmware_proto.image import Region, image_hash
from firmware_proto.models import LabelModel
from firmware_proto.transfer import ImageReceiver, TransferResult, framebuffer_size
from firmware_proto.wire import I16, U16

__all__ = [
    "FIRMWARE_VERSION", "LOW_BATTERY_MV", "MIN_DISPLAY_MV", "LabelFlash", "LabelSession",
    "LabelEvent", "ImageDisplayed", "DisplayScheduled", "LedChanged", "FactoryReset", "ServiceReset", "Paired",
    "Unpaired", "TransferFailed", "FrameRejected", "framebuffer_size", "blank_framebuffer",
]

FIRMWARE_VERSION = 0x0100
LOW_BATTERY_MV = 2400
"""Below this the check-in sets LOW_BATTERY."""
MIN_DISPLAY_MV = 2200
"""Below this the label refuses display updates with Insufficient Battery (0x08)."""
LED_COUNT = 1
MAX_EVENTS = 256
"""Events kept until `pop_events`; older ones are dropped (and counted) past this."""


@functools.lru_cache(maxsize=None)
def blank_framebuffer(model: LabelModel) -> bytes:
    """All white: palette index 1 in every pixel. One shared (immutable) object per model, so
    10,000 fresh simulated labels do not hold 10,000 copies."""
    byte = 0xFF if model.bits_per_pixel == 1 else 0x55
    return bytes((byte,)) * framebuffer_size(model)


# -- events ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ImageDisplayed:
    """The panel now shows `framebuffer` (hash `image_hash`); region None = whole screen."""

    image_hash: bytes
    region: Region | None
    refresh_only: bool = False  # a Refresh Display / Display Image command, not a new image


@dataclass(frozen=True, slots=True)
class LedChanged:
    led_index: int
    color_brightness: int
    flash_pattern: int
    off_period: int
    on_period: int
    repeat: int
    absolute_time: int | None = None  # LED Timed Control: when to start (ESL absolute time, ms)


@dataclass(frozen=True, slots=True)
class DisplayScheduled:
    """Display Timed Image: show image `image_index` at `absolute_time` (ESL absolute time, ms).

    The label keeps no clock of its own in this protocol; the simulator (or firmware) acts on
    this event when the time comes."""

    image_index: int
    absolute_time: int


@dataclass(frozen=True, slots=True)
class FactoryReset:
    pass


@dataclass(frozen=True, slots=True)
class ServiceReset:
    pass


@dataclass(frozen=True, slots=True)
class Paired:
    esl_id: int


@dataclass(frozen=True, slots=True)
class Unpaired:
    pass


@dataclass(frozen=True, slots=True)
class TransferFailed:
    transfer_id: int
    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class FrameRejected:
    reason: str


LabelEvent = (ImageDisplayed | DisplayScheduled | LedChanged | FactoryReset | ServiceReset | Paired
              | Unpaired | TransferFailed | FrameRejected)


# -- persisted state -------------------------------------------------------------------------


@dataclass(slots=True)
class LabelFlash:
    """Everything a label keeps across a reboot. Mutable: it *is* the label's flash."""

    model: LabelModel
    factory_key: bytes = field(repr=False)  # keys stay out of reprs (logs, tracebacks)
    framebuffer: bytes
    label_key: bytes | None = field(default=None, repr=False)
    esl_id: int = 0
    tx_counter: int = 0                                        # last counter sent under label_key
    rx: ReplayWindow = field(default_factory=ReplayWindow)      # gateway → label, label_key
    factory_rx: ReplayWindow = field(default_factory=ReplayWindow)  # pairing frames; never reset
    transfer: ImageReceiver | None = None
    last_result: tuple[int, TransferState, int] | None = None  # (transfer id, state, error)
    job: JobGrant | None = None          # the running job (from its ticket), key included
    ended: EndedJob | None = None        # the last job that ended, with its final JobStatus

    @classmethod
    def new(cls, model: LabelModel, factory_key: bytes) -> LabelFlash:
        """A label fresh from the factory: unpaired, white screen."""
        FrameKey(factory_key)  # validates the length
        return cls(model=model, factory_key=factory_key, framebuffer=blank_framebuffer(model))

    def forget_key(self) -> None:
        self.label_key, self.tx_counter, self.rx = None, 0, ReplayWindow()
        self.job, self.ended = None, None


class LabelSession:
    """One label's protocol engine. Caller-supplied sensors: `battery_mv`, `temperature_c`, `rssi`.

    ``addressed_replies=True`` puts the label's address in every frame it sends (for a shared
    store radio where frames of many labels travel on one channel).
    """

    def __init__(self, model: LabelModel, address: str | bytes, flash: LabelFlash, *,
                 max_frame: int = DEFAULT_MTU, addressed_replies: bool = False,
                 firmware_version: int = FIRMWARE_VERSION) -> None:
        if flash.model != model:
            raise ProtocolError(f"flash belongs to a {flash.model.name}, not a {model.name}")
        self.model = model
        self.address = address_bytes(address)
        self.flash = flash
        self.max_frame = max_frame
        self.addressed_replies = addressed_replies
        self.firmware_version = firmware_version
        self.battery_mv = 3000
        self.temperature_c = 20.0
        self.rssi = 0
        self.led: LedChanged | None = None
        self.basic_state = BasicState(0)
        self._events: list[LabelEvent] = []
        self._rebooted = True
        self._key: FrameKey | None = None
        self._factory_key = FrameKey(flash.factory_key)
        self.rejected = 0
        self.events_dropped = 0
        self._orphans: list[ImagePart] = []
        self._orphan_bytes = 0
        self._hash_of: bytes | None = None
        self._hash = b""
        self._job_key: FrameKey | None = None
        self._reply_key: FrameKey | None = None  # set while answering a frame of the running job
        self._final: bytes | None = None         # the JobStatus that frame's handling produced
        self._command_result = RESULT_OK

    # -- public state -------------------------------------------------------------------
    @property
    def paired(self) -> bool:
        return self.flash.label_key is not None

    @property
    def framebuffer(self) -> bytes:
        return self.flash.framebuffer

    @property
    def displayed_hash(self) -> bytes:
        fb = self.flash.framebuffer
        if self._hash_of is not fb:  # cached per framebuffer object (bytes are immutable)
            self._hash_of, self._hash = fb, image_hash(fb)
        return self._hash

    def pop_events(self) -> list[LabelEvent]:
        """Events since the last call, oldest first."""
        out, self._events = self._events, []
        return out

    # -- outgoing ---------------------------------------------------------------------------
    def checkin(self) -> bytes:
        """The label report to send on waking: authenticated if paired, plain if not."""
        flags = CheckinFlag(0)
        if self.paired:
            flags |= CheckinFlag.PAIRED
        if self.battery_mv < LOW_BATTERY_MV:
            flags |= CheckinFlag.LOW_BATTERY
        if self.flash.transfer is not None:
            flags |= CheckinFlag.TRANSFER_PENDING
        if self._rebooted:
            flags |= CheckinFlag.REBOOTED
            self._rebooted = False
        rx = self.flash.rx if self.paired else self.flash.factory_rx
        frame = Checkin(
            address=self.address, model_id=self.model.model_id, firmware_version=self.firmware_version,
            status_flags=flags, displayed_hash=self.displayed_hash,
            battery_mv=max(0, min(0xFFFF, int(self.battery_mv))),
            temperature_c=max(-128, min(127, round(self.temperature_c))),
            rssi=max(-128, min(127, int(self.rssi))), rx_counter=rx.highest)
        return self._send(frame)

    def _send(self, frame: Frame) -> bytes:
        """`frame` sealed with the next counter: under the job key when it answers a frame of
        the running job, else under the label key (plain when unpaired)."""
        if self.addressed_replies and frame.address is None:
            frame = replace(frame, address=self.address)
        key = self._reply_key or self._label_key()
        if key is None:
            return frame.to_bytes()
        self.flash.tx_counter += 1
        return seal(frame, key, self.address, Direction.FROM_LABEL, self.flash.tx_counter)

    def _running_job_key(self) -> FrameKey | None:
        job = self.flash.job
        if job is None:
            self._job_key = None
        elif self._job_key is None or self._job_key.key != job.key:
            self._job_key = FrameKey(job.key)
        return self._job_key

    def _end_job(self, result: int) -> None:
        """The running job is over: seal the final `JobStatus` under the LABEL key (the gateway
        cannot make or alter one), forget the job key, keep the status for a lost answer."""
        job, key = self.flash.job, self._label_key()
        if job is None or key is None:
            return
        status = JobStatus(
            address=self.address, job_id=job.job_id, attempt=job.attempt, result=result,
            displayed_hash=self.displayed_hash, battery_mv=max(0, min(0xFFFF, int(self.battery_mv))),
            temperature_c=max(-128, min(127, round(self.temperature_c))),
            rssi=max(-128, min(127, int(self.rssi))), rx_counter=self.flash.rx.highest)
        self.flash.tx_counter += 1
        raw = seal(status, key, self.address, Direction.FROM_LABEL, self.flash.tx_counter)
        self.flash.job, self._job_key, self._reply_key = None, None, None
        self.flash.ended = EndedJob(job.job_id, job.first, job.last, raw)
        self._final = raw

    def _label_key(self) -> FrameKey | None:
        if self.flash.label_key is None:
            self._key = None
        elif self._key is None or self._key.key != self.flash.label_key:
            self._key = FrameKey(self.flash.label_key)
        return self._key

    def _event(self, event: LabelEvent) -> None:
        if len(self._events) >= MAX_EVENTS:  # nobody is popping: keep memory bounded
            del self._events[0]
            self.events_dropped += 1
        self._events.append(event)

    def _reject(self, reason: str) -> list[bytes]:
        self.rejected += 1
        self._event(FrameRejected(reason))
        return []

    # -- incoming ---------------------------------------------------------------------------
    def receive(self, data: bytes) -> list[bytes]:
        """Handle one frame from the gateway; return the frames to send back (maybe none)."""
        try:
            frame = self._parse_for_me(data)
        except ProtocolError as exc:
            return self._reject(str(exc))
        if frame is None:
            return []
        self._reply_key, self._final, self._command_result = None, None, RESULT_OK
        try:
            if isinstance(frame, PairRequest):
                return self._pair(frame)
            if isinstance(frame, JobTicket):
                return self._ticket(frame)
            if not isinstance(frame, (ControlCommand, ImageOffer, ImagePart, ImageStatusRequest)):
                return self._reject(f"{type(frame).__name__} is not a frame a label accepts")
            if self._label_key() is None:
                return self._reject(f"{type(frame).__name__}: label is not paired")
            if frame.auth is None:
                return self._reject(f"{type(frame).__name__}: not authenticated")
            in_job = self._open(frame)
        except ProtocolError as exc:
            return self._reject(str(exc)) + self._repeat_final(frame)
        try:
            self._reply_key = self._job_key if in_job else None
            if isinstance(frame, ControlCommand):
                out = self._command(frame)
                if in_job:  # a command job is one command: answered, it is over
                    self._end_job(self._command_result)
            elif isinstance(frame, ImageOffer):
                out = self._offer(frame)
            elif isinstance(frame, ImagePart):
                out = self._part(frame)
            else:
                out = [self._send(self._status_for(frame.transfer_id, frame.seq))]
            return out if self._final is None else [*out, self._final]
        finally:
            self._reply_key, self._final = None, None

    def _open(self, frame: Frame) -> bool:
        """Verify a frame for the label (`AuthError` if refused); True when it came under the
        running job's key. Inside the job's range only the job key counts; outside it, only
        the label key."""
        assert frame.auth is not None
        counter = frame.auth.counter
        job = self.flash.job
        in_job = job is not None and job.covers(counter)
        key = self._running_job_key() if in_job else self._label_key()
        assert key is not None
        self.flash.rx.check(counter)
        verify(frame, key, self.address, Direction.TO_LABEL)
        self.flash.rx.accept(counter)
        return in_job

    def _repeat_final(self, frame: Frame) -> list[bytes]:
        """The ended job's `JobStatus` again, for a request that still uses that job's counters
        (its answer was lost). The request is not obeyed; the bytes are the ones already sent."""
        ended, auth = self.flash.ended, frame.auth
        if ended is None or auth is None or not ended.covers(auth.counter):
            return []
        if isinstance(frame, (ControlCommand, ImageOffer, ImageStatusRequest)) or frame.ack_req:
            status = ended.repeat()
            return [] if status is None else [status]
        return []

    def _ticket(self, ticket: JobTicket) -> list[bytes]:
        """A new job: check the ticket (label key, counter above all accepted), derive the job
        key. Whatever job ran before is over (its key forgotten, its status no longer repeated)."""
        key = self._label_key()
        if key is None:
            return self._reject("job_ticket: label is not paired")
        if ticket.auth is None:
            return self._reject("job_ticket: not authenticated")
        counter, highest = ticket.auth.counter, self.flash.rx.highest
        job = self.flash.job
        if job is not None and (job.job_id, job.attempt, job.first, job.last) == (
                ticket.job_id, ticket.attempt, ticket.first, ticket.last):
            verify(ticket, key, self.address, Direction.TO_LABEL)
            return []  # the running job's own ticket again (the gateway was not sure it arrived)
        if counter <= highest:
            return self._reject(f"job_ticket: counter {counter} is not above {highest}: replay")
        verify(ticket, key, self.address, Direction.TO_LABEL)
        self.flash.rx.accept(counter)
        assert self.flash.label_key is not None
        job_key = derive_job_key(self.flash.label_key, self.address, ticket.job_id, ticket.attempt,
                                 ticket.first, ticket.last)
        self.flash.job = JobGrant(ticket.job_id, ticket.attempt, ticket.first, ticket.last, job_key)
        self.flash.ended, self._job_key = None, None
        return []

    def _parse_for_me(self, data: bytes) -> Frame | None:
        frame = parse_frame(data)
        if frame.address is not None and frame.address != self.address:
            return None  # another label's frame on a shared channel
        return frame

    # -- pairing ------------------------------------------------------------------------------
    def _pair(self, frame: PairRequest) -> list[bytes]:
        if frame.auth is None:
            raise TransferError("pair_request: not authenticated")
        if self._repeated_pairing(frame):  # its answer was lost: confirm again, change nothing
            return [self.checkin()]
        self.flash.factory_rx.check(frame.auth.counter)
        verify(frame, self._factory_key, self.address, Direction.TO_LABEL)
        new_key = unwrap_key(self.flash.factory_key, self.address, frame.auth.counter, frame.wrapped_key)
        self.flash.factory_rx.accept(frame.auth.counter)
        self.flash.forget_key()
        self.flash.label_key, self.flash.esl_id = new_key, frame.esl_id
        self._event(Paired(frame.esl_id))
        return [self.checkin()]

    def _repeated_pairing(self, frame: PairRequest) -> bool:
        """True for the very pair request the label last accepted (same counter, authentic,
        wrapping the key it now holds): the gateway did not hear the confirming check-in."""
        assert frame.auth is not None
        if self.flash.label_key is None or frame.auth.counter != self.flash.factory_rx.highest:
            return False
        try:
            verify(frame, self._factory_key, self.address, Direction.TO_LABEL)
            key = unwrap_key(self.flash.factory_key, self.address, frame.auth.counter, frame.wrapped_key)
        except ProtocolError:
            return False
        return key == self.flash.label_key

    # -- ESL control point ---------------------------------------------------------------
    def _command(self, cmd: ControlCommand) -> list[bytes]:
        name, seq = cmd.name, cmd.seq

        def resp(rname: str, data: bytes = b"", **params: int) -> list[bytes]:
            return [self._send(ControlResponse.make(rname, seq=seq, data=data, **params))]

        def error(code: EslError) -> list[bytes]:
            self._command_result = int(code)
            return resp("error", error_code=int(code))

        if name == "ping" or name == "update_complete":
            return resp("basic_state", state=int(self.basic_state))
        if name == "service_reset":
            self.basic_state &= ~BasicState.SERVICE_NEEDED
            self._event(ServiceReset())
            return resp("basic_state", state=int(self.basic_state))
        if name in ("unassociate", "factory_reset"):
            out = resp("basic_state", state=int(self.basic_state))  # sealed before the key goes
            if self._reply_key is not None:
                self._end_job(RESULT_OK)  # the final word too, while there is a key to say it with
            self.flash.forget_key()
            if name == "factory_reset":
                self.flash.framebuffer = blank_framebuffer(self.model)
                self.flash.transfer, self.flash.last_result, self.flash.esl_id = None, None, 0
                self.led, self.basic_state = None, BasicState(0)
                self._event(FactoryReset())
            else:
                self._event(Unpaired())
            return out
        if name == "read_sensor":
            index = cmd.get("sensor_index")
            if index == SensorIndex.BATTERY_MV:
                return resp("sensor_value", sensor_index=index,
                            data=U16(max(0, min(0xFFFF, int(self.battery_mv)))).serialize())
            if index == SensorIndex.TEMPERATURE:
                centi = max(-32768, min(32767, round(self.temperature_c * 100)))
                return resp("sensor_value", sensor_index=index, data=I16(centi).serialize())
            return error(EslError.INVALID_PARAMETERS)
        if name in ("refresh_display", "display_image", "display_timed_image"):
            if cmd.get("display_index") != 0:
                return error(EslError.INVALID_PARAMETERS)
            image_index = 0 if name == "refresh_display" else cmd.get("image_index")
            if image_index != 0:
                return error(EslError.INVALID_IMAGE_INDEX)
            if self.battery_mv < MIN_DISPLAY_MV:
                return error(EslError.INSUFFICIENT_BATTERY)
            if name == "display_timed_image":
                if cmd.get("absolute_time") == 0:
                    return error(EslError.IMPLAUSIBLE_ABSOLUTE_TIME)
                self.basic_state |= BasicState.PENDING_DISPLAY_UPDATE
                self._event(DisplayScheduled(image_index, cmd.get("absolute_time")))
                return resp("display_state", display_index=0, image_index=0)
            self._event(ImageDisplayed(self.displayed_hash, None, refresh_only=True))
            return resp("display_state", display_index=0, image_index=0)
        if name in ("led_control", "led_timed_control"):
            if cmd.get("led_index") >= LED_COUNT:
                return error(EslError.INVALID_PARAMETERS)
            timed = name == "led_timed_control"
            if timed and cmd.get("absolute_time") == 0:
                return error(EslError.IMPLAUSIBLE_ABSOLUTE_TIME)
            self.led = LedChanged(
                cmd.get("led_index"), cmd.get("color_brightness"), cmd.get("flash_pattern"),
                cmd.get("off_period"), cmd.get("on_period"), cmd.get("repeat"),
                cmd.get("absolute_time") if timed else None)
            self._event(self.led)
            if timed:
                self.basic_state |= BasicState.PENDING_LED_UPDATE
            elif self.led.flash_pattern and self.led.color_brightness:
                self.basic_state |= BasicState.ACTIVE_LED
            else:
                self.basic_state &= ~BasicState.ACTIVE_LED
            return resp("led_state", led_index=cmd.get("led_index"))
        return error(EslError.INVALID_OPCODE)

    # -- image transfer ---------------------------------------------------------------------
    def _status_for(self, transfer_id: int, seq: int) -> ImageStatus:
        t = self.flash.transfer
        if t is not None and t.transfer_id == transfer_id:
            return t.status(seq=seq, max_frame=self.max_frame)
        last = self.flash.last_result
        if last is not None and last[0] == transfer_id:
            return ImageStatus(transfer_id=transfer_id, state=last[1], error=last[2], seq=seq)
        return ImageStatus(transfer_id=transfer_id, state=TransferState.NONE, seq=seq)

    def _result(self, offer: ImageOffer, state: TransferState, code: int = 0, reason: str = "") -> list[bytes]:
        self.flash.last_result = (offer.transfer_id, state, code)
        if state is TransferState.FAILED:
            self._event(TransferFailed(offer.transfer_id, code, reason))
        out = [self._send(ImageStatus(transfer_id=offer.transfer_id, state=state, error=code, seq=offer.seq))]
        if self._reply_key is not None and state in (TransferState.DISPLAYED, TransferState.FAILED):
            self._end_job(RESULT_OK if state is TransferState.DISPLAYED else code)
        return out

    def _offer(self, offer: ImageOffer) -> list[bytes]:
        if offer.image_hash == self.displayed_hash:  # already showing it: nothing to send
            self.flash.transfer = None
            return self._result(offer, TransferState.DISPLAYED)
        if self.battery_mv < MIN_DISPLAY_MV:
            return self._result(offer, TransferState.FAILED, TransferResult.INSUFFICIENT_BATTERY,
                                f"battery {self.battery_mv} mV is below {MIN_DISPLAY_MV} mV")
        if offer.base_hash is not None and offer.base_hash != self.displayed_hash:
            return self._result(offer, TransferState.FAILED, TransferResult.BASE_MISMATCH,
                                f"update for {offer.base_hash.hex()}, showing {self.displayed_hash.hex()}")
        t = self.flash.transfer
        if t is not None and t.same_image(offer):
            t.adopt(offer)  # resume: keep every part already in flash
        else:
            try:
                t = ImageReceiver(self.model, offer)
            except TransferError as exc:
                self.flash.transfer = None
                return self._result(offer, TransferState.FAILED, exc.code, str(exc))
            self.flash.transfer = t
        self._adopt_orphans(t)
        if t.complete:
            return self._finish(t, offer.seq)
        return [self._send(t.status(seq=offer.seq, max_frame=self.max_frame))] if offer.ack_req else []

    def _part(self, part: ImagePart) -> list[bytes]:
        t = self.flash.transfer
        if t is None or t.transfer_id != part.transfer_id:
            self._keep_orphan(part)
            return [self._send(self._status_for(part.transfer_id, part.seq))] if part.ack_req else []
        try:
            t.accept(part)
        except TransferError as exc:
            self._reject(str(exc))
            return [self._send(t.status(seq=part.seq, max_frame=self.max_frame))] if part.ack_req else []
        if t.complete:
            return self._finish(t, part.seq)
        return [self._send(t.status(seq=part.seq, max_frame=self.max_frame))] if part.ack_req else []

    def _keep_orphan(self, part: ImagePart) -> None:
        """Hold a part that arrived before its offer (the offer was lost; the sender streams
        the offer and the first parts back to back), so the re-sent offer does not cost the
        parts again. Bounded by the image buffer size; only the newest transfer id is kept."""
        last = self.flash.last_result
        if not part.crc_ok or (last is not None and last[0] == part.transfer_id):
            return
        if self._orphans and self._orphans[0].transfer_id != part.transfer_id:
            self._orphans, self._orphan_bytes = [], 0
        if self._orphan_bytes + len(part.data) <= framebuffer_size(self.model):
            self._orphans.append(part)
            self._orphan_bytes += len(part.data)

    def _adopt_orphans(self, t: ImageReceiver) -> None:
        for part in self._orphans:
            if part.transfer_id == t.transfer_id:
                try:
                    t.accept(part)
                except TransferError:
                    pass  # did not fit the offer after all (wrong size or offset): dropped
        self._orphans, self._orphan_bytes = [], 0

    def _finish(self, t: ImageReceiver, seq: int) -> list[bytes]:
        self.flash.transfer = None
        offer = t.offer
        try:
            result = t.finish(self.flash.framebuffer)
        except TransferError as exc:
            return self._result(_reseq(offer, seq), TransferState.FAILED, exc.code, str(exc))
        self.flash.framebuffer = result
        region = None if offer.region is None else Region(*offer.region)
        self._event(ImageDisplayed(offer.image_hash, region))
        return self._result(_reseq(offer, seq), TransferState.DISPLAYED)


def _reseq(offer: ImageOffer, seq: int) -> ImageOffer:
    return replace(offer, seq=seq)
