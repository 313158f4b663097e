"""The gateway's end of the loopback radio: `esl simulate --listen HOST:PORT` over TCP.

`LoopbackRadio` is a `firmware_proto.link.Radio` and `LoopbackLink` a `firmware_proto.link.Link`:
the same frame bytes as the BLE link, carried in `firmware_proto.radio` packets that name the
label. A gateway that runs against the simulator uses these instead of BLE and meets the
simulated labels as it would real ones: they check in when they wake, a link opens only to a
label that is listening, and frames may be lost on the air.

Errors: a refused or timed-out connect, or sending after the radio went away, raises
`LoopbackError` (a `ConnectionError`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from firmware_proto.frames import DEFAULT_MTU
from firmware_proto.link import CheckinCallback, FrameCallback
from firmware_proto.radio import MAX_FRAME, PacketKind, RadioPacket, RadioStreamDecoder, encode_packet

__all__ = ["LoopbackError", "LoopbackRadio", "LoopbackLink"]

log = logging.getLogger(__name__)


class LoopbackError(ConnectionError):
    """The loopback radio or a label on it cannot be reached."""


class LoopbackLink:
    """One conversation with one simulated label over the loopback radio."""

    def __init__(self, radio: LoopbackRadio, address: str, max_frame: int) -> None:
        self._radio = radio
        self._address = address
        self._max_frame = max_frame
        self._callback: FrameCallback | None = None
        self._connected = False
        self.rssi = 0
        """What the label's last packet was heard at (dBm)."""

    @property
    def address(self) -> str:
        return self._address

    @property
    def max_frame(self) -> int:
        return self._max_frame

    @property
    def connected(self) -> bool:
        return self._connected

    async def connect(self) -> None:
        """Ask the radio for the label; `LoopbackError` if it is asleep, away or unknown."""
        self._radio._register(self)
        self._connected = await self._radio._connect(self._address)

    async def send(self, frame: bytes) -> None:
        if not self._connected:
            raise LoopbackError(f"link to {self._address} is not connected")
        if len(frame) > self._max_frame:
            raise LoopbackError(f"frame is {len(frame)} bytes, this link carries at most {self._max_frame}")
        self._radio._write(PacketKind.FRAME, self._address, frame)

    async def close(self) -> None:
        if self._connected:
            self._connected = False
            with contextlib.suppress(LoopbackError):
                self._radio._write(PacketKind.CLOSE, self._address, b"")
        self._radio._unregister(self)

    def set_frame_callback(self, callback: FrameCallback | None) -> None:
        self._callback = callback

    def _deliver(self, frame: bytes, rssi: int) -> None:
        self.rssi = rssi
        if self._connected and self._callback is not None:
            self._callback(frame)


