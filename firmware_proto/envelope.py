"""Job envelopes: what the server asks a gateway to do with one label, as signed bytes on MQTT.

A job is one of three kinds, each a frozen dataclass with `to_bytes(signer)` / `from_bytes()`:

- `PairJob`: give an unpaired label its key. The server builds the whole pair request frame
  (the new key wrapped under the label's factory key) itself: the gateway only forwards it, and
  neither key ever reaches the gateway;
- `ImageJob`: send an image (whole, region, delta) to a paired label;
- `CommandJob`: send one ESL control-point command (LED flash, ping, ...) to a paired label.

Layout, version 2 and 3 (integers little-endian, MAC most significant byte first as in frames)::

    magic      E5 4A
    version    u8   2, or 3 when the envelope carries an endorsement (version 1 carried label
                    keys in the clear and was not signed)
    kind       u8   1 PAIR, 2 IMAGE, 3 COMMAND
    job_id     u64
    mac        6
    deadline_s u16  how long the gateway may keep trying before it nacks "unreachable"
    attempt    u8   the server's retry number (job_id + attempt names one delivery)
    issued_ms  u64  when the server signed it (Unix time, milliseconds)
    store      u8 length, UTF-8   the store and the gateway the envelope is for: a gateway
    gateway    u8 length, UTF-8   refuses one addressed to anybody else
    body       per kind:
      PAIR     frame_len u16 | pair request frame (sealed by the server under the factory key)
      IMAGE    ticket_len u8 | job ticket frame | sealed job key 64 | rx_highest u32 |
               image_format u8 | flags u8 (1 REGION, 2 BASE, 4 DELTA) | image_hash 8 |
               [x u16 y u16 w u16 h u16] | [base_hash 8] | payload_len u24 | payload
      COMMAND  ticket_len u8 | job ticket frame | sealed job key 64 | rx_highest u32 |
               frame_len u16 | frame (an unsealed ControlCommand frame)
    endorsement 128 version 3 only: endorser public key 32 | new public key 32 | signature 64
                    (`firmware_proto.trust.Endorsement`: the server's previous key vouching
                    for the key that signs this envelope, while a rotation is under way)
    signature  64   Ed25519, the server's key, over everything before it
    crc32      u32  CRC-32 (zlib) over everything before it

Keys: the envelope carries no label key and no factory key. An image or command job carries
a job key (`firmware_proto.jobkeys`) encrypted to the addressed gateway's own X25519 key
(`firmware_proto.trust`), and the job ticket the gateway forwards unchanged so the label can
derive the same key. The ticket names the job's counter range ``first .. last``: the ticket
itself uses ``first``, the job's frames ``first + 1 .. last``, and `JobSession` seals with no
other counter, so no counter is used twice even when a gateway dies mid-job.

Decoding (`parse_envelope`) checks the length against `MAX_ENVELOPE` and the CRC before reading
a field, reads every length-prefixed field only after checking it against what is left, and
raises only `EnvelopeError` (a `ProtocolError`) naming the field. `verify_envelope` also checks
the signature (`EnvelopeError` with ``code`` ``unsigned`` or ``bad_signature``);
`follow_envelope` also accepts an envelope signed by a key that the trusted key endorsed in it,
and says so, so that the gateway can trust that key from then on. A version 2 envelope is what
every envelope was before rotation existed: an envelope without an endorsement is still written
as version 2, so a gateway that knows only version 2 notices a rotation only while one is under
way (it nacks those envelopes ``bad_job``).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from enum import IntEnum, IntFlag
from typing import ClassVar, Final, Self

from firmware_proto.auth import REPLAY_WINDOW, ReplayWindow
from firmware_proto.errors import AuthError, ProtocolError
from firmware_proto.frames import (
    ControlCommand,
    Frame,
    JobStatus,
    JobTicket,
    PairRequest,
    address_bytes,
    address_str,
    parse_frame,
)
from firmware_proto.gateway import GatewaySession
from firmware_proto.image import HASH_SIZE, ImageFormat, Region
from firmware_proto.jobkeys import derive_job_key, make_ticket
from firmware_proto.transfer import ImageUpdate
from firmware_proto.trust import (
    ENDORSEMENT_SIZE,
    SEALED_KEY_SIZE,
    SIGNATURE_SIZE,
    Endorsement,
    GatewayKey,
    SigningKey,
    TrustError,
    VerifyKey,
    seal_job_key,
)
from firmware_proto.wire import U8, U16, U24, U32, U64, Reader, WireInt, hexs

__all__ = [
    "ENVELOPE_MAGIC", "ENVELOPE_VERSION", "MAX_PAYLOAD", "MAX_ENVELOPE", "MAX_NAME", "EnvelopeError",
    "BudgetExhausted", "JobKind", "ImageFlag", "JobEnvelope", "PairJob", "ImageJob", "CommandJob",
    "parse_envelope", "verify_envelope", "job_key_aad", "credentials", "open_job_key", "JobSession",
    "ENDORSED_VERSION", "envelope_endorsement", "follow_envelope",
]

ENVELOPE_MAGIC = b"\xe5\x4a"
ENVELOPE_VERSION = 2
ENDORSED_VERSION: Final = 3
"""Version 2 plus an endorsement (`Endorsement`) before the signature."""
MAX_PAYLOAD = 1 << 20
"""Largest image payload an envelope carries (the largest label buffer is 96,000 bytes)."""
MAX_ENVELOPE = MAX_PAYLOAD + 1024
"""No envelope is longer; decoders refuse longer input before looking at it."""
MAX_NAME: Final = 64
"""Longest store or gateway id, in UTF-8 bytes."""
_HEADER_SIZE = 2 + 1 + 1 + 8 + 6 + 2 + 1 + 8 + 1 + 1 + 1 + 1
_TRAILER_SIZE = SIGNATURE_SIZE + 4
_CRC_SIZE = 4
_UNSIGNED = bytes(SIGNATURE_SIZE)


class EnvelopeError(ProtocolError):
    """A job envelope that cannot be built, decoded or trusted; names the field, never a key.

    ``job_id`` and ``mac`` are set when the header was intact (CRC verified) but the rest was
    not, so a gateway can still nack the job. ``code`` is the nack code that says why
    (``bad_job``, ``unsigned``, ``bad_signature``, ...).
    """

    def __init__(self, message: str, *, job_id: int | None = None, mac: str | None = None,
                 code: str = "bad_job", attempt: int | None = None) -> None:
        super().__init__(message)
        self.job_id = job_id
        self.mac = mac
        self.code = code
        self.attempt = attempt


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
        shown = "" if "key" in field else f": {hexs(value)}"  # key material is never quoted
        raise EnvelopeError(f"{field}: expected {size} bytes, got {len(value)}{shown}")
    return value


def _check_name(field: str, value: object) -> bytes:
    """A store or gateway id as its UTF-8 bytes (1..`MAX_NAME`, no MQTT wildcard or separator)."""
    if not isinstance(value, str):
        raise EnvelopeError(f"{field}: expected a string, got {value!r:.60}")
    raw = value.encode("utf-8", "surrogatepass")
    if not 1 <= len(raw) <= MAX_NAME or any(c in value for c in "/+#\x00"):
        raise EnvelopeError(f"{field}: expected 1..{MAX_NAME} UTF-8 bytes without '/', '+', '#', got {value!r:.80}")
    return raw


def _ser(wire_type: type[WireInt], value: int) -> bytes:
    return int(value).to_bytes(wire_type.size, "little", signed=wire_type.signed)


def _read_name(r: Reader, field: str) -> str:
    raw = r.take(r.int(U8, f"{field}_len"), field)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise EnvelopeError(f"{field}: not UTF-8: {hexs(raw)}") from None


def job_key_aad(job_id: int, attempt: int, mac: str | bytes, store: str, gateway: str) -> bytes:
    """The associated data a job key is sealed with: the job, the label, the store, the gateway."""
    return (b"esl job key v1\x00" + _ser(U64, job_id) + _ser(U8, attempt) + address_bytes(mac)
            + _check_name("store", store) + b"\x00" + _check_name("gateway", gateway))


def credentials(*, label_key: bytes, gateway_key: bytes, job_id: int, attempt: int, mac: str,
                store: str, gateway: str, first: int, last: int) -> dict[str, bytes]:
    """What the server puts in an image or command job: the ``ticket`` (sealed with the label
    key) and the job key sealed to the gateway's X25519 public key `gateway_key`
    (``sealed_key``). The label key itself goes nowhere."""
    job_key = derive_job_key(label_key, mac, job_id, attempt, first, last)
    return {"ticket": make_ticket(label_key, mac, job_id, attempt, first, last),
            "sealed_key": seal_job_key(gateway_key, job_key, job_key_aad(job_id, attempt, mac, store, gateway))}


@dataclass(frozen=True, kw_only=True)
class JobEnvelope:
    """The common header of every job. Use a subclass; `from_bytes` returns the right one.

    ``mac`` is normalised to ``AA:BB:CC:DD:EE:FF``. ``deadline_s`` is counted from when the
    gateway received the job; ``attempt`` is the server's retry number; ``issued_ms`` when the
    server signed it; ``store`` and ``gateway`` name the one gateway it is for.
    """

    kind: ClassVar[JobKind]
    job_id: int
    mac: str
    store: str
    gateway: str
    issued_ms: int
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
        _check("issued_ms", U64, self.issued_ms)
        _check_name("store", self.store)
        _check_name("gateway", self.gateway)

    @property
    def mac_bytes(self) -> bytes:
        return address_bytes(self.mac)

    @property
    def expires_ms(self) -> int:
        """When the envelope stops being worth running: issued plus the deadline."""
        return self.issued_ms + 1000 * self.deadline_s

    # -- encoding -----------------------------------------------------------------------------
    def _body(self) -> bytes:
        raise NotImplementedError

    @classmethod
    def _parse_body(cls, r: Reader, common: dict[str, object]) -> Self:
        raise NotImplementedError

    def signed_part(self, endorsement: Endorsement | None = None) -> bytes:
        """The bytes the signature covers: everything before it (version 3 with `endorsement`)."""
        store, gateway = _check_name("store", self.store), _check_name("gateway", self.gateway)
        version = ENVELOPE_VERSION if endorsement is None else ENDORSED_VERSION
        head = (ENVELOPE_MAGIC + bytes((version, int(self.kind))) + _ser(U64, self.job_id)
                + self.mac_bytes + _ser(U16, self.deadline_s) + _ser(U8, self.attempt)
                + _ser(U64, self.issued_ms) + _ser(U8, len(store)) + store + _ser(U8, len(gateway)) + gateway)
        out = head + self._body() + (b"" if endorsement is None else endorsement.to_bytes())
        if len(out) + _TRAILER_SIZE > MAX_ENVELOPE:
            raise EnvelopeError(f"envelope: {len(out) + _TRAILER_SIZE} bytes is over MAX_ENVELOPE {MAX_ENVELOPE}")
        return out

    def to_bytes(self, signer: SigningKey | None) -> bytes:
        """The envelope signed by `signer` (the server's key), carrying its endorsement if it
        has one (version 3); None leaves the signature all zeros, an unsigned envelope every
        gateway refuses (for tests of exactly that)."""
        out = self.signed_part(None if signer is None else signer.endorsement)
        out += _UNSIGNED if signer is None else signer.sign(out)
        return out + _ser(U32, zlib.crc32(out))

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        """Decode an envelope (signature not checked); on a subclass, also check its kind."""
        job = parse_envelope(data)
        if not isinstance(job, cls):
            raise EnvelopeError(f"kind: expected a {cls.__name__}, got {type(job).__name__}",
                                job_id=job.job_id, mac=job.mac, attempt=job.attempt)
        return job


@dataclass(frozen=True, kw_only=True)
class PairJob(JobEnvelope):
    """Pair a label: forward ``pair_request``, a `PairRequest` frame the server built and sealed
    under the label's factory key (the new key inside is wrapped under it too)."""

    kind: ClassVar[JobKind] = JobKind.PAIR
    pair_request: bytes = field(repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.pair_request, bytes):
            raise EnvelopeError(f"pair_request: expected bytes, got {type(self.pair_request).__name__}")
        frame = _parse_inner("pair_request", self.pair_request)
        if not isinstance(frame, PairRequest) or frame.auth is None:
            raise EnvelopeError(f"pair_request: expected a sealed PairRequest frame, got {type(frame).__name__}")
        _check_address("pair_request", frame, self.mac_bytes)

    @property
    def factory_counter(self) -> int:
        """The factory-key counter the pair request uses."""
        frame = parse_frame(self.pair_request)
        assert frame.auth is not None
        return frame.auth.counter

    def _body(self) -> bytes:
        return _ser(U16, len(self.pair_request)) + self.pair_request

    @classmethod
    def _parse_body(cls, r: Reader, common: dict[str, object]) -> Self:
        return cls(pair_request=r.take(r.int(U16, "frame_len"), "pair_request"), **common)  # type: ignore[arg-type]


def _parse_inner(field: str, raw: bytes) -> Frame:
    try:
        return parse_frame(raw)
    except ProtocolError as exc:
        raise EnvelopeError(f"{field}: {exc}") from None


def _check_address(field: str, frame: Frame, mac: bytes) -> None:
    if frame.address is not None and frame.address != mac:
        raise EnvelopeError(f"{field}: addressed to {address_str(frame.address)}, job is for {address_str(mac)}")


@dataclass(frozen=True, kw_only=True)
class _CountedJob(JobEnvelope):
    """A job sealed under a job key, with counters from the server's reservation.

    ``ticket`` is the sealed `JobTicket` (the gateway sends it first, unchanged); ``sealed_key``
    the job key sealed to the gateway (`open_job_key`); ``rx_highest`` the highest counter the
    server knows the label sent (the gateway refuses the label's frames at or below it).
    """

    ticket: bytes = field(repr=False)
    sealed_key: bytes = field(repr=False)
    rx_highest: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.ticket, bytes):
            raise EnvelopeError(f"ticket: expected bytes, got {type(self.ticket).__name__}")
        if not 0 < len(self.ticket) <= 0xFF:
            raise EnvelopeError(f"ticket: expected 1..255 bytes, got {len(self.ticket)}")
        frame = _parse_inner("ticket", self.ticket)
        if not isinstance(frame, JobTicket) or frame.auth is None:
            raise EnvelopeError(f"ticket: expected a sealed JobTicket frame, got {type(frame).__name__}")
        if (frame.job_id, frame.attempt) != (self.job_id, self.attempt):
            raise EnvelopeError(f"ticket: for job {frame.job_id} attempt {frame.attempt}, "
                                f"envelope is job {self.job_id} attempt {self.attempt}")
        _check_address("ticket", frame, self.mac_bytes)
        _check_bytes("sealed_key", self.sealed_key, SEALED_KEY_SIZE)
        _check("rx_highest", U32, self.rx_highest)
        object.__setattr__(self, "_ticket", frame)

    @property
    def ticket_frame(self) -> JobTicket:
        return object.__getattribute__(self, "_ticket")  # type: ignore[no-any-return]

    @property
    def first(self) -> int:
        """The ticket's counter: the job's frames use the counters after it."""
        return self.ticket_frame.first

    @property
    def counter_limit(self) -> int:
        """The last counter this job may seal with."""
        return self.ticket_frame.last

    def _counters(self) -> bytes:
        return _ser(U8, len(self.ticket)) + self.ticket + self.sealed_key + _ser(U32, self.rx_highest)

    @staticmethod
    def _parse_counters(r: Reader) -> dict[str, object]:
        ticket = r.take(r.int(U8, "ticket_len"), "ticket")
        return {"ticket": ticket, "sealed_key": r.take(SEALED_KEY_SIZE, "sealed_key"),
                "rx_highest": r.int(U32, "rx_highest")}


