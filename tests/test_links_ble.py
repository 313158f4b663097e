"""The BLE link for real: BleakLink/BleRadio through bleak's facade, a bumble bleak backend,
two virtual controllers on a bumble LocalLink, and a bumble GATT server hosting the label."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest
from bumble.device import Device
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eslserver.gateway.links.ble import (
    BleakLink,
    BleRadio,
    FrameTooLargeError,
    LinkClosedError,
    LinkError,
    LinkTimeoutError,
)
from firmware_proto.ble_gatt import (
    LEGACY_ADV_MAX,
    SERVICE_UUID,
    BleGattError,
    CompactCheckin,
    advertising_data,
    max_frame_for_mtu,
    parse_advertising_data,
)
from firmware_proto import (
    Checkin,
    CheckinFlag,
    GatewaySession,
    ImageFormat,
    derive_factory_key,
    get_model,
    image_hash,
)
from firmware_proto.errors import ProtocolError
from firmware_proto.gateway import SealedSender
from firmware_proto.image import compress
from firmware_proto.transfer import framebuffer_size, part_size_for
from firmware_proto.link import Link, Radio
from simulator.label import SimLabel
from tests.bumble_backend import VirtualAir, client_backend, scanner_backend
from tests.bumble_label import BumbleLabel, EchoEndpoint

GATEWAY_ADDR = "C0:00:00:00:00:01"
LABEL_ADDR = "C1:22:33:44:55:66"
ABSENT_ADDR = "C0:FF:EE:00:00:99"

CHECKIN = CompactCheckin(
    model_id=3, hash_prefix=bytes.fromhex("a1b2c3d4"), battery_mv=2950, temperature_c=21,
    wake_counter=7, update_pending=True,
)


@dataclass
class Rig:
    air: VirtualAir
    central: Device
    label: BumbleLabel
    endpoint: EchoEndpoint


async def make_rig(air: VirtualAir, *, label_max_mtu: int = 517) -> Rig:
    central = await air.add_device(GATEWAY_ADDR, name="gateway")
    endpoint = EchoEndpoint()
    label_device = await air.add_device(LABEL_ADDR, name="label")
    label = BumbleLabel(label_device, endpoint, CHECKIN, max_mtu=label_max_mtu)
    await label.start()
    return Rig(air, central, label, endpoint)


@pytest.fixture
async def air() -> AsyncIterator[VirtualAir]:
    async with VirtualAir() as virtual_air:
        yield virtual_air
    # conftest checks that no task outlives the test


@pytest.fixture
async def rig(air: VirtualAir) -> AsyncIterator[Rig]:
    rig = await make_rig(air)
    yield rig
    await rig.label.stop()


@pytest.fixture
async def link(rig: Rig) -> AsyncIterator[BleakLink]:
    link = BleakLink(LABEL_ADDR, backend=client_backend(rig.central), connect_timeout=5)
    await link.connect()
    yield link
    await link.close()


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


def collector(link: BleakLink) -> list[bytes]:
    frames: list[bytes] = []
    link.set_frame_callback(frames.append)
    return frames


async def test_link_and_radio_satisfy_the_typing_protocols() -> None:
    assert isinstance(BleakLink(LABEL_ADDR), Link)
    assert isinstance(BleRadio(), Radio)


async def test_connect_negotiates_the_mtu(link: BleakLink) -> None:
    assert link.is_connected
    assert link.address == LABEL_ADDR
    # the central asks for 517, the label's server allows 517: MTU 517, and one frame is
    # min(517 - 3, 512) bytes (an attribute value is at most 512 bytes)
    assert link.max_frame == 512


@pytest.mark.parametrize(("label_mtu", "central_mtu", "max_frame"),
                         [(185, 517, 182), (517, 247, 244), (23, 517, 20), (515, 517, 512)])
async def test_max_frame_follows_the_smaller_mtu(
    air: VirtualAir, label_mtu: int, central_mtu: int, max_frame: int
) -> None:
    rig = await make_rig(air, label_max_mtu=label_mtu)
    link = BleakLink(LABEL_ADDR, backend=client_backend(rig.central, requested_mtu=central_mtu))
    await link.connect()
    try:
        assert link.max_frame == max_frame
        frames = collector(link)
        payload = (bytes(range(256)) * 2)[:max_frame]
        await link.send(payload)
        await until(lambda: len(frames) == 1)
        assert frames == [payload]
        assert rig.label.oversized == []
        with pytest.raises(FrameTooLargeError, match=f"exceeds max_frame {max_frame}") as caught:
            await link.send(payload + b"\x00")
        assert isinstance(caught.value, ConnectionError)
        assert isinstance(caught.value, ValueError)
        assert link.is_connected  # refusing a frame does not drop the link
    finally:
        await link.close()
        await rig.label.stop()


async def test_frames_cross_byte_exact_both_ways(rig: Rig, link: BleakLink) -> None:
    frames = collector(link)
    sent = [b"\x00", bytes(range(1, 200)), b"\xff" * link.max_frame, b"\x10\x20\x30"]
    for frame in sent:
        await link.send(frame)
    await until(lambda: len(frames) == len(sent))
    assert rig.endpoint.received == sent  # gateway -> label, in order
    assert frames == sent  # label -> gateway (echoed), in order
    rig.label.notify(b"unsolicited report")
    await until(lambda: len(frames) == len(sent) + 1)
    assert frames[-1] == b"unsolicited report"


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
async def test_any_frame_up_to_max_frame_round_trips(
    rig: Rig, link: BleakLink, data: st.DataObject
) -> None:
    frame = data.draw(st.binary(min_size=1, max_size=link.max_frame), label="frame")
    frames = collector(link)
    rig.endpoint.received.clear()
    await link.send(frame)
    await until(lambda: len(frames) == 1)
    assert rig.endpoint.received == [frame]
    assert frames == [frame]


async def test_label_speaks_first_once_subscribed(rig: Rig) -> None:
    rig.label.greeting = lambda: [b"report 1", b"report 2"]
    link = BleakLink(LABEL_ADDR, backend=client_backend(rig.central))
    frames = collector(link)
    await link.connect()
    try:
        await until(lambda: len(frames) == 2)
        assert frames == [b"report 1", b"report 2"]
    finally:
        await link.close()


async def test_label_disconnect_surfaces_as_connection_error(rig: Rig, link: BleakLink) -> None:
    await rig.label.disconnect()
    await until(lambda: not link.is_connected)
    with pytest.raises(ConnectionError) as caught:
        await link.send(b"\x01\x02")
    assert isinstance(caught.value, LinkClosedError)
    await link.close()  # closing a dropped link is fine, twice too
    await link.close()


async def test_link_reconnects_after_a_drop(rig: Rig, link: BleakLink) -> None:
    await rig.label.disconnect()
    await until(lambda: not link.is_connected)
    await until(lambda: rig.label.device.is_advertising)
    await link.connect()
    frames = collector(link)
    await link.send(b"again")
    await until(lambda: frames == [b"again"])


async def test_send_after_close_is_refused(link: BleakLink) -> None:
    await link.close()
    with pytest.raises(LinkClosedError, match="not connected"):
        await link.send(b"x")


async def test_send_before_connect_is_refused(rig: Rig) -> None:
    link = BleakLink(LABEL_ADDR, backend=client_backend(rig.central))
    assert link.max_frame == 20
    with pytest.raises(LinkClosedError):
        await link.send(b"x")


async def test_connect_to_an_absent_label_times_out(air: VirtualAir) -> None:
    central = await air.add_device(GATEWAY_ADDR)
    link = BleakLink(ABSENT_ADDR, backend=client_backend(central), connect_timeout=0.3)
    with pytest.raises(LinkTimeoutError, match=ABSENT_ADDR) as caught:
        await link.connect()
    assert isinstance(caught.value, ConnectionError)
    assert isinstance(caught.value, TimeoutError)
    assert not link.is_connected
    # the attempt was really given up: the same central connects to a label that is there
    label = BumbleLabel(await air.add_device(LABEL_ADDR), EchoEndpoint(), CHECKIN)
    await label.start()
    present = BleakLink(LABEL_ADDR, backend=client_backend(central), connect_timeout=5)
    try:
        await present.connect()
        assert present.is_connected
    finally:
        await present.close()
        await label.stop()


async def test_platform_backend_failures_are_link_errors() -> None:
    # bleak's own backend for this machine: no adapter here (CI) -> the platform error, a
    # machine with one -> a timeout; either way the caller sees our LinkError
    link = BleakLink(ABSENT_ADDR, connect_timeout=1)
    with pytest.raises(LinkError, match=ABSENT_ADDR):
        await link.connect()
    radio = BleRadio()
    try:
        await radio.start()
    except LinkError as exc:
        assert "BLE scan could not start" in str(exc)
    finally:
        await radio.close()


async def test_connect_to_a_device_without_our_service_fails(air: VirtualAir) -> None:
    central = await air.add_device(GATEWAY_ADDR)
    stranger = await air.add_device(LABEL_ADDR, name="stranger")
    await stranger.start_advertising(auto_restart=False, advertising_interval_min=20,
                                     advertising_interval_max=20)
    link = BleakLink(LABEL_ADDR, backend=client_backend(central), connect_timeout=5)
    with pytest.raises(LinkError, match="has no ESL frame service"):
        await link.connect()
    assert not link.is_connected
    await until(lambda: not central.connections)


async def test_frame_callback_errors_do_not_break_the_link(
    rig: Rig, link: BleakLink, caplog: pytest.LogCaptureFixture
) -> None:
    def explode(frame: bytes) -> None:
        raise RuntimeError("consumer bug")

    link.set_frame_callback(explode)
    await link.send(b"boom")
    await until(lambda: "frame callback failed" in caplog.text)
    frames = collector(link)
    await link.send(b"still up")
    await until(lambda: frames == [b"still up"])


async def test_radio_hears_checkins_and_opens_links(rig: Rig) -> None:
    heard: list[tuple[str, bytes, int]] = []
    radio = BleRadio(scanner_backend=scanner_backend(rig.central),
                     client_backend=client_backend(rig.central), connect_timeout=5)
    radio.set_checkin_callback(lambda *args: heard.append(args))
    await radio.start()
    try:
        await until(lambda: len(heard) >= 1)
        await asyncio.sleep(0.2)  # the label keeps advertising: repeats are reported once
        assert len(heard) == 1
        address, payload, rssi = heard[0]
        assert address == LABEL_ADDR
        assert CompactCheckin.from_bytes(payload) == CHECKIN
        assert -127 <= rssi <= 20
        link = await radio.open_link(address)
        await link.connect()
        frames = collector(link)
        await link.send(b"hello label")
        await until(lambda: frames == [b"hello label"])
    finally:
        await radio.close()
    assert not link.is_connected  # the radio closed the links it opened
    await radio.close()


async def test_radio_reports_a_changed_checkin_and_ignores_malformed_ones(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    heard: list[bytes] = []
    radio = BleRadio(scanner_backend=scanner_backend(rig.central))
    radio.set_checkin_callback(lambda address, payload, rssi: heard.append(payload))
    await radio.start()
    try:
        await until(lambda: len(heard) == 1)
        rig.label.checkin = CompactCheckin.for_hash(3, bytes(8), 2900, 20, 8)
        await rig.label.advertise()
        await until(lambda: len(heard) == 2)
        assert CompactCheckin.from_bytes(heard[1]).wake_counter == 8
        # a broken label (or a spoofer) advertising our UUID with garbage is dropped
        rig.label.checkin = _Garbled(CHECKIN)  # type: ignore[assignment]
        await rig.label.advertise()
        await until(lambda: "malformed check-in" in caplog.text)
        assert "layout must be 1, got 15" in caplog.text
        assert len(heard) == 2
    finally:
        await radio.close()


class _Garbled:
    """Duck-types CompactCheckin.to_bytes with a wrong layout nibble."""

    def __init__(self, checkin: CompactCheckin) -> None:
        self._bytes = b"\xf0" + checkin.to_bytes()[1:]

    def to_bytes(self) -> bytes:
        return self._bytes


# --- firmware_proto.ble_gatt: the sans-IO layouts both ends share -------------------------

CHECKIN_BYTES = bytes.fromhex("11 03 a1b2c3d4 860b 15 07")
"""CHECKIN written out: layout 1 | update pending, model 3, hash a1b2c3d4, 2950 mV, 21 C, 7."""


def test_checkin_fixed_vector() -> None:
    assert CHECKIN.to_bytes() == CHECKIN_BYTES
    assert CompactCheckin.from_bytes(CHECKIN_BYTES) == CHECKIN
    cold = CompactCheckin(5, b"\x00\x01\x02\x03", 2100, -20, 255, service_needed=True,
                          low_battery=True)
    assert cold.to_bytes() == bytes.fromhex("16 05 00010203 3408 ec ff")


def test_advertising_data_fixed_vector_fits_a_legacy_pdu() -> None:
    data = advertising_data(CHECKIN)
    uuid_le = bytes.fromhex(SERVICE_UUID.replace("-", ""))[::-1]
    assert data == bytes.fromhex("020106 1b21") + uuid_le + CHECKIN_BYTES
    assert len(data) == LEGACY_ADV_MAX == 31
    assert parse_advertising_data(data) == CHECKIN


def test_parse_advertising_data_skips_other_structures() -> None:
    name = b"\x06\x09label"
    other_service = b"\x13\x21" + bytes(16) + b"\x01\x02"
    assert parse_advertising_data(name + other_service) is None
    assert parse_advertising_data(name + advertising_data(CHECKIN)[3:] + b"\x00\x00") == CHECKIN
    assert parse_advertising_data(b"") is None


@pytest.mark.parametrize(("data", "message"), [
    (b"\x05\x09ab", "claims 5 bytes, only 3 left"),
    (advertising_data(CHECKIN)[:-1], "claims 27 bytes, only 26 left"),
    (b"\x1a\x21" + bytes.fromhex(SERVICE_UUID.replace("-", ""))[::-1] + CHECKIN_BYTES[:9],
     "must be 10 bytes, got 9"),
])
def test_malformed_advertising_data_is_refused(data: bytes, message: str) -> None:
    with pytest.raises(BleGattError, match=message):
        parse_advertising_data(data)


@pytest.mark.parametrize(("data", "message"), [
    (CHECKIN_BYTES[:-1], "must be 10 bytes, got 9"),
    (CHECKIN_BYTES + b"\x00", "must be 10 bytes, got 11"),
    (b"\x21" + CHECKIN_BYTES[1:], "layout must be 1, got 2"),
    (b"\x18" + CHECKIN_BYTES[1:], "reserved flag bit 3"),
    (b"\x10\x00" + CHECKIN_BYTES[2:], "model_id must be 1..255, got 0"),
])
def test_malformed_checkin_is_refused(data: bytes, message: str) -> None:
    with pytest.raises(BleGattError, match=message):
        CompactCheckin.from_bytes(data)


def test_checkin_errors_are_protocol_errors() -> None:
    assert issubclass(BleGattError, ProtocolError)
    assert issubclass(BleGattError, ValueError)


def test_checkin_fields_are_range_checked() -> None:
    with pytest.raises(BleGattError, match="battery_mv must be 0..65535, got 70000"):
        CompactCheckin(1, bytes(4), 70000, 0, 0)
    with pytest.raises(BleGattError, match="temperature_c must be -128..127, got 200"):
        CompactCheckin(1, bytes(4), 3000, 200, 0)
    with pytest.raises(BleGattError, match="hash_prefix must be 4 bytes"):
        CompactCheckin(1, bytes(3), 3000, 20, 0)
    with pytest.raises(BleGattError, match="wake_counter must be 0..255, got 256"):
        CompactCheckin(1, bytes(4), 3000, 20, 256)
    with pytest.raises(BleGattError, match="battery_mv must be an int, got 2950.5"):
        CompactCheckin(1, bytes(4), 2950.5, 20, 0)  # type: ignore[arg-type]
    with pytest.raises(BleGattError, match="displayed_hash must be at least 4 bytes"):
        CompactCheckin.for_hash(1, b"\x01", 3000, 20, 0)


def test_checkin_hash_prefix_matching() -> None:
    full = bytes.fromhex("a1b2c3d4e5f60718")
    checkin = CompactCheckin.for_hash(3, full, 2950, 21, 7)
    assert checkin.hash_prefix == full[:4]
    assert checkin.matches_hash(full)
    assert not checkin.matches_hash(bytes(8))


@pytest.mark.parametrize(("mtu", "max_frame"),
                         [(23, 20), (185, 182), (247, 244), (515, 512), (517, 512), (65535, 512)])
def test_max_frame_for_mtu(mtu: int, max_frame: int) -> None:
    assert max_frame_for_mtu(mtu) == max_frame


@pytest.mark.parametrize("mtu", [0, 22, 65536])
def test_max_frame_for_mtu_refuses_impossible_mtus(mtu: int) -> None:
    with pytest.raises(BleGattError, match=f"got {mtu}"):
        max_frame_for_mtu(mtu)


checkins = st.builds(
    CompactCheckin,
    model_id=st.integers(1, 255), hash_prefix=st.binary(min_size=4, max_size=4),
    battery_mv=st.integers(0, 0xFFFF), temperature_c=st.integers(-128, 127),
    wake_counter=st.integers(0, 255), update_pending=st.booleans(),
    service_needed=st.booleans(), low_battery=st.booleans(),
)


@settings(max_examples=200)
@given(checkins)
def test_checkin_round_trips(checkin: CompactCheckin) -> None:
    assert CompactCheckin.from_bytes(checkin.to_bytes()) == checkin
    assert parse_advertising_data(advertising_data(checkin)) == checkin


@settings(max_examples=300)
@given(st.binary(max_size=40))
def test_random_bytes_raise_only_ble_gatt_error(data: bytes) -> None:
    for decode in (CompactCheckin.from_bytes, parse_advertising_data):
        try:
            decode(data)
        except BleGattError:
            pass


@settings(max_examples=200)
@given(checkins, st.data())
def test_mutated_advertisements_raise_only_ble_gatt_error(
    checkin: CompactCheckin, data: st.DataObject
) -> None:
    raw = bytearray(advertising_data(checkin))
    index = data.draw(st.integers(0, len(raw) - 1), label="index")
    raw[index] = data.draw(st.integers(0, 255), label="value")
    try:
        result = parse_advertising_data(bytes(raw))
    except BleGattError:
        return
    assert result is None or isinstance(result, CompactCheckin)


# --- the real protocol over BLE: firmware_proto's LabelSession behind the bumble peer -----

FACTORY_SEED = b"bumble-store"


@dataclass
class RealLabel:
    sim: SimLabel
    peer: BumbleLabel
    endpoint: _Recording
    factory_key: bytes

    @property
    def frame_sizes(self) -> list[int]:
        return self.endpoint.sizes


class _Recording:
    """The label endpoint: the simulator's label, with the sizes of the frames it is sent.

    After ``deaf_after`` frames the label's radio stops receiving (it is going back to
    sleep) and ``went_deaf`` is set, so a test can cut a transfer at an exact point.
    """

    def __init__(self, sim: SimLabel, sizes: list[int]) -> None:
        self.sim = sim
        self.sizes = sizes
        self.deaf_after: int | None = None
        self.went_deaf = asyncio.Event()

    def receive(self, frame: bytes) -> list[bytes]:
        if self.deaf_after is not None and len(self.sizes) >= self.deaf_after:
            self.went_deaf.set()
            return []
        self.sizes.append(len(frame))
        return self.sim.receive(frame)


def compact_checkin(sim: SimLabel, wake_counter: int) -> CompactCheckin:
    return CompactCheckin.for_hash(
        sim.model.model_id, sim.displayed_hash, sim.battery.millivolts,
        round(sim.temperature_c), wake_counter,
    )


async def make_real_label(air: VirtualAir, *, mtu: int) -> RealLabel:
    """A simulated 2.9" label (firmware_proto's LabelSession inside) behind our GATT service."""
    model = get_model("2.9-bwry")
    key = derive_factory_key(FACTORY_SEED, LABEL_ADDR)
    sim = SimLabel(LABEL_ADDR, model, key, always_listening=True,
                   max_frame=max_frame_for_mtu(mtu))
    sizes: list[int] = []

    def greeting() -> list[bytes]:  # on each connection the label reports first
        frame = sim.wake()
        return [] if frame is None else [frame]

    device = await air.add_device(LABEL_ADDR, name="label")
    endpoint = _Recording(sim, sizes)
    peer = BumbleLabel(device, endpoint, compact_checkin(sim, 1), max_mtu=mtu,
                       greeting=greeting)
    await peer.start()
    return RealLabel(sim, peer, endpoint, key)


