"""Frames: the units a link carries, as frozen dataclasses with `to_bytes()` / `from_bytes()`.

Layout (all integers little-endian)::

    header  ver<<4|flags (1)  type (1)  seq (1)
    [address (6)]               if flags & ADDR  (label MAC, most significant byte first)
    body                        per frame type
    [counter u32, tag (4)]      if flags & AUTH  (AES-CCM over everything before the tag)
    crc16 (2)                   CRC-16/CCITT-FALSE over everything before it

Three header bytes and a two-byte CRC are all an unauthenticated frame costs; the address only
travels where no connection identifies the label (check-ins, a shared store radio). `seq` lets a
response name the request it answers. `parse_frame` checks the CRC, then every length against the
data and `MAX_FRAME` before it reads a field, and raises only `ProtocolError`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import IntEnum, IntFlag
from typing import ClassVar, Self

from firmware_proto.commands import OpSpec, command_spec, param_length, response_spec
from firmware_proto.crc import crc16
from firmware_proto.errors import FrameError, ProtocolError
from firmware_proto.image import HASH_SIZE
from firmware_proto.wire import I8, U8, U16, U24, U32, U64, Reader, check_range, hexs

__all__ = [
    "PROTOCOL_VERSION", "MAX_FRAME", "DEFAULT_MTU", "HEADER_SIZE", "CRC_SIZE", "AUTH_SIZE",
    "TAG_SIZE", "ADDRESS_SIZE", "FrameType", "HeaderFlag", "Auth", "Frame",
    "ControlCommand", "ControlResponse", "ImageOffer", "ImagePart", "ImageStatusRequest",
    "ImageStatus", "TransferState", "OfferFlag", "Checkin", "CheckinFlag", "PairRequest",
    "JobTicket", "JobStatus", "FRAME_CLASSES", "parse_frame", "address_bytes", "address_str",
]

PROTOCOL_VERSION = 1
MAX_FRAME = 1024
"""No frame is longer; decoders refuse longer input before looking at it."""
DEFAULT_MTU = 244
"""BLE: ATT MTU 247 minus the 3-byte write header fills one 251-byte LL data PDU."""
HEADER_SIZE = 3
CRC_SIZE = 2
TAG_SIZE = 4
AUTH_SIZE = 4 + TAG_SIZE
ADDRESS_SIZE = 6
WRAPPED_KEY_SIZE = 16 + 8


class FrameType(IntEnum):
    CONTROL_COMMAND = 0x01
    CONTROL_RESPONSE = 0x02
    IMAGE_OFFER = 0x10
    IMAGE_PART = 0x11
    IMAGE_STATUS_REQUEST = 0x12
    IMAGE_STATUS = 0x13
    CHECKIN = 0x20
    PAIR_REQUEST = 0x30
    JOB_TICKET = 0x40
    JOB_STATUS = 0x41


class HeaderFlag(IntFlag):
    ADDR = 0x1     # a 6-byte label address follows the header
    AUTH = 0x2     # counter + AES-CCM tag precede the CRC
    ACK_REQ = 0x4  # the sender asks for a status answer


def address_bytes(address: str | bytes) -> bytes:
    """A MAC as 6 bytes from ``"AA:BB:CC:DD:EE:FF"`` or bytes; `FrameError` otherwise."""
    if isinstance(address, bytes):
        raw = address
    else:
        try:
            raw = bytes.fromhex(address.replace(":", "").replace("-", ""))
        except ValueError:
            raise FrameError(f"address: not a MAC address: {address!r}") from None
    if len(raw) != ADDRESS_SIZE:
        raise FrameError(f"address: expected {ADDRESS_SIZE} bytes, got {len(raw)}: {hexs(raw)}")
    return raw


def address_str(address: bytes) -> str:
    return ":".join(f"{b:02X}" for b in address)


@dataclass(frozen=True, slots=True)
class Auth:
    """The authentication trailer: sender's counter and the truncated AES-CCM tag."""

    counter: int
    tag: bytes

    def __post_init__(self) -> None:
        check_range("auth.counter", U32, self.counter)
        if len(self.tag) != TAG_SIZE:
            raise FrameError(f"auth.tag: expected {TAG_SIZE} bytes, got {len(self.tag)}")  # tags are never quoted


