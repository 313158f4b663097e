"""MQTT identities and access rules, attacked (issue 13, items 1 and 5).

Before: the embedded broker let anyone in; any client could publish prices and gateway events,
read every gateway's jobs, and forge a retained ``online`` for a made-up gateway that survived
server restarts; 300 forged discoveries made 300 labels. Here, against the embedded broker (amqtt
and Mosquitto, as `esl serve` runs them) and a real Mosquitto set up with the files ``esl
broker-config`` writes, an attacker client tries each of those, and fails:

- no connection without an identity's password (anonymous, unknown user, wrong password);
- a POS identity cannot publish on a gateway's events (no subscriber with the server's rights
  receives it) nor read any gateway's jobs; gateway gw1 cannot publish as gw2 nor read gw2's jobs;
- a will on someone else's topic is never published;
- a revoked identity is refused at once: new connections, and its open connection is dropped
  (amqtt: by `enforce_access`; Mosquitto: when it re-reads its files on SIGHUP), its jobs go
  back to the queue and its retained status is cleared;
- an anonymous client, or another identity, connecting with the server's client id does not
  touch the server's session;
- an unregistered gateway's events are ignored and its forged retained ``online`` is cleared,
  also when it was there before the server started;
- 300 forged discoveries from a registered gateway create at most the rate limit's worth of labels.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import re
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from eslserver.config import load_settings
from eslserver.gateway.events import Ack, Checkin
from eslserver.identities import Credentials
from eslserver.mqtt_access import Identity
from eslserver.server import SYSTEM, Server, shared_prefix
from eslserver.store import gateways as gateway_rows
from eslserver.store import jobs as job_rows
from eslserver.store import labels as label_rows
from eslserver.timeutil import iso, utcnow
from eslserver.topics import Kind, Topics
from firmware_proto.frames import Checkin as CheckinFrame
from firmware_proto.frames import CheckinFlag, address_bytes
from tests.brokers import MOSQUITTO, TcpProxy, broker_url, mosquitto  # noqa: F401  (broker_url: fixture)
from tests.processes import esl_argv

IMPLEMENTATIONS = ["amqtt", pytest.param("mosquitto", marks=pytest.mark.skipif(
    MOSQUITTO is None, reason="mosquitto is not installed"))]
STORE = "demo"
T = Topics("esl", STORE)


# -- helpers -------------------------------------------------------------------------------------


async def until(what: str, check: Callable[[], bool], timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, f"not within {timeout} s: {what}"
        await asyncio.sleep(0.02)


class Peer:
    """A client of the test's (aiomqtt), keeping what it receives as (topic, payload, retained)."""

    def __init__(self, port: int, who: Credentials | None, client_id: str, *, password: str | None = None,
                 will: aiomqtt.Will | None = None, clean_session: bool = True) -> None:
        self.client = aiomqtt.Client("127.0.0.1", port, identifier=client_id, timeout=5, will=will,
                                     clean_session=clean_session,
                                     username=None if who is None else who.username,
                                     password=password if password is not None else (None if who is None
                                                                                    else who.password))
        self.got: list[tuple[str, bytes, bool]] = []
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Peer:
        await self.client.__aenter__()
        self._reader = asyncio.create_task(self._read(), name="test-peer-reader")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        try:
            await self.client.__aexit__(None, None, None)
        except aiomqtt.MqttError:
            pass  # dropped by the broker already

    async def _read(self) -> None:
        async for message in self.client.messages:
            payload = message.payload if isinstance(message.payload, bytes) else str(message.payload).encode()
            self.got.append((str(message.topic), payload, message.retain))

    def on(self, topic: str) -> list[bytes]:
        return [payload for t, payload, _ in self.got if t == topic]


async def refused(port: int, username: str | None, password: str | None, client_id: str = "attacker") -> bool:
    """Whether the broker refuses this CONNECT."""
    try:
        async with aiomqtt.Client("127.0.0.1", port, identifier=client_id, username=username, password=password,
                                  timeout=5):
            return False
    except aiomqtt.MqttError:
        return True


