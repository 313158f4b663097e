"""Job envelopes (firmware_proto.envelope), versions 2 and 3 (with the previous server key's
endorsement): byte layout, signatures, round trips, bad input, the job key sealed to the
gateway, and the counter budget."""

from __future__ import annotations

import zlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
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
    credentials,
    open_job_key,
    envelope_endorsement,
    follow_envelope,
    parse_envelope,
    verify_envelope,
)
from firmware_proto.auth import Direction, FrameKey, seal, wrap_key
from firmware_proto.frames import (
    ControlCommand,
    ImageStatusRequest,
    PairRequest,
    address_bytes,
    parse_frame,
)
from firmware_proto.image import ImageFormat, Region
from firmware_proto.jobkeys import derive_job_key, make_ticket
from firmware_proto.trust import ENDORSEMENT_SIZE, Endorsement, GatewayKey, SigningKey, TrustError

MAC = "02:E5:00:00:00:01"
SIGNER = SigningKey.from_bytes(bytes(range(32)))
ISSUED = 1_800_000_000_000  # ms, 2027-01-15
IDS = {"store": "s1", "gateway": "gw1", "issued_ms": ISSUED}

# -- fixed vectors, written out ----------------------------------------------------------------

PAIR_REQUEST = seal(PairRequest(wrapped_key=wrap_key(bytes(16), address_bytes("AA:BB:CC:DD:EE:01"), 7,
                                                     bytes(range(16))), esl_id=5),
                    FrameKey(bytes(16)), address_bytes("AA:BB:CC:DD:EE:01"), Direction.TO_LABEL, 7)
TICKET = make_ticket(bytes(16), MAC, 9, 0, 101, 400)
PING_TICKET = make_ticket(bytes(16), MAC, 1, 0, 6, 8)

HEAD = "00505c18a3010000" "02" "7331" "03" "677731"  # issued_ms 1.8e12, store "s1", gateway "gw1"
PAIR_HEX = (
    "e54a" "02" "01"                          # magic, version 2, kind PAIR
    "0807060504030201"                        # job_id 0x0102030405060708
    "aabbccddee01"                            # mac AA:BB:CC:DD:EE:01
    "2c01" "02" + HEAD +                      # deadline_s 300, attempt 2, issued, store, gateway
    "2600" + PAIR_REQUEST.hex() +             # frame_len 38, the server's sealed pair request
    "6e3dbec80122ce1bc714de9074b1cdbe442e0b618345aaad8556836e238f1ce1"  # Ed25519 signature
    "013775dc3b50c714329f2f269f768ca2f9459acfdff93fe91ae5d9f27f927a0a"
    "edf75c5b"                                # crc32
)
IMAGE_HEX = (
    "e54a" "02" "02" "0900000000000000" "02e500000001" "3c00" "00" + HEAD +
    "1e" + TICKET.hex() +                     # ticket_len 30, the ticket (job 9, counters 101..400)
    bytes(range(64)).hex() +                  # the sealed job key
    "2a000000"                                # rx_highest 42
    "00" "07"                                 # format RAW, flags REGION|BASE|DELTA
    "1122334455667788"                        # image_hash
    "0800" "1000" "2000" "0400"               # region x 8, y 16, w 32, h 4
    "8877665544332211"                        # base_hash
    "020000" "ff00"                           # payload_len 2, payload
    "0c95f3ce8fc8456b7df79830c91b61e9c201a150268de59523ca4415bef4738c"
    "c3d00107aa1a4729af6586f9a2bc2da5b40c346f0e307a440437c1d4a0c63807"
    "99a7c829"
)
COMMAND_HEX = (
    "e54a" "02" "03" "0100000000000000" "02e500000001" "1e00" "00" + HEAD +
    "1e" + PING_TICKET.hex() + "00" * 64 +    # ticket (job 1, counters 6..8), sealed key
    "04000000"                                # rx_highest 4
    "0700" "1001000000e263"                   # frame_len 7, an unsealed ping command frame
    "870eee086de9ed2875595ba9b077d4deeb6ebd28400d8f1c1f9826e7380bd440"
    "bfcb641aa46b2c572aa0c16eccc51dd868e46151ec59a967bf2103806b848e03"
    "34964f64"
)

