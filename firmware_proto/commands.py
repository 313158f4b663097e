"""The ESL control-point command table (Bluetooth ESL Service 0x1857), declared once.

Opcode layout as in the ESL Service: the low nibble is the tag, the high nibble is the
parameter length minus one, so a decoder knows every command's size from its first byte even if
it does not know the command. Commands start with the ESL_ID parameter. The table maps
name → opcode → parameter layout; the reverse indexes are derived from it (never written by
hand), and the derivation checks that each layout's size matches its opcode. A later protocol
version extends the table: ``COMMANDS[2] = {**COMMANDS[1], ...}``.

`ControlCommand` / `ControlResponse` (in `frames`) carry one entry of these tables.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum, IntFlag
from types import MappingProxyType

from firmware_proto.errors import CommandError
from firmware_proto.wire import U8, U16, U32, U40, WireInt

__all__ = [
    "ParamSpec", "OpSpec", "EslError", "BasicState", "SensorIndex",
    "COMMANDS", "RESPONSES", "command_spec", "response_spec", "param_length",
    "SENSOR_VALUE_TAG",
]

SENSOR_VALUE_TAG = 0x0E
"""Low nibble of the Sensor Value response; its high nibble is the data length."""


class EslError(IntEnum):
    """ESL Service error codes (Error response, opcode 0x00)."""

    UNSPECIFIED = 0x01
    INVALID_OPCODE = 0x02
    INVALID_STATE = 0x03
    INVALID_IMAGE_INDEX = 0x04
    IMAGE_NOT_AVAILABLE = 0x05
    INVALID_PARAMETERS = 0x06
    CAPACITY_LIMIT = 0x07
    INSUFFICIENT_BATTERY = 0x08
    INSUFFICIENT_RESOURCES = 0x09
    RETRY = 0x0A
    QUEUE_FULL = 0x0B
    IMPLAUSIBLE_ABSOLUTE_TIME = 0x0C


class BasicState(IntFlag):
    """Bits of the Basic State response."""

    SERVICE_NEEDED = 0x01
    SYNCHRONIZED = 0x02
    ACTIVE_LED = 0x04
    PENDING_LED_UPDATE = 0x08
    PENDING_DISPLAY_UPDATE = 0x10


class SensorIndex(IntEnum):
    """Our labels' sensors, as addressed by Read Sensor."""

    BATTERY_MV = 0    # u16 millivolts
    TEMPERATURE = 1   # i16 hundredths of a degree Celsius


@dataclass(frozen=True, slots=True)
class ParamSpec:
    name: str
    wire_type: type[WireInt]


@dataclass(frozen=True, slots=True)
class OpSpec:
    """One control-point entry: its name, opcode and parameter layout."""

    name: str
    opcode: int
    params: tuple[ParamSpec, ...]
    variable_tail: str | None = None  # name of a trailing bytes field (Sensor Value data)

    @property
    def fixed_size(self) -> int:
        return sum(p.wire_type.size for p in self.params)


def param_length(opcode: int) -> int:
    """Parameter bytes after an opcode: high nibble + 1 (ESL Service rule)."""
    return (opcode >> 4) + 1


def _p(*pairs: tuple[str, type[WireInt]]) -> tuple[ParamSpec, ...]:
    return tuple(ParamSpec(n, t) for n, t in pairs)


_ID = ("esl_id", U8)
_LED = (("led_index", U8), ("color_brightness", U8), ("flash_pattern", U40),
        ("off_period", U8), ("on_period", U8), ("repeat", U16))

_COMMANDS_V1 = (
    OpSpec("ping", 0x00, _p(_ID)),
    OpSpec("unassociate", 0x01, _p(_ID)),
    OpSpec("service_reset", 0x02, _p(_ID)),
    OpSpec("factory_reset", 0x03, _p(_ID)),
    OpSpec("update_complete", 0x04, _p(_ID)),
    OpSpec("read_sensor", 0x10, _p(_ID, ("sensor_index", U8))),
    OpSpec("refresh_display", 0x11, _p(_ID, ("display_index", U8))),
    OpSpec("display_image", 0x20, _p(_ID, ("display_index", U8), ("image_index", U8))),
    OpSpec("display_timed_image", 0x60,
           _p(_ID, ("display_index", U8), ("image_index", U8), ("absolute_time", U32))),
    OpSpec("led_control", 0xB0, _p(_ID, *_LED)),
    OpSpec("led_timed_control", 0xF0, _p(_ID, *_LED, ("absolute_time", U32))),
)

_RESPONSES_V1 = (
    OpSpec("error", 0x00, _p(("error_code", U8))),
    OpSpec("led_state", 0x01, _p(("led_index", U8))),
    OpSpec("basic_state", 0x10, _p(("state", U16))),
    OpSpec("display_state", 0x11, _p(("display_index", U8), ("image_index", U8))),
    # (len << 4) | 0x0E: sensor index then `len` bytes of data; opcode given for len=2
    OpSpec("sensor_value", 0x2E, _p(("sensor_index", U8)), variable_tail="data"),
)

def _index(table: tuple[OpSpec, ...], kind: str) -> tuple[Mapping[str, OpSpec], Mapping[int, OpSpec]]:
    by_name: dict[str, OpSpec] = {}
    by_opcode: dict[int, OpSpec] = {}
    for spec in table:
        if spec.name in by_name:
            raise CommandError(f"{kind} {spec.name!r} declared twice")
        by_name[spec.name] = spec
        if spec.variable_tail is None:
            opcodes = [spec.opcode]
            if spec.fixed_size != param_length(spec.opcode):
                raise CommandError(
                    f"{kind} {spec.name!r}: layout is {spec.fixed_size} bytes but opcode "
                    f"{spec.opcode:#04x} says {param_length(spec.opcode)}"
                )
        else:  # one opcode per data length that fits the nibble
            tag = spec.opcode & 0x0F
            opcodes = [(n << 4) | tag for n in range(16) if param_length((n << 4) | tag) > spec.fixed_size]
        for op in opcodes:
            if op in by_opcode:
                raise CommandError(f"{kind} opcode {op:#04x} used by {by_opcode[op].name!r} and {spec.name!r}")
            by_opcode[op] = spec
    return MappingProxyType(by_name), MappingProxyType(by_opcode)


COMMANDS: dict[int, tuple[Mapping[str, OpSpec], Mapping[int, OpSpec]]] = {
    1: _index(_COMMANDS_V1, "command"),
}
"""Per protocol version: (by name, by opcode), both derived from the declared table."""

RESPONSES: dict[int, tuple[Mapping[str, OpSpec], Mapping[int, OpSpec]]] = {
    1: _index(_RESPONSES_V1, "response"),
}


def _lookup(tables: dict[int, tuple[Mapping[str, OpSpec], Mapping[int, OpSpec]]],
            key: str | int, version: int, kind: str) -> OpSpec:
    if version not in tables:
        raise CommandError(f"no {kind} table for protocol version {version}")
    by_name, by_op = tables[version]
    spec = by_name.get(key) if isinstance(key, str) else by_op.get(key)
    if spec is None:
        shown = repr(key) if isinstance(key, str) else f"opcode {key:02x}"
        raise CommandError(f"unknown {kind} {shown} in protocol version {version}")
    return spec


def command_spec(key: str | int, version: int = 1) -> OpSpec:
    """The command entry for a name or an opcode; `CommandError` if there is none."""
    return _lookup(COMMANDS, key, version, "command")


def response_spec(key: str | int, version: int = 1) -> OpSpec:
    """The response entry for a name or an opcode; `CommandError` if there is none."""
    return _lookup(RESPONSES, key, version, "response")
