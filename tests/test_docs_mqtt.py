"""docs/mqtt.asyncapi.yaml against itself, against the code, and against the wire.

The document is the MQTT contract users read, so it must be what the system really does:

- its structure: AsyncAPI 3, every channel used by an operation, every message with a payload
  schema that is valid JSON Schema, every example valid against its own schema;
- its examples are what the real code accepts (POS messages through the server's ingest, gateway
  events through the server's event parser) and what it answers (the ``pos/errors`` examples
  are byte for byte what ingest publishes for the POS message they answer);
- the wire: a whole store (Mosquitto, server, gateway, simulated labels; tests/pipeline_shop.py)
  runs a price change end to end, with a rejected item, while a client subscribed to ``esl/#``
  records every message. Each must fall in exactly one documented channel (an undocumented
  topic fails) and validate against that channel's message; QoS and retained flags must be the
  documented ones.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft7Validator

from eslserver.config import load_settings
from eslserver.gateway.events import NACK_CODES, parse_event
from eslserver.ingest import ack_message, error_message
from eslserver.labels import STATE_COLUMNS, state_json
from eslserver.metrics import LABEL_STATES
from eslserver.mqtt import Message
from eslserver.pricing import CANONICAL_FIELDS, ERROR_CODES
from eslserver.server import SYSTEM, Server
from eslserver.topics import Kind, Topic
from firmware_proto.envelope import (
    ENDORSED_VERSION,
    ENVELOPE_MAGIC,
    ENVELOPE_VERSION,
    MAX_ENVELOPE,
    JobKind,
    parse_envelope,
)
from tests.brokers import mosquitto
from tests.pipeline_shop import collect, shop

DOC_PATH = Path(__file__).resolve().parents[1] / "docs" / "mqtt.asyncapi.yaml"
DOC: dict[str, Any] = yaml.safe_load(DOC_PATH.read_text(encoding="utf-8"))
CHANNELS: dict[str, Any] = DOC["channels"]
OPERATIONS: dict[str, Any] = DOC["operations"]


def resolve(node: Any) -> Any:
    """`node`, or what its local ``$ref`` points to (``#/a/b``), followed to the end."""
    while isinstance(node, Mapping) and "$ref" in node:
        ref = node["$ref"]
        assert ref.startswith("#/"), f"only local references: {ref}"
        target: Any = DOC
        for part in ref[2:].split("/"):
            assert part in target, f"{ref}: no {part!r}"
            target = target[part]
        node = target
    return node


def messages(channel: str) -> dict[str, dict[str, Any]]:
    return {name: resolve(m) for name, m in CHANNELS[channel]["messages"].items()}


def validator(schema: Mapping[str, Any]) -> Draft7Validator:
    """A draft-7 validator for a payload schema, its ``#/components/...`` references resolvable."""
    return Draft7Validator({"allOf": [schema], "components": DOC["components"]},
                           format_checker=Draft7Validator.FORMAT_CHECKER)


def _address_pattern(address: str) -> re.Pattern[str]:
    parts = re.split(r"(\{[a-z]+\})", address)
    return re.compile("".join("[^/+#]+" if p.startswith("{") else re.escape(p) for p in parts) + "$")


_PATTERNS = {name: _address_pattern(ch["address"]) for name, ch in CHANNELS.items()}


def channel_for(topic: str) -> str:
    found = [name for name, pattern in _PATTERNS.items() if pattern.match(topic)]
    assert len(found) == 1, f"topic {topic!r} matches {found or 'no'} documented channel(s)"
    return found[0]


def _check_envelope(data: bytes, message: Mapping[str, Any]) -> None:
    facts = message["x-envelope"]
    assert data[:2] == bytes.fromhex(facts["magic"]), data[:4].hex()
    assert data[2] in (facts["version"], facts["endorsed_version"]), data[:4].hex()
    assert data[3] in facts["kinds"] and len(data) <= facts["max_bytes"]
    parse_envelope(data)  # the gateway's own decoder accepts it


def check_payload(channel: str, payload: bytes) -> None:
    """`payload` is a valid message of `channel` (one of its messages, by content type)."""
    problems = []
    for name, message in messages(channel).items():
        ctype = message.get("contentType", DOC["defaultContentType"])
        try:
            if ctype == "application/octet-stream":
                _check_envelope(payload, message)
                return
            value = json.loads(payload) if ctype == "application/json" else payload.decode("utf-8")
        except Exception as exc:  # noqa: BLE001 — reported below with the payload
            problems.append(f"{name}: {exc!r}")
            continue
        errors = sorted(validator(message["payload"]).iter_errors(value), key=str)
        if not errors:
            return
        problems.append(f"{name}: " + "; ".join(f"{list(e.absolute_path)}: {e.message}" for e in errors[:5]))
    raise AssertionError(f"payload on {channel} matches no documented message: {payload[:300]!r}: {problems}")


def binding(operation: Mapping[str, Any]) -> dict[str, Any]:
    return dict(operation["bindings"]["mqtt"])


def operations_of(channel: str) -> list[dict[str, Any]]:
    return [op for op in OPERATIONS.values() if resolve(op["channel"]) is CHANNELS[channel]]


# --- the document itself -------------------------------------------------------------------------

def test_the_document_is_asyncapi_3_with_servers_and_channels() -> None:
    assert str(DOC["asyncapi"]).startswith("3."), DOC["asyncapi"]
    assert DOC["info"]["title"] and DOC["info"]["version"]
    assert {s["protocol"] for s in DOC["servers"].values()} == {"mqtt", "secure-mqtt"}
    assert set(DOC) <= {"asyncapi", "id", "info", "servers", "defaultContentType", "channels", "operations",
                        "components"}


def test_no_schema_key_is_stray_text() -> None:
    """A comma in an unquoted YAML flow mapping (``{description: a, b}``) makes ``b`` a key."""
    stray = []

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if not re.fullmatch(r"[A-Za-z_$][A-Za-z0-9_.$-]*|\d+", str(key)):
                    stray.append(f"{where}/{key}")
                walk(value, f"{where}/{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{where}[{i}]")

    walk({k: v for k, v in DOC.items() if k != "info"}, "")
    assert not stray, stray


@pytest.mark.parametrize("name", sorted(CHANNELS))
def test_every_channel_has_operations_parameters_and_message_schemas(name: str) -> None:
    channel = CHANNELS[name]
    params = set(re.findall(r"\{([a-z]+)\}", channel["address"]))
    assert params == set(channel.get("parameters", {})), f"{name}: address and parameters differ"
    for param in channel.get("parameters", {}).values():
        assert resolve(param)["description"]
    assert channel["messages"], f"{name} has no messages"
    for msg_name, message in messages(name).items():
        schema = message["payload"]
        Draft7Validator.check_schema(schema)
        validator(schema)  # every reference inside resolves when used
        assert message.get("examples") or message.get("contentType") == "application/octet-stream", msg_name
    ops = operations_of(name)
    assert ops, f"channel {name} is used by no operation"
    for op in ops:
        assert op["action"] in ("send", "receive")
        assert op["messages"] and all(resolve(m) in messages(name).values() for m in op["messages"])
        mqtt = binding(op)
        assert mqtt["qos"] in (0, 1, 2) and isinstance(mqtt["retain"], bool)


def test_the_channel_addresses_are_the_topics_the_code_builds() -> None:
    """Each documented address, its parameters as levels, is a topic `eslserver.topics` parses,
    names its gateway or label level as the document does, and prints back the same; together
    they are every kind of topic the code knows."""
    kinds = []
    for name, channel in CHANNELS.items():
        topic = Topic.parse(channel["address"])
        assert (topic.prefix, topic.store) == ("esl", "{store}"), name
        assert (topic.gateway, topic.mac) == (
            "{gateway}" if topic.kind.slot == "gateway" else None, "{mac}" if topic.kind.slot == "mac" else None), name
        assert str(topic) == channel["address"]
        kinds.append(topic.kind)
    assert sorted(kinds, key=list(Kind).index) == list(Kind)


@pytest.mark.parametrize("name", sorted(DOC["components"]["messages"]))
def test_every_example_is_valid_against_its_own_schema(name: str) -> None:
    message = DOC["components"]["messages"][name]
    check = validator(message["payload"])
    for example in message.get("examples", []):
        errors = [f"{list(e.absolute_path)}: {e.message}" for e in check.iter_errors(example["payload"])]
        assert not errors, f"{name} example {example.get('name')}: {errors}"


def test_the_schemas_name_what_the_code_knows() -> None:
    schemas = DOC["components"]["schemas"]
    assert set(schemas["PriceItem"]["properties"]) == set(CANONICAL_FIELDS)
    assert set(schemas["PriceItemError"]["properties"]["error"]["enum"]) == set(ERROR_CODES)
    assert set(schemas["NackEvent"]["properties"]["code"]["enum"]) == set(NACK_CODES)
    assert schemas["LabelState"]["properties"]["state"]["enum"] == list(LABEL_STATES)
    row = {c.strip(): None for c in STATE_COLUMNS.split(",")}
    assert list(schemas["LabelState"]["properties"]) == list(state_json(row))
    assert schemas["LabelState"]["required"] == list(state_json(row))
    facts = DOC["components"]["messages"]["JobEnvelope"]["x-envelope"]
    assert (bytes.fromhex(facts["magic"]), facts["version"], facts["endorsed_version"], facts["max_bytes"]) == (
        ENVELOPE_MAGIC, ENVELOPE_VERSION, ENDORSED_VERSION, MAX_ENVELOPE)
    assert facts["kinds"] == {int(k): k.name.lower() for k in JobKind}


# --- the examples are what the code accepts and answers -----------------------------------------

async def test_documented_pos_messages_are_accepted_and_errors_are_what_ingest_answers(tmp_path: Path) -> None:
    settings = load_settings(environ={}, overrides={"data_dir": tmp_path / "data"})
    async with Server(settings, mqtt=False, http=False, render_processes=False) as server:
        for example in DOC["components"]["messages"]["PriceUpdate"]["examples"]:
            result = await server.ingest.submit(json.dumps(example["payload"]).encode(), source="mqtt",
                                                actor=SYSTEM)
            assert result.errors == [], f"example {example['name']}: {result.errors}"
            items = example["payload"] if isinstance(example["payload"], list) else [example["payload"]]
            assert len(result.accepted) == len(items)
            assert all(set(item) <= CANONICAL_FIELDS for item in items), f"example {example['name']}: a stray key"
        errors = DOC["components"]["messages"]["PosErrors"]
        assert {e["name"] for e in errors["examples"]} == set(errors["x-answers"])
        for example in errors["examples"]:
            sent = errors["x-answers"][example["name"]]
            raw = sent.encode() if isinstance(sent, str) else json.dumps(sent).encode()
            result = await server.ingest.submit(raw, source="mqtt", actor=SYSTEM)
            assert json.loads(error_message(result)) == example["payload"], example["name"]
        acks = DOC["components"]["messages"]["PosAcks"]
        assert {e["name"] for e in acks["examples"]} == set(acks["x-answers"])
        for example in acks["examples"]:
            result = await server.ingest.submit(json.dumps(acks["x-answers"][example["name"]]).encode(),
                                                source="mqtt", actor=SYSTEM)
            assert json.loads(ack_message(result)) == example["payload"], example["name"]


def test_documented_gateway_events_are_what_the_server_parses() -> None:
    for example in DOC["components"]["messages"]["GatewayEvent"]["examples"]:
        event = parse_event(json.dumps(example["payload"]).encode())
        assert event.type == example["payload"]["type"]
        assert set(json.loads(event.to_json())) == set(example["payload"])  # what a gateway writes
        assert parse_event(event.to_json()) == event


# --- the wire ------------------------------------------------------------------------------------

MILK = {"sku": "100100", "name": "Mleko 3,2% 1 l", "price": "3.49", "seq": 1}


async def _until(what: str, done: Callable[[], bool], timeout: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not done():
        if loop.time() > deadline:
            raise AssertionError(f"waited {timeout} s for {what}")
        await asyncio.sleep(0.05)


def _kinds(seen: list[Message]) -> set[str]:
    """Channel names seen, with the event types: ``gatewayEvents:ack`` …, ``gatewayStatus:online``."""
    out = set()
    for m in seen:
        name = channel_for(m.topic)
        out.add(name)
        if name == "gatewayEvents":
            out.add(f"{name}:{json.loads(m.payload)['type']}")
        elif name == "gatewayStatus":
            out.add(f"{name}:{m.payload.decode()}")
    return out


async def test_every_message_of_a_store_at_work_is_documented(tmp_path: Path) -> None:
    async with mosquitto() as url:
        recorder, seen = await collect(url, "esl/#")
        async with recorder:
            await recorder.connected.wait()
            async with shop(tmp_path, url, labels=2, gateway={"status_interval_s": 0.2}) as s:
                await s.seed([MILK])
                await s.bind({mac: MILK["sku"] for mac in s.macs})
                await s.converged()
                await s.publish_prices([{"sku": MILK["sku"], "price": "2.99", "seq": 2},
                                        {"sku": "100300", "price": "-1"}])
                await _until("an error, a new price on the shelf, check-ins and a status event",
                             lambda: {"posErrors", "gatewayEvents:status", "gatewayEvents:checkin"} <= _kinds(seen)
                             and sum(1 for m in seen if channel_for(m.topic) == "gatewayJobs") >= 4)
                await s.converged()
            await _until("the gateway's offline status", lambda: "gatewayStatus:offline" in _kinds(seen))
        assert {"posPrices", "posAcks", "posErrors", "gatewayJobs", "gatewayEvents:ack", "gatewayEvents:checkin",
                "gatewayEvents:status", "gatewayStatus:online", "gatewayStatus:offline", "labelState"} <= _kinds(seen)
        (answer,) = [json.loads(m.payload) for m in seen if channel_for(m.topic) == "posErrors"]
        assert answer["accepted"] == 1 and [(e["index"], e["field"]) for e in answer["errors"]] == [(1, "price")]
        item = validator(DOC["components"]["schemas"]["PriceItem"])
        for message in seen:
            name = channel_for(message.topic)
            assert message.qos == binding(operations_of(name)[0])["qos"], (message.topic, message.qos)
            if name == "posPrices":  # what we sent: the schema refuses exactly the item the server refused
                assert [item.is_valid(x) for x in json.loads(message.payload)] == [True, False]
                continue
            check_payload(name, message.payload)

        # a new subscriber gets the retained messages: exactly those of the retained channels
        late, retained = await collect(url, "esl/#")
        async with late:
            await _until("the retained label states and gateway status",
                         lambda: sum(1 for m in retained if m.retain) >= len(s.macs) + 1)
        for message in retained:
            assert message.retain, message.topic
            assert binding(operations_of(channel_for(message.topic))[0])["retain"], message.topic
            check_payload(channel_for(message.topic), message.payload)
        assert {channel_for(m.topic) for m in retained} == {
            name for name in CHANNELS if binding(operations_of(name)[0])["retain"]}