PAIR = PairJob(job_id=0x0102030405060708, mac="aa:bb:cc:dd:ee:01", deadline_s=300, attempt=2,
               pair_request=PAIR_REQUEST, **IDS)
IMAGE = ImageJob(job_id=9, mac=MAC, deadline_s=60, ticket=TICKET, sealed_key=bytes(range(64)), rx_highest=42,
                 image_format=ImageFormat.RAW, image_hash=bytes.fromhex("1122334455667788"),
                 payload=b"\xff\x00", region=Region(8, 16, 32, 4), base_hash=bytes.fromhex("8877665544332211"),
                 delta=True, **IDS)
COMMAND = CommandJob.make("ping", job_id=1, mac=MAC, ticket=PING_TICKET, sealed_key=bytes(64), rx_highest=4,
                          deadline_s=30, **IDS)


@pytest.mark.parametrize(("job", "hexed"), [(PAIR, PAIR_HEX), (IMAGE, IMAGE_HEX), (COMMAND, COMMAND_HEX)])
def test_fixed_vectors(job: JobEnvelope, hexed: str) -> None:
    assert job.to_bytes(SIGNER).hex() == hexed
    back = verify_envelope(bytes.fromhex(hexed), SIGNER.public)
    assert back == job and type(back) is type(job)
    assert type(job).from_bytes(bytes.fromhex(hexed)) == job


def test_counted_jobs_read_their_range_from_the_ticket() -> None:
    assert (IMAGE.first, IMAGE.counter_limit) == (101, 400)
    assert (COMMAND.first, COMMAND.counter_limit) == (6, 8)
    assert PAIR.factory_counter == 7


def test_mac_is_normalised_and_secrets_stay_out_of_repr() -> None:
    assert PAIR.mac == "AA:BB:CC:DD:EE:01" and PAIR.kind is JobKind.PAIR
    assert "pair_request" not in repr(PAIR) and PAIR_REQUEST.hex()[:12] not in repr(PAIR)
    assert "sealed_key" not in repr(IMAGE) and "ticket" not in repr(IMAGE) and "payload" not in repr(IMAGE)


def test_from_bytes_on_a_subclass_refuses_another_kind_but_names_the_job() -> None:
    with pytest.raises(EnvelopeError, match="expected a ImageJob, got PairJob") as info:
        ImageJob.from_bytes(PAIR.to_bytes(SIGNER))
    assert info.value.job_id == PAIR.job_id and info.value.mac == PAIR.mac and info.value.attempt == 2


def test_image_job_from_update_round_trips_the_update() -> None:
    assert ImageJob.from_update(IMAGE.update, job_id=9, mac=MAC, ticket=TICKET, sealed_key=bytes(range(64)),
                                rx_highest=42, **IDS) == IMAGE


# -- signatures --------------------------------------------------------------------------------------


def test_unsigned_and_missigned_envelopes_are_refused_with_their_reason() -> None:
    with pytest.raises(EnvelopeError, match="not signed") as info:
        verify_envelope(IMAGE.to_bytes(None), SIGNER.public)
    assert info.value.code == "unsigned" and (info.value.job_id, info.value.attempt) == (9, 0)
    other = SigningKey.generate()
    with pytest.raises(EnvelopeError, match="does not verify") as info:
        verify_envelope(IMAGE.to_bytes(other), SIGNER.public)
    assert info.value.code == "bad_signature"


def test_any_changed_byte_breaks_the_signature_even_with_a_good_crc() -> None:
    good = IMAGE.to_bytes(SIGNER)
    body = good[:-68]
    for i in (3, 12, 21, 29, 33, 40, len(body) - 1):  # kind, mac, issued, store, gateway, ticket, payload
        changed = bytearray(body)
        changed[i] ^= 0x01
        data = reseal(bytes(changed) + good[-68:-4])
        try:
            verify_envelope(data, SIGNER.public)
        except EnvelopeError as exc:
            assert exc.code in ("bad_signature", "bad_job"), (i, exc)
        else:
            raise AssertionError(f"byte {i} changed and the envelope still verified")


