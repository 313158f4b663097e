"""Gateway events (eslserver.gateway.events): JSON layout, round trips, bad input."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eslserver.gateway.events import (
    NACK_CODES,
    Ack,
    Checkin,
    Event,
    EventError,
    Nack,
    Status,
    parse_event,
)
from firmware_proto.frames import Checkin as CheckinFrame
from firmware_proto.frames import CheckinFlag, address_bytes

MAC = "02:E5:00:00:00:01"
AT = datetime(2026, 11, 23, 17, 0, 0, 123456, tzinfo=UTC)


def checkin_frame(mac: str = MAC, **changes: object) -> bytes:
    fields: dict[str, object] = {
        "address": address_bytes(mac), "model_id": 1, "firmware_version": 0x0102,
        "status_flags": CheckinFlag.PAIRED, "displayed_hash": bytes(range(8)), "battery_mv": 2950,
        "temperature_c": 21, "rssi": -60, "rx_counter": 17}
    fields.update(changes)
    return CheckinFrame(**fields).to_bytes()  # type: ignore[arg-type]


# -- fixed JSON ----------------------------------------------------------------------------------


def test_ack_json_is_the_contract() -> None:
    ack = Ack(job=7, mac=MAC.lower(), at=AT, displayed_hash=bytes.fromhex("00112233445566ff"), frames=12,
              status=bytes.fromhex("1341"), attempt=2, battery_mv=2950, rssi=-61, temperature_c=21)
    assert ack.to_json() == (
        b'{"type":"ack","job":7,"mac":"02:E5:00:00:00:01","at":"2026-11-23T17:00:00.123456Z",'
        b'"displayed_hash":"00112233445566ff","frames":12,"status":"1341","attempt":2,'
        b'"battery_mv":2950,"rssi":-61,"temperature_c":21}')
    bare = Ack(job=7, mac=MAC, at=AT, displayed_hash=None, frames=1)
    assert json.loads(bare.to_json()) == {"type": "ack", "job": 7, "mac": MAC, "at": "2026-11-23T17:00:00.123456Z",
                                          "displayed_hash": None, "frames": 1, "status": None}


def test_counters_a_gateway_reports_are_not_part_of_an_ack_any_more() -> None:
    # an older gateway's ack still parses (unknown keys are ignored), but its counters go nowhere
    old = json.loads(Ack(job=7, mac=MAC, at=AT, displayed_hash=None, frames=1).to_json())
    ack = parse_event(json.dumps({**old, "tx_counter": 4294967295, "rx_highest": 4294967295}))
    assert isinstance(ack, Ack) and ack.status is None
    assert not hasattr(ack, "tx_counter") and not hasattr(ack, "rx_highest")


def test_nack_checkin_status_json() -> None:
    nack = Nack(job=8, mac=MAC, at=AT, code="unreachable", reason="label did not answer", retry=True, attempt=1)
    assert nack.to_json() == (
        b'{"type":"nack","job":8,"mac":"02:E5:00:00:00:01","at":"2026-11-23T17:00:00.123456Z",'
        b'"code":"unreachable","reason":"label did not answer","retry":true,"attempt":1,"status":null}')
    frame = checkin_frame()
    assert json.loads(Checkin(mac=MAC, at=AT, rssi=-70, frame=frame).to_json()) == {
        "type": "checkin", "mac": MAC, "at": "2026-11-23T17:00:00.123456Z", "rssi": -70, "frame": frame.hex()}
    assert Status(gateway="gw1", at=AT, in_flight=2, spooled=5, labels_heard=100).to_json() == (
        b'{"type":"status","gateway":"gw1","at":"2026-11-23T17:00:00.123456Z","in_flight":2,"spooled":5,'
        b'"labels_heard":100,"radio":"up","radio_since":null,"protocol":2,"server_key":null}')
    assert json.loads(Status(gateway="gw1", at=AT, in_flight=0, spooled=0, labels_heard=0,
                             server_key="0123456789abcdef").to_json())["server_key"] == "0123456789abcdef"


def test_a_status_that_names_no_protocol_is_version_1() -> None:
    old = (b'{"type":"status","gateway":"g","at":"2026-11-23T19:00:00Z","in_flight":0,"spooled":0,'
           b'"labels_heard":0}')
    status = parse_event(old)
    assert isinstance(status, Status) and status.protocol == 1


def test_times_with_offsets_are_read_as_utc_and_default_to_now() -> None:
    raw = (b'{"type":"status","gateway":"g","at":"2026-11-23T19:00:00+02:00","in_flight":0,"spooled":0,'
           b'"labels_heard":0,"future_field":1}')
    status = parse_event(raw)
    assert isinstance(status, Status) and status.at == datetime(2026, 11, 23, 17, tzinfo=UTC)
    assert status.at.tzinfo is UTC
    before = datetime.now(UTC)
    assert before - timedelta(seconds=1) <= Status(gateway="g", in_flight=0, spooled=0, labels_heard=0).at
    east = datetime(2026, 1, 1, 12, tzinfo=timezone(timedelta(hours=5)))
    assert Status(gateway="g", at=east, in_flight=0, spooled=0, labels_heard=0).at.hour == 7


def test_checkin_event_exposes_its_frame() -> None:
    ev = Checkin(mac=MAC, at=AT, rssi=-70, frame=checkin_frame())
    assert ev.parsed().rx_counter == 17 and ev.parsed().battery_mv == 2950


# -- round trips -----------------------------------------------------------------------------------

utc_times = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC))
macs = st.binary(min_size=6, max_size=6).map(lambda b: ":".join(f"{x:02x}" for x in b))
u32 = st.integers(0, 0xFFFFFFFF)
jobs = st.integers(0, 2**64 - 1)
maybe = st.none

frames_ = st.binary(min_size=1, max_size=1024)
acks = st.builds(Ack, job=jobs, mac=macs, at=utc_times, displayed_hash=maybe() | st.binary(min_size=8, max_size=8),
                 frames=st.integers(0, 10**9), status=maybe() | frames_, attempt=maybe() | st.integers(0, 255),
                 battery_mv=maybe() | st.integers(0, 0xFFFF), rssi=maybe() | st.integers(-128, 127),
                 temperature_c=maybe() | st.integers(-40, 85) | st.floats(-40, 85))
nacks = st.builds(Nack, job=jobs, mac=macs, at=utc_times, code=st.sampled_from(sorted(NACK_CODES)),
                  reason=st.text(max_size=200), retry=st.booleans(), attempt=maybe() | st.integers(0, 255),
                  status=maybe() | frames_)
checkins = st.builds(
    lambda mac, at, rssi, flags, battery: Checkin(
        mac=mac, at=at, rssi=rssi, frame=checkin_frame(mac, status_flags=CheckinFlag(flags), battery_mv=battery)),
    macs, utc_times, st.integers(-128, 20), st.integers(0, 15), st.integers(0, 0xFFFF))
statuses = st.builds(Status, gateway=st.text(min_size=1, max_size=50), at=utc_times,
                     in_flight=st.integers(0, 10**6), spooled=st.integers(0, 10**6),
                     labels_heard=st.integers(0, 10**6), protocol=st.integers(1, 255))


@settings(max_examples=200)
@given(st.one_of(acks, nacks, checkins, statuses))
def test_round_trip(event: Event) -> None:
    back = parse_event(event.to_json())
    assert back == event and type(back) is type(event)
    assert back.to_json() == event.to_json()


# -- bad input ---------------------------------------------------------------------------------------

GOOD_ACK = json.loads(Ack(job=7, mac=MAC, at=AT, displayed_hash=bytes(8), frames=1, status=b"\x13").to_json())
GOOD_NACK = json.loads(Nack(job=7, mac=MAC, at=AT, code="budget", reason="", retry=True).to_json())


@pytest.mark.parametrize(("data", "message"), [
    (b"", "event: not JSON"),
    (b"\xff\xfe", "event: not JSON"),
    (b"[1, 2]", "event: expected a JSON object, got list"),
    (b'{"at": "2026-01-01T00:00:00Z"}', "type: missing"),
    (json.dumps({**GOOD_ACK, "type": "hello"}).encode(), "type: expected ack, nack, checkin or status, got 'hello'"),
    (json.dumps({**GOOD_ACK, "at": "2026-11-23T17:00:00"}).encode(), "at: must carry a UTC offset"),
    (json.dumps({**GOOD_ACK, "at": "yesterday"}).encode(), "at: not an ISO 8601 time: 'yesterday'"),
    (json.dumps({**GOOD_ACK, "at": 12}).encode(), "at: expected an ISO 8601 string, got 12"),
    (json.dumps({k: v for k, v in GOOD_ACK.items() if k != "frames"}).encode(), "frames: missing"),
    (json.dumps({**GOOD_ACK, "job": -1}).encode(), "job: must be in 0..18446744073709551615, got -1"),
    (json.dumps({**GOOD_ACK, "job": "7"}).encode(), "job: expected an integer, got '7'"),
    (json.dumps({**GOOD_ACK, "job": True}).encode(), "job: expected an integer, got True"),
    (json.dumps({**GOOD_ACK, "mac": "02E5000001"}).encode(), "mac: expected AA:BB:CC:DD:EE:FF, got '02E5000001'"),
    (json.dumps({**GOOD_ACK, "displayed_hash": "abc"}).encode(), "displayed_hash: not hex: 'abc'"),
    (json.dumps({**GOOD_ACK, "displayed_hash": "00112233"}).encode(), "displayed_hash: expected 16 hex digits"),
    (json.dumps({**GOOD_ACK, "status": "zz"}).encode(), "status: not hex: 'zz'"),
    (json.dumps({**GOOD_ACK, "status": "00" * 1025}).encode(), "status: at most 2048 hex digits, got 2050"),
    (json.dumps({**GOOD_ACK, "status": ""}).encode(), "status: expected 1..1024 bytes"),
    (json.dumps({**GOOD_ACK, "attempt": 256}).encode(), "attempt: must be in 0..255, got 256"),
    (json.dumps({**GOOD_ACK, "battery_mv": 70000}).encode(), "battery_mv: must be in 0..65535, got 70000"),
    (json.dumps({**GOOD_ACK, "temperature_c": "warm"}).encode(), "temperature_c: expected a finite number"),
    (json.dumps({**GOOD_NACK, "code": "later"}).encode(), "code: expected one of .*got 'later'"),
    (json.dumps({**GOOD_NACK, "retry": 1}).encode(), "retry: expected true or false, got 1"),
    (json.dumps({**GOOD_NACK, "reason": "x" * 1001}).encode(), "reason: at most 1000 characters, got 1001"),
    (json.dumps({**GOOD_NACK, "reason": None}).encode(), "reason: expected a string, got None"),
    (json.dumps({"type": "checkin", "mac": MAC, "at": "2026-01-01T00:00:00Z", "rssi": -5, "frame": "zz"}).encode(),
     "frame: not hex: 'zz'"),
    (json.dumps({"type": "checkin", "mac": MAC, "at": "2026-01-01T00:00:00Z", "rssi": -5,
                 "frame": checkin_frame()[:-1].hex()}).encode(), "frame: crc: expected"),
    (json.dumps({"type": "checkin", "mac": "02:E5:00:00:00:09", "at": "2026-01-01T00:00:00Z", "rssi": -5,
                 "frame": checkin_frame().hex()}).encode(),
     "frame: check-in from 02:E5:00:00:00:01, event is for 02:E5:00:00:00:09"),
    (json.dumps({"type": "status", "gateway": "", "at": "2026-01-01T00:00:00Z", "in_flight": 0, "spooled": 0,
                 "labels_heard": 0}).encode(), "gateway: must not be empty"),
    (json.dumps({"type": "status", "gateway": "g", "at": "2026-01-01T00:00:00Z", "in_flight": -1, "spooled": 0,
                 "labels_heard": 0}).encode(), "in_flight: must be in 0"),
    (b"{" + b" " * 20000 + b"}", "event: 20002 bytes is over 16384"),
])
def test_bad_events_name_the_field_and_value(data: bytes, message: str) -> None:
    with pytest.raises(EventError, match=message):
        parse_event(data)


def test_construction_refuses_naive_times_and_other_frames() -> None:
    with pytest.raises(EventError, match="at: must be timezone-aware"):
        Status(gateway="g", at=datetime(2026, 1, 1), in_flight=0, spooled=0, labels_heard=0)
    from firmware_proto.frames import ImageStatusRequest

    with pytest.raises(EventError, match="frame: expected a check-in, got ImageStatusRequest"):
        Checkin(mac=MAC, rssi=0, frame=ImageStatusRequest(transfer_id=1).to_bytes())
    with pytest.raises(EventError, match="displayed_hash: expected 8 bytes"):
        Ack(job=1, mac=MAC, displayed_hash=b"12", frames=0)
    assert issubclass(EventError, ValueError)


@settings(max_examples=300)
@given(st.binary(max_size=300) | st.text(max_size=300))
def test_random_input_raises_only_event_error(data: bytes | str) -> None:
    try:
        parse_event(data)
    except EventError:
        pass


@settings(max_examples=200)
@given(st.dictionaries(st.sampled_from(["type", "job", "mac", "at", "displayed_hash", "frames", "status",
                                        "attempt", "code", "reason", "retry", "rssi", "frame", "gateway", "protocol",
                                        "in_flight", "spooled", "labels_heard", "battery_mv", "temperature_c"]),
                       st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
                       | st.sampled_from(["ack", "nack", "checkin", "status", "2026-01-01T00:00:00Z", MAC])))
def test_random_objects_raise_only_event_error(obj: dict[str, object]) -> None:
    try:
        parse_event(json.dumps(obj))
    except EventError:
        pass
