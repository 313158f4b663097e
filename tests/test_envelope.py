"""Job envelopes (firmware_proto.envelope): byte layout, round trips, bad input, the budget."""

from __future__ import annotations

import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware_proto import (
    BudgetExhausted,
    CommandJob,
    EnvelopeError,
    ImageJob,
    JobEnvelope,
    JobKind,
    JobSession,
    PairJob,
    ProtocolError,
    parse_envelope,
)
from firmware_proto.auth import Direction, FrameKey, seal
from firmware_proto.frames import (
    ControlCommand,
    ImageStatusRequest,
    address_bytes,
    parse_frame,
)
from firmware_proto.image import ImageFormat, Region

MAC = "02:E5:00:00:00:01"

# -- fixed vectors, written out ----------------------------------------------------------------

PAIR_HEX = (
    "e54a" "01" "01"                          # magic, version 1, kind PAIR
    "0807060504030201"                        # job_id 0x0102030405060708
    "aabbccddee01"                            # mac AA:BB:CC:DD:EE:01
    "2c01" "02"                               # deadline_s 300, attempt 2
    "000102030405060708090a0b0c0d0e0f"        # factory_key
    "101112131415161718191a1b1c1d1e1f"        # new_key
    "07000000" "05"                           # factory_counter 7, esl_id 5
    "dcc48220"                                # crc32
)
IMAGE_HEX = (
    "e54a" "01" "02" "0900000000000000" "02e500000001" "3c00" "00"
    "00000000000000000000000000000000"        # label_key
    "64000000" "2c01" "2a000000"              # tx_counter 100, budget 300, rx_highest 42
    "00" "07"                                 # format RAW, flags REGION|BASE|DELTA
    "1122334455667788"                        # image_hash
    "0800" "1000" "2000" "0400"               # region x 8, y 16, w 32, h 4
    "8877665544332211"                        # base_hash
    "020000" "ff00"                           # payload_len 2, payload
    "65e59032"
)
COMMAND_HEX = (
    "e54a" "01" "03" "0100000000000000" "02e500000001" "1e00" "00"
    "00000000000000000000000000000000"
    "05000000" "0300" "04000000"              # tx_counter 5, budget 3, rx_highest 4
    "0700" "1001000000e263"                   # frame_len 7, an unsealed ping command frame
    "0cabf2aa"
)

PAIR = PairJob(job_id=0x0102030405060708, mac="aa:bb:cc:dd:ee:01", deadline_s=300, attempt=2,
               factory_key=bytes(range(16)), new_key=bytes(range(16, 32)), factory_counter=7, esl_id=5)
IMAGE = ImageJob(job_id=9, mac=MAC, deadline_s=60, label_key=bytes(16), tx_counter=100, budget=300,
                 rx_highest=42, image_format=ImageFormat.RAW, image_hash=bytes.fromhex("1122334455667788"),
                 payload=b"\xff\x00", region=Region(8, 16, 32, 4),
                 base_hash=bytes.fromhex("8877665544332211"), delta=True)
COMMAND = CommandJob.make("ping", job_id=1, mac=MAC, label_key=bytes(16), tx_counter=5, budget=3,
                          rx_highest=4, deadline_s=30)


@pytest.mark.parametrize(("job", "hexed"), [(PAIR, PAIR_HEX), (IMAGE, IMAGE_HEX), (COMMAND, COMMAND_HEX)])
def test_fixed_vectors(job: JobEnvelope, hexed: str) -> None:
    assert job.to_bytes().hex() == hexed
    back = parse_envelope(bytes.fromhex(hexed))
    assert back == job and type(back) is type(job)
    assert type(job).from_bytes(bytes.fromhex(hexed)) == job


def test_mac_is_normalised_and_keys_stay_out_of_repr() -> None:
    assert PAIR.mac == "AA:BB:CC:DD:EE:01" and PAIR.kind is JobKind.PAIR
    assert "0001020304" not in repr(PAIR) and "factory_key" not in repr(PAIR)
    assert "label_key" not in repr(IMAGE) and "payload" not in repr(IMAGE)


def test_from_bytes_on_a_subclass_refuses_another_kind_but_names_the_job() -> None:
    with pytest.raises(EnvelopeError, match="expected a ImageJob, got PairJob") as info:
        ImageJob.from_bytes(PAIR.to_bytes())
    assert info.value.job_id == PAIR.job_id and info.value.mac == PAIR.mac


