"""Gateways, jobs, audit, summary, metrics and health over real HTTP (answers checked against OpenAPI)."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import aiohttp

from eslserver.config import load_settings
from eslserver.server import Server

from tests.test_api_schema import ApiClient, add_label, add_products, api, sql, wait_rendered  # noqa: F401  (fixture)

MAC1, MAC2 = "AA:BB:CC:00:00:01", "AA:BB:CC:00:00:02"


async def test_gateways_with_their_label_counts(api: ApiClient) -> None:
    reply = await api.call("GET", "/api/v1/gateways", role="pos")
    assert reply.status == 200 and reply.json == {"items": []}
    await sql(api, "INSERT INTO gateways (store, id, status, last_seen, info) VALUES ('demo', 'gw1', 'online', ?, ?)",
               "2026-11-23T10:00:00.000000+00:00", json.dumps({"in_flight": 2}))
    await sql(api, "INSERT INTO gateways (store, id, status) VALUES ('demo', 'gw0', 'offline')")
    await add_products(api, {"sku": "A1", "price": "1.00"})
    await add_label(api, MAC1, "A1")
    await sql(api, "UPDATE labels SET gateway = 'gw1'")
    reply = await api.call("GET", "/api/v1/gateways")
    assert [(g["id"], g["status"], g["labels"]) for g in reply.json["items"]] == [("gw0", "offline", 0),
                                                                                ("gw1", "online", 1)]
    # its status figures, the protocol it announced and its registered key (neither, here)
    assert reply.json["items"][1]["info"] == {"in_flight": 2, "protocol": None, "public_key": None}
    await sql(api, "UPDATE gateways SET protocol = 2, public_key = ? WHERE id = 'gw1'", bytes(range(32)))
    reply = await api.call("GET", "/api/v1/gateways")
    assert reply.json["items"][1]["info"] == {"in_flight": 2, "protocol": 2, "public_key": bytes(range(32)).hex()}


async def test_jobs_with_filters(api: ApiClient) -> None:
    await add_products(api, {"sku": "A1", "price": "1.00"})
    await add_label(api, MAC1, "A1")
    await add_label(api, MAC2, "A1")
    await sql(api, "UPDATE labels SET label_key = ?", b"k" * 16)
    flash = await api.call("POST", f"/api/v1/labels/{MAC2}/flash", role="tech", json={"seconds": 3})
    reply = await api.call("GET", "/api/v1/jobs", role="tech", params={"kind": "command"})
    assert [j["id"] for j in reply.json["items"]] == [flash.json["job"]]
    assert reply.json["items"][0]["state"] == "queued" and reply.json["total"] == 1
    reply = await api.call("GET", "/api/v1/jobs", params={"mac": "aabbcc000002", "state": "queued"})
    assert flash.json["job"] in [j["id"] for j in reply.json["items"]]
    assert all(j["mac"] == MAC2 for j in reply.json["items"])
    for params, field in (({"state": "lost"}, "state"), ({"kind": "x"}, "kind"), ({"mac": "nope"}, "mac"),
                          ({"offset": "x"}, "offset")):
        reply = await api.call("GET", "/api/v1/jobs", params=params)
        assert reply.status == 400 and reply.json["field"] == field, reply.json


async def test_audit_is_admin_only_and_pages_backwards(api: ApiClient) -> None:
    for i in range(5):
        await add_products(api, {"sku": f"S{i}", "price": f"{i + 1}.00"})
    reply = await api.call("GET", "/api/v1/audit", params={"action": "price.update", "limit": "2"})
    assert [e["target"] for e in reply.json["items"]] == ["S4", "S3"]
    reply = await api.call("GET", "/api/v1/audit", params={"action": "price.update", "limit": "2",
                                                          "before": str(reply.json["next_before"])})
    assert [e["target"] for e in reply.json["items"]] == ["S2", "S1"]
    reply = await api.call("GET", "/api/v1/audit", params={"actor": "test-pos", "target": "S0"})
    [entry] = reply.json["items"]
    assert entry["role"] == "pos" and entry["after"]["price"] == "1.00"
    for role in ("pos", "merchandiser", "tech"):
        reply = await api.call("GET", "/api/v1/audit", role=role)
        assert reply.status == 403
    reply = await api.call("GET", "/api/v1/audit", params={"before": "0"})
    assert reply.status == 400 and reply.json["field"] == "before"


async def test_summary_counts(api: ApiClient) -> None:
    await add_products(api, {"sku": "A1", "price": "1.00"})
    await add_label(api, MAC1, "A1")
    await add_label(api, MAC2, "A1")
    await wait_rendered(api, MAC2)  # an unbind racing an in-flight render is the pipeline's business
    await api.call("DELETE", f"/api/v1/labels/{MAC2}/binding", role="tech")
    await sql(api, "UPDATE labels SET battery_mv = 2000 WHERE mac = ?", MAC1)
    await sql(api, "INSERT INTO gateways (store, id, status) VALUES ('demo', 'gw1', 'online')")
    now = datetime.now(timezone.utc)
    for seconds in (0.2, 0.4, 3.0):
        await sql(api, "INSERT INTO jobs (store, mac, kind, state, next_attempt_at, created_at, origin_at, "
                        "finished_at) VALUES ('demo', ?, 'image', 'done', ?, ?, ?, ?)", MAC1,
                   now.isoformat(), now.isoformat(), (now - timedelta(seconds=seconds)).isoformat(), now.isoformat())
    reply = await api.call("GET", "/api/v1/summary", role="pos")
    body = reply.json
    assert sum(body["labels"].values()) == 2 and body["labels"]["unpaired"] == 1
    assert body["labels_low_battery"] == 1 and body["gateways"] == {"online": 1, "offline": 0}
    assert body["updates_last_hour"] == 1
    assert body["time_to_shelf_s"]["count"] == 3 and abs(body["time_to_shelf_s"]["p50"] - 0.4) < 0.01
    reply = await api.call("GET", "/api/v1/summary", params={"battery_below": "1000"})
    assert reply.json["labels_low_battery"] == 0
    reply = await api.call("GET", "/api/v1/summary", params={"battery_below": "-5"})
    assert reply.status == 400 and reply.json["field"] == "battery_below"


async def test_metrics_and_health(api: ApiClient) -> None:
    await add_products(api, {"sku": "A1", "price": "1.00"}, {"sku": "A2", "price": "1.00"})
    reply = await api.call("GET", "/metrics", role=None)
    text = reply.body.decode()
    assert reply.status == 200 and reply.headers["Content-Type"].startswith("text/plain")
    assert 'esl_price_updates_received_total{source="http"} 2.0' in text
    reply = await api.call("GET", "/healthz", role=None)
    assert reply.json == {"status": "ok", "database": "ok", "mqtt": "disabled"}
    await api.server.db.close()  # the database going away is reported, not raised
    reply = await api.call("GET", "/healthz", role=None)
    assert reply.status == 503 and reply.json["status"] == "degraded" and reply.json["database"].startswith("error")


async def test_me_names_the_token(api: ApiClient) -> None:
    for role in ("pos", "merchandiser", "tech", "admin"):
        reply = await api.call("GET", "/api/v1/me", role=role)
        assert reply.status == 200 and reply.json == {"name": f"test-{role}", "role": role, "stores": None}


async def test_health_reports_the_broker_connection(tmp_path: Path) -> None:
    settings = load_settings(environ={}, overrides={"data_dir": tmp_path, "http_port": 0})
    async with Server(settings, render_processes=False) as server:  # with the embedded broker
        assert server.mqtt is not None
        await asyncio.wait_for(server.mqtt.connected.wait(), 20)
        async with aiohttp.ClientSession() as session:
            client = ApiClient(f"http://127.0.0.1:{server.http_port}", session, server, {})
            reply = await client.call("GET", "/healthz", role=None)
            assert reply.status == 200 and reply.json == {"status": "ok", "database": "ok", "mqtt": "connected"}