@dataclass(frozen=True, kw_only=True)
class Frame:
    """Common header fields; subclasses add a body."""

    frame_type: ClassVar[FrameType]
    seq: int = 0
    address: bytes | None = None
    ack_req: bool = False
    auth: Auth | None = None
    version: int = PROTOCOL_VERSION

    def __post_init__(self) -> None:
        check_range("seq", U8, self.seq)
        if self.address is not None and len(self.address) != ADDRESS_SIZE:
            raise FrameError(f"address: expected {ADDRESS_SIZE} bytes, got {hexs(self.address)}")
        if self.version != PROTOCOL_VERSION:
            raise FrameError(f"version: expected {PROTOCOL_VERSION}, got {self.version}")

    # -- encoding -------------------------------------------------------------------------
    def _body(self) -> bytes:
        raise NotImplementedError

    @classmethod
    def _parse_body(cls, r: Reader, common: dict[str, object]) -> Self:
        raise NotImplementedError

    def flags(self) -> HeaderFlag:
        f = HeaderFlag(0)
        if self.address is not None:
            f |= HeaderFlag.ADDR
        if self.auth is not None:
            f |= HeaderFlag.AUTH
        if self.ack_req:
            f |= HeaderFlag.ACK_REQ
        return f

    def mac_input(self) -> bytes:
        """The bytes the AES-CCM tag covers: header, address, body and the counter."""
        if self.auth is None:
            raise FrameError(f"{type(self).__name__} has no auth trailer to cover")
        return self._unsealed() + U32(self.auth.counter).serialize()

    def _unsealed(self) -> bytes:
        head = bytes((self.version << 4 | int(self.flags()), int(self.frame_type), self.seq))
        return head + (self.address or b"") + self._body()

    def to_bytes(self) -> bytes:
        out = self._unsealed()
        if self.auth is not None:
            out += U32(self.auth.counter).serialize() + self.auth.tag
        if len(out) + CRC_SIZE > MAX_FRAME:
            raise FrameError(f"{type(self).__name__} is {len(out) + CRC_SIZE} bytes, over MAX_FRAME {MAX_FRAME}")
        return out + U16(crc16(out)).serialize()

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        frame = parse_frame(data)
        if not isinstance(frame, cls):
            raise FrameError(f"expected a {cls.__name__} frame, got {type(frame).__name__}")
        return frame

    def with_auth(self, auth: Auth | None) -> Self:
        return replace(self, auth=auth)

    @property
    def wire_size(self) -> int:
        return len(self.to_bytes())


# -- ESL control point -------------------------------------------------------------------


def _encode_params(spec: OpSpec, params: tuple[int, ...], what: str) -> bytes:
    if len(params) != len(spec.params):
        raise FrameError(f"{what} {spec.name}: expected {len(spec.params)} parameters, got {len(params)}")
    return b"".join(p.wire_type(check_range(f"{spec.name}.{p.name}", p.wire_type, v)).serialize()
                    for p, v in zip(spec.params, params))


def _decode_params(spec: OpSpec, r: Reader) -> tuple[int, ...]:
    return tuple(r.int(p.wire_type, f"{spec.name}.{p.name}") for p in spec.params)


@dataclass(frozen=True, kw_only=True)
class _Control(Frame):
    opcode: int
    params: tuple[int, ...] = ()

    _kind: ClassVar[str] = ""

    def spec(self) -> OpSpec:
        raise NotImplementedError

    def get(self, name: str) -> int:
        """A parameter by its table name."""
        for p, v in zip(self.spec().params, self.params):
            if p.name == name:
                return v
        raise FrameError(f"{self.spec().name} has no parameter {name!r}")

    @property
    def name(self) -> str:
        return self.spec().name


