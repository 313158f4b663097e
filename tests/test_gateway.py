"""The gateway: its job runner against simulated labels, then the whole process end to end.

The job-runner tests use a store of real `SimLabel`s (the label side of firmware_proto) behind
a `MemoryRadio` with seeded faults; the gateway side is `run_job` with a `CheckinTracker` fed
by the radio, as in the gateway process. The end-to-end tests run a real broker (Mosquitto,
and the embedded amqtt broker), the simulator's loopback radio server, and the `Gateway`
(in-process, and as an ``esl gateway`` subprocess killed with SIGKILL mid-job).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import zlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Self

import numpy as np
import pytest
from typer.testing import CliRunner

from eslserver.cli import app
from eslserver.gateway.bridge import (
    Gateway,
    GatewayConfig,
    GatewayConfigError,
    RadioSpecError,
    open_radio,
)
from eslserver.gateway.conversation import CheckinTracker, JobSettings, run_job
from eslserver.gateway.events import Ack, Checkin, Event, Nack, Status, parse_event
from eslserver.gateway.links.loopback import LoopbackRadio
from eslserver.gateway.spool import JobSpool, PutResult, SpoolError
from eslserver.mqtt import Message, MqttConnection, MqttSettings
from eslserver.topics import Topics
from eslserver.gateway.identity import load_or_create_key
from firmware_proto.envelope import (
    CommandJob,
    EnvelopeError,
    ImageJob,
    JobEnvelope,
    PairJob,
    open_job_key,
    parse_envelope,
)
from firmware_proto.frames import CheckinFlag, ImageStatusRequest, JobStatus, parse_frame
from firmware_proto.image import image_hash
from firmware_proto.label import MIN_DISPLAY_MV
from firmware_proto.models import get_model
from firmware_proto.transfer import ImageUpdate, best_payload, plan_update, xor_bytes
from firmware_proto.trust import GatewayKey
from simulator.faults import FaultConfig
from simulator.label import SimLabel, factory_key
from simulator.links import MemoryRadio
from simulator.radio_server import RadioServer
from simulator.screen import demo_indices, pack_indices
from simulator.store import SimStore, StoreConfig, label_address
from tests.brokers import embedded_broker, free_port, mosquitto
from tests.job_issuer import Issuer

MODEL = get_model("2.9-bwry")
KEY = bytes(range(16, 32))
MAC = label_address(1)
FAST = JobSettings(reply_timeout_s=0.05, connect_retry_s=0.1, max_timeouts=6, attempts=8)


def picture(n: int) -> bytes:
    return pack_indices(demo_indices(MODEL, n), MODEL)


def noise(seed: int) -> bytes:
    """A picture that does not compress: a transfer of ~40 parts."""
    rng = np.random.default_rng(seed)
    return pack_indices(rng.integers(0, 4, (MODEL.height, MODEL.width), dtype=np.uint8), MODEL)


def update_for(fb: bytes, base: bytes | None = None) -> ImageUpdate:
    """The update to `fb`; with `base`, always one that needs the label to show `base`."""
    update = plan_update(MODEL, fb, base_fb=base)
    assert update is not None
    if base is not None and update.base_hash is None:  # the whole image was smaller: force a delta
        payload, fmt = best_payload(xor_bytes(fb, base))
        update = ImageUpdate(payload, fmt, image_hash(fb), None, image_hash(base), True)
    return update


class Bench:
    """A store, its radio and the gateway-side check-in tracker, plus the server's side of the
    jobs (`Issuer`: the label key, counter reservations, what the label last said)."""

    def __init__(self, store: SimStore, radio: MemoryRadio, tracker: CheckinTracker) -> None:
        self.store = store
        self.radio = radio
        self.tracker = tracker
        self.job_id = 0
        self.gateway_key = GatewayKey.generate()
        self.issuer = Issuer(store="s1", gateway="gw1", gateway_key=self.gateway_key.public)

    @property
    def label(self) -> SimLabel:
        return self.store.label(MAC)

    async def run(self, job: JobEnvelope, **kwargs: object) -> Ack | Nack:
        """Run `job` as the gateway would (its job key opened with the gateway's key); keep the
        counter of the label's final word, as the server does."""
        key = open_job_key(job, self.gateway_key) if isinstance(job, (ImageJob, CommandJob)) else None
        result = await run_job(self.radio, job, job_key=key, checkins=self.tracker, settings=FAST,
                               **kwargs)  # type: ignore[arg-type]
        self.issuer.heard(result)
        return result

    def next_id(self) -> int:
        self.job_id += 1
        return self.job_id

    def pair(self, deadline_s: int = 5, counter: int | None = None) -> PairJob:
        return self.issuer.pair(job_id=self.next_id(), mac=MAC, deadline_s=deadline_s, counter=counter,
                                factory_key=factory_key(self.store.config.seed, MAC), new_key=KEY)

    def image(self, fb: bytes, *, base: bytes | None = None, budget: int = 500,
              deadline_s: int = 5) -> ImageJob:
        return self.issuer.image(update_for(fb, base), job_id=self.next_id(), mac=MAC, label_key=KEY,
                                 budget=budget, deadline_s=deadline_s)

    def command(self, name: str, *, budget: int = 20, deadline_s: int = 5, **params: int) -> CommandJob:
        return self.issuer.command(name, job_id=self.next_id(), mac=MAC, label_key=KEY, budget=budget,
                                   deadline_s=deadline_s, **params)

    def led(self, *, deadline_s: int = 5) -> CommandJob:
        return self.command("led_control", deadline_s=deadline_s, led_index=0, color_brightness=0xC3,
                            flash_pattern=0xFF00FF, off_period=2, on_period=2, repeat=0xFFFF)


@asynccontextmanager
async def bench(faults: FaultConfig | None = None, **config: object) -> AsyncIterator[Bench]:
    args: dict[str, object] = {"labels": 1, "seed": 3, "always_listening": True, "faults": faults or FaultConfig()}
    args.update(config)
    store = SimStore(StoreConfig(**args))  # type: ignore[arg-type]
    tracker = CheckinTracker(coalesce_s=1.0)
    async with store:
        radio = MemoryRadio(store)

        def heard(mac: str, frame: bytes, rssi: int) -> None:
            tracker.record(mac, frame, rssi)

        radio.set_checkin_callback(heard)
        await radio.start()
        try:
            yield Bench(store, radio, tracker)
        finally:
            await radio.close()


async def test_pair_image_and_led_through_20_percent_loss() -> None:
    async with bench(FaultConfig(seed=5, loss=0.2)) as b:
        paired = await b.run(b.pair())
        assert isinstance(paired, Ack), paired
        assert b.label.paired
        assert paired.displayed_hash == b.label.displayed_hash  # what the label reported
        assert paired.battery_mv == b.label.battery.millivolts or paired.battery_mv is not None
        assert paired.temperature_c is not None and paired.attempt == 0
        confirm = parse_frame(paired.status or b"")  # the label's own check-in, under its new key, raw
        assert confirm.auth is not None and confirm.address is not None

        fb = picture(1)
        shown = await b.run(b.image(fb))
        assert isinstance(shown, Ack), shown
        assert shown.displayed_hash == image_hash(fb) == b.label.displayed_hash
        assert b.label.framebuffer == fb
        final = parse_frame(shown.status or b"")
        assert isinstance(final, JobStatus) and (final.job_id, final.result) == (shown.job, 0)
        assert final.auth is not None and final.auth.counter > confirm.auth.counter and shown.frames > 0

        lit = await b.run(b.led())
        assert isinstance(lit, Ack), lit
        assert lit.displayed_hash == image_hash(fb)  # a command's final word says what it shows too
        led = b.label.led_at(b.store.now())
        assert led.on and led.flashing

        # a price change: only the difference travels, based on what the label shows
        fb2 = picture(2)
        again = await b.run(b.image(fb2, base=fb))
        assert isinstance(again, Ack) and b.label.displayed_hash == image_hash(fb2)


async def test_offline_label_is_nacked_unreachable_then_succeeds_when_back() -> None:
    async with bench() as b:
        assert isinstance(await b.run(b.pair()), Ack)
        b.store.take_offline(MAC, 1.5)
        fb = picture(3)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        gone = await b.run(b.image(fb, deadline_s=1))
        assert isinstance(gone, Nack)
        assert (gone.code, gone.retry) == ("unreachable", True)
        assert 0.9 <= loop.time() - t0 < 1.5
        assert "did not answer within 1 s" in gone.reason
        assert gone.status is None
        # the server retries with fresh counters of its own; the label comes back meanwhile
        back = await b.run(b.image(fb, deadline_s=3))
        assert isinstance(back, Ack), back
        assert b.label.displayed_hash == image_hash(fb)


async def test_a_sleeping_label_is_reached_on_its_next_checkin() -> None:
    config = {"always_listening": False, "wake_interval_s": 0.4, "listen_window_s": 0.15}
    async with bench(FaultConfig(seed=2, loss=0.05), **config) as b:
        assert isinstance(await b.run(b.pair()), Ack)
        await asyncio.sleep(0.2)  # past its listen window: asleep until its next check-in
        assert not b.label.listening(b.store.now())
        fb = picture(4)
        shown = await b.run(b.image(fb))
        assert isinstance(shown, Ack), shown
        assert b.label.displayed_hash == image_hash(fb)
        assert b.tracker.labels_heard == 1 and b.tracker.heard >= 1


async def test_wrong_base_hash_is_nacked_base_mismatch() -> None:
    async with bench() as b:
        assert isinstance(await b.run(b.pair()), Ack)
        # the server believes the label shows picture 5; it shows the blank screen
        nack = await b.run(b.image(picture(6), base=picture(5)))
        assert isinstance(nack, Nack)
        assert (nack.code, nack.retry) == ("base_mismatch", False)
        said = parse_frame(nack.status or b"")  # the label's own word on what it shows instead
        assert isinstance(said, JobStatus) and said.displayed_hash == b.label.displayed_hash
        full = await b.run(b.image(picture(6)))
        assert isinstance(full, Ack) and b.label.displayed_hash == image_hash(picture(6))


async def test_low_battery_is_nacked_low_battery() -> None:
    async with bench() as b:
        assert isinstance(await b.run(b.pair()), Ack)
        b.label.set_battery_mv(MIN_DISPLAY_MV - 50)
        nack = await b.run(b.image(picture(7)))
        assert isinstance(nack, Nack)
        assert (nack.code, nack.retry) == ("low_battery", False)


async def test_budget_is_never_exceeded_and_the_transfer_resumes_with_a_new_budget() -> None:
    async with bench() as b:
        assert isinstance(await b.run(b.pair()), Ack)
        fb = noise(8)
        job = b.image(fb, budget=20)
        nack = await b.run(job)
        assert isinstance(nack, Nack)
        assert (nack.code, nack.retry) == ("budget", True)
        assert b.label.flash.rx.highest <= job.counter_limit  # no counter past the reservation
        assert b.label.displayed_hash != image_hash(fb)
        # the label kept the parts it got and says so when it checks in
        b.store.wake_now(MAC)
        await b.tracker.wait(MAC, 1.0)
        heard = b.tracker.latest(MAC)
        assert heard is not None and heard.checkin.status_flags & CheckinFlag.TRANSFER_PENDING
        done = await b.run(b.image(fb))
        assert isinstance(done, Ack), done
        assert b.label.displayed_hash == image_hash(fb)


async def test_a_rerun_after_a_crash_starts_above_every_noted_counter() -> None:
    """A gateway killed mid-job restarts it from the spool: counters continue above the
    highest it noted, so the label (which refuses replays) accepts them."""
    async with bench(FaultConfig(seed=9, loss=0.1)) as b:
        assert isinstance(await b.run(b.pair()), Ack)
        fb = noise(9)
        job = b.image(fb, budget=600)
        noted: list[int] = []

        async def reserve(upto: int) -> None:
            noted.append(upto)
            if len(noted) == 2:
                raise asyncio.CancelledError  # the process dies here, after the second note

        with pytest.raises(asyncio.CancelledError):
            await run_job(b.radio, job, job_key=open_job_key(job, b.gateway_key), checkins=b.tracker, settings=JobSettings(
                reply_timeout_s=0.05, window=4, reserve_chunk=8), reserve=reserve)
        assert noted == sorted(noted) and b.label.flash.rx.highest <= noted[0]
        result = await run_job(b.radio, job, job_key=open_job_key(job, b.gateway_key), checkins=b.tracker,
                               settings=FAST, used_through=noted[-1])
        assert isinstance(result, Ack), result
        assert b.label.flash.rx.highest > noted[-1]
        assert b.label.displayed_hash == image_hash(fb)


async def test_a_pairing_must_go_above_the_factory_counter_the_label_reports() -> None:
    async with bench() as b:
        first = await b.run(b.pair())
        assert isinstance(first, Ack)
        # factory reset: the label is unpaired again, its factory counter is past 1
        reset = await b.run(b.command("factory_reset"))
        assert isinstance(reset, Ack) and not b.label.paired
        b.store.wake_now(MAC)
        assert await b.tracker.wait(MAC, 1.0)
        heard = b.tracker.latest(MAC)
        assert heard is not None and heard.checkin.auth is None and heard.checkin.rx_counter == 1
        # a pair request at a counter the label already used is a replay: refused, never obeyed
        stale = await b.run(b.pair(deadline_s=1, counter=1))
        assert isinstance(stale, Nack) and stale.code == "unreachable" and not b.label.paired
        # the server builds the next one above what the check-in reported
        again = await b.run(b.pair(counter=heard.checkin.rx_counter + 1))
        assert isinstance(again, Ack), again
        assert b.label.paired


async def test_a_command_the_label_refuses_is_nacked() -> None:
    async with bench() as b:
        assert isinstance(await b.run(b.pair()), Ack)
        nack = await b.run(b.command("display_image", display_index=0, image_index=3))
        assert isinstance(nack, Nack)
        assert (nack.code, nack.retry) == ("refused", False)
        assert "invalid_image_index" in nack.reason


async def test_an_unknown_label_is_unreachable_after_one_try_past_the_deadline() -> None:
    async with bench() as b:
        job = b.issuer.pair(job_id=1, mac="02:E5:00:00:00:99", deadline_s=0, factory_key=bytes(16), new_key=KEY)
        nack = await b.run(job)
        assert isinstance(nack, Nack) and nack.code == "unreachable"


async def test_checkin_tracker_coalesces_repeats_but_forwards_changes() -> None:
    async with bench() as b:
        label = b.label

        def wake() -> bytes:
            frame: bytes | None = label.wake(b.store.now())
            assert frame is not None
            return frame

        t = CheckinTracker(coalesce_s=10.0)
        assert t.record(MAC, wake(), -50)  # first heard (it carries REBOOTED)
        assert t.record(MAC, wake(), -50)  # flags changed: news
        assert not t.record(MAC, wake(), -50)  # same content within the window
        assert t.generation(MAC) == 3 and t.coalesced == 1
        label.reboot()
        assert t.record(MAC, wake(), -50)  # REBOOTED again: news
        assert not t.record(MAC, b"\x00garbage", -50) and t.malformed == 1
        assert not t.record("02:E5:00:00:00:02", wake(), -50) and t.malformed == 2  # wrong sender
        heard = t.latest(MAC.lower())
        assert heard is not None and heard.rssi == -50 and heard.checkin.status_flags & CheckinFlag.REBOOTED
        assert t.labels_heard == 1
        assert await t.wait(MAC, 0.01, since=0)  # already came
        assert not await t.wait(MAC, 0.01)


# -- end to end: broker, loopback radio, gateway ---------------------------------------------

STORE, GW = "s1", "gw1"
TOPICS = Topics("esl", STORE)


class Observer:
    """The server's side of the broker in these tests: publishes jobs (signed by its `Issuer`,
    for the gateway whose key is in `data_dir`), collects events."""

    def __init__(self, url: str, data_dir: Path | None = None) -> None:
        key_path = GatewayConfig(store=STORE, gateway_id=GW, data_dir=data_dir or Path("unused")).key_path
        self.issuer = Issuer(store=STORE, gateway=GW,
                             gateway_key=load_or_create_key(key_path)[0].public if data_dir else bytes(32))
        self.mqtt = MqttConnection(MqttSettings.from_url(url), client_id="test-observer", clean_session=True)
        self.events: list[Event] = []
        self.status: list[bytes] = []
        self.changed = asyncio.Event()
        self.mqtt.subscribe(TOPICS.gateway_events(GW), self._event)
        self.mqtt.subscribe(TOPICS.gateway_status(GW), self._status)

    async def _event(self, message: Message) -> None:
        self.events.append(parse_event(message.payload))
        self.changed.set()

    async def _status(self, message: Message) -> None:
        self.status.append(message.payload)
        self.changed.set()

    async def __aenter__(self) -> Self:
        await self.mqtt.__aenter__()
        await asyncio.wait_for(self.mqtt.connected.wait(), 5)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.mqtt.__aexit__(None, None, None)

    def config(self, data_dir: Path, **changes: object) -> GatewayConfig:
        """The gateway's settings, trusting this observer's signing key."""
        return GatewayConfig(store=STORE, gateway_id=GW, data_dir=data_dir, server_key=self.issuer.signer.public,
                             **changes)  # type: ignore[arg-type]

    async def publish(self, job: JobEnvelope) -> None:
        await self.mqtt.publish(TOPICS.gateway_jobs(GW), self.issuer.sign(job), qos=1, timeout=5)

    async def until(self, what: str, check: Callable[[], object], timeout: float = 8.0) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while not check():
            left = end - loop.time()
            assert left > 0, f"timed out waiting for {what}; events: {self.events}, status: {self.status}"
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), min(left, 0.1))

    def results(self, job_id: int) -> list[Ack | Nack]:
        return [e for e in self.events if isinstance(e, (Ack, Nack)) and e.job == job_id]


