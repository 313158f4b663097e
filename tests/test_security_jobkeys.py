"""Label keys never leave the server; the label's own word decides the shelf truth (issue 13).

The label side (firmware_proto's `LabelSession`, what the simulator and the BLE test label
run): a job key opens exactly one job's counter range, a ticket cannot be replayed, the label
ends each job with a status frame under its long-term key. The server side, with a real broker,
server, gateway and simulated labels (tests/pipeline_shop.py) and an attacker client on the
broker: sniffing every topic yields no label or factory key; a forged ack changes nothing; a
key-less check-in of a keyed label does not re-pair it, a technician's reset does.
"""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eslserver.gateway.events import Checkin
from eslserver.mqtt import MqttConnection, MqttSettings
from eslserver.server import SYSTEM
from firmware_proto.auth import Direction, FrameKey, derive_factory_key, seal, verify
from firmware_proto.envelope import ImageJob, credentials, parse_envelope
from firmware_proto.errors import AuthError, ProtocolError
from firmware_proto.frames import (
    Auth,
    CheckinFlag,
    ControlCommand,
    ImageStatusRequest,
    JobStatus,
    JobTicket,
    address_bytes,
    parse_frame,
)
from firmware_proto.frames import Checkin as CheckinFrame
from firmware_proto.gateway import GatewaySession
from firmware_proto.jobkeys import derive_job_key, make_ticket
from firmware_proto.label import FrameRejected, LabelFlash, LabelSession, LedChanged, Paired
from firmware_proto.models import get_model
from firmware_proto.trust import GatewayKey
from tests.brokers import mosquitto
from tests.pipeline_shop import Shop, collect, shop

MODEL = get_model("2.9-bwry")
MAC = "02:E5:00:00:00:01"
ADDRESS = address_bytes(MAC)
LABEL_KEY = bytes(range(100, 116))
FACTORY = derive_factory_key(b"test-factory", MAC)
LED = {"led_index": 0, "color_brightness": 0xC3, "flash_pattern": 0xFF, "off_period": 2, "on_period": 2,
       "repeat": 5}


# -- the codecs of the two new frames ------------------------------------------------------------

u8, u32, u64 = st.integers(0, 255), st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1)
tags = st.binary(min_size=4, max_size=4)


@st.composite
def tickets(draw: st.DrawFn) -> JobTicket:
    first = draw(st.integers(1, 2**32 - 1))
    last = draw(st.integers(first, 2**32 - 1))
    auth = draw(st.none() | tags.map(lambda t: Auth(first, t)))
    return JobTicket(job_id=draw(u64), attempt=draw(u8), first=first, last=last, seq=draw(u8), auth=auth,
                     address=draw(st.none() | st.binary(min_size=6, max_size=6)), ack_req=draw(st.booleans()))


statuses = st.builds(
    JobStatus, job_id=u64, attempt=u8, result=u8, displayed_hash=st.binary(min_size=8, max_size=8),
    battery_mv=st.integers(0, 0xFFFF), temperature_c=st.integers(-128, 127), rssi=st.integers(-128, 127),
    rx_counter=u32, seq=u8, address=st.binary(min_size=6, max_size=6),
    auth=st.none() | st.builds(Auth, u32, tags))


@settings(max_examples=300)
@given(tickets() | statuses)
def test_ticket_and_status_frames_round_trip(frame: JobTicket | JobStatus) -> None:
    data = frame.to_bytes()
    assert parse_frame(data) == frame and type(frame).from_bytes(data) == frame


@settings(max_examples=300)
@given(st.sampled_from([0x40, 0x41]), st.binary(max_size=60), st.sampled_from([0x10, 0x11, 0x12, 0x13]))
def test_any_body_of_the_new_types_decodes_or_raises_only_protocol_error(ftype: int, body: bytes,
                                                                        header: int) -> None:
    from firmware_proto.crc import crc16

    raw = bytes((header, ftype, 0)) + body
    try:
        frame = parse_frame(raw + crc16(raw).to_bytes(2, "little"))
    except ProtocolError:
        return
    assert isinstance(frame, (JobTicket, JobStatus))


