"""A thin bleak backend over bumble, for tests: real BLE without root or a radio.

`VirtualAir` is one in-process radio medium (a bumble `LocalLink`); every device on it has
its own virtual controller (`bumble.controller.Controller`) and host, so connections,
advertising, the ATT MTU exchange, GATT discovery, writes and notifications all run the
real bumble host and controller code as HCI packets, not shortcuts.

`client_backend(central)` and `scanner_backend(central)` return classes that satisfy bleak's
`BaseBleakClient` / `BaseBleakScanner`, bound to one bumble central device, for
``BleakClient(..., backend=...)`` and ``BleakScanner(..., backend=...)``: the code under
test is bleak's own facade and our BleakLink, unchanged.

Test-only: production uses bleak's platform backends.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Callable
from typing import Any, cast

from bleak.args import SizedBuffer
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.client import BaseBleakClient, NotifyCallback
from bleak.backends.descriptor import BleakGATTDescriptor
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData, AdvertisementDataCallback, BaseBleakScanner
from bleak.backends.service import BleakGATTService, BleakGATTServiceCollection
from bleak.exc import BleakError, BleakGATTProtocolError
from bleak.uuids import normalize_uuid_str
from bumble import core, gatt_client
from bumble.att import ATT_Error
from bumble.controller import Controller
from bumble.core import AdvertisingData
from bumble.device import Advertisement, Connection, Device, Peer
from bumble.gatt import Characteristic
from bumble.hci import Address, HCI_Error, HCI_LE_Create_Connection_Cancel_Command
from bumble.host import Host
from bumble.link import LocalLink
from bumble.transport.common import AsyncPipeSink

__all__ = ["VirtualAir", "client_backend", "scanner_backend", "DEFAULT_REQUESTED_MTU"]

logger = logging.getLogger(__name__)

DEFAULT_REQUESTED_MTU = 517
"""What the central asks for in its ATT MTU exchange (like BlueZ and macOS do)."""

_CONTROLLERS: weakref.WeakKeyDictionary[Device, Controller] = weakref.WeakKeyDictionary()
"""The virtual controller under each device VirtualAir made (for `_cancel_pending_connection`)."""

_PROPERTY_NAMES: dict[int, Any] = {
    Characteristic.Properties.BROADCAST: "broadcast",
    Characteristic.Properties.READ: "read",
    Characteristic.Properties.WRITE_WITHOUT_RESPONSE: "write-without-response",
    Characteristic.Properties.WRITE: "write",
    Characteristic.Properties.NOTIFY: "notify",
    Characteristic.Properties.INDICATE: "indicate",
    Characteristic.Properties.AUTHENTICATED_SIGNED_WRITES: "authenticated-signed-writes",
    Characteristic.Properties.EXTENDED_PROPERTIES: "extended-properties",
}


class VirtualAir:
    """One virtual radio medium; owns every device made on it (``async with``)."""

    def __init__(self) -> None:
        self.link = LocalLink()  # type: ignore[no-untyped-call]
        self._devices: list[Device] = []
        self._count = 0

    async def add_device(self, address: str, *, name: str = "bumble") -> Device:
        """A powered-on device with a static random address (a label or a gateway)."""
        self._count += 1
        controller = Controller(
            f"ctrl{self._count}", link=self.link,
            public_address=":".join([f"{0xA0 + self._count:02X}"] * 6),
        )
        device = Device(
            name=name,
            address=Address(address, Address.RANDOM_DEVICE_ADDRESS),
            host=Host(controller, AsyncPipeSink(controller)),
        )
        self._devices.append(device)
        _CONTROLLERS[device] = controller
        await device.power_on()
        return device

    async def close(self) -> None:
        for device in reversed(self._devices):
            for connection in list(device.connections.values()):
                try:
                    await connection.disconnect()
                except (HCI_Error, core.BaseBumbleError) as exc:
                    logger.debug("disconnect at teardown: %s", exc)
            if device.is_scanning:
                await device.stop_scanning()
            if device.is_advertising:
                await device.stop_advertising()
            await device.power_off()
        self._devices.clear()

    async def __aenter__(self) -> VirtualAir:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


async def _cancel_pending_connection(central: Device) -> None:
    """Give up a connection attempt, as a real controller would.

    bumble's virtual controller (0.0.236) acknowledges LE Create Connection Cancel but keeps
    the attempt pending and never sends the LE Connection Complete (status 0x02) the spec
    requires, so bumble's own connect timeout waits forever and the next connect is refused
    with "command disallowed". We send the cancel and clear the attempt in the controller.
    """
    await central.send_command(HCI_LE_Create_Connection_Cancel_Command())
    controller = _CONTROLLERS.get(central)
    if controller is not None:
        controller.pending_le_connection = None


def _bleak_uuid(uuid: core.UUID) -> str:
    return normalize_uuid_str(uuid.to_hex_str())


def _properties(flags: int) -> list[Any]:
    return [name for bit, name in _PROPERTY_NAMES.items() if flags & bit]


def client_backend(
    central: Device, *, requested_mtu: int = DEFAULT_REQUESTED_MTU
) -> type[BaseBleakClient]:
    """A `BaseBleakClient` class whose instances connect through the bumble `central`."""

    class BumbleBleakClient(_BumbleBleakClient):
        _central = central
        _requested_mtu = requested_mtu

    return BumbleBleakClient


class _BumbleBleakClient(BaseBleakClient):
    _central: Device
    _requested_mtu: int

    def __init__(
        self,
        address_or_ble_device: BLEDevice | str,
        *,
        disconnected_callback: Callable[[], None] | None = None,
        timeout: float = 10.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            address_or_ble_device, disconnected_callback=disconnected_callback, timeout=timeout
        )
        self._connection: Connection | None = None
        self._peer: Peer | None = None
        self._disconnecting = False
        self._subscribers: dict[int, Callable[[bytes], None]] = {}

    @property
    def name(self) -> str:
        return self.address.replace(":", "-")

    @property
    def mtu_size(self) -> int:
        if self._connection is None:
            return 23
        return int(self._connection.att_mtu)

    @property
    def is_connected(self) -> bool:
        return self._connection is not None

    async def connect(self, pair: bool, **kwargs: Any) -> None:
        if pair:
            logger.warning("the bumble test backend does not pair; ignoring pair=True")
        peer_address = Address(self.address, Address.RANDOM_DEVICE_ADDRESS)
        try:
            async with asyncio.timeout(self._timeout):
                connection = await self._central.connect(peer_address, timeout=None)
        except TimeoutError as exc:
            await _cancel_pending_connection(self._central)
            raise TimeoutError(f"no connection to {self.address} in {self._timeout} s") from exc
        except (HCI_Error, core.BaseBumbleError) as exc:
            raise BleakError(f"connection to {self.address} failed: {exc}") from exc
        self._connection = connection
        connection.on(connection.EVENT_DISCONNECTION, self._on_disconnection)
        try:
            peer = Peer(connection)
            await peer.request_mtu(self._requested_mtu)
            self.services = await self._discover(peer)
            self._peer = peer
        except (ATT_Error, HCI_Error, core.BaseBumbleError) as exc:
            await self.disconnect()
            raise BleakError(f"GATT setup with {self.address} failed: {exc}") from exc

    async def _discover(self, peer: Peer) -> BleakGATTServiceCollection:
        collection = BleakGATTServiceCollection()
        for service in await peer.discover_services():
            bleak_service = BleakGATTService(service, service.handle, _bleak_uuid(service.uuid))
            collection.add_service(bleak_service)
            for char in await peer.discover_characteristics(service=service):
                bleak_char = BleakGATTCharacteristic(
                    char, char.handle, _bleak_uuid(char.uuid), _properties(char.properties),
                    lambda: self.mtu_size - 3, bleak_service,
                )
                collection.add_characteristic(bleak_char)
                for desc in await peer.discover_descriptors(char):
                    collection.add_descriptor(
                        BleakGATTDescriptor(desc, desc.handle, _bleak_uuid(desc.type), bleak_char)
                    )
        return collection

    def _on_disconnection(self, reason: int) -> None:
        self._connection = None
        self._peer = None
        self._subscribers.clear()
        if not self._disconnecting and self._disconnected_callback is not None:
            self._disconnected_callback()

    async def disconnect(self) -> None:
        connection = self._connection
        if connection is None:
            return
        self._disconnecting = True
        try:
            await connection.disconnect()
        except (HCI_Error, core.BaseBumbleError) as exc:
            logger.debug("disconnect from %s: %s", self.address, exc)
        finally:
            self._connection = None
            self._peer = None

    async def pair(self, *args: Any, **kwargs: Any) -> None:
        raise BleakError("the bumble test backend does not pair")

    async def unpair(self) -> None:
        raise BleakError("the bumble test backend does not pair")

    def _require_peer(self) -> Peer:
        if self._peer is None:
            raise BleakError(f"not connected to {self.address}")
        return self._peer

    async def read_gatt_char(
        self, characteristic: BleakGATTCharacteristic, *, use_cached: bool = False,
        **kwargs: Any,
    ) -> bytearray:
        return await self._read(characteristic.handle)

    async def read_gatt_descriptor(
        self, descriptor: BleakGATTDescriptor, *, use_cached: bool = False, **kwargs: Any
    ) -> bytearray:
        return await self._read(descriptor.handle)

    async def _read(self, handle: int) -> bytearray:
        peer = self._require_peer()
        try:
            return bytearray(await peer.read_value(handle))
        except ATT_Error as exc:
            raise BleakGATTProtocolError(exc.error_code) from exc

    async def write_gatt_char(
        self, characteristic: BleakGATTCharacteristic, data: SizedBuffer, response: bool
    ) -> None:
        await self._write(characteristic.handle, bytes(data), response)

    async def write_gatt_descriptor(self, descriptor: BleakGATTDescriptor, data: SizedBuffer) -> None:
        await self._write(descriptor.handle, bytes(data), True)

    async def _write(self, handle: int, data: bytes, response: bool) -> None:
        peer = self._require_peer()
        try:
            await peer.write_value(handle, data, with_response=response)
        except ATT_Error as exc:
            raise BleakGATTProtocolError(exc.error_code) from exc
        except (HCI_Error, core.BaseBumbleError) as exc:
            raise BleakError(f"write to {self.address} handle {handle} failed: {exc}") from exc

    async def start_notify(
        self, characteristic: BleakGATTCharacteristic, callback: NotifyCallback, **kwargs: Any
    ) -> None:
        peer = self._require_peer()
        proxy: gatt_client.CharacteristicProxy[bytes] = characteristic.obj

        def subscriber(value: bytes) -> None:
            callback(bytearray(value))

        try:
            await peer.subscribe(proxy, subscriber)
        except ATT_Error as exc:
            raise BleakGATTProtocolError(exc.error_code) from exc
        self._subscribers[characteristic.handle] = subscriber

    async def stop_notify(self, characteristic: BleakGATTCharacteristic) -> None:
        peer = self._require_peer()
        subscriber = self._subscribers.pop(characteristic.handle, None)
        await peer.unsubscribe(characteristic.obj, subscriber)


def scanner_backend(central: Device) -> type[BaseBleakScanner]:
    """A `BaseBleakScanner` class whose instances scan through the bumble `central`."""

    class BumbleBleakScanner(_BumbleBleakScanner):
        _central = central

    return BumbleBleakScanner


class _BumbleBleakScanner(BaseBleakScanner):
    _central: Device

    def __init__(
        self,
        detection_callback: AdvertisementDataCallback | None,
        service_uuids: list[str] | None,
        scanning_mode: str = "active",
        **kwargs: Any,
    ) -> None:
        super().__init__(detection_callback, service_uuids)
        self._active = scanning_mode != "passive"

    async def start(self) -> None:
        self.seen_devices = {}
        self._central.on(self._central.EVENT_ADVERTISEMENT, self._on_advertisement)
        await self._central.start_scanning(active=self._active, filter_duplicates=False)

    async def stop(self) -> None:
        self._central.remove_listener(self._central.EVENT_ADVERTISEMENT, self._on_advertisement)
        if self._central.is_scanning:
            await self._central.stop_scanning()

    def _on_advertisement(self, advertisement: Advertisement) -> None:
        data = advertisement.data
        service_data: dict[str, bytes] = {}
        for ad_type in (
            AdvertisingData.SERVICE_DATA_16_BIT_UUID,
            AdvertisingData.SERVICE_DATA_32_BIT_UUID,
            AdvertisingData.SERVICE_DATA_128_BIT_UUID,
        ):
            for uuid, payload in data.get_all(ad_type):
                service_data[_bleak_uuid(uuid)] = bytes(payload)
        service_uuids: list[str] = []
        for ad_type in (
            AdvertisingData.COMPLETE_LIST_OF_16_BIT_SERVICE_CLASS_UUIDS,
            AdvertisingData.INCOMPLETE_LIST_OF_16_BIT_SERVICE_CLASS_UUIDS,
            AdvertisingData.COMPLETE_LIST_OF_128_BIT_SERVICE_CLASS_UUIDS,
            AdvertisingData.INCOMPLETE_LIST_OF_128_BIT_SERVICE_CLASS_UUIDS,
        ):
            for uuids in cast("list[list[core.UUID]]", data.get_all(ad_type)):
                service_uuids.extend(_bleak_uuid(u) for u in uuids)
        if not self.is_allowed_uuid(service_uuids):
            return
        manufacturer: dict[int, bytes] = {
            company: bytes(payload)
            for company, payload in data.get_all(AdvertisingData.MANUFACTURER_SPECIFIC_DATA)
        }
        name = data.get(AdvertisingData.COMPLETE_LOCAL_NAME)
        address = advertisement.address.to_string(False)
        adv = AdvertisementData(
            local_name=str(name) if name is not None else None,
            manufacturer_data=manufacturer,
            service_data=service_data,
            service_uuids=service_uuids,
            tx_power=None,
            rssi=int(advertisement.rssi),
            platform_data=(advertisement,),
        )
        device = self.create_or_update_device(address, address, adv.local_name, advertisement.address, adv)
        self.call_detection_callbacks(device, adv)
