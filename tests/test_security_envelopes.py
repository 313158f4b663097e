"""Only the server gives a gateway work: signed envelopes, sealed job keys, protocol versions.

An attacker with access to the broker (any client that can publish on a gateway's job topic)
tries to make a gateway act: unsigned, mis-signed, replayed, expired, misaddressed envelopes,
envelopes whose job key is sealed to another gateway, a rogue pairing. Each is refused with a
nack naming why, and the label (a simulated one behind the loopback radio) is untouched: same
key, same screen, same counters. The server changes nothing for those nacks, and it refuses a
gateway too old for signed envelopes. The keys are made and registered by commands, 0600.
"""

from __future__ import annotations

import asyncio
import json
import logging
import stat
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from eslserver.cli import app
from eslserver.gateway.bridge import Gateway, GatewayConfig, open_radio
from eslserver.gateway.conversation import JobSettings
from eslserver.gateway.events import Ack, Event, Nack, Status, parse_event
from eslserver.gateway.identity import load_or_create_key
from eslserver.mqtt import Message, MqttConnection, MqttSettings
from eslserver.store import gateways as gateway_rows
from eslserver.topics import Topics
from firmware_proto.envelope import EnvelopeError, JobEnvelope, verify_envelope
from firmware_proto.trust import GatewayKey, SigningKey
from simulator.label import SimLabel, factory_key
from simulator.radio_server import RadioServer
from simulator.store import SimStore, StoreConfig, label_address
from tests.brokers import embedded_broker, mosquitto
from tests.job_issuer import Issuer, now_ms
from tests.pipeline_shop import shop
from tests.test_security_jobkeys import MILK, metric, until

STORE, GW = "s1", "gw1"
TOPICS = Topics("esl", STORE)
MAC = label_address(1)
KEY = bytes(range(16, 32))
FAST = JobSettings(reply_timeout_s=0.05, connect_retry_s=0.1)


@dataclass
class Rig:
    """A gateway with a simulated label, the server's `Issuer` it trusts, and a broker client
    that publishes jobs (as the server, or as an attacker) and collects the gateway's events."""

    store: SimStore
    gateway: Gateway
    issuer: Issuer
    mqtt: MqttConnection
    events: list[Event]

    @property
    def label(self) -> SimLabel:
        return self.store.label(MAC)

    async def send(self, data: bytes, gateway: str = GW) -> None:
        await self.mqtt.publish(TOPICS.gateway_jobs(gateway), data, qos=1, timeout=5)

    async def result(self, job_id: int, count: int = 1, timeout: float = 10.0) -> Ack | Nack:
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while len(found := [e for e in self.events if isinstance(e, (Ack, Nack)) and e.job == job_id]) < count:
            assert loop.time() < end, f"no result {count} for job {job_id}: {self.events}"
            await asyncio.sleep(0.02)
        return found[count - 1]

    def shelf_truth(self) -> tuple[object, ...]:
        """What a gateway could change on the label: its key, its screen, the counters it
        accepted (its own transmit counter moves with every check-in it sends by itself)."""
        flash = self.label.flash
        return flash.label_key, flash.framebuffer, flash.rx.highest, flash.factory_rx.highest, flash.job


@asynccontextmanager
async def rig(tmp_path: Path, *, trusted: bool = True, signer: SigningKey | None = None) -> AsyncIterator[Rig]:
    """`signer`: the server's key the gateway is configured with (default: a new one)."""
    store = SimStore(StoreConfig(labels=1, seed=4, always_listening=True, wake_interval_s=0.5))
    events: list[Event] = []

    async def collect(message: Message) -> None:
        events.append(parse_event(message.payload))

    key, _ = load_or_create_key(GatewayConfig(store=STORE, gateway_id=GW, data_dir=tmp_path).key_path)
    issuer = Issuer(store=STORE, gateway=GW, gateway_key=key.public, signer=signer or SigningKey.generate())
    async with embedded_broker() as url, store, RadioServer(store, "127.0.0.1", 0) as radio:
        host, port = radio.address
        config = GatewayConfig(store=STORE, gateway_id=GW, data_dir=tmp_path, job=FAST,
                               server_key=issuer.signer.public if trusted else None)
        mqtt = MqttConnection(MqttSettings.from_url(url), client_id="test-server-or-attacker", clean_session=True)
        mqtt.subscribe(TOPICS.gateway_events(GW), collect)
        async with mqtt:
            await asyncio.wait_for(mqtt.connected.wait(), 5)
            async with Gateway(config, open_radio(f"sim://{host}:{port}"), MqttSettings.from_url(url)) as gateway:
                # its status at connect comes after its subscription: a job sent from now on is not lost
                for _ in range(500):
                    if any(isinstance(e, Status) for e in events):
                        break
                    await asyncio.sleep(0.02)
                yield Rig(store, gateway, issuer, mqtt, events)


