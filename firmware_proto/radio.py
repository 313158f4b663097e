"""The loopback radio's byte stream, sans-IO: packets addressed to and from labels.

The simulator's store radio (``esl simulate``) and a gateway meet over a TCP socket; this
module is the codec both ends share. It carries the very same frame bytes as every other
link, wrapped in a packet that names the label and what the packet means::

    sync   2 bytes  0xE5 0x1A
    length u16 LE   bytes from ``kind`` to the end of ``frame`` (8 + len(frame))
    kind   u8       PacketKind
    addr   6 bytes  label MAC, most significant byte first (AA:BB:... order)
    rssi   i8       dBm as heard by the receiver (0 when not meaningful)
    frame  n bytes  one protocol frame (empty for link-control packets)
    crc    u32 LE   CRC-32 (zlib) of kind..frame

(`firmware_proto.encode_stream` frames a bare frame stream for a link that talks to one label;
this codec adds what a shared radio needs: which label, what RSSI, and link control.)
A `RadioStreamDecoder` takes bytes as they arrive (whole packets, halves, one byte at a time),
returns the packets it completed, tells "need more bytes" apart from "corrupt" and
resynchronises past garbage on the next sync marker. Its buffer never grows beyond one
maximum-size packet plus the chunk being fed, so a peer cannot make it allocate without bound.
"""

from __future__ import annotations

import re
import struct
import zlib
from dataclasses import dataclass
from enum import IntEnum

from firmware_proto.errors import ProtocolError

__all__ = [
    "SYNC", "MAX_FRAME", "MAX_PACKET", "HEADER_SIZE", "PacketKind", "RadioPacket",
    "RadioCodecError", "RadioStreamDecoder", "encode_packet", "decode_packet", "mac_to_bytes",
    "mac_from_bytes",
]

