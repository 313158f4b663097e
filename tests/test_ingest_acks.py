"""Never acknowledge what is not committed, end to end (issue 14 item 3).

Against real parts: Mosquitto (and the embedded amqtt broker where cheap), a full disk on a
tmpfs the test mounts, real HTTP on loopback, real SQLite. What is promised:

- a price the POS published while the database cannot commit is neither stored, nor
  confirmed, nor acknowledged to the broker: the server retries it (backoff, no PUBACK), and
  applies it exactly once when space is back, without the POS sending it again; a server
  stopped meanwhile leaves it to the broker, which delivers it to the next one;
- HTTP answers 503 with ``Retry-After`` and applies nothing of that request;
- accepted items are confirmed after the commit on ``pos/acks`` (index, sku, seq, update_id,
  status), and an item whose ``update_id`` was accepted before is a ``duplicate``;
- a poison item (NUL, lone surrogate, bytes that are not UTF-8, an oversized field) is
  refused alone, naming its field, and the rest of its batch is applied; a message over the
  size limits is refused whole;
- the audit log stores what changed, not whole records.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from eslserver import mqtt, pos_limits
from eslserver.config import load_settings
from eslserver.ingest import STATUSES, Unavailable
from eslserver.mqtt import Message, MqttConnection, MqttSettings, Retry
from eslserver.server import SYSTEM, Server
from eslserver.store import pos_updates
from tests.brokers import TcpProxy, broker_url, mosquitto  # noqa: F401  (a fixture)
from tests.pipeline_shop import collect
from tests.test_api_schema import ApiClient, api  # noqa: F401  (a fixture)
from tests.test_health import _fill, api_on_small_disk, small_disk  # noqa: F401  (fixtures)

# --- helpers --------------------------------------------------------------------------------------


async def _until(what: str, done: Callable[[], bool | Awaitable[bool]], timeout: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = done()
        if await result if isinstance(result, Awaitable) else result:
            return
        if loop.time() > deadline:
            raise AssertionError(f"waited {timeout} s for {what}")
        await asyncio.sleep(0.05)


def _batch(n: int, prefix: str, *, note: int = 900) -> list[dict[str, Any]]:
    """`n` new products, each with a long attribute: ~1 KB of record and as much of audit per
    item, so that the transaction needs far more than a full disk has left (a small commit can
    go through on a full disk: SQLite reuses its journal's space)."""
    return [{"sku": f"{prefix}{i:04d}", "price": "1.99", "name": f"Produkt {i}", "update_id": f"{prefix}-{i}",
             "attributes": {"note": "x" * note}} for i in range(n)]


async def _scalar(server: Server, sql: str, params: tuple[object, ...] = ()) -> Any:
    row = await server.db.read_one(sql, params)
    assert row is not None
    return row[0]


async def _history_counts(server: Server, prefix: str) -> dict[str, int]:
    rows = await server.db.read("SELECT sku, COUNT(*) FROM price_history WHERE sku LIKE ? GROUP BY sku",
                                (prefix + "%",))
    return {r[0]: r[1] for r in rows}


def _mqtt_settings(data_dir: Path, url: str) -> Any:
    return load_settings(environ={}, overrides={"data_dir": data_dir, "http_port": 0, "broker_url": url})


async def _connected(*conns: MqttConnection | None) -> None:
    for conn in conns:
        assert conn is not None
        await asyncio.wait_for(conn.connected.wait(), 20)


@asynccontextmanager
async def _pos(url: str, server: Server,
               client_id: str) -> AsyncIterator[tuple[MqttConnection, list[Message], list[Message]]]:
    """A POS's connection, and what the server answers on ``pos/acks`` and ``pos/errors``; all
    connected (the server's too) when it is entered."""
    acks_sub, acks = await collect(url, server.topics.pos_acks)
    errors_sub, errors = await collect(url, server.topics.pos_errors)
    pos = MqttConnection(MqttSettings.from_url(url), client_id=client_id, clean_session=True)
    async with acks_sub, errors_sub, pos:
        await _connected(server.mqtt, acks_sub, errors_sub, pos)
        yield pos, acks, errors


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    settings = load_settings(environ={}, overrides={"data_dir": tmp_path / "data"})
    async with Server(settings, mqtt=False, http=False, render_processes=False) as srv:
        yield srv


# --- the disk is full: MQTT ----------------------------------------------------------------------


async def test_a_price_published_on_a_full_disk_is_not_acknowledged_and_applied_once_when_space_is_back(
        small_disk: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="eslserver")
    items = _batch(700, "F")
    async with mosquitto() as url:
        async with Server(_mqtt_settings(small_disk / "data", url), http=False, render_processes=False) as server:
            async with _pos(url, server, "till-1") as (pos, acks, errors):
                filler = _fill(small_disk)
                payload = json.dumps(items).encode()
                assert len(payload) < pos_limits.MAX_MESSAGE_BYTES
                await pos.publish(server.topics.pos_prices, payload, qos=1, timeout=10)  # the broker has it
                retries = server.metrics.pos_retries.labels("mqtt")
                await _until("the server retrying the message", lambda: retries._value.get() >= 3)
                assert acks == [] and errors == []  # nothing confirmed, nothing refused: not stored
                assert await _scalar(server, "SELECT COUNT(*) FROM products") == 0
                filler.unlink()  # space is back: the next retry applies it, the POS sends nothing again
                await _until("the confirmation", lambda: len(acks) == 1, timeout=60)
                await asyncio.sleep(0.5)
            assert len(acks) == 1 and errors == []
            body = json.loads(acks[0].payload)
            assert body["rejected"] == 0
            assert [(a["index"], a["sku"], a["update_id"], a["status"]) for a in body["accepted"]] == [
                (i, item["sku"], item["update_id"], "applied") for i, item in enumerate(items)]
            assert await _history_counts(server, "F") == {item["sku"]: 1 for item in items}  # exactly once
            assert await _scalar(server, "SELECT COUNT(*) FROM audit WHERE action = 'price.update'") == len(items)
    # the operator reads one line saying why (a full disk) and one saying it recovered, no traceback
    retried = [r for r in caplog.records if r.name == "eslserver.mqtt" and "left unacknowledged" in r.getMessage()]
    assert retried and all(r.exc_info is None for r in retried), [r.getMessage() for r in retried]
    assert any("full" in r.getMessage() for r in retried if r.levelno >= logging.ERROR)


async def test_a_message_a_stopped_server_left_unacknowledged_goes_to_the_next_one(small_disk: Path) -> None:
    """The retry ends with the connection; the message was never acknowledged, so the broker
    delivers it again to the next server (same persistent session), which applies it once."""
    items = _batch(700, "R")
    async with mosquitto() as url:
        settings = _mqtt_settings(small_disk / "data", url)
        acks_sub, acks = await collect(url, "esl/+/pos/acks")
        pos = MqttConnection(MqttSettings.from_url(url), client_id="till-2", clean_session=True)
        async with acks_sub, pos:
            await _connected(acks_sub, pos)
            async with Server(settings, http=False, render_processes=False) as first:
                await _connected(first.mqtt)
                filler = _fill(small_disk)
                await pos.publish(first.topics.pos_prices, json.dumps(items).encode(), qos=1, timeout=10)
                retries = first.metrics.pos_retries.labels("mqtt")
                await _until("the first server retrying", lambda: retries._value.get() >= 2)
            filler.unlink()
            assert acks == []
            async with Server(settings, http=False, render_processes=False) as second:
                await _until("the confirmation from the next server", lambda: len(acks) == 1, timeout=60)
                await asyncio.sleep(0.5)
                assert len(acks) == 1
                assert await _history_counts(second, "R") == {item["sku"]: 1 for item in items}
                assert second.metrics.pos_retries.labels("mqtt")._value.get() == 0


# --- the disk is full: HTTP ----------------------------------------------------------------------


async def test_http_answers_503_with_retry_after_on_a_full_disk_and_applies_nothing(
        api_on_small_disk: ApiClient) -> None:
    api = api_on_small_disk
    items = _batch(700, "H")
    filler = _fill(api.server.db.path.parent)
    reply = await api.call("POST", "/api/v1/prices", role="pos", json=items)  # checked against the document
    assert reply.status == 503, reply.body[:300]
    assert reply.headers["Retry-After"] == "5"
    assert reply.json["error"] == "unavailable" and "disk full" in reply.json["detail"], reply.json
    assert "nothing of this request was applied" in reply.json["detail"]
    assert api.server.metrics.pos_retries.labels("http")._value.get() == 1
    assert await _scalar(api.server, "SELECT COUNT(*) FROM products") == 0
    filler.unlink()
    reply = await api.call("POST", "/api/v1/prices", role="pos", json=items)  # the client sends it again
    assert reply.status == 200 and reply.json["errors"] == []
    assert {a["status"] for a in reply.json["accepted"]} == {"applied"}
    reply = await api.call("POST", "/api/v1/prices", role="pos", json=items)  # and once more: recognised
    assert reply.status == 200 and {a["status"] for a in reply.json["accepted"]} == {"duplicate"}
    assert await _history_counts(api.server, "H") == {item["sku"]: 1 for item in items}


async def test_a_read_only_database_is_a_503_too(api: ApiClient) -> None:  # noqa: F811
    await api.server.db.writer.execute("PRAGMA query_only = ON")  # SQLITE_READONLY on every write
    try:
        reply = await api.call("POST", "/api/v1/prices", role="pos", json={"sku": "RO", "price": "1.00"})
    finally:
        await api.server.db.writer.execute("PRAGMA query_only = OFF")
    assert reply.status == 503 and reply.json["error"] == "unavailable", reply.json
    assert "read-only" in reply.json["detail"] and int(reply.headers["Retry-After"]) >= 1


# --- Unavailable at the ingest ---------------------------------------------------------------------


async def test_a_locked_database_is_unavailable_and_nothing_is_stored(server: Server) -> None:
    await server.db.writer.execute("PRAGMA busy_timeout = 50")
    other = sqlite3.connect(server.db.path, isolation_level=None, timeout=0)  # never block the loop
    try:
        for _ in range(250):  # another process takes the write lock (between the server's own writes)
            try:
                other.execute("BEGIN IMMEDIATE")
                break
            except sqlite3.OperationalError:
                await asyncio.sleep(0.02)
        assert other.in_transaction
        with pytest.raises(Unavailable) as info:
            await server.ingest.submit([{"sku": "L1", "price": "1.00", "update_id": "l-1"}], source="http",
                                       actor=SYSTEM)
        assert info.value.retry_after_s == 1 and "locked" in info.value.reason
        other.execute("ROLLBACK")
    finally:
        other.close()
    result = await server.ingest.submit([{"sku": "L1", "price": "1.00", "update_id": "l-1"}], source="http",
                                        actor=SYSTEM)
    assert [a["status"] for a in result.accepted] == ["applied"]  # the id was not kept by the failed try


async def test_one_failing_transaction_fails_every_message_of_it(server: Server) -> None:
    """Messages that share a group commit share its fate: none is told it was stored."""
    await server.db.writer.execute("PRAGMA query_only = ON")
    try:
        outcomes = await asyncio.gather(*(server.ingest.submit([{"sku": f"G{i}", "price": "1.00"}], source="mqtt",
                                                               actor=SYSTEM) for i in range(5)),
                                        return_exceptions=True)
    finally:
        await server.db.writer.execute("PRAGMA query_only = OFF")
    assert all(isinstance(o, Unavailable) for o in outcomes), outcomes
    assert await _scalar(server, "SELECT COUNT(*) FROM products") == 0


# --- confirmations and duplicates ------------------------------------------------------------------


async def test_update_ids_are_confirmed_and_a_resent_item_is_a_duplicate(server: Server) -> None:
    submit = server.ingest.submit
    first = await submit([{"sku": "D1", "price": "2.00", "update_id": "till3-000123", "seq": 5},
                          {"sku": "D2", "price": "3.00"}], source="mqtt", actor=SYSTEM)
    assert first.accepted == [
        {"index": 0, "sku": "D1", "seq": 5, "update_id": "till3-000123", "status": "applied"},
        {"index": 1, "sku": "D2", "seq": None, "update_id": None, "status": "applied"}]
    # the POS saw no confirmation and sends it again, then sends it twice in one batch
    again = await submit([{"sku": "D1", "price": "2.00", "update_id": "till3-000123", "seq": 5}], source="mqtt",
                         actor=SYSTEM)
    assert [a["status"] for a in again.accepted] == ["duplicate"]
    twice = await submit([{"sku": "D1", "price": "2.50", "update_id": "till3-000124"},
                          {"sku": "D1", "price": "2.50", "update_id": "till3-000124"}], source="mqtt", actor=SYSTEM)
    assert [a["status"] for a in twice.accepted] == ["applied", "duplicate"]
    assert await _history_counts(server, "D1") == {"D1": 2}  # 2.00 and 2.50, each once
    assert server.metrics.updates_duplicate.labels("mqtt")._value.get() == 2
    assert set(STATUSES) == {"applied", "scheduled", "stale", "duplicate"}


async def test_a_refused_item_does_not_keep_its_update_id(tmp_path: Path) -> None:
    settings = load_settings(environ={}, overrides={"data_dir": tmp_path / "data", "unknown_sku": "refuse"})
    async with Server(settings, mqtt=False, http=False, render_processes=False) as server:
        refused = await server.ingest.submit([{"sku": "N1", "price": "1.00", "update_id": "n-1"}], source="http",
                                             actor=SYSTEM)
        assert [e["error"] for e in refused.errors] == ["unknown_sku"] and refused.accepted == []
        async with server.db.transaction() as conn:
            assert await pos_updates.seen(conn, settings.store, "n-1") is None


@pytest.mark.parametrize("value", ["", "x" * 65, "zażółć", "a\tb", 123, ["a"]])
async def test_an_update_id_must_be_1_to_64_printable_ascii_characters(server: Server, value: object) -> None:
    result = await server.ingest.submit([{"sku": "U1", "price": "1.00", "update_id": value},
                                         {"sku": "U2", "price": "1.00", "update_id": "x" * 64}], source="http",
                                        actor=SYSTEM)
    (err,) = result.errors
    assert (err["index"], err["field"], err["error"]) == (0, "update_id", "invalid_value"), err
    assert [a["sku"] for a in result.accepted] == ["U2"]


async def test_update_ids_are_pruned_oldest_first_in_batches(server: Server) -> None:
    async with server.db.transaction() as conn:
        for i in range(5):
            await pos_updates.remember(conn, "demo", f"old-{i}", "S", "applied", f"2026-01-0{i + 1}T00:00:00Z")
        await pos_updates.remember(conn, "demo", "new", "S", "applied", "2026-12-01T00:00:00Z")
    async with server.db.transaction() as conn:
        assert await pos_updates.prune_before(conn, "2026-06-01T00:00:00Z", 3) == 3
        assert await pos_updates.seen(conn, "demo", "old-0") is None
        assert await pos_updates.seen(conn, "demo", "old-3") is not None
        assert await pos_updates.prune_before(conn, "2026-06-01T00:00:00Z", 3) == 2
        assert await pos_updates.prune_before(conn, "2026-06-01T00:00:00Z", 3) == 0
        assert await pos_updates.count(conn) == 1
        with pytest.raises(ValueError, match="limit"):
            await pos_updates.prune_before(conn, "2026-06-01T00:00:00Z", 0)
    assert server.settings.pos_update_ids_days == 7


# --- poison items and size limits ----------------------------------------------------------------

GOOD_A = b'{"sku": "P1", "price": "1.00", "update_id": "p-1"}'
GOOD_B = b'{"sku": "P3", "price": "3.00", "seq": 4}'
POISON: dict[str, tuple[bytes, str, str]] = {
    # name: (the middle item as sent, the field named, the error code)
    "lone surrogate": (b'{"sku": "P2", "price": "2.00", "attributes": {"origin": "\\ud800"}}', "attributes.origin",
                       "invalid_text"),
    "NUL": (b'{"sku": "P2", "price": "2.00", "name": "Mleko\\u0000"}', "name", "invalid_text"),
    "not UTF-8": (b'{"sku": "P2", "price": "2.00", "name": "caf\xe9 \xff"}', "name", "invalid_text"),
    "bad byte in a key": (b'{"sku": "P2", "price": "2.00", "orig\xffin": "PL"}', "orig\udcffin", "invalid_text"),
    "long name": (b'{"sku": "P2", "price": "2.00", "name": "' + b"n" * 201 + b'"}', "name", "too_large"),
    "long attribute": (b'{"sku": "P2", "price": "2.00", "attributes": {"note": "' + b"n" * 1001 + b'"}}',
                       "attributes.note", "too_large"),
    "many attributes": (json.dumps({"sku": "P2", "price": "2.00",
                                    "attributes": {f"k{i}": 1 for i in range(65)}}).encode(), "attributes",
                        "too_large"),
    "big attributes": (json.dumps({"sku": "P2", "price": "2.00",
                                   "attributes": {f"k{i}": "v" * 900 for i in range(10)}}).encode(), "attributes",
                       "too_large"),
    "long free key value": (b'{"sku": "P2", "price": "2.00", "origin": "' + b"o" * 1001 + b'"}', "origin",
                            "too_large"),
}


def _poisoned(middle: bytes) -> bytes:
    return b"[" + GOOD_A + b", " + middle + b", " + GOOD_B + b"]"


@pytest.mark.parametrize("kind", sorted(POISON))
async def test_a_poison_item_is_refused_alone_and_the_batch_applied(server: Server, kind: str) -> None:
    middle, field, code = POISON[kind]
    result = await server.ingest.submit(_poisoned(middle), source="mqtt", actor=SYSTEM)
    assert [(a["index"], a["sku"], a["status"]) for a in result.accepted] == [(0, "P1", "applied"),
                                                                             (2, "P3", "applied")]
    (err,) = result.errors
    shown = field.encode("utf-8", "backslashreplace").decode()
    assert (err["index"], err["sku"], err["field"], err["error"]) == (1, "P2", shown, code), err
    json.dumps(err, ensure_ascii=False).encode()  # the answer itself is valid UTF-8
    assert await _scalar(server, "SELECT COUNT(*) FROM products WHERE sku = 'P2'") == 0


async def test_updates_cannot_grow_a_products_attributes_past_the_limit(server: Server) -> None:
    for i in range(4):  # 4 × 20 names, each update within the limit
        result = await server.ingest.submit([{"sku": "G1", "price": "1.00",
                                              "attributes": {f"k{i}-{j}": j for j in range(20)}}], source="http",
                                            actor=SYSTEM)
        if i < 3:
            assert result.errors == [], result.errors
    (err,) = result.errors
    assert (err["field"], err["error"]) == ("attributes", "too_large") and "after this update" in err["detail"]
    record = json.loads(await _scalar(server, "SELECT record FROM products WHERE sku = 'G1'"))
    assert len(record["attributes"]) == 60


async def test_a_message_over_1000_items_is_refused_whole(server: Server) -> None:
    items = [{"sku": f"M{i}", "price": "1.00"} for i in range(pos_limits.MAX_ITEMS + 1)]
    result = await server.ingest.submit(json.dumps(items).encode(), source="http", actor=SYSTEM)
    assert result.accepted == []
    (err,) = result.errors
    assert (err["index"], err["field"], err["value"], err["error"]) == (None, "items", 1001, "too_large")
    assert await _scalar(server, "SELECT COUNT(*) FROM products") == 0


async def test_http_refuses_poison_items_alone_with_no_500(api: ApiClient) -> None:  # noqa: F811
    for kind in ("lone surrogate", "not UTF-8", "NUL", "long name"):
        reply = await api.call("POST", "/api/v1/prices", role="pos", data=_poisoned(POISON[kind][0]),
                               headers={"Content-Type": "application/json"})
        assert reply.status == 200, (kind, reply.body[:300])
        assert [a["status"] for a in reply.json["accepted"]] in (["applied", "applied"], ["duplicate", "stale"])
        assert [(e["index"], e["error"]) for e in reply.json["errors"]] == [(1, POISON[kind][2])], kind
    too_many = [{"sku": f"M{i}", "price": "1.00"} for i in range(pos_limits.MAX_ITEMS + 1)]
    reply = await api.call("POST", "/api/v1/prices", role="pos", json=too_many)
    assert reply.status == 400 and reply.json["error"] == "too_large" and reply.json["field"] == "items"


async def test_mqtt_confirms_applied_items_and_answers_poison_and_oversized_messages(
        tmp_path: Path, broker_url: str) -> None:  # noqa: F811
    async with Server(_mqtt_settings(tmp_path / "data", broker_url), http=False, render_processes=False) as server:
        async with _pos(broker_url, server, "till-3") as (pos, acks, errors):
            topic = server.topics.pos_prices
            await pos.publish(topic, _poisoned(POISON["not UTF-8"][0]), timeout=10)
            await _until("the answers to the poisoned batch", lambda: len(acks) == 1 and len(errors) == 1)
            await pos.publish(topic, b'{"sku": "X1", "price": "' + b"9" * (pos_limits.MAX_MESSAGE_BYTES) + b'"}',
                              timeout=10)
            await pos.publish(topic, b'[{"sku": "X2", "price": "-1"}]', timeout=10)  # all refused: no ack
            await _until("the answers to the oversized and the refused message", lambda: len(errors) == 3)
            await asyncio.sleep(0.3)
        ack = json.loads(acks[0].payload)
        assert ack == {"accepted": [{"index": 0, "sku": "P1", "seq": None, "update_id": "p-1", "status": "applied"},
                                    {"index": 2, "sku": "P3", "seq": 4, "update_id": None, "status": "applied"}],
                       "rejected": 1}
        assert len(acks) == 1  # nothing confirmed for the two messages without an accepted item
        answers = [json.loads(m.payload) for m in errors]  # handlers run concurrently: any order
        (poisoned,) = [a for a in answers if a["accepted"] == 2]
        (oversized,) = [a for a in answers if a["errors"][0]["field"] == "message"]
        (refused,) = [a for a in answers if a["errors"][0]["sku"] == "X2"]
        assert poisoned["accepted"] == 2 and [(e["index"], e["field"], e["error"]) for e in poisoned["errors"]] == [
            (1, "name", "invalid_text")]
        assert poisoned["errors"][0]["value"] == "caf\\udce9 \\udcff"
        (big,) = oversized["errors"]
        assert (big["field"], big["error"], oversized["accepted"]) == ("message", "too_large", 0)
        assert str(pos_limits.MAX_MESSAGE_BYTES) in big["detail"] and big["value"].endswith(" bytes")
        assert refused["accepted"] == 0
        assert await _scalar(server, "SELECT COUNT(*) FROM products WHERE sku LIKE 'X%'") == 0


# --- the MQTT connection: Retry -----------------------------------------------------------------


async def test_a_handler_raising_retry_gets_the_message_again_with_backoff_and_it_is_acked_once(
        broker_url: str) -> None:  # noqa: F811
    calls: list[float] = []

    async def flaky(message: Message) -> None:
        calls.append(time.monotonic())
        if len(calls) <= 3:
            raise Retry("database: disk full")

    conn = MqttConnection(MqttSettings.from_url(broker_url), client_id="retrying", reconnect_min_s=0.05,
                          reconnect_max_s=0.3)
    conn.subscribe("r/#", flaky)
    pub = MqttConnection(MqttSettings.from_url(broker_url), client_id="pub-r", clean_session=True)
    async with conn, pub:
        await _connected(conn, pub)
        await pub.publish("r/1", b"1", timeout=5)
        await _until("the fourth attempt", lambda: len(calls) == 4, timeout=10)
        await asyncio.sleep(0.2)
    gaps = [b - a for a, b in zip(calls, calls[1:])]
    assert len(calls) == 4 and gaps[0] >= 0.19 and gaps[1] >= 0.38 and gaps[2] >= 0.78, gaps
    # acknowledged once it was handled: not delivered again
    assert await _delivered_again(broker_url, "retrying", "r/#", expect=0) == []


async def test_a_message_still_retried_when_the_connection_is_lost_is_delivered_again(
        broker_url: str) -> None:  # noqa: F811
    async with TcpProxy(MqttSettings.from_url(broker_url).port) as proxy:
        calls: list[bytes] = []

        async def never_now(message: Message) -> None:
            calls.append(message.payload)
            raise Retry("not now")

        conn = MqttConnection(MqttSettings.from_url(proxy.url), client_id="lost-while-retrying",
                              reconnect_min_s=0.05, reconnect_max_s=0.3)
        conn.subscribe("q/#", never_now)
        pub = MqttConnection(MqttSettings.from_url(broker_url), client_id="pub-q", clean_session=True)
        async with pub:
            await _connected(pub)
            async with conn:
                await _connected(conn)
                await pub.publish("q/1", b"job", timeout=5)
                await _until("a retry", lambda: len(calls) >= 2, timeout=10)
                await proxy.refuse()
                proxy.cut()
                await asyncio.sleep(0.3)
    assert await _delivered_again(broker_url, "lost-while-retrying", "q/#", expect=1) == [b"job"]
    assert mqtt.RETRY_MIN_S == 0.2 and mqtt.RETRY_MAX_S == 10.0


async def _delivered_again(url: str, client_id: str, topic_filter: str, *, expect: int) -> list[bytes]:
    """What the broker delivers to a new connection of `client_id`'s persistent session: the
    first `expect` messages, and anything more within 0.3 s."""
    got: list[bytes] = []

    async def record(message: Message) -> None:
        got.append(message.payload)

    conn = MqttConnection(MqttSettings.from_url(url), client_id=client_id)
    conn.subscribe(topic_filter, record)
    async with conn:
        await _connected(conn)
        await _until(f"{expect} messages delivered again", lambda: len(got) >= expect, timeout=10)
        await asyncio.sleep(0.3)
    return got


# --- the audit log stores what changed -------------------------------------------------------------


async def test_the_audit_of_a_price_change_holds_only_what_changed(server: Server) -> None:
    blob = {f"k{i}": "v" * 950 for i in range(8)}  # ~7.7 KB of attributes, within the 8 KiB limit
    await server.ingest.submit([{"sku": "A1", "price": "1.00", "name": "Mleko", "attributes": blob}],
                               source="http", actor=SYSTEM)
    for price in ("1.10", "1.20", "1.30"):
        await server.ingest.submit([{"sku": "A1", "price": price}], source="http", actor=SYSTEM)
    await server.ingest.submit([{"sku": "A1", "price": "1.30", "attributes": {"k3": "changed", "k9": "new",
                                                                             "k0": None}}],
                               source="http", actor=SYSTEM)
    rows = await server.db.read("SELECT before, after, length(before) + length(after) FROM audit "
                                "WHERE action = 'price.update' ORDER BY id")
    created, *changes, attrs = rows
    assert created[0] is None and len(json.loads(created[1])["attributes"]) == 8  # a new product: all of it
    for (before, after, size), (old, new) in zip(changes, (("1.00", "1.10"), ("1.10", "1.20"), ("1.20", "1.30"))):
        assert json.loads(before) == {"price": old} and json.loads(after) == {"price": new}
        assert size < 100, size  # the unchanged attributes add nothing
    assert json.loads(attrs[0]) == {"attributes": {"k0": "v" * 950, "k3": "v" * 950, "k9": None}}
    assert json.loads(attrs[1]) == {"attributes": {"k0": None, "k3": "changed", "k9": "new"}}