async def paired_and_showing(r: Rig) -> None:
    """The server's own jobs, as usual: pair the label and show an image."""
    from tests.test_gateway import picture, update_for

    pair = r.issuer.pair(job_id=1, mac=MAC, factory_key=factory_key(4, MAC), new_key=KEY)
    await r.send(r.issuer.sign(pair))
    r.issuer.heard(await r.result(1))
    image = r.issuer.image(update_for(picture(1)), job_id=2, mac=MAC, label_key=KEY)
    await r.send(r.issuer.sign(image))
    shown = await r.result(2)
    assert isinstance(shown, Ack), shown
    r.issuer.heard(shown)


def attacks(r: Rig) -> list[tuple[str, str, bytes, str]]:
    """(name, expected nack code, envelope bytes, gateway topic) of each attack."""
    from tests.test_gateway import picture, update_for

    update = update_for(picture(9))
    attacker = SigningKey.generate()
    other_gateway = Issuer(store=STORE, gateway=GW, gateway_key=GatewayKey.generate().public, signer=r.issuer.signer)
    for_gw2 = Issuer(store=STORE, gateway="gw2", gateway_key=r.issuer.gateway_key, signer=r.issuer.signer)
    old = r.issuer.image(update, job_id=14, mac=MAC, label_key=KEY, issued_ms=now_ms() - 3_600_000)
    rogue = Issuer(store=STORE, gateway=GW, gateway_key=r.issuer.gateway_key, signer=attacker).pair(
        job_id=16, mac=MAC, factory_key=factory_key(4, MAC), new_key=bytes(16), counter=1000)
    v1 = bytes.fromhex("e54a0103") + (17).to_bytes(8, "little") + bytes.fromhex("02e500000001" "1400" "00")
    v1 += bytes(120)
    return [
        ("unsigned", "unsigned", r.issuer.image(update, job_id=11, mac=MAC, label_key=KEY).to_bytes(None), GW),
        ("mis-signed", "bad_signature", r.issuer.image(update, job_id=12, mac=MAC, label_key=KEY).to_bytes(attacker),
         GW),
        ("another gateway's", "misaddressed", for_gw2.sign(for_gw2.image(update, job_id=13, mac=MAC, label_key=KEY)), GW),
        ("an hour old", "expired", r.issuer.sign(old), GW),
        ("sealed to another key", "wrong_key",
         other_gateway.sign(other_gateway.image(update, job_id=15, mac=MAC, label_key=KEY)), GW),
        ("a rogue pairing", "bad_signature", rogue.to_bytes(attacker), GW),
        ("version 1 (keys in the clear)", "unsigned", v1 + zlib.crc32(v1).to_bytes(4, "little"), GW),
    ]


