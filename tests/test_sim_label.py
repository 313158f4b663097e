"""A simulated label driven by the gateway side of firmware_proto over in-memory links."""

from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest
from PIL import Image

from eslserver.gateway.conversation import Conversation, pair_label, push_image
from firmware_proto.commands import EslError
from firmware_proto.frames import Checkin, CheckinFlag, ControlResponse
from firmware_proto.gateway import GatewaySession
from firmware_proto.image import ImageFormat, compress, image_hash
from firmware_proto.label import MIN_DISPLAY_MV
from firmware_proto.link import Link, Radio
from firmware_proto.models import get_model
from render.palette import PANEL_RGB
from simulator.faults import FaultConfig
from simulator.label import SimLabel, factory_key
from simulator.links import LinkClosedError, MemoryLink, MemoryRadio, memory_link
from simulator.screen import blank_framebuffer, demo_indices, pack_indices
from simulator.snapshots import SnapshotWriter, snapshot_path
from simulator.store import SimStore, StoreConfig, label_address

KEY = bytes(range(16))
LOSSY = FaultConfig(seed=11, loss=0.1, corrupt=0.1, duplicate=0.1)


def make_store(faults: FaultConfig = LOSSY, **kwargs: object) -> SimStore:
    args: dict[str, object] = {"labels": 1, "always_listening": True, "faults": faults, "seed": 1}
    args.update(kwargs)
    return SimStore(StoreConfig(**args))  # type: ignore[arg-type]


async def paired(store: SimStore, address: str, *, mode: str = "whole") -> Conversation:
    link = MemoryLink(store, address, mode=mode)  # type: ignore[arg-type]
    await link.connect()
    conv = Conversation(link, GatewaySession(address))
    await pair_label(conv, factory_key(store.config.seed, address), KEY)
    return conv


async def control_response(conv: Conversation) -> ControlResponse:
    """The next control-point response (late transfer statuses are skipped)."""
    while True:
        frame = await conv.next_frame(1.0)
        assert frame is not None, "no control response"
        if isinstance(frame, ControlResponse):
            return frame


