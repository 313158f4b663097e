"""The BLE link: protocol frames over our GATT service, through bleak.

This is the only module that imports bleak. `BleakLink` is one GATT connection to one label
(a `firmware_proto.link.Link`); `BleRadio` scans for labels' check-in advertisements and
opens links (a `firmware_proto.link.Radio`). The service, the characteristics and the
advertisement layout are in `firmware_proto.ble_gatt`.

bleak has no L2CAP channels, so every frame is one GATT value: a write without response
towards the label, a notification back. Frames are never segmented here; `max_frame` tells
the protocol how large a frame may be (negotiated ATT MTU - 3), and a larger one is refused
with `FrameTooLargeError` instead of being truncated by the stack.

Both classes take bleak's ``backend=`` classes, so tests run the very same code against a
virtual controller (see tests/bumble_backend.py); by default bleak picks the platform's.

Errors: everything that goes wrong on the air surfaces as a `LinkError` (a
`ConnectionError`); timeouts as `LinkTimeoutError` (also a `TimeoutError`); sending on a link
the label or the gateway has closed as `LinkClosedError`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TypeVar

from bleak import BleakClient, BleakScanner
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.client import BaseBleakClient
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData, BaseBleakScanner
from bleak.exc import BleakError

from firmware_proto.ble_gatt import (
    ATT_DEFAULT_MTU,
    ATT_MAX_VALUE,
    FRAME_FROM_LABEL_UUID,
    FRAME_TO_LABEL_UUID,
    MIN_USEFUL_ATT_MTU,
    SERVICE_UUID,
    BleGattError,
    CompactCheckin,
    max_frame_for_mtu,
)
from firmware_proto.link import CheckinCallback, FrameCallback

__all__ = [
    "LinkError",
    "LinkTimeoutError",
    "LinkClosedError",
    "FrameTooLargeError",
    "BleakLink",
    "BleRadio",
]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_SEND_TIMEOUT = 5.0
MAX_TRACKED_LABELS = 65_536
"""Addresses a `BleRadio` remembers (last device and check-in); the oldest are forgotten."""
CONNECT_GRACE = 2.0
"""Extra seconds our own guard allows past ``connect_timeout``: the backend gets the
timeout first, so it can cancel its pending connection cleanly in the controller."""


class LinkError(ConnectionError):
    """The BLE link to a label failed (connect, discovery, write or notify)."""


class LinkTimeoutError(LinkError, TimeoutError):
    """A BLE operation did not finish in time."""


class LinkClosedError(LinkError):
    """The link is not connected: never connected, closed by us, or dropped by the label."""


class FrameTooLargeError(LinkError, ValueError):
    """A frame larger than the link's `max_frame` (the protocol must size frames to fit).

    A `LinkError` like every failed send (the loopback link raises a `ConnectionError` too),
    and a `ValueError` because it is the caller's input that is wrong.
    """


class BleakLink:
    """One GATT conversation with one label; implements `firmware_proto.link.Link`.

    ``device`` is the label's address or, better, the `BLEDevice` a scan returned (bleak
    then skips its implicit scan). ``backend`` is passed to `bleak.BleakClient` unchanged.
    """

    def __init__(
        self,
        device: str | BLEDevice,
        *,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        send_timeout: float = DEFAULT_SEND_TIMEOUT,
        backend: type[BaseBleakClient] | None = None,
    ) -> None:
        if connect_timeout <= 0:
            raise ValueError(f"connect_timeout must be > 0 s, got {connect_timeout}")
        if send_timeout <= 0:
            raise ValueError(f"send_timeout must be > 0 s, got {send_timeout}")
        self._device = device
        self._address = (device.address if isinstance(device, BLEDevice) else device).upper()
        self._connect_timeout = connect_timeout
        self._send_timeout = send_timeout
        self._backend = backend
        self._client: BleakClient | None = None
        self._to_label: BleakGATTCharacteristic | None = None
        self._max_frame = max_frame_for_mtu(ATT_DEFAULT_MTU)
        self._callback: FrameCallback | None = None
        self._connected = False
        self._closing = False
        self._connect_lock = asyncio.Lock()

    def __repr__(self) -> str:
        state = "connected" if self._connected else "closed"
        return f"<BleakLink {self._address} {state} max_frame={self._max_frame}>"

    @property
    def address(self) -> str:
        return self._address

    @property
    def max_frame(self) -> int:
        """Largest frame one `send` carries: negotiated ATT MTU - 3 (20 until connected)."""
        return self._max_frame

    @property
    def is_connected(self) -> bool:
        """True between a successful `connect` and the first disconnect or `close`."""
        return self._connected

    def set_frame_callback(self, callback: FrameCallback | None) -> None:
        self._callback = callback

    async def connect(self) -> None:
        """Connect, find our service, learn the MTU and subscribe to the label's frames.

        Raises `LinkTimeoutError` when the label does not answer within ``connect_timeout``
        and `LinkError` when it answers without our service or the stack fails.
        """
        async with self._connect_lock:
            if self._connected:
                return
            self._closing = False
            client = BleakClient(
                self._device,
                disconnected_callback=self._on_disconnected,
                timeout=self._connect_timeout,
                backend=self._backend,
            )
            try:
                async with asyncio.timeout(self._connect_timeout + CONNECT_GRACE):
                    await client.connect()
                    to_label, from_label = self._find_characteristics(client)
                    max_frame = self._negotiated_max_frame(client, to_label)
                    self._client = client
                    self._connected = True
                    await client.start_notify(from_label, self._on_notify)
            except TimeoutError as exc:
                await self._abandon(client)
                raise LinkTimeoutError(
                    f"label {self._address}: no connection within {self._connect_timeout} s"
                ) from exc
            except (BleakError, OSError) as exc:
                # OSError covers the platform stacks' own failures (D-Bus, WinRT, sockets)
                await self._abandon(client)
                if isinstance(exc, LinkError):
                    raise
                raise LinkError(f"label {self._address}: connect failed: {exc}") from exc
            self._to_label = to_label
            self._max_frame = max_frame
            logger.debug("BLE link to %s up, max_frame %d", self._address, self._max_frame)

    def _find_characteristics(
        self, client: BleakClient
    ) -> tuple[BleakGATTCharacteristic, BleakGATTCharacteristic]:
        service = client.services.get_service(SERVICE_UUID)
        if service is None:
            raise LinkError(f"label {self._address} has no ESL frame service {SERVICE_UUID}")
        to_label = service.get_characteristic(FRAME_TO_LABEL_UUID)
        from_label = service.get_characteristic(FRAME_FROM_LABEL_UUID)
        if to_label is None or "write-without-response" not in to_label.properties:
            raise LinkError(
                f"label {self._address}: characteristic {FRAME_TO_LABEL_UUID} missing or "
                f"not write-without-response ({to_label.properties if to_label else None})"
            )
        if from_label is None or "notify" not in from_label.properties:
            raise LinkError(
                f"label {self._address}: characteristic {FRAME_FROM_LABEL_UUID} missing or "
                f"not notify ({from_label.properties if from_label else None})"
            )
        return to_label, from_label

    def _negotiated_max_frame(
        self, client: BleakClient, to_label: BleakGATTCharacteristic
    ) -> int:
        # BlueZ reports mtu_size 23 whatever was negotiated, but its per-characteristic
        # write-without-response size is right (BlueZ >= 5.62); both mean "one write".
        mtu = client.mtu_size
        if mtu < MIN_USEFUL_ATT_MTU:
            raise LinkError(f"label {self._address}: ATT MTU {mtu} < {MIN_USEFUL_ATT_MTU}")
        by_mtu = max_frame_for_mtu(mtu)
        by_char = to_label.max_write_without_response_size
        return max(by_mtu, min(by_char, ATT_MAX_VALUE))

    async def send(self, frame: bytes) -> None:
        """Write one frame to the label (write without response).

        Raises `LinkClosedError` when the link is down, `FrameTooLargeError` when the frame
        does not fit one write, `LinkTimeoutError` / `LinkError` when the stack fails.
        """
        client, to_label = self._client, self._to_label
        if not self._connected or client is None or to_label is None:
            raise LinkClosedError(f"label {self._address}: link is not connected")
        if len(frame) > self._max_frame:
            raise FrameTooLargeError(
                f"frame of {len(frame)} bytes exceeds max_frame {self._max_frame} "
                f"on the BLE link to {self._address}"
            )
        try:
            async with asyncio.timeout(self._send_timeout):
                await client.write_gatt_char(to_label, frame, response=False)
        except TimeoutError as exc:
            raise LinkTimeoutError(
                f"label {self._address}: write not done within {self._send_timeout} s"
            ) from exc
        except (BleakError, OSError) as exc:
            if not self._connected:
                raise LinkClosedError(f"label {self._address}: link dropped during send") from exc
            raise LinkError(f"label {self._address}: write failed: {exc}") from exc
        if not self._connected:  # the write raced a disconnect: it may not have gone out
            raise LinkClosedError(f"label {self._address}: link dropped during send")

    async def close(self) -> None:
        """Disconnect; safe to call twice and after the label dropped the link."""
        client = self._client
        self._client = None
        self._to_label = None
        self._connected = False
        self._closing = True
        if client is not None:
            await self._abandon(client)

    async def _abandon(self, client: BleakClient) -> None:
        self._connected = False
        self._client = None
        try:
            async with asyncio.timeout(self._send_timeout):
                await client.disconnect()
        except (BleakError, OSError) as exc:  # OSError includes TimeoutError
            logger.warning("BLE link to %s: disconnect failed: %s", self._address, exc)

    def _on_disconnected(self, client: BleakClient) -> None:
        if client is not self._client:
            return  # an attempt we already abandoned
        self._connected = False
        self._client = None
        self._to_label = None
        if not self._closing:
            logger.debug("BLE link to %s dropped by the label", self._address)

    def _on_notify(self, _sender: BleakGATTCharacteristic, data: bytearray) -> None:
        callback = self._callback
        if callback is None:
            logger.debug("BLE frame from %s dropped: no frame callback", self._address)
            return
        try:
            callback(bytes(data))
        except Exception:  # the boundary with the radio stack: never let it eat our error
            logger.exception("frame callback failed for a frame from %s", self._address)


class BleRadio:
    """Hears labels' check-in advertisements and opens `BleakLink`s; a `Radio`.

    Check-ins are our service data (`firmware_proto.ble_gatt.CompactCheckin`, 10 bytes):
    the callback gets ``(address, compact check-in bytes, rssi)``. The protocol's full
    check-in frame (header, report, counter, MAC, CRC) does not fit the 31 bytes of a legacy
    advertisement, so over BLE it is the label's first notification once a link is up;
    decode the advertised bytes with ``CompactCheckin.from_bytes``. A label repeats its
    advertisement while awake; the same bytes from the same address within
    ``repeat_window`` seconds are reported once. Advertisements with our service data that
    do not decode are logged once per address and dropped.

    The scan is not filtered by service UUID in the OS (our advertisement carries the UUID
    only as a service-data key, which not every OS filter honours): filtering happens here.
    """

    def __init__(
        self,
        *,
        scanner_backend: type[BaseBleakScanner] | None = None,
        client_backend: type[BaseBleakClient] | None = None,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        repeat_window: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if repeat_window < 0:
            raise ValueError(f"repeat_window must be >= 0 s, got {repeat_window}")
        self._scanner_backend = scanner_backend
        self._client_backend = client_backend
        self._connect_timeout = connect_timeout
        self._repeat_window = repeat_window
        self._clock = clock
        self._scanner: BleakScanner | None = None
        self._callback: CheckinCallback | None = None
        self._devices: dict[str, BLEDevice] = {}
        self._last: dict[str, tuple[bytes, float]] = {}
        self._bad_senders: set[str] = set()
        self._links: set[BleakLink] = set()

    def set_checkin_callback(self, callback: CheckinCallback | None) -> None:
        self._callback = callback

    async def start(self) -> None:
        """Start scanning; raises `LinkError` when the adapter cannot scan."""
        if self._scanner is not None:
            return
        scanner = BleakScanner(self._on_advertisement, backend=self._scanner_backend)
        try:
            await scanner.start()
        except (BleakError, OSError) as exc:
            raise LinkError(f"BLE scan could not start: {exc}") from exc
        self._scanner = scanner
        logger.info("BLE radio scanning for service %s", SERVICE_UUID)

    @property
    def is_up(self) -> bool:
        """Scanning (a lost adapter is noticed when a start or a link fails)."""
        return self._scanner is not None

    async def open_link(self, address: str) -> BleakLink:
        """A link (not yet connected) to a label, by the device last seen at that address."""
        key = address.upper()
        link = BleakLink(
            self._devices.get(key, key),
            connect_timeout=self._connect_timeout,
            backend=self._client_backend,
        )
        self._links.add(link)
        return link

    async def close(self) -> None:
        """Stop scanning and close every link this radio opened; safe to call twice."""
        scanner, self._scanner = self._scanner, None
        if scanner is not None:
            try:
                await scanner.stop()
            except (BleakError, OSError) as exc:
                logger.warning("BLE scan did not stop cleanly: %s", exc)
        links, self._links = self._links, set()
        for link in links:
            await link.close()

    @staticmethod
    def _remember(table: dict[str, _T], address: str, value: _T) -> None:
        # bounded, least recently heard first out: random spoofed addresses cannot grow it
        table.pop(address, None)
        table[address] = value
        if len(table) > MAX_TRACKED_LABELS:
            del table[next(iter(table))]

    def _on_advertisement(self, device: BLEDevice, adv: AdvertisementData) -> None:
        data = adv.service_data.get(SERVICE_UUID)
        if data is None:
            return
        address = device.address.upper()
        payload = bytes(data)
        try:
            CompactCheckin.from_bytes(payload)
        except BleGattError as exc:
            if address not in self._bad_senders:
                self._bad_senders.add(address)
                logger.warning("ignoring malformed check-in advertisements from %s: %s",
                               address, exc)
            return
        self._remember(self._devices, address, device)
        now = self._clock()
        last = self._last.get(address)
        if last is not None and last[0] == payload and now - last[1] < self._repeat_window:
            return
        self._remember(self._last, address, (payload, now))
        callback = self._callback
        if callback is None:
            return
        try:
            callback(address, payload, adv.rssi)
        except Exception:  # the boundary with the radio stack
            logger.exception("check-in callback failed for %s", address)
