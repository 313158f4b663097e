"""One simulated label: `firmware_proto.LabelSession` plus the hardware around it.

The protocol is entirely `firmware_proto`'s (the label side of it); this class adds what a
real label has besides: an e-paper screen (the framebuffer in flash, shown only after the
session verified its hash), a wake/listen cycle, a battery that drains per byte, per wake
and per refresh, an LED, reboots, and time off the air. It takes frame bytes in and gives
frame bytes out, so any transport (in-memory link, loopback radio, a bumble GATT server)
can host it.

Times are plain floats (the event loop's clock, seconds); nothing here sleeps or schedules.
"""

from __future__ import annotations

import logging
import math
import time

from firmware_proto.auth import derive_factory_key
from firmware_proto.frames import DEFAULT_MTU
from firmware_proto.label import (
    FactoryReset, ImageDisplayed, LabelFlash, LabelSession, LedChanged, TransferFailed,
)
from firmware_proto.models import LabelModel

from simulator.battery import DEFAULT_POWER, Battery, PowerModel
from simulator.faults import LabelFaults
from simulator.led import LED_OFF, LedState
from simulator.screen import blank_framebuffer, snapshot_png

__all__ = ["SimLabel", "factory_seed", "factory_key"]

log = logging.getLogger(__name__)

_LED_UNIT_S = 0.01  # ESL LED periods are in units of 10 ms


def factory_seed(seed: int) -> bytes:
    """The manufacturer secret a simulated store's factory keys derive from."""
    return f"eslserver-simulator-{seed}".encode()


def factory_key(seed: int, address: str) -> bytes:
    """The factory key of the simulated label at `address` in a store made with `seed`.

    A gateway gets it the way it would from a manufacturer's label list.
    """
    return derive_factory_key(factory_seed(seed), address)


