"""The narrow interface between the protocol and whatever carries its bytes.

A `Link` is one conversation with one label that carries whole frames (the same bytes over
BLE GATT, the simulator's loopback socket or an in-memory pipe). A `Radio` finds labels and
opens links to them. These are typing protocols only, so `firmware_proto` stays free of
asyncio and sockets; the implementations live with the code that does IO (the gateway's BLE
link in `eslserver.gateway`, the simulated radios in `simulator`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

__all__ = ["FrameCallback", "CheckinCallback", "Link", "Radio"]

FrameCallback = Callable[[bytes], None]
"""Called with each whole frame the label sends on this link."""

CheckinCallback = Callable[[str, bytes, int], None]
"""Called with (label address, check-in frame bytes, RSSI in dBm) when a label wakes up."""


@runtime_checkable
class Link(Protocol):
    """One conversation with one label. Frames in, frames out; nothing else."""

    @property
    def address(self) -> str:
        """The label's address (MAC, ``AA:BB:CC:DD:EE:FF``)."""
        ...

    @property
    def max_frame(self) -> int:
        """The largest frame one `send` carries (for BLE: the negotiated ATT MTU - 3)."""
        ...

    async def connect(self) -> None:
        """Open the conversation; raises `ConnectionError` (or a subclass) if the label is gone."""
        ...

    async def send(self, frame: bytes) -> None:
        """Send one whole frame. Delivery is not guaranteed: the protocol acks and retries."""
        ...

    async def close(self) -> None:
        """End the conversation; safe to call twice."""
        ...

    def set_frame_callback(self, callback: FrameCallback | None) -> None:
        """Where frames from the label go (called on the event loop)."""
        ...


@runtime_checkable
class Radio(Protocol):
    """A gateway's radio: hears labels check in and opens links to them."""

    async def start(self) -> None:
        """Start listening for check-ins; raises `ConnectionError` (or a subclass) when the
        radio cannot be reached. Called again after `is_up` turned false, it reconnects."""
        ...

    @property
    def is_up(self) -> bool:
        """Started and still working: false before `start`, after `close`, and once the radio
        was lost (the simulator's socket closed, the adapter went away). The gateway watches
        it to reconnect with backoff and to report ``radio: down`` meanwhile."""
        ...

    async def open_link(self, address: str) -> Link:
        """A link to the label at `address` (not yet connected)."""
        ...

    def set_checkin_callback(self, callback: CheckinCallback | None) -> None:
        """Where check-ins go (called on the event loop)."""
        ...

    async def close(self) -> None:
        """Stop listening and close every link; safe to call twice."""
        ...