def decoded_png(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def test_links_satisfy_the_protocols() -> None:
    store = make_store()
    assert isinstance(MemoryLink(store, label_address(1)), Link)
    assert isinstance(MemoryRadio(store), Radio)


@pytest.mark.parametrize("mode", ["whole", "bytes"])
@pytest.mark.parametrize("model", ["2.9-bwry", "7.5-bwry", "1.54-bw", "2.13-bwr"])
async def test_transfer_converges_under_loss_corruption_duplication(mode: str, model: str) -> None:
    store = make_store(models=(model,))
    address = label_address(1)
    label = store.label(address)
    conv = await paired(store, address, mode=mode)
    m = get_model(model)
    indices = demo_indices(m, 7)
    fb = pack_indices(indices, m)
    outcome = await push_image(conv, fb, timeout_s=0.05, attempts=20)
    assert outcome.done, outcome
    assert label.displayed_hash == image_hash(fb)
    assert label.framebuffer == fb
    # the snapshot shows the image, in the panel's colours
    assert np.array_equal(decoded_png(label.snapshot_png()), PANEL_RGB[indices])
    # the air really was hostile: the label threw frames away (corrupt, replayed) or lost some
    link = conv.link
    assert isinstance(link, MemoryLink)
    assert label.session.rejected > 0 or link.frames_sent > label.frames_in
    assert label.refreshes == 1


async def test_each_new_screen_is_logged_with_its_own_hash_and_nothing_else_is(
        caplog: pytest.LogCaptureFixture) -> None:
    """`esl simulate -v` says what each panel shows (benchmarks.chaos checks that no label ever
    showed a price that was not accepted): one line per new image, the hash of the framebuffer
    itself, none for an image whose hash did not verify."""
    store = make_store(FaultConfig())
    address = label_address(1)
    conv = await paired(store, address)
    m = store.label(address).model
    good, other = (pack_indices(demo_indices(m, n), m) for n in (5, 6))
    caplog.set_level("INFO", logger="simulator.label")
    assert not (await push_image(conv, other, full_hash=image_hash(good), timeout_s=0.05)).done
    assert (await push_image(conv, good, timeout_s=0.05)).done
    shown = [r.getMessage() for r in caplog.records if " shows " in r.getMessage()]
    assert shown == [f"label {address} shows {image_hash(good).hex()}"]


async def test_label_shows_nothing_until_the_hash_verifies() -> None:
    store = make_store(FaultConfig())
    address = label_address(1)
    label = store.label(address)
    conv = await paired(store, address)
    m = label.model
    fb = pack_indices(demo_indices(m, 3), m)
    wrong = image_hash(pack_indices(demo_indices(m, 4), m))
    outcome = await push_image(conv, fb, full_hash=wrong, timeout_s=0.05)
    assert not outcome.done
    assert label.framebuffer is blank_framebuffer(m)
    assert label.refreshes == 0


async def test_label_rebooted_mid_transfer_resumes() -> None:
    """The label reboots after a third of the parts; the same transfer carries on from there."""
    store = make_store(FaultConfig(), models=("7.5-bwry",))
    address = label_address(1)
    label = store.label(address)
    conv = await paired(store, address)
    m = label.model
    rng = np.random.default_rng(5)
    indices = rng.integers(0, 4, size=(m.height, m.width), dtype=np.uint8)
    indices[:, 200:] = 1  # partly compressible, still many parts
    fb = pack_indices(indices, m)
    sender = conv.session.send_image(compress(ImageFormat.DEFLATE, fb), ImageFormat.DEFLATE,
                                     image_hash(fb), max_frame=label.max_frame)
    total = sender.sender.part_count
    assert total > 30
    frames = sender.start()
    # the first third reaches the label, then it reboots and the rest is lost on the air
    for frame in frames[: total // 3]:
        assert label.receive(frame) == []
    label.reboot()
    assert label.reboots == 1 and label.session.framebuffer is blank_framebuffer(m)
    assert label.flash.transfer is not None
    kept = total - label.flash.transfer.missing_count
    assert kept > 0
    # the gateway hears nothing, times out, asks for the status and sends only what is missing
    parts_after = 0
    queue = sender.on_timeout()
    while queue and not sender.done:
        frame, queue = queue[0], queue[1:]
        parts_after += 1
        for reply in label.receive(frame):
            queue += sender.handle(conv.session.open(reply))
    assert sender.done
    assert label.displayed_hash == image_hash(fb)
    assert parts_after <= total - kept + 2  # the missing parts, plus the status request


@pytest.mark.parametrize("loses_transfer", [False, True])
async def test_random_reboots_mid_transfer_still_converge(loses_transfer: bool) -> None:
    faults = FaultConfig(seed=4, loss=0.05, reboot=0.05, reboot_loses_transfer=loses_transfer)
    store = make_store(faults, models=("4.2-bwry",))
    address = label_address(1)
    label = store.label(address)
    conv = await paired(store, address)
    m = label.model
    rng = np.random.default_rng(9)
    indices = np.ones((m.height, m.width), dtype=np.uint8)
    indices[:120] = rng.integers(0, 4, size=(120, m.width), dtype=np.uint8)
    fb = pack_indices(indices, m)
    outcome = await push_image(conv, fb, timeout_s=0.05, attempts=30)
    assert outcome.done, outcome
    assert label.displayed_hash == image_hash(fb)
    assert label.reboots > 0


async def test_offline_label_comes_back_and_converges() -> None:
    store = make_store(LOSSY, always_listening=False, wake_interval_s=0.1, listen_window_s=0.3)
    address = label_address(1)
    label = store.label(address)
    radio = MemoryRadio(store)
    checkins: asyncio.Queue[tuple[str, bytes, int]] = asyncio.Queue()
    radio.set_checkin_callback(lambda a, f, r: checkins.put_nowait((a, f, r)))
    await radio.start()
    async with store:
        store.take_offline(address, 0.5)
        link = await radio.open_link(address)
        with pytest.raises(ConnectionError):
            await link.connect()
        off_until = label.offline_until
        # wait for the label to check in again, then talk to it in its listen window
        while True:
            _, frame, rssi = await asyncio.wait_for(checkins.get(), 5)
            if store.now() >= off_until:
                break
        assert rssi == label.rssi
        checkin = GatewaySession(address).open(frame)
        assert isinstance(checkin, Checkin)
        await link.connect()
        conv = Conversation(link, GatewaySession(address))
        await pair_label(conv, factory_key(1, address), KEY, label_rx_counter=checkin.rx_counter)
        fb = pack_indices(demo_indices(label.model, 1), label.model)
        outcome = await push_image(conv, fb, timeout_s=0.05, attempts=20)
        assert outcome.done
        assert label.displayed_hash == image_hash(fb)
    await radio.close()


async def test_sleeping_label_only_listens_after_waking() -> None:
    store = make_store(FaultConfig(), always_listening=False, wake_interval_s=0.2, listen_window_s=0.05)
    address = label_address(1)
    label = store.label(address)
    link = MemoryLink(store, address)
    with pytest.raises(ConnectionError):
        await link.connect()  # not started: asleep
    with pytest.raises(LinkClosedError):
        await link.send(b"\x00")
    seen: list[float] = []
    store.add_checkin_listener(lambda a, f, r: seen.append(store.now()))
    async with store:
        await asyncio.sleep(0.9)
    assert 2 <= len(seen) <= 6  # ~4-5 wakes; loop lag can only delay them
    assert label.battery.used_uc > 0
    assert not label.listening(store.now() + 1.0)


async def test_low_battery_refuses_display() -> None:
    store = make_store(FaultConfig(seed=2, low_battery=1.0))
    address = label_address(1)
    label = store.label(address)
    assert label.battery.millivolts < MIN_DISPLAY_MV
    conv = await paired(store, address)
    fb = pack_indices(demo_indices(label.model, 2), label.model)
    outcome = await push_image(conv, fb, timeout_s=0.05)
    assert not outcome.done
    assert outcome.error_code == EslError.INSUFFICIENT_BATTERY
    assert label.framebuffer is blank_framebuffer(label.model)
    # the ESL Display Image command is refused with Insufficient Battery too
    await conv.send_all([conv.session.command("display_image", display_index=0, image_index=0)])
    reply = await control_response(conv)
    assert reply.name == "error"
    assert reply.get("error_code") == EslError.INSUFFICIENT_BATTERY
    # the check-in says so
    checkin = conv.session.open(label.wake())  # type: ignore[arg-type]
    assert isinstance(checkin, Checkin) and checkin.status_flags & CheckinFlag.LOW_BATTERY


async def test_battery_drains_with_traffic_and_is_reported() -> None:
    store = make_store(FaultConfig())
    address = label_address(1)
    label = store.label(address)
    conv = await paired(store, address)
    before = label.battery.used_uc
    fb = pack_indices(demo_indices(label.model, 5), label.model)
    assert (await push_image(conv, fb)).done
    spent = label.battery.used_uc - before
    assert spent > label.battery.power.refresh_uc(label.model)  # refresh plus radio
    label.set_battery_mv(2600)
    checkin = conv.session.open(label.wake())  # type: ignore[arg-type]
    assert isinstance(checkin, Checkin) and abs(checkin.battery_mv - 2600) < 5


async def test_led_control_lights_and_flashes_until() -> None:
    store = make_store(FaultConfig())
    address = label_address(1)
    label = store.label(address)
    conv = await paired(store, address)
    # red at full brightness, pattern 0xAA..., 10 repetitions of 40 bits
    await conv.send_all([conv.session.command(
        "led_control", led_index=0, color_brightness=0xC3, flash_pattern=0xAAAAAAAAAA,
        off_period=5, on_period=5, repeat=10 << 1)])
    reply = await control_response(conv)
    assert reply.name == "led_state"
    now = store.now()
    state = label.led_at(now)
    assert state.on and state.flashing and state.colour == 0xFF0000
    assert state.flash_until is not None and state.flash_until == pytest.approx(now + 10 * 40 * 0.05, abs=0.1)
    assert not label.led_at(state.flash_until + 0.01).on


async def test_same_seed_same_run() -> None:
    async def run(seed: int) -> tuple[int, int, int, int]:
        store = make_store(FaultConfig(seed=seed, loss=0.1, corrupt=0.1, duplicate=0.1))
        address = label_address(1)
        conv = await paired(store, address)
        fb = pack_indices(demo_indices(store.label(address).model, 8), store.label(address).model)
        assert (await push_image(conv, fb, timeout_s=0.1, attempts=20)).done
        lb = store.label(address)
        return lb.frames_in, lb.frames_out, lb.bytes_in, lb.session.rejected

    first = await run(21)
    assert first == await run(21)
    assert len({first, await run(22), await run(23)}) > 1


async def test_snapshot_writer_writes_changed_screens(tmp_path: object) -> None:
    from pathlib import Path
    directory = Path(str(tmp_path)) / "snaps"
    store = make_store(FaultConfig(), labels=3)
    writer = SnapshotWriter(store, directory, min_interval_s=0.0)
    assert writer.write_changed(0.0) == 0  # nothing changed yet
    address = label_address(2)
    conv = await paired(store, address)
    m = store.label(address).model
    indices = demo_indices(m, 9)
    assert (await push_image(conv, pack_indices(indices, m))).done
    assert writer.write_changed(1.0) == 1
    path = snapshot_path(directory, address)
    assert np.array_equal(decoded_png(path.read_bytes()), PANEL_RGB[indices])
    assert writer.write_changed(2.0) == 0


def test_stand_alone_label_link() -> None:
    label = SimLabel("AA:BB:CC:00:00:01", get_model("1.54-bw"), factory_key(0, "AA:BB:CC:00:00:01"),
                     always_listening=True)
    link, store = memory_link(label)
    assert link.address == label.address and link.max_frame == label.max_frame
    assert store.labels == {label.address: label}


async def test_delayed_link_delivers_late_with_jitter_and_still_converges() -> None:
    store = make_store(FaultConfig(seed=6, latency_s=0.03, jitter_s=0.01, loss=0.05))
    address = label_address(1)
    conv = await paired(store, address)
    label = store.label(address)
    # a ping's answer takes a round trip: two one-way delays of 0.02..0.04 s
    start = store.now()
    await conv.send_all([conv.session.command("ping")])
    while True:
        reply = await conv.next_frame(1.0)
        if isinstance(reply, ControlResponse):
            break
        if reply is None:  # lost (5 %): ask again
            start = store.now()
            await conv.send_all([conv.session.command("ping")])
    assert store.now() - start >= 0.04
    fb = pack_indices(demo_indices(label.model, 4), label.model)
    outcome = await push_image(conv, fb, timeout_s=0.2, attempts=20)
    assert outcome.done
    assert label.displayed_hash == image_hash(fb)
