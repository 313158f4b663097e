"""The loopback radio: `esl simulate` in a real subprocess and the gateway's TCP client."""

from __future__ import annotations

import asyncio
import io
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from eslserver.gateway.conversation import Conversation, pair_label, push_image
from eslserver.gateway.links.loopback import LoopbackError, LoopbackLink, LoopbackRadio
from firmware_proto.frames import Checkin, CheckinFlag
from firmware_proto.gateway import GatewaySession
from firmware_proto.image import image_hash
from firmware_proto.link import Link, Radio
from firmware_proto.models import get_model
from firmware_proto.radio import PacketKind, RadioPacket, RadioStreamDecoder, encode_packet
from render.palette import PANEL_RGB
from simulator.faults import FaultConfig
from simulator.label import factory_key
from simulator.radio_server import RadioServer
from simulator.screen import demo_indices, pack_indices
from simulator.snapshots import snapshot_path
from simulator.store import SimStore, StoreConfig, label_address

KEY = b"loopback-key-16b"
SEED = 77


async def start_simulator(*args: str) -> tuple[asyncio.subprocess.Process, str, int]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "from eslserver.cli import main; main()", "simulate",
        "--listen", "127.0.0.1:0", *args,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
    match = re.match(r"listening on (\S+):(\d+) with (\d+) labels", line)
    if match is None:
        proc.kill()
        _, err = await proc.communicate()
        pytest.fail(f"esl simulate did not start: {line!r} {err.decode()}")
    return proc, match.group(1), int(match.group(2))


async def stop(proc: asyncio.subprocess.Process) -> str:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    return out.decode()


async def test_esl_simulate_subprocess_checkin_image_and_reported_hash(tmp_path: Path) -> None:
    snaps = tmp_path / "snaps"
    proc, host, port = await start_simulator(
        "--labels", "20", "--seed", str(SEED), "--model", "2.9-bwry", "--wake-interval", "0.3",
        "--always-listening", "--loss", "0.1", "--corrupt", "0.05", "--snapshots", str(snaps),
        "--snapshot-interval", "0", "--summary-interval", "0.5")
    try:
        radio = LoopbackRadio(host, port)
        assert isinstance(radio, Radio)
        checkins: asyncio.Queue[tuple[str, bytes, int]] = asyncio.Queue()
        radio.set_checkin_callback(lambda a, f, r: checkins.put_nowait((a, f, r)))
        async with radio:
            address, frame, rssi = await asyncio.wait_for(checkins.get(), 20)
            assert address.startswith("02:E5:") and -128 < rssi < 0
            session = GatewaySession(address)
            first = session.open(frame)
            assert isinstance(first, Checkin) and first.auth is None  # fresh from the factory
            link = await radio.open_link(address)
            assert isinstance(link, Link)
            await link.connect()
            conv = Conversation(link, session)
            await pair_label(conv, factory_key(SEED, address), KEY, label_rx_counter=first.rx_counter)
            model = get_model("2.9-bwry")
            indices = demo_indices(model, 12)
            fb = pack_indices(indices, model)
            outcome = await push_image(conv, fb, timeout_s=0.3, attempts=20)
            assert outcome.done, outcome
            await link.close()
            # the label's next check-in reports the new image (authenticated under our key)
            while True:
                addr, frame, _ = await asyncio.wait_for(checkins.get(), 20)
                if addr == address:
                    try:
                        report = session.open(frame)
                    except ValueError:
                        continue  # corrupted on the air
                    assert isinstance(report, Checkin) and report.auth is not None
                    if report.status_flags & CheckinFlag.PAIRED:
                        break
            assert report.displayed_hash == image_hash(fb)
        # the simulator wrote the label's screen as a PNG
        path = snapshot_path(snaps, address)
        for _ in range(100):
            if path.exists():
                break
            await asyncio.sleep(0.1)
        png = np.asarray(Image.open(io.BytesIO(path.read_bytes())).convert("RGB"))
        assert np.array_equal(png, PANEL_RGB[indices])
    finally:
        out = await stop(proc)
    assert "stopped: labels=20 paired=1" in out
    assert "refreshes=1" in out


async def test_unreachable_and_unknown_labels() -> None:
    store = SimStore(StoreConfig(labels=2, wake_interval_s=30.0, listen_window_s=0.05))
    async with store, RadioServer(store) as server:
        host, port = server.address
        async with LoopbackRadio(host, port, connect_timeout_s=2.0) as radio:
            asleep = await radio.open_link(label_address(1))
            with pytest.raises(LoopbackError, match="not reachable"):
                await asleep.connect()
            unknown = await radio.open_link("AA:AA:AA:AA:AA:AA")
            with pytest.raises(LoopbackError, match="not reachable"):
                await unknown.connect()
            with pytest.raises(LoopbackError, match="not connected"):
                await unknown.send(b"\x00")
            # wake it: it checks in and listens for its window
            heard: asyncio.Queue[str] = asyncio.Queue()
            radio.set_checkin_callback(lambda a, f, r: heard.put_nowait(a))
            store.wake_now(label_address(1))
            assert await asyncio.wait_for(heard.get(), 5) == label_address(1)
            await asleep.connect()
            assert isinstance(asleep, LoopbackLink) and asleep.connected


async def test_server_survives_garbage_and_serves_byte_by_byte() -> None:
    store = SimStore(StoreConfig(labels=1, always_listening=True, faults=FaultConfig()))
    async with store, RadioServer(store) as server:
        host, port = server.address
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"\x00garbage\xe5\x1a\xff\xff" * 10)
        wire = encode_packet(PacketKind.CONNECT, label_address(1), 0, b"")
        for i in range(len(wire)):  # one byte at a time
            writer.write(wire[i:i + 1])
            await writer.drain()
        dec = RadioStreamDecoder()
        got: list[RadioPacket] = []
        while not got:
            got = dec.feed(await asyncio.wait_for(reader.read(100), 5))
        packet = got[0]
        assert packet.kind is PacketKind.CONNECTED and packet.address == label_address(1)
        writer.close()
        await writer.wait_closed()


async def test_radio_without_server_fails_cleanly() -> None:
    store = SimStore(StoreConfig(labels=0))
    server = RadioServer(store)
    await server.start()
    host, port = server.address
    await server.aclose()
    with pytest.raises(LoopbackError, match="no loopback radio"):
        await LoopbackRadio(host, port, connect_timeout_s=1.0).start()