@asynccontextmanager
async def sim_radio(faults: FaultConfig | None = None, **config: object) -> AsyncIterator[tuple[SimStore, str]]:
    args: dict[str, object] = {"labels": 2, "seed": 4, "always_listening": True, "wake_interval_s": 0.3,
                               "faults": faults or FaultConfig()}
    args.update(config)
    store = SimStore(StoreConfig(**args))  # type: ignore[arg-type]
    async with store, RadioServer(store, "127.0.0.1", 0) as server:
        host, port = server.address
        yield store, f"sim://{host}:{port}"


def jobs_for(store: SimStore, issuer: Issuer) -> tuple[PairJob, ImageJob]:
    pair = issuer.pair(job_id=101, mac=MAC, factory_key=factory_key(store.config.seed, MAC), new_key=KEY)
    update = plan_update(MODEL, picture(11))
    assert update is not None
    image = issuer.image(update, job_id=102, mac=MAC, label_key=KEY, budget=400)
    return pair, image


@pytest.mark.parametrize("broker", ["mosquitto", "amqtt"])
async def test_gateway_pairs_and_shows_an_image_from_mqtt_jobs(broker: str, tmp_path: Path) -> None:
    brokers = {"mosquitto": mosquitto, "amqtt": embedded_broker}
    async with brokers[broker]() as url, sim_radio() as (store, radio_spec), Observer(url, tmp_path) as obs:
        config = obs.config(tmp_path, concurrency=4, status_interval_s=0.2, job=FAST)
        async with Gateway(config, open_radio(radio_spec), MqttSettings.from_url(url)) as gw:
            await obs.until("online", lambda: b"online" in obs.status)
            pair, image = jobs_for(store, obs.issuer)
            # one job per label at a time, in order: the image waits for the pairing, and a delta
            # on top of that image waits for it (run first, it would be refused: base mismatch)
            delta = update_for(picture(12), picture(11))
            assert delta.base_hash == image_hash(picture(11))
            then = obs.issuer.image(delta, job_id=105, mac=MAC, label_key=KEY, budget=400)
            for job in (pair, image, then):
                await obs.publish(job)
            await obs.until("three acks", lambda: obs.results(101) and obs.results(102) and obs.results(105))
            paired, shown, changed = obs.results(101)[0], obs.results(102)[0], obs.results(105)[0]
            assert isinstance(paired, Ack) and paired.status is not None and paired.battery_mv is not None
            assert isinstance(shown, Ack) and shown.displayed_hash == image_hash(picture(11))
            assert isinstance(changed, Ack) and changed.displayed_hash == image_hash(picture(12))
            assert store.label(MAC).displayed_hash == image_hash(picture(12))
            await obs.publish(pair)  # the same job and attempt again, after it ran: a replay
            first = next(e for e in obs.events if isinstance(e, Status))  # published at once on connect
            assert first.protocol == 2
            await obs.until("a status event", lambda: any(isinstance(e, Status) and e.labels_heard
                                                          for e in obs.events))
            status = [e for e in obs.events if isinstance(e, Status)][-1]
            assert status.gateway == GW and status.labels_heard >= 1 and status.protocol == 2
            assert any(isinstance(e, Checkin) and e.mac in store.labels for e in obs.events)
            await obs.until("the replay refused", lambda: len(obs.results(101)) == 2)
            replayed = obs.results(101)[1]  # not run twice: refused, naming why
            assert isinstance(replayed, Nack) and (replayed.code, replayed.retry) == ("replayed", False)
            assert gw.status().spooled == 0
        await obs.until("offline", lambda: obs.status[-1:] == [b"offline"])