def test_a_ticket_names_its_range_consistently() -> None:
    with pytest.raises(ProtocolError, match="1 <= first <= last"):
        JobTicket(job_id=1, attempt=0, first=5, last=4)
    with pytest.raises(ProtocolError, match="authenticated at counter 6, but its range starts at 5"):
        JobTicket(job_id=1, attempt=0, first=5, last=9, auth=Auth(6, bytes(4)))
    with pytest.raises(ProtocolError, match="job_status: address is required"):
        JobStatus(job_id=1, attempt=0, result=0, displayed_hash=bytes(8), battery_mv=0, temperature_c=0, rssi=0,
                  rx_counter=0)


def test_job_keys_are_bound_to_label_job_attempt_and_range() -> None:
    key = derive_job_key(LABEL_KEY, MAC, 7, 0, 11, 20)
    assert len(key) == 16 and key != LABEL_KEY
    others = {derive_job_key(LABEL_KEY, "02:E5:00:00:00:02", 7, 0, 11, 20), derive_job_key(LABEL_KEY, MAC, 8, 0, 11, 20),
              derive_job_key(LABEL_KEY, MAC, 7, 1, 11, 20), derive_job_key(LABEL_KEY, MAC, 7, 0, 12, 20),
              derive_job_key(LABEL_KEY, MAC, 7, 0, 11, 21), derive_job_key(bytes(16), MAC, 7, 0, 11, 20)}
    assert key not in others and len(others) == 6
    assert derive_job_key(LABEL_KEY, MAC, 7, 0, 11, 20) == key  # the server and the label agree


# -- the label side --------------------------------------------------------------------------------


class Shelf:
    """One paired label (its flash), the server's label key and a gateway holding job keys only."""

    def __init__(self) -> None:
        self.flash = LabelFlash.new(MODEL, FACTORY)
        self.label = LabelSession(MODEL, MAC, self.flash)
        pairing = GatewaySession(MAC).pair(FACTORY, LABEL_KEY)
        assert self.label.receive(pairing) and self.label.paired
        self.label.pop_events()
        self.tx = 0  # the server's reservation

    def job(self, job_id: int, budget: int = 10, attempt: int = 0) -> tuple[bytes, bytes, GatewaySession]:
        """(ticket, job key, a gateway session sealing with the job key after the ticket)."""
        first, last = self.tx + 1, self.tx + budget
        self.tx = last
        key = derive_job_key(LABEL_KEY, MAC, job_id, attempt, first, last)
        return make_ticket(LABEL_KEY, MAC, job_id, attempt, first, last), key, GatewaySession(MAC, key,
                                                                                               tx_counter=first)

    def rejected(self) -> list[str]:
        return [e.reason for e in self.label.pop_events() if isinstance(e, FrameRejected)]

    def led(self) -> ControlCommand:
        return ControlCommand.make("led_control", **LED)


def test_a_job_runs_under_its_key_and_ends_with_the_labels_own_word() -> None:
    shelf = Shelf()
    ticket, key, gw = shelf.job(1)
    assert shelf.label.receive(ticket) == [] and shelf.flash.job is not None
    replies = shelf.label.receive(gw.seal(shelf.led()))
    assert len(replies) == 2 and shelf.label.led is not None
    answer = gw.open(replies[0])  # the answer is under the job key: the gateway can read it
    assert answer.name == "led_state"  # type: ignore[attr-defined]
    final = parse_frame(replies[1])
    assert isinstance(final, JobStatus) and (final.job_id, final.attempt, final.result) == (1, 0, 0)
    assert final.address == ADDRESS and final.displayed_hash == shelf.label.displayed_hash
    # authenticated with the label's long-term key, which the gateway does not have
    verify(final, FrameKey(LABEL_KEY), ADDRESS, Direction.FROM_LABEL)
    with pytest.raises(AuthError):
        verify(final, FrameKey(key), ADDRESS, Direction.FROM_LABEL)
    assert shelf.flash.job is None  # the job key is forgotten