def test_a_version_1_envelope_is_refused_as_unsigned_naming_its_job() -> None:
    v1 = bytes.fromhex("e54a01030100000000000000" "02e500000001" "1e00" "00") + bytes(100)
    with pytest.raises(EnvelopeError, match="version: expected 2 or 3, got 1 .*server is too old") as info:
        parse_envelope(reseal(v1))
    assert info.value.code == "unsigned" and (info.value.job_id, info.value.mac) == (1, MAC)


# -- the job key, sealed to one gateway --------------------------------------------------------------


def test_the_job_key_opens_only_for_the_gateway_and_job_it_was_sealed_for() -> None:
    label_key, gw, other = bytes(range(16)), GatewayKey.generate(), GatewayKey.generate()
    creds = credentials(label_key=label_key, gateway_key=gw.public, job_id=5, attempt=1, mac=MAC, store="s1",
                        gateway="gw1", first=11, last=20)
    job = CommandJob.make("ping", job_id=5, attempt=1, mac=MAC, store="s1", gateway="gw1", issued_ms=ISSUED, **creds)
    assert open_job_key(job, gw) == derive_job_key(label_key, MAC, 5, 1, 11, 20)
    with pytest.raises(EnvelopeError, match="does not open with this gateway's key") as info:
        open_job_key(job, other)
    assert info.value.code == "wrong_key"
    moved = CommandJob.make("ping", job_id=5, attempt=1, mac=MAC, store="s1", gateway="gw2", issued_ms=ISSUED, **creds)
    with pytest.raises(EnvelopeError, match="does not open"):
        open_job_key(moved, gw)  # the same sealed key in an envelope for another gateway
    data = job.to_bytes(SIGNER)
    assert label_key not in data and derive_job_key(label_key, MAC, 5, 1, 11, 20) not in data


def test_a_ticket_for_another_job_or_label_is_refused() -> None:
    with pytest.raises(EnvelopeError, match="ticket: for job 9 attempt 0, envelope is job 8 attempt 0"):
        CommandJob.make("ping", job_id=8, mac=MAC, ticket=TICKET, sealed_key=bytes(64), **IDS)
    elsewhere = make_ticket(bytes(16), MAC, 9, 0, 101, 400)
    addressed = seal(parse_frame(elsewhere).with_auth(None).__class__(  # type: ignore[call-arg]
        job_id=9, attempt=0, first=101, last=400, address=address_bytes("02:E5:00:00:00:02")),
        FrameKey(bytes(16)), address_bytes(MAC), Direction.TO_LABEL, 101)
    with pytest.raises(EnvelopeError, match="ticket: addressed to 02:E5:00:00:00:02"):
        CommandJob.make("ping", job_id=9, mac=MAC, ticket=addressed, sealed_key=bytes(64), **IDS)
    with pytest.raises(EnvelopeError, match="ticket: expected a sealed JobTicket frame, got ImageStatusRequest"):
        CommandJob.make("ping", job_id=9, mac=MAC, ticket=ImageStatusRequest(transfer_id=1).to_bytes(),
                        sealed_key=bytes(64), **IDS)


# -- round trips ---------------------------------------------------------------------------------

u = st.integers
hashes = st.binary(min_size=8, max_size=8)
macs = st.binary(min_size=6, max_size=6).map(lambda b: ":".join(f"{x:02X}" for x in b))
names = st.text(st.characters(blacklist_characters="/+#\x00", blacklist_categories=("Cs",)), min_size=1,
                max_size=20)


@st.composite
def headers(draw: st.DrawFn) -> dict[str, object]:
    return {"job_id": draw(u(0, 2**64 - 1)), "mac": draw(macs), "deadline_s": draw(u(0, 0xFFFF)),
            "attempt": draw(u(0, 255)), "store": draw(names), "gateway": draw(names),
            "issued_ms": draw(u(0, 2**64 - 1))}


@st.composite
def counted(draw: st.DrawFn) -> dict[str, object]:
    head = draw(headers())
    first = draw(u(1, 0xFFFFFFFF))
    last = draw(u(first, 0xFFFFFFFF))
    ticket = make_ticket(draw(st.binary(min_size=16, max_size=16)), str(head["mac"]), int(head["job_id"]),  # type: ignore[call-overload]
                         int(head["attempt"]), first, last)  # type: ignore[call-overload]
    return {**head, "ticket": ticket, "sealed_key": draw(st.binary(min_size=64, max_size=64)),
            "rx_highest": draw(u(0, 0xFFFFFFFF))}