def striped_image(model_name: str = "2.9-bwry") -> bytes:
    """A framebuffer with structure and noise, so that it compresses to many parts."""
    size = framebuffer_size(get_model(model_name))
    rng = random.Random(4)
    return bytes(rng.choice((0x55, 0x55, 0x00, 0xFF, rng.randrange(256))) for _ in range(size))


async def run_transfer(link: BleakLink, inbox: asyncio.Queue[bytes], sender: SealedSender) -> None:
    """The gateway's side of a transfer: send, feed every answer, nudge on silence."""
    for frame in sender.start():
        await link.send(frame)
    while not sender.finished:
        try:
            async with asyncio.timeout(0.5):
                reply = await inbox.get()
        except TimeoutError:
            out = sender.on_timeout()
        else:
            out = sender.handle(reply)
        for frame in out:
            await link.send(frame)


@pytest.mark.parametrize("mtu", [247, 100])
async def test_full_image_transfer_over_ble(air: VirtualAir, mtu: int) -> None:
    central = await air.add_device(GATEWAY_ADDR, name="gateway")
    label = await make_real_label(air, mtu=mtu)
    heard: list[tuple[str, bytes, int]] = []
    radio = BleRadio(scanner_backend=scanner_backend(central),
                     client_backend=client_backend(central), connect_timeout=5)
    radio.set_checkin_callback(lambda *args: heard.append(args))
    image = striped_image()
    try:
        # the label wakes and advertises; the gateway sees it does not show our image
        await radio.start()
        await until(lambda: len(heard) >= 1)
        address, advertised, _rssi = heard[0]
        advert = CompactCheckin.from_bytes(advertised)
        assert advert.model_id == get_model("2.9-bwry").model_id
        assert not advert.matches_hash(image_hash(image))

        # connect: the label speaks first with its (unpaired, plain) check-in frame
        link = await radio.open_link(address)
        inbox: asyncio.Queue[bytes] = asyncio.Queue()
        link.set_frame_callback(inbox.put_nowait)
        await link.connect()
        assert link.max_frame == max_frame_for_mtu(mtu)
        gateway = GatewaySession(LABEL_ADDR)
        checkin = gateway.open(await asyncio.wait_for(inbox.get(), 5))
        assert isinstance(checkin, Checkin) and checkin.auth is None
        assert checkin.displayed_hash == label.sim.displayed_hash

        # pair, then the label confirms with a check-in under the new key
        await link.send(gateway.pair(label.factory_key, label_rx_counter=checkin.rx_counter))
        confirmed = gateway.open(await asyncio.wait_for(inbox.get(), 5))
        assert isinstance(confirmed, Checkin) and confirmed.auth is not None
        assert label.sim.paired

        # the whole image, parts sized to the negotiated MTU
        pairing_bytes = sum(label.frame_sizes)
        label.frame_sizes.clear()
        sender = gateway.send_image(compress(ImageFormat.DEFLATE, image), ImageFormat.DEFLATE,
                                    image_hash(image), max_frame=link.max_frame)
        await run_transfer(link, inbox, sender)
        assert sender.done, sender.error
        assert label.sim.displayed_hash == image_hash(image)
        assert label.sim.framebuffer == image
        assert label.sim.refreshes == 1
        assert label.sim.bytes_in == sum(label.frame_sizes) + pairing_bytes
        assert max(label.frame_sizes) == link.max_frame  # image parts fill one write
        assert len(label.frame_sizes) > 10
        assert label.peer.oversized == []

        # next wake, the advertisement alone tells the gateway the label is up to date
        label.peer.checkin = compact_checkin(label.sim, 2)
        await link.close()
        await label.peer.advertise()
        await until(lambda: any(CompactCheckin.from_bytes(p).wake_counter == 2
                                for _, p, _ in heard))
        assert CompactCheckin.from_bytes(heard[-1][1]).matches_hash(image_hash(image))
    finally:
        await radio.close()
        await label.peer.stop()


