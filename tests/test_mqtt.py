"""eslserver.mqtt against real brokers: Mosquitto (child process) and the embedded amqtt broker.

Crashes and network failures are made with `TcpProxy` between client and broker: cutting it
aborts the TCP connection without an MQTT DISCONNECT, as kill -9 or a pulled cable would.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eslserver.mqtt import (
    Message,
    MqttConnection,
    MqttSettings,
    MqttSettingsError,
    MqttUnavailable,
    Will,
)
from tests.brokers import (
    MOSQUITTO_PASSWD,
    MosquittoBroker,
    TcpProxy,
    broker_url,
    free_port,
    make_tls_files,
    mosquitto,
)

__all__ = ["broker_url"]  # the fixture, re-exported for pytest

FAST = {"reconnect_min_s": 0.05, "reconnect_max_s": 0.3}  # for the connect fixture
MIN_S, MAX_S = 0.05, 0.3


# --- settings and URLs ------------------------------------------------------------------------

GOOD_URLS = [
    ("mqtt://broker", MqttSettings(host="broker", port=1883)),
    ("mqtt://127.0.0.1:1884", MqttSettings(host="127.0.0.1", port=1884)),
    ("mqtts://broker.example", MqttSettings(host="broker.example", port=8883, tls=True)),
    ("mqtts://broker:9999/", MqttSettings(host="broker", port=9999, tls=True)),
    ("MQTT://Broker:1", MqttSettings(host="broker", port=1)),
    ("mqtt://user@h", MqttSettings(host="h", username="user")),
    ("mqtt://user:secret@h:2000", MqttSettings(host="h", port=2000, username="user", password="secret")),
    ("mqtt://us%40er:p%3Ass@h", MqttSettings(host="h", username="us@er", password="p:ss")),
    ("mqtt://user:@h", MqttSettings(host="h", username="user", password="")),
    ("mqtt://[::1]:1883", MqttSettings(host="::1", port=1883)),
]


@pytest.mark.parametrize(("url", "expected"), GOOD_URLS)
def test_from_url_parses(url: str, expected: MqttSettings) -> None:
    assert MqttSettings.from_url(url) == expected


BAD_URLS = [
    ("http://broker:1883", "'http'"),
    ("tcp://broker", "'tcp'"),
    ("broker:1883", "scheme"),
    ("mqtt://broker:abc", "bad port"),
    ("mqtt://broker:70000", "bad port"),
    ("mqtt://broker:0", "port 0"),
    ("mqtt://broker:-1", "bad port"),
    ("mqtt://:1883", "no host"),
    ("mqtt://", "no host"),
    ("mqtt://broker/esl", "path"),
    ("mqtt://broker?x=1", "query"),
    ("mqtt://[::1", "malformed"),
]


@pytest.mark.parametrize(("url", "needle"), BAD_URLS)
def test_from_url_refuses(url: str, needle: str) -> None:
    with pytest.raises(MqttSettingsError) as info:
        MqttSettings.from_url(url)
    assert needle in str(info.value)
    assert isinstance(info.value, ValueError)


def test_from_url_errors_mask_the_password() -> None:
    with pytest.raises(MqttSettingsError) as info:
        MqttSettings.from_url("mqtt://user:hunter2@broker:99999")
    assert "hunter2" not in str(info.value)
    assert "user:***@broker:99999" in str(info.value)


def test_from_url_overrides() -> None:
    s = MqttSettings.from_url("mqtt://h", keepalive=5, username="u")
    assert (s.keepalive, s.username, s.port) == (5, "u", 1883)
    with pytest.raises(MqttSettingsError, match="'colour'"):
        MqttSettings.from_url("mqtt://h", colour="red")
    with pytest.raises(MqttSettingsError, match="ca_file '/x.pem' is set but tls is False"):
        MqttSettings.from_url("mqtt://h", ca_file="/x.pem")


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"port": 0}, "port"),
        ({"port": 65536}, "port"),
        ({"port": True}, "port"),
        ({"host": ""}, "host"),
        ({"host": "a b"}, "host"),
        ({"keepalive": 0}, "keepalive"),
        ({"password": "p"}, "password"),
        ({"username": ""}, "username"),
        ({"tls": True, "key_file": "k.pem"}, "key_file"),
        ({"tls_insecure": True}, "tls_insecure"),
    ],
)
def test_settings_validate(fields: dict[str, object], needle: str) -> None:
    with pytest.raises(MqttSettingsError, match=needle):
        MqttSettings(**fields)  # type: ignore[arg-type]


def test_url_hides_the_password_and_repr_too() -> None:
    s = MqttSettings(host="h", port=1, username="a b", password="hunter2", tls=True)
    assert s.url == "mqtts://a%20b@h:1"
    assert "hunter2" not in repr(s)


_hosts = st.one_of(
    st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?(\.[a-z0-9]{1,10}){0,3}", fullmatch=True),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
)


@settings(max_examples=150, deadline=None)
@given(
    host=_hosts,
    port=st.integers(1, 65535),
    username=st.none() | st.text(min_size=1, max_size=12),
    password=st.none() | st.text(max_size=12),
    tls=st.booleans(),
)
def test_url_round_trips(host: str, port: int, username: str | None, password: str | None, tls: bool) -> None:
    if username is None:
        password = None
    s = MqttSettings(host=host, port=port, username=username, password=password, tls=tls)
    assert MqttSettings.from_url(s.url, password=password) == s


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=40), st.text(max_size=30).map(lambda t: "mqtt://" + t),
                 st.text(max_size=30).map(lambda t: "mqtts://u:p@" + t)))
def test_from_url_raises_only_its_own_error(url: str) -> None:
    try:
        s = MqttSettings.from_url(url)
    except MqttSettingsError:
        return
    assert MqttSettings.from_url(s.url, password=s.password) == s


def test_ssl_context_maps_the_settings(tmp_path: Path) -> None:
    assert MqttSettings().ssl_context() is None
    secure = MqttSettings(tls=True).ssl_context()
    assert secure is not None and secure.verify_mode == ssl.CERT_REQUIRED and secure.check_hostname
    insecure = MqttSettings(tls=True, tls_insecure=True).ssl_context()
    assert insecure is not None and insecure.verify_mode == ssl.CERT_NONE and not insecure.check_hostname
    with pytest.raises(MqttSettingsError, match="ca_file '.*missing.pem'"):
        MqttSettings(tls=True, ca_file=str(tmp_path / "missing.pem")).ssl_context()
    with pytest.raises(MqttSettingsError, match="cert_file"):
        MqttSettings(tls=True, cert_file=str(tmp_path / "c.pem")).ssl_context()


def test_bad_topics_and_arguments_are_refused() -> None:
    conn = MqttConnection(MqttSettings(), client_id="x")

    async def handler(message: Message) -> None:
        del message

    with pytest.raises(MqttSettingsError, match="'a/#/b'"):
        conn.subscribe("a/#/b", handler)
    with pytest.raises(MqttSettingsError, match="concurrency"):
        conn.subscribe("a", handler, concurrency=0)
    with pytest.raises(MqttSettingsError, match="qos"):
        conn.subscribe("a", handler, qos=3)
    with pytest.raises(MqttSettingsError, match="'a/\\+'"):
        Will("a/+", b"x")
    with pytest.raises(MqttSettingsError, match="client_id"):
        MqttConnection(MqttSettings(), client_id="")
    with pytest.raises(MqttSettingsError, match="reconnect_min_s"):
        MqttConnection(MqttSettings(), client_id="x", reconnect_min_s=2, reconnect_max_s=1)


# --- helpers ---------------------------------------------------------------------------------


class Inbox:
    """Collects messages; a handler that records and optionally blocks on a gate."""

    def __init__(self) -> None:
        self.messages: asyncio.Queue[Message] = asyncio.Queue()
        self.started: asyncio.Queue[Message] = asyncio.Queue()
        self.gate: asyncio.Event | None = None

    async def handler(self, message: Message) -> None:
        await self.started.put(message)
        if self.gate is not None:
            await self.gate.wait()
        await self.messages.put(message)

    async def get(self, timeout: float = 5.0) -> Message:
        return await asyncio.wait_for(self.messages.get(), timeout)

    async def nothing_for(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        assert self.messages.empty(), f"unexpected {self.messages.get_nowait()}"


@pytest.fixture
async def connect(broker_url: str) -> AsyncIterator[Callable[..., Awaitable[MqttConnection]]]:
    """connect(client_id, url=broker_url, **kw) → an entered connection that is up."""
    opened: list[MqttConnection] = []

    async def make(client_id: str, url: str | None = None, *, subs: dict[str, Inbox] | None = None,
                   **kwargs: object) -> MqttConnection:
        conn = MqttConnection(MqttSettings.from_url(url or broker_url), client_id=client_id,
                              **{**FAST, **kwargs})  # type: ignore[arg-type]
        for topic_filter, inbox in (subs or {}).items():
            conn.subscribe(topic_filter, inbox.handler)
        opened.append(conn)
        await conn.__aenter__()
        await asyncio.wait_for(conn.connected.wait(), 5)
        return conn

    yield make
    for conn in reversed(opened):
        await conn.aclose()


Connect = Callable[..., Awaitable[MqttConnection]]


# --- behaviour against both brokers -------------------------------------------------------------


async def test_publish_and_receive(connect: Connect, request: pytest.FixtureRequest) -> None:
    inbox = Inbox()
    await connect("sub", subs={"esl/+/pos/prices": inbox})
    pub = await connect("pub")
    await pub.publish("esl/s1/pos/prices", b'{"sku": "1"}', timeout=5)
    await pub.publish("esl/s1/pos/errors", b"not for us", timeout=5)
    await pub.publish("esl/s2/pos/prices", "text payload", qos=0, timeout=5)
    first, second = await inbox.get(), await inbox.get()
    assert first == Message("esl/s1/pos/prices", b'{"sku": "1"}', 1, False)
    # amqtt 0.12 delivers at the subscription's QoS, not min(publish, subscription) as MQTT says
    qos0 = 1 if request.node.callspec.params["broker_url"] == "amqtt" else 0
    assert second == Message("esl/s2/pos/prices", b"text payload", qos0, False)
    await inbox.nothing_for(0.2)


async def test_subscribe_while_connected(connect: Connect) -> None:
    conn = await connect("late-sub")
    inbox = Inbox()
    conn.subscribe("late/#", inbox.handler)
    pub = await connect("pub")
    for _ in range(100):  # the SUBSCRIBE goes out in the background
        await pub.publish("late/1", b"x", timeout=5)
        try:
            assert (await inbox.get(timeout=0.05)).payload == b"x"
            break
        except TimeoutError:
            continue
    else:
        raise AssertionError("a subscription made while connected never received anything")


async def test_messages_go_to_every_matching_subscription_only(connect: Connect) -> None:
    jobs, events, status = Inbox(), Inbox(), Inbox()
    await connect("gw", subs={"esl/s1/gateway/gw1/jobs": jobs, "esl/s1/gateway/+/events": events,
                              "esl/s1/gateway/gw1/status": status})
    pub = await connect("pub")
    await pub.publish("esl/s1/gateway/gw1/jobs", b"J", timeout=5)
    await pub.publish("esl/s1/gateway/gw2/events", b"E", timeout=5)
    assert (await jobs.get()).payload == b"J"
    assert (await events.get()).payload == b"E"
    await asyncio.sleep(0.2)
    assert jobs.messages.empty() and events.messages.empty() and status.messages.empty()


async def test_retained_message_reaches_a_late_subscriber(connect: Connect) -> None:
    pub = await connect("pub")
    await pub.publish("esl/s1/label/aa/state", b"{}", retain=True, timeout=5)
    inbox = Inbox()
    await connect("late", subs={"esl/s1/label/+/state": inbox}, clean_session=True)
    got = await inbox.get()
    assert (got.topic, got.payload, got.retain) == ("esl/s1/label/aa/state", b"{}", True)


async def test_concurrency_bounds_running_handlers(connect: Connect, broker_url: str) -> None:
    running = 0
    peak = 0
    done: asyncio.Queue[bytes] = asyncio.Queue()
    release = asyncio.Event()

    async def slow(message: Message) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await release.wait()
        running -= 1
        await done.put(message.payload)

    conn = MqttConnection(MqttSettings.from_url(broker_url), client_id="c3", reconnect_min_s=MIN_S, reconnect_max_s=MAX_S)
    conn.subscribe("t/many", slow, concurrency=3)
    async with conn:
        await asyncio.wait_for(conn.connected.wait(), 5)
        pub = await connect("pub2")
        for i in range(5):
            await pub.publish("t/many", str(i), timeout=5)
        for _ in range(100):
            if running == 3:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        assert peak == 3
        release.set()
        got = {await asyncio.wait_for(done.get(), 5) for _ in range(5)}
        assert got == {b"0", b"1", b"2", b"3", b"4"}


async def test_concurrency_one_keeps_order(connect: Connect) -> None:
    inbox = Inbox()
    await connect("ordered", subs={"t/order": inbox})
    pub = await connect("pub")
    await asyncio.gather(*(pub.publish("t/order", str(i), timeout=5) for i in range(20)))
    # concurrent publishes may leave in any order; the handler must see the broker's order
    got = [int((await inbox.get()).payload) for _ in range(20)]
    assert sorted(got) == list(range(20))
    for i in range(10):
        await pub.publish("t/order", str(i), timeout=5)
    assert [int((await inbox.get()).payload) for _ in range(10)] == list(range(10))


async def test_unfinished_message_is_redelivered_after_a_crash(connect: Connect, broker_url: str) -> None:
    async with TcpProxy(MqttSettings.from_url(broker_url).port) as proxy:
        inbox = Inbox()
        inbox.gate = asyncio.Event()  # never set: the handler never finishes
        crashing = await connect("gw-crash", proxy.url, subs={"jobs/#": inbox})
        pub = await connect("pub")
        await pub.publish("jobs/1", b"job-1", timeout=5)
        started = await asyncio.wait_for(inbox.started.get(), 5)
        assert started.payload == b"job-1"
        await proxy.refuse()
        proxy.cut()  # the process "dies" with the handler still running
        await crashing.aclose()

    again = Inbox()
    await connect("gw-crash", subs={"jobs/#": again})
    got = await again.get()
    assert got.payload == b"job-1"
    await again.nothing_for(0.2)


async def test_finished_message_is_not_redelivered(connect: Connect, broker_url: str) -> None:
    async with TcpProxy(MqttSettings.from_url(broker_url).port) as proxy:
        inbox = Inbox()
        conn = await connect("gw-ok", proxy.url, subs={"jobs/#": inbox})
        pub = await connect("pub")
        await pub.publish("jobs/1", b"job-1", timeout=5)
        assert (await inbox.get()).payload == b"job-1"
        await asyncio.sleep(0.1)  # let the PUBACK leave
        await proxy.refuse()
        proxy.cut()
        await conn.aclose()
    again = Inbox()
    await connect("gw-ok", subs={"jobs/#": again})
    await pub.publish("jobs/2", b"job-2", timeout=5)
    assert (await again.get()).payload == b"job-2"  # the session was kept, job-1 was not resent
    await again.nothing_for(0.2)


async def test_failing_handler_is_logged_once_and_acked(
    connect: Connect, broker_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[bytes] = []

    async def poison(message: Message) -> None:
        calls.append(message.payload)
        raise KeyError("price")

    conn = MqttConnection(MqttSettings.from_url(broker_url), client_id="poisoned", reconnect_min_s=MIN_S, reconnect_max_s=MAX_S)
    conn.subscribe("p/#", poison)
    caplog.set_level(logging.DEBUG, logger="eslserver.mqtt")
    async with conn:
        await asyncio.wait_for(conn.connected.wait(), 5)
        pub = await connect("pub")
        await pub.publish("p/1", b"1", timeout=5)
        await pub.publish("p/2", b"2", timeout=5)
        for _ in range(200):
            if len(calls) == 2:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
    errors = [r for r in caplog.records if r.name == "eslserver.mqtt" and r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "KeyError" in errors[0].getMessage()
    inbox = Inbox()
    await connect("poisoned", subs={"p/#": inbox})
    await inbox.nothing_for(0.3)  # both were acknowledged: nothing comes back
    assert calls == [b"1", b"2"]


async def test_last_will_on_abrupt_loss_not_on_clean_close(connect: Connect, broker_url: str) -> None:
    status = Inbox()
    await connect("watcher", subs={"esl/s1/gateway/+/status": status}, clean_session=True)
    async with TcpProxy(MqttSettings.from_url(broker_url).port) as proxy:
        acked = asyncio.Event()

        async def online() -> None:
            await gw.publish("esl/s1/gateway/gw1/status", b"online", retain=True, timeout=5)
            acked.set()

        gw = MqttConnection(MqttSettings.from_url(proxy.url), client_id="esl-gateway-s1-gw1",
                            will=Will("esl/s1/gateway/gw1/status", b"offline", retain=True),
                            on_connect=online, reconnect_min_s=MIN_S, reconnect_max_s=MAX_S)
        async with gw:
            assert (await status.get()).payload == b"online"
            # cut only once the broker acknowledged it: a publish cut before its PUBACK is sent
            # again on the next connection (at least once), which would be a second "online"
            await asyncio.wait_for(acked.wait(), 5)
            await proxy.refuse()
            proxy.cut()
            assert (await status.get()).payload == b"offline"
            await proxy.accept()
            assert (await status.get()).payload == b"online"  # reconnected, on_connect again
        await status.nothing_for(0.3)  # the clean close sends no will
    late = Inbox()
    await connect("late-watcher", subs={"esl/s1/gateway/+/status": late}, clean_session=True)
    got = await late.get()
    assert (got.payload, got.retain) == (b"online", True)


async def test_connection_survives_network_cut_and_logs_once(
    connect: Connect, broker_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="eslserver.mqtt")
    inbox = Inbox()
    async with TcpProxy(MqttSettings.from_url(broker_url).port) as proxy:
        conn = await connect("flaky", proxy.url, subs={"f/#": inbox})
        pub = await connect("pub")
        await proxy.refuse()
        proxy.cut()
        await asyncio.sleep(0.6)  # several refused reconnect attempts
        assert not conn.is_connected
        await proxy.accept()
        await asyncio.wait_for(conn.connected.wait(), 5)
        await pub.publish("f/1", b"after", timeout=5)
        assert (await inbox.get()).payload == b"after"  # resubscribed
        await conn.aclose()
    msgs = [r.getMessage() for r in caplog.records if r.name == "eslserver.mqtt"]
    assert sum("lost connection to" in m for m in msgs) == 1
    assert sum("reconnected to" in m for m in msgs) == 1
    assert sum("cannot connect" in m for m in msgs) == 0


async def test_publish_times_out_while_down(broker_url: str) -> None:
    async with TcpProxy(MqttSettings.from_url(broker_url).port) as proxy:
        await proxy.refuse()
        async with MqttConnection(MqttSettings.from_url(proxy.url), client_id="p", reconnect_min_s=MIN_S, reconnect_max_s=MAX_S) as conn:
            with pytest.raises(MqttUnavailable, match="within 0.2 s"):
                await conn.publish("t", b"x", timeout=0.2)
        with pytest.raises(MqttUnavailable, match="closed"):
            await conn.publish("t", b"x", timeout=1)


# --- Mosquitto only: restart of the broker, credentials -----------------------------------------


async def test_publish_waits_through_a_broker_restart() -> None:
    broker = MosquittoBroker()
    await broker.start()
    try:
        inbox = Inbox()
        settings_ = MqttSettings.from_url(broker.url)
        async with (
            MqttConnection(settings_, client_id="restart-sub", reconnect_min_s=MIN_S, reconnect_max_s=MAX_S) as sub,
            MqttConnection(settings_, client_id="restart-pub", reconnect_min_s=MIN_S, reconnect_max_s=MAX_S) as pub,
        ):
            sub.subscribe("r/#", inbox.handler)
            await asyncio.wait_for(sub.connected.wait(), 5)
            await asyncio.wait_for(pub.connected.wait(), 5)
            await broker.stop()  # persistence is off: sessions are gone with it
            for _ in range(100):
                if not pub.is_connected:
                    break
                await asyncio.sleep(0.02)
            # retained: the subscriber gets it whether it resubscribes before or after it is sent
            sending = asyncio.create_task(pub.publish("r/1", b"through", retain=True, timeout=8))
            await asyncio.sleep(0.3)
            assert not sending.done()
            await broker.start()
            await asyncio.wait_for(sending, 8)
            assert (await inbox.get()).payload == b"through"
    finally:
        await broker.aclose()


async def test_connection_started_while_broker_is_down() -> None:
    port = free_port()
    async with MqttConnection(MqttSettings(port=port), client_id="early", reconnect_min_s=MIN_S, reconnect_max_s=MAX_S) as conn:
        await asyncio.sleep(0.3)
        assert not conn.is_connected
        async with mosquitto(port):
            await asyncio.wait_for(conn.connected.wait(), 5)
            await conn.publish("e/1", b"x", timeout=5)


@pytest.mark.skipif(MOSQUITTO_PASSWD is None, reason="mosquitto_passwd is not installed")
async def test_username_and_password(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert MOSQUITTO_PASSWD is not None
    passwords = tmp_path / "passwd"
    passwords.touch()
    command = [MOSQUITTO_PASSWD, "-b", str(passwords), "pos", "s3cret"]
    subprocess.run(command, check=True, capture_output=True)  # noqa: ASYNC221 - short, before any I/O
    caplog.set_level(logging.WARNING, logger="eslserver.mqtt")
    async with mosquitto(password_file=passwords) as url:
        good = MqttSettings.from_url(url.replace("mqtt://", "mqtt://pos:s3cret@"))
        async with MqttConnection(good, client_id="auth-ok", reconnect_min_s=MIN_S, reconnect_max_s=MAX_S) as conn:
            await asyncio.wait_for(conn.connected.wait(), 5)
            await conn.publish("a/1", b"x", timeout=5)
        bad = MqttSettings.from_url(url, username="pos", password="wrong")
        async with MqttConnection(bad, client_id="auth-bad", reconnect_min_s=MIN_S, reconnect_max_s=MAX_S) as conn:
            with pytest.raises(MqttUnavailable):
                await conn.publish("a/1", b"x", timeout=0.5)
    refused = [r.getMessage() for r in caplog.records if "cannot connect" in r.getMessage()]
    assert len(refused) == 1 and "wrong" not in refused[0]


async def test_tls_with_ca_file_insecure_and_untrusted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    tls = make_tls_files(tmp_path)
    caplog.set_level(logging.WARNING, logger="eslserver.mqtt")
    async with mosquitto(tls=tls) as url:
        assert url.startswith("mqtts://")
        inbox = Inbox()
        trusted = MqttSettings.from_url(url, ca_file=str(tls.ca_file))
        insecure = MqttSettings.from_url(url, tls_insecure=True)
        async with (
            MqttConnection(trusted, client_id="tls-sub", reconnect_min_s=MIN_S, reconnect_max_s=MAX_S) as sub,
            MqttConnection(insecure, client_id="tls-pub", reconnect_min_s=MIN_S, reconnect_max_s=MAX_S) as pub,
        ):
            sub.subscribe("tls/#", inbox.handler)
            await asyncio.wait_for(sub.connected.wait(), 5)
            await pub.publish("tls/1", b"secret", timeout=5)
            assert (await inbox.get()).payload == b"secret"
        untrusted = MqttSettings.from_url(url)  # the system CA store does not know our test CA
        async with MqttConnection(untrusted, client_id="tls-no", reconnect_min_s=MIN_S,
                                  reconnect_max_s=MAX_S) as conn:
            with pytest.raises(MqttUnavailable):
                await conn.publish("tls/1", b"x", timeout=0.5)
    refused = [r.getMessage() for r in caplog.records if "cannot connect" in r.getMessage()]
    assert len(refused) == 1 and "certificate" in refused[0].lower()


async def test_tls_client_certificate(tmp_path: Path) -> None:
    tls = make_tls_files(tmp_path)
    async with mosquitto(tls=tls, require_client_cert=True) as url:
        with_cert = MqttSettings.from_url(url, ca_file=str(tls.ca_file), cert_file=str(tls.client_cert),
                                          key_file=str(tls.client_key))
        async with MqttConnection(with_cert, client_id="cert", reconnect_min_s=MIN_S,
                                  reconnect_max_s=MAX_S) as conn:
            await conn.publish("tls/cert", b"ok", timeout=5)
        without = MqttSettings.from_url(url, ca_file=str(tls.ca_file))
        async with MqttConnection(without, client_id="nocert", reconnect_min_s=MIN_S,
                                  reconnect_max_s=MAX_S) as conn:
            with pytest.raises(MqttUnavailable):
                await conn.publish("tls/cert", b"no", timeout=0.5)
