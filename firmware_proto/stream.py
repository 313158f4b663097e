"""Frames over a byte stream (the loopback TCP radio): magic + length wrapper and a decoder.

Stream record: ``E5 5A`` magic, u16 LE frame length, then the frame (which ends in its own
CRC-16). The decoder tells "need more bytes" from "corrupt": it waits while a record is
incomplete, and when a record's length is impossible or its frame's CRC is wrong, it drops one
byte and searches for the next magic, so one bad record costs only itself. Its buffer never
holds more than one maximal record plus one read chunk, so a peer sending garbage cannot make it
grow without bound.
"""

from __future__ import annotations

from firmware_proto.crc import crc16
from firmware_proto.errors import FrameError
from firmware_proto.frames import CRC_SIZE, HEADER_SIZE, MAX_FRAME
from firmware_proto.wire import U16, hexs

__all__ = ["STREAM_MAGIC", "STREAM_OVERHEAD", "encode_stream", "StreamDecoder"]

STREAM_MAGIC = b"\xe5\x5a"
STREAM_OVERHEAD = len(STREAM_MAGIC) + 2
_MIN_FRAME = HEADER_SIZE + CRC_SIZE


def encode_stream(frame: bytes) -> bytes:
    """One frame wrapped for a byte stream."""
    if not _MIN_FRAME <= len(frame) <= MAX_FRAME:
        raise FrameError(f"stream: frame length must be {_MIN_FRAME}..{MAX_FRAME}, got {len(frame)}")
    return STREAM_MAGIC + U16(len(frame)).serialize() + frame


class StreamDecoder:
    """Splits a byte stream into frames (CRC-checked bytes, ready for `parse_frame`).

    ``feed(data)`` returns the whole frames now available. ``need`` is how many more bytes the
    current record needs (0 when idle); ``corrupt`` counts records dropped as corrupt and
    ``skipped`` the bytes thrown away while resynchronising; ``last_error`` says why the last
    record was dropped.
    """

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        if not _MIN_FRAME <= max_frame <= MAX_FRAME:
            raise FrameError(f"max_frame must be {_MIN_FRAME}..{MAX_FRAME}, got {max_frame}")
        self.max_frame = max_frame
        self._buf = bytearray()
        self.corrupt = 0
        self.skipped = 0
        self.need = 0
        self.last_error: str | None = None

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        out: list[bytes] = []
        view = memoryview(data)
        chunk = self.max_frame + STREAM_OVERHEAD
        for start in range(0, len(view), chunk):  # bounded buffer whatever the read size
            self._buf += view[start:start + chunk]
            self._drain(out)
        if not data:
            self._drain(out)
        return out

    def _drain(self, out: list[bytes]) -> None:
        buf = self._buf
        while True:
            at = buf.find(STREAM_MAGIC)
            if at < 0:
                keep = 1 if buf[-1:] == STREAM_MAGIC[:1] else 0
                self._skip(len(buf) - keep)
                self.need = 0 if not buf else STREAM_OVERHEAD - len(buf)
                return
            if at:
                self._skip(at)
            if len(buf) < STREAM_OVERHEAD:
                self.need = STREAM_OVERHEAD - len(buf)
                return
            length = int.from_bytes(buf[2:4], "little")
            if not _MIN_FRAME <= length <= self.max_frame:
                self._corrupt(f"length {length} out of range in {hexs(buf[:4])}")
                continue
            end = STREAM_OVERHEAD + length
            if len(buf) < end:
                self.need = end - len(buf)
                return
            frame = bytes(buf[STREAM_OVERHEAD:end])
            if crc16(frame[:-CRC_SIZE]) != int.from_bytes(frame[-CRC_SIZE:], "little"):
                self._corrupt("crc mismatch")
                continue
            del buf[:end]
            self.need = 0
            out.append(frame)

    def _skip(self, n: int) -> None:
        if n > 0:
            del self._buf[:n]
            self.skipped += n

    def _corrupt(self, why: str) -> None:
        self.corrupt += 1
        self.last_error = why
        self._skip(1)  # step past this magic and look for the next one