@asynccontextmanager
async def embedded(tmp_path: Path, implementation: str, **overrides: Any) -> AsyncIterator[Server]:
    """`esl serve` in this process with its embedded broker (`implementation`), connected."""
    settings = load_settings(None, environ={}, overrides={
        "data_dir": tmp_path / "data", "http_port": 0, "embedded_broker": implementation, **overrides})
    async with Server(settings, http=False, render_processes=False) as server:
        assert server.mqtt is not None and server.broker is not None
        await asyncio.wait_for(server.mqtt.connected.wait(), 20)
        assert server.broker.implementation == implementation
        yield server


def port_of(server: Server) -> int:
    assert server.broker is not None
    return server.broker.port


async def topic_rules_hold(port: int, ids: dict[str, Credentials]) -> None:
    """The POS and gateway attacks, on any broker: `ids` has ``spy`` (a server-role identity),
    ``till``, ``gw1`` and ``gw2``."""
    async with Peer(port, ids["spy"], "spy") as spy, Peer(port, ids["gw1"], "gw1") as gw1, \
            Peer(port, ids["gw2"], "gw2") as gw2, Peer(port, ids["till"], "till") as till:
        await spy.client.subscribe("esl/#", qos=1)
        await gw1.client.subscribe(T.gateway_jobs("gw1"), qos=1)
        await gw2.client.subscribe(T.gateway_jobs("gw2"), qos=1)
        for peer, topic_filter in ((till, T.filter(Kind.GATEWAY_JOBS)), (till, T.gateway_jobs("gw1")),
                                   (gw1, T.gateway_jobs("gw2")), (gw1, T.filter(Kind.GATEWAY_JOBS)), (till, "#")):
            await peer.client.subscribe(topic_filter, qos=1)  # refused (amqtt) or never served (Mosquitto)
        forged = Ack(job=1, mac="AA:BB:CC:00:00:01", displayed_hash=bytes(8), frames=1).to_json()
        await till.client.publish(T.gateway_events("gw1"), forged, qos=1)
        await till.client.publish(T.gateway_status("gw1"), b"online", qos=1, retain=True)
        await gw1.client.publish(T.gateway_events("gw2"), forged, qos=1)
        await gw1.client.publish(T.gateway_status("gw2"), b"online", qos=1, retain=True)
        await gw1.client.publish(T.pos_prices, b'{"sku": "1", "price": "0.01"}', qos=1)
        # what each may do goes through, so that silence below is the rules, not a broken broker
        await gw1.client.publish(T.gateway_events("gw1"), b"gw1-marker", qos=1)
        await till.client.publish(T.pos_prices, b"till-marker", qos=1)
        await spy.client.publish(T.gateway_jobs("gw1"), b"job-gw1", qos=1)
        await spy.client.publish(T.gateway_jobs("gw2"), b"job-gw2", qos=1)
        await until("the allowed messages", lambda: bool(
            spy.on(T.gateway_events("gw1")) and spy.on(T.pos_prices) and gw1.on(T.gateway_jobs("gw1"))
            and gw2.on(T.gateway_jobs("gw2"))))
        await asyncio.sleep(0.3)  # anything forged would have arrived by now
        assert spy.on(T.gateway_events("gw1")) == [b"gw1-marker"]
        assert spy.on(T.pos_prices) == [b"till-marker"]
        assert not spy.on(T.gateway_events("gw2")) and not spy.on(T.gateway_status("gw2"))
        assert not spy.on(T.gateway_status("gw1"))
        # no job of any gateway, nothing of a gateway at all (its own pos/errors it may read)
        assert {t for t, _, _ in till.got} <= {T.pos_errors}, till.got
        assert [t for t, _, _ in gw1.got] == [T.gateway_jobs("gw1")]
        assert [t for t, _, _ in gw2.got] == [T.gateway_jobs("gw2")]


