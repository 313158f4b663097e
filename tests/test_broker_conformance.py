"""The MQTT 3.1.1 rules the server and gateways rely on, checked on every broker a user may get.

Rules: retained messages of every QoS reach new subscribers; a persistent session gets what was
published while its client was away (more than a default Mosquitto's 1,000 messages); an
unacknowledged QoS 1/2 message is sent again when the client reconnects; a client's will is
published when its keepalive expires; nothing reaches a client that did not subscribe to it.

Brokers: the embedded broker's amqtt path (what a laptop without Mosquitto runs), its Mosquitto
path (a child process), and a plain Mosquitto (tests.brokers), the reference. Clients: aiomqtt
for ordinary ones, and `RawClient`, a few lines of MQTT over a socket, where a test must control
each acknowledgement, crash without a DISCONNECT, or stay silent past its keepalive.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Self

import aiomqtt
import pytest

from eslserver.broker import EmbeddedBroker
from tests.brokers import MOSQUITTO, mosquitto

_needs_mosquitto = pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto is not installed")

BROKERS = [
    "embedded-amqtt",
    pytest.param("embedded-mosquitto", marks=_needs_mosquitto),
    pytest.param("mosquitto", marks=_needs_mosquitto),
]

TIMEOUT_S = 5.0
QUIET_S = 0.4  # how long "nothing arrives" is watched
WILL_TIMEOUT_S = 10.0  # Mosquitto 2.0 checks keepalives every few seconds (~5 s for a 1 s keepalive)


@pytest.fixture(params=BROKERS)
async def port(request: pytest.FixtureRequest) -> AsyncIterator[int]:
    """A fresh broker; yields its port on 127.0.0.1."""
    if request.param == "mosquitto":
        async with mosquitto() as url:
            yield int(url.rsplit(":", 1)[1])
        return
    implementation = str(request.param).removeprefix("embedded-")
    async with EmbeddedBroker(implementation=implementation) as broker:
        assert broker.implementation == implementation
        yield broker.port


# --- a raw MQTT 3.1.1 client ------------------------------------------------------------------

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP, SUBSCRIBE, SUBACK = 1, 2, 3, 4, 5, 6, 7, 8, 9


def _text(value: str | bytes) -> bytes:
    data = value.encode() if isinstance(value, str) else value
    return struct.pack("!H", len(data)) + data


def _packet(first_byte: int, body: bytes) -> bytes:
    length, encoded = len(body), bytearray()
    while True:
        digit, length = length % 128, length // 128
        encoded.append(digit | (0x80 if length else 0))
        if not length:
            return bytes([first_byte]) + bytes(encoded) + body


@dataclass(frozen=True)
class Packet:
    kind: int
    flags: int
    body: bytes

    @property
    def packet_id(self) -> int:
        if self.kind == PUBLISH:
            (size,) = struct.unpack_from("!H", self.body)
            return int(struct.unpack_from("!H", self.body, 2 + size)[0])
        return int(struct.unpack_from("!H", self.body)[0])

    @property
    def qos(self) -> int:
        return (self.flags >> 1) & 3

    @property
    def dup(self) -> bool:
        return bool(self.flags & 8)

    @property
    def retain(self) -> bool:
        return bool(self.flags & 1)

    @property
    def topic(self) -> str:
        (size,) = struct.unpack_from("!H", self.body)
        return self.body[2:2 + size].decode()

    @property
    def payload(self) -> bytes:
        (size,) = struct.unpack_from("!H", self.body)
        return self.body[2 + size + (2 if self.qos else 0):]


class RawClient:
    """One MQTT connection whose every packet the test sends and reads itself."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.session_present = False

    @classmethod
    async def connect(cls, port: int, client_id: str, *, clean: bool = True, keepalive: int = 60,
                      will: tuple[str, bytes, int] | None = None) -> Self:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = cls(reader, writer)
        flags = (0x02 if clean else 0) | ((0x04 | will[2] << 3) if will else 0)
        body = _text("MQTT") + bytes([4, flags]) + struct.pack("!H", keepalive) + _text(client_id)
        if will:
            body += _text(will[0]) + _text(will[1])
        writer.write(_packet(CONNECT << 4, body))
        connack = await client.receive()
        assert (connack.kind, connack.body[1]) == (CONNACK, 0), connack
        client.session_present = bool(connack.body[0] & 1)
        return client

    def send(self, kind: int, packet_id: int) -> None:
        """PUBACK, PUBREC, PUBREL or PUBCOMP for `packet_id`."""
        self.writer.write(_packet(kind << 4 | (2 if kind == PUBREL else 0), struct.pack("!H", packet_id)))

    async def subscribe(self, topic_filter: str, qos: int) -> None:
        self.writer.write(_packet(SUBSCRIBE << 4 | 2, struct.pack("!H", 1) + _text(topic_filter) + bytes([qos])))
        suback = await self.receive()
        assert (suback.kind, suback.body[2]) == (SUBACK, qos), suback

    async def receive(self, timeout: float = TIMEOUT_S) -> Packet:
        async def read() -> Packet:
            first = (await self.reader.readexactly(1))[0]
            length, shift = 0, 0
            while True:
                digit = (await self.reader.readexactly(1))[0]
                length |= (digit & 0x7F) << shift
                shift += 7
                if not digit & 0x80:
                    break
            return Packet(first >> 4, first & 0x0F, await self.reader.readexactly(length))

        return await asyncio.wait_for(read(), timeout)

    async def nothing_for(self, seconds: float = QUIET_S) -> None:
        with pytest.raises(TimeoutError):
            packet = await self.receive(seconds)
            pytest.fail(f"unexpected packet {packet}")

    def crash(self) -> None:
        """Drop the connection without a DISCONNECT (RST), as kill -9 or a pulled cable would."""
        self.writer.transport.abort()