@dataclass(frozen=True, kw_only=True)
class ImageJob(_CountedJob):
    """Send an image: the fields of `firmware_proto.transfer.ImageUpdate` plus the job's keys.

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
    def from_update(cls, update: ImageUpdate, *, job_id: int, mac: str, store: str, gateway: str,
                    issued_ms: int, ticket: bytes, sealed_key: bytes, rx_highest: int = 0,
                    deadline_s: int = 60, attempt: int = 0) -> ImageJob:
        """The job that applies `update` (from `plan_update`) to the label."""
        return cls(job_id=job_id, mac=mac, store=store, gateway=gateway, issued_ms=issued_ms,
                   deadline_s=deadline_s, attempt=attempt, ticket=ticket, sealed_key=sealed_key,
                   rx_highest=rx_highest, image_format=update.image_format, image_hash=update.image_hash,
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
    def make(cls, name: str, *, job_id: int, mac: str, store: str, gateway: str, issued_ms: int,
             ticket: bytes, sealed_key: bytes, rx_highest: int = 0, deadline_s: int = 60,
             attempt: int = 0, **params: int) -> CommandJob:
        """A command job by the command's table name (`firmware_proto.commands`)."""
        try:
            command = ControlCommand.make(name, **params)
        except ProtocolError as exc:
            raise EnvelopeError(f"command: {exc}") from None
        return cls(job_id=job_id, mac=mac, store=store, gateway=gateway, issued_ms=issued_ms,
                   deadline_s=deadline_s, attempt=attempt, ticket=ticket, sealed_key=sealed_key,
                   rx_highest=rx_highest, command=command)

    def _body(self) -> bytes:
        frame = self.command.to_bytes()
        return self._counters() + _ser(U16, len(frame)) + frame

    @classmethod
    def _parse_body(cls, r: Reader, common: dict[str, object]) -> Self:
        counters = cls._parse_counters(r)
        size = r.int(U16, "frame_len")
        raw = r.take(size, "frame")
        frame = _parse_inner("frame", raw)
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


