"""Sized little-endian wire integers and a bounds-checked reader.

A wire integer is an `int` whose width is part of its type, range-checked when it is made, so a
value that would not fit its field fails where it is built, not as silently truncated bytes on
the air. `Reader` never slices past its data: every read states how many bytes it needs and
raises `FrameError` naming the field if they are not there.
"""

from __future__ import annotations

from typing import ClassVar, Self

from firmware_proto.errors import FrameError

__all__ = ["WireInt", "U8", "U16", "U24", "U32", "U40", "U64", "I8", "I16", "Reader", "check_range", "hexs"]


def hexs(data: bytes | bytearray | memoryview, limit: int = 32) -> str:
    """Bytes as hex for error messages, cut after `limit` bytes."""
    b = bytes(data)
    return b[:limit].hex() + ("…" if len(b) > limit else "") if b else "(empty)"


class WireInt(int):
    """A little-endian integer of fixed width; construction checks the range."""

    size: ClassVar[int] = 0
    signed: ClassVar[bool] = False
    _lo: ClassVar[int] = 0
    _hi: ClassVar[int] = 0

    def __init_subclass__(cls) -> None:
        super().__init_subclass__()
        cls._lo, cls._hi = cls.bounds()

    def __new__(cls, value: int) -> Self:
        if isinstance(value, bool) or not isinstance(value, int):
            raise FrameError(f"{cls.__name__} needs an int, got {value!r}")
        lo, hi = cls._lo, cls._hi
        if not lo <= value <= hi:
            raise FrameError(f"{cls.__name__} must be in {lo}..{hi}, got {value}")
        return super().__new__(cls, value)

    @classmethod
    def bounds(cls) -> tuple[int, int]:
        bits = cls.size * 8
        if cls.signed:
            return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
        return 0, (1 << bits) - 1

    def serialize(self) -> bytes:
        return int(self).to_bytes(self.size, "little", signed=self.signed)

    @classmethod
    def deserialize(cls, data: bytes) -> Self:
        if len(data) != cls.size:
            raise FrameError(f"{cls.__name__} needs {cls.size} bytes, got {len(data)}: {hexs(data)}")
        return cls(int.from_bytes(data, "little", signed=cls.signed))


class U8(WireInt):
    size = 1


class U16(WireInt):
    size = 2


class U24(WireInt):
    size = 3


class U32(WireInt):
    size = 4


class U40(WireInt):
    size = 5


class U64(WireInt):
    size = 8


class I8(WireInt):
    size = 1
    signed = True


class I16(WireInt):
    size = 2
    signed = True


def check_range(field: str, wire_type: type[WireInt], value: int) -> int:
    """`value` as a plain int if it fits `wire_type`, else `FrameError` naming `field`."""
    try:
        return int(wire_type(value))
    except FrameError as exc:
        raise FrameError(f"{field}: {exc}") from None


class Reader:
    """Consumes a byte string front to back; every shortfall is a `FrameError`."""

    __slots__ = ("_data", "_pos", "_what")

    def __init__(self, data: bytes, what: str) -> None:
        self._data = data
        self._pos = 0
        self._what = what

    @property
    def remaining(self) -> int:
        return len(self._data) - self._pos

    def take(self, n: int, field: str) -> bytes:
        if n < 0 or n > self.remaining:
            raise FrameError(
                f"{self._what}.{field}: need {n} bytes at offset {self._pos}, "
                f"only {self.remaining} left in {hexs(self._data)}"
            )
        out = self._data[self._pos:self._pos + n]
        self._pos += n
        return out

    def int(self, wire_type: type[WireInt], field: str) -> int:
        return int(wire_type.deserialize(self.take(wire_type.size, field)))

    def rest(self) -> bytes:
        return self.take(self.remaining, "rest")

    def end(self) -> None:
        if self.remaining:
            raise FrameError(
                f"{self._what}: {self.remaining} unexpected trailing bytes "
                f"{hexs(self._data[self._pos:])}"
            )
