"""Only the gateway a job was sent to speaks for it.

The attack, as reproduced before: publish a retained ``online`` for a made-up gateway, then an
ack on its events topic for an old job id; the label moved to that gateway, and a second forged
ack (``tx_counter`` 4294967295) exhausted the label's counter space so every later job failed
authentication. Here an attacker client on the broker forges acks and nacks from another
gateway id, for a finished job and for one in flight: the label's gateway, counters, displayed
hash and state stay as they were, the refusal is counted, and the label still takes new prices.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest

from eslserver.gateway.events import Ack, Nack
from eslserver.mqtt import MqttConnection, MqttSettings
from tests.brokers import broker_url  # noqa: F401  (fixture: mosquitto and amqtt)
from tests.pipeline_shop import shop

MILK = {"sku": "100100", "name": "Mleko 3,2% 1 l", "price": "3.49", "seq": 1}


async def _label_row(s, mac: str) -> dict[str, object]:  # type: ignore[no-untyped-def]
    row = await s.server.db.read_one(
        "SELECT gateway, tx_counter, rx_highest, displayed_hash, expected_hash, state FROM labels WHERE mac = ?",
        (mac,))
    assert row is not None
    return dict(row)


async def test_acks_and_nacks_from_another_gateway_change_nothing(tmp_path: Path, broker_url: str) -> None:  # noqa: F811
    async with shop(tmp_path, broker_url, labels=1) as s:
        mac = s.macs[0]
        await s.seed([MILK])
        await s.bind({mac: MILK["sku"]})
        await s.converged()
        before = await _label_row(s, mac)
        assert before["gateway"] == "gw1"
        jobs = await s.server.db.read("SELECT id FROM jobs WHERE mac = ? ORDER BY id", (mac,))
        assert jobs
        # a registered gateway (a compromised one): the registry lets it speak, the dispatcher's own
        # check must still refuse it for jobs sent to another (unregistered ids: test_security_mqtt.py)
        await s.server.add_identity("gateway", "evil")
        refused = s.server.metrics.events_refused.labels("wrong_gateway")
        counted = refused._value.get()
        async with MqttConnection(MqttSettings.from_url(broker_url), client_id="attacker",
                                  clean_session=True) as evil:
            await evil.connected.wait()
            await evil.publish(s.server.topics.gateway_status("evil"), b"online", qos=1, retain=True)
            for row in jobs:
                # the counters of the old attack ride along as extra keys (a newer gateway may add fields)
                exhaust = {"tx_counter": 0xFFFFFFFF, "rx_highest": 0xFFFFFFFF}
                forged = Ack(job=row["id"], mac=mac, displayed_hash=bytes(8), frames=1, battery_mv=1)
                await evil.publish(s.server.topics.gateway_events("evil"),
                                   json.dumps({**json.loads(forged.to_json()), **exhaust}).encode(), qos=1)
                nack = Nack(job=row["id"], mac=mac, code="unreachable", reason="forged", retry=False)
                await evil.publish(s.server.topics.gateway_events("evil"),
                                   json.dumps({**json.loads(nack.to_json()), **exhaust}).encode(), qos=1)
            for _ in range(100):
                if refused._value.get() >= counted + len(jobs):
                    break
                await asyncio.sleep(0.05)
            await evil.publish(s.server.topics.gateway_status("evil"), b"", qos=1, retain=True)
        assert refused._value.get() >= counted + len(jobs)
        after = await _label_row(s, mac)
        assert after == before
        # the label still takes a new price through its real gateway (its counters are intact)
        await s.publish_prices({**MILK, "price": "2.99", "seq": 2})
        for _ in range(200):
            if (await s.label(mac))["expected_hash"] != before["expected_hash"]:
                break
            await asyncio.sleep(0.05)
        states = await s.converged()
        assert states[mac]["expected_hash"] != before["expected_hash"]
        assert states[mac]["displayed_hash"] == states[mac]["expected_hash"]
        assert (await _label_row(s, mac))["gateway"] == "gw1"


async def test_a_stale_checkin_is_ignored_quietly_and_a_forged_one_is_warned_about(  # noqa: F811
        tmp_path: Path, broker_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """A label's own check-in overtaken by newer frames (links reorder; a replay looks the same)
    changes nothing and is only counted; a check-in that does not authenticate is a warning."""
    from dataclasses import replace

    from eslserver.gateway.events import Checkin
    from firmware_proto.frames import Checkin as CheckinFrame
    from firmware_proto.frames import parse_frame

    async with shop(tmp_path, broker_url, labels=1) as s:
        mac = s.macs[0]
        await s.seed([MILK])
        await s.bind({mac: MILK["sku"]})
        await s.converged()
        label = s.store.labels[mac]
        genuine = label.session.checkin()
        event = Checkin(mac=mac, rssi=-50, frame=genuine).to_json()
        await s.server.dispatcher.on_event("gw1", event)  # fresh: believed
        before = await _label_row(s, mac)
        stale = s.server.metrics.events_refused.labels("stale_checkin")
        counted = stale._value.get()
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="eslserver.dispatch"):
            await s.server.dispatcher.on_event("gw1", event)  # the same frame again: older than what was seen
            assert stale._value.get() == counted + 1
            assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
            frame = parse_frame(genuine)
            assert isinstance(frame, CheckinFrame)
            forged = replace(frame, displayed_hash=bytes(len(frame.displayed_hash))).to_bytes()
            await s.server.dispatcher.on_event("gw1", Checkin(mac=mac, rssi=-50, frame=forged).to_json())
            assert any("failed authentication" in r.getMessage() for r in caplog.records
                       if r.levelno == logging.WARNING)
        assert stale._value.get() == counted + 1
        assert await _label_row(s, mac) == before
