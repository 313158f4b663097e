"""Labels over real HTTP: bind/unbind, filters, flash, images, events (answers checked against OpenAPI)."""

from __future__ import annotations

import json
from typing import Any

from tests.test_api_schema import ApiClient, add_label, add_products, api, sql, wait_rendered  # noqa: F401  (fixture)

MAC1, MAC2, MAC3 = "AA:BB:CC:00:00:01", "AA:BB:CC:00:00:02", "AA:BB:CC:00:00:03"


async def test_bind_show_and_unbind(api: ApiClient) -> None:
    await add_products(api, {"sku": "A1", "price": "4.99", "name": "Mleko"})
    reply = await add_label(api, "aa-bb-cc-00-00-01", "A1")  # any MAC spelling; answered canonical
    assert reply.json["mac"] == MAC1 and reply.json["sku"] == "A1" and reply.json["state"] == "pending"
    reply = await api.call("GET", "/api/v1/labels/aabbcc000001", role="pos")
    assert reply.status == 200
    assert reply.json["product"] == {"sku": "A1", "name": "Mleko", "price": "4.99", "currency": "PLN"}
    reply = await api.call("DELETE", f"/api/v1/labels/{MAC1}/binding", role="tech")
    assert reply.status == 200 and reply.json["sku"] is None and reply.json["state"] == "unpaired"
    reply = await api.call("GET", "/api/v1/audit", params={"target": MAC1})
    assert [e["action"] for e in reply.json["items"]] == ["label.unbind", "label.bind"]
    assert reply.json["items"][0]["actor"] == "test-tech"


async def test_binding_errors_name_the_field_and_value(api: ApiClient) -> None:
    await add_products(api, {"sku": "A1", "price": "1.00"})
    cases: list[tuple[str, Any, int, str, str]] = [
        (MAC1, {"sku": "NOPE", "model": "2.9-bwry"}, 404, "unknown_sku", "sku"),
        (MAC1, {"sku": "A1"}, 404, "unknown_label", "mac"),  # never seen, no model given
        (MAC1, {"sku": "A1", "model": "9.9-huge"}, 400, "invalid_body", "model"),
        (MAC1, {"sku": "A1", "model": ["2.9-bwry"]}, 400, "invalid_body", "model"),
        (MAC1, {"sku": "A1", "model": "2.9-bwry", "template": {"a": 1}}, 400, "invalid_body", "template"),
        (MAC1, {"sku": "A1", "model": "2.9-bwry", "template": "no-such"}, 404, "unknown_template", "template"),
        (MAC1, {"sku": 12}, 400, "invalid_body", "sku"),
        (MAC1, {"sku": "A1", "colour": "red"}, 400, "invalid_body", "colour"),
        (MAC1, {}, 400, "invalid_body", "sku"),
        (MAC1, ["A1"], 400, "invalid_body", "body"),
        ("not-a-mac", {"sku": "A1"}, 400, "invalid_parameter", "mac"),
    ]
    for mac, body, status, code, field in cases:
        reply = await api.call("PUT", f"/api/v1/labels/{mac}/binding", role="tech", json=body)
        assert (reply.status, reply.error, reply.json.get("field")) == (status, code, field), (body, reply.json)
    reply = await api.call("GET", "/api/v1/labels/not-a-mac")
    assert reply.status == 400 and "got 'not-a-mac'" in reply.json["detail"]
    reply = await api.call("GET", f"/api/v1/labels/{MAC3}")
    assert reply.status == 404 and reply.error == "unknown_label"
    reply = await api.call("DELETE", f"/api/v1/labels/{MAC3}/binding", role="tech")
    assert reply.status == 404 and reply.error == "unknown_label"


async def test_list_filters(api: ApiClient) -> None:
    await add_products(api, {"sku": "A1", "price": "1.00"}, {"sku": "B2", "price": "2.00"})
    await add_label(api, MAC1, "A1")
    await add_label(api, MAC2, "B2", model="4.2-bwry")
    await add_label(api, MAC3, "A1")
    for mac in (MAC1, MAC2, MAC3):  # let the pipeline finish first (the test then sets states itself)
        await wait_rendered(api, mac)
    await api.call("DELETE", f"/api/v1/labels/{MAC3}/binding", role="tech")
    await sql(api, "UPDATE labels SET battery_mv = ?, gateway = 'gw1', aisle = '7' WHERE mac = ?", 2100, MAC1)
    await sql(api, "UPDATE labels SET battery_mv = ?, gateway = 'gw2' WHERE mac = ?", 2900, MAC2)
    await sql(api, "UPDATE labels SET expected_hash = 'aaaaaaaaaaaaaaaa', displayed_hash = 'aaaaaaaaaaaaaaaa', "
                    "state = 'ok', dirty = 0 WHERE mac = ?", MAC2)

    async def macs(**params: str) -> list[str]:
        reply = await api.call("GET", "/api/v1/labels", role="merchandiser", params=params)
        assert reply.status == 200, reply.json
        return [item["mac"] for item in reply.json["items"]]

    assert await macs() == [MAC1, MAC2, MAC3]
    assert await macs(sku="A1") == [MAC1]
    assert await macs(state="unpaired") == [MAC3]
    assert await macs(gateway="gw2") == [MAC2]
    assert await macs(aisle="7") == [MAC1]
    assert await macs(model="4.2-bwry") == [MAC2]
    assert await macs(battery_below="2500") == [MAC1]
    assert await macs(stale="false") == [MAC2]
    assert await macs(stale="true") == [MAC1, MAC3]
    assert await macs(limit="1", offset="1") == [MAC2]
    await sql(api, "UPDATE labels SET label_key = ? WHERE mac = ?", b"k" * 16, MAC2)
    assert await macs(paired="true") == [MAC2]
    assert await macs(paired="false") == [MAC1, MAC3]
    for params, field in (({"state": "sleepy"}, "state"), ({"battery_below": "low"}, "battery_below"),
                          ({"stale": "maybe"}, "stale"), ({"limit": "5000"}, "limit")):
        reply = await api.call("GET", "/api/v1/labels", params=params)
        assert reply.status == 400 and reply.json["field"] == field
        assert repr(next(iter(params.values()))) in reply.json["detail"]


