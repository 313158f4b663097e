"""The loopback radio's packet codec (firmware_proto.radio): vectors, round trips, garbage."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_proto.errors import ProtocolError
from firmware_proto.radio import (
    MAX_FRAME, MAX_PACKET, PacketKind, RadioCodecError, RadioPacket, RadioStreamDecoder,
    decode_packet, encode_packet, mac_from_bytes, mac_to_bytes,
)

macs = st.binary(min_size=6, max_size=6).map(mac_from_bytes)
packets = st.builds(
    RadioPacket,
    kind=st.sampled_from(list(PacketKind)),
    address=macs,
    rssi=st.integers(-128, 127),
    frame=st.binary(max_size=300),
)


def test_fixed_vector() -> None:
    packet = RadioPacket(PacketKind.FRAME, "AA:BB:CC:DD:EE:01", -60, b"hello")
    wire = bytes.fromhex("e51a" "0d00" "00" "aabbccddee01" "c4" "68656c6c6f" "a39ab22c")
    assert packet.to_bytes() == wire
    assert decode_packet(wire) == packet


def test_checkin_vector_with_empty_frame() -> None:
    wire = encode_packet(PacketKind.CONNECT, "02:E5:00:00:00:01", 0, b"")
    assert wire[:4] == bytes.fromhex("e51a0800")
    assert wire[4:12] == bytes.fromhex("0202e50000000100")
    assert decode_packet(wire) == RadioPacket(PacketKind.CONNECT, "02:E5:00:00:00:01")


def test_errors_are_protocol_errors() -> None:
    assert issubclass(RadioCodecError, ProtocolError)
    assert issubclass(RadioCodecError, ValueError)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"address": "AA:BB"}, "address"),
        ({"address": "zz:BB:CC:DD:EE:01"}, "address"),
        ({"rssi": 128}, "rssi"),
        ({"rssi": -129}, "rssi"),
        ({"frame": b"x" * (MAX_FRAME + 1)}, "frame is"),
        ({"kind": 9}, "kind"),
    ],
)
def test_bad_packets_are_refused(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"kind": PacketKind.FRAME, "address": "AA:BB:CC:DD:EE:01", "rssi": 0, "frame": b""}
    args.update(kwargs)
    with pytest.raises(RadioCodecError, match=message):
        RadioPacket(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        (b"", "at least"),
        (bytes.fromhex("0000" "0800" "00" "aabbccddee01" "00" "00000000"), "sync"),
        (bytes.fromhex("e51a" "0700" "00" "aabbccddee01" "00" "00000000"), "length"),
        (bytes.fromhex("e51a" "0900" "00" "aabbccddee01" "00" "00000000"), "length field"),
        (bytes.fromhex("e51a" "0800" "00" "aabbccddee01" "00" "00000000"), "crc"),
    ],
)
def test_bad_wire_is_refused(wire: bytes, message: str) -> None:
    with pytest.raises(RadioCodecError, match=message):
        decode_packet(wire)


def test_unknown_kind_with_good_crc_is_refused() -> None:
    import zlib
    body = bytes([0x7F]) + mac_to_bytes("AA:BB:CC:DD:EE:01") + b"\x00"
    wire = b"\xe5\x1a" + len(body).to_bytes(2, "little") + body + zlib.crc32(body).to_bytes(4, "little")
    with pytest.raises(RadioCodecError, match="unknown packet kind 0x7f"):
        decode_packet(wire)


@given(packets)
@settings(max_examples=200)
def test_round_trip(packet: RadioPacket) -> None:
    assert decode_packet(packet.to_bytes()) == packet


@given(st.binary(max_size=200))
@settings(max_examples=300)
def test_random_bytes_raise_only_codec_errors(data: bytes) -> None:
    try:
        decode_packet(data)
    except RadioCodecError:
        pass


@given(st.lists(packets, max_size=8), st.integers(1, 64))
@settings(max_examples=100)
def test_stream_in_any_chunks(items: list[RadioPacket], chunk: int) -> None:
    stream = b"".join(p.to_bytes() for p in items)
    dec = RadioStreamDecoder()
    out: list[RadioPacket] = []
    for i in range(0, len(stream), chunk):
        out += dec.feed(stream[i:i + chunk])
    assert out == items
    assert dec.buffered == 0 and dec.discarded_bytes == 0


@given(st.lists(packets, min_size=1, max_size=6), st.binary(max_size=40), st.data())
@settings(max_examples=100)
def test_resynchronises_past_garbage_and_corruption(items: list[RadioPacket], junk: bytes,
                                                    data: st.DataObject) -> None:
    """A corrupted packet is lost, garbage skipped; every intact packet after it comes out."""
    victim = data.draw(st.integers(0, len(items) - 1))
    wires = [p.to_bytes() for p in items]
    bad = bytearray(wires[victim])
    bit = data.draw(st.integers(4 * 8, len(bad) * 8 - 1))  # flip a bit past sync+length
    bad[bit // 8] ^= 1 << (bit % 8)
    stream = junk + b"".join(bytes(bad) if i == victim else w for i, w in enumerate(wires))
    dec = RadioStreamDecoder()
    out: list[RadioPacket] = []
    for i in range(len(stream)):
        out += dec.feed(stream[i:i + 1])
    expected = [p for i, p in enumerate(items) if i != victim]
    # a packet whose content was damaged never comes out; the others all do, in order
    assert [p for p in out if p in expected] == expected
    assert all(p in items for p in out)
    assert dec.buffered < MAX_PACKET


@given(st.binary(min_size=1, max_size=3000))
@settings(max_examples=100)
def test_decoder_never_raises_and_stays_bounded(data: bytes) -> None:
    dec = RadioStreamDecoder()
    for i in range(0, len(data), 97):
        dec.feed(data[i:i + 97])
        assert dec.buffered < MAX_PACKET


def test_huge_claimed_length_does_not_hold_the_stream() -> None:
    """A bogus length field (beyond MAX_FRAME) is skipped at once, not waited for."""
    good = RadioPacket(PacketKind.CHECKIN, "AA:BB:CC:DD:EE:02", -70, b"ok").to_bytes()
    dec = RadioStreamDecoder()
    assert dec.feed(b"\xe5\x1a\xff\xff" + good) == [decode_packet(good)]
    assert dec.bad_packets == 1


def test_mac_helpers() -> None:
    assert mac_to_bytes("aa:bb:cc:dd:ee:ff") == bytes.fromhex("aabbccddeeff")
    assert mac_from_bytes(bytes.fromhex("aabbccddeeff")) == "AA:BB:CC:DD:EE:FF"
    with pytest.raises(RadioCodecError, match="6 bytes"):
        mac_from_bytes(b"\x00")