@st.composite
def pairs(draw: st.DrawFn) -> PairJob:
    head = draw(headers())
    counter = draw(u(1, 0xFFFFFFFF))
    key = draw(st.binary(min_size=16, max_size=16))
    frame = PairRequest(wrapped_key=wrap_key(key, address_bytes(str(head["mac"])), counter, bytes(16)),
                        esl_id=draw(u(0, 255)))
    return PairJob(pair_request=seal(frame, FrameKey(key), address_bytes(str(head["mac"])), Direction.TO_LABEL,
                                     counter), **head)  # type: ignore[arg-type]


@st.composite
def images(draw: st.DrawFn) -> ImageJob:
    region = draw(st.none() | st.builds(Region, u(0, 0xFFFF), u(0, 0xFFFF), u(1, 0xFFFF), u(1, 0xFFFF)))
    delta = draw(st.booleans())
    base = draw(hashes) if region is not None or delta else draw(st.none() | hashes)
    return ImageJob(image_format=draw(st.sampled_from(ImageFormat)), image_hash=draw(hashes),
                    payload=draw(st.binary(min_size=1, max_size=3000)), region=region, base_hash=base,
                    delta=delta, **draw(counted()))  # type: ignore[arg-type]


@st.composite
def commands(draw: st.DrawFn) -> CommandJob:
    name, params = draw(st.sampled_from([
        ("ping", {}), ("read_sensor", {"sensor_index": 1}), ("display_image", {"display_index": 0, "image_index": 0}),
        ("led_control", {"led_index": 0, "color_brightness": 0xC3, "flash_pattern": 0xFF00FF00FF,
                         "off_period": 5, "on_period": 5, "repeat": 0x7FFF}),
    ]))
    command = ControlCommand.make(name, seq=draw(u(0, 255)), esl_id=draw(u(0, 255)), **params)
    return CommandJob(command=command, **draw(counted()))  # type: ignore[arg-type]


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(pairs(), images(), commands()))
def test_round_trip(job: JobEnvelope) -> None:
    data = job.to_bytes(SIGNER)
    back = verify_envelope(data, SIGNER.public)
    assert back == job and back.to_bytes(SIGNER) == data


# -- bad input -------------------------------------------------------------------------------------


def reseal(body: bytes) -> bytes:
    """`body` with a correct CRC-32, so the decoder gets past the CRC to the field under test."""
    return body + zlib.crc32(body).to_bytes(4, "little")


def unsigned(body: bytes) -> bytes:
    """`body` (header and fields) with an all-zero signature and a correct CRC."""
    return reseal(body + bytes(64))


SIG = 64 + 4
PAIR_BODY = bytes.fromhex(PAIR_HEX)[:-SIG]
IMAGE_BODY = bytes.fromhex(IMAGE_HEX)[:-SIG]
COMMAND_BODY = bytes.fromhex(COMMAND_HEX)[:-SIG]
NEW = SigningKey.from_bytes(bytes(range(32, 64)))
ENDORSING = NEW.endorsed_by(SIGNER)
# version 3: the command job signed by NEW, endorsed by SIGNER (the previous key)
ENDORSED_COMMAND_HEX = (
    "e54a" "03" "03" + COMMAND_HEX[8:-(2 * SIG)] +  # version 3, then the same header and body as version 2
    "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8"  # endorser: SIGNER's public key
    "29acbae141bccaf0b22e1a94d34d0bc7361e526d0bfe12c89794bc9322966dd7"  # the new key: NEW's public key
    "dd2da4b6f3f247a666e4602a627f14ab8dbf3b92be19e7d9aa3891aebc7ad993"  # SIGNER's signature of it
    "37301a55ec4d45282a16e14597ffca76fb0c29b31268e8356e412e8a415fef0c"
    "57d4ddb00209c8ff26232cc76d43b2aaf80f1929e86dfe23e56c5b90b6fa8ace"  # the envelope signed by NEW
    "e9ef07753e17c50c14367e2a2c81cc48a13990871f44827e1751302f3f9fce07"
    "72454538"                                                          # crc32
)
ENDORSED_BODY = bytes.fromhex(ENDORSED_COMMAND_HEX)[:-SIG]
C = 36 + 1 + 30 + 64  # in COMMAND_BODY: header, ticket_len, ticket, sealed key; then rx_highest
I = C + 4  # in IMAGE_BODY: image_format
SEALED_PING = seal(ControlCommand.make("ping", seq=1), FrameKey(bytes(16)), address_bytes(MAC), Direction.TO_LABEL, 9)
STATUS_REQ = ImageStatusRequest(transfer_id=1).to_bytes()