def _header_ids(data: bytes) -> tuple[int | None, str | None, int | None]:
    """job id, MAC and attempt from a header, if the bytes are there (version 1 and 2 agree on
    where they are), so that a refused envelope can still be nacked."""
    if len(data) < 21:
        return None, None, None
    return int.from_bytes(data[4:12], "little"), address_str(data[12:18]), data[20]


def parse_envelope(data: bytes) -> JobEnvelope:
    """Decode one envelope (the signature is not checked: `verify_envelope` does). Returns a
    `PairJob`, `ImageJob` or `CommandJob`, or raises `EnvelopeError` (nothing else).

    Checks, in order: type and length, CRC, magic, version, kind, then the header fields and
    the body, each read only after its length was checked against what is left.
    """
    return _parse(data)[0]


def envelope_endorsement(data: bytes) -> Endorsement | None:
    """The endorsement a version 3 envelope carries (decoded, not verified), None in version 2."""
    return _parse(data)[1]


def _parse(data: bytes) -> tuple[JobEnvelope, Endorsement | None]:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise EnvelopeError(f"envelope must be bytes, got {type(data).__name__}")
    data = bytes(data)
    if not _HEADER_SIZE + _TRAILER_SIZE <= len(data) <= MAX_ENVELOPE:
        raise EnvelopeError(f"envelope: length must be {_HEADER_SIZE + _TRAILER_SIZE}..{MAX_ENVELOPE}, "
                            f"got {len(data)}: {hexs(data)}")
    got = int.from_bytes(data[-_CRC_SIZE:], "little")
    want = zlib.crc32(data[:-_CRC_SIZE])
    if got != want:
        raise EnvelopeError(f"crc32: expected {want:08x}, got {got:08x} in {hexs(data)}")
    if data[:2] != ENVELOPE_MAGIC:
        raise EnvelopeError(f"magic: expected {ENVELOPE_MAGIC.hex()}, got {data[:2].hex()}")
    job_id, mac, attempt = _header_ids(data)
    if data[2] not in (ENVELOPE_VERSION, ENDORSED_VERSION):
        code = "unsigned" if data[2] < ENVELOPE_VERSION else "bad_job"
        raise EnvelopeError(f"version: expected {ENVELOPE_VERSION} or {ENDORSED_VERSION}, got {data[2]}"
                            + (" (unsigned, with keys in the clear: the server is too old)" if code == "unsigned" else ""),
                            job_id=job_id, mac=mac, attempt=attempt, code=code)
    cls = _KINDS.get(data[3])
    if cls is None:
        raise EnvelopeError(f"kind: unknown job kind {data[3]:02x} in {hexs(data[:4])}",
                            job_id=job_id, mac=mac, attempt=attempt)
    trailer = _TRAILER_SIZE + (ENDORSEMENT_SIZE if data[2] == ENDORSED_VERSION else 0)
    if len(data) < _HEADER_SIZE + trailer:
        raise EnvelopeError(f"envelope: version {data[2]} needs at least {_HEADER_SIZE + trailer} bytes, "
                            f"got {len(data)}", job_id=job_id, mac=mac, attempt=attempt)
    r = Reader(data[4:-trailer], cls.__name__)
    try:
        common: dict[str, object] = {"job_id": r.int(U64, "job_id"), "mac": address_str(r.take(6, "mac")),
                                     "deadline_s": r.int(U16, "deadline_s"), "attempt": r.int(U8, "attempt"),
                                     "issued_ms": r.int(U64, "issued_ms"), "store": _read_name(r, "store"),
                                     "gateway": _read_name(r, "gateway")}
        job = cls._parse_body(r, common)
        r.end()
        endorsement = None
        if trailer > _TRAILER_SIZE:
            endorsement = Endorsement.from_bytes(data[-trailer:-_TRAILER_SIZE])
        return job, endorsement
    except TrustError as exc:
        raise EnvelopeError(str(exc), job_id=job_id, mac=mac, attempt=attempt) from None
    except EnvelopeError as exc:
        raise EnvelopeError(str(exc), job_id=job_id, mac=mac, attempt=attempt) from None
    except ProtocolError as exc:
        raise EnvelopeError(str(exc), job_id=job_id, mac=mac, attempt=attempt) from None
    except (ValueError, TypeError, IndexError, KeyError) as exc:  # defensive: nothing else escapes
        raise EnvelopeError(f"malformed envelope {hexs(data)}: {exc}", job_id=job_id, mac=mac,
                            attempt=attempt) from None


