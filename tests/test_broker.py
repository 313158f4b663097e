"""eslserver.broker.EmbeddedBroker, on both its paths (a Mosquitto child process and amqtt in our
loop): lifecycle, ports, and QoS 1, retained messages, last wills and persistent sessions seen by
plain aiomqtt clients. tests/test_broker_conformance.py checks the MQTT rules one by one."""

from __future__ import annotations

import asyncio

import aiomqtt
import pytest

from eslserver.broker import BrokerError, EmbeddedBroker
from tests.brokers import MOSQUITTO, TcpProxy, free_port

IMPLEMENTATIONS = [
    "amqtt",
    pytest.param("mosquitto", marks=pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto is not installed")),
]


@pytest.fixture(params=IMPLEMENTATIONS)
def impl(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def _next(client: aiomqtt.Client, timeout: float = 5.0) -> aiomqtt.Message:
    async def first() -> aiomqtt.Message:
        async for message in client.messages:
            return message
        raise AssertionError("unreachable")

    return await asyncio.wait_for(first(), timeout)


async def test_url_port_and_close_twice(impl: str) -> None:
    broker = EmbeddedBroker(implementation=impl)
    with pytest.raises(BrokerError, match="not started"):
        _ = broker.url
    async with broker:
        assert broker.url == f"mqtt://127.0.0.1:{broker.port}"
        async with aiomqtt.Client("127.0.0.1", broker.port, identifier="probe") as client:
            await client.publish("probe", b"x", qos=1)
    await broker.aclose()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", broker.port)
    with pytest.raises(BrokerError, match="closed"):
        await broker.start()


async def test_fixed_port_and_port_taken(impl: str) -> None:
    port = free_port()
    async with EmbeddedBroker(port=port, implementation=impl) as broker:
        assert broker.port == port
        with pytest.raises(BrokerError, match=str(port)):
            await EmbeddedBroker(port=port, implementation=impl).start()
    with pytest.raises(ValueError, match="70000"):
        EmbeddedBroker(port=70000)


async def test_qos1_retained_and_will(impl: str) -> None:
    async with EmbeddedBroker(implementation=impl) as broker, TcpProxy(broker.port) as proxy:
        will = aiomqtt.Will("gw/status", b"offline", qos=1, retain=True)
        async with aiomqtt.Client("127.0.0.1", broker.port, identifier="watch") as watcher:
            await watcher.subscribe("gw/#", qos=1)
            dying = aiomqtt.Client("127.0.0.1", proxy.port, identifier="gw", will=will)
            await dying.__aenter__()
            await dying.publish("gw/status", b"online", qos=1, retain=True)
            assert (await _next(watcher)).payload == b"online"
            proxy.cut()  # a crash: the connection dies, no DISCONNECT reaches the broker
            assert (await _next(watcher)).payload == b"offline"
            with pytest.raises(aiomqtt.MqttError):  # the dead client sees its loss too
                await _next(dying)
            await dying.__aexit__(None, None, None)
        async with aiomqtt.Client("127.0.0.1", broker.port, identifier="late") as late:
            await late.subscribe("gw/status", qos=1)
            got = await _next(late)
            assert (got.payload, got.retain) == (b"offline", True)


async def test_persistent_session_keeps_subscriptions_and_queues_messages(impl: str) -> None:
    async with EmbeddedBroker(implementation=impl) as broker:
        async with aiomqtt.Client("127.0.0.1", broker.port, identifier="gw1", clean_session=False) as gw:
            await gw.subscribe("jobs/#", qos=1)
        async with aiomqtt.Client("127.0.0.1", broker.port, identifier="server") as server:
            await server.publish("jobs/1", b"while away", qos=1)
        async with aiomqtt.Client("127.0.0.1", broker.port, identifier="gw1", clean_session=False) as gw:
            got = await _next(gw)  # no new SUBSCRIBE: the session kept it
            assert (got.topic.value, got.payload, got.qos) == ("jobs/1", b"while away", 1)


async def test_close_with_clients_connected_leaves_no_tasks(impl: str) -> None:
    broker = EmbeddedBroker(implementation=impl)
    await broker.start()
    client = aiomqtt.Client("127.0.0.1", broker.port, identifier="stay")
    await client.__aenter__()
    await client.subscribe("x", qos=1)
    await broker.aclose()
    with pytest.raises(aiomqtt.MqttError):
        await _next(client)
    await client.__aexit__(None, None, None)


async def test_two_brokers_in_one_process_are_independent(impl: str) -> None:
    async with EmbeddedBroker(implementation=impl) as first:
        second = EmbeddedBroker(implementation=impl)
        await second.start()
        assert first.port != second.port
        async with aiomqtt.Client("127.0.0.1", first.port, identifier="on-first") as client:
            await client.subscribe("x", qos=1)
            await second.aclose()  # must not disturb the first broker's connections
            await client.publish("x", b"still here", qos=1)
            assert (await _next(client)).payload == b"still here"


class _RecordingRules:
    """Access rules that allow everything but receiving on ``deny/…``, and record every question
    amqtt asks: the peer under test is amqtt's plugin API (0.12.1), not our rules."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, str | None, str]] = []

    def verify(self, username: str | None, password: object) -> object:
        return object() if username == "user" and password == "pw" else None

    def may_publish(self, username: str | None, topic: str) -> bool:
        self.asked.append(("publish", username, topic))
        return True

    def may_subscribe(self, username: str | None, topic_filter: str) -> bool:
        self.asked.append(("subscribe", username, topic_filter))
        return True

    def may_receive(self, username: str | None, topic: str) -> bool:
        self.asked.append(("receive", username, topic))
        return not topic.startswith("deny/")


async def test_amqtt_asks_the_access_plugins_for_connect_publish_subscribe_and_receive() -> None:
    """The plugin API the embedded amqtt broker's access rules rely on: `authenticate` refuses
    the CONNECT, `topic_filtering` is asked with the session's user name for every publish,
    subscribe and delivery, and a refused delivery is not sent; our `AccessHolder` reaches the
    plugins through amqtt's copies of its configuration."""
    from eslserver.broker_amqtt import IdentityAuthPlugin, IdentityTopicPlugin

    rules = _RecordingRules()
    async with EmbeddedBroker(implementation="amqtt", access=rules) as broker:  # type: ignore[arg-type]
        assert broker._amqtt is not None
        for plugin_class in (IdentityAuthPlugin, IdentityTopicPlugin):
            plugin = broker._amqtt.plugins_manager.get_plugin(plugin_class.__name__)
            assert plugin is not None and plugin.config.access is broker._holder  # not a copy
        with pytest.raises(aiomqtt.MqttError):
            async with aiomqtt.Client("127.0.0.1", broker.port, identifier="anon", timeout=5):
                pass
        async with aiomqtt.Client("127.0.0.1", broker.port, identifier="c1", username="user", password="pw") as c:
            await c.subscribe("allow/#", qos=1)
            await c.subscribe("deny/#", qos=1)
            await c.publish("deny/x", b"no", qos=1)
            await c.publish("allow/x", b"yes", qos=1)
            message = await _next(c)
            assert (str(message.topic), message.payload) == ("allow/x", b"yes")
        assert {("subscribe", "user", "allow/#"), ("subscribe", "user", "deny/#"), ("publish", "user", "deny/x"),
                ("publish", "user", "allow/x"), ("receive", "user", "deny/x"),
                ("receive", "user", "allow/x")} <= set(rules.asked)


async def test_new_access_rules_need_a_broker_started_with_rules(impl: str) -> None:
    from eslserver.mqtt_access import AccessSnapshot

    async with EmbeddedBroker(implementation=impl) as broker:
        assert broker.access is None
        with pytest.raises(BrokerError, match="started without access rules"):
            await broker.set_access(AccessSnapshot("esl", []))