async def test_a_malformed_job_is_nacked_bad_job(tmp_path: Path) -> None:
    async with embedded_broker() as url, sim_radio() as (_, radio_spec), Observer(url, tmp_path) as obs:
        async with Gateway(obs.config(tmp_path, job=FAST), open_radio(radio_spec), MqttSettings.from_url(url)):
            await obs.until("online", lambda: b"online" in obs.status)
            job = obs.issuer.command("ping", job_id=102, mac=MAC, label_key=KEY, budget=5)
            frame = job.command.to_bytes()
            other = ImageStatusRequest(transfer_id=1).to_bytes()  # not a command: a bad job
            body = obs.issuer.sign(job)[:-68 - 2 - len(frame)] + len(other).to_bytes(2, "little") + other
            body += obs.issuer.signer.sign(body)
            bad = body + zlib.crc32(body).to_bytes(4, "little")
            with pytest.raises(EnvelopeError, match="expected a ControlCommand"):
                parse_envelope(bad)
            await obs.mqtt.publish(TOPICS.gateway_jobs(GW), bad, qos=1, timeout=5)
            await obs.mqtt.publish(TOPICS.gateway_jobs(GW), b"not an envelope", qos=1, timeout=5)
            await obs.until("the nack", lambda: obs.results(102))
            nack = obs.results(102)[0]
            assert isinstance(nack, Nack) and (nack.code, nack.retry) == ("bad_job", False)


