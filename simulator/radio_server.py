"""The loopback store radio: a TCP server a gateway process connects to instead of BLE.

Gateways connect over TCP and speak the `firmware_proto.radio` packet stream. What they get
is what a real gateway's radio gets in a store:

- a CHECKIN packet for every label check-in that survives the air (every connected gateway
  hears it, with the label's RSSI);
- CONNECT → CONNECTED if the label is awake and on the air, else UNREACHABLE;
- FRAME packets to a label go over the faulty air to it; its replies come back as FRAME
  packets on the connection that sent the frame. The frame bytes are exactly those of every
  other link;
- CLOSE lets the label go back to sleep.

The server never trusts the stream: garbage is skipped by the decoder, a packet for an
unknown label is counted and dropped, and a gateway that stops reading is cut off rather
than buffered without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from firmware_proto.radio import PacketKind, RadioPacket, RadioStreamDecoder, encode_packet

from simulator.store import SimStore
from simulator.tasks import cancel_and_wait

__all__ = ["RadioServer", "MAX_WRITE_BUFFER"]

log = logging.getLogger(__name__)

MAX_WRITE_BUFFER = 4 * 1024 * 1024
"""A gateway that lets this much pile up unread is disconnected."""


class _Gateway:
    """One connected gateway."""

    __slots__ = ("name", "writer", "decoder", "links", "closed")

    def __init__(self, name: str, writer: asyncio.StreamWriter) -> None:
        self.name = name
        self.writer = writer
        self.decoder = RadioStreamDecoder()
        self.links: set[str] = set()
        self.closed = False

    def send(self, kind: PacketKind, address: str, rssi: int, frame: bytes = b"") -> None:
        if self.closed:
            return
        transport = self.writer.transport
        if transport.is_closing():
            self.closed = True
            return
        if transport.get_write_buffer_size() > MAX_WRITE_BUFFER:
            log.warning("gateway %s is not reading; disconnecting it", self.name)
            self.closed = True
            transport.abort()
            return
        self.writer.write(encode_packet(kind, address, rssi, frame))


class RadioServer:
    """Serves one `SimStore` to gateways over TCP. Owns its listening socket, not the store."""

    def __init__(self, store: SimStore, host: str = "127.0.0.1", port: int = 0) -> None:
        self.store = store
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None
        self._gateways: set[_Gateway] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.unknown_packets = 0

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) actually bound (the port is chosen by the OS when 0 was asked)."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("radio server is not listening")
        host, port = self._server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    @property
    def gateways(self) -> int:
        return len(self._gateways)

    async def start(self) -> None:
        self.store.add_checkin_listener(self._on_checkin)
        self._server = await asyncio.start_server(self._serve, self.host, self.port)

    async def aclose(self) -> None:
        """Stop listening and drop every gateway; safe to call twice."""
        self.store.remove_checkin_listener(self._on_checkin)
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for gw in list(self._gateways):
            gw.closed = True
            gw.writer.close()
        if self._tasks:  # a closed connection ends its task; cancelling one asyncio's stream
            await asyncio.wait(list(self._tasks), timeout=1.0)  # server started logs an error
        await cancel_and_wait(*self._tasks)
        if server is not None:
            await server.wait_closed()

    async def __aenter__(self) -> RadioServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _on_checkin(self, address: str, frame: bytes, rssi: int) -> None:
        for gw in list(self._gateways):
            gw.send(PacketKind.CHECKIN, address, rssi, frame)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        peer = writer.get_extra_info("peername")
        gw = _Gateway(f"{peer[0]}:{peer[1]}" if peer else "?", writer)
        self._gateways.add(gw)
        log.info("gateway %s connected", gw.name)
        try:
            while not gw.closed:
                data = await reader.read(65536)
                if not data:
                    break
                for packet in gw.decoder.feed(data):
                    self._handle(gw, packet)
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            log.info("gateway %s dropped: %s", gw.name, exc)
        finally:
            self._gateways.discard(gw)
            gw.closed = True
            self._release(gw)
            writer.close()
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await writer.wait_closed()
            if gw.decoder.bad_packets:
                log.warning("gateway %s sent %d bad packets", gw.name, gw.decoder.bad_packets)
            log.info("gateway %s disconnected", gw.name)
            if task is not None:
                self._tasks.discard(task)

    def _handle(self, gw: _Gateway, packet: RadioPacket) -> None:
        address = packet.address
        label = self.store.labels.get(address)
        if label is None:
            self.unknown_packets += 1
            if packet.kind is PacketKind.CONNECT:
                gw.send(PacketKind.UNREACHABLE, address, 0)
            return
        if packet.kind is PacketKind.CONNECT:
            ok = self.store.connect(address)
            if ok:
                gw.links.add(address)
            gw.send(PacketKind.CONNECTED if ok else PacketKind.UNREACHABLE, address, label.rssi if ok else 0)
        elif packet.kind is PacketKind.FRAME:
            rssi = label.rssi
            self.store.to_label(address, packet.frame,
                                lambda reply: gw.send(PacketKind.FRAME, address, rssi, reply))
        elif packet.kind is PacketKind.CLOSE:
            gw.links.discard(address)
            if not label.always_listening:
                label.awake_until = min(label.awake_until, self.store.now())
        else:
            self.unknown_packets += 1
            log.debug("gateway %s sent a %s packet, which only the radio sends", gw.name, packet.kind.name)

    def _release(self, gw: _Gateway) -> None:
        for address in gw.links:
            label = self.store.labels.get(address)
            if label is not None and not label.always_listening:
                label.awake_until = min(label.awake_until, self.store.now())
        gw.links.clear()

