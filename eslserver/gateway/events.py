"""Gateway events: what a gateway tells the server on ``{prefix}/{store}/gateway/{gw}/events``.

Four kinds, each a frozen dataclass with `to_json()`; `parse_event` turns the JSON back into one
of them or raises `EventError` naming the field and the value. Construction validates too, so a
gateway cannot publish an event the server would refuse.

- `Ack`: the job ended and the label said so: ``status`` is the label's final frame, raw (a
  `JobStatus`, or for a pairing the check-in under the new key), authenticated with a key the
  gateway does not have. The server believes the frame, never the gateway's own fields.
- `Nack`: the job ended without that; ``code`` says why, ``retry`` whether the same job (with
  fresh counters) may succeed later; ``status`` the label's final frame when it sent one (a
  refused image). Envelopes the gateway refuses to run (unsigned, mis-signed, replayed,
  expired, for another gateway, sealed to another key) are nacked with that reason too.
- `Checkin`: a label check-in heard on the radio, raw (the server verifies it with the label key;
  an unauthenticated one is an unpaired label discovered).
- `Status`: the gateway's health line (at every connect and then periodically), with the
  protocol version it speaks (`PROTOCOL_VERSION`).

Times are timezone-aware UTC (ISO 8601; ``Z`` is written, ``Z`` or an offset is read and
converted to UTC). Bytes travel as lowercase hex. Unknown JSON keys are ignored (a newer
gateway may add fields); missing or ill-typed known keys are errors.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar, Final, Literal, TypeAlias, get_args

from firmware_proto.errors import ProtocolError
from firmware_proto.frames import MAX_FRAME, address_str, parse_frame
from firmware_proto.frames import Checkin as CheckinFrame
from firmware_proto.image import HASH_SIZE

__all__ = [
    "EventError", "NackCode", "NACK_CODES", "Ack", "Nack", "Checkin", "Status", "Event",
    "parse_event", "utc_now", "MAX_EVENT_BYTES", "RADIO_STATES", "PROTOCOL_VERSION", "REFUSAL_CODES",
]

NackCode: TypeAlias = Literal["unreachable", "refused", "budget", "bad_job", "base_mismatch", "low_battery",
                              "unsigned", "bad_signature", "replayed", "expired", "misaddressed", "wrong_key",
                              "unconfirmed"]
NACK_CODES: Final[frozenset[str]] = frozenset(get_args(NackCode))
REFUSAL_CODES: Final[frozenset[str]] = frozenset(
    {"unsigned", "bad_signature", "replayed", "expired", "misaddressed", "wrong_key"})
"""Nack codes of envelopes the gateway refused to run: anybody who can publish on its job
topic can cause one, so the server notes them and changes nothing for them."""
PROTOCOL_VERSION: Final = 2
"""The server ↔ gateway protocol this gateway speaks: 2 = signed envelopes, job keys, the
label's final word forwarded in acks. A gateway that says nothing speaks 1."""
MAX_EVENT_BYTES: Final = 16_384
"""No event is longer (a check-in frame is at most 1024 bytes, 2048 as hex)."""
MAX_REASON: Final = 1_000
RADIO_STATES: Final = ("up", "down")
"""A gateway's radio in its status event: working, or not reachable (reconnecting)."""
_MAC = re.compile(r"[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}")
_U64_MAX: Final = (1 << 64) - 1


class EventError(ValueError):
    """An event that cannot be built or parsed; the message names the field and the value."""


def utc_now() -> datetime:
    """Now, timezone-aware UTC (what every event's ``at`` defaults to)."""
    return datetime.now(UTC)


# -- field checks (shared by construction and parsing) ---------------------------------------