class SimLabel:
    """A label on the shelf. Cheap when idle: a handful of slots, the shared blank screen.

    ``key`` is the label's factory key (`factory_key` for simulated stores); the label starts
    unpaired with a white screen, as it leaves the factory.

    ``listen_window_s`` is how long it listens after a check-in or a frame; ``always_listening``
    keeps it receptive all the time (used when the radio has no delay). ``rssi`` is what the
    gateway hears from it (fixed per label: it does not move).
    """

    __slots__ = (
        "address", "model", "flash", "session", "battery", "faults", "rssi", "temperature_c",
        "listen_window_s", "always_listening", "max_frame", "awake_until", "offline_until",
        "last_wake", "led", "refreshes", "reboots", "frames_in", "frames_out", "bytes_in",
        "bytes_out", "screen_version",
    )

    def __init__(
        self,
        address: str,
        model: LabelModel,
        key: bytes,
        *,
        faults: LabelFaults | None = None,
        power: PowerModel = DEFAULT_POWER,
        rssi: int = -60,
        listen_window_s: float = 1.0,
        always_listening: bool = False,
        max_frame: int = DEFAULT_MTU,
        battery_mv: int | None = None,
    ) -> None:
        if not math.isfinite(listen_window_s) or listen_window_s < 0:
            raise ValueError(f"listen_window_s must be a finite number >= 0, got {listen_window_s!r}")
        self.address = address
        self.model = model
        # the flash is the label's non-volatile state; the blank screen is one shared object
        self.flash = LabelFlash(model=model, factory_key=key, framebuffer=blank_framebuffer(model))
        self.max_frame = max_frame
        self.session = self._boot()
        self.battery = Battery(power)
        if battery_mv is not None:
            self.battery.set_millivolts(battery_mv)
        self.faults = faults
        self.rssi = rssi
        self.temperature_c = 21.0
        self.listen_window_s = listen_window_s
        self.always_listening = always_listening
        self.awake_until = -math.inf
        self.offline_until = -math.inf
        self.last_wake: float | None = None
        self.led = LED_OFF
        self.refreshes = 0
        self.reboots = 0
        self.frames_in = self.frames_out = self.bytes_in = self.bytes_out = 0
        self.screen_version = 0
        """Bumped on every display refresh (snapshot writers compare it)."""

    def _boot(self) -> LabelSession:
        return LabelSession(self.model, self.address, self.flash, max_frame=self.max_frame)

    # -- state -------------------------------------------------------------------------------
    @property
    def framebuffer(self) -> bytes:
        """What the panel shows now (packed, `firmware_proto.image` layout)."""
        return self.flash.framebuffer

    @property
    def displayed_hash(self) -> bytes:
        return self.session.displayed_hash

    @property
    def paired(self) -> bool:
        return self.session.paired

    def online(self, now: float) -> bool:
        return now >= self.offline_until

    def listening(self, now: float) -> bool:
        """Whether a frame sent to the label at `now` reaches its receiver."""
        return self.online(now) and (self.always_listening or now < self.awake_until)

    def led_at(self, now: float) -> LedState:
        return self.led.at(now)

    def snapshot_png(self) -> bytes:
        """A PNG of the screen in the panel's real colours."""
        return snapshot_png(self.flash.framebuffer, self.model)

    # -- what the hardware does ----------------------------------------------------------------
    def _sensors(self) -> None:
        s = self.session
        s.battery_mv = self.battery.millivolts
        s.temperature_c = self.temperature_c
        s.rssi = self.rssi

    def wake(self, now: float | None = None) -> bytes | None:
        """The label's timer fired: drain a wake, return its check-in frame (None if off air)."""
        now = time.monotonic() if now is None else now
        slept = 0.0 if self.last_wake is None else max(0.0, now - self.last_wake)
        self.last_wake = now
        self.battery.wake(slept)
        if not self.online(now):
            return None
        self._sensors()
        frame = self.session.checkin()
        self._sent(frame)
        self.awake_until = now + self.listen_window_s
        return frame

    def receive(self, frame: bytes, now: float | None = None) -> list[bytes]:
        """A frame reached the antenna: handle it if listening; return the replies.

        ``now`` defaults to `time.monotonic()` (asyncio's default clock), so a transport
        that knows nothing of time (a GATT server) can call ``receive(frame)``. May reboot the label afterwards (fault injection); the replies computed before the
        reboot still go out, as a radio's TX buffer would have them.
        """
        now = time.monotonic() if now is None else now
        if not self.listening(now):
            return []
        self.frames_in += 1
        self.bytes_in += len(frame)
        self.battery.rx(len(frame))
        self._sensors()
        replies = self.session.receive(frame)
        self._events(now)
        for reply in replies:
            self._sent(reply)
        if not self.always_listening:
            self.awake_until = max(self.awake_until, now + self.listen_window_s)
        if self.faults is not None and self.faults.reboots():
            self.reboot(lose_transfer=self.faults.loses_transfer)
        return replies

    def _sent(self, frame: bytes) -> None:
        self.frames_out += 1
        self.bytes_out += len(frame)
        self.battery.tx(len(frame))

    def _events(self, now: float) -> None:
        for ev in self.session.pop_events():
            if isinstance(ev, ImageDisplayed):
                partial = ev.region is not None
                self.battery.refresh(self.model, partial=partial)
                self.refreshes += 1
                self.screen_version += 1
                if not ev.refresh_only:
                    # what the panel shows, by its own hash: observers (benchmarks.chaos) read this
                    # line to check that a label never showed anything it should not have
                    log.info("label %s shows %s", self.address, self.displayed_hash.hex())
            elif isinstance(ev, LedChanged):
                self.led = _led_state(ev, now)
            elif isinstance(ev, FactoryReset):
                self.led = LED_OFF
                self.screen_version += 1
            elif isinstance(ev, TransferFailed):
                log.info("label %s: transfer %d failed: %s", self.address, ev.transfer_id, ev.reason)

    def reboot(self, *, lose_transfer: bool = False) -> None:
        """Power-cycle: RAM is lost, flash and the e-paper image stay.

        The protocol keeps an in-flight transfer in flash, so it resumes; ``lose_transfer``
        also wipes it (a label whose flash write did not complete).
        """
        self.reboots += 1
        if lose_transfer:
            self.flash.transfer = None
        self.session = self._boot()
        self.led = LED_OFF

    def take_offline(self, now: float, seconds: float) -> None:
        """Drop off the air (out of range, shelf moved) until ``now + seconds``."""
        self.offline_until = max(self.offline_until, now + seconds)
        self.awake_until = -math.inf

    def set_battery_mv(self, mv: int) -> None:
        self.battery.set_millivolts(mv)


def _led_state(ev: LedChanged, now: float) -> LedState:
    """ESL LED control → what the LED does, following the ESL Service's field layout.

    Colour: bits 0-1 red, 2-3 green, 4-5 blue (2 bits each), 6-7 brightness. Flash pattern:
    40 bits, each lasting ``on_period`` (bit set) or ``off_period`` (bit clear) × 10 ms.
    Repeat: bit 0 = type (0: a count of patterns, 1: a duration in seconds), bits 1-15 = the
    count or duration; 0 switches the LED off; 0x7FFF flashes until told otherwise.
    """
    cb = ev.color_brightness
    r, g, b = (cb & 3) * 85, (cb >> 2 & 3) * 85, (cb >> 4 & 3) * 85
    colour = r << 16 | g << 8 | b
    amount = ev.repeat >> 1
    if ev.flash_pattern == 0 or amount == 0:
        return LED_OFF
    if amount == 0x7FFF:
        return LedState(on=True, colour=colour, flashing=True, flash_until=None)
    if ev.repeat & 1:
        seconds = float(amount)
    else:
        ones = bin(ev.flash_pattern).count("1")
        seconds = amount * (ones * ev.on_period + (40 - ones) * ev.off_period) * _LED_UNIT_S
    return LedState(on=True, colour=colour, flashing=True, flash_until=now + seconds)