@dataclass(frozen=True, kw_only=True)
class ControlCommand(_Control):
    """One ESL control-point command (gateway → label)."""

    frame_type: ClassVar[FrameType] = FrameType.CONTROL_COMMAND

    def __post_init__(self) -> None:
        super(ControlCommand, self).__post_init__()
        check_range("opcode", U8, self.opcode)
        _encode_params(self.spec(), self.params, "command")

    def spec(self) -> OpSpec:
        try:
            return command_spec(self.opcode, self.version)
        except ProtocolError as exc:
            raise FrameError(str(exc)) from None

    @classmethod
    def make(cls, name: str, *, seq: int = 0, esl_id: int = 0, **params: int) -> ControlCommand:
        """Build a command by table name; parameters by name, ``esl_id`` defaults to 0.

        ESL_ID is carried as the ESL Service defines it; our labels answer whatever its value,
        since a frame is already bound to one label by its address and key.
        """
        spec = command_spec(name)
        values = {"esl_id": esl_id, **params}
        unknown = set(values) - {p.name for p in spec.params}
        if unknown:
            raise FrameError(f"command {name}: unknown parameters {sorted(unknown)}")
        missing = [p.name for p in spec.params if p.name not in values]
        if missing:
            raise FrameError(f"command {name}: missing parameters {missing}")
        return cls(opcode=spec.opcode, params=tuple(values[p.name] for p in spec.params), seq=seq)

    def _body(self) -> bytes:
        return bytes((self.opcode,)) + _encode_params(self.spec(), self.params, "command")

    @classmethod
    def _parse_body(cls, r: Reader, common: dict[str, object]) -> Self:
        opcode = r.int(U8, "opcode")
        try:
            spec = command_spec(opcode)
        except ProtocolError as exc:
            raise FrameError(str(exc)) from None
        sub = Reader(r.take(param_length(opcode), "params"), spec.name)
        params = _decode_params(spec, sub)
        sub.end()
        return cls(opcode=opcode, params=params, **common)  # type: ignore[arg-type]


@dataclass(frozen=True, kw_only=True)
class ControlResponse(_Control):
    """One ESL control-point response (label → gateway); `data` only for Sensor Value."""

    frame_type: ClassVar[FrameType] = FrameType.CONTROL_RESPONSE
    data: bytes = b""

    def __post_init__(self) -> None:
        super(ControlResponse, self).__post_init__()
        check_range("opcode", U8, self.opcode)
        spec = self.spec()
        _encode_params(spec, self.params, "response")
        want = param_length(self.opcode) - spec.fixed_size
        if len(self.data) != (want if spec.variable_tail else 0):
            raise FrameError(
                f"response {spec.name}: data must be {want if spec.variable_tail else 0} bytes "
                f"for opcode {self.opcode:02x}, got {hexs(self.data)}"
            )

    def spec(self) -> OpSpec:
        try:
            return response_spec(self.opcode, self.version)
        except ProtocolError as exc:
            raise FrameError(str(exc)) from None

    @classmethod
    def make(cls, name: str, *, seq: int = 0, data: bytes = b"", **params: int) -> ControlResponse:
        spec = response_spec(name)
        opcode = spec.opcode
        if spec.variable_tail:
            n = spec.fixed_size + len(data) - 1
            if not 0 <= n <= 15:
                raise FrameError(f"response {name}: data of {len(data)} bytes does not fit an opcode")
            opcode = (n << 4) | (spec.opcode & 0x0F)
        names = [p.name for p in spec.params]
        if set(params) != set(names):
            raise FrameError(f"response {name}: expected parameters {names}, got {sorted(params)}")
        return cls(opcode=opcode, params=tuple(params[n] for n in names), data=data, seq=seq)

    def _body(self) -> bytes:
        return bytes((self.opcode,)) + _encode_params(self.spec(), self.params, "response") + self.data

    @classmethod
    def _parse_body(cls, r: Reader, common: dict[str, object]) -> Self:
        opcode = r.int(U8, "opcode")
        try:
            spec = response_spec(opcode)
        except ProtocolError as exc:
            raise FrameError(str(exc)) from None
        sub = Reader(r.take(param_length(opcode), "params"), spec.name)
        params = _decode_params(spec, sub)
        data = sub.rest() if spec.variable_tail else b""
        sub.end()
        return cls(opcode=opcode, params=params, data=data, **common)  # type: ignore[arg-type]


