"""Job envelopes: what the server asks a gateway to do with one label, as bytes on MQTT.

A job is one of three kinds, each a frozen dataclass with `to_bytes()` / `from_bytes()`:

- `PairJob`: give an unpaired label its key (factory key, new label key, factory counter hint);
- `ImageJob`: send an image (whole, region, delta) to a paired label;
- `CommandJob`: send one ESL control-point command (LED flash, ping, ...) to a paired label.

Layout (integers little-endian, MAC most significant byte first as in frames)::

    magic      E5 4A
    version    u8   (1)
    kind       u8   1 PAIR, 2 IMAGE, 3 COMMAND
    job_id     u64
    mac        6
    deadline_s u16  how long the gateway may keep trying before it nacks "unreachable"
    attempt    u8   the server's retry number (job_id + attempt names one delivery)
    body       per kind:
      PAIR     factory_key 16 | new_key 16 | factory_counter u32 | esl_id u8
      IMAGE    label_key 16 | tx_counter u32 | budget u16 | rx_highest u32 |
               image_format u8 | flags u8 (1 REGION, 2 BASE, 4 DELTA) | image_hash 8 |
               [x u16 y u16 w u16 h u16] | [base_hash 8] | payload_len u24 | payload
      COMMAND  label_key 16 | tx_counter u32 | budget u16 | rx_highest u32 |
               frame_len u16 | frame (an unsealed ControlCommand frame)
    crc32      u32  CRC-32 (zlib) over everything before it

Counter rule: the server reserves the label's counters ``tx_counter + 1 .. tx_counter + budget``
(durably, before publishing) and the gateway seals with no other counter (`JobSession`), so no
counter is ever used twice under one key, even when a gateway dies in the middle of a job.
The envelope carries keys in the clear: the MQTT link to the gateway must be trusted (TLS).

Decoding checks the length against `MAX_ENVELOPE` and the CRC before reading a field, reads
every length-prefixed field only after checking it against what is left, and raises only
`EnvelopeError` (a `ProtocolError`) naming the field.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from enum import IntEnum, IntFlag
from typing import ClassVar, Self

from firmware_proto.auth import KEY_SIZE, REPLAY_WINDOW, ReplayWindow
from firmware_proto.errors import ProtocolError
from firmware_proto.frames import (
    ControlCommand,
    Frame,
    address_bytes,
    address_str,
    parse_frame,
)
from firmware_proto.gateway import GatewaySession
from firmware_proto.image import HASH_SIZE, ImageFormat, Region
from firmware_proto.transfer import ImageUpdate
from firmware_proto.wire import U8, U16, U24, U32, Reader, WireInt, hexs

__all__ = [
    "ENVELOPE_MAGIC", "ENVELOPE_VERSION", "MAX_PAYLOAD", "MAX_ENVELOPE", "EnvelopeError",
    "BudgetExhausted", "JobKind", "ImageFlag", "JobEnvelope", "PairJob", "ImageJob", "CommandJob",
    "parse_envelope", "JobSession",
]

ENVELOPE_MAGIC = b"\xe5\x4a"
ENVELOPE_VERSION = 1
MAX_PAYLOAD = 1 << 20
"""Largest image payload an envelope carries (the largest label buffer is 96,000 bytes)."""
MAX_ENVELOPE = MAX_PAYLOAD + 256
"""No envelope is longer; decoders refuse longer input before looking at it."""
_HEADER_SIZE = 2 + 1 + 1 + 8 + 6 + 2 + 1
_CRC_SIZE = 4


class EnvelopeError(ProtocolError):
    """A job envelope that cannot be built or decoded; names the field and quotes the bytes.

    ``job_id`` and ``mac`` are set when the header was intact (CRC verified) but the body was
    not, so a gateway can still nack the job as ``bad_job``.
    """

    def __init__(self, message: str, *, job_id: int | None = None, mac: str | None = None) -> None:
        super().__init__(message)
        self.job_id = job_id
        self.mac = mac


class BudgetExhausted(EnvelopeError):
    """Sealing one more frame would use a counter outside the job's reserved range."""


class JobKind(IntEnum):
    PAIR = 1
    IMAGE = 2
    COMMAND = 3


class ImageFlag(IntFlag):
    REGION = 0x1
    BASE = 0x2
    DELTA = 0x4


class U64(WireInt):
    size = 8


