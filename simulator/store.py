"""A simulated store: many labels, one shared radio channel, one wake-up scheduler.

Scale is the point (10,000 labels in one process), so:

- a label costs a few small objects while idle: the blank screen is one shared ``bytes``,
  AES keys expand on first use, and nothing runs per label;
- one asyncio task drives every wake-up from a heap (lazy deletion: a label rescheduled
  earlier leaves a stale entry that is skipped when it surfaces);
- every transmission goes through `downlink` / `uplink`, which apply the label's own seeded
  fault streams (loss, corruption, duplicates, latency) and schedule delivery with
  ``loop.call_soon`` / ``call_later`` — never recursively inside the sender's call.

Transports (the in-memory links, the loopback TCP radio) are built on these primitives, so
they all see the same labels and the same faults.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from firmware_proto.frames import DEFAULT_MTU, MAX_FRAME
from firmware_proto.label import MIN_DISPLAY_MV
from firmware_proto.link import CheckinCallback
from firmware_proto.models import LabelModel, get_model

from simulator.battery import DEFAULT_POWER, PowerModel
from simulator.faults import FaultConfig, FaultPlan, LinkFaults, SplitMix64
from simulator.label import SimLabel, factory_key
from simulator.state import StateFile
from simulator.tasks import cancel_and_wait

__all__ = ["StoreConfigError", "StoreConfig", "StoreStats", "SimStore", "label_address"]

log = logging.getLogger(__name__)

_BATCH = 256  # wake-ups handled before yielding to the event loop
_BOOT_S = 0.005  # a rebooted label checks in after this long
_STATE_INTERVAL_S = 1.0  # snapshots of a changed store at most this often (keys, counters: journaled at once)
_STATE_DUTY = 50  # ... and at most 1/50 of the time spent writing them (10,000 labels: every ~20 s)


class StoreConfigError(ValueError):
    """A store setting out of range (names the field and the value)."""


def label_address(index: int, *, prefix: int = 0x02E5) -> str:
    """The MAC of the simulated label number `index` (locally administered, ``02:E5:…``)."""
    if not 0 <= index < 1 << 32:
        raise StoreConfigError(f"index must be in 0..2**32-1, got {index!r}")
    raw = (prefix << 32 | index).to_bytes(6, "big")
    return ":".join(f"{b:02X}" for b in raw)


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """A simulated store, validated once.

    ``labels`` labels cycle through ``models``; addresses are `label_address(1..labels)` and
    factory keys `simulator.label.factory_key(seed, address)`. Every ``wake_interval_s`` a
    label wakes, checks in and listens for ``listen_window_s`` (each frame it hears extends the
    window). ``always_listening`` (or a wake interval of 0) keeps labels receptive all the time;
    they then check in once at start (and after a reboot or time offline), plus every
    ``wake_interval_s`` if it is > 0. The first check-ins are spread over ``start_spread_s``
    (0: over one wake interval), as labels powering up together do. ``state_file`` keeps the
    labels' keys, counters and screens across restarts (`simulator.state`), as real labels
    keep them in flash.
    """

    labels: int = 10
    models: tuple[str, ...] = ("2.9-bwry",)
    seed: int = 0
    wake_interval_s: float = 30.0
    listen_window_s: float = 1.0
    always_listening: bool = False
    max_frame: int = DEFAULT_MTU
    faults: FaultConfig = field(default_factory=FaultConfig)
    power: PowerModel = DEFAULT_POWER
    low_battery_mv: int = MIN_DISPLAY_MV - 100
    start_spread_s: float = 0.0
    state_file: Path | None = None
    first_label: int = 1
    """The number of the first label's address (`label_address`): stores simulated side by side
    on one server (a chain) need labels of their own."""

    def __post_init__(self) -> None:
        if not isinstance(self.labels, int) or not 0 <= self.labels <= 1_000_000:
            raise StoreConfigError(f"labels must be an int in 0..1000000, got {self.labels!r}")
        if not isinstance(self.first_label, int) or not 0 <= self.first_label < (1 << 32) - self.labels:
            raise StoreConfigError(f"first_label must be an int in 0..2**32-1-labels, got {self.first_label!r}")
        if not self.models:
            raise StoreConfigError("models must name at least one label model")
        for name in self.models:
            try:
                get_model(name)
            except KeyError as exc:
                raise StoreConfigError(f"models: {exc.args[0]}") from None
        for name in ("wake_interval_s", "listen_window_s", "start_spread_s"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise StoreConfigError(f"{name} must be a finite number >= 0, got {value!r}")
        if not isinstance(self.max_frame, int) or not 32 <= self.max_frame <= MAX_FRAME:
            raise StoreConfigError(f"max_frame must be an int in 32..{MAX_FRAME}, got {self.max_frame!r}")
        if not isinstance(self.seed, int):
            raise StoreConfigError(f"seed must be an int, got {self.seed!r}")
        if self.state_file is not None and not isinstance(self.state_file, Path):
            raise StoreConfigError(f"state_file must be a Path or None, got {self.state_file!r}")

    @property
    def listens_always(self) -> bool:
        return self.always_listening or self.wake_interval_s == 0


@dataclass(frozen=True, slots=True)
class StoreStats:
    """A one-line view of the store (for `esl simulate` and benchmarks)."""

    labels: int
    paired: int
    listening: int
    offline: int
    low_battery: int
    refreshes: int
    reboots: int
    frames_in: int
    frames_out: int

    def line(self) -> str:
        return (f"labels={self.labels} paired={self.paired} listening={self.listening} "
                f"offline={self.offline} low_battery={self.low_battery} refreshes={self.refreshes} "
                f"reboots={self.reboots} frames_in={self.frames_in} frames_out={self.frames_out}")


Deliver = Callable[[bytes], None]


class SimStore:
    """Labels on one radio channel, woken by one scheduler task (`start` / `aclose`)."""

    def __init__(self, config: StoreConfig, labels: Iterable[SimLabel] | None = None) -> None:
        self.config = config
        plan = FaultPlan(config.faults)
        self.labels: dict[str, SimLabel] = {}
        if labels is not None:
            for label in labels:
                self.labels[label.address] = label
        else:
            models = [get_model(name) for name in config.models]
            rng = SplitMix64(config.seed ^ 0x5EED)
            for i in range(config.labels):
                address = label_address(config.first_label + i)
                model: LabelModel = models[i % len(models)]
                low = plan.starts_low(address)
                self.labels[address] = SimLabel(
                    address, model, factory_key(config.seed, address),
                    faults=None if config.faults.inert else plan.for_label(address),
                    power=config.power, rssi=-45 - rng.below(40),
                    listen_window_s=config.listen_window_s,
                    always_listening=config.listens_always, max_frame=config.max_frame,
                    battery_mv=config.low_battery_mv if low else None)
        self._listeners: list[CheckinCallback] = []
        self._heap: list[tuple[float, int, str]] = []
        self._next: dict[str, float] = {}
        self._seq = 0
        self._task: asyncio.Task[None] | None = None
        self._wakeup: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._offline_logged: set[str] = set()
        self.state: StateFile | None = None
        self._state_task: asyncio.Task[None] | None = None
        self._state_failing = False
        if config.state_file is not None:
            self.state = StateFile(config.state_file, seed=config.seed)
            restored = self.state.load(self.labels)
            if restored:
                log.info("restored %d labels (keys, counters, screens) from %s", restored, config.state_file)

    # -- lifecycle ------------------------------------------------------------------------------
    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def now(self) -> float:
        return self.loop.time()

    async def start(self) -> None:
        """Schedule every label's first wake and start the scheduler task."""
        if self._task is not None:
            return
        self._wakeup = asyncio.Event()
        now = self.now()
        cfg = self.config
        spread = cfg.start_spread_s if cfg.start_spread_s > 0 else cfg.wake_interval_s
        rng = SplitMix64(cfg.seed ^ 0xC10C)
        for address in self.labels:
            self.schedule_wake(address, now + (rng.random() * spread if spread else 0.0))
        self._task = asyncio.create_task(self._run(), name="simulator-store-scheduler")
        if self.state is not None:
            self._save()  # the file exists (and holds the reserved counters) before any frame
            self._state_task = asyncio.create_task(self._persist(), name="simulator-store-state")

    async def aclose(self) -> None:
        """Stop the scheduler (and write the state file, exactly); safe to call twice."""
        task, self._task = self._task, None
        state_task, self._state_task = self._state_task, None
        await cancel_and_wait(task, state_task)
        if self.state is not None and (task is not None or state_task is not None):
            self._save(exact=True)
            self.state.close()

    async def __aenter__(self) -> SimStore:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- the state file ---------------------------------------------------------------------------
    async def _persist(self) -> None:
        assert self.state is not None
        interval = _STATE_INTERVAL_S
        while True:
            await asyncio.sleep(interval)
            if self.state.dirty:
                started = self.now()
                self._save()
                interval = max(_STATE_INTERVAL_S, (self.now() - started) * _STATE_DUTY)

    def _save(self, *, exact: bool = False) -> None:
        """Write a snapshot of the state file."""
        assert self.state is not None
        self._state_io(functools.partial(self.state.write, exact=exact))

    def _state_io(self, action: Callable[[], None]) -> None:
        """Run a state file write; a failure is logged once (and its recovery once)."""
        assert self.state is not None
        try:
            action()
        except OSError as exc:
            if not self._state_failing:
                self._state_failing = True
                log.error("cannot write the simulator state %s: %s", self.state.path, exc)
            return
        if self._state_failing:
            self._state_failing = False
            log.info("simulator state %s written again", self.state.path)

    def _noted(self, label: SimLabel) -> None:
        """After a label's frames: its keys and counters reach the state file before they
        reach the air (see `simulator.state`)."""
        if self.state is not None:
            self._state_io(functools.partial(self.state.note, label))

    # -- the scheduler --------------------------------------------------------------------------
    def schedule_wake(self, address: str, when: float) -> None:
        """Wake `address` at `when` (replaces a later scheduled wake; an earlier one stays)."""
        current = self._next.get(address)
        if current is not None and current <= when and current >= self.now():
            return
        self._next[address] = when
        self._seq += 1
        heapq.heappush(self._heap, (when, self._seq, address))
        if self._wakeup is not None and self._heap[0][2] == address:
            self._wakeup.set()

    async def _run(self) -> None:
        assert self._wakeup is not None
        heap = self._heap
        while True:
            if not heap:
                await self._wakeup.wait()
                self._wakeup.clear()
                continue
            delay = heap[0][0] - self.now()
            if delay > 0:
                self._wakeup.clear()
                try:
                    async with asyncio.timeout(delay):
                        await self._wakeup.wait()
                except TimeoutError:
                    pass
                continue
            handled = 0
            now = self.now()
            while heap and heap[0][0] <= now and handled < _BATCH:
                when, _, address = heapq.heappop(heap)
                if self._next.get(address) != when:
                    continue  # superseded
                del self._next[address]
                handled += 1
                self._wake(address, now)
            await asyncio.sleep(0)

    def _wake(self, address: str, now: float) -> None:
        label = self.labels[address]
        cfg = self.config
        if label.online(now) and label.faults is not None:
            off = label.faults.goes_offline()
            if off:
                label.take_offline(now, off)
        if not label.online(now):
            if address not in self._offline_logged:
                self._offline_logged.add(address)
                log.info("label %s is off the air until %.1f", address, label.offline_until)
            self.schedule_wake(address, label.offline_until)
            return
        if address in self._offline_logged:
            self._offline_logged.discard(address)
            log.info("label %s is back on the air", address)
        frame = label.wake(now)
        if frame is not None:
            self._noted(label)
            self.uplink(label, frame, functools.partial(self._checkin, address, rssi=label.rssi))
        if cfg.wake_interval_s > 0:
            self.schedule_wake(address, now + cfg.wake_interval_s)

    def _checkin(self, address: str, frame: bytes, *, rssi: int) -> None:
        for listener in list(self._listeners):
            listener(address, frame, rssi)

    # -- the air ------------------------------------------------------------------------------
    def add_checkin_listener(self, callback: CheckinCallback) -> None:
        """Hear every check-in (address, frame, RSSI) that survives the uplink's faults."""
        self._listeners.append(callback)

    def remove_checkin_listener(self, callback: CheckinCallback) -> None:
        if callback in self._listeners:
            self._listeners.remove(callback)

    def _transmit(self, faults: LinkFaults | None, data: bytes, deliver: Deliver) -> None:
        loop = self.loop
        if faults is None:
            loop.call_soon(deliver, data)
            return
        for delay, copy in faults.deliveries(data):
            if delay > 0:
                loop.call_later(delay, deliver, copy)
            else:
                loop.call_soon(deliver, copy)

    def downlink(self, label: SimLabel, data: bytes, deliver: Deliver) -> None:
        """Send `data` toward `label`: faults applied, `deliver` called on arrival."""
        self._transmit(None if label.faults is None else label.faults.downlink, data, deliver)

    def uplink(self, label: SimLabel, data: bytes, deliver: Deliver) -> None:
        """Send `data` from `label` toward the gateway: faults applied, `deliver` on arrival."""
        self._transmit(None if label.faults is None else label.faults.uplink, data, deliver)

    def hand_to_label(self, label: SimLabel, frame: bytes) -> list[bytes]:
        """A frame arrived at `label`'s antenna: its replies (the label may reboot after)."""
        reboots = label.reboots
        replies = label.receive(frame, self.now())
        self._noted(label)
        if label.reboots != reboots:
            log.info("label %s rebooted", label.address)
            self.schedule_wake(label.address, self.now() + _BOOT_S)
        return replies

    def to_label(self, address: str, frame: bytes, reply: Deliver) -> None:
        """One frame gateway → label over the faulty air; each reply reaches `reply`."""
        label = self.label(address)

        def arrive(data: bytes) -> None:
            for out in self.hand_to_label(label, data):
                self.uplink(label, out, reply)

        self.downlink(label, frame, arrive)

    def connect(self, address: str) -> bool:
        """Whether the label answers a connection now (awake and on the air)."""
        label = self.labels.get(address)
        if label is None:
            return False
        now = self.now()
        if not label.listening(now):
            return False
        if not label.always_listening:
            label.awake_until = max(label.awake_until, now + label.listen_window_s)
        return True

    # -- control ------------------------------------------------------------------------------
    def label(self, address: str) -> SimLabel:
        try:
            return self.labels[address]
        except KeyError:
            raise KeyError(f"no simulated label {address!r} in this store") from None

    def take_offline(self, address: str, seconds: float) -> None:
        """Put a label off the air for `seconds`; it checks in when it is back."""
        label = self.label(address)
        label.take_offline(self.now(), seconds)
        self.schedule_wake(address, label.offline_until)

    def wake_now(self, address: str) -> None:
        self.schedule_wake(address, self.now())

    def stats(self) -> StoreStats:
        now = self.now() if self._loop is not None else 0.0
        labels = self.labels.values()
        return StoreStats(
            labels=len(self.labels),
            paired=sum(1 for lb in labels if lb.flash.label_key is not None),
            listening=sum(1 for lb in labels if lb.listening(now)),
            offline=sum(1 for lb in labels if not lb.online(now)),
            low_battery=sum(1 for lb in labels if lb.battery.millivolts < MIN_DISPLAY_MV),
            refreshes=sum(lb.refreshes for lb in labels),
            reboots=sum(lb.reboots for lb in labels),
            frames_in=sum(lb.frames_in for lb in labels),
            frames_out=sum(lb.frames_out for lb in labels),
        )
