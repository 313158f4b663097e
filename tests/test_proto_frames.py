"""Frames, wire integers, the command table and the stream decoder."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware_proto import (
    Auth, Checkin, CheckinFlag, ControlCommand, ControlResponse, FrameError, ImageOffer, ImagePart,
    ImageStatus, ImageStatusRequest, JobStatus, JobTicket, PairRequest, ProtocolError, StreamDecoder,
    TransferState, encode_stream, parse_frame,
)
from firmware_proto.commands import COMMANDS, RESPONSES, param_length
from firmware_proto.crc import crc16
from firmware_proto.frames import MAX_FRAME
from firmware_proto.image import ImageError, ImageFormat, compress, decompress
from firmware_proto.wire import U8, U16, U24, I8

ADDR = bytes.fromhex("aabbcc000001")
AUTH = Auth(0x01020304, b"\xde\xad\xbe\xef")

SAMPLES = [
    ControlCommand.make("ping", seq=7, esl_id=5),
    ControlCommand.make("led_timed_control", led_index=0, color_brightness=0x3F, flash_pattern=0xFF00FF00FF,
                        off_period=2, on_period=3, repeat=10, absolute_time=123456, seq=255),
    ControlCommand.make("display_image", display_index=0, image_index=1, seq=3),
    ControlResponse.make("basic_state", state=0x13),
    ControlResponse.make("sensor_value", sensor_index=0, data=b"\x86\x0b"),
    ControlResponse.make("error", error_code=0x0C),
    ImageOffer(transfer_id=1, image_format=2, image_hash=b"12345678", total_size=9472, part_size=225),
    ImageOffer(transfer_id=2, image_format=1, image_hash=b"12345678", total_size=300, part_size=225,
               region=(16, 160, 96, 128), base_hash=b"abcdefgh", ack_req=True, address=ADDR),
    ImagePart(transfer_id=3, offset=225 * 4, data=b"\x00" * 225, auth=AUTH),
    ImageStatusRequest(transfer_id=4, ack_req=True),
    ImageStatus(transfer_id=3, state=TransferState.RECEIVING, base=2, bitmap=b"\x05"),
    ImageStatus(transfer_id=3, state=TransferState.FAILED, error=0xF0),
    Checkin(address=ADDR, model_id=3, firmware_version=0x0100, status_flags=CheckinFlag.PAIRED,
            displayed_hash=bytes(range(8)), battery_mv=2950, temperature_c=-5, rssi=-60, rx_counter=42),
    PairRequest(wrapped_key=bytes(24), esl_id=9, auth=AUTH),
    JobTicket(job_id=2**64 - 1, attempt=255, first=AUTH.counter, last=2**32 - 1, auth=AUTH),
    JobStatus(address=ADDR, job_id=9, attempt=1, result=0xF1, displayed_hash=bytes(range(8)), battery_mv=2950,
              temperature_c=-5, rssi=-60, rx_counter=42, auth=AUTH),
]


@pytest.mark.parametrize("frame", SAMPLES, ids=lambda f: type(f).__name__)
def test_round_trip_every_frame_type(frame: object) -> None:
    data = frame.to_bytes()  # type: ignore[attr-defined]
    assert parse_frame(data) == frame
    assert type(frame).from_bytes(data) == frame


def test_every_frame_type_is_sampled() -> None:
    from firmware_proto.frames import FRAME_CLASSES
    assert {type(f) for f in SAMPLES} == set(FRAME_CLASSES.values())


@pytest.mark.parametrize(("frame", "hex_"), [
    # header 10 (v1, no flags), type 01 command, seq 07 | opcode 00 ping, esl_id 05 | crc
    (ControlCommand.make("ping", seq=7, esl_id=5), "1001070005d7b6"),
    # type 02 response | opcode 00 error, code 08 insufficient battery | crc
    (ControlResponse.make("error", seq=7, error_code=8), "1002070008a6fc"),
    # type 13 status | tid 03, state 01, error 00, base 0002, bitmap 05 | crc
    (ImageStatus(transfer_id=3, state=TransferState.RECEIVING, base=2, bitmap=b"\x05", seq=9), "101309030100020005f5cf"),
    # header 12 (AUTH) type 11 seq 01 | tid 03, offset 030201, part crc c183, data aabb |
    # counter 01020304 LE, tag deadbeef | crc
    (ImagePart(transfer_id=3, offset=0x010203, data=b"\xaa\xbb", seq=1, auth=AUTH),
     "1211010303020183c1aabb04030201deadbeef940b"),
    # header 12 (AUTH) type 40 ticket seq 01 | job_id 0102030405060708, attempt 02, first 01020304,
    # last 01020404 | counter (= first), tag | crc
    (JobTicket(job_id=0x0102030405060708, attempt=2, first=0x01020304, last=0x01020404, auth=AUTH, seq=1),
     "124001" "0807060504030201" "02" "04030201" "04040201" "04030201deadbeef" "d9ea"),
    # header 13 (ADDR|AUTH) type 41 final status | address | job_id 9, attempt 1, result 0, hash,
    # battery 2950, temperature -5, rssi -60, rx_counter 42 | counter, tag | crc
    (JobStatus(address=ADDR, job_id=9, attempt=1, result=0, displayed_hash=bytes(range(8)), battery_mv=2950,
               temperature_c=-5, rssi=-60, rx_counter=42, auth=AUTH),
     "134100" "aabbcc000001" "0900000000000000" "01" "00" "0001020304050607" "860b" "fb" "c4" "2a000000"
     "04030201deadbeef" "bcaf"),
    # header 11 (ADDR) type 20 | address | model 03, fw 0100, flags 01, hash 0001..07,
    # battery 0b86 (2950), temp fb (-5), rssi c4 (-60), rx counter 0000002a | crc
    (Checkin(address=ADDR, model_id=3, firmware_version=0x0100, status_flags=CheckinFlag.PAIRED,
             displayed_hash=bytes(range(8)), battery_mv=2950, temperature_c=-5, rssi=-60, rx_counter=42),
     "112000aabbcc000001030001010001020304050607860bfbc42a00000017c4"),
])
def test_fixed_byte_vectors(frame: object, hex_: str) -> None:
    assert frame.to_bytes().hex() == hex_  # type: ignore[attr-defined]
    assert parse_frame(bytes.fromhex(hex_)) == frame


def test_crc_check_value() -> None:
    assert crc16(b"123456789") == 0x29B1


def test_wire_integers_are_range_checked() -> None:
    assert U24(0xFFFFFF).serialize() == b"\xff\xff\xff"
    assert I8(-128).serialize() == b"\x80"
    for cls, bad in ((U8, 256), (U8, -1), (U16, 1 << 16), (I8, 128)):
        with pytest.raises(FrameError, match=str(bad)):
            cls(bad)
    with pytest.raises(FrameError, match="seq"):
        ImageStatusRequest(transfer_id=1, seq=300)


def test_crc_error_quotes_the_bytes() -> None:
    data = bytearray(ControlCommand.make("ping").to_bytes())
    data[-1] ^= 0xFF
    with pytest.raises(FrameError, match=r"crc: expected [0-9a-f]{4}, got [0-9a-f]{4}"):
        parse_frame(bytes(data))


def test_command_table_is_consistent() -> None:
    by_name, by_op = COMMANDS[1]
    assert {n: s.opcode for n, s in by_name.items()} == {
        "ping": 0x00, "unassociate": 0x01, "service_reset": 0x02, "factory_reset": 0x03,
        "update_complete": 0x04, "read_sensor": 0x10, "refresh_display": 0x11, "display_image": 0x20,
        "display_timed_image": 0x60, "led_control": 0xB0, "led_timed_control": 0xF0}
    for op, spec in by_op.items():  # the reverse index agrees and sizes follow the opcode rule
        assert by_name[spec.name] is spec and spec.fixed_size == param_length(op)
    rnames, rops = RESPONSES[1]
    assert {rnames[n].opcode for n in ("error", "led_state", "basic_state", "display_state")} == {0x00, 0x01, 0x10, 0x11}
    assert all(rops[(n << 4) | 0x0E].name == "sensor_value" for n in range(1, 16))


@pytest.mark.parametrize("bad", [
    b"", b"\x10\x01", bytes(MAX_FRAME + 1),
    bytes.fromhex("2001070005") + b"\x00\x00",  # version 2 (and a bad CRC)
])
def test_bad_inputs_table(bad: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse_frame(bad)


def _with_crc(body: bytes) -> bytes:
    return body + crc16(body).to_bytes(2, "little")


@pytest.mark.parametrize("body", [
    bytes.fromhex("200107") + b"\x00\x05",   # version 2
    bytes.fromhex("1f0107") + b"\x00\x05",   # unknown flag bit
    bytes.fromhex("10ee07"),                 # unknown frame type
    bytes.fromhex("100107") + b"\x0e\x05",   # unknown opcode
    bytes.fromhex("100107") + b"\x10\x05",   # read_sensor with a missing parameter
    bytes.fromhex("100107") + b"\x00\x05\x00",  # trailing byte
    bytes.fromhex("121107") + b"\x00" * 5,   # AUTH flag, no room for the trailer
    bytes.fromhex("101307") + b"\x03\x09\x00\x00\x00",  # unknown transfer state
])
def test_well_crced_but_malformed_frames_raise_frame_error(body: bytes) -> None:
    with pytest.raises(FrameError):
        parse_frame(_with_crc(body))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_random_bytes_raise_only_protocol_error(data: bytes) -> None:
    for candidate in (data, _with_crc(data)):  # the second gets past the CRC into the parsers
        try:
            parse_frame(candidate)
        except ProtocolError:
            pass


@settings(max_examples=300)
@given(st.sampled_from(SAMPLES), st.data())
def test_mutated_frames_raise_only_protocol_error(frame: object, data: st.DataObject) -> None:
    raw = bytearray(frame.to_bytes())  # type: ignore[attr-defined]
    body = raw[:-2]
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        if op == "flip" and body:
            i = data.draw(st.integers(0, len(body) - 1))
            body[i] ^= data.draw(st.integers(1, 255))
        elif op == "cut" and body:
            del body[data.draw(st.integers(0, len(body) - 1)):]
        else:
            body.insert(data.draw(st.integers(0, len(body))), data.draw(st.integers(0, 255)))
    try:
        parse_frame(_with_crc(bytes(body)))
    except ProtocolError:
        pass


def test_stream_decoder_needs_more_then_yields() -> None:
    frames = [f.to_bytes() for f in SAMPLES]
    stream = b"".join(encode_stream(f) for f in frames)
    dec = StreamDecoder()
    out: list[bytes] = []
    for i in range(len(stream)):  # byte by byte
        out += dec.feed(stream[i:i + 1])
        if i < 3:
            assert dec.need > 0 and not out
    assert out == frames and dec.corrupt == 0 and dec.need == 0 and dec.buffered == 0


def test_stream_decoder_resynchronises_past_corruption() -> None:
    frames = [f.to_bytes() for f in SAMPLES]
    records = [bytearray(encode_stream(f)) for f in frames]
    records[2][6] ^= 0x40               # corrupt a frame body: its CRC fails
    records[5][2:4] = b"\xff\xff"       # impossible length
    junk = b"\x00\xe5garbage\xe5\x5a"   # noise, including a false magic
    stream = junk + b"".join(bytes(r) for r in records)
    dec = StreamDecoder()
    out: list[bytes] = []
    rng = random.Random(5)
    pos = 0
    while pos < len(stream):
        n = rng.randint(1, 60)
        out += dec.feed(stream[pos:pos + n])
        pos += n
    expected = [f for i, f in enumerate(frames) if i not in (2, 5)]
    assert out == expected
    assert dec.corrupt >= 2 and dec.skipped > 0


@settings(max_examples=100)
@given(st.binary(max_size=5000))
def test_stream_decoder_garbage_is_bounded(data: bytes) -> None:
    dec = StreamDecoder()
    for frame in dec.feed(data):
        try:
            parse_frame(frame)
        except ProtocolError:
            pass
    assert dec.buffered <= 2 * (MAX_FRAME + 4)


def test_parse_refuses_bad_types() -> None:
    with pytest.raises(ProtocolError):
        parse_frame("not bytes")  # type: ignore[arg-type]


_u8 = st.integers(0, 255)
_hash = st.binary(min_size=8, max_size=8)


@st.composite
def frames(draw: st.DrawFn) -> object:
    common = {"seq": draw(_u8), "ack_req": draw(st.booleans()),
              "address": draw(st.none() | st.binary(min_size=6, max_size=6)),
              "auth": draw(st.none() | st.builds(Auth, st.integers(0, 2**32 - 1), st.binary(min_size=4, max_size=4)))}
    kind = draw(st.sampled_from(["part", "status", "offer", "checkin", "request"]))
    if kind == "part":
        return ImagePart(transfer_id=draw(_u8), offset=draw(st.integers(0, 2**24 - 1)),
                         data=draw(st.binary(min_size=1, max_size=200)), **common)
    if kind == "status":
        return ImageStatus(transfer_id=draw(_u8), state=draw(st.sampled_from(TransferState)),
                           error=draw(_u8), base=draw(st.integers(0, 65535)),
                           bitmap=draw(st.binary(max_size=100)), **common)
    if kind == "offer":
        base = draw(st.none() | _hash)
        region = draw(st.none() | st.tuples(*[st.integers(0, 65535)] * 4)) if base else None
        return ImageOffer(transfer_id=draw(_u8), image_format=draw(_u8), image_hash=draw(_hash),
                          total_size=draw(st.integers(1, 2**24 - 1)), part_size=draw(st.integers(1, 65535)),
                          region=region, base_hash=base, delta=bool(base) and draw(st.booleans()), **common)
    if kind == "checkin":
        common["address"] = draw(st.binary(min_size=6, max_size=6))
        return Checkin(model_id=draw(_u8), firmware_version=draw(st.integers(0, 65535)),
                       status_flags=CheckinFlag(draw(st.integers(0, 15))), displayed_hash=draw(_hash),
                       battery_mv=draw(st.integers(0, 65535)), temperature_c=draw(st.integers(-128, 127)),
                       rssi=draw(st.integers(-128, 127)), rx_counter=draw(st.integers(0, 2**32 - 1)), **common)
    return ImageStatusRequest(transfer_id=draw(_u8), **common)


@settings(max_examples=300)
@given(frames())
def test_decode_encode_property(frame: object) -> None:
    assert parse_frame(frame.to_bytes()) == frame  # type: ignore[attr-defined]


def test_stream_decoder_tells_need_from_corrupt() -> None:
    rec = encode_stream(SAMPLES[0].to_bytes())
    dec = StreamDecoder()
    assert dec.feed(rec[:5]) == [] and dec.need == len(rec) - 5 and dec.corrupt == 0  # incomplete
    bad = bytearray(rec[5:])
    bad[-1] ^= 1
    assert dec.feed(bytes(bad)) == [] and dec.corrupt == 1  # complete but corrupt
    assert dec.feed(rec) == [SAMPLES[0].to_bytes()]  # and the next record still comes through


@settings(max_examples=150)
@given(st.binary(min_size=1, max_size=2000), st.sampled_from(list(ImageFormat)))
def test_payload_formats_round_trip(data: bytes, fmt: ImageFormat) -> None:
    assert decompress(fmt, compress(fmt, data), len(data)) == data


@settings(max_examples=150)
@given(st.binary(max_size=400), st.sampled_from(list(ImageFormat)), st.integers(1, 3000))
def test_payload_decoding_never_overruns(data: bytes, fmt: ImageFormat, size: int) -> None:
    try:
        out = decompress(fmt, data, size)
    except ImageError:
        return
    assert len(out) == size
