"""Authentication, pairing, counters and the label's command handling."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_proto import (
    AuthError, BasicState, Checkin, ControlCommand, ControlResponse, EslError, FactoryReset,
    FrameRejected, GatewaySession, LabelFlash, LabelSession, LedChanged, Paired, Unpaired,
    blank_framebuffer, derive_factory_key, get_model, parse_frame,
)
from firmware_proto.auth import ReplayWindow, unwrap_key, wrap_key

MAC = "AA:BB:CC:00:00:09"
MODEL = get_model("1.54-bw")
FK = derive_factory_key(b"seed", MAC)


def new_label() -> LabelSession:
    return LabelSession(MODEL, MAC, LabelFlash.new(MODEL, FK))


def paired() -> tuple[LabelSession, GatewaySession]:
    label = new_label()
    gw = GatewaySession(MAC)
    (reply,) = label.receive(gw.pair(FK, esl_id=4))
    ci = gw.open(reply)
    assert isinstance(ci, Checkin) and ci.auth is not None and ci.status_flags & 1
    assert label.pop_events() == [Paired(4)]
    return label, gw


def rejected(label: LabelSession) -> list[str]:
    return [e.reason for e in label.pop_events() if isinstance(e, FrameRejected)]


def test_unpaired_checkin_is_plain_and_changes_nothing() -> None:
    label = new_label()
    ci = parse_frame(label.checkin())
    assert isinstance(ci, Checkin) and ci.auth is None and not ci.status_flags & 1
    assert GatewaySession(MAC).open(label.checkin()) is not None  # accepted as unauthenticated
    # a checkin sent *to* a label is refused
    assert label.receive(label.checkin()) == [] and rejected(label)


def test_unpaired_label_refuses_commands() -> None:
    label = new_label()
    gw = GatewaySession(MAC, key=bytes(16))
    assert label.receive(gw.command("ping")) == []
    assert any("not paired" in r for r in rejected(label))


def test_commands_round_trip_authenticated() -> None:
    label, gw = paired()
    (r,) = label.receive(gw.command("ping"))
    resp = gw.open(r)
    assert isinstance(resp, ControlResponse) and resp.name == "basic_state"
    label.battery_mv = 2777
    (r,) = label.receive(gw.command("read_sensor", sensor_index=0))
    resp = gw.open(r)
    assert isinstance(resp, ControlResponse) and resp.data == (2777).to_bytes(2, "little")
    (r,) = label.receive(gw.command("led_control", led_index=0, color_brightness=0x3F, flash_pattern=0xFF,
                                    off_period=2, on_period=3, repeat=5))
    assert gw.open(r).name == "led_state"  # type: ignore[attr-defined]
    assert label.pop_events() == [LedChanged(0, 0x3F, 0xFF, 2, 3, 5)]
    (r,) = label.receive(gw.command("display_image", display_index=0, image_index=3))
    err = gw.open(r)
    assert err.name == "error" and err.get("error_code") == EslError.INVALID_IMAGE_INDEX  # type: ignore[attr-defined]
    label.battery_mv = 2000
    (r,) = label.receive(gw.command("refresh_display", display_index=0))
    assert gw.open(r).get("error_code") == EslError.INSUFFICIENT_BATTERY  # type: ignore[attr-defined]


def test_forged_frame_is_refused() -> None:
    label, gw = paired()
    frame = parse_frame(gw.command("led_control", led_index=0, color_brightness=1, flash_pattern=1,
                                   off_period=1, on_period=1, repeat=1))
    assert isinstance(frame, ControlCommand) and frame.auth is not None
    forged = replace(frame, params=(0, 0, 0xFF, 0xFFFFFFFFFF, 1, 1, 0xFFFF))  # same tag, other content
    assert label.receive(forged.to_bytes()) == []
    assert any("tag" in r for r in rejected(label))
    no_auth = replace(frame, auth=None)
    assert label.receive(no_auth.to_bytes()) == []
    assert any("not authenticated" in r for r in rejected(label))
    assert label.led is None


def test_replayed_frame_is_refused() -> None:
    label, gw = paired()
    cmd = gw.command("ping")
    assert len(label.receive(cmd)) == 1
    assert label.receive(cmd) == []
    assert any("replay" in r for r in rejected(label))
    # and on the gateway side: a label frame replayed
    (r,) = label.receive(gw.command("ping"))
    gw.open(r)
    with pytest.raises(AuthError, match="replay"):
        gw.open(r)


def test_wrong_key_is_refused_both_ways() -> None:
    label, gw = paired()
    other = GatewaySession(MAC, key=bytes(range(16)))
    assert label.receive(other.command("ping")) == []
    assert any("tag" in r for r in rejected(label))
    (r,) = label.receive(gw.command("ping"))
    with pytest.raises(AuthError):
        other.open(r)


def test_frame_for_another_label_is_refused() -> None:
    label, gw = paired()
    other_label = LabelSession(MODEL, "AA:BB:CC:00:00:10", LabelFlash.new(MODEL, FK))
    other_label.flash.label_key = gw.key  # even with the same key, the nonce holds the address
    assert other_label.receive(gw.command("ping")) == []
    assert any("tag" in r for r in rejected(other_label))


def test_reordered_frames_within_window_are_accepted_once() -> None:
    label, gw = paired()
    a, b = gw.command("ping"), gw.command("ping")
    assert label.receive(b) and label.receive(a)
    assert label.receive(a) == [] and label.receive(b) == []


def test_replay_window() -> None:
    w = ReplayWindow()
    for c in (1, 3, 2, 70):
        w.accept(c)
    for c in (1, 2, 3, 70, 6, 0):
        with pytest.raises(AuthError):
            w.accept(c)
    w.accept(69)


def test_pairing_key_is_wrapped_and_wrong_factory_key_fails() -> None:
    wrapped = wrap_key(FK, bytes(6), 1, bytes(range(16)))
    assert bytes(range(16)) not in wrapped and len(wrapped) == 24
    assert unwrap_key(FK, bytes(6), 1, wrapped) == bytes(range(16))
    with pytest.raises(AuthError):
        unwrap_key(bytes(16), bytes(6), 1, wrapped)
    label = new_label()
    assert label.receive(GatewaySession(MAC).pair(derive_factory_key(b"other", MAC))) == []
    assert not label.paired and rejected(label)


def test_pairing_frame_cannot_be_replayed() -> None:
    label = new_label()
    gw = GatewaySession(MAC)
    pair = gw.pair(FK)
    assert label.receive(pair)
    label.receive(gw.command("unassociate"))
    assert not label.paired and Unpaired() in label.pop_events()
    assert label.receive(pair) == [] and not label.paired
    # a fresh pairing (next counter, learned from the check-in) works
    ci = parse_frame(label.checkin())
    gw2 = GatewaySession(MAC)
    assert label.receive(gw2.pair(FK, label_rx_counter=ci.rx_counter))  # type: ignore[attr-defined]
    assert label.paired


def test_factory_reset_forgets_key_and_image() -> None:
    label, gw = paired()
    label.flash.framebuffer = bytes(len(label.framebuffer))
    (r,) = label.receive(gw.command("factory_reset"))
    assert gw.open(r).name == "basic_state"  # type: ignore[attr-defined]  # answered under the old key
    assert not label.paired and label.framebuffer == blank_framebuffer(MODEL)
    assert FactoryReset() in label.pop_events()
    assert label.receive(gw.command("ping")) == []


def test_counters_survive_reboot() -> None:
    label, gw = paired()
    cmd = gw.command("ping")
    label.receive(cmd)
    rebooted = LabelSession(MODEL, MAC, label.flash)
    assert rebooted.receive(cmd) == []  # replay after reboot still refused
    (r,) = rebooted.receive(gw.command("ping"))
    gw.open(r)  # label's transmit counter continued: the gateway accepts it
    ci = parse_frame(rebooted.checkin())
    assert ci.status_flags & 0x08  # type: ignore[attr-defined]  # REBOOTED


def test_gateway_that_lost_its_counters_resynchronises_from_checkin() -> None:
    label, gw = paired()
    for _ in range(5):
        label.receive(gw.command("ping"))
    fresh = GatewaySession(MAC, key=gw.key)  # database restored: counters back at 0
    assert label.receive(fresh.command("ping")) == []  # refused as a replay
    fresh.open(label.checkin())  # authenticated check-in carries rx_counter
    assert label.receive(fresh.command("ping"))


def test_basic_state_bits() -> None:
    assert [int(b) for b in BasicState] == [1, 2, 4, 8, 16]


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.integers(0, 40), st.integers(0, 255))
def test_label_never_raises_on_radio_input(junk: bytes, flip_at: int, flip: int) -> None:
    label, gw = paired()
    assert label.receive(junk) == []  # no exception, and nothing unauthenticated gets an answer
    good = bytearray(gw.command("led_control", led_index=0, color_brightness=1, flash_pattern=1,
                                off_period=1, on_period=1, repeat=1))
    good[flip_at % len(good)] ^= flip
    out = label.receive(bytes(good))
    if flip:
        assert out == [] and label.led is None  # any change is refused (CRC, tag or parse)