def test_a_leaked_job_key_opens_nothing_outside_its_range() -> None:
    shelf = Shelf()
    ticket, key, _ = shelf.job(1, budget=10)  # counters 1..10; the ticket uses 1
    shelf.label.receive(ticket)
    for counter in (1, 11, 12, 10_000):  # the ticket's own counter, and past the range
        frame = seal(shelf.led(), FrameKey(key), ADDRESS, Direction.TO_LABEL, counter)
        assert shelf.label.receive(frame) == []
        assert shelf.label.led is None and shelf.rejected(), counter
    assert shelf.flash.rx.highest == 1  # nothing past the ticket was accepted


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 2**32 - 1))
def test_a_job_key_never_opens_a_counter_outside_first_to_last(counter: int) -> None:
    shelf = Shelf()
    ticket, key, _ = shelf.job(1, budget=50)  # 1..50
    shelf.label.receive(ticket)
    replies = shelf.label.receive(seal(shelf.led(), FrameKey(key), ADDRESS, Direction.TO_LABEL, counter))
    assert (shelf.label.led is not None) == (1 < counter <= 50)
    assert bool(replies) == (1 < counter <= 50)


def test_a_job_key_opens_nothing_after_its_job_or_in_another_job() -> None:
    shelf = Shelf()
    old_ticket, old_key, old = shelf.job(1)
    shelf.label.receive(old_ticket)
    new_ticket, _, _ = shelf.job(2)
    shelf.label.receive(new_ticket)  # another job: the old key is forgotten
    stale = old.seal(shelf.led())
    assert shelf.label.receive(stale) == [] and shelf.label.led is None
    assert shelf.rejected()
    # even counters inside the new job's range do not open under the old key
    inside = seal(shelf.led(), FrameKey(old_key), ADDRESS, Direction.TO_LABEL, 15)
    assert shelf.label.receive(inside) == [] and shelf.label.led is None


def test_a_replayed_ticket_is_refused() -> None:
    shelf = Shelf()
    first, _, gw = shelf.job(1)
    shelf.label.receive(first)
    shelf.label.receive(gw.seal(shelf.led()))  # the job runs and ends
    shelf.label.pop_events()
    assert shelf.label.receive(first) == [] and shelf.flash.job is None  # replayed after the job
    assert any("replay" in r for r in shelf.rejected())
    second, _, _ = shelf.job(2)
    shelf.label.receive(second)
    assert shelf.label.receive(first) == [] and shelf.flash.job is not None and shelf.flash.job.job_id == 2
    assert any("replay" in r for r in shelf.rejected())


def test_a_ticket_not_made_with_the_label_key_is_refused() -> None:
    shelf = Shelf()
    forged = make_ticket(bytes(16), MAC, 9, 0, 100, 200)  # a key somebody guessed, or a job key
    assert shelf.label.receive(forged) == [] and shelf.flash.job is None and shelf.rejected()
    plain = JobTicket(job_id=9, attempt=0, first=100, last=200).to_bytes()
    assert shelf.label.receive(plain) == [] and shelf.flash.job is None and shelf.rejected()


def test_an_ended_job_repeats_its_final_word_and_obeys_nothing() -> None:
    shelf = Shelf()
    ticket, _, gw = shelf.job(1)
    shelf.label.receive(ticket)
    final = shelf.label.receive(gw.seal(shelf.led()))[-1]
    shelf.label.led = None
    again = shelf.label.receive(gw.seal(shelf.led()))  # the gateway did not hear the answer
    assert again == [final] and shelf.label.led is None  # the same bytes; no second LED command
    asked = shelf.label.receive(gw.seal(ImageStatusRequest(transfer_id=3)))
    assert asked == [final]


def test_a_label_that_reboots_mid_job_finishes_it() -> None:
    shelf = Shelf()
    ticket, _, gw = shelf.job(1)
    shelf.label.receive(ticket)
    rebooted = LabelSession(MODEL, MAC, shelf.flash)  # RAM gone, flash kept
    replies = rebooted.receive(gw.seal(shelf.led()))
    assert len(replies) == 2 and isinstance(parse_frame(replies[1]), JobStatus)