async def test_flash_needs_a_paired_label_and_queues_a_command(api: ApiClient) -> None:
    await add_products(api, {"sku": "A1", "price": "1.00"})
    await add_label(api, MAC1, "A1")
    await sql(api, "UPDATE labels SET label_key = ? WHERE mac = ?", b"k" * 16, MAC2)  # nobody: no such label
    reply = await api.call("POST", f"/api/v1/labels/{MAC2}/flash", role="tech", json={"seconds": 5})
    assert reply.status == 404 and reply.error == "unknown_label"
    await sql(api, "UPDATE labels SET label_key = NULL WHERE mac = ?", MAC1)
    reply = await api.call("POST", f"/api/v1/labels/{MAC1}/flash", role="tech", json={"seconds": 5})
    assert reply.status == 409 and reply.error == "not_paired"
    await sql(api, "UPDATE labels SET label_key = ? WHERE mac = ?", b"k" * 16, MAC1)
    reply = await api.call("POST", f"/api/v1/labels/{MAC1}/flash", role="tech", json={"seconds": 5})
    assert reply.status == 202 and reply.json["mac"] == MAC1 and reply.json["seconds"] == 5
    job = reply.json["job"]
    reply = await api.call("GET", "/api/v1/jobs", params={"mac": MAC1, "kind": "command"})
    assert [j["id"] for j in reply.json["items"]] == [job]
    for bad in (0, 3601, "5", True):
        reply = await api.call("POST", f"/api/v1/labels/{MAC1}/flash", role="tech", json={"seconds": bad})
        assert reply.status == 400 and reply.json["field"] == "seconds", bad
    reply = await api.call("POST", f"/api/v1/labels/{MAC1}/flash", role="tech", data=b"{",
                           headers={"Content-Type": "application/json"})
    assert reply.status == 400 and reply.error == "invalid_json"


async def test_expected_and_displayed_images(api: ApiClient) -> None:
    await add_products(api, {"sku": "A1", "price": "4.99", "name": "Mleko"})
    await add_label(api, MAC1, "A1")
    digest = await wait_rendered(api, MAC1)
    reply = await api.call("GET", f"/api/v1/labels/{MAC1}/image/expected.png", role="pos")
    assert reply.status == 200 and reply.headers["ETag"] == f'"{digest}"'
    reply = await api.call("GET", f"/api/v1/labels/{MAC1}/image/displayed.png")
    assert reply.status == 404 and reply.error == "no_image"
    await sql(api, "UPDATE labels SET displayed_hash = expected_hash WHERE mac = ?", MAC1)
    displayed = await api.call("GET", f"/api/v1/labels/{MAC1}/image/displayed.png")
    assert displayed.status == 200
    by_hash = await api.call("GET", f"/api/v1/images/{digest}.png")
    assert by_hash.status == 200 and by_hash.body == displayed.body
    assert "immutable" in by_hash.headers["Cache-Control"]
    reply = await api.call("GET", f"/api/v1/images/{'0' * 16}.png")
    assert reply.status == 404 and reply.error == "no_image"
    reply = await api.call("GET", "/api/v1/images/xyz.png")
    assert reply.status == 400 and reply.json["field"] == "hash"


async def test_events_newest_first_with_a_cursor(api: ApiClient) -> None:
    await add_products(api, {"sku": "A1", "price": "1.00"})
    await add_label(api, MAC1, "A1")
    for i in range(5):
        await sql(api, "INSERT INTO events (at, store, mac, gateway, kind, detail) VALUES (?, 'demo', ?, 'gw1', ?, ?)",
                   f"2026-11-23T10:00:0{i}.000000+00:00", MAC1, "checkin", json.dumps({"rssi": -50 - i}))
    reply = await api.call("GET", f"/api/v1/labels/{MAC1}/events", params={"limit": "3"})
    assert [e["detail"]["rssi"] for e in reply.json["items"]] == [-54, -53, -52]
    cursor = reply.json["next_before"]
    reply = await api.call("GET", f"/api/v1/labels/{MAC1}/events", params={"limit": "3", "before": str(cursor)})
    assert [e["detail"]["rssi"] for e in reply.json["items"]] == [-51, -50]
    assert reply.json["next_before"] is None
    reply = await api.call("GET", f"/api/v1/labels/{MAC2}/events")
    assert reply.status == 404
