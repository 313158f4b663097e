"""Image transfer between the real gateway and label state machines over faulty channels."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest

from firmware_proto import (
    FrameRejected, GatewaySession, ImageDisplayed, ImageFormat, ImagePart, LabelFlash, LabelSession,
    Region, TransferFailed, TransferState, best_payload, blank_framebuffer, changed_region,
    derive_factory_key, framebuffer_size, get_model, image_hash, parse_frame,
)
from firmware_proto.image import apply_region, compress, extract_region
from firmware_proto.transfer import ImageReceiver, TransferResult, encode_missing

MAC = "AA:BB:CC:00:00:07"
MODEL = get_model("2.9-bwry")


def picture(seed: int, model=MODEL) -> bytes:  # type: ignore[no-untyped-def]
    """A label-like framebuffer: white with runs of ink, so it compresses like a real one."""
    rng = random.Random(seed)
    fb = bytearray(blank_framebuffer(model))
    for _ in range(300):
        start, n = rng.randrange(len(fb) - 40), rng.randint(1, 40)
        fb[start:start + n] = bytes((rng.choice((0x00, 0xFF, 0xAA, 0x5F)),)) * n
    for i in range(0, len(fb), 97):  # some noise so the payload has several parts
        fb[i] = rng.randrange(256)
    return bytes(fb)


def paired() -> tuple[LabelSession, GatewaySession]:
    fk = derive_factory_key(b"test", MAC)
    label = LabelSession(MODEL, MAC, LabelFlash.new(MODEL, fk))
    gw = GatewaySession(MAC)
    ci = parse_frame(label.checkin())
    for r in label.receive(gw.pair(fk, label_rx_counter=ci.rx_counter)):  # type: ignore[attr-defined]
        gw.open(r)
    label.pop_events()
    return label, gw


@dataclass
class Channel:
    """Seeded faults applied to every frame in both directions."""

    rng: random.Random
    loss: float = 0.0
    corrupt: float = 0.0
    duplicate: float = 0.0
    sent: int = 0

    def carry(self, frame: bytes) -> list[bytes]:
        self.sent += len(frame)
        if self.rng.random() < self.loss:
            return []
        if self.rng.random() < self.corrupt:
            b = bytearray(frame)
            b[self.rng.randrange(len(b))] ^= 1 << self.rng.randrange(8)
            frame = bytes(b)
        return [frame, frame] if self.rng.random() < self.duplicate else [frame]


@dataclass
class Run:
    parts_sent: list[int] = field(default_factory=list)


def drive(label: LabelSession, gw: GatewaySession, sender, chan: Channel, *,  # type: ignore[no-untyped-def]
          max_steps: int = 2000, on_step=None) -> Run:
    run = Run()
    pending = sender.start()
    for step in range(max_steps):
        replies: list[bytes] = []
        for f in pending:
            fr = parse_frame(f)
            if isinstance(fr, ImagePart):
                run.parts_sent.append(fr.offset // sender.sender.part_size)
            for g in chan.carry(f):
                for r in label.receive(g):
                    replies += chan.carry(r)
        pending = []
        for r in replies:
            try:
                pending += sender.handle(r)
            except Exception as exc:  # corrupted replies are refused by the gateway
                from firmware_proto import ProtocolError
                assert isinstance(exc, ProtocolError)
        if sender.finished:
            return run
        if on_step is not None:
            label = on_step(step, label) or label
        if not pending:
            pending = sender.on_timeout()
    raise AssertionError("transfer did not finish")


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(("loss", "corrupt", "dup"), [(0.0, 0.0, 0.0), (0.1, 0.05, 0.1), (0.3, 0.05, 0.2)])
def test_transfer_converges_under_faults(seed: int, loss: float, corrupt: float, dup: float) -> None:
    label, gw = paired()
    fb = picture(seed)
    payload, fmt = best_payload(fb)
    sender = gw.send_image(payload, fmt, image_hash(fb), max_frame=100, max_timeouts=50)
    drive(label, gw, sender, Channel(random.Random(seed), loss, corrupt, dup))
    assert sender.done and not sender.failed
    assert label.framebuffer == fb and label.displayed_hash == image_hash(fb)
    shown = [e for e in label.pop_events() if isinstance(e, ImageDisplayed)]
    assert [e.image_hash for e in shown] == [image_hash(fb)]


def test_lossless_transfer_sends_each_part_once_and_no_per_part_acks() -> None:
    label, gw = paired()
    fb = picture(9)
    payload, fmt = best_payload(fb)
    sender = gw.send_image(payload, fmt, image_hash(fb), max_frame=120)
    chan = Channel(random.Random(0))
    run = drive(label, gw, sender, chan)
    assert sorted(run.parts_sent) == list(range(sender.sender.part_count))
    assert sender.sender.part_count > 5


def test_resume_sends_only_missing_parts() -> None:
    label, gw = paired()
    fb = picture(3)
    payload, fmt = best_payload(fb)
    first = gw.send_image(payload, fmt, image_hash(fb), max_frame=100)
    frames = first.start()
    n_parts = first.sender.part_count
    got = set()
    for f in frames[: 1 + n_parts // 2]:  # the offer and the first half of the parts arrive
        fr = parse_frame(f)
        if isinstance(fr, ImagePart):
            got.add(fr.offset // first.sender.part_size)
        label.receive(f)
    assert parse_frame(label.checkin()).status_flags & 0x04  # type: ignore[attr-defined]  # TRANSFER_PENDING
    # the gateway restarts: a new sender (new transfer id) for the same image, in resume mode
    gw2 = GatewaySession(MAC, key=gw.key, tx_counter=gw.tx_counter + 10)
    second = gw2.send_image(payload, fmt, image_hash(fb), max_frame=100, resume=True)
    run = drive(label, gw2, second, Channel(random.Random(1)))
    assert second.done and label.framebuffer == fb
    assert sorted(run.parts_sent) == sorted(set(range(n_parts)) - got)


def test_sender_timeout_asks_for_status_and_resumes() -> None:
    label, gw = paired()
    fb = picture(4)
    payload, fmt = best_payload(fb)
    s = gw.send_image(payload, fmt, image_hash(fb), max_frame=100)
    frames = s.start()
    for f in frames[:-1]:  # everything but the ACK_REQ part arrives; the label stays silent
        assert label.receive(f) == []
    ask = s.on_timeout()  # never heard from the label: the offer again, now asking for status
    assert [type(parse_frame(f)).__name__ for f in ask] == ["ImageOffer"]
    (status,) = label.receive(ask[0])
    resend = s.handle(status)
    assert len(resend) == 1  # only the part that was lost
    assert label.receive(resend[0][:-1] + b"\x00") == []  # ...lost again (corrupted)
    ask = s.on_timeout()  # heard before: now a small status request
    assert [type(parse_frame(f)).__name__ for f in ask] == ["ImageStatusRequest"]
    (status,) = label.receive(ask[0])
    resend = s.handle(status)
    assert len(resend) == 1
    for r in label.receive(resend[0]):
        s.handle(r)
    assert s.done and label.framebuffer == fb


def test_wrong_hash_is_never_displayed() -> None:
    label, gw = paired()
    old = label.framebuffer
    fb = picture(5)
    payload, fmt = best_payload(fb)
    s = gw.send_image(payload, fmt, image_hash(picture(6)), max_frame=200)  # lies about the hash
    drive(label, gw, s, Channel(random.Random(0)))
    assert s.failed and s.sender.error_code == TransferResult.HASH_MISMATCH
    assert label.framebuffer == old
    events = label.pop_events()
    assert not any(isinstance(e, ImageDisplayed) for e in events)
    assert any(isinstance(e, TransferFailed) and e.code == TransferResult.HASH_MISMATCH for e in events)


def test_part_with_bad_crc_is_refused() -> None:
    label, gw = paired()
    fb = picture(7)
    payload, fmt = best_payload(fb)
    s = gw.send_image(payload, fmt, image_hash(fb), max_frame=100)
    offer, part, *_ = [parse_frame(f) for f in s.start()]
    from dataclasses import replace
    label.receive(gw.seal(replace(offer, auth=None)))
    bad = replace(part, auth=None, data=bytes([part.data[0] ^ 1]) + part.data[1:], crc=part.crc)  # type: ignore[attr-defined]
    assert label.receive(gw.seal(bad)) == []
    assert any(isinstance(e, FrameRejected) and "crc" in e.reason for e in label.pop_events())
    assert label.flash.transfer is not None and label.flash.transfer.missing_count == s.sender.part_count


def test_oversized_offer_is_refused_without_allocating() -> None:
    label, gw = paired()
    s = gw.send_image(b"x" * (framebuffer_size(MODEL) + 1), ImageFormat.RAW, b"12345678", max_frame=244)
    (reply,) = label.receive(s.start()[0])
    status = gw.open(reply)
    assert status.state is TransferState.FAILED and status.error == TransferResult.CAPACITY_LIMIT  # type: ignore[attr-defined]
    assert label.flash.transfer is None


@pytest.mark.parametrize("lose_transfer_state", [False, True])
def test_label_rebooted_mid_transfer_recovers(lose_transfer_state: bool) -> None:
    label, gw = paired()
    fb = picture(8)
    payload, fmt = best_payload(fb)
    s = gw.send_image(payload, fmt, image_hash(fb), max_frame=80, window=4)
    state = {"label": label, "rebooted": False}

    def reboot(step: int, current: LabelSession) -> LabelSession | None:
        if step == 1 and not state["rebooted"]:
            state["rebooted"] = True
            if lose_transfer_state:
                current.flash.transfer = None
            fresh = LabelSession(MODEL, MAC, current.flash)  # RAM gone, flash kept
            state["label"] = fresh
            return fresh
        return None

    drive(label, gw, s, Channel(random.Random(2), loss=0.1), on_step=reboot)
    final: LabelSession = state["label"]  # type: ignore[assignment]
    assert state["rebooted"] and s.done and final.framebuffer == fb


def test_region_update_changes_only_the_region() -> None:
    label, gw = paired()
    base = picture(10)
    label.flash.framebuffer = base
    region = Region(16, 160, 96, 64)
    new_pixels = bytes((0xE4,)) * region.size(MODEL)
    target = apply_region(base, region, new_pixels, MODEL)
    assert changed_region(base, target, MODEL) == region
    payload, fmt = best_payload(extract_region(target, region, MODEL))
    s = gw.send_image(payload, fmt, image_hash(target), region=region, base_hash=image_hash(base))
    drive(label, gw, s, Channel(random.Random(0)))
    assert s.done and label.framebuffer == target and label.displayed_hash == image_hash(target)
    # outside the region nothing moved
    stride = len(base) // MODEL.panel_size[1]
    start, count = region.byte_span(MODEL)
    for row in range(MODEL.panel_size[1]):
        a, b = base[row * stride:(row + 1) * stride], label.framebuffer[row * stride:(row + 1) * stride]
        if not region.y <= row < region.y + region.h:
            assert a == b
        else:
            assert a[:start] == b[:start] and a[start + count:] == b[start + count:]
    assert [type(e) for e in label.pop_events()] == [ImageDisplayed]


def test_region_update_on_a_different_base_is_refused() -> None:
    label, gw = paired()
    region = Region(0, 0, 8, 8)
    s = gw.send_image(compress(ImageFormat.RAW, bytes(region.size(MODEL))), ImageFormat.RAW,
                      b"12345678", region=region, base_hash=b"notmine!")
    drive(label, gw, s, Channel(random.Random(0)))
    assert s.failed and s.sender.error_code == TransferResult.BASE_MISMATCH
    assert label.framebuffer == blank_framebuffer(MODEL)


def test_same_image_is_not_sent_again() -> None:
    label, gw = paired()
    fb = label.framebuffer
    s = gw.send_image(compress(ImageFormat.DEFLATE, fb), ImageFormat.DEFLATE, image_hash(fb))
    run = drive(label, gw, s, Channel(random.Random(0)))
    assert s.done and not label.flash.transfer
    assert run.parts_sent  # pipelined first window went out, but the label answered DISPLAYED at once


def test_receiver_accepts_any_order_and_duplicates() -> None:
    fb = picture(11)
    payload, fmt = best_payload(fb)
    from firmware_proto.transfer import ImageSender
    snd = ImageSender(payload, fmt, image_hash(fb), transfer_id=1, max_frame=60)
    rcv = ImageReceiver(MODEL, snd.offer)
    order = list(range(snd.part_count)) * 2
    random.Random(3).shuffle(order)
    new = [rcv.accept(snd.part(i)) for i in order]
    assert sum(new) == snd.part_count and rcv.complete
    assert rcv.finish(blank_framebuffer(MODEL)) == fb


def test_missing_bitmap_encoding() -> None:
    assert encode_missing([False, True, False, True, True, True, True, True, True, True], 10) == (1, b"\xfd")
    assert encode_missing([False, True, False, True, False, False, False, False, False, False], 10) == (1, b"\x05\xfe")
    assert encode_missing([True] * 20, 10) == (0, b"")
    assert encode_missing([False] * 5, 10) == (5, b"")


@pytest.mark.parametrize("use_region", [False, True])
def test_delta_updates_reach_the_right_image(use_region: bool) -> None:
    from firmware_proto import plan_update
    label, gw = paired()
    base = picture(12)
    label.flash.framebuffer = base
    region = Region(32, 100, 64, 40)
    target = apply_region(base, region, bytes((0x1B,)) * region.size(MODEL), MODEL)
    assert plan_update(MODEL, base, base_fb=base) is None  # nothing to send
    update = plan_update(MODEL, target, base_fb=base, region=region if use_region else None)
    assert update is not None and update.base_hash == image_hash(base)
    full, _ = best_payload(target)
    assert len(update.payload) < len(full) // 4
    s = gw.send_update(update, max_frame=100)
    drive(label, gw, s, Channel(random.Random(1), loss=0.2))
    assert s.done and label.framebuffer == target


def test_delta_on_the_wrong_base_is_refused() -> None:
    from firmware_proto import plan_update
    label, gw = paired()
    base, other = picture(13), picture(14)
    label.flash.framebuffer = other
    target = base[:500] + bytes(100) + base[600:]  # a small change to an image the label lacks
    update = plan_update(MODEL, target, base_fb=base)
    assert update is not None and update.base_hash == image_hash(base)
    s = gw.send_update(update)
    drive(label, gw, s, Channel(random.Random(0)))
    assert s.failed and s.sender.error_code == TransferResult.BASE_MISMATCH
    assert label.framebuffer == other


@pytest.mark.parametrize("name", ["1.54-bw", "2.13-bwr", "4.2-bwry", "7.5-bwry"])
def test_every_model_receives_a_full_image(name: str) -> None:
    model = get_model(name)
    fk = derive_factory_key(b"test", MAC)
    label = LabelSession(model, MAC, LabelFlash.new(model, fk))
    gw = GatewaySession(MAC)
    for r in label.receive(gw.pair(fk)):
        gw.open(r)
    fb = picture(16, model)
    payload, fmt = best_payload(fb)
    s = gw.send_image(payload, fmt, image_hash(fb))
    drive(label, gw, s, Channel(random.Random(3), loss=0.1))
    assert s.done and label.framebuffer == fb


def test_sender_gives_up_when_the_label_stays_silent() -> None:
    _, gw = paired()
    s = gw.send_image(b"\x00" * 500, ImageFormat.RAW, b"12345678", max_timeouts=3)
    s.start()
    asks = [s.on_timeout() for _ in range(4)]
    assert all(len(a) == 1 for a in asks[:3]) and asks[3] == []
    assert s.failed and s.sender.error_code == TransferResult.TOO_MANY_ROUNDS and "silent" in (s.error or "")


def test_low_battery_label_refuses_images() -> None:
    label, gw = paired()
    label.battery_mv = 2100
    fb = picture(17)
    payload, fmt = best_payload(fb)
    s = gw.send_image(payload, fmt, image_hash(fb))
    drive(label, gw, s, Channel(random.Random(0)))
    assert s.failed and s.sender.error_code == TransferResult.INSUFFICIENT_BATTERY
    assert label.framebuffer == blank_framebuffer(MODEL)
    assert parse_frame(label.checkin()).status_flags & 0x02  # type: ignore[attr-defined]  # LOW_BATTERY


def test_parts_before_a_lost_offer_are_kept() -> None:
    label, gw = paired()
    fb = picture(18)
    payload, fmt = best_payload(fb)
    s = gw.send_image(payload, fmt, image_hash(fb), max_frame=100)
    offer, *parts = s.start()
    for p in parts:  # the offer is lost; the parts arrive and the ACK_REQ one gets "NONE"
        replies = label.receive(p)
    (none,) = replies
    again = s.handle(none)
    assert [type(parse_frame(f)).__name__ for f in again] == ["ImageOffer"]
    (status,) = label.receive(again[0])  # the label adopts the parts it held
    opened = gw.open(status)
    assert opened.state is TransferState.DISPLAYED  # type: ignore[attr-defined]
    s.handle(opened)
    assert s.done and label.framebuffer == fb
