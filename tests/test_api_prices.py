"""POST /api/v1/prices and the product reads, over real HTTP (every answer checked against OpenAPI)."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from typing import Any
from datetime import datetime, timedelta, timezone

from tests.test_api_schema import ApiClient, Reply, add_products, api  # noqa: F401  (fixture)


async def test_a_batch_is_partially_applied_and_committed_before_the_answer(api: ApiClient) -> None:
    reply = await api.call("POST", "/api/v1/prices", role="pos", json=[
        {"sku": "A1", "price": "4.99", "name": "Mleko 2%"},
        {"sku": "A2", "price": "-1"},
        {"sku": "A3", "price": 2.5, "name": "Chleb"},
    ])
    assert reply.status == 200
    assert [(a["index"], a["sku"], a["status"]) for a in reply.json["accepted"]] == [(0, "A1", "applied"),
                                                                                   (2, "A3", "applied")]
    [error] = reply.json["errors"]
    assert (error["index"], error["sku"], error["field"], error["value"]) == (1, "A2", "price", "-1")
    rows = await api.server.db.read("SELECT sku, record FROM products ORDER BY sku")
    assert [r["sku"] for r in rows] == ["A1", "A3"]
    assert json.loads(rows[1]["record"])["price"] == "2.5"  # the number's digits, never a float


async def test_one_rejected_object_is_a_400_with_its_own_code_and_field(api: ApiClient) -> None:
    reply = await api.call("POST", "/api/v1/prices", role="pos", json={"sku": "A1"})
    assert reply.status == 400
    assert reply.json["error"] == "missing_field" and reply.json["field"] == "price"
    assert reply.json["accepted"] == [] and len(reply.json["errors"]) == 1


async def test_a_batch_with_every_item_rejected_is_a_400(api: ApiClient) -> None:
    reply = await api.call("POST", "/api/v1/prices", role="pos", json=[{"sku": "A"}, {"price": "1"}])
    assert reply.status == 400 and reply.error == "batch_rejected"
    assert [e["index"] for e in reply.json["errors"]] == [0, 1]


async def test_an_empty_batch_is_fine(api: ApiClient) -> None:
    reply = await api.call("POST", "/api/v1/prices", role="pos", json=[])
    assert reply.status == 200 and reply.json == {"accepted": [], "errors": []}
    assert reply.headers["Cache-Control"] == "no-store" and reply.headers["X-Content-Type-Options"] == "nosniff"


async def test_stale_seq_is_accepted_and_ignored(api: ApiClient) -> None:
    await add_products(api, {"sku": "S", "price": "2.00", "seq": 5})
    reply = await api.call("POST", "/api/v1/prices", role="pos", json={"sku": "S", "price": "1.00", "seq": 4})
    assert reply.status == 200 and reply.json["accepted"][0]["status"] == "stale"
    reply = await api.call("GET", "/api/v1/products/S")
    assert reply.json["price"] == "2.00" and reply.json["seq"] == 5


async def test_bad_bodies(api: ApiClient) -> None:
    reply = await api.call("POST", "/api/v1/prices", role="pos", data=b'{"sku": "A1", "price": ',
                           headers={"Content-Type": "application/json"})
    assert reply.status == 400 and reply.error == "invalid_json" and reply.json["field"] == "body"
    reply = await api.call("POST", "/api/v1/prices", role="pos", json=42)
    assert reply.status == 400 and reply.error == "invalid_body" and "got 42" in reply.json["detail"]
    reply = await api.call("POST", "/api/v1/prices", role="pos", data=b"sku=A1&price=1",
                           headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert reply.status == 415 and reply.error == "unsupported_media_type"
    assert "application/x-www-form-urlencoded" in reply.json["detail"]
    # a declared length over the limit is refused before the body is read
    status, body = await _raw_post(api, "/api/v1/prices", 5_000_000, b'[{"sku": "A", "price": "1"}')
    assert status == 413 and body["error"] == "body_too_large" and "5000000" in body["detail"]
    api.check("POST", "/api/v1/prices", Reply(status, {"Content-Type": "application/json"}, b"", body))

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the limit holds while reading
        yield b"["
        for _ in range(5000):
            yield b'{"sku": "A", "price": "1.00", "name": "' + b"x" * 1000 + b'"},'
        yield b"{}]"

    reply = await api.call("POST", "/api/v1/prices", role="pos", data=chunks(),  # type: ignore[arg-type]
                           headers={"Content-Type": "application/json"})
    assert reply.status == 413 and reply.json["detail"] == "body: expected at most 4194304 bytes"
    assert await api.server.db.read("SELECT * FROM products") == []


async def _raw_post(api: ApiClient, path: str, declared: int, start: bytes) -> tuple[int, Any]:
    """Send headers declaring `declared` bytes and only `start` of them; the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", api.server.http_port)
    try:
        writer.write(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     f"Authorization: Bearer {api.tokens['pos']}\r\nContent-Length: {declared}\r\n\r\n".encode()
                     + start)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ")[1])
        length = int(re.search(rb"Content-Length: (\d+)", head, re.I).group(1))  # type: ignore[union-attr]
        return status, json.loads(await reader.readexactly(length))
    finally:
        writer.close()
        await writer.wait_closed()