@contextlib.asynccontextmanager
async def raw(port: int, client_id: str, **options: object) -> AsyncIterator[RawClient]:
    client = await RawClient.connect(port, client_id, **options)  # type: ignore[arg-type]
    try:
        yield client
    finally:
        client.crash()


def client(port: int, identifier: str, **options: object) -> aiomqtt.Client:
    return aiomqtt.Client("127.0.0.1", port, identifier=identifier, **options)  # type: ignore[arg-type]


async def settle(publisher: aiomqtt.Client, name: str) -> None:
    """Return once the broker has handled everything `publisher` sent before (it echoes a
    message back to it, and a broker handles one client's messages in order)."""
    await publisher.subscribe(f"settle/{name}", qos=1)
    await publisher.publish(f"settle/{name}", b"x", qos=1)
    async with asyncio.timeout(TIMEOUT_S):
        async for message in publisher.messages:
            if message.topic.value == f"settle/{name}":
                return


# --- the rules ----------------------------------------------------------------------------------

async def test_retained_messages_of_every_qos_reach_new_subscribers(port: int) -> None:
    async with client(port, "pos") as pub:
        for qos in (0, 1, 2):
            await pub.publish(f"state/{qos}", f"retained at {qos}".encode(), qos=qos, retain=True)
        await pub.publish("state/cleared", b"gone", qos=1, retain=True)
        await pub.publish("state/cleared", b"", qos=1, retain=True)  # an empty payload clears it
        await settle(pub, "retained")
    async with raw(port, "late") as late:
        await late.subscribe("state/#", qos=2)
        got = {}
        for _ in range(3):
            message = await late.receive()
            assert message.kind == PUBLISH and message.retain, message
            got[message.topic] = (message.payload, message.qos)
            if message.qos == 1:
                late.send(PUBACK, message.packet_id)
            elif message.qos == 2:
                late.send(PUBREC, message.packet_id)
                assert (await late.receive()).kind == PUBREL
                late.send(PUBCOMP, message.packet_id)
        assert got == {f"state/{q}": (f"retained at {q}".encode(), q) for q in (0, 1, 2)}
        await late.nothing_for()


async def test_persistent_session_gets_what_was_published_while_away(port: int) -> None:
    async with client(port, "gw1", clean_session=False) as gw:
        # at the publish QoS: amqtt delivers at the subscription's QoS, not min(publish, subscription)
        await gw.subscribe("jobs/1", qos=1)
        await gw.subscribe("jobs/2", qos=2)
    async with client(port, "server") as server:
        await server.publish("jobs/1", b"first", qos=1)
        await server.publish("jobs/2", b"second", qos=2)
        await settle(server, "away")
    async with raw(port, "gw1", clean=False) as gw_again:  # no new SUBSCRIBE: the session kept it
        assert gw_again.session_present
        first = await gw_again.receive()
        assert (first.topic, first.payload, first.qos, first.retain) == ("jobs/1", b"first", 1, False)
        gw_again.send(PUBACK, first.packet_id)
        second = await gw_again.receive()
        assert (second.topic, second.payload, second.qos, second.retain) == ("jobs/2", b"second", 2, False)
        gw_again.send(PUBREC, second.packet_id)
        assert (await gw_again.receive()).kind == PUBREL
        gw_again.send(PUBCOMP, second.packet_id)
        await gw_again.nothing_for()