def test_a_job_that_unpairs_the_label_says_so_before_the_key_goes() -> None:
    shelf = Shelf()
    ticket, _, gw = shelf.job(1)
    shelf.label.receive(ticket)
    replies = shelf.label.receive(gw.seal(ControlCommand.make("unassociate")))
    final = parse_frame(replies[-1])
    assert isinstance(final, JobStatus) and not shelf.label.paired
    verify(final, FrameKey(LABEL_KEY), ADDRESS, Direction.FROM_LABEL)


def test_the_same_pair_request_again_is_confirmed_not_obeyed() -> None:
    flash = LabelFlash.new(MODEL, FACTORY)
    label = LabelSession(MODEL, MAC, flash)
    request = GatewaySession(MAC).pair(FACTORY, LABEL_KEY)
    first = label.receive(request)
    assert label.paired and [type(e) for e in label.pop_events()] == [Paired]
    second = label.receive(request)  # its check-in was lost: the gateway sends the same bytes again
    assert len(second) == 1 and isinstance(parse_frame(second[0]), CheckinFrame) and second != first
    assert label.pop_events() == [] and flash.label_key == LABEL_KEY
    other = GatewaySession(MAC, factory_tx_counter=0).pair(FACTORY, bytes(16))  # counter 1 again, another key
    assert label.receive(other) == [] and flash.label_key == LABEL_KEY  # a replayed counter: refused


# -- the server side, with an attacker on the broker ------------------------------------------------

MILK = {"sku": "100100", "name": "Mleko 3,2% 1 l", "price": "3.49", "seq": 1}