def test_image_job_from_update_round_trips_the_update() -> None:
    assert ImageJob.from_update(IMAGE.update, job_id=9, mac=MAC, label_key=bytes(16), tx_counter=100,
                                budget=300, rx_highest=42) == IMAGE


# -- round trips ---------------------------------------------------------------------------------

u = st.integers
keys = st.binary(min_size=16, max_size=16)
hashes = st.binary(min_size=8, max_size=8)
macs = st.binary(min_size=6, max_size=6).map(lambda b: ":".join(f"{x:02X}" for x in b))
common = {"job_id": u(0, 2**64 - 1), "mac": macs, "deadline_s": u(0, 0xFFFF), "attempt": u(0, 255)}


@st.composite
def counters(draw: st.DrawFn) -> dict[str, object]:
    budget = draw(u(1, 0xFFFF))
    return {"label_key": draw(keys), "tx_counter": draw(u(0, 0xFFFFFFFF - budget)), "budget": budget,
            "rx_highest": draw(u(0, 0xFFFFFFFF))}


pairs = st.builds(PairJob, factory_key=keys, new_key=keys, factory_counter=u(0, 0xFFFFFFFE),
                  esl_id=u(0, 255), **common)


@st.composite
def images(draw: st.DrawFn) -> ImageJob:
    region = draw(st.none() | st.builds(Region, u(0, 0xFFFF), u(0, 0xFFFF), u(1, 0xFFFF), u(1, 0xFFFF)))
    delta = draw(st.booleans())
    base = draw(hashes) if region is not None or delta else draw(st.none() | hashes)
    return ImageJob(image_format=draw(st.sampled_from(ImageFormat)), image_hash=draw(hashes),
                    payload=draw(st.binary(min_size=1, max_size=3000)), region=region, base_hash=base,
                    delta=delta, **draw(counters()), **{k: draw(v) for k, v in common.items()})  # type: ignore[arg-type]


@st.composite
def commands(draw: st.DrawFn) -> CommandJob:
    name, params = draw(st.sampled_from([
        ("ping", {}), ("read_sensor", {"sensor_index": 1}), ("display_image", {"display_index": 0, "image_index": 0}),
        ("led_control", {"led_index": 0, "color_brightness": 0xC3, "flash_pattern": 0xFF00FF00FF,
                         "off_period": 5, "on_period": 5, "repeat": 0x7FFF}),
    ]))
    command = ControlCommand.make(name, seq=draw(u(0, 255)), esl_id=draw(u(0, 255)), **params)
    return CommandJob(command=command, **draw(counters()), **{k: draw(v) for k, v in common.items()})  # type: ignore[arg-type]


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(pairs, images(), commands()))
def test_round_trip(job: JobEnvelope) -> None:
    data = job.to_bytes()
    back = parse_envelope(data)
    assert back == job and back.to_bytes() == data


# -- bad input -------------------------------------------------------------------------------------


def reseal(body: bytes) -> bytes:
    """`body` with a correct CRC-32, so the decoder gets past the CRC to the field under test."""
    return body + zlib.crc32(body).to_bytes(4, "little")


PAIR_BODY = bytes.fromhex(PAIR_HEX)[:-4]
IMAGE_BODY = bytes.fromhex(IMAGE_HEX)[:-4]
COMMAND_BODY = bytes.fromhex(COMMAND_HEX)[:-4]
SEALED_PING = seal(ControlCommand.make("ping", seq=1), FrameKey(bytes(16)), address_bytes(MAC), Direction.TO_LABEL, 9)
STATUS_REQ = ImageStatusRequest(transfer_id=1).to_bytes()