# -- image transfer ----------------------------------------------------------------------


class TransferState(IntEnum):
    NONE = 0        # the label has no such transfer (never offered, or forgotten)
    RECEIVING = 1   # parts outstanding: see the missing-parts bitmap
    DISPLAYED = 2   # complete, hash verified, on the panel
    FAILED = 3      # refused or failed; `error` says why (an EslError or a TransferResult)


class OfferFlag(IntFlag):
    REGION = 0x1  # x, y, w, h follow: the payload is that region's pixels
    BASE = 0x2    # base_hash follows: the update applies to the image with that hash
    DELTA = 0x4   # the payload is XOR against the base pixels (unchanged pixels are zeros)


@dataclass(frozen=True, kw_only=True)
class ImageOffer(Frame):
    """Gateway → label: an image (or a region of one) is coming.

    ``image_hash`` is the hash of the whole resulting framebuffer. An update that builds on what
    the label shows (a region, or a delta) names that image's ``base_hash``, so a label showing
    something else refuses instead of mixing images. ``delta`` means the payload decodes to
    new XOR old pixels: an unchanged pixel is a zero, which compresses to almost nothing.
    """

    frame_type: ClassVar[FrameType] = FrameType.IMAGE_OFFER
    transfer_id: int
    image_format: int
    image_hash: bytes
    total_size: int
    part_size: int
    region: tuple[int, int, int, int] | None = None
    base_hash: bytes | None = None
    delta: bool = False

    def __post_init__(self) -> None:
        super(ImageOffer, self).__post_init__()
        check_range("transfer_id", U8, self.transfer_id)
        check_range("image_format", U8, self.image_format)
        check_range("total_size", U24, self.total_size)
        check_range("part_size", U16, self.part_size)
        if self.total_size == 0 or self.part_size == 0:
            raise FrameError(f"total_size and part_size must be > 0, got {self.total_size}, {self.part_size}")
        if len(self.image_hash) != HASH_SIZE:
            raise FrameError(f"image_hash: expected {HASH_SIZE} bytes, got {hexs(self.image_hash)}")
        if self.base_hash is None and (self.region is not None or self.delta):
            raise FrameError("a region or delta update needs base_hash")
        if self.region is not None:
            if len(self.region) != 4:
                raise FrameError(f"region: expected (x, y, w, h), got {self.region!r}")
            for name, v in zip("xywh", self.region):
                check_range(f"region.{name}", U16, v)
        if self.base_hash is not None and len(self.base_hash) != HASH_SIZE:
            raise FrameError(f"base_hash: expected {HASH_SIZE} bytes, got {hexs(self.base_hash)}")

    @property
    def part_count(self) -> int:
        return -(-self.total_size // self.part_size)

    @property
    def offer_flags(self) -> OfferFlag:
        f = OfferFlag(0)
        if self.region is not None:
            f |= OfferFlag.REGION
        if self.base_hash is not None:
            f |= OfferFlag.BASE
        if self.delta:
            f |= OfferFlag.DELTA
        return f

    def _body(self) -> bytes:
        out = bytes((self.transfer_id, self.image_format, int(self.offer_flags))) + self.image_hash
        out += U24(self.total_size).serialize() + U16(self.part_size).serialize()
        if self.region is not None:
            out += b"".join(U16(v).serialize() for v in self.region)
        if self.base_hash is not None:
            out += self.base_hash
        return out

    @classmethod
    def _parse_body(cls, r: Reader, common: dict[str, object]) -> Self:
        tid = r.int(U8, "transfer_id")
        fmt = r.int(U8, "image_format")
        flags = r.int(U8, "flags")
        if flags & ~int(OfferFlag.REGION | OfferFlag.BASE | OfferFlag.DELTA):
            raise FrameError(f"image_offer.flags: unknown bits in {flags:02x}")
        h = r.take(HASH_SIZE, "image_hash")
        total = r.int(U24, "total_size")
        part = r.int(U16, "part_size")
        region = base = None
        if flags & OfferFlag.REGION:
            x, y, w, hh = (r.int(U16, n) for n in ("region.x", "region.y", "region.w", "region.h"))
            region = (x, y, w, hh)
        if flags & OfferFlag.BASE:
            base = r.take(HASH_SIZE, "base_hash")
        return cls(transfer_id=tid, image_format=fmt, image_hash=h, total_size=total,
                   part_size=part, region=region, base_hash=base, delta=bool(flags & OfferFlag.DELTA),
                   **common)  # type: ignore[arg-type]


@dataclass(frozen=True, kw_only=True)
class ImagePart(Frame):
    """Gateway → label: payload bytes at ``offset``, with a CRC-16 of (offset, data)."""

    frame_type: ClassVar[FrameType] = FrameType.IMAGE_PART
    transfer_id: int
    offset: int
    data: bytes
    crc: int = -1  # -1: compute

    def __post_init__(self) -> None:
        super(ImagePart, self).__post_init__()
        check_range("transfer_id", U8, self.transfer_id)
        check_range("offset", U24, self.offset)
        if not self.data:
            raise FrameError("image_part.data must not be empty")
        if self.crc == -1:
            object.__setattr__(self, "crc", self.expected_crc())
        check_range("crc", U16, self.crc)

    def expected_crc(self) -> int:
        return crc16(U24(self.offset).serialize() + self.data)

    @property
    def crc_ok(self) -> bool:
        return self.crc == self.expected_crc()

    def _body(self) -> bytes:
        return (bytes((self.transfer_id,)) + U24(self.offset).serialize()
                + U16(self.crc).serialize() + self.data)

    @classmethod
    def _parse_body(cls, r: Reader, common: dict[str, object]) -> Self:
        tid = r.int(U8, "transfer_id")
        off = r.int(U24, "offset")
        crc = r.int(U16, "crc")
        data = r.rest()
        return cls(transfer_id=tid, offset=off, crc=crc, data=data, **common)  # type: ignore[arg-type]


@dataclass(frozen=True, kw_only=True)
class ImageStatusRequest(Frame):
    """Gateway → label: "which parts of transfer N are you missing?" (sent after a timeout)."""

    frame_type: ClassVar[FrameType] = FrameType.IMAGE_STATUS_REQUEST
    transfer_id: int

    def __post_init__(self) -> None:
        super(ImageStatusRequest, self).__post_init__()
        check_range("transfer_id", U8, self.transfer_id)

    def _body(self) -> bytes:
        return bytes((self.transfer_id,))

    @classmethod
    def _parse_body(cls, r: Reader, common: dict[str, object]) -> Self:
        return cls(transfer_id=r.int(U8, "transfer_id"), **common)  # type: ignore[arg-type]


@dataclass(frozen=True, kw_only=True)
class ImageStatus(Frame):
    """Label → gateway: transfer state and a bitmap of missing parts.

    Every part before ``base`` has arrived. Bit ``i`` of ``bitmap`` (LSB first in each byte) is
    set when part ``base + i`` is missing. Parts past the bitmap are not reported (the label cut
    the bitmap to fit one frame); ``base`` is always the first missing part, so progress is
    always visible.
    """

    frame_type: ClassVar[FrameType] = FrameType.IMAGE_STATUS
    transfer_id: int
    state: TransferState
    error: int = 0
    base: int = 0
    bitmap: bytes = b""

    def __post_init__(self) -> None:
        super(ImageStatus, self).__post_init__()
        check_range("transfer_id", U8, self.transfer_id)
        check_range("error", U8, self.error)
        check_range("base", U16, self.base)
        if not isinstance(self.state, TransferState):
            raise FrameError(f"state: expected a TransferState, got {self.state!r}")

    def missing(self) -> list[int]:
        """Part indexes the bitmap reports missing."""
        return [self.base + i for i in range(len(self.bitmap) * 8) if self.bitmap[i >> 3] >> (i & 7) & 1]

    def _body(self) -> bytes:
        return (bytes((self.transfer_id, int(self.state), self.error))
                + U16(self.base).serialize() + self.bitmap)

    @classmethod
    def _parse_body(cls, r: Reader, common: dict[str, object]) -> Self:
        tid = r.int(U8, "transfer_id")
        raw_state = r.int(U8, "state")
        try:
            state = TransferState(raw_state)
        except ValueError:
            raise FrameError(f"image_status.state: unknown value {raw_state:02x}") from None
        err = r.int(U8, "error")
        base = r.int(U16, "base")
        return cls(transfer_id=tid, state=state, error=err, base=base, bitmap=r.rest(),
                   **common)  # type: ignore[arg-type]


# -- label report and pairing ----------------------------------------------------------------


class _Report:
    """What a label says of itself at the end of a check-in or a job status: the hash it
    displays, battery, temperature, the RSSI it measured, the highest counter it accepted.
    One layout, checked and coded here for both frames."""

    displayed_hash: bytes
    battery_mv: int
    temperature_c: int
    rssi: int
    rx_counter: int

    def _check_report(self) -> None:
        check_range("battery_mv", U16, self.battery_mv)
        check_range("temperature_c", I8, self.temperature_c)
        check_range("rssi", I8, self.rssi)
        check_range("rx_counter", U32, self.rx_counter)
        if len(self.displayed_hash) != HASH_SIZE:
            raise FrameError(f"displayed_hash: expected {HASH_SIZE} bytes, got {hexs(self.displayed_hash)}")

    def _report(self) -> bytes:
        return (self.displayed_hash + U16(self.battery_mv).serialize() + I8(self.temperature_c).serialize()
                + I8(self.rssi).serialize() + U32(self.rx_counter).serialize())

    @staticmethod
    def _parse_report(r: Reader) -> dict[str, object]:
        return {"displayed_hash": r.take(HASH_SIZE, "displayed_hash"), "battery_mv": r.int(U16, "battery_mv"),
                "temperature_c": r.int(I8, "temperature_c"), "rssi": r.int(I8, "rssi"),
                "rx_counter": r.int(U32, "rx_counter")}


class CheckinFlag(IntFlag):
    PAIRED = 0x01
    LOW_BATTERY = 0x02
    TRANSFER_PENDING = 0x04   # an image transfer is in flash, waiting for more parts
    REBOOTED = 0x08           # first check-in since power-up


@dataclass(frozen=True, kw_only=True)
class Checkin(_Report, Frame):
    """Label → gateway when it wakes: what it is and what it shows. Always addressed.

    ``rssi`` is what the label measured on the gateway's last frame; ``rx_counter`` the highest
    counter it accepted from the gateway (so a gateway that lost its state can resynchronise).
    Unpaired labels send this unauthenticated; it changes nothing on the label.
    """

    frame_type: ClassVar[FrameType] = FrameType.CHECKIN
    model_id: int
    firmware_version: int
    status_flags: CheckinFlag
    displayed_hash: bytes
    battery_mv: int
    temperature_c: int
    rssi: int
    rx_counter: int

    def __post_init__(self) -> None:
        super(Checkin, self).__post_init__()
        if self.address is None:
            raise FrameError("checkin: address is required")
        check_range("model_id", U8, self.model_id)
        check_range("firmware_version", U16, self.firmware_version)
        check_range("flags", U8, int(self.status_flags))
        self._check_report()

    def _body(self) -> bytes:
        return (bytes((self.model_id,)) + U16(self.firmware_version).serialize()
                + bytes((int(self.status_flags),)) + self._report())

    @classmethod
    def _parse_body(cls, r: Reader, common: dict[str, object]) -> Self:
        return cls(model_id=r.int(U8, "model_id"), firmware_version=r.int(U16, "firmware_version"),
                   status_flags=CheckinFlag(r.int(U8, "flags")), **cls._parse_report(r),
                   **common)  # type: ignore[arg-type]


@dataclass(frozen=True, kw_only=True)
class PairRequest(Frame):
    """Gateway → unpaired label: the new label key, AES-CCM-wrapped under the factory key."""

    frame_type: ClassVar[FrameType] = FrameType.PAIR_REQUEST
    wrapped_key: bytes
    esl_id: int = 0

    def __post_init__(self) -> None:
        super(PairRequest, self).__post_init__()
        check_range("esl_id", U8, self.esl_id)
        if len(self.wrapped_key) != WRAPPED_KEY_SIZE:
            raise FrameError(f"wrapped_key: expected {WRAPPED_KEY_SIZE} bytes, got {len(self.wrapped_key)}")

    def _body(self) -> bytes:
        return bytes((self.esl_id,)) + self.wrapped_key

    @classmethod
    def _parse_body(cls, r: Reader, common: dict[str, object]) -> Self:
        return cls(esl_id=r.int(U8, "esl_id"), wrapped_key=r.take(WRAPPED_KEY_SIZE, "wrapped_key"),
                   **common)  # type: ignore[arg-type]


# -- jobs: the server's ticket in, the label's final word out -----------------------------------


@dataclass(frozen=True, kw_only=True)
class JobTicket(Frame):
    """Server → label, forwarded unchanged by the gateway as the first frame of a job.

    Authenticated with the label's long-term key at counter ``first`` (the first counter of the
    range the server reserved for the job), so only the server can make one. The label derives
    the job key from it (`firmware_proto.jobkeys.derive_job_key`) and accepts the job's frames
    under that key with counters ``first + 1 .. last`` only.
    """

    frame_type: ClassVar[FrameType] = FrameType.JOB_TICKET
    job_id: int
    attempt: int
    first: int
    last: int

    def __post_init__(self) -> None:
        super(JobTicket, self).__post_init__()
        check_range("job_id", U64, self.job_id)
        check_range("attempt", U8, self.attempt)
        check_range("first", U32, self.first)
        check_range("last", U32, self.last)
        if not 1 <= self.first <= self.last:
            raise FrameError(f"job_ticket: counters must be 1 <= first <= last, got {self.first}..{self.last}")
        if self.auth is not None and self.auth.counter != self.first:
            raise FrameError(f"job_ticket: authenticated at counter {self.auth.counter}, "
                             f"but its range starts at {self.first}")

    def _body(self) -> bytes:
        return (U64(self.job_id).serialize() + bytes((self.attempt,)) + U32(self.first).serialize()
                + U32(self.last).serialize())

    @classmethod
    def _parse_body(cls, r: Reader, common: dict[str, object]) -> Self:
        return cls(job_id=r.int(U64, "job_id"), attempt=r.int(U8, "attempt"), first=r.int(U32, "first"),
                   last=r.int(U32, "last"), **common)  # type: ignore[arg-type]


@dataclass(frozen=True, kw_only=True)
class JobStatus(_Report, Frame):
    """Label → server (through the gateway, raw): the label's final word on a job. Always addressed.

    Sent when the job ends (image displayed or refused, command answered), authenticated with
    the label's LONG-TERM key, which the gateway does not have: it can forward this frame but
    not make or change one. ``result`` is 0 for success, else the label's error (an ESL error
    code or a `firmware_proto.transfer.TransferResult`). ``rx_counter`` is the highest counter
    the label accepted, as in a check-in.
    """

    frame_type: ClassVar[FrameType] = FrameType.JOB_STATUS
    job_id: int
    attempt: int
    result: int
    displayed_hash: bytes
    battery_mv: int
    temperature_c: int
    rssi: int
    rx_counter: int

    def __post_init__(self) -> None:
        super(JobStatus, self).__post_init__()
        if self.address is None:
            raise FrameError("job_status: address is required")
        check_range("job_id", U64, self.job_id)
        check_range("attempt", U8, self.attempt)
        check_range("result", U8, self.result)
        self._check_report()

    def _body(self) -> bytes:
        return U64(self.job_id).serialize() + bytes((self.attempt, self.result)) + self._report()

    @classmethod
    def _parse_body(cls, r: Reader, common: dict[str, object]) -> Self:
        return cls(job_id=r.int(U64, "job_id"), attempt=r.int(U8, "attempt"), result=r.int(U8, "result"),
                   **cls._parse_report(r), **common)  # type: ignore[arg-type]


FRAME_CLASSES: dict[FrameType, type[Frame]] = {
    c.frame_type: c
    for c in (ControlCommand, ControlResponse, ImageOffer, ImagePart, ImageStatusRequest,
              ImageStatus, Checkin, PairRequest, JobTicket, JobStatus)
}

_MIN_FRAME = HEADER_SIZE + CRC_SIZE
_KNOWN_FLAGS = int(HeaderFlag.ADDR | HeaderFlag.AUTH | HeaderFlag.ACK_REQ)


def parse_frame(data: bytes) -> Frame:
    """Decode one whole frame. Returns a `Frame` subclass or raises `ProtocolError`, nothing else.

    Checks, in order: length within 5..MAX_FRAME, CRC, version, flags, type, then the body, each
    field read only after its length was checked against what is left. The AES-CCM tag is not
    verified here (that needs the key; see `GatewaySession.open` / `LabelSession.receive`).
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise FrameError(f"frame must be bytes, got {type(data).__name__}")
    data = bytes(data)
    if not _MIN_FRAME <= len(data) <= MAX_FRAME:
        raise FrameError(f"frame length must be {_MIN_FRAME}..{MAX_FRAME}, got {len(data)}: {hexs(data)}")
    got = int.from_bytes(data[-CRC_SIZE:], "little")
    want = crc16(data[:-CRC_SIZE])
    if got != want:
        raise FrameError(f"crc: expected {want:04x}, got {got:04x} in {hexs(data)}")
    try:
        return _parse_checked(data[:-CRC_SIZE])
    except ProtocolError:
        raise
    except (ValueError, TypeError, IndexError, KeyError) as exc:  # defensive: nothing else escapes
        raise FrameError(f"malformed frame {hexs(data)}: {exc}") from None


def _parse_checked(data: bytes) -> Frame:
    version, flags = data[0] >> 4, data[0] & 0x0F
    if version != PROTOCOL_VERSION:
        raise FrameError(f"version: expected {PROTOCOL_VERSION}, got {version} in {hexs(data[:3])}")
    if flags & ~_KNOWN_FLAGS:
        raise FrameError(f"flags: unknown bits {flags:x} in {hexs(data[:3])}")
    try:
        ftype = FrameType(data[1])
    except ValueError:
        raise FrameError(f"type: unknown frame type {data[1]:02x} in {hexs(data[:3])}") from None
    cls = FRAME_CLASSES[ftype]
    r = Reader(data, cls.__name__)
    r.take(HEADER_SIZE, "header")
    common: dict[str, object] = {"seq": data[2], "ack_req": bool(flags & HeaderFlag.ACK_REQ)}
    if flags & HeaderFlag.ADDR:
        common["address"] = r.take(ADDRESS_SIZE, "address")
    auth = None
    if flags & HeaderFlag.AUTH:
        if r.remaining < AUTH_SIZE:
            raise FrameError(f"{cls.__name__}: AUTH flag set but only {r.remaining} bytes left for an 8-byte trailer")
        body = Reader(r.take(r.remaining - AUTH_SIZE, "body"), cls.__name__)
        auth = Auth(counter=r.int(U32, "counter"), tag=r.take(TAG_SIZE, "tag"))
    else:
        body = Reader(r.rest(), cls.__name__)
    common["auth"] = auth
    frame = cls._parse_body(body, common)
    body.end()
    return frame