async def until(what: str, check: Callable[[], Awaitable[bool] | bool], timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await _value(check()):
        assert loop.time() < deadline, f"waited {timeout} s for {what}"
        await asyncio.sleep(0.05)


async def _value(result: Awaitable[bool] | bool) -> bool:
    return await result if inspect.isawaitable(result) else bool(result)


async def row(s: Shop, mac: str) -> dict[str, object]:
    found = await s.server.db.read_one("SELECT label_key, tx_counter, rx_highest, gateway, displayed_hash, state, "
                                       "key_lost_at FROM labels WHERE mac = ?", (mac,))
    assert found is not None
    return dict(found)


def metric(s: Shop, name: str, **labels: str) -> float:
    return s.server.metrics.registry.get_sample_value(name, labels) or 0.0


async def test_sniffing_every_topic_yields_no_label_or_factory_key(tmp_path: Path) -> None:
    async with mosquitto() as url:
        sniffer, seen = await collect(url, "esl/#")
        async with sniffer:
            await sniffer.connected.wait()
            async with shop(tmp_path, url, labels=3) as s:
                await s.seed([MILK, {**MILK, "sku": "100200", "price": "5.99"}])
                await s.bind({mac: ("100100", "100200", "100100")[i] for i, mac in enumerate(s.macs)})
                await s.converged()  # three pairings, three images
                await s.server.labels.flash(s.macs[0], seconds=2, actor=SYSTEM)  # a command job
                await s.publish_prices({"sku": "100100", "price": "2.99", "seq": 2})  # region updates
                await s.converged()

                async def all_done() -> bool:
                    return await s.server.db.read_one("SELECT 1 FROM jobs WHERE state IN ('queued', 'sent')") is None

                await until("every job done", all_done)
                keys = {mac: s.server.vault.open_label_key(s.settings.store, mac,  # sealed at rest: the clear key
                                                           bytes((await row(s, mac))["label_key"]))  # type: ignore[arg-type]
                        for mac in s.macs}
                gateway_key: GatewayKey = s.gateway.key
        jobs = [m for m in seen if m.topic.endswith("/jobs")]
        assert len(jobs) >= 9, [m.topic for m in seen]  # 3 pairings, 5 images, a command
        secret = s.settings.label_factory_secret
        factory = {mac: derive_factory_key(secret, mac) for mac in s.macs}
        everything = b"".join(m.payload for m in seen)
        for mac in s.macs:
            assert keys[mac] not in everything and keys[mac].hex().encode() not in everything, mac
            assert factory[mac] not in everything and factory[mac].hex().encode() not in everything, mac
        # what the gateway itself learns (its own private key opens them): job keys, one range each
        opened = 0
        for message in jobs:
            job = parse_envelope(message.payload)
            if isinstance(job, ImageJob):
                from firmware_proto.envelope import open_job_key

                job_key = open_job_key(job, gateway_key)
                assert job_key != keys[job.mac]
                assert job_key == derive_job_key(keys[job.mac], job.mac, job.job_id, job.attempt, job.first,
                                                 job.counter_limit)
                opened += 1
        assert opened >= 4


async def _forge(url: str, topic: str, payload: bytes) -> None:
    async with MqttConnection(MqttSettings.from_url(url), client_id="attacker", clean_session=True) as mqtt:
        await mqtt.connected.wait()
        await mqtt.publish(topic, payload, qos=1, timeout=5)


async def test_a_forged_ack_changes_nothing_on_the_server(tmp_path: Path) -> None:
    async with mosquitto() as url:
        sniffer, seen = await collect(url, "esl/+/gateway/+/events")
        async with sniffer, shop(tmp_path, url, labels=1, job_deadline_s=6) as s:
            await sniffer.connected.wait()
            await s.seed([MILK])
            mac = s.macs[0]
            await s.bind({mac: MILK["sku"]})
            shown = (await s.converged())[mac]
            acks = [json.loads(m.payload) for m in seen if json.loads(m.payload)["type"] == "ack"]
            old_status = bytes.fromhex(acks[-1]["status"])  # a genuine final word, of an earlier job

            s.store.take_offline(mac, 5.0)  # the label is away: the next job stays out
            await s.publish_prices({"sku": MILK["sku"], "price": "1.99", "seq": 2})

            async def job_out() -> bool:
                return await s.server.db.read_one("SELECT 1 FROM jobs WHERE mac = ? AND kind = 'image' AND "
                                                  "state = 'sent'", (mac,)) is not None

            await until("the image job to be out", job_out)
            job = await s.server.db.read_one("SELECT id, attempts, gateway FROM jobs WHERE mac = ? AND "
                                             "state = 'sent'", (mac,))
            assert job is not None
            before = await row(s, mac)
            expected = (await s.label(mac))["expected_hash"]
            topic = s.server.topics.gateway_events("gw1")
            base = {"type": "ack", "job": job["id"], "mac": mac, "at": "2026-01-01T00:00:00Z", "frames": 3,
                    "displayed_hash": expected, "attempt": min(255, job["attempts"])}
            forged = [
                ("missing", {**base, "status": None, "tx_counter": 4294967295, "rx_highest": 4294967295}),
                ("wrong_frame", {**base, "status": old_status.hex()}),
                ("malformed", {**base, "status": "00ff"}),
            ]
            for reason, payload in forged:
                count = metric(s, "esl_acks_unconfirmed_total", reason=reason)
                await _forge(url, topic, json.dumps(payload).encode())

                async def counted(reason: str = reason, count: float = count) -> bool:
                    return metric(s, "esl_acks_unconfirmed_total", reason=reason) > count

                await until(f"the {reason} ack to be counted", counted)
                after = await row(s, mac)
                for field in ("label_key", "rx_highest", "gateway", "displayed_hash"):
                    assert after[field] == before[field], (reason, field)
                # the transmit counter moves only by the server's own reservations (the job is
                # retried as unconfirmed), never to what an ack says
                assert before["tx_counter"] <= after["tx_counter"] < 2**20, reason  # type: ignore[operator]
                assert (await s.label(mac))["state"] != "ok" and after["displayed_hash"] == shown["displayed_hash"]
            # an ack from another (registered) gateway for the same job: not even considered
            await s.server.add_identity("gateway", "evil")
            count = metric(s, "esl_acks_unconfirmed_total", reason="wrong_gateway")
            await _forge(url, s.server.topics.gateway_events("evil"),
                         json.dumps({**base, "status": old_status.hex()}).encode())
            await until("the foreign ack to be counted",
                        lambda: metric(s, "esl_acks_unconfirmed_total", reason="wrong_gateway") > count)
            assert (await row(s, mac))["gateway"] == "gw1"
            # the genuine ack of the earlier job, replayed word for word: that job is over, nothing moves
            await _forge(url, topic, json.dumps(acks[-1]).encode())
            await asyncio.sleep(0.3)
            assert {k: v for k, v in (await row(s, mac)).items() if k != "tx_counter"} == \
                {k: v for k, v in before.items() if k != "tx_counter"}
            # the label comes back: the job goes on with the server's own counters, and works
            states = await s.converged(timeout=40)
            assert states[mac]["displayed_hash"] == expected
            final = await row(s, mac)
            assert int(final["tx_counter"]) < 2**31 and int(final["rx_highest"]) < 2**31  # type: ignore[call-overload]


async def test_a_keyless_checkin_of_a_keyed_label_does_not_repair_it_a_reset_does(tmp_path: Path) -> None:
    async with mosquitto() as url, shop(tmp_path, url, labels=1) as s:
        await s.seed([MILK])
        mac = s.macs[0]
        await s.bind({mac: MILK["sku"]})
        await s.converged()
        before = await row(s, mac)
        # anybody can send a key-less check-in in the label's name
        plain = CheckinFrame(address=address_bytes(mac), model_id=MODEL.model_id, firmware_version=0x100,
                             status_flags=CheckinFlag.REBOOTED, displayed_hash=bytes(8), battery_mv=3000,
                             temperature_c=20, rssi=-50, rx_counter=0).to_bytes()
        forged = Checkin(mac=mac, rssi=-40, frame=plain).to_json()
        await s.server.add_identity("gateway", "evil")  # registered: an unregistered one is not even heard
        for _ in range(3):
            await _forge(url, s.server.topics.gateway_events("evil"), forged)
        await until("the reset to be noted", lambda: metric(s, "esl_labels_reset_total") >= 1)
        await asyncio.sleep(0.3)
        after = await row(s, mac)
        assert after["label_key"] == before["label_key"] and after["gateway"] == "gw1"  # kept, not moved
        assert after["key_lost_at"] is not None and metric(s, "esl_labels_reset_total") == 1  # once, not thrice
        pairings = await s.server.db.read("SELECT id FROM jobs WHERE mac = ? AND kind = 'pair'", (mac,))
        assert len(pairings) == 1  # only the first pairing ever
        events = await s.server.db.read("SELECT kind FROM events WHERE mac = ? AND kind = 'key_lost'", (mac,))
        assert len(events) == 1
        assert (await s.label(mac))["state"] == "ok"  # the shelf truth is untouched

        # a technician's reset (the API `esl pair --reset` calls): pairs it again, audited
        await s.server.labels.reset(mac, actor=SYSTEM)
        await until("a new key", lambda: _new_key(s, mac, before["label_key"]))
        await s.converged()
        audit = await s.server.db.read("SELECT action FROM audit WHERE target = ?", (mac,))
        assert "label.reset" in [r["action"] for r in audit]
        sealed = bytes((await row(s, mac))["label_key"])  # type: ignore[arg-type]
    assert s.store.labels[mac].flash.label_key == s.server.vault.open_label_key(s.settings.store, mac, sealed)


async def _new_key(s: Shop, mac: str, old: object) -> bool:
    now = (await row(s, mac))["label_key"]
    return now is not None and now != old


def test_the_envelope_key_material_is_sealed_to_one_gateway() -> None:
    gw = GatewayKey.generate()
    creds = credentials(label_key=LABEL_KEY, gateway_key=gw.public, job_id=1, attempt=0, mac=MAC, store="s",
                        gateway="g", first=1, last=9)
    assert LABEL_KEY not in creds["sealed_key"] and derive_job_key(LABEL_KEY, MAC, 1, 0, 1, 9) not in creds["sealed_key"]
    assert LABEL_KEY not in creds["ticket"]
    assert isinstance(parse_frame(creds["ticket"]), JobTicket)


def test_events_of_the_label_are_not_needed_for_led_state() -> None:
    """LedChanged still reports what a job's command did (the simulator drives its LED from it)."""
    shelf = Shelf()
    ticket, _, gw = shelf.job(1)
    shelf.label.receive(ticket)
    shelf.label.receive(gw.seal(shelf.led()))
    assert any(isinstance(e, LedChanged) for e in shelf.label.pop_events())



async def test_a_gateway_killed_mid_job_cannot_lock_the_label_out_for_its_successor(tmp_path: Path) -> None:
    """gw1 dies (kill -9) while the label holds its job key; the server hands the job to gw2,
    whose ticket (a new attempt, counters above everything reserved before) the label takes.
    Whatever gw1 did or reported, the label stays reachable: this job and the next arrive."""
    from eslserver.server import Server
    from simulator.faults import FaultConfig
    from simulator.radio_server import RadioServer
    from simulator.store import SimStore, StoreConfig
    from tests.pipeline_shop import shop_settings
    from tests.processes import GATEWAY_READY, Processes, esl_argv, trust_gateway

    async with mosquitto() as url:
        settings = shop_settings(tmp_path / "data", url, job_deadline_s=8)
        async with Server(settings) as server:
            store = SimStore(StoreConfig(labels=1, always_listening=True, wake_interval_s=1.0,
                                         faults=FaultConfig(seed=3, loss=0.3, latency_s=0.01)))
            async with store, RadioServer(store, "127.0.0.1", 0) as radio, Processes(tmp_path / "procs") as procs:
                host, port = radio.address
                mac = next(iter(store.labels))
                label = store.labels[mac]

                async def start(name: str) -> None:
                    trust = await trust_gateway(tmp_path / "data", tmp_path / name, settings.store, name)
                    child = procs.spawn(name, esl_argv("gateway", "--broker", url, "--radio", f"sim://{host}:{port}",
                                                       "--store", settings.store, "--id", name, "--data",
                                                       str(tmp_path / name), "--status-interval", "1", *trust))
                    await child.start(ready=GATEWAY_READY)

                async def shown(price: str) -> None:
                    async def done() -> bool:
                        st = await server.labels.state(mac)
                        return (st is not None and st["state"] == "ok" and st["expected_hash"] is not None
                                and label.displayed_hash.hex() == st["expected_hash"])

                    await until(f"the label to show {price}", done, timeout=60)

                await start("gw1")
                assert not (await server.ingest.submit([MILK], source="test", actor=SYSTEM)).errors
                await server.labels.bind(mac, MILK["sku"], actor=SYSTEM, model=label.model.name)
                await shown(MILK["price"])

                assert not (await server.ingest.submit([{**MILK, "price": "2.49", "seq": 2}], source="test",
                                                       actor=SYSTEM)).errors
                loop = asyncio.get_running_loop()
                deadline = loop.time() + 30
                while label.flash.job is None:  # a lossy radio: the job takes rounds, the key is held meanwhile
                    assert loop.time() < deadline, "gw1 never got mid-job"
                    await asyncio.sleep(0.002)
                dead = label.flash.job
                procs.children[0].kill()  # kill -9: no ack, no nack, its spool left behind
                await start("gw2")
                await shown("2.49")
                assert label.flash.job is None and label.flash.ended is not None
                assert label.flash.ended.first > dead.last  # the successor's range is above the dead one's
                state = await server.labels.state(mac)
                assert state is not None and state["gateway"] == "gw2"

                assert not (await server.ingest.submit([{**MILK, "price": "2.29", "seq": 3}], source="test",
                                                       actor=SYSTEM)).errors
                await shown("2.29")  # and the next job too


def test_an_ended_jobs_final_word_is_repeated_a_bounded_number_of_times() -> None:
    from firmware_proto.jobkeys import MAX_REPEATS

    shelf = Shelf()
    ticket, _, gw = shelf.job(1, budget=40)
    shelf.label.receive(ticket)
    final = shelf.label.receive(gw.seal(shelf.led()))[-1]
    answers = [shelf.label.receive(gw.seal(ImageStatusRequest(transfer_id=1))) for _ in range(MAX_REPEATS + 5)]
    assert answers[:MAX_REPEATS] == [[final]] * MAX_REPEATS and answers[MAX_REPEATS:] == [[]] * 5