SYNC = b"\xe5\x1a"
MAX_FRAME = 4096
"""Largest frame a packet carries; larger than any link's frames (BLE: 244 + headers)."""
_HEAD = struct.Struct("<2sHB6sb")  # sync, length, kind, addr, rssi
HEADER_SIZE = _HEAD.size  # 12
_CRC = struct.Struct("<I")
MAX_PACKET = HEADER_SIZE + MAX_FRAME + _CRC.size
_MAC_RE = re.compile(r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$")


class RadioCodecError(ProtocolError):
    """A malformed loopback-radio packet or an argument that cannot be encoded."""


class PacketKind(IntEnum):
    """What a packet means. Frames carry protocol bytes; the rest are link control."""

    FRAME = 0
    """A protocol frame to (gateway → store) or from (store → gateway) the label."""
    CHECKIN = 1
    """A label woke up; ``frame`` is its check-in frame (store → gateway)."""
    CONNECT = 2
    """Gateway asks to open a link to the label (gateway → store)."""
    CONNECTED = 3
    """The label is awake and listening; the link is open (store → gateway)."""
    UNREACHABLE = 4
    """The label did not answer: asleep, offline or unknown (store → gateway)."""
    CLOSE = 5
    """Gateway ends the link (gateway → store)."""


def mac_to_bytes(address: str) -> bytes:
    """``AA:BB:CC:DD:EE:FF`` → 6 bytes; anything else raises `RadioCodecError`."""
    if not isinstance(address, str) or not _MAC_RE.match(address):
        raise RadioCodecError(f"address must look like AA:BB:CC:DD:EE:FF, got {address!r}")
    return bytes.fromhex(address.replace(":", ""))


def mac_from_bytes(raw: bytes) -> str:
    """6 bytes → ``AA:BB:CC:DD:EE:FF`` (upper case)."""
    if len(raw) != 6:
        raise RadioCodecError(f"address must be 6 bytes, got {len(raw)}: {raw.hex()}")
    return ":".join(f"{b:02X}" for b in raw)


@dataclass(frozen=True, slots=True)
class RadioPacket:
    """One packet on the loopback radio stream."""

    kind: PacketKind
    address: str
    rssi: int = 0
    frame: bytes = b""

    def __post_init__(self) -> None:
        try:
            kind = PacketKind(self.kind)
        except ValueError:
            raise RadioCodecError(f"kind must be a PacketKind, got {self.kind!r}") from None
        object.__setattr__(self, "kind", kind)
        mac_to_bytes(self.address)
        if not isinstance(self.rssi, int) or not -128 <= self.rssi <= 127:
            raise RadioCodecError(f"rssi must be an int8 (-128..127), got {self.rssi!r}")
        if not isinstance(self.frame, (bytes, bytearray, memoryview)):
            raise RadioCodecError(f"frame must be bytes, got {type(self.frame).__name__}")
        object.__setattr__(self, "frame", bytes(self.frame))
        if len(self.frame) > MAX_FRAME:
            raise RadioCodecError(f"frame is {len(self.frame)} bytes, at most {MAX_FRAME}")

    def to_bytes(self) -> bytes:
        return encode_packet(self.kind, self.address, self.rssi, self.frame)

    @classmethod
    def from_bytes(cls, data: bytes) -> RadioPacket:
        return decode_packet(data)


def encode_packet(kind: PacketKind, address: str, rssi: int, frame: bytes) -> bytes:
    """Encode one packet (validates like `RadioPacket`)."""
    if len(frame) > MAX_FRAME:
        raise RadioCodecError(f"frame is {len(frame)} bytes, at most {MAX_FRAME}")
    if not -128 <= rssi <= 127:
        raise RadioCodecError(f"rssi must be an int8 (-128..127), got {rssi!r}")
    try:
        k = PacketKind(kind)
    except ValueError:
        raise RadioCodecError(f"kind must be a PacketKind, got {kind!r}") from None
    head = _HEAD.pack(SYNC, 8 + len(frame), k, mac_to_bytes(address), rssi)
    body = head[4:] + frame
    return head[:4] + body + _CRC.pack(zlib.crc32(body))


def _check_body(body: bytes) -> RadioPacket:
    """Decode kind..frame whose CRC has already been checked."""
    kind_raw = body[0]
    try:
        kind = PacketKind(kind_raw)
    except ValueError:
        raise RadioCodecError(f"unknown packet kind 0x{kind_raw:02x}") from None
    address = mac_from_bytes(body[1:7])
    rssi = struct.unpack_from("<b", body, 7)[0]
    return RadioPacket(kind, address, rssi, body[8:])


def decode_packet(data: bytes) -> RadioPacket:
    """Decode exactly one whole packet; anything else raises `RadioCodecError`."""
    data = bytes(data)
    if len(data) < HEADER_SIZE + _CRC.size:
        raise RadioCodecError(f"packet is {len(data)} bytes, at least {HEADER_SIZE + 4} needed")
    if data[:2] != SYNC:
        raise RadioCodecError(f"sync expected {SYNC.hex()}, got {data[:2].hex()}")
    (length,) = struct.unpack_from("<H", data, 2)
    if not 8 <= length <= 8 + MAX_FRAME:
        raise RadioCodecError(f"length must be 8..{8 + MAX_FRAME}, got {length}")
    if len(data) != 4 + length + 4:
        raise RadioCodecError(f"packet is {len(data)} bytes, length field says {length + 8}")
    body = data[4:4 + length]
    (crc,) = _CRC.unpack_from(data, 4 + length)
    if crc != zlib.crc32(body):
        raise RadioCodecError(f"crc expected {zlib.crc32(body):08x}, got {crc:08x}")
    return _check_body(body)


class RadioStreamDecoder:
    """Incremental decoder for the loopback radio stream.

    `feed` returns the packets completed by the new bytes. Garbage (bad sync, impossible
    length, CRC mismatch, unknown kind) is skipped: the decoder drops one byte and searches
    for the next sync marker, counting what it threw away in `discarded_bytes` and
    `bad_packets`. It never raises on input; it only ever holds less than one maximum packet
    of unconsumed bytes between calls.
    """

    __slots__ = ("_buf", "discarded_bytes", "bad_packets")

    def __init__(self) -> None:
        self._buf = bytearray()
        self.discarded_bytes = 0
        self.bad_packets = 0

    @property
    def buffered(self) -> int:
        """Bytes held waiting for the rest of a packet (always < `MAX_PACKET`)."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[RadioPacket]:
        self._buf += data
        out: list[RadioPacket] = []
        buf = self._buf
        pos = 0
        n = len(buf)
        while True:
            start = buf.find(SYNC, pos)
            if start < 0:
                # keep a trailing first sync byte: it may begin a marker split across reads
                keep = 1 if n > pos and buf[n - 1] == SYNC[0] else 0
                self.discarded_bytes += n - pos - keep
                pos = n - keep
                break
            self.discarded_bytes += start - pos
            pos = start
            if n - pos < 4:
                break  # need the length field
            length = buf[pos + 2] | (buf[pos + 3] << 8)
            if not 8 <= length <= 8 + MAX_FRAME:
                self.bad_packets += 1
                self.discarded_bytes += 1
                pos += 1
                continue
            total = 4 + length + 4
            if n - pos < total:
                break  # need more bytes
            body = bytes(buf[pos + 4:pos + 4 + length])
            crc = int.from_bytes(buf[pos + 4 + length:pos + total], "little")
            if crc != zlib.crc32(body):
                self.bad_packets += 1
                self.discarded_bytes += 1
                pos += 1
                continue
            try:
                out.append(_check_body(body))
            except RadioCodecError:
                self.bad_packets += 1
                self.discarded_bytes += 1
                pos += 1
                continue
            pos += total
        del buf[:pos]
        return out