BAD: list[tuple[str, bytes, str]] = [
    ("empty", b"", "length must be"),
    ("short", bytes.fromhex(PAIR_HEX)[:20], "length must be"),
    ("crc", bytes.fromhex(PAIR_HEX)[:-4] + b"\x00\x00\x00\x00", "crc32: expected 5b5cf7ed, got 00000000"),
    ("magic", unsigned(b"\xe5\x4b" + PAIR_BODY[2:]), "magic: expected e54a, got e54b"),
    ("version", unsigned(PAIR_BODY[:2] + b"\x04" + PAIR_BODY[3:]), "version: expected 2 or 3, got 4"),
    ("kind", unsigned(PAIR_BODY[:3] + b"\x09" + PAIR_BODY[4:]), "kind: unknown job kind 09"),
    ("store empty", unsigned(PAIR_BODY[:29] + b"\x00" + PAIR_BODY[32:]), "store: expected 1..64 UTF-8 bytes"),
    ("store not utf-8", unsigned(PAIR_BODY[:30] + b"\xff\xfe" + PAIR_BODY[32:]), "store: not UTF-8: fffe"),
    ("gateway with a slash", unsigned(PAIR_BODY[:33] + b"g/1" + PAIR_BODY[36:]), "gateway: expected 1..64 UTF-8"),
    ("truncated pair", unsigned(PAIR_BODY[:-1]), "PairJob.pair_request: need 38 bytes"),
    ("trailing", unsigned(PAIR_BODY + b"\x00"), "1 unexpected trailing bytes"),
    ("pair request unsealed", unsigned(PAIR_BODY[:36] + b"\x1e\x00" + PairRequest(wrapped_key=bytes(24)).to_bytes()),
     "pair_request: expected a sealed PairRequest frame"),
    ("image flags", unsigned(IMAGE_BODY[:I + 1] + b"\x0f" + IMAGE_BODY[I + 2:]), "flags: unknown bits in 0f"),
    ("image format", unsigned(IMAGE_BODY[:I] + b"\x09" + IMAGE_BODY[I + 1:]), "image_format: unknown format 9"),
    ("payload past the end", unsigned(IMAGE_BODY[:-5] + b"\x03\x00\x00" + IMAGE_BODY[-2:]),
     "payload: need 3 bytes at offset"),
    ("payload huge", unsigned(IMAGE_BODY[:-5] + b"\xff\xff\xff" + IMAGE_BODY[-2:]), "payload_len: 16777215 is over"),
    ("payload empty", unsigned(IMAGE_BODY[:-5] + b"\x00\x00\x00"), "payload: must be 1..1048576 bytes, got 0"),
    ("region w 0", unsigned(IMAGE_BODY[:I + 14] + b"\x00\x00" + IMAGE_BODY[I + 16:]), "region: w and h must be > 0"),
    ("delta without base", unsigned(IMAGE_BODY[:I + 1] + b"\x05" + IMAGE_BODY[I + 2:I + 18] + IMAGE_BODY[I + 26:]),
     "base_hash: a region or delta update needs base_hash"),
    ("ticket of another job", unsigned(COMMAND_BODY[:37] + TICKET + COMMAND_BODY[67:]),
     "ticket: for job 9 attempt 0, envelope is job 1 attempt 0"),
    ("ticket corrupt", unsigned(COMMAND_BODY[:40] + b"\xff" + COMMAND_BODY[41:]), "ticket: crc: expected"),
    ("sealed key short", unsigned(COMMAND_BODY[:C - 1]), "sealed_key: need 64 bytes"),
    ("frame not a command", unsigned(COMMAND_BODY[:C + 4] + len(STATUS_REQ).to_bytes(2, "little") + STATUS_REQ),
     "frame: expected a ControlCommand, got ImageStatusRequest"),
    ("frame sealed", unsigned(COMMAND_BODY[:C + 4] + len(SEALED_PING).to_bytes(2, "little") + SEALED_PING),
     "command: must be unsealed, got auth counter 9"),
    ("frame crc", unsigned(COMMAND_BODY[:-1] + b"\x00"), "frame: crc: expected"),
    ("frame past the end", unsigned(COMMAND_BODY[:C + 4] + b"\xff\x00" + COMMAND_BODY[C + 6:]), "frame: need 255 bytes"),
]