BAD: list[tuple[str, bytes, str]] = [
    ("empty", b"", "length must be"),
    ("short", bytes.fromhex(PAIR_HEX)[:20], "length must be"),
    ("crc", PAIR_BODY + b"\x00\x00\x00\x00", "crc32: expected 2082c4dc, got 00000000"),
    ("magic", reseal(b"\xe5\x4b" + PAIR_BODY[2:]), "magic: expected e54a, got e54b"),
    ("version", reseal(PAIR_BODY[:2] + b"\x02" + PAIR_BODY[3:]), "version: expected 1, got 2"),
    ("kind", reseal(PAIR_BODY[:3] + b"\x09" + PAIR_BODY[4:]), "kind: unknown job kind 09"),
    ("truncated pair", reseal(PAIR_BODY[:-1]), "PairJob.esl_id: need 1 bytes"),
    ("trailing", reseal(PAIR_BODY + b"\x00"), "1 unexpected trailing bytes"),
    ("factory counter max", reseal(PAIR_BODY[:-5] + b"\xff\xff\xff\xff\x05"), "factory_counter: 4294967295"),
    ("image flags", reseal(IMAGE_BODY[:48] + b"\x0f" + IMAGE_BODY[49:]), "flags: unknown bits in 0f"),
    ("image format", reseal(IMAGE_BODY[:47] + b"\x09" + IMAGE_BODY[48:]), "image_format: unknown format 9"),
    ("payload past the end", reseal(IMAGE_BODY[:-5] + b"\x03\x00\x00" + IMAGE_BODY[-2:]),
     "payload: need 3 bytes at offset"),
    ("payload huge", reseal(IMAGE_BODY[:-5] + b"\xff\xff\xff" + IMAGE_BODY[-2:]), "payload_len: 16777215 is over"),
    ("payload empty", reseal(IMAGE_BODY[:-5] + b"\x00\x00\x00"), "payload: must be 1..1048576 bytes, got 0"),
    ("region w 0", reseal(IMAGE_BODY[:61] + b"\x00\x00" + IMAGE_BODY[63:]), "region: w and h must be > 0"),
    ("delta without base", reseal(IMAGE_BODY[:48] + b"\x05" + IMAGE_BODY[49:65] + IMAGE_BODY[73:]),
     "base_hash: a region or delta update needs base_hash"),
    ("budget 0", reseal(COMMAND_BODY[:41] + b"\x00\x00" + COMMAND_BODY[43:]), "budget: must be >= 1, got 0"),
    ("counter space", reseal(COMMAND_BODY[:37] + b"\xff\xff\xff\xff" + COMMAND_BODY[41:]),
     "budget: tx_counter 4294967295 \\+ budget 3 is past the u32 counter space"),
    ("frame not a command", reseal(COMMAND_BODY[:47] + len(STATUS_REQ).to_bytes(2, "little") + STATUS_REQ),
     "frame: expected a ControlCommand, got ImageStatusRequest"),
    ("frame sealed", reseal(COMMAND_BODY[:47] + len(SEALED_PING).to_bytes(2, "little") + SEALED_PING),
     "command: must be unsealed, got auth counter 9"),
    ("frame crc", reseal(COMMAND_BODY[:-1] + b"\x00"), "frame: crc: expected"),
    ("frame past the end", reseal(COMMAND_BODY[:47] + b"\xff\x00" + COMMAND_BODY[49:]), "frame: need 255 bytes"),
]


@pytest.mark.parametrize(("data", "message"), [(d, m) for _, d, m in BAD], ids=[n for n, _, _ in BAD])
def test_bad_input_is_refused_naming_the_field(data: bytes, message: str) -> None:
    with pytest.raises(EnvelopeError, match=message):
        parse_envelope(data)


def test_errors_after_an_intact_header_name_the_job() -> None:
    with pytest.raises(EnvelopeError) as info:
        parse_envelope(reseal(COMMAND_BODY[:47] + len(STATUS_REQ).to_bytes(2, "little") + STATUS_REQ))
    assert (info.value.job_id, info.value.mac) == (1, MAC)
    with pytest.raises(EnvelopeError) as info:
        parse_envelope(b"garbage" * 5)
    assert info.value.job_id is None and info.value.mac is None
    assert issubclass(EnvelopeError, ProtocolError) and issubclass(EnvelopeError, ValueError)


def test_command_frame_offset_used_by_the_table_is_right() -> None:
    frame = parse_frame(COMMAND_BODY[49:])
    assert isinstance(frame, ControlCommand) and frame.name == "ping"


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"job_id": -1}, "job_id: must be in 0..18446744073709551615, got -1"),
    ({"job_id": True}, "job_id: expected an int"),
    ({"mac": "nope"}, "mac: address: not a MAC address"),
    ({"deadline_s": 70000}, "deadline_s: must be in 0..65535, got 70000"),
    ({"attempt": 256}, "attempt: must be in 0..255, got 256"),
    ({"factory_key": b"short"}, "factory_key: expected 16 bytes, got 5"),
    ({"esl_id": 300}, "esl_id: must be in 0..255"),
])
def test_construction_checks_every_field(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"job_id": 1, "mac": MAC, "factory_key": bytes(16), "new_key": bytes(16)}
    args.update(kwargs)
    with pytest.raises(EnvelopeError, match=message):
        PairJob(**args)  # type: ignore[arg-type]


