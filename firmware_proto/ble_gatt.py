"""Our BLE GATT service and advertisement layout, sans-IO.

Both ends of the BLE link import this module: the gateway's bleak link
(`eslserver.gateway.links.ble`) and any label peer (firmware, or the bumble test peer), so
the UUIDs and byte layouts are written down once.

GATT service
    One 128-bit primary service, `SERVICE_UUID`, with two characteristics:

    * `FRAME_TO_LABEL_UUID` (write without response): gateway → label;
    * `FRAME_FROM_LABEL_UUID` (notify): label → gateway.

    Each write and each notification carries **exactly one whole protocol frame, byte for
    byte the same as on every other link** — no extra header, no segmentation. A frame must
    therefore fit one ATT value: at most ``ATT_MTU - 3`` bytes and never more than the 512 bytes
    an attribute value may hold (`max_frame_for_mtu`), where
    ``ATT_MTU`` is the MTU the two ends negotiated after connecting (23 until they do). The
    protocol sizes its frames (image parts) to the link's ``max_frame``; a link refuses a
    larger frame rather than letting the stack truncate it. A label must accept an MTU
    exchange; ``MIN_USEFUL_ATT_MTU`` is the smallest MTU the gateway accepts.

Check-in advertisement
    A label that wakes up advertises (connectable, legacy PDU, 31 bytes of AD data at most)
    a Flags AD structure and a *Service Data - 128-bit UUID* AD structure whose UUID is
    `SERVICE_UUID` and whose data is a `CompactCheckin` (10 bytes). 3 + 18 + 10 = 31 bytes:
    the legacy budget is used exactly, so the service UUID list is *not* repeated; scanners
    find our labels by the service-data key. The label's address is the advertiser address.

    `CompactCheckin` layout (little-endian)::

        offset size field
        0      1    layout (high nibble, = 1) | flags (low nibble: bit 0 update pending,
                    bit 1 service needed, bit 2 low battery, bit 3 reserved, = 0)
        1      1    model id (firmware_proto.models)
        2      4    displayed image hash, first 4 bytes (firmware_proto.image.image_hash)
        6      2    battery, mV (uint16)
        8      1    temperature, degrees C (int8)
        9      1    wake counter (uint8, wraps): tells a new wake from a repeated advert

    An advertisement is not authenticated: the gateway uses it only to decide whether to
    connect; the label's authenticated report over the link is what the server believes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from firmware_proto.errors import ProtocolError

__all__ = [
    "SERVICE_UUID",
    "FRAME_TO_LABEL_UUID",
    "FRAME_FROM_LABEL_UUID",
    "ATT_DEFAULT_MTU",
    "ATT_MAX_MTU",
    "ATT_MAX_VALUE",
    "ATT_VALUE_OVERHEAD",
    "MIN_USEFUL_ATT_MTU",
    "LEGACY_ADV_MAX",
    "CHECKIN_LAYOUT",
    "CHECKIN_SIZE",
    "HASH_PREFIX_SIZE",
    "BleGattError",
    "CompactCheckin",
    "max_frame_for_mtu",
    "advertising_data",
    "parse_advertising_data",
]

SERVICE_UUID: Final = "6e4a0001-2b5c-4e5b-9c1d-8f0e5a3b7c10"
"""Our primary service (randomly generated 128-bit UUID, lower case as bleak spells it)."""
FRAME_TO_LABEL_UUID: Final = "6e4a0002-2b5c-4e5b-9c1d-8f0e5a3b7c10"
"""Write-without-response characteristic: one frame per write, gateway → label."""
FRAME_FROM_LABEL_UUID: Final = "6e4a0003-2b5c-4e5b-9c1d-8f0e5a3b7c10"
"""Notify characteristic: one frame per notification, label → gateway."""

ATT_DEFAULT_MTU: Final = 23
"""The ATT MTU before (or without) an MTU exchange (Core spec Vol 3 Part F 3.2.8)."""
ATT_MAX_MTU: Final = 517
"""The largest ATT MTU worth asking for (512-byte value + 3-byte header + 2 spare)."""
ATT_MAX_VALUE: Final = 512
"""The longest attribute value (Core spec Vol 3 Part F 3.2.9), hence the longest frame."""
ATT_VALUE_OVERHEAD: Final = 3
"""Opcode (1) + handle (2) in a Write Command / Handle Value Notification."""
MIN_USEFUL_ATT_MTU: Final = ATT_DEFAULT_MTU
"""The smallest MTU a link accepts (the protocol must fit its control frames in MTU - 3)."""

LEGACY_ADV_MAX: Final = 31
"""Bytes of AD data in one legacy advertising PDU."""

CHECKIN_LAYOUT: Final = 1
CHECKIN_SIZE: Final = 10
HASH_PREFIX_SIZE: Final = 4

_AD_FLAGS: Final = 0x01
_AD_SERVICE_DATA_128: Final = 0x21
_FLAGS_LE_GENERAL_NO_BREDR: Final = 0x06
_CHECKIN_STRUCT: Final = struct.Struct("<BB4sHbB")


class BleGattError(ProtocolError):
    """A BLE advertisement or GATT value that does not follow our layout (a `ProtocolError`)."""


def _uuid_bytes_le(uuid: str) -> bytes:
    """A 128-bit UUID string as it travels in AD data and ATT PDUs: little-endian bytes."""
    return bytes.fromhex(uuid.replace("-", ""))[::-1]


_SERVICE_UUID_LE: Final = _uuid_bytes_le(SERVICE_UUID)


def max_frame_for_mtu(mtu: int) -> int:
    """The largest frame one write or notification carries at ATT MTU `mtu`."""
    if not ATT_DEFAULT_MTU <= mtu <= 0xFFFF:
        raise BleGattError(f"ATT MTU must be in {ATT_DEFAULT_MTU}..65535, got {mtu}")
    return min(mtu - ATT_VALUE_OVERHEAD, ATT_MAX_VALUE)


@dataclass(frozen=True, slots=True)
class CompactCheckin:
    """What a label says in its wake-up advertisement (see the module docstring)."""

    model_id: int
    hash_prefix: bytes
    battery_mv: int
    temperature_c: int
    wake_counter: int
    update_pending: bool = False
    service_needed: bool = False
    low_battery: bool = False

    def __post_init__(self) -> None:
        for name in ("model_id", "battery_mv", "temperature_c", "wake_counter"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise BleGattError(f"{name} must be an int, got {value!r}")
        if not 0 < self.model_id < 256:
            raise BleGattError(f"model_id must be 1..255, got {self.model_id}")
        if not isinstance(self.hash_prefix, bytes) or len(self.hash_prefix) != HASH_PREFIX_SIZE:
            raise BleGattError(
                f"hash_prefix must be {HASH_PREFIX_SIZE} bytes, got {self.hash_prefix!r}"
            )
        if not 0 <= self.battery_mv <= 0xFFFF:
            raise BleGattError(f"battery_mv must be 0..65535, got {self.battery_mv}")
        if not -128 <= self.temperature_c <= 127:
            raise BleGattError(f"temperature_c must be -128..127, got {self.temperature_c}")
        if not 0 <= self.wake_counter <= 0xFF:
            raise BleGattError(f"wake_counter must be 0..255, got {self.wake_counter}")

    @classmethod
    def for_hash(
        cls, model_id: int, displayed_hash: bytes, battery_mv: int, temperature_c: int,
        wake_counter: int, *, update_pending: bool = False, service_needed: bool = False,
        low_battery: bool = False,
    ) -> CompactCheckin:
        """Build one from a full displayed-image hash (only its prefix travels)."""
        if len(displayed_hash) < HASH_PREFIX_SIZE:
            raise BleGattError(
                f"displayed_hash must be at least {HASH_PREFIX_SIZE} bytes, "
                f"got {displayed_hash.hex()!r}"
            )
        return cls(model_id, bytes(displayed_hash[:HASH_PREFIX_SIZE]), battery_mv,
                   temperature_c, wake_counter, update_pending=update_pending,
                   service_needed=service_needed, low_battery=low_battery)

    def matches_hash(self, image_hash: bytes) -> bool:
        """True when `image_hash` may be the one displayed (its prefix matches)."""
        return bytes(image_hash[:HASH_PREFIX_SIZE]) == self.hash_prefix

    def to_bytes(self) -> bytes:
        flags = self.update_pending | self.service_needed << 1 | self.low_battery << 2
        return _CHECKIN_STRUCT.pack(
            CHECKIN_LAYOUT << 4 | flags, self.model_id, self.hash_prefix, self.battery_mv,
            self.temperature_c, self.wake_counter,
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> CompactCheckin:
        """Decode; anything that is not exactly our layout raises `BleGattError`."""
        if len(data) != CHECKIN_SIZE:
            raise BleGattError(
                f"check-in service data must be {CHECKIN_SIZE} bytes, "
                f"got {len(data)}: {bytes(data).hex()!r}"
            )
        head, model_id, prefix, battery, temperature, counter = _CHECKIN_STRUCT.unpack(data)
        if head >> 4 != CHECKIN_LAYOUT:
            raise BleGattError(
                f"check-in layout must be {CHECKIN_LAYOUT}, got {head >> 4} in {bytes(data).hex()!r}"
            )
        if head & 0x08:
            raise BleGattError(f"check-in reserved flag bit 3 is set in {bytes(data).hex()!r}")
        try:
            return cls(model_id, prefix, battery, temperature, counter,
                       update_pending=bool(head & 1), service_needed=bool(head & 2),
                       low_battery=bool(head & 4))
        except BleGattError as exc:
            raise BleGattError(f"{exc} in check-in {bytes(data).hex()!r}") from None


def advertising_data(checkin: CompactCheckin) -> bytes:
    """The label's whole legacy AD payload (Flags + our service data), 31 bytes."""
    body = _SERVICE_UUID_LE + checkin.to_bytes()
    data = bytes([2, _AD_FLAGS, _FLAGS_LE_GENERAL_NO_BREDR, len(body) + 1, _AD_SERVICE_DATA_128])
    data += body
    assert len(data) <= LEGACY_ADV_MAX  # fixed sizes: 3 + 2 + 16 + 10
    return data


def parse_advertising_data(data: bytes) -> CompactCheckin | None:
    """Find our check-in in raw AD data (for scanners that hand over raw bytes).

    Returns None when the advertisement is well formed but not one of ours; raises
    `BleGattError` when the AD structures are malformed or our service data is.
    """
    offset = 0
    found: CompactCheckin | None = None
    while offset < len(data):
        length = data[offset]
        if length == 0:  # padding: the rest of the PDU is unused
            break
        end = offset + 1 + length
        if end > len(data):
            raise BleGattError(
                f"AD structure at offset {offset} claims {length} bytes, "
                f"only {len(data) - offset - 1} left in {bytes(data).hex()!r}"
            )
        ad_type = data[offset + 1]
        if ad_type == _AD_SERVICE_DATA_128 and length >= 17:
            if data[offset + 2 : offset + 18] == _SERVICE_UUID_LE:
                found = CompactCheckin.from_bytes(bytes(data[offset + 18 : end]))
        offset = end
    return found