@pytest.mark.parametrize(("data", "message"), [(d, m) for _, d, m in BAD], ids=[n for n, _, _ in BAD])
def test_bad_input_is_refused_naming_the_field(data: bytes, message: str) -> None:
    with pytest.raises(EnvelopeError, match=message):
        parse_envelope(data)


def test_errors_after_an_intact_header_name_the_job() -> None:
    with pytest.raises(EnvelopeError) as info:
        parse_envelope(unsigned(COMMAND_BODY[:C + 4] + len(STATUS_REQ).to_bytes(2, "little") + STATUS_REQ))
    assert (info.value.job_id, info.value.mac, info.value.code) == (1, MAC, "bad_job")
    with pytest.raises(EnvelopeError) as info:
        parse_envelope(b"garbage" * 15)
    assert info.value.job_id is None and info.value.mac is None
    assert issubclass(EnvelopeError, ProtocolError) and issubclass(EnvelopeError, ValueError)


def test_command_frame_offset_used_by_the_table_is_right() -> None:
    frame = parse_frame(COMMAND_BODY[C + 6:])
    assert isinstance(frame, ControlCommand) and frame.name == "ping"


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"job_id": -1}, "job_id: must be in 0..18446744073709551615, got -1"),
    ({"job_id": True}, "job_id: expected an int"),
    ({"mac": "nope"}, "mac: address: not a MAC address"),
    ({"deadline_s": 70000}, "deadline_s: must be in 0..65535, got 70000"),
    ({"attempt": 256}, "attempt: must be in 0..255, got 256"),
    ({"store": ""}, "store: expected 1..64 UTF-8 bytes"),
    ({"gateway": "gw/+"}, "gateway: expected 1..64 UTF-8 bytes"),
    ({"issued_ms": -1}, "issued_ms: must be in 0.."),
    ({"pair_request": b"shrt"}, "pair_request: frame length must be"),
    ({"pair_request": b"short"}, "pair_request: crc: expected"),
])
def test_construction_checks_every_field(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"job_id": 1, "mac": "AA:BB:CC:DD:EE:01", "pair_request": PAIR_REQUEST, **IDS}
    args.update(kwargs)
    with pytest.raises(EnvelopeError, match=message):
        PairJob(**args)  # type: ignore[arg-type]


def test_image_job_construction_checks() -> None:
    ok: dict[str, object] = {"job_id": 9, "mac": MAC, "ticket": TICKET, "sealed_key": bytes(64),
                             "image_format": 1, "image_hash": bytes(8), "payload": b"x", **IDS}
    assert ImageJob(**ok).image_format is ImageFormat.DEFLATE  # type: ignore[arg-type]
    cases: list[tuple[dict[str, object], str]] = [
        ({"payload": b"x" * (2**20 + 1)}, "payload: must be 1..1048576"),
        ({"region": Region(0, 0, 8, 8)}, "base_hash: a region or delta update needs"),
        ({"image_hash": bytes(7)}, "image_hash: expected 8 bytes, got 7"),
        ({"sealed_key": bytes(63)}, r"sealed_key: expected 64 bytes, got 63$"),
        ({"rx_highest": 2**32}, "rx_highest: must be in 0..4294967295")]
    for change, message in cases:
        with pytest.raises(EnvelopeError, match=message):
            ImageJob(**{**ok, **change})  # type: ignore[arg-type]
    with pytest.raises(EnvelopeError, match=r"command: command ping: unknown parameters \[.volume.\]"):
        CommandJob.make("ping", job_id=9, mac=MAC, ticket=TICKET, sealed_key=bytes(64), volume=3, **IDS)
    other = ControlCommand.make("ping").with_auth(None)
    with pytest.raises(EnvelopeError, match="addressed to 02:E5:00:00:00:02"):
        CommandJob(job_id=9, mac=MAC, ticket=TICKET, sealed_key=bytes(64), **IDS,  # type: ignore[arg-type]
                   command=ControlCommand(opcode=other.opcode, params=other.params,
                                          address=address_bytes("02:E5:00:00:00:02")))


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_random_bytes_raise_only_envelope_error(data: bytes) -> None:
    try:
        parse_envelope(data)
    except EnvelopeError:
        pass