def verify_envelope(data: bytes, server_key: VerifyKey) -> JobEnvelope:
    """`parse_envelope`, then the signature under `server_key`: `EnvelopeError` with ``code``
    ``unsigned`` (no signature, or a version 1 envelope) or ``bad_signature``."""
    job, _ = _parse(data)
    _check_signature(data, job, server_key)
    return job


def _check_signature(data: bytes, job: JobEnvelope, key: VerifyKey, why: str = "") -> None:
    ids = {"job_id": job.job_id, "mac": job.mac, "attempt": job.attempt}
    signature = bytes(data[-_TRAILER_SIZE:-_CRC_SIZE])
    if signature == _UNSIGNED:
        raise EnvelopeError("signature: the envelope is not signed", code="unsigned", **ids)  # type: ignore[arg-type]
    try:
        key.verify(signature, bytes(data[:-_TRAILER_SIZE]))
    except TrustError as exc:
        raise EnvelopeError(str(exc) + why, code="bad_signature", **ids) from None  # type: ignore[arg-type]


def follow_envelope(data: bytes, trusted: VerifyKey) -> tuple[JobEnvelope, VerifyKey]:
    """`verify_envelope` for a gateway that follows key rotations: the job and the key that
    signed it. That is `trusted`, or the key an endorsement in the envelope names when
    `trusted` made the endorsement (`Endorsement.verify`) and that key signed the envelope: the
    caller trusts that key from then on. Anything else is ``bad_signature`` (``unsigned`` for
    an unsigned envelope), as in `verify_envelope`. One step only: an endorsement by any key
    but `trusted` (an older one, or a key in between) is refused.
    """
    job, endorsement = _parse(data)
    if endorsement is None or endorsement.new_key == trusted:
        _check_signature(data, job, trusted)
        return job, trusted
    try:
        _check_signature(data, job, trusted)
        return job, trusted  # the trusted key signed it: what it carries changes nothing
    except EnvelopeError as exc:
        if exc.code != "bad_signature":
            raise
    try:
        endorsement.verify(trusted)
    except TrustError as exc:
        raise EnvelopeError(f"signature: by key {endorsement.new_key.fingerprint}, not the trusted key "
                            f"{trusted.fingerprint}, and {exc}", code="bad_signature", job_id=job.job_id,
                            mac=job.mac, attempt=job.attempt) from None
    _check_signature(data, job, endorsement.new_key, why=f" (the key {endorsement.new_key.fingerprint} "
                     f"the trusted key endorsed)")
    return job, endorsement.new_key