@pytest.mark.parametrize("stage", ["qos1 unacknowledged", "qos2 before PUBREC", "qos2 before PUBCOMP"])
async def test_unacknowledged_message_is_sent_again_on_reconnect(port: int, stage: str) -> None:
    qos = 1 if stage.startswith("qos1") else 2
    async with raw(port, "gw-crash", clean=False) as gw:
        await gw.subscribe("jobs/#", qos=qos)
        async with client(port, "server") as server:
            await server.publish("jobs/7", b"job-7", qos=qos)
        sent = await gw.receive()
        assert (sent.kind, sent.payload, sent.qos, sent.dup) == (PUBLISH, b"job-7", qos, False)
        if stage == "qos2 before PUBCOMP":
            gw.send(PUBREC, sent.packet_id)
            assert (await gw.receive()).kind == PUBREL
        gw.crash()  # the gateway dies before it acknowledged the job

    async with raw(port, "gw-crash", clean=False) as gw:
        again = await gw.receive()
        if stage == "qos2 before PUBCOMP":  # the broker resumes where the flow stopped [MQTT-4.4.0-1]
            assert (again.kind, again.packet_id) == (PUBREL, sent.packet_id)
            gw.send(PUBCOMP, again.packet_id)
        else:
            assert (again.kind, again.payload, again.qos, again.dup) == (PUBLISH, b"job-7", qos, True)
            assert again.packet_id == sent.packet_id
            if qos == 1:
                gw.send(PUBACK, again.packet_id)
            else:
                gw.send(PUBREC, again.packet_id)
                assert (await gw.receive()).kind == PUBREL
                gw.send(PUBCOMP, again.packet_id)
        await gw.nothing_for()  # acknowledged now: not sent a third time


async def test_will_is_published_when_keepalive_expires(port: int) -> None:
    async with client(port, "watcher") as watcher:
        await watcher.subscribe("gateway/+/status", qos=1)
        async with raw(port, "gw-silent", keepalive=1, will=("gateway/gw-silent/status", b"offline", 1)) as silent:
            # the gateway hangs: its socket stays open, but it sends nothing (no PINGREQ)
            async with asyncio.timeout(WILL_TIMEOUT_S):
                async for message in watcher.messages:
                    assert (message.topic.value, message.payload) == ("gateway/gw-silent/status", b"offline")
                    break
            with pytest.raises((asyncio.IncompleteReadError, ConnectionError)):
                await silent.receive()  # and the broker closed the connection


async def test_nothing_reaches_a_client_that_did_not_subscribe(port: int) -> None:
    async with client(port, "eslserver", clean_session=False) as server:
        await server.subscribe("esl/demo/gateway/+/status", qos=1)
        async with client(port, "gw1") as gw:
            await gw.publish("esl/demo/gateway/gw1/status", b"online", qos=1, retain=True)
            await settle(gw, "status")
        async with raw(port, "nosy") as nosy:
            await nosy.subscribe("nothing/here", qos=1)
            async with raw(port, "silent-observer") as observer:  # connected, subscribed to nothing
                async with client(port, "pos") as pos:
                    await pos.publish("esl/demo/pos/prices", b"{}", qos=1)
                    await settle(pos, "prices")
                await nosy.nothing_for()
                await observer.nothing_for(0)
    # retained messages answer a SUBSCRIBE, not a reconnect of a session that already has one
    async with raw(port, "eslserver", clean=False) as resumed:
        assert resumed.session_present
        await resumed.nothing_for()


async def test_an_outage_queues_more_than_a_default_mosquitto_keeps(port: int) -> None:
    """A default Mosquitto keeps 1,000 messages per away session and drops the rest."""
    count = 1_200
    async with client(port, "eslserver-q", clean_session=False) as server:
        await server.subscribe("esl/demo/pos/prices", qos=1)
    async with client(port, "pos") as pos:
        await asyncio.gather(*(pos.publish("esl/demo/pos/prices", str(i).encode(), qos=1) for i in range(count)))
        await settle(pos, "outage")
    async with client(port, "eslserver-q", clean_session=False) as server:
        got: list[int] = []
        async with asyncio.timeout(10):
            async for message in server.messages:
                got.append(int(message.payload))  # type: ignore[arg-type]
                if len(got) == count:
                    break
        assert sorted(got) == list(range(count))