async def test_transfer_cut_by_the_label_resumes_on_the_next_link(air: VirtualAir) -> None:
    central = await air.add_device(GATEWAY_ADDR, name="gateway")
    label = await make_real_label(air, mtu=247)
    image = striped_image()
    payload = compress(ImageFormat.DEFLATE, image)
    link = BleakLink(LABEL_ADDR, backend=client_backend(central), connect_timeout=5)
    inbox: asyncio.Queue[bytes] = asyncio.Queue()
    link.set_frame_callback(inbox.put_nowait)
    gateway = GatewaySession(LABEL_ADDR)
    try:
        await link.connect()
        checkin = gateway.open(await asyncio.wait_for(inbox.get(), 5))
        assert isinstance(checkin, Checkin)
        await link.send(gateway.pair(label.factory_key, label_rx_counter=checkin.rx_counter))
        gateway.open(await asyncio.wait_for(inbox.get(), 5))

        # the label goes back to sleep after 12 frames of the transfer
        label.frame_sizes.clear()
        label.endpoint.deaf_after = 12
        sender = gateway.send_image(payload, ImageFormat.DEFLATE, image_hash(image),
                                    max_frame=link.max_frame, window=4)
        cut = asyncio.create_task(_disconnect_when_deaf(label))
        with pytest.raises(ConnectionError):
            await run_transfer(link, inbox, sender)
        await cut
        assert len(label.frame_sizes) == 12
        assert label.sim.displayed_hash != image_hash(image)  # old image still shown
        label.endpoint.deaf_after = None

        # it wakes again: its check-in says a transfer is pending, and only the rest is sent
        while not inbox.empty():
            inbox.get_nowait()
        await until(lambda: label.peer.device.is_advertising)
        await link.connect()
        report = gateway.open(await asyncio.wait_for(inbox.get(), 5))
        assert isinstance(report, Checkin)
        assert report.status_flags & CheckinFlag.TRANSFER_PENDING
        label.frame_sizes.clear()
        resumed = gateway.send_image(payload, ImageFormat.DEFLATE, image_hash(image),
                                     max_frame=link.max_frame, resume=True)
        await run_transfer(link, inbox, resumed)
        assert resumed.done, resumed.error
        assert label.sim.displayed_hash == image_hash(image)
        parts_total = -(-len(payload) // part_size_for(link.max_frame))
        parts_in_second_leg = sum(1 for size in label.frame_sizes if size > 100)
        assert parts_in_second_leg < parts_total  # resumed, not restarted
    finally:
        await link.close()
        await label.peer.stop()


async def _disconnect_when_deaf(label: RealLabel) -> None:
    await asyncio.wait_for(label.endpoint.went_deaf.wait(), 10)
    await label.peer.disconnect()


async def test_jobs_with_job_keys_over_ble_end_with_the_labels_own_word(air: VirtualAir) -> None:
    """The gateway's job runner over the BLE radio to the bumble label running firmware_proto's
    label side: the server's pair request and ticket forwarded unchanged, frames under the job
    key only, and the label's final word (under its own key) forwarded raw in the ack."""
    from eslserver.gateway.conversation import JobSettings, run_job
    from eslserver.gateway.events import Ack
    from firmware_proto.auth import Direction, FrameKey, verify
    from firmware_proto.envelope import open_job_key
    from firmware_proto.frames import JobStatus, address_bytes, parse_frame
    from firmware_proto.transfer import plan_update
    from firmware_proto.trust import GatewayKey
    from tests.job_issuer import Issuer

    central = await air.add_device(GATEWAY_ADDR, name="gateway")
    label = await make_real_label(air, mtu=247)
    radio = BleRadio(scanner_backend=scanner_backend(central), client_backend=client_backend(central),
                     connect_timeout=5)
    gateway = GatewayKey.generate()
    issuer = Issuer(store="s1", gateway="gw1", gateway_key=gateway.public)
    key = bytes(range(40, 56))
    settings = JobSettings(reply_timeout_s=0.5, connect_retry_s=0.2)
    try:
        await radio.start()
        paired = await run_job(radio, issuer.pair(job_id=1, mac=LABEL_ADDR, factory_key=label.factory_key,
                                                  new_key=key), settings=settings)
        assert isinstance(paired, Ack), paired
        issuer.heard(paired)
        assert label.sim.flash.label_key == key
        image = striped_image()
        update = plan_update(get_model("2.9-bwry"), image)
        assert update is not None
        job = issuer.image(update, job_id=2, mac=LABEL_ADDR, label_key=key, budget=800)
        shown = await run_job(radio, job, job_key=open_job_key(job, gateway), settings=settings)
        assert isinstance(shown, Ack), shown
        assert label.sim.displayed_hash == image_hash(image)
        final = parse_frame(shown.status or b"")
        assert isinstance(final, JobStatus) and final.displayed_hash == image_hash(image)
        verify(final, FrameKey(key), address_bytes(LABEL_ADDR), Direction.FROM_LABEL)
        assert label.sim.flash.job is None and label.peer.oversized == []
    finally:
        await radio.close()
        await label.peer.stop()