@settings(max_examples=300)
@given(st.sampled_from([PAIR_BODY, IMAGE_BODY, COMMAND_BODY, ENDORSED_BODY]), st.data())
def test_mutated_envelopes_with_a_valid_crc_raise_only_envelope_error(body: bytes, data: st.DataObject) -> None:
    raw = bytearray(body)
    for _ in range(data.draw(u(1, 4))):
        i = data.draw(u(0, len(raw) - 1))
        raw[i] = data.draw(u(0, 255))
    cut = data.draw(u(0, len(raw)))
    try:
        job = parse_envelope(unsigned(bytes(raw[:cut])))
    except EnvelopeError:
        return
    assert parse_envelope(job.to_bytes(None)) == job


# -- the counter budget ----------------------------------------------------------------------------


def ping(first: int, last: int, rx_highest: int = 0) -> CommandJob:
    return CommandJob.make("ping", job_id=1, mac=MAC, ticket=make_ticket(bytes(16), MAC, 1, 0, first, last),
                           sealed_key=bytes(64), rx_highest=rx_highest, **IDS)


def test_job_session_seals_only_inside_the_budget() -> None:
    session = JobSession(ping(10, 13, rx_highest=7), bytes(16))
    assert (session.tx_counter, session.rx.highest, session.remaining) == (10, 7, 3)
    counters = [parse_frame(session.command("ping")).auth.counter for _ in range(3)]  # type: ignore[union-attr]
    assert counters == [11, 12, 13] and session.remaining == 0  # the ticket itself used 10
    with pytest.raises(BudgetExhausted, match="tx_counter: 14 is past the job's budget \\(last 13\\)"):
        session.command("ping")
    assert session.tx_counter == 13


def test_job_session_starts_above_used_counters_and_stops_at_the_reservation() -> None:
    job = ping(10, 110)
    session = JobSession(job, bytes(16), start=40)
    assert session.tx_counter == 40 and session.remaining == 70
    session.reserved = 41
    session.command("ping")
    with pytest.raises(BudgetExhausted, match="past the reserved counters \\(last 41\\)"):
        session.command("ping")
    assert JobSession(job, bytes(16), start=3).tx_counter == 10  # never below the job's own start


def test_job_session_refuses_replays_of_what_the_server_already_counted() -> None:
    session = JobSession(ping(1, 5, rx_highest=9), bytes(16))
    for counter in (9, 5):
        assert session.rx.highest == 9
        with pytest.raises(ProtocolError, match="replay"):
            session.rx.check(counter)
    session.rx.check(10)


# -- version 3: the previous server key's endorsement of the new one ----------------------------------



def test_an_endorsed_envelope_is_version_3_and_a_gateway_on_the_old_key_follows() -> None:
    data = COMMAND.to_bytes(ENDORSING)
    assert data.hex() == ENDORSED_COMMAND_HEX
    assert parse_envelope(data) == COMMAND
    assert envelope_endorsement(data) == ENDORSING.endorsement and envelope_endorsement(COMMAND.to_bytes(NEW)) is None
    assert follow_envelope(data, SIGNER.public) == (COMMAND, NEW.public)  # trusted the old key: follows
    assert follow_envelope(data, NEW.public) == (COMMAND, NEW.public)  # follows already
    assert verify_envelope(data, NEW.public) == COMMAND
    with pytest.raises(EnvelopeError, match="does not verify") as info:
        verify_envelope(data, SIGNER.public)  # verify_envelope itself never follows
    assert info.value.code == "bad_signature"
    assert COMMAND.to_bytes(NEW)[2] == 2  # no endorsement: still version 2, what older gateways read


