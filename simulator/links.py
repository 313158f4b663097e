"""In-memory links and radio: a gateway-side `Link` joined to simulated labels, for tests.

`MemoryLink` satisfies `firmware_proto.link.Link` (structural typing) and talks to one label
of a `SimStore` over the store's faulty air, so it can be:

- whole: each frame arrives as one message (as over BLE GATT);
- byte-by-byte (``mode="bytes"``): each frame travels as a loopback-radio packet
  (`firmware_proto.radio`) whose bytes reach a stream decoder one at a time, in both
  directions — the path a TCP link takes, with corruption landing in the stream;
- lossy (seeded) and delayed: whatever the store's `FaultConfig` says.

`MemoryRadio` satisfies `firmware_proto.link.Radio` over a whole store. `memory_link` joins a
link to a single stand-alone label.
"""

from __future__ import annotations

from typing import Literal

from firmware_proto.link import CheckinCallback, FrameCallback
from firmware_proto.radio import PacketKind, RadioStreamDecoder, encode_packet

from simulator.faults import FaultConfig
from simulator.label import SimLabel
from simulator.store import SimStore, StoreConfig

__all__ = ["LinkMode", "LinkClosedError", "MemoryLink", "MemoryRadio", "memory_link"]

LinkMode = Literal["whole", "bytes"]


class LinkClosedError(ConnectionError):
    """A frame sent on a link that is not connected (or already closed)."""


class MemoryLink:
    """One conversation with one simulated label (the gateway's end)."""

    def __init__(self, store: SimStore, address: str, *, mode: LinkMode = "whole") -> None:
        if mode not in ("whole", "bytes"):
            raise ValueError(f"mode must be 'whole' or 'bytes', got {mode!r}")
        self._store = store
        self._label = store.label(address)
        self._mode: LinkMode = mode
        self._callback: FrameCallback | None = None
        self._connected = False
        self._closed = False
        self._to_label = RadioStreamDecoder()
        self._to_gateway = RadioStreamDecoder()
        self.frames_sent = 0
        self.frames_received = 0
        self.bytes_sent = 0
        self.bytes_received = 0

    @property
    def address(self) -> str:
        return self._label.address

    @property
    def max_frame(self) -> int:
        return self._label.max_frame

    @property
    def label(self) -> SimLabel:
        """The simulated label at the other end (tests inspect it)."""
        return self._label

    async def connect(self) -> None:
        if self._closed:
            raise LinkClosedError(f"link to {self.address} is closed")
        if not self._store.connect(self.address):
            raise ConnectionError(f"label {self.address} is not listening (asleep or off the air)")
        self._connected = True

    async def send(self, frame: bytes) -> None:
        if not self._connected:
            raise LinkClosedError(f"link to {self.address} is not connected")
        self.frames_sent += 1
        self.bytes_sent += len(frame)
        if self._mode == "whole":
            self._store.to_label(self.address, bytes(frame), self._deliver)
            return
        packet = encode_packet(PacketKind.FRAME, self.address, 0, frame)
        self._store.downlink(self._label, packet, self._label_bytes)

    def _label_bytes(self, data: bytes) -> None:
        for i in range(len(data)):
            for packet in self._to_label.feed(data[i:i + 1]):
                for reply in self._store.hand_to_label(self._label, packet.frame):
                    out = encode_packet(PacketKind.FRAME, self.address, self._label.rssi, reply)
                    self._store.uplink(self._label, out, self._gateway_bytes)

    def _gateway_bytes(self, data: bytes) -> None:
        for i in range(len(data)):
            for packet in self._to_gateway.feed(data[i:i + 1]):
                self._deliver(packet.frame)

    def _deliver(self, frame: bytes) -> None:
        if self._closed or not self._connected:
            return
        self.frames_received += 1
        self.bytes_received += len(frame)
        if self._callback is not None:
            self._callback(frame)

    async def close(self) -> None:
        self._connected = False
        self._closed = True

    def set_frame_callback(self, callback: FrameCallback | None) -> None:
        self._callback = callback


class MemoryRadio:
    """A gateway radio over a `SimStore`: hears its check-ins, opens `MemoryLink`s."""

    def __init__(self, store: SimStore, *, mode: LinkMode = "whole") -> None:
        self._store = store
        self._mode: LinkMode = mode
        self._callback: CheckinCallback | None = None
        self._links: list[MemoryLink] = []
        self._started = False

    async def start(self) -> None:
        if not self._started:
            self._store.add_checkin_listener(self._on_checkin)
            self._started = True

    @property
    def is_up(self) -> bool:
        return self._started

    def _on_checkin(self, address: str, frame: bytes, rssi: int) -> None:
        if self._callback is not None:
            self._callback(address, frame, rssi)

    async def open_link(self, address: str) -> MemoryLink:
        link = MemoryLink(self._store, address, mode=self._mode)
        self._links.append(link)
        return link

    def set_checkin_callback(self, callback: CheckinCallback | None) -> None:
        self._callback = callback

    async def close(self) -> None:
        if self._started:
            self._store.remove_checkin_listener(self._on_checkin)
            self._started = False
        links, self._links = self._links, []
        for link in links:
            await link.close()


def memory_link(label: SimLabel, *, faults: FaultConfig | None = None,
                mode: LinkMode = "whole") -> tuple[MemoryLink, SimStore]:
    """A link to one stand-alone label (its own one-label store, not started).

    The label keeps the fault streams it was built with; ``faults`` is only recorded in the
    store's config for reference.
    """
    store = SimStore(StoreConfig(labels=0, faults=faults or FaultConfig()), labels=[label])
    return MemoryLink(store, label.address, mode=mode), store