def _check(field: str, wire_type: type[WireInt], value: object) -> int:
    """`value` as an int if it fits `wire_type`; `EnvelopeError` naming `field` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise EnvelopeError(f"{field}: expected an int, got {value!r:.60}")
    lo, hi = wire_type.bounds()
    if not lo <= value <= hi:
        raise EnvelopeError(f"{field}: must be in {lo}..{hi}, got {value}")
    return int(value)


def _check_bytes(field: str, value: object, size: int) -> bytes:
    if not isinstance(value, bytes):
        raise EnvelopeError(f"{field}: expected {size} bytes, got {type(value).__name__}")
    if len(value) != size:
        shown = "" if field.endswith("_key") else f": {hexs(value)}"  # a key is never quoted, even a wrong one
        raise EnvelopeError(f"{field}: expected {size} bytes, got {len(value)}{shown}")
    return value


def _ser(wire_type: type[WireInt], value: int) -> bytes:
    return int(value).to_bytes(wire_type.size, "little", signed=wire_type.signed)


@dataclass(frozen=True, kw_only=True)
class JobEnvelope:
    """The common header of every job. Use a subclass; `from_bytes` returns the right one.

    ``mac`` is normalised to ``AA:BB:CC:DD:EE:FF``. ``deadline_s`` is counted from when the
    gateway received the job; ``attempt`` is the server's retry number.
    """

    kind: ClassVar[JobKind]
    job_id: int
    mac: str
    deadline_s: int = 60
    attempt: int = 0

    def __post_init__(self) -> None:
        _check("job_id", U64, self.job_id)
        if not isinstance(self.mac, (str, bytes)):
            raise EnvelopeError(f"mac: expected a MAC address, got {self.mac!r:.60}")
        try:
            mac = address_str(address_bytes(self.mac))
        except ProtocolError as exc:
            raise EnvelopeError(f"mac: {exc}") from None
        object.__setattr__(self, "mac", mac)
        _check("deadline_s", U16, self.deadline_s)
        _check("attempt", U8, self.attempt)

    @property
    def mac_bytes(self) -> bytes:
        return address_bytes(self.mac)

    # -- encoding -----------------------------------------------------------------------------
    def _body(self) -> bytes:
        raise NotImplementedError

    @classmethod
    def _parse_body(cls, r: Reader, common: dict[str, object]) -> Self:
        raise NotImplementedError

    def to_bytes(self) -> bytes:
        head = (ENVELOPE_MAGIC + bytes((ENVELOPE_VERSION, int(self.kind))) + _ser(U64, self.job_id)
                + self.mac_bytes + _ser(U16, self.deadline_s) + _ser(U8, self.attempt))
        out = head + self._body()
        if len(out) + _CRC_SIZE > MAX_ENVELOPE:
            raise EnvelopeError(f"envelope: {len(out) + _CRC_SIZE} bytes is over MAX_ENVELOPE {MAX_ENVELOPE}")
        return out + _ser(U32, zlib.crc32(out))

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        """Decode an envelope; on a subclass, also check it is that kind."""
        job = parse_envelope(data)
        if not isinstance(job, cls):
            raise EnvelopeError(f"kind: expected a {cls.__name__}, got {type(job).__name__}",
                                job_id=job.job_id, mac=job.mac)
        return job


@dataclass(frozen=True, kw_only=True)
class PairJob(JobEnvelope):
    """Pair a label: wrap ``new_key`` under its ``factory_key``.

    ``factory_counter`` is the highest factory-key counter the server knows the label accepted
    (the gateway goes above it, and above the ``rx_counter`` of the label's check-in if it
    heard one). ``esl_id`` is the ESL Service id the label is given.
    """

    kind: ClassVar[JobKind] = JobKind.PAIR
    factory_key: bytes = field(repr=False)
    new_key: bytes = field(repr=False)
    factory_counter: int = 0
    esl_id: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_bytes("factory_key", self.factory_key, KEY_SIZE)
        _check_bytes("new_key", self.new_key, KEY_SIZE)
        _check("factory_counter", U32, self.factory_counter)
        _check("esl_id", U8, self.esl_id)
        if self.factory_counter == 0xFFFFFFFF:
            raise EnvelopeError("factory_counter: 4294967295 leaves no counter to pair with")

    def _body(self) -> bytes:
        return self.factory_key + self.new_key + _ser(U32, self.factory_counter) + _ser(U8, self.esl_id)

    @classmethod
    def _parse_body(cls, r: Reader, common: dict[str, object]) -> Self:
        return cls(factory_key=r.take(KEY_SIZE, "factory_key"), new_key=r.take(KEY_SIZE, "new_key"),
                   factory_counter=r.int(U32, "factory_counter"), esl_id=r.int(U8, "esl_id"),
                   **common)  # type: ignore[arg-type]


@dataclass(frozen=True, kw_only=True)
class _CountedJob(JobEnvelope):
    """A job sealed under the label key with counters from the server's reservation."""

    label_key: bytes = field(repr=False)
    tx_counter: int
    budget: int
    rx_highest: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_bytes("label_key", self.label_key, KEY_SIZE)
        _check("tx_counter", U32, self.tx_counter)
        _check("budget", U16, self.budget)
        _check("rx_highest", U32, self.rx_highest)
        if self.budget == 0:
            raise EnvelopeError("budget: must be >= 1, got 0")
        if self.tx_counter + self.budget > 0xFFFFFFFF:
            raise EnvelopeError(f"budget: tx_counter {self.tx_counter} + budget {self.budget} "
                                f"is past the u32 counter space")

    @property
    def counter_limit(self) -> int:
        """The last counter this job may seal with (``tx_counter + budget``)."""
        return self.tx_counter + self.budget

    def _counters(self) -> bytes:
        return (self.label_key + _ser(U32, self.tx_counter) + _ser(U16, self.budget)
                + _ser(U32, self.rx_highest))

    @staticmethod
    def _parse_counters(r: Reader) -> dict[str, object]:
        return {"label_key": r.take(KEY_SIZE, "label_key"), "tx_counter": r.int(U32, "tx_counter"),
                "budget": r.int(U16, "budget"), "rx_highest": r.int(U32, "rx_highest")}


