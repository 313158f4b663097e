"""The embedded broker as the server runs it: its settings (``mqtt_port``, ``embedded_broker``),
the URL `esl serve --broker-port` prints (an external gateway can be pointed at it), and no
Mosquitto left behind when the server is killed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
import pytest

from eslserver.broker import BrokerError, EmbeddedBroker
from eslserver.config import ConfigError, load_settings
from eslserver.server import Server
from tests.brokers import MOSQUITTO, free_port
from tests.processes import SERVE_READY, Processes, esl_argv

_needs_mosquitto = pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto is not installed")


@pytest.mark.parametrize(("env", "message"), [
    ({"ESL_MQTT_PORT": "70000"}, "mqtt_port"),
    ({"ESL_MQTT_PORT": "-1"}, "-1"),
    ({"ESL_EMBEDDED_BROKER": "hivemq"}, "embedded_broker: expected auto, mosquitto, amqtt, got 'hivemq'"),
])
def test_bad_broker_settings_are_refused_naming_them(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(environ=env)


def test_broker_settings_default_to_auto_on_a_free_port() -> None:
    settings = load_settings(environ={})
    assert (settings.mqtt_port, settings.embedded_broker) == (0, "auto")


def test_unknown_implementation_is_refused() -> None:
    with pytest.raises(ValueError, match="'hivemq'"):
        EmbeddedBroker(implementation="hivemq")


async def test_auto_prefers_mosquitto_when_installed() -> None:
    async with EmbeddedBroker() as broker:
        assert broker.implementation == ("mosquitto" if MOSQUITTO else "amqtt")


@pytest.mark.parametrize("implementation", ["amqtt", pytest.param("mosquitto", marks=_needs_mosquitto)])
async def test_server_runs_the_configured_broker_on_the_configured_port(tmp_path: Path, implementation: str) -> None:
    port = free_port()
    settings = load_settings(environ={"ESL_DATA_DIR": str(tmp_path), "ESL_MQTT_PORT": str(port),
                                      "ESL_EMBEDDED_BROKER": implementation})
    async with Server(settings, http=False, render_processes=False) as server:
        assert server.broker is not None
        assert (server.broker_url, server.broker.implementation) == (f"mqtt://127.0.0.1:{port}", implementation)
        gw9 = await server.add_identity("gateway", "gw9")  # the embedded broker refuses anonymous clients
        async with aiomqtt.Client("127.0.0.1", port, identifier="external-gateway", username=gw9.username,
                                  password=gw9.password) as gateway:
            await gateway.publish(server.topics.gateway_status("gw9"), b"online", qos=1, retain=True)
        with pytest.raises(BrokerError, match=f"{port}.*mqtt_port"):  # taken by the server's broker now
            await EmbeddedBroker(port=port, implementation=implementation).start()
    if implementation == "mosquitto":
        assert (tmp_path / "broker" / "mosquitto.conf").is_file()
    with pytest.raises(OSError):  # the broker stopped with the server
        await asyncio.open_connection("127.0.0.1", port)


@_needs_mosquitto
async def test_serve_prints_the_broker_port_and_takes_its_broker_down_when_killed(tmp_path: Path) -> None:
    port = free_port()
    async with Processes(tmp_path) as procs:
        serve = procs.spawn("serve", esl_argv("serve", "--data", str(tmp_path / "data"), "--http-port", "0",
                                              "--broker-port", str(port)), env={"ESL_EMBEDDED_BROKER": "mosquitto"})
        await serve.start(ready=SERVE_READY)
        assert f"broker mqtt://127.0.0.1:{port} (embedded mosquitto)" in serve.log
        # registered beside the running server (its own process), as an operator does
        added = await asyncio.to_thread(subprocess.run, esl_argv("gateways", "add", "demo/gw9", "--json", "--data",
                                                                 str(tmp_path / "data")),
                                        capture_output=True, text=True, timeout=60)
        assert added.returncode == 0, added.stderr
        gw9 = json.loads(added.stdout)
        async with _connected(port, gw9["username"], gw9["password"]) as gateway:
            await gateway.subscribe("esl/demo/gateway/gw9/jobs", qos=1)
        serve.kill()  # SIGKILL: no chance to stop its broker; the kernel must (Linux)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                break  # the Mosquitto child is gone with its parent
            writer.close()
            assert loop.time() < deadline, "the embedded Mosquitto outlived the killed server"
            await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def _connected(port: int, username: str, password: str) -> AsyncIterator[aiomqtt.Client]:
    """A client of the broker on `port`, once the server has read its new identity (within a
    second) and the broker lets it in."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while True:
        client = aiomqtt.Client("127.0.0.1", port, identifier="external-gateway", username=username,
                                password=password)
        try:
            await client.__aenter__()
            break
        except aiomqtt.MqttError:
            assert loop.time() < deadline, "the broker never let the new gateway in"
            await asyncio.sleep(0.2)
    try:
        yield client
    finally:
        await client.__aexit__(None, None, None)