def open_job_key(job: ImageJob | CommandJob, key: GatewayKey) -> bytes:
    """The job key sealed in `job` for this gateway; `EnvelopeError` (code ``wrong_key``) when
    it was sealed to another gateway's key."""
    try:
        return key.open_job_key(job.sealed_key, job_key_aad(job.job_id, job.attempt, job.mac, job.store,
                                                            job.gateway))
    except TrustError as exc:
        raise EnvelopeError(str(exc), job_id=job.job_id, mac=job.mac, attempt=job.attempt,
                            code="wrong_key") from None


class JobSession(GatewaySession):
    """The gateway session for one `ImageJob` / `CommandJob`: seals only inside its budget.

    Seals with the job key (never the label key, which the gateway does not have), starting
    after the ticket's counter (or after ``start``, when a restarted gateway already used
    counters of this job), with the receive window at ``rx_highest``. `seal` raises
    `BudgetExhausted` instead of using a counter above the ticket's ``last``, or above
    ``reserved`` (the highest counter the gateway has durably noted as used; it raises
    ``reserved`` ahead of each protocol step so a crash never forgets a used counter).

    `open` verifies the label's answers under the job key, except its final word: a
    `JobStatus` for this job is returned unverified (the gateway cannot check it; it forwards
    it raw, and the server checks it with the label key) and kept in ``final``.
    """

    def __init__(self, job: ImageJob | CommandJob, job_key: bytes, *, start: int | None = None,
                 addressed: bool = False) -> None:
        highest = job.rx_highest
        window = ReplayWindow(highest=highest, mask=(1 << REPLAY_WINDOW) - 1 if highest else 0)
        first = job.first if start is None else max(job.first, start)
        super().__init__(job.mac, job_key, tx_counter=first, rx=window, addressed=addressed)
        self.job = job
        self.limit = job.counter_limit
        self.reserved = self.limit
        self.final: tuple[JobStatus, bytes] | None = None

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

    def open(self, data: bytes) -> Frame:
        frame = parse_frame(data)
        if isinstance(frame, JobStatus):
            if frame.address != self.address or frame.auth is None:
                raise AuthError("job_status: not from this label, or not authenticated")
            if (frame.job_id, frame.attempt) != (self.job.job_id, self.job.attempt):
                raise AuthError(f"job_status: for job {frame.job_id} attempt {frame.attempt}, "
                                f"not this one ({self.job.job_id} attempt {self.job.attempt})")
            if self.final is None:
                self.final = (frame, bytes(data))
            return frame
        return super().open(data)