@dataclass(frozen=True, kw_only=True)
class ImageJob(_CountedJob):
    """Send an image: the fields of `firmware_proto.transfer.ImageUpdate` plus the counters.

    ``image_hash`` is the hash of the whole framebuffer the label shows afterwards; a region or
    delta update names the ``base_hash`` it applies to (the label refuses it otherwise, and the
    gateway nacks ``base_mismatch``).
    """

    kind: ClassVar[JobKind] = JobKind.IMAGE
    image_format: ImageFormat
    image_hash: bytes
    payload: bytes = field(repr=False)
    region: Region | None = None
    base_hash: bytes | None = None
    delta: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        raw_format = _check("image_format", U8, self.image_format)
        try:
            object.__setattr__(self, "image_format", ImageFormat(raw_format))
        except ValueError:
            raise EnvelopeError(f"image_format: unknown format {raw_format}") from None
        _check_bytes("image_hash", self.image_hash, HASH_SIZE)
        if not isinstance(self.payload, bytes):
            raise EnvelopeError(f"payload: expected bytes, got {type(self.payload).__name__}")
        if not 0 < len(self.payload) <= MAX_PAYLOAD:
            raise EnvelopeError(f"payload: must be 1..{MAX_PAYLOAD} bytes, got {len(self.payload)}")
        if self.region is not None:
            if not isinstance(self.region, Region):
                raise EnvelopeError(f"region: expected a Region, got {self.region!r:.60}")
            for name in ("x", "y", "w", "h"):
                _check(f"region.{name}", U16, getattr(self.region, name))
            if self.region.w == 0 or self.region.h == 0:
                raise EnvelopeError(f"region: w and h must be > 0, got {self.region}")
        if self.base_hash is not None:
            _check_bytes("base_hash", self.base_hash, HASH_SIZE)
        elif self.region is not None or self.delta:
            raise EnvelopeError("base_hash: a region or delta update needs base_hash")
        if not isinstance(self.delta, bool):
            raise EnvelopeError(f"delta: expected a bool, got {self.delta!r:.60}")

    @classmethod
    def from_update(cls, update: ImageUpdate, *, job_id: int, mac: str, label_key: bytes,
                    tx_counter: int, budget: int, rx_highest: int = 0, deadline_s: int = 60,
                    attempt: int = 0) -> ImageJob:
        """The job that applies `update` (from `plan_update`) to the label."""
        return cls(job_id=job_id, mac=mac, deadline_s=deadline_s, attempt=attempt,
                   label_key=label_key, tx_counter=tx_counter, budget=budget, rx_highest=rx_highest,
                   image_format=update.image_format, image_hash=update.image_hash,
                   payload=update.payload, region=update.region, base_hash=update.base_hash,
                   delta=update.delta)

    @property
    def update(self) -> ImageUpdate:
        return ImageUpdate(self.payload, self.image_format, self.image_hash, self.region,
                           self.base_hash, self.delta)

    @property
    def flags(self) -> ImageFlag:
        f = ImageFlag(0)
        if self.region is not None:
            f |= ImageFlag.REGION
        if self.base_hash is not None:
            f |= ImageFlag.BASE
        if self.delta:
            f |= ImageFlag.DELTA
        return f

    def _body(self) -> bytes:
        out = self._counters() + bytes((int(self.image_format), int(self.flags))) + self.image_hash
        if self.region is not None:
            out += b"".join(_ser(U16, v) for v in (self.region.x, self.region.y, self.region.w, self.region.h))
        if self.base_hash is not None:
            out += self.base_hash
        return out + _ser(U24, len(self.payload)) + self.payload

    @classmethod
    def _parse_body(cls, r: Reader, common: dict[str, object]) -> Self:
        counters = cls._parse_counters(r)
        fmt = r.int(U8, "image_format")
        flags = r.int(U8, "flags")
        if flags & ~int(ImageFlag.REGION | ImageFlag.BASE | ImageFlag.DELTA):
            raise EnvelopeError(f"flags: unknown bits in {flags:02x}")
        image_hash = r.take(HASH_SIZE, "image_hash")
        region = None
        if flags & ImageFlag.REGION:
            region = Region(*(r.int(U16, f"region.{n}") for n in "xywh"))
        base = r.take(HASH_SIZE, "base_hash") if flags & ImageFlag.BASE else None
        size = r.int(U24, "payload_len")
        if size > MAX_PAYLOAD:
            raise EnvelopeError(f"payload_len: {size} is over MAX_PAYLOAD {MAX_PAYLOAD}")
        payload = r.take(size, "payload")
        return cls(image_format=fmt, image_hash=image_hash, payload=payload, region=region,  # type: ignore[arg-type]
                   base_hash=base, delta=bool(flags & ImageFlag.DELTA),
                   **counters, **common)  # type: ignore[arg-type]