def test_image_job_construction_checks() -> None:
    ok: dict[str, object] = {"job_id": 1, "mac": MAC, "label_key": bytes(16), "tx_counter": 0, "budget": 1,
                             "image_format": 1, "image_hash": bytes(8), "payload": b"x"}
    assert ImageJob(**ok).image_format is ImageFormat.DEFLATE  # type: ignore[arg-type]
    cases: list[tuple[dict[str, object], str]] = [
                            ({"payload": b"x" * (2**20 + 1)}, "payload: must be 1..1048576"),
                            ({"region": Region(0, 0, 8, 8)}, "base_hash: a region or delta update needs"),
                            ({"image_hash": bytes(7)}, "image_hash: expected 8 bytes, got 7"),
                            ({"budget": 0x10000}, "budget: must be in 0..65535")]
    for change, message in cases:
        with pytest.raises(EnvelopeError, match=message):
            ImageJob(**{**ok, **change})  # type: ignore[arg-type]
    with pytest.raises(EnvelopeError, match=r"command: command ping: unknown parameters \[.volume.\]"):
        CommandJob.make("ping", job_id=1, mac=MAC, label_key=bytes(16), tx_counter=0, budget=1, volume=3)
    other = ControlCommand.make("ping").with_auth(None)
    with pytest.raises(EnvelopeError, match="addressed to 02:E5:00:00:00:02"):
        CommandJob(job_id=1, mac=MAC, label_key=bytes(16), tx_counter=0, budget=1,
                   command=ControlCommand(opcode=other.opcode, params=other.params,
                                          address=address_bytes("02:E5:00:00:00:02")))


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_random_bytes_raise_only_envelope_error(data: bytes) -> None:
    try:
        parse_envelope(data)
    except EnvelopeError:
        pass


@settings(max_examples=300)
@given(st.sampled_from([PAIR_BODY, IMAGE_BODY, COMMAND_BODY]), st.data())
def test_mutated_envelopes_with_a_valid_crc_raise_only_envelope_error(body: bytes, data: st.DataObject) -> None:
    raw = bytearray(body)
    for _ in range(data.draw(u(1, 4))):
        i = data.draw(u(0, len(raw) - 1))
        raw[i] = data.draw(u(0, 255))
    cut = data.draw(u(0, len(raw)))
    try:
        job = parse_envelope(reseal(bytes(raw[:cut])))
    except EnvelopeError:
        return
    assert parse_envelope(job.to_bytes()) == job


# -- the counter budget ----------------------------------------------------------------------------


def test_job_session_seals_only_inside_the_budget() -> None:
    job = CommandJob.make("ping", job_id=1, mac=MAC, label_key=bytes(16), tx_counter=10, budget=3, rx_highest=7)
    session = JobSession(job)
    assert (session.tx_counter, session.rx.highest, session.remaining) == (10, 7, 3)
    counters = [parse_frame(session.command("ping")).auth.counter for _ in range(3)]  # type: ignore[union-attr]
    assert counters == [11, 12, 13] and session.remaining == 0
    with pytest.raises(BudgetExhausted, match="tx_counter: 14 is past the job's budget \\(last 13\\)"):
        session.command("ping")
    assert session.tx_counter == 13


def test_job_session_starts_above_used_counters_and_stops_at_the_reservation() -> None:
    job = CommandJob.make("ping", job_id=1, mac=MAC, label_key=bytes(16), tx_counter=10, budget=100)
    session = JobSession(job, start=40)
    assert session.tx_counter == 40 and session.remaining == 70
    session.reserved = 41
    session.command("ping")
    with pytest.raises(BudgetExhausted, match="past the reserved counters \\(last 41\\)"):
        session.command("ping")
    assert JobSession(job, start=3).tx_counter == 10  # never below the job's own start


def test_job_session_refuses_replays_of_what_the_server_already_counted() -> None:
    job = CommandJob.make("ping", job_id=1, mac=MAC, label_key=bytes(16), tx_counter=0, budget=5, rx_highest=9)
    session = JobSession(job)
    for counter in (9, 5):
        assert session.rx.highest == 9
        with pytest.raises(ProtocolError, match="replay"):
            session.rx.check(counter)
    session.rx.check(10)