def _gateway_cmd(url: str, radio: str, data: Path, server_key: str) -> list[str]:
    return [sys.executable, "-c", "from eslserver.cli import main; main()", "gateway", "--broker", url,
            "--radio", radio, "--store", STORE, "--id", GW, "--data", str(data), "--concurrency", "4",
            "--status-interval", "60", "--server-public-key", server_key]


async def test_gateway_killed_mid_job_resumes_from_its_spool_and_acks_once(tmp_path: Path) -> None:
    air = FaultConfig(seed=21, loss=0.25, latency_s=0.02)
    async with mosquitto() as url, sim_radio(air) as (store, radio_spec), Observer(url, tmp_path) as obs:
        cmd = _gateway_cmd(url, radio_spec, tmp_path, obs.issuer.signer.public.hex())
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        log_path = tmp_path / "gateway.log"

        def start() -> subprocess.Popen[bytes]:
            with log_path.open("ab") as log_file:
                return subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file)

        proc = start()
        try:
            await obs.until("online", lambda: b"online" in obs.status)
            pair, _ = jobs_for(store, obs.issuer)
            await obs.publish(pair)
            await obs.until("the pairing", lambda: obs.results(101))
            assert isinstance(obs.results(101)[0], Ack)
            label = store.label(MAC)
            fb = noise(12)
            update = plan_update(MODEL, fb)
            assert update is not None
            obs.issuer.heard(obs.results(101)[0])
            image = obs.issuer.image(update, job_id=103, mac=MAC, label_key=KEY, budget=2000, deadline_s=20)
            await obs.publish(image)
            loop = asyncio.get_running_loop()
            end = loop.time() + 8
            while not (label.flash.transfer is not None and 0 < label.flash.transfer.missing_count):
                assert loop.time() < end and label.displayed_hash != image_hash(fb), "transfer never seen mid-way"
                await asyncio.sleep(0.002)
            proc.kill()  # SIGKILL in the middle of the transfer
            proc.wait(5)
            rejected = label.session.rejected
            await obs.until("the last will", lambda: obs.status[-1:] == [b"offline"])
            assert not obs.results(103) and label.displayed_hash != image_hash(fb)
            # while it is down, the broker keeps new jobs for its persistent session
            await obs.publish(obs.issuer.command("ping", job_id=104, mac=MAC, label_key=KEY, budget=10,
                                                 deadline_s=20))
            proc = start()
            await obs.until("the image and ping acks", lambda: obs.results(103) and obs.results(104), timeout=15)
            await asyncio.sleep(0.3)  # time for a duplicate to show up, if there were one
            assert [type(r) for r in obs.results(103)] == [Ack]
            assert [type(r) for r in obs.results(104)] == [Ack]
            assert label.displayed_hash == image_hash(fb)
            assert label.session.rejected == rejected  # no frame refused: no counter was reused
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
        assert proc.returncode == 0, log_path.read_text()
        assert "stopped: 2 acks, 0 nacks" in log_path.read_text()