async def test_every_envelope_the_server_did_not_sign_for_this_gateway_is_refused(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        await paired_and_showing(r)
        truth = r.shelf_truth()
        for name, code, data, topic in attacks(r):
            job_id = int.from_bytes(data[4:12], "little")
            await r.send(data, topic)
            nack = await r.result(job_id)
            assert isinstance(nack, Nack) and (nack.code, nack.retry) == (code, False), (name, nack)
            assert r.shelf_truth() == truth, name  # nothing reached the label
        assert r.gateway.refused == {"unsigned": 2, "bad_signature": 2, "misaddressed": 1, "expired": 1,
                                     "wrong_key": 1}
        # and the server's own next job still works
        from tests.test_gateway import picture, update_for

        job = r.issuer.image(update_for(picture(3)), job_id=20, mac=MAC, label_key=KEY)
        await r.send(r.issuer.sign(job))
        assert isinstance(await r.result(20), Ack)


async def test_a_replayed_envelope_is_refused_and_the_label_untouched(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        from tests.test_gateway import picture, update_for

        await paired_and_showing(r)
        first = r.issuer.sign(r.issuer.image(update_for(picture(5)), job_id=30, mac=MAC, label_key=KEY))
        await r.send(first)
        assert isinstance(await r.result(30), Ack)
        later = r.issuer.sign(r.issuer.image(update_for(picture(6)), job_id=31, mac=MAC, label_key=KEY))
        await r.send(later)
        assert isinstance(await r.result(31), Ack)
        truth, rejected = r.shelf_truth(), r.label.session.rejected
        await r.send(first)  # sniffed earlier, published again: it would show picture 5 again
        replay = await r.result(30, count=2)
        assert isinstance(replay, Nack) and (replay.code, replay.retry) == ("replayed", False)
        await asyncio.sleep(0.2)
        assert r.shelf_truth() == truth and r.label.session.rejected == rejected  # not even sent


async def test_a_gateway_that_does_not_know_the_server_key_runs_nothing(tmp_path: Path,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="eslserver.gateway.bridge"):
        async with rig(tmp_path, trusted=False) as r:
            truth = r.shelf_truth()
            pair = r.issuer.pair(job_id=1, mac=MAC, factory_key=factory_key(4, MAC), new_key=KEY)
            await r.send(r.issuer.sign(pair))
            nack = await r.result(1)
            assert isinstance(nack, Nack) and nack.code == "bad_signature" and "server_public_key" in nack.reason
            assert r.shelf_truth() == truth and not r.label.paired
    assert any("server_public_key is not set" in rec.getMessage() for rec in caplog.records)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_no_changed_byte_of_a_signed_envelope_is_accepted(data: st.DataObject) -> None:
    from tests.test_gateway import picture, update_for

    issuer = Issuer(store=STORE, gateway=GW, gateway_key=GatewayKey.generate().public, signer=_SIGNER)
    job: JobEnvelope = issuer.image(update_for(picture(2)), job_id=5, mac=MAC, label_key=KEY, issued_ms=1)
    raw = bytearray(issuer.sign(job))
    i = data.draw(st.integers(0, len(raw) - 5))
    raw[i] ^= data.draw(st.integers(1, 255))
    body = bytes(raw[:-4])
    with pytest.raises(EnvelopeError):
        verify_envelope(body + zlib.crc32(body).to_bytes(4, "little"), _SIGNER.public)


_SIGNER = SigningKey.generate()


# -- the server's side ---------------------------------------------------------------------------


async def _publish(url: str, topic: str, payload: bytes, *, retain: bool = False) -> None:
    async with MqttConnection(MqttSettings.from_url(url), client_id="attacker", clean_session=True) as mqtt:
        await mqtt.connected.wait()
        await mqtt.publish(topic, payload, qos=1, retain=retain, timeout=5)


async def test_refusal_nacks_and_foreign_nacks_change_nothing_on_the_server(tmp_path: Path) -> None:
    async with mosquitto() as url, shop(tmp_path, url, labels=1, job_deadline_s=8) as s:
        await s.seed([MILK])
        mac = s.macs[0]
        await s.bind({mac: MILK["sku"]})
        await s.converged()
        s.store.take_offline(mac, 4.0)
        await s.publish_prices({"sku": MILK["sku"], "price": "1.99", "seq": 2})

        async def sent() -> bool:
            return await s.server.db.read_one("SELECT 1 FROM jobs WHERE mac = ? AND state = 'sent'", (mac,)) is not None

        await until("a job out", sent)
        job = await s.server.db.read_one("SELECT id, attempts FROM jobs WHERE mac = ? AND state = 'sent'", (mac,))
        assert job is not None
        base = {"type": "nack", "job": job["id"], "mac": mac, "at": "2026-01-01T00:00:00Z", "retry": False,
                "attempt": job["attempts"], "status": None}
        for code in ("replayed", "bad_signature", "expired"):
            await _publish(url, s.server.topics.gateway_events("gw1"),
                           json.dumps({**base, "code": code, "reason": "forged"}).encode())
            await until(f"the {code} refusal counted", lambda code=code: metric(s, "esl_envelopes_refused_total",
                                                                                 code=code) == 1)
        await _publish(url, s.server.topics.gateway_events("evil"),
                       json.dumps({**base, "code": "refused", "reason": "forged"}).encode())
        await asyncio.sleep(0.3)
        still = await s.server.db.read_one("SELECT state, attempts FROM jobs WHERE id = ?", (job["id"],))
        assert still is not None and (still["state"], still["attempts"]) == ("sent", job["attempts"])
        assert (await s.label(mac))["state"] == "pending"
        await s.converged(timeout=40)  # and the real job finishes when the label is back


async def test_a_gateway_too_old_for_signed_envelopes_is_refused_naming_both_versions(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async with mosquitto() as url, shop(tmp_path, url, labels=1) as s:
        await s.seed([MILK])
        await s.bind({s.macs[0]: MILK["sku"]})
        await s.converged()
        await s.server.add_identity("gateway", "old")  # registered: an unregistered one is not even heard
        with caplog.at_level(logging.WARNING, logger="eslserver.dispatch"):
            await _publish(url, s.server.topics.gateway_status("old"), b"online", retain=True)
            old_status = {"type": "status", "gateway": "old", "at": "2026-01-01T00:00:00Z", "in_flight": 0,
                          "spooled": 0, "labels_heard": 0}  # a version 1 gateway names no protocol
            await _publish(url, s.server.topics.gateway_events("old"), json.dumps(old_status).encode())

            async def listed() -> bool:
                return await gateway_rows.status(s.server.db, s.settings.store, "old") == "incompatible"

            await until("the old gateway refused", listed)
            await _publish(url, s.server.topics.gateway_status("old"), b"online", retain=True)  # again: still refused
            await asyncio.sleep(0.3)
        rows = {r["id"]: r for r in await gateway_rows.listing(s.server.db, s.settings.store)}
        assert rows["old"]["status"] == "incompatible" and rows["old"]["protocol"] == 1
        error = json.loads(rows["old"]["info"])["error"]
        assert "protocol 1" in error and "needs 2" in error
        lines = [r.getMessage() for r in caplog.records if "old" in r.getMessage()]
        assert len(lines) == 1 and "protocol 1" in lines[0] and "needs 2" in lines[0], lines
        assert rows["gw1"]["status"] == "online" and rows["gw1"]["protocol"] == 2
        # jobs go to the gateway that can take them, never to the old one
        await s.publish_prices({"sku": MILK["sku"], "price": "0.99", "seq": 2})
        await s.converged()
        assert await s.server.db.read_one("SELECT 1 FROM jobs WHERE gateway = 'old'") is None


async def test_a_gateway_without_a_registered_key_gets_no_jobs(tmp_path: Path) -> None:
    async with mosquitto() as url, shop(tmp_path, url, labels=1) as s:
        status = {"type": "status", "gateway": "stranger", "at": "2026-01-01T00:00:00Z", "in_flight": 0,
                  "spooled": 0, "labels_heard": 0, "protocol": 2}
        await s.server.add_identity("gateway", "stranger")  # an MQTT identity, but no registered public key
        await _publish(url, s.server.topics.gateway_status("stranger"), b"online", retain=True)
        await _publish(url, s.server.topics.gateway_events("stranger"), json.dumps(status).encode())

        async def known() -> bool:
            return await gateway_rows.protocol(s.server.db, s.settings.store, "stranger") == 2

        await until("the stranger's status", known)
        eligible = await gateway_rows.online(s.server.db, s.settings.store, min_protocol=2)
        assert "stranger" not in eligible and "gw1" in eligible


# -- the keys: made once, private, registered by the operator --------------------------------------


def test_keys_are_made_0600_shown_and_registered_audited(tmp_path: Path) -> None:
    runner = CliRunner()
    gw_data, server_data = tmp_path / "gw", tmp_path / "server"
    shown = runner.invoke(app, ["gateway", "--show-key", "--store", STORE, "--id", GW, "--data", str(gw_data)])
    assert shown.exit_code == 0, shown.output
    public = shown.stdout.strip()
    key_file = GatewayConfig(store=STORE, gateway_id=GW, data_dir=gw_data).key_path
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert load_or_create_key(key_file)[0].public.hex() == public  # the same key at every start
    assert public not in key_file.read_text()  # the file holds the private half, never printed
    again = runner.invoke(app, ["gateway", "--show-key", "--store", STORE, "--id", GW, "--data", str(gw_data)])
    assert again.stdout.strip() == public

    server = runner.invoke(app, ["trust", "server-key", "--data", str(server_data)])
    assert server.exit_code == 0, server.output
    assert stat.S_IMODE((server_data / "signing.key").stat().st_mode) == 0o600
    assert len(server.stdout.strip()) == 64
    assert runner.invoke(app, ["trust", "server-key", "--data", str(server_data)]).stdout == server.stdout

    missing = runner.invoke(app, ["trust", "gateway", f"{STORE}/{GW}", public, "--data", str(server_data)])
    assert missing.exit_code == 1 and "no eslserver database" in missing.output
    asyncio.run(_init_db(server_data))
    done = runner.invoke(app, ["trust", "gateway", f"{STORE}/{GW}", public, "--data", str(server_data)])
    assert done.exit_code == 0 and "registered" in done.output, done.output
    bad = runner.invoke(app, ["trust", "gateway", f"{STORE}/{GW}", "zz" * 32, "--data", str(server_data)])
    assert bad.exit_code == 2 and "64 hex digits" in bad.output
    assert asyncio.run(_audit_actions(server_data)) == ["gateway.key"]


async def _init_db(data: Path) -> None:
    from eslserver.db.sqlite import SqliteDatabase

    async with SqliteDatabase(data / "esl.db"):
        pass


async def _audit_actions(data: Path) -> list[str]:
    from eslserver.db.sqlite import SqliteDatabase

    async with SqliteDatabase(data / "esl.db") as db:
        return [r["action"] for r in await db.read("SELECT action FROM audit")]


def test_a_gateway_prints_its_public_key_and_refuses_a_bad_server_key() -> None:
    result = CliRunner().invoke(app, ["gateway", "--broker", "mqtt://127.0.0.1:1", "--radio", "sim://127.0.0.1:1",
                                      "--store", STORE, "--id", GW, "--server-public-key", "abc"])
    assert result.exit_code == 2 and "server_public_key: expected 64 hex digits" in result.output