async def _identities(server: Server) -> dict[str, Credentials]:
    return {"spy": await server.add_identity("server", "spy"), "till": await server.add_identity("pos", "till-1"),
            "gw1": await server.add_identity("gateway", "gw1"), "gw2": await server.add_identity("gateway", "gw2")}


# -- refused at the door -------------------------------------------------------------------------


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
async def test_anonymous_unknown_and_wrong_passwords_are_refused(tmp_path: Path, implementation: str) -> None:
    async with embedded(tmp_path, implementation) as server:
        till = await server.add_identity("pos", "till-1")
        port = port_of(server)
        assert await refused(port, None, None)
        assert await refused(port, "pos/demo/till-2", till.password)
        assert await refused(port, till.username, till.password[:-1] + ("A" if till.password[-1] != "A" else "B"))
        assert await refused(port, till.username, "")
        assert not await refused(port, till.username, till.password, client_id="till-1")


# -- who may use which topic ---------------------------------------------------------------------


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
async def test_a_pos_or_a_gateway_gets_only_its_own_topics(tmp_path: Path, implementation: str) -> None:
    async with embedded(tmp_path, implementation) as server:
        await topic_rules_hold(port_of(server), await _identities(server))


async def test_a_store_mosquitto_with_the_files_of_broker_config_enforces_the_same(tmp_path: Path) -> None:
    """The same hashes and rules in a store's own Mosquitto: identities made by the server, files
    written by ``esl broker-config`` (another process, as an operator runs it), the server's own
    password derived from its secret key in both."""
    settings = load_settings(None, environ={}, overrides={"data_dir": tmp_path / "data"})
    async with Server(settings, mqtt=False, http=False, render_processes=False) as server:
        ids = await _identities(server)
        assert server.credentials is not None
        own = server.credentials
        group = shared_prefix(server.vault)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESL_")}
    done = await asyncio.to_thread(subprocess.run, esl_argv("broker-config", "--out", str(tmp_path / "mosquitto"),
                                                            "--data", str(tmp_path / "data")),
                                   env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    passwd, acl = tmp_path / "mosquitto" / "passwd", tmp_path / "mosquitto" / "acl"
    assert "allow_anonymous false" in done.stdout and f"acl_file {acl}" in done.stdout
    assert (passwd.stat().st_mode & 0o777, acl.stat().st_mode & 0o777) == (0o600, 0o600)
    assert "server/server:" in passwd.read_text() and ids["till"].password not in passwd.read_text()
    async with mosquitto(password_file=passwd, acl_file=acl) as url:
        port = int(url.rsplit(":", 1)[1])
        assert await refused(port, None, None)
        assert await refused(port, ids["till"].username, "wrong")
        assert not await refused(port, own.username, own.password, client_id="eslserver-demo-server")
        await topic_rules_hold(port, ids)
        await shared_rules_hold(port, ids, group)


async def shared_rules_hold(port: int, ids: dict[str, Credentials], group: str) -> None:
    """Shared subscriptions, as several server instances take POS messages (``mqtt_shared``,
    the group `group` derived from their secret key): two server-role clients in the group get
    each message once between them. A gateway that joins a guessed group gets its own copies
    of nothing it may not read, and takes none from the servers (Mosquitto would hand a member
    of the servers' own group its share and drop it); a till that subscribes through
    ``$share/…`` to gateway jobs gets nothing."""
    assert group.startswith("$share/esl-") and group.endswith("/") and "eslserver" not in group
    async with Peer(port, ids["spy"], "spy-a") as a, Peer(port, ids["spy"], "spy-b") as b, \
            Peer(port, ids["till"], "till-share") as till, Peer(port, ids["gw1"], "gw1-share") as gw1:
        await a.client.subscribe(group + T.pos_prices, qos=1)
        await b.client.subscribe(group + T.pos_prices, qos=1)
        for filt in ("$share/eslserver/" + T.filter(Kind.GATEWAY_JOBS), "$share/g/#", "$share/g/esl/#"):
            await till.client.subscribe(filt, qos=1)
        for guess in ("$share/eslserver/", "$share/esl/", "$share/esl-/", "$share/server/"):
            await gw1.client.subscribe(guess + T.pos_prices, qos=1)
        await gw1.client.subscribe("$share/eslserver/" + T.gateway_jobs("gw2"), qos=1)
        await asyncio.sleep(0.2)
        for n in range(10):
            await till.client.publish(T.pos_prices, f"price-{n}".encode(), qos=1)
        await a.client.publish(T.gateway_jobs("gw2"), b"job-gw2", qos=1)
        await until("the ten prices", lambda: len(a.on(T.pos_prices)) + len(b.on(T.pos_prices)) >= 10)
        await asyncio.sleep(0.3)
        got = sorted(a.on(T.pos_prices) + b.on(T.pos_prices))
        assert got == sorted(f"price-{n}".encode() for n in range(10))  # each once, between the two
        assert a.on(T.pos_prices) and b.on(T.pos_prices)  # shared, not all to one
        assert {t for t, _, _ in till.got} <= {T.pos_errors}, till.got
        assert gw1.got == [], gw1.got


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
async def test_a_will_on_another_identitys_topic_is_never_published(tmp_path: Path, implementation: str) -> None:
    async with embedded(tmp_path, implementation) as server:
        ids = await _identities(server)
        port = port_of(server)
        will = aiomqtt.Will(T.gateway_events("gw1"), b"forged-will", qos=1)
        async with Peer(port, ids["spy"], "spy") as spy, TcpProxy(port) as proxy:
            await spy.client.subscribe("esl/#", qos=1)
            try:
                async with Peer(proxy.port, ids["till"], "till", will=will) as till:
                    await till.client.publish(T.pos_prices, b"till-marker", qos=1)
                    await until("the till's own message", lambda: bool(spy.on(T.pos_prices)))
                    proxy.cut()  # a dead connection: the broker would publish the will
                    await asyncio.sleep(0.5)
            except aiomqtt.MqttError:
                pass  # amqtt refuses the CONNECT itself
            await asyncio.sleep(0.3)
            assert not spy.on(T.gateway_events("gw1")), spy.got


# -- revoked at once -----------------------------------------------------------------------------


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
async def test_a_revoked_identity_is_refused_and_dropped_at_once(tmp_path: Path, implementation: str) -> None:
    """Both brokers drop the open connection: amqtt in `enforce_access`, Mosquitto when it reads
    its password file again (SIGHUP). A revoked gateway's retained ``online`` is cleared."""
    async with embedded(tmp_path, implementation) as server:
        ids = await _identities(server)
        port = port_of(server)
        async with Peer(port, ids["spy"], "spy") as spy, Peer(port, ids["till"], "till") as till, \
                Peer(port, ids["gw1"], "gw1") as gw1:
            await gw1.client.publish(T.gateway_status("gw1"), b"online", qos=1, retain=True)
            await till.client.publish(T.pos_prices, b"before", qos=1)
            started = time.monotonic()
            await server.identities.revoke(ids["till"].username, SYSTEM)
            await server.identities.revoke(ids["gw1"].username, SYSTEM)
            assert await refused(port, ids["till"].username, ids["till"].password, client_id="till-again")
            assert await refused(port, ids["gw1"].username, ids["gw1"].password, client_id="gw1-again")
            assert time.monotonic() - started < 5

            async def dropped(peer: Peer) -> bool:
                try:
                    for _ in range(50):
                        await peer.client.publish(T.pos_prices, b"after", qos=1, timeout=1)
                        await asyncio.sleep(0.05)
                except aiomqtt.MqttError:
                    return True
                return False

            assert await dropped(till) and await dropped(gw1)
            assert b"after" not in spy.on(T.pos_prices)
            await spy.client.subscribe(T.gateway_status("gw1"), qos=1)
            await asyncio.sleep(0.5)
            assert (T.gateway_status("gw1"), b"online", True) not in spy.got  # cleared: not retained any more
        assert await gateway_rows.status(server.db, STORE, "gw1") in (None, "offline")


async def test_a_revocation_from_the_cli_reaches_the_running_broker(tmp_path: Path) -> None:
    async with embedded(tmp_path, "amqtt") as server:
        gw1 = await server.add_identity("gateway", "gw1")
        port = port_of(server)
        async with Peer(port, gw1, "gw1"):
            env = {k: v for k, v in os.environ.items() if not k.startswith("ESL_")}
            done = await asyncio.to_thread(subprocess.run, esl_argv("gateways", "revoke", "demo/gw1", "--data",
                                                                    str(tmp_path / "data")),
                                           env=env, capture_output=True, text=True, timeout=60)
            assert done.returncode == 0 and "revoked gateway/demo/gw1" in done.stderr, done.stderr
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 5  # the server reads identities every second
            while not await refused(port, gw1.username, gw1.password, client_id="gw1-again"):
                assert loop.time() < deadline, "the revoked gateway is still let in"
                await asyncio.sleep(0.2)


async def test_revoking_a_gateway_hands_its_jobs_back_and_is_audited(tmp_path: Path) -> None:
    settings = load_settings(None, environ={}, overrides={"data_dir": tmp_path / "data"})
    async with Server(settings, mqtt=False, http=False, render_processes=False) as server:
        await server.add_identity("gateway", "gw1")
        await server.add_identity("gateway", "gw2")
        now = iso(utcnow())
        async with server.db.transaction() as conn:
            await server.labels.register(conn, "AA:BB:CC:00:00:01", "2.9-bwry", gateway="gw1")
            await gateway_rows.set_status(conn, STORE, "gw1", "online", now=now, info=None)
            await gateway_rows.set_status(conn, STORE, "gw2", "online", now=now, info=None)
            await gateway_rows.set_public_key(conn, STORE, "gw1", bytes(range(32)))
            job = await job_rows.insert(conn, {"store": STORE, "mac": "AA:BB:CC:00:00:01", "kind": "command",
                                               "state": "queued", "next_attempt_at": now, "created_at": now,
                                               "command": b"{}"})
            await job_rows.mark_sent(conn, job, "gw1", now)
        info = await server.identities.revoke("gateway/demo/gw1", SYSTEM)
        assert info.revoked_at is not None
        row = await server.db.read_one("SELECT state FROM jobs WHERE id = ?", (job,))
        assert row is not None and row["state"] == "queued"  # not lost: the next dispatch sends it to gw2
        assert await gateway_rows.online_ids(server.db, STORE) == ["gw2"]
        assert await gateway_rows.public_key(server.db, STORE, "gw1") is None  # its key opens nothing now
        audit = await server.db.read_one("SELECT action, after FROM audit WHERE target = 'identity:gateway/demo/gw1' "
                                         "ORDER BY id DESC LIMIT 1")
        assert audit is not None and audit["action"] == "identity.revoke"
        assert json.loads(audit["after"])["jobs_requeued"] == 1
        again = await server.identities.revoke("gateway/demo/gw1", SYSTEM)  # twice: the first time stays
        assert again.revoked_at == info.revoked_at
        assert not server.identities.allows("gw1") and server.identities.allows("gw2")


async def test_a_gateway_recorded_online_but_not_registered_gets_no_jobs_after_a_restart(tmp_path: Path) -> None:
    """Data from before identities (or a revocation made while the server was down): the
    gateway the database calls online is taken offline at start and its job goes back to the queue."""
    settings = load_settings(None, environ={}, overrides={"data_dir": tmp_path / "data"})
    async with Server(settings, mqtt=False, http=False, render_processes=False) as server:
        now = iso(utcnow())
        async with server.db.transaction() as conn:
            await server.labels.register(conn, "AA:BB:CC:00:00:01", "2.9-bwry", gateway="old")
            await gateway_rows.set_status(conn, STORE, "old", "online", now=now, info=None)
            job = await job_rows.insert(conn, {"store": STORE, "mac": "AA:BB:CC:00:00:01", "kind": "command",
                                               "state": "queued", "next_attempt_at": now, "created_at": now,
                                               "command": b"{}"})
            await job_rows.mark_sent(conn, job, "old", now)
    async with Server(settings, mqtt=False, http=False, render_processes=False) as server:
        assert await gateway_rows.online_ids(server.db, STORE) == []
        row = await server.db.read_one("SELECT state FROM jobs WHERE id = ?", (job,))
        assert row is not None and row["state"] == "queued"
    settings = load_settings(None, environ={}, overrides={"data_dir": tmp_path / "data",
                                                           "gateway_registration": "open"})
    async with Server(settings, mqtt=False, http=False, render_processes=False) as server:
        assert server.identities.allows("old") and server.identities.allows("anyone")


# -- the server's own session ---------------------------------------------------------------------


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
async def test_nobody_else_can_take_over_or_wipe_the_servers_session(tmp_path: Path, implementation: str) -> None:
    """amqtt used to delete the session a clean-session CONNECT named before asking for a
    password; Mosquitto keys sessions by user name here. The server must still hear its gateway."""
    async with embedded(tmp_path, implementation) as server:
        ids = await _identities(server)
        port = port_of(server)
        server_id = f"eslserver-{server.settings.store}-{server.settings.instance}"
        assert await refused(port, None, None, client_id=server_id)
        assert await refused(port, ids["till"].username, "wrong", client_id=server_id)
        try:  # refused (amqtt), or given a session of its own (Mosquitto: the client id is the user name)
            async with aiomqtt.Client("127.0.0.1", port, identifier=server_id, username=ids["till"].username,
                                      password=ids["till"].password, timeout=5):
                await asyncio.sleep(0.2)
        except aiomqtt.MqttError:
            pass
        async with Peer(port, ids["gw1"], "gw1") as gw1:
            await gw1.client.publish(T.gateway_status("gw1"), b"online", qos=1, retain=True)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10
            while await gateway_rows.status(server.db, STORE, "gw1") != "online":
                assert loop.time() < deadline, "the server no longer hears its gateways"
                await asyncio.sleep(0.05)
        assert server.mqtt is not None and server.mqtt.is_connected


# -- registered gateways only, and a limit on discoveries ------------------------------------------


def _checkin(mac: str) -> bytes:
    frame = CheckinFrame(address=address_bytes(mac), model_id=1, firmware_version=0x0102,
                         status_flags=CheckinFlag(0), displayed_hash=bytes(8), battery_mv=2950, temperature_c=21,
                         rssi=-60, rx_counter=0).to_bytes()
    return Checkin(mac=mac, rssi=-60, frame=frame).to_json()


async def test_an_unregistered_gateway_is_ignored_and_its_forged_online_cleared(
        tmp_path: Path, broker_url: str, caplog: pytest.LogCaptureFixture) -> None:  # noqa: F811
    """On a broker that lets anyone publish (no identities), the server itself still refuses:
    the forged retained ``online`` is there before the server starts, and is cleared at once."""
    caplog.set_level(logging.INFO)
    port = int(broker_url.rsplit(":", 1)[1])
    async with Peer(port, None, "evil") as evil:
        await evil.client.publish(T.gateway_status("evil"), b"online", qos=1, retain=True)
        settings = load_settings(None, environ={}, overrides={"data_dir": tmp_path / "data", "broker_url": broker_url})
        async with Server(settings, http=False, render_processes=False) as server:
            assert server.mqtt is not None
            await asyncio.wait_for(server.mqtt.connected.wait(), 20)
            refused_count = server.metrics.events_refused.labels("unregistered")
            await until("the forged status is read and ignored", lambda: refused_count._value.get() >= 1)
            for i in range(5):
                await evil.client.publish(T.gateway_events("evil"), _checkin(f"02:E5:00:00:10:{i:02X}"), qos=1)
            await until("the forged events are ignored", lambda: refused_count._value.get() >= 6)
            async with Peer(port, None, "late-subscriber") as late:
                await late.client.subscribe(T.gateway_status("evil"), qos=1)
                await asyncio.sleep(0.5)
                assert not [m for m in late.got if m[2] and m[1]], late.got  # no retained "online" left
            assert await gateway_rows.status(server.db, STORE, "evil") is None
            assert await label_rows.macs(server.db, STORE) == []
        ignored = [r for r in caplog.records if "ignoring gateway evil" in r.getMessage()]
        assert len(ignored) == 1, [r.getMessage() for r in ignored]  # once, not per message


async def test_forged_discoveries_create_at_most_the_rate_limits_worth_of_labels(tmp_path: Path,
                                                                                 broker_url: str) -> None:  # noqa: F811
    port = int(broker_url.rsplit(":", 1)[1])
    settings = load_settings(None, environ={}, overrides={"data_dir": tmp_path / "data", "broker_url": broker_url,
                                                           "discovery_rate_per_min": 20, "discovery_burst": 50})
    async with Server(settings, http=False, render_processes=False) as server:
        assert server.mqtt is not None
        await asyncio.wait_for(server.mqtt.connected.wait(), 20)
        await server.add_identity("gateway", "gw1")  # registered: the attacker holds a real gateway
        made = server.metrics.discoveries.labels("gw1")
        dropped = server.metrics.discoveries_dropped.labels("gw1")
        started = time.monotonic()
        async with Peer(port, None, "forger") as forger:
            for i in range(300):
                mac = f"02:E5:00:00:{i // 256:02X}:{i % 256:02X}"
                await forger.client.publish(T.gateway_events("gw1"), _checkin(mac), qos=1)
            await until("every forged discovery is handled",
                        lambda: made._value.get() + dropped._value.get() >= 300, timeout=30)
        elapsed = time.monotonic() - started
        labels = await label_rows.macs(server.db, STORE)
        allowed = 50 + math.ceil(elapsed * 20 / 60)
        assert len(labels) <= allowed, (len(labels), elapsed)
        assert len(labels) >= 50
        assert dropped._value.get() == 300 - len(labels)
        exposition = server.metrics.exposition().decode()
        assert f'esl_discoveries_dropped_total{{gateway="gw1"}} {300 - len(labels)}.0' in exposition
        assert f'esl_discoveries_total{{gateway="gw1"}} {len(labels)}.0' in exposition


# -- the demo -------------------------------------------------------------------------------------


async def test_the_demo_prints_working_pos_credentials_and_refuses_anonymous_clients(tmp_path: Path) -> None:
    from tests.processes import Processes
    from tests.test_demo_story import demo_argv, start_demo

    async with Processes(tmp_path / "procs") as procs:
        demo = procs.spawn("demo", demo_argv(tmp_path / "store", "--labels", "2", "--no-feed"))
        await start_demo(demo)
        found = re.search(r"broker\s+mqtt://127\.0\.0\.1:(\d+)[\s\S]*?pos\s+user\s+(\S+)\s+password\s+(\S+)",
                          demo.log)
        assert found is not None, demo.tail()
        port, username, password = int(found.group(1)), found.group(2), found.group(3)
        assert username == "pos/demo/demo-pos"
        assert await refused(port, None, None)
        till = Credentials(Identity.parse(username), password)
        async with Peer(port, till, "my-till") as pos:
            await pos.client.subscribe(T.pos_acks, qos=1)
            await pos.client.publish(T.pos_prices, b'{"sku": "my-1", "price": "1.99"}', qos=1)
            await until("the server's confirmation", lambda: bool(pos.on(T.pos_acks)), timeout=20)
        assert await demo.stop() == 0