async def test_merchandisers_and_techs_may_change_prices_and_are_audited(api: ApiClient) -> None:
    for role, price in (("merchandiser", "3.00"), ("tech", "2.50")):
        reply = await api.call("POST", "/api/v1/prices", role=role, json={"sku": "M", "price": price})
        assert reply.status == 200
    reply = await api.call("GET", "/api/v1/audit", params={"action": "price.update"})
    assert [(e["actor"], e["role"], e["target"]) for e in reply.json["items"]] == [
        ("test-tech", "tech", "M"), ("test-merchandiser", "merchandiser", "M")]
    first = reply.json["items"][1]
    assert first["before"] is None and first["after"]["price"] == "3.00"
    assert reply.json["items"][0]["before"]["price"] == "3.00" and reply.json["items"][0]["after"]["price"] == "2.50"


# --- products ---------------------------------------------------------------------------------

async def test_search_by_name_sku_and_ean_with_paging(api: ApiClient) -> None:
    await add_products(api, *({"sku": f"P{i:02d}", "price": "1.00", "name": f"Jogurt {i}"} for i in range(12)),
                       {"sku": "X1", "price": "2.00", "name": "Ser żółty", "ean": "5901234123457"})
    reply = await api.call("GET", "/api/v1/products", params={"q": "jogurt", "limit": "5", "offset": "10"})
    assert reply.status == 200 and reply.json["total"] == 12
    assert [p["sku"] for p in reply.json["items"]] == ["P10", "P11"]
    reply = await api.call("GET", "/api/v1/products", params={"q": "5901234123457"})
    assert [p["sku"] for p in reply.json["items"]] == ["X1"]
    assert reply.json["items"][0]["name"] == "Ser żółty"
    reply = await api.call("GET", "/api/v1/products", params={"q": "%"})
    assert reply.json["total"] == 0  # LIKE wildcards are matched literally
    reply = await api.call("GET", "/api/v1/products", role="pos")
    assert reply.json["total"] == 13 and reply.json["limit"] == 50


async def test_bad_paging_names_the_parameter_and_value(api: ApiClient) -> None:
    for params, field, value in (({"limit": "0"}, "limit", "'0'"), ({"limit": "ten"}, "limit", "'ten'"),
                                 ({"offset": "-1"}, "offset", "'-1'")):
        reply = await api.call("GET", "/api/v1/products", params=params)
        assert reply.status == 400 and reply.error == "invalid_parameter"
        assert reply.json["field"] == field and f"got {value}" in reply.json["detail"]


async def test_product_detail_has_history_and_the_30_day_lowest_price(api: ApiClient) -> None:
    now = datetime.now(timezone.utc)

    def at(days: float) -> str:
        return (now + timedelta(days=days)).isoformat()

    reply = await api.call("POST", "/api/v1/prices/history", role="admin", json=[  # a POS may not back-date
        {"sku": "K", "price": "10.00", "name": "Kawa", "valid_from": at(-20)},
        {"sku": "K", "price": "12.00", "valid_from": at(-10)}])
    assert reply.status == 200 and not reply.json["errors"], reply.json
    await add_products(api, {"sku": "K", "price": "12.00", "promo": {"price": "7.99", "from": at(-1), "to": at(5)}})
    reply = await api.call("GET", "/api/v1/products/K")
    assert reply.status == 200
    body = reply.json
    assert body["price"] == "12.00" and body["selling_price"] == "7.99"
    assert body["lowest_30d"] == "10.00"  # the lowest of the 30 days before the reduction
    assert [h["price"] for h in body["history"]][:2] == ["7.99", "12.00"]  # newest first
    assert body["history"][0]["reduction"] is True and body["history"][-1]["price"] == "10.00"
    reply = await api.call("GET", "/api/v1/products/K", params={"history": "1"})
    assert len(reply.json["history"]) == 1


async def test_scheduled_changes_are_listed(api: ApiClient) -> None:
    later = (datetime.now(timezone.utc) + timedelta(days=3)).isoformat()
    await add_products(api, {"sku": "F", "price": "1.00"})
    reply = await api.call("POST", "/api/v1/prices", role="pos", json={"sku": "F", "price": "0.90", "valid_from": later})
    assert reply.json["accepted"][0]["status"] == "scheduled"
    reply = await api.call("GET", "/api/v1/products/F")
    [scheduled] = reply.json["scheduled"]
    assert scheduled["fields"]["price"] == "0.90" and reply.json["price"] == "1.00"


async def test_unknown_product_is_404(api: ApiClient) -> None:
    reply = await api.call("GET", "/api/v1/products/NOPE")
    assert reply.status == 404 and reply.error == "unknown_sku" and "'NOPE'" in reply.json["detail"]
