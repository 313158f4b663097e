"""One settings path for the server and the gateway: esl.toml < ESL_* < flags, one MqttSettings.

`esl gateway` reads the server's keys (broker_url, mqtt_*, topic_prefix, store, data_dir,
log_format) and its own (gateway_id, radio, gateway_concurrency, gateway_status_interval_s)
through `load_settings`, and both processes turn the settings into a broker connection with
`MqttSettings.from_settings`. Tested on a real `esl gateway` process, a real Mosquitto and the
simulator's radio: a gateway configured by file and environment alone comes up on the topics
they name.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from eslserver.broker import free_port
from eslserver.cli import app
from eslserver.config import load_settings
from eslserver.mqtt import Message, MqttConnection, MqttSettings, MqttSettingsError
from eslserver.topics import Topics
from simulator.radio_server import RadioServer
from simulator.store import SimStore, StoreConfig
from tests.brokers import mosquitto
from tests.processes import GATEWAY_READY, Processes, esl_argv

NO_FILE = {"ESL_CONFIG": "/nonexistent/esl.toml"}


def test_mqtt_settings_come_from_the_broker_url_and_the_mqtt_keys(tmp_path: Path) -> None:
    toml = tmp_path / "esl.toml"
    toml.write_text('broker_url = "mqtts://till:url-secret@broker.example:8884"\nmqtt_ca_file = "ca.pem"\n'
                    'mqtt_cert_file = "me.pem"\nmqtt_key_file = "me.key"\n', encoding="utf-8")
    env = {"ESL_MQTT_USERNAME": "gw", "ESL_MQTT_PASSWORD": "s3cret", "ESL_MQTT_INSECURE": "true"}
    mqtt = MqttSettings.from_settings(load_settings(toml, environ=env))
    assert mqtt == MqttSettings(host="broker.example", port=8884, username="gw", password="s3cret", tls=True,
                                ca_file="ca.pem", cert_file="me.pem", key_file="me.key", tls_insecure=True)
    assert "s3cret" not in repr(mqtt) and mqtt.url == "mqtts://gw@broker.example:8884"
    # the URL's own user and password stay when no mqtt_username / mqtt_password is set
    plain = MqttSettings.from_settings(load_settings(None, environ={**NO_FILE, "ESL_BROKER_URL": "mqtt://u:p@h:1"}))
    assert (plain.host, plain.port, plain.username, plain.password, plain.tls) == ("h", 1, "u", "p", False)


def test_an_embedded_brokers_url_stands_in_for_a_missing_broker_url() -> None:
    settings = load_settings(None, environ={**NO_FILE, "ESL_MQTT_USERNAME": "srv"})
    assert settings.broker_url is None
    mqtt = MqttSettings.from_settings(settings, "mqtt://127.0.0.1:18830")
    assert (mqtt.host, mqtt.port, mqtt.username) == ("127.0.0.1", 18830, "srv")
    with pytest.raises(MqttSettingsError, match="broker_url is not set"):
        MqttSettings.from_settings(settings)
    bad = load_settings(None, environ={**NO_FILE, "ESL_BROKER_URL": "mqtt://h:1", "ESL_MQTT_CA_FILE": "ca.pem"})
    with pytest.raises(MqttSettingsError, match="ca_file 'ca.pem' is set but tls is False"):
        MqttSettings.from_settings(bad)


def test_gateway_keys_are_settings_validated_once(tmp_path: Path) -> None:
    toml = tmp_path / "esl.toml"
    toml.write_text('gateway_id = "gw-file"\nradio = "ble"\ngateway_concurrency = 3\n'
                    'gateway_status_interval_s = 2.5\n', encoding="utf-8")
    s = load_settings(toml, environ={"ESL_GATEWAY_ID": "gw-env"})
    assert (s.gateway_id, s.radio, s.gateway_concurrency, s.gateway_status_interval_s) == ("gw-env", "ble", 3, 2.5)
    assert load_settings(toml, environ={}, overrides={"gateway_id": "gw-flag"}).gateway_id == "gw-flag"
    for env, message in (({"ESL_GATEWAY_ID": "a/b"}, "gateway_id must be a non-empty MQTT topic level"),
                         ({"ESL_GATEWAY_CONCURRENCY": "0"}, "gateway_concurrency: expected an integer in 1..10000"),
                         ({"ESL_GATEWAY_STATUS_INTERVAL_S": "-1"}, "gateway_status_interval_s: expected a number > 0")):
        with pytest.raises(ValueError, match=re.escape(message)):
            load_settings(None, environ={**NO_FILE, **env})


def _gateway(args: list[str], env: dict[str, str] | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["gateway", *args], env={"ESL_CONFIG": "/nonexistent/esl.toml", **(env or {})})
    return result.exit_code, re.sub(r"[\s│╭╮╰╯─]+", " ", result.output)


@pytest.mark.parametrize(("args", "env", "message"), [
    ([], {}, "broker_url is not set: set it with --broker, broker_url in esl.toml or ESL_BROKER_URL"),
    (["--broker", "mqtt://127.0.0.1:1"], {}, "radio is not set: set it with --radio, radio in esl.toml or ESL_RADIO"),
    ([], {"ESL_BROKER_URL": "mqtt://127.0.0.1:1", "ESL_RADIO": "ble"},
     "gateway_id is not set: set it with --id, gateway_id in esl.toml or ESL_GATEWAY_ID"),
    (["--prefix", "a+b", "--id", "g"], {"ESL_BROKER_URL": "mqtt://127.0.0.1:1", "ESL_RADIO": "ble"},
     "topic_prefix: expected 1-32 letters, digits, '_' or '-', got 'a+b'"),
])
def test_the_gateway_names_a_missing_or_bad_setting_and_where_to_set_it(args: list[str], env: dict[str, str],
                                                                         message: str) -> None:
    code, output = _gateway(args, env)
    assert code == 2 and message in output, output


def test_flags_beat_the_environment_which_beats_the_file(tmp_path: Path) -> None:
    """The radio named last wins: it is the one the gateway then fails to reach (exit 1)."""
    file_port, env_port, flag_port = free_port(), free_port(), free_port()
    toml = tmp_path / "gw.toml"
    toml.write_text(f'broker_url = "mqtt://127.0.0.1:1"\nradio = "sim://127.0.0.1:{file_port}"\n'
                    f'gateway_id = "gw1"\ndata_dir = "{tmp_path / "data"}"\n', encoding="utf-8")
    for args, env, port in ((["--config", str(toml)], {}, file_port),
                            (["--config", str(toml)], {"ESL_RADIO": f"sim://127.0.0.1:{env_port}"}, env_port),
                            (["--config", str(toml), "--radio", f"sim://127.0.0.1:{flag_port}"],
                             {"ESL_RADIO": f"sim://127.0.0.1:{env_port}"}, flag_port)):
        code, output = _gateway(args, env)
        assert code == 1 and f"no loopback radio at 127.0.0.1:{port}" in output, output


async def test_a_gateway_configured_by_file_and_environment_joins_its_topics(tmp_path: Path) -> None:
    store = SimStore(StoreConfig(labels=1))
    async with mosquitto() as url, store, RadioServer(store, "127.0.0.1", 0) as radio, \
            Processes(tmp_path / "procs") as procs:
        host, port = radio.address
        (tmp_path / "procs" / "esl.toml").write_text(  # the gateway's working directory
            f'broker_url = "{url}"\nradio = "sim://{host}:{port}"\ntopic_prefix = "chain"\nstore = "s042"\n'
            f'gateway_id = "from-file"\ndata_dir = "{tmp_path / "gwdata"}"\ngateway_status_interval_s = 0.2\n'
            'log_format = "json"\n', encoding="utf-8")
        topics = Topics("chain", "s042")
        events: list[Message] = []
        status: list[Message] = []

        async def on_event(message: Message) -> None:
            events.append(message)

        async def on_status(message: Message) -> None:
            status.append(message)

        watcher = MqttConnection(MqttSettings.from_url(url), client_id="test-watcher", clean_session=True)
        watcher.subscribe(topics.gateway_events("from-env"), on_event, qos=1)
        watcher.subscribe(topics.gateway_status("from-env"), on_status, qos=1)
        async with watcher:
            await watcher.connected.wait()
            gateway = procs.spawn("gateway", esl_argv("gateway", "-v"), env={"ESL_GATEWAY_ID": "from-env"})
            await gateway.start(ready=GATEWAY_READY, timeout=60)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 20
            while not (events and any(m.payload == b"online" for m in status)):
                assert loop.time() < deadline, gateway.log
                await asyncio.sleep(0.05)
            assert await gateway.stop() == 0
        first = json.loads(events[0].payload)
        assert first["type"] == "status" and first["gateway"] == "from-env"
        assert (tmp_path / "gwdata" / "gateway-s042-from-env.spool.sqlite3").is_file()
        records = [json.loads(line) for line in gateway.log.splitlines() if line.startswith("{")]
        assert records and all(r["store"] == "s042" and r["gateway"] == "from-env" for r in records), gateway.log