class LoopbackRadio:
    """A gateway radio that is a TCP connection to `esl simulate`."""

    def __init__(self, host: str, port: int, *, max_frame: int = DEFAULT_MTU,
                 connect_timeout_s: float = 2.0) -> None:
        if not 0 < max_frame <= MAX_FRAME:
            raise ValueError(f"max_frame must be in 1..{MAX_FRAME}, got {max_frame!r}")
        if not connect_timeout_s > 0:
            raise ValueError(f"connect_timeout_s must be > 0, got {connect_timeout_s!r}")
        self.host = host
        self.port = port
        self.max_frame = max_frame
        self.connect_timeout_s = connect_timeout_s
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self._decoder = RadioStreamDecoder()
        self._callback: CheckinCallback | None = None
        self._links: dict[str, LoopbackLink] = {}
        self._pending: dict[str, asyncio.Future[bool]] = {}
        self.checkins = 0

    @property
    def is_up(self) -> bool:
        """Connected to the simulator (false once it closed the connection)."""
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        """Connect to the simulator; `LoopbackError` if nothing listens there. After the
        connection was lost, connects again (a new stream: nothing of the old one is kept)."""
        if self.is_up:
            return
        if self._task is not None:  # the old connection ended: forget it before a new one
            await self.close()
        self._decoder = RadioStreamDecoder()
        try:
            self._reader, self._writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port), self.connect_timeout_s)
        except (OSError, TimeoutError) as exc:
            raise LoopbackError(f"no loopback radio at {self.host}:{self.port}: {exc}") from exc
        self._task = asyncio.create_task(self._read(), name=f"loopback-radio-{self.host}:{self.port}")
        log.info("loopback radio connected to %s:%d", self.host, self.port)

    async def open_link(self, address: str) -> LoopbackLink:
        return LoopbackLink(self, address.upper(), self.max_frame)

    def set_checkin_callback(self, callback: CheckinCallback | None) -> None:
        self._callback = callback

    async def close(self) -> None:
        task, self._task = self._task, None
        for link in list(self._links.values()):
            await link.close()
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(ConnectionError):
                await self._writer.wait_closed()
            self._writer = None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._fail_pending("radio closed")

    async def __aenter__(self) -> LoopbackRadio:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- internals used by LoopbackLink -------------------------------------------------------
    def _register(self, link: LoopbackLink) -> None:
        self._links[link.address] = link

    def _unregister(self, link: LoopbackLink) -> None:
        if self._links.get(link.address) is link:
            del self._links[link.address]

    def _write(self, kind: PacketKind, address: str, frame: bytes) -> None:
        if self._writer is None or self._writer.transport.is_closing():
            raise LoopbackError(f"loopback radio {self.host}:{self.port} is not connected")
        self._writer.write(encode_packet(kind, address, 0, frame))

    async def _connect(self, address: str) -> bool:
        loop = asyncio.get_running_loop()
        fut = self._pending.get(address)
        if fut is None or fut.done():
            fut = loop.create_future()
            self._pending[address] = fut
            self._write(PacketKind.CONNECT, address, b"")
        try:
            ok = await asyncio.wait_for(asyncio.shield(fut), self.connect_timeout_s)
        except TimeoutError:
            raise LoopbackError(f"label {address}: no answer to connect in {self.connect_timeout_s} s") from None
        finally:
            if fut.done() and self._pending.get(address) is fut:
                del self._pending[address]
        if not ok:
            raise LoopbackError(f"label {address} is not reachable (asleep, off the air or unknown)")
        return True

    def _fail_pending(self, why: str) -> None:
        pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(LoopbackError(why))
                fut.exception()  # retrieved here: nobody may be awaiting it any more

    async def _read(self) -> None:
        assert self._reader is not None
        try:
            while True:
                data = await self._reader.read(65536)
                if not data:
                    break
                for packet in self._decoder.feed(data):
                    self._dispatch(packet)
        except ConnectionError as exc:
            log.warning("loopback radio %s:%d dropped: %s", self.host, self.port, exc)
        else:
            if self._task is not None:  # None: our own `close` ended it, nothing to warn about
                log.warning("loopback radio %s:%d closed the connection", self.host, self.port)
        finally:
            self._fail_pending("loopback radio connection lost")
            if self._writer is not None:
                self._writer.close()
            for link in list(self._links.values()):
                link._connected = False

    def _dispatch(self, packet: RadioPacket) -> None:
        kind, address = packet.kind, packet.address
        if kind is PacketKind.CHECKIN:
            self.checkins += 1
            if self._callback is not None:
                self._callback(address, packet.frame, packet.rssi)
        elif kind is PacketKind.FRAME:
            link = self._links.get(address)
            if link is not None:
                link._deliver(packet.frame, packet.rssi)
        elif kind in (PacketKind.CONNECTED, PacketKind.UNREACHABLE):
            fut = self._pending.get(address)
            if fut is not None and not fut.done():
                fut.set_result(kind is PacketKind.CONNECTED)
        else:
            log.debug("loopback radio sent a %s packet for %s; ignored", kind.name, address)
