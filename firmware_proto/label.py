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
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace

from firmware_proto.auth import Direction, FrameKey, ReplayWindow, seal, unwrap_key, verify
from firmware_proto.commands import BasicState, EslError, SensorIndex
from firmware_proto.errors import ProtocolError, TransferError
from firmware_proto.frames import (
    DEFAULT_MTU, Checkin, CheckinFlag, ControlCommand, ControlResponse, Frame, ImageOffer,
    ImagePart, ImageStatus, ImageStatusRequest, PairRequest, TransferState, address_bytes,
    parse_frame,
)
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

    @classmethod
    def new(cls, model: LabelModel, factory_key: bytes) -> LabelFlash:
        """A label fresh from the factory: unpaired, white screen."""
        FrameKey(factory_key)  # validates the length
        return cls(model=model, factory_key=factory_key, framebuffer=blank_framebuffer(model))

    def forget_key(self) -> None:
        self.label_key, self.tx_counter, self.rx = None, 0, ReplayWindow()


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
        if self.addressed_replies and frame.address is None:
            frame = replace(frame, address=self.address)
        key = self._label_key()
        if key is None:
            return frame.to_bytes()
        self.flash.tx_counter += 1
        return seal(frame, key, self.address, Direction.FROM_LABEL, self.flash.tx_counter)

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
        try:
            if isinstance(frame, PairRequest):
                return self._pair(frame)
            if not isinstance(frame, (ControlCommand, ImageOffer, ImagePart, ImageStatusRequest)):
                return self._reject(f"{type(frame).__name__} is not a frame a label accepts")
            key = self._label_key()
            if key is None:
                return self._reject(f"{type(frame).__name__}: label is not paired")
            if frame.auth is None:
                return self._reject(f"{type(frame).__name__}: not authenticated")
            self.flash.rx.check(frame.auth.counter)
            verify(frame, key, self.address, Direction.TO_LABEL)
            self.flash.rx.accept(frame.auth.counter)
        except ProtocolError as exc:
            return self._reject(str(exc))
        if isinstance(frame, ControlCommand):
            return self._command(frame)
        if isinstance(frame, ImageOffer):
            return self._offer(frame)
        if isinstance(frame, ImagePart):
            return self._part(frame)
        return [self._send(self._status_for(frame.transfer_id, frame.seq))]

    def _parse_for_me(self, data: bytes) -> Frame | None:
        frame = parse_frame(data)
        if frame.address is not None and frame.address != self.address:
            return None  # another label's frame on a shared channel
        return frame

    # -- pairing ------------------------------------------------------------------------------
    def _pair(self, frame: PairRequest) -> list[bytes]:
        if frame.auth is None:
            raise TransferError("pair_request: not authenticated")
        self.flash.factory_rx.check(frame.auth.counter)
        verify(frame, self._factory_key, self.address, Direction.TO_LABEL)
        new_key = unwrap_key(self.flash.factory_key, self.address, frame.auth.counter, frame.wrapped_key)
        self.flash.factory_rx.accept(frame.auth.counter)
        self.flash.forget_key()
        self.flash.label_key, self.flash.esl_id = new_key, frame.esl_id
        self._event(Paired(frame.esl_id))
        return [self.checkin()]

    # -- ESL control point ---------------------------------------------------------------
    def _command(self, cmd: ControlCommand) -> list[bytes]:
        name, seq = cmd.name, cmd.seq

        def resp(rname: str, data: bytes = b"", **params: int) -> list[bytes]:
            return [self._send(ControlResponse.make(rname, seq=seq, data=data, **params))]

        def error(code: EslError) -> list[bytes]:
            return resp("error", error_code=int(code))

        if name == "ping" or name == "update_complete":
            return resp("basic_state", state=int(self.basic_state))
        if name == "service_reset":
            self.basic_state &= ~BasicState.SERVICE_NEEDED
            self._event(ServiceReset())
            return resp("basic_state", state=int(self.basic_state))
        if name in ("unassociate", "factory_reset"):
            out = resp("basic_state", state=int(self.basic_state))  # sealed before the key goes
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
        return [self._send(ImageStatus(transfer_id=offer.transfer_id, state=state, error=code, seq=offer.seq))]

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