@dataclass(frozen=True, kw_only=True)
class CommandJob(_CountedJob):
    """Send one ESL control-point command; the gateway seals it and waits for the response.

    ``command`` is unsealed (no auth trailer) and either unaddressed or addressed to ``mac``.
    """

    kind: ClassVar[JobKind] = JobKind.COMMAND
    command: ControlCommand

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_command(self.command, self.mac_bytes)

    @classmethod
    def make(cls, name: str, *, job_id: int, mac: str, label_key: bytes, tx_counter: int,
             budget: int, rx_highest: int = 0, deadline_s: int = 60, attempt: int = 0,
             **params: int) -> CommandJob:
        """A command job by the command's table name (`firmware_proto.commands`)."""
        try:
            command = ControlCommand.make(name, **params)
        except ProtocolError as exc:
            raise EnvelopeError(f"command: {exc}") from None
        return cls(job_id=job_id, mac=mac, deadline_s=deadline_s, attempt=attempt,
                   label_key=label_key, tx_counter=tx_counter, budget=budget,
                   rx_highest=rx_highest, command=command)

    def _body(self) -> bytes:
        frame = self.command.to_bytes()
        return self._counters() + _ser(U16, len(frame)) + frame

    @classmethod
    def _parse_body(cls, r: Reader, common: dict[str, object]) -> Self:
        counters = cls._parse_counters(r)
        size = r.int(U16, "frame_len")
        raw = r.take(size, "frame")
        try:
            frame = parse_frame(raw)
        except ProtocolError as exc:
            raise EnvelopeError(f"frame: {exc}") from None
        if not isinstance(frame, ControlCommand):
            raise EnvelopeError(f"frame: expected a ControlCommand, got {type(frame).__name__}: {hexs(raw)}")
        return cls(command=frame, **counters, **common)  # type: ignore[arg-type]


def _check_command(command: object, mac: bytes) -> None:
    if not isinstance(command, ControlCommand):
        raise EnvelopeError(f"command: expected a ControlCommand, got {type(command).__name__}")
    if command.auth is not None:
        raise EnvelopeError(f"command: must be unsealed, got auth counter {command.auth.counter}")
    if command.address is not None and command.address != mac:
        raise EnvelopeError(f"command: addressed to {address_str(command.address)}, "
                            f"job is for {address_str(mac)}")


