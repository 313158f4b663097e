"""A label peer on a virtual Bluetooth controller: our GATT service hosted by bumble.

`BumbleLabel` is the peripheral side of the BLE link as label firmware would be: it
advertises its check-in (`firmware_proto.ble_gatt.advertising_data`), hosts the frame service,
feeds every written frame to a label endpoint and notifies the endpoint's answers, one frame
per notification, in order. The endpoint is anything with ``receive(frame) -> list[bytes]``:
`EchoEndpoint` for transport tests, the protocol's `LabelSession` (inside a `SimLabel`) for the
real thing, and with it the whole label side of trust: the server's pair request and job
tickets, frames accepted under a job key only inside the ticket's counter range, and the
label's final `JobStatus` under its long-term key (tests/test_links_ble.py runs jobs so).

Test-only.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol

from bumble.core import UUID
from bumble.device import Connection, Device
from bumble.gatt import Characteristic, CharacteristicValue, Service

from firmware_proto.ble_gatt import (
    FRAME_FROM_LABEL_UUID,
    FRAME_TO_LABEL_UUID,
    SERVICE_UUID,
    CompactCheckin,
    advertising_data,
    max_frame_for_mtu,
)

__all__ = ["LabelEndpoint", "EchoEndpoint", "BumbleLabel"]

logger = logging.getLogger(__name__)


class LabelEndpoint(Protocol):
    """The label's frame handler: frames in, answer frames out (sans-IO)."""

    def receive(self, frame: bytes) -> list[bytes]: ...


class EchoEndpoint:
    """Answers every frame with the same bytes; remembers what it received."""

    def __init__(self) -> None:
        self.received: list[bytes] = []

    def receive(self, frame: bytes) -> list[bytes]:
        self.received.append(frame)
        return [frame]


class BumbleLabel:
    """Our GATT service on a bumble peripheral, driving one label endpoint."""

    def __init__(
        self, device: Device, endpoint: LabelEndpoint, checkin: CompactCheckin,
        *, max_mtu: int = 517, greeting: Callable[[], list[bytes]] | None = None,
    ) -> None:
        self.device = device
        self.endpoint = endpoint
        self.checkin = checkin
        self.greeting = greeting
        """Frames the label sends as soon as a gateway subscribes (its check-in report)."""
        self.oversized: list[bytes] = []
        """Answers the endpoint produced that did not fit one notification (dropped)."""
        self._outbox: asyncio.Queue[tuple[Connection, bytes]] = asyncio.Queue()
        self._sender: asyncio.Task[None] | None = None
        self.from_label: Characteristic[bytes] = Characteristic(
            UUID(FRAME_FROM_LABEL_UUID), Characteristic.Properties.NOTIFY,
            Characteristic.READABLE, b"",
        )
        self.to_label: Characteristic[bytes] = Characteristic(
            UUID(FRAME_TO_LABEL_UUID), Characteristic.Properties.WRITE_WITHOUT_RESPONSE,
            Characteristic.WRITEABLE, CharacteristicValue[bytes](write=self._on_write),
        )
        self.from_label.on(Characteristic.EVENT_SUBSCRIPTION, self._on_subscription)
        device.add_service(Service(UUID(SERVICE_UUID), [self.to_label, self.from_label]))
        device.gatt_server.max_mtu = max_mtu

    @property
    def connection(self) -> Connection | None:
        return next(iter(self.device.connections.values()), None)

    async def start(self) -> None:
        """Start answering and advertise the check-in (restarted after each disconnect)."""
        if self._sender is None:
            self._sender = asyncio.create_task(self._send_loop(), name="bumble-label-notify")
        await self.advertise()

    async def advertise(self) -> None:
        if self.device.is_advertising:
            await self.device.stop_advertising()
        await self.device.start_advertising(
            advertising_data=advertising_data(self.checkin), auto_restart=True,
            advertising_interval_min=20, advertising_interval_max=20,
        )

    async def stop(self) -> None:
        sender, self._sender = self._sender, None
        if sender is not None:
            sender.cancel()
            try:
                await sender
            except asyncio.CancelledError:
                pass
        if self.device.is_advertising:
            await self.device.stop_advertising()

    async def disconnect(self) -> None:
        """The label drops the link (as when it goes back to sleep)."""
        connection = self.connection
        if connection is not None:
            await connection.disconnect()

    def notify(self, frame: bytes) -> None:
        """Queue one frame to the gateway (unsolicited, e.g. a report)."""
        connection = self.connection
        if connection is None:
            raise ConnectionError("no gateway is connected to the label")
        self._outbox.put_nowait((connection, frame))

    def _on_subscription(self, connection: Connection, notify: bool, indicate: bool) -> None:
        if notify and self.greeting is not None:
            for frame in self.greeting():
                self._outbox.put_nowait((connection, frame))

    def _on_write(self, connection: Connection, value: bytes) -> None:
        for answer in self.endpoint.receive(bytes(value)):
            self._outbox.put_nowait((connection, answer))

    async def _send_loop(self) -> None:
        while True:
            connection, frame = await self._outbox.get()
            if len(frame) > max_frame_for_mtu(connection.att_mtu):
                # bumble would truncate it silently; real firmware must size its frames
                logger.error("label answer of %d bytes does not fit ATT MTU %d",
                             len(frame), connection.att_mtu)
                self.oversized.append(frame)
                continue
            if connection.handle not in self.device.connections:
                continue  # the gateway left; the protocol will ask again
            await self.device.notify_subscriber(connection, self.from_label, frame)