def _int(name: str, value: object, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise EventError(f"{name}: expected an integer, got {value!r:.80}")
    if not lo <= value <= hi:
        raise EventError(f"{name}: must be in {lo}..{hi}, got {value}")
    return value


def _opt_int(name: str, value: object, lo: int, hi: int) -> int | None:
    return None if value is None else _int(name, value, lo, hi)


def _mac(value: object) -> str:
    if not isinstance(value, str) or not _MAC.fullmatch(value):
        raise EventError(f"mac: expected AA:BB:CC:DD:EE:FF, got {value!r:.80}")
    return value.upper()


def _at(value: object) -> datetime:
    if not isinstance(value, datetime):
        raise EventError(f"at: expected a datetime, got {value!r:.80}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise EventError(f"at: must be timezone-aware (UTC), got naive {value.isoformat()}")
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise EventError(f"at: {value.isoformat()} is out of range in UTC") from None


def _frame(name: str, value: object) -> bytes:
    if not isinstance(value, bytes) or not 0 < len(value) <= MAX_FRAME:
        raise EventError(f"{name}: expected 1..{MAX_FRAME} bytes, got {value!r:.80}")
    return value


def _hash(name: str, value: object) -> bytes:
    if not isinstance(value, bytes) or len(value) != HASH_SIZE:
        raise EventError(f"{name}: expected {HASH_SIZE} bytes, got {value!r:.80}")
    return value


def _str(name: str, value: object, limit: int) -> str:
    if not isinstance(value, str):
        raise EventError(f"{name}: expected a string, got {value!r:.80}")
    if len(value) > limit:
        raise EventError(f"{name}: at most {limit} characters, got {len(value)}")
    return value


def _set(obj: object, name: str, value: object) -> None:
    object.__setattr__(obj, name, value)


def _iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


def _dumps(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


# -- the events ------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Ack:
    """Job ``job`` (delivery ``attempt``) ended, and ``status`` is the label's final word, raw.

    ``status`` is what the server verifies (with the label key, counter above the last it saw)
    before it believes anything: for an image or command job a `JobStatus` frame, for a
    pairing the label's check-in under its new key. None (an older gateway) confirms nothing.
    ``displayed_hash``, ``battery_mv``, ``temperature_c``, ``rssi`` (what the label measured)
    are what the gateway read in that frame, for people reading the topic; the server reads
    the frame itself.
    """

    type: ClassVar[str] = "ack"
    job: int
    mac: str
    displayed_hash: bytes | None
    frames: int
    status: bytes | None = None
    attempt: int | None = None
    battery_mv: int | None = None
    rssi: int | None = None
    temperature_c: float | None = None
    at: datetime = field(default_factory=utc_now)

    def __post_init__(self) -> None:
        _int("job", self.job, 0, _U64_MAX)
        _set(self, "mac", _mac(self.mac))
        _set(self, "at", _at(self.at))
        if self.displayed_hash is not None:
            _hash("displayed_hash", self.displayed_hash)
        _int("frames", self.frames, 0, _U64_MAX)
        if self.status is not None:
            _frame("status", self.status)
        _opt_int("attempt", self.attempt, 0, 255)
        _opt_int("battery_mv", self.battery_mv, 0, 0xFFFF)
        _opt_int("rssi", self.rssi, -32768, 32767)
        t = self.temperature_c
        if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t)):
            raise EventError(f"temperature_c: expected a finite number, got {t!r:.80}")

    def to_json(self) -> bytes:
        out: dict[str, Any] = {
            "type": self.type, "job": self.job, "mac": self.mac, "at": _iso(self.at),
            "displayed_hash": None if self.displayed_hash is None else self.displayed_hash.hex(),
            "frames": self.frames, "status": None if self.status is None else self.status.hex(),
        }
        for name in ("attempt", "battery_mv", "rssi", "temperature_c"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return _dumps(out)


@dataclass(frozen=True, kw_only=True)
class Nack:
    """Job ``job`` ended without the label's confirmation.

    ``retry`` is True when the same job, with fresh counters, may succeed later (unreachable,
    budget); False when it would fail again as it is (refused, bad_job, base_mismatch: send a
    whole image, low_battery). A `REFUSAL_CODES` code means the gateway did not run the
    envelope at all. ``status`` is the label's final frame, raw, when it sent one (an image it
    refused); ``attempt`` the delivery this is about.
    """

    type: ClassVar[str] = "nack"
    job: int
    mac: str
    code: NackCode
    reason: str
    retry: bool
    attempt: int | None = None
    status: bytes | None = None
    at: datetime = field(default_factory=utc_now)

    def __post_init__(self) -> None:
        _int("job", self.job, 0, _U64_MAX)
        _set(self, "mac", _mac(self.mac))
        _set(self, "at", _at(self.at))
        if self.code not in NACK_CODES:
            raise EventError(f"code: expected one of {sorted(NACK_CODES)}, got {self.code!r:.80}")
        _str("reason", self.reason, MAX_REASON)
        if not isinstance(self.retry, bool):
            raise EventError(f"retry: expected true or false, got {self.retry!r:.80}")
        _opt_int("attempt", self.attempt, 0, 255)
        if self.status is not None:
            _frame("status", self.status)

    def to_json(self) -> bytes:
        return _dumps({
            "type": self.type, "job": self.job, "mac": self.mac, "at": _iso(self.at),
            "code": self.code, "reason": self.reason, "retry": self.retry, "attempt": self.attempt,
            "status": None if self.status is None else self.status.hex(),
        })


@dataclass(frozen=True, kw_only=True)
class Checkin:
    """A label check-in heard on the radio: the raw frame, and the RSSI the radio heard it at.

    ``frame`` must parse as a check-in frame from ``mac`` (the tag is not verified here: the
    gateway may not know the key; the server does).
    """

    type: ClassVar[str] = "checkin"
    mac: str
    rssi: int
    frame: bytes
    at: datetime = field(default_factory=utc_now)

    def __post_init__(self) -> None:
        _set(self, "mac", _mac(self.mac))
        _set(self, "at", _at(self.at))
        _int("rssi", self.rssi, -32768, 32767)
        if not isinstance(self.frame, bytes) or not 0 < len(self.frame) <= MAX_FRAME:
            raise EventError(f"frame: expected 1..{MAX_FRAME} bytes, got {self.frame!r:.80}")
        parsed = self.parsed()
        if parsed.address is None or address_str(parsed.address) != self.mac:
            got = "none" if parsed.address is None else address_str(parsed.address)
            raise EventError(f"frame: check-in from {got}, event is for {self.mac}")

    def parsed(self) -> CheckinFrame:
        """The check-in frame (CRC checked, tag not verified)."""
        try:
            frame = parse_frame(self.frame)
        except ProtocolError as exc:
            raise EventError(f"frame: {exc}") from None
        if not isinstance(frame, CheckinFrame):
            raise EventError(f"frame: expected a check-in, got {type(frame).__name__}")
        return frame

    def to_json(self) -> bytes:
        return _dumps({"type": self.type, "mac": self.mac, "at": _iso(self.at), "rssi": self.rssi,
                       "frame": self.frame.hex()})


@dataclass(frozen=True, kw_only=True)
class Status:
    """The gateway's health, every few seconds and whenever its radio comes or goes: jobs
    running, jobs spooled, labels heard, and whether its radio works (``radio``: ``up`` or
    ``down``, since ``radio_since``), so the server can show a gateway that is connected but
    cannot reach a label as degraded rather than online. ``server_key`` is the fingerprint (16
    hex digits) of the server key the gateway trusts, None when it trusts none: after a key
    rotation it tells which gateways followed (`eslserver.signing`)."""

    type: ClassVar[str] = "status"
    gateway: str
    in_flight: int
    spooled: int
    labels_heard: int
    at: datetime = field(default_factory=utc_now)
    radio: str = "up"
    radio_since: datetime | None = None
    protocol: int = PROTOCOL_VERSION
    server_key: str | None = None

    def __post_init__(self) -> None:
        if not _str("gateway", self.gateway, 200):
            raise EventError("gateway: must not be empty")
        if self.server_key is not None and not (isinstance(self.server_key, str)
                                                and re.fullmatch(r"[0-9a-f]{16}", self.server_key)):
            raise EventError(f"server_key: expected 16 lowercase hex digits, got {self.server_key!r:.80}")
        _set(self, "at", _at(self.at))
        for name in ("in_flight", "spooled", "labels_heard"):
            _int(name, getattr(self, name), 0, _U64_MAX)
        if self.radio not in RADIO_STATES:
            raise EventError(f"radio: expected up or down, got {self.radio!r:.80}")
        if self.radio_since is not None:
            _set(self, "radio_since", _at(self.radio_since))
        _int("protocol", self.protocol, 1, 255)

    def to_json(self) -> bytes:
        return _dumps({"type": self.type, "gateway": self.gateway, "at": _iso(self.at),
                       "in_flight": self.in_flight, "spooled": self.spooled,
                       "labels_heard": self.labels_heard, "radio": self.radio,
                       "radio_since": None if self.radio_since is None else _iso(self.radio_since),
                       "protocol": self.protocol, "server_key": self.server_key})


Event: TypeAlias = Ack | Nack | Checkin | Status

# -- parsing ---------------------------------------------------------------------------------


def _need(obj: dict[str, Any], name: str) -> Any:
    if name not in obj:
        raise EventError(f"{name}: missing")
    return obj[name]


def _parse_at(obj: dict[str, Any], name: str = "at") -> datetime:
    raw = _need(obj, name)
    if not isinstance(raw, str):
        raise EventError(f"{name}: expected an ISO 8601 string, got {raw!r:.80}")
    try:
        at = datetime.fromisoformat(raw)
    except ValueError:
        raise EventError(f"{name}: not an ISO 8601 time: {raw!r:.80}") from None
    if at.tzinfo is None:
        raise EventError(f"{name}: must carry a UTC offset (Z or +00:00), got {raw!r:.80}")
    return at


def _parse_hex(name: str, raw: object, *, size: int | None = None) -> bytes:
    if not isinstance(raw, str):
        raise EventError(f"{name}: expected a hex string, got {raw!r:.80}")
    try:
        out = bytes.fromhex(raw)
    except ValueError:
        raise EventError(f"{name}: not hex: {raw!r:.80}") from None
    if size is not None and len(out) != size:
        raise EventError(f"{name}: expected {size * 2} hex digits, got {raw!r:.80}")
    return out


def _parse_status(obj: dict[str, Any]) -> bytes | None:
    raw = obj.get("status")
    if raw is None:
        return None
    if isinstance(raw, str) and len(raw) > 2 * MAX_FRAME:
        raise EventError(f"status: at most {2 * MAX_FRAME} hex digits, got {len(raw)}")
    return _parse_hex("status", raw)


def parse_event(data: bytes | str) -> Event:
    """One event from its JSON; `EventError` naming the field and the value otherwise."""
    if isinstance(data, (bytes, bytearray, str)) and len(data) > MAX_EVENT_BYTES:
        raise EventError(f"event: {len(data)} bytes is over {MAX_EVENT_BYTES}")
    try:
        obj = json.loads(data)
    except (ValueError, TypeError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise EventError(f"event: not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise EventError(f"event: expected a JSON object, got {type(obj).__name__}")
    kind = _need(obj, "type")
    at = _parse_at(obj)
    if kind == "ack":
        raw_hash = _need(obj, "displayed_hash")
        return Ack(job=_need(obj, "job"), mac=_need(obj, "mac"), at=at,
                   displayed_hash=None if raw_hash is None else _parse_hex("displayed_hash", raw_hash, size=HASH_SIZE),
                   frames=_need(obj, "frames"), status=_parse_status(obj), attempt=obj.get("attempt"),
                   battery_mv=obj.get("battery_mv"), rssi=obj.get("rssi"), temperature_c=obj.get("temperature_c"))
    if kind == "nack":
        return Nack(job=_need(obj, "job"), mac=_need(obj, "mac"), at=at, code=_need(obj, "code"),
                    reason=_need(obj, "reason"), retry=_need(obj, "retry"), attempt=obj.get("attempt"),
                    status=_parse_status(obj))
    if kind == "checkin":
        raw = _need(obj, "frame")
        if isinstance(raw, str) and len(raw) > 2 * MAX_FRAME:
            raise EventError(f"frame: at most {2 * MAX_FRAME} hex digits, got {len(raw)}")
        return Checkin(mac=_need(obj, "mac"), at=at, rssi=_need(obj, "rssi"),
                       frame=_parse_hex("frame", raw))
    if kind == "status":
        return Status(gateway=_need(obj, "gateway"), at=at, in_flight=_need(obj, "in_flight"),
                      spooled=_need(obj, "spooled"), labels_heard=_need(obj, "labels_heard"),
                      radio=obj.get("radio", "up"),  # older gateways do not say: up
                      radio_since=None if obj.get("radio_since") is None else _parse_at(obj, "radio_since"),
                      protocol=obj.get("protocol", 1),  # a gateway that does not say speaks version 1
                      server_key=obj.get("server_key"))
    raise EventError(f"type: expected ack, nack, checkin or status, got {kind!r:.80}")