def test_only_the_trusted_key_can_endorse() -> None:
    third = SigningKey.from_bytes(bytes(range(64, 96)))
    by_new = COMMAND.to_bytes(third.endorsed_by(NEW))  # C endorsed by B, the gateway trusts A: no chains
    with pytest.raises(EnvelopeError, match="not the trusted key .*endorsement: by key") as info:
        follow_envelope(by_new, SIGNER.public)
    assert info.value.code == "bad_signature" and info.value.job_id == COMMAND.job_id
    # an attacker's key "endorsed" with a signature they made themselves under the trusted key's name
    forged = Endorsement(SIGNER.public, third.public, third.sign(b"esl server key endorsement v1\x00"
                                                                 + SIGNER.public.raw + third.public.raw))
    with pytest.raises(EnvelopeError, match="endorsement: does not verify under the trusted key") as info:
        follow_envelope(COMMAND.to_bytes(SigningKey(Ed25519PrivateKey.from_private_bytes(bytes(range(64, 96))),
                                                    forged)), SIGNER.public)
    assert info.value.code == "bad_signature"
    # a good endorsement, but the envelope signed by another key than the one endorsed
    swapped = ENDORSED_BODY + third.sign(ENDORSED_BODY)
    with pytest.raises(EnvelopeError, match="does not verify.*the trusted key endorsed") as info:
        follow_envelope(reseal(swapped), SIGNER.public)
    assert info.value.code == "bad_signature"
    with pytest.raises(EnvelopeError, match="not signed") as info:
        follow_envelope(COMMAND.to_bytes(None), SIGNER.public)
    assert info.value.code == "unsigned"


def test_endorsements_refuse_what_is_not_one() -> None:
    endorsement = ENDORSING.endorsement
    assert endorsement is not None and len(endorsement.to_bytes()) == ENDORSEMENT_SIZE == 128
    assert Endorsement.from_bytes(endorsement.to_bytes()) == endorsement
    with pytest.raises(TrustError, match="expected 128 bytes, got 127"):
        Endorsement.from_bytes(endorsement.to_bytes()[:-1])
    with pytest.raises(TrustError, match="endorses itself"):
        Endorsement.make(SIGNER, SIGNER.public)
    with pytest.raises(TrustError, match="endorses key 29acbae141bccaf0, not this key"):
        SigningKey(Ed25519PrivateKey.from_private_bytes(bytes(range(64, 96))), endorsement)
    assert SIGNER.public.fingerprint == SIGNER.public.hex()[:16] and "03a107bff3ce10be" in repr(endorsement)


@pytest.mark.parametrize(("data", "message"), [
    (reseal(ENDORSED_BODY[:40] + bytes(SIG - 4)), "version 3 needs at least"),
    (unsigned(ENDORSED_BODY[:-128] + ENDORSED_BODY[-96:-64] + ENDORSED_BODY[-96:]), "endorses itself"),
    (unsigned(ENDORSED_BODY[:-1]), "frame: need 7 bytes at offset"),  # one byte short: the body ends early
], ids=["short", "self-endorsed", "truncated"])
def test_bad_version_3_input_is_refused_naming_the_field(data: bytes, message: str) -> None:
    with pytest.raises(EnvelopeError, match=message):
        parse_envelope(bytes(data))


@settings(max_examples=200)
@given(st.integers(0, len(ENDORSED_BODY) - 1), st.integers(1, 255))
def test_no_changed_byte_of_an_endorsed_envelope_is_followed(i: int, flip: int) -> None:
    raw = bytearray(ENDORSED_BODY)
    raw[i] ^= flip
    data = reseal(bytes(raw) + bytes.fromhex(ENDORSED_COMMAND_HEX)[-SIG:-4])
    try:
        follow_envelope(data, SIGNER.public)
    except EnvelopeError as exc:
        assert exc.code in ("bad_signature", "bad_job", "unsigned"), exc
    else:
        raise AssertionError(f"byte {i} changed and the envelope was still followed")


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(pairs(), images(), commands()))
def test_round_trip_with_an_endorsement(job: JobEnvelope) -> None:
    data = job.to_bytes(ENDORSING)
    assert follow_envelope(data, SIGNER.public) == (job, NEW.public)
    assert envelope_endorsement(data) == ENDORSING.endorsement and parse_envelope(data).to_bytes(ENDORSING) == data