_KINDS: dict[int, type[JobEnvelope]] = {int(c.kind): c for c in (PairJob, ImageJob, CommandJob)}


def parse_envelope(data: bytes) -> JobEnvelope:
    """Decode one envelope. Returns a `PairJob`, `ImageJob` or `CommandJob`, or raises
    `EnvelopeError` (nothing else).

    Checks, in order: type and length, CRC, magic, version, kind, then the header fields and
    the body, each read only after its length was checked against what is left.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise EnvelopeError(f"envelope must be bytes, got {type(data).__name__}")
    data = bytes(data)
    if not _HEADER_SIZE + _CRC_SIZE <= len(data) <= MAX_ENVELOPE:
        raise EnvelopeError(f"envelope: length must be {_HEADER_SIZE + _CRC_SIZE}..{MAX_ENVELOPE}, "
                            f"got {len(data)}: {hexs(data)}")
    got = int.from_bytes(data[-_CRC_SIZE:], "little")
    want = zlib.crc32(data[:-_CRC_SIZE])
    if got != want:
        raise EnvelopeError(f"crc32: expected {want:08x}, got {got:08x} in {hexs(data)}")
    if data[:2] != ENVELOPE_MAGIC:
        raise EnvelopeError(f"magic: expected {ENVELOPE_MAGIC.hex()}, got {data[:2].hex()}")
    if data[2] != ENVELOPE_VERSION:
        raise EnvelopeError(f"version: expected {ENVELOPE_VERSION}, got {data[2]}")
    cls = _KINDS.get(data[3])
    if cls is None:
        raise EnvelopeError(f"kind: unknown job kind {data[3]:02x} in {hexs(data[:4])}")
    r = Reader(data[4:-_CRC_SIZE], cls.__name__)
    job_id: int | None = None
    mac: str | None = None
    try:
        job_id = r.int(U64, "job_id")
        mac = address_str(r.take(6, "mac"))
        common: dict[str, object] = {"job_id": job_id, "mac": mac,
                                     "deadline_s": r.int(U16, "deadline_s"),
                                     "attempt": r.int(U8, "attempt")}
        job = cls._parse_body(r, common)
        r.end()
        return job
    except EnvelopeError as exc:
        raise EnvelopeError(str(exc), job_id=job_id, mac=mac) from None
    except ProtocolError as exc:
        raise EnvelopeError(str(exc), job_id=job_id, mac=mac) from None
    except (ValueError, TypeError, IndexError, KeyError) as exc:  # defensive: nothing else escapes
        raise EnvelopeError(f"malformed envelope {hexs(data)}: {exc}", job_id=job_id, mac=mac) from None


class JobSession(GatewaySession):
    """The gateway session for one `ImageJob` / `CommandJob`: seals only inside its budget.

    Starts at the job's ``tx_counter`` (or ``start``, when a restarted gateway already used
    counters of this job) with the receive window at ``rx_highest``. `seal` raises
    `BudgetExhausted` instead of using a counter above ``tx_counter + budget``, or above
    ``reserved`` (the highest counter the gateway has durably noted as used; it raises
    ``reserved`` ahead of each protocol step so a crash never forgets a used counter).
    """

    def __init__(self, job: ImageJob | CommandJob, *, start: int | None = None,
                 addressed: bool = False) -> None:
        highest = job.rx_highest
        window = ReplayWindow(highest=highest, mask=(1 << REPLAY_WINDOW) - 1 if highest else 0)
        first = job.tx_counter if start is None else max(job.tx_counter, start)
        super().__init__(job.mac, job.label_key, tx_counter=first, rx=window, addressed=addressed)
        self.limit = job.counter_limit
        self.reserved = self.limit

    @property
    def remaining(self) -> int:
        """Counters left in the budget."""
        return max(0, self.limit - self.tx_counter)

    def seal(self, frame: Frame) -> bytes:
        nxt = self.tx_counter + 1
        if nxt > self.limit:
            raise BudgetExhausted(f"tx_counter: {nxt} is past the job's budget (last {self.limit})")
        if nxt > self.reserved:
            raise BudgetExhausted(f"tx_counter: {nxt} is past the reserved counters (last {self.reserved})")
        return super().seal(frame)