# -- the spool, the radio spec, the command line ----------------------------------------------------


async def test_spool_keeps_jobs_across_a_reopen_and_recognises_redeliveries(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite3"
    big = 2**64 - 1  # job ids are u64: stored in SQLite's signed 64-bit integers
    async with JobSpool(path) as spool:
        assert await spool.put(big, 0, b"first", used_through=130) is PutResult.NEW
        assert await spool.put(5, 1, b"second") is PutResult.NEW
        assert await spool.put(big, 0, b"first") is PutResult.DUPLICATE
        assert await spool.put(big, 1, b"a retry is another delivery") is PutResult.NEW
        await spool.note_used(big, 0, 200)
        await spool.note_used(big, 0, 150)  # never lowered
        await spool.finish(5, 1)
        assert await spool.count() == 2
    async with JobSpool(path) as spool:  # a restarted gateway
        pending = await spool.pending()
        assert [(j.job_id, j.attempt, j.envelope, j.used_through) for j in pending] == [
            (big, 0, b"first", 200), (big, 1, b"a retry is another delivery", 0)]
        assert pending[0].received_at.tzinfo is not None
        assert await spool.put(5, 1, b"second") is PutResult.DONE
    async with JobSpool(path, keep_done_s=-1) as spool:  # tombstones expire
        assert await spool.put(5, 1, b"second") is PutResult.NEW


async def test_spool_errors_name_the_file(tmp_path: Path) -> None:
    not_a_db = tmp_path / "junk.sqlite3"
    not_a_db.write_bytes(b"this is not a database" * 100)
    with pytest.raises(SpoolError, match="junk.sqlite3"):
        async with JobSpool(not_a_db):
            pass
    with pytest.raises(SpoolError, match="is not open"):
        await JobSpool(tmp_path / "x.sqlite3").put(1, 0, b"")


def test_open_radio_names_what_it_accepts() -> None:
    radio = open_radio("sim://127.0.0.1:7450")
    assert isinstance(radio, LoopbackRadio) and (radio.host, radio.port) == ("127.0.0.1", 7450)
    assert isinstance(open_radio("sim://[::1]:7450"), LoopbackRadio)
    for bad in ("sim://nohost", "sim://:80", "sim://h:0", "sim://h:99999", "udp://h:1", "BLE", ""):
        with pytest.raises(RadioSpecError, match="radio: expected sim://HOST:PORT or ble"):
            open_radio(bad)


def test_gateway_config_is_validated_once(tmp_path: Path) -> None:
    config = GatewayConfig(store="s1", gateway_id="gw1", data_dir=tmp_path)
    assert config.topics.gateway_jobs(config.gateway_id) == "esl/s1/gateway/gw1/jobs"
    assert config.client_id == "esl-gateway-s1-gw1"
    cases: list[tuple[dict[str, object], str]] = [
                            ({"store": "a/b"}, "store must be a non-empty MQTT topic level"),
                            ({"gateway_id": "#"}, "gateway_id must be"),
                            ({"concurrency": 0}, "concurrency must be an int in 1..10000, got 0"),
                            ({"status_interval_s": 0}, "status_interval_s must be > 0")]
    for change, message in cases:
        args: dict[str, object] = {"store": "s1", "gateway_id": "gw1", "data_dir": tmp_path, **change}
        with pytest.raises(GatewayConfigError, match=message):
            GatewayConfig(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize(("args", "message"), [
    (["--radio", "wifi"], "radio: expected sim://HOST:PORT or ble, got 'wifi'"),
    (["--broker", "http://x"], "broker_url: expected mqtt://host:port or mqtts://host:port, got 'http://x'"),
    (["--id", "a/b"], "gateway_id must be a non-empty MQTT topic level"),
])
def test_cli_refuses_bad_options(args: list[str], message: str, tmp_path: Path) -> None:
    base = {"--broker": "mqtt://127.0.0.1:1", "--radio": "sim://127.0.0.1:1", "--store": "s1", "--id": "gw1",
            "--data": str(tmp_path)}
    base.update(dict(zip(args[::2], args[1::2])))
    result = CliRunner().invoke(app, ["gateway", *[x for kv in base.items() for x in kv]])
    assert result.exit_code == 2
    assert message in re.sub(r"[\s│╭╮╰╯─]+", " ", result.output)


def test_cli_reports_a_radio_that_is_not_there(tmp_path: Path) -> None:
    port = free_port()
    result = CliRunner().invoke(app, ["gateway", "--broker", "mqtt://127.0.0.1:1", "--radio",
                                      f"sim://127.0.0.1:{port}", "--store", "s1", "--id", "gw1",
                                      "--data", str(tmp_path)])
    assert result.exit_code == 1
    assert f"no loopback radio at 127.0.0.1:{port}" in result.output


async def test_spooled_jobs_run_while_the_broker_is_down_and_are_acked_when_it_is_back(tmp_path: Path) -> None:
    async with sim_radio() as (store, radio_spec):
        issuer = Issuer(store=STORE, gateway=GW, gateway_key=load_or_create_key(
            GatewayConfig(store=STORE, gateway_id=GW, data_dir=tmp_path).key_path)[0].public)
        pair, image = jobs_for(store, issuer)
        config = GatewayConfig(store=STORE, gateway_id=GW, data_dir=tmp_path, job=FAST,
                               server_key=issuer.signer.public)
        async with JobSpool(config.spool_path) as spool:  # what a gateway killed earlier left behind
            for job in (pair, image):
                assert await spool.put(job.job_id, job.attempt, issuer.sign(job)) is PutResult.NEW
        port = free_port()
        gateway = Gateway(config, open_radio(radio_spec), MqttSettings.from_url(f"mqtt://127.0.0.1:{port}"),
                          reconnect_max_s=0.5)
        async with gateway:
            loop = asyncio.get_running_loop()
            end = loop.time() + 5
            while store.label(MAC).displayed_hash != image_hash(picture(11)):
                assert loop.time() < end, "the spooled jobs did not run without the broker"
                await asyncio.sleep(0.02)
            assert gateway.status().spooled == 2  # both jobs done; their acks wait for the broker
            async with embedded_broker(port) as url, Observer(url) as obs:
                await obs.until("both acks", lambda: obs.results(101) and obs.results(102))
                assert [type(obs.results(j)[0]) for j in (101, 102)] == [Ack, Ack]
                await obs.until("the spool to empty", lambda: gateway.status().spooled == 0)
