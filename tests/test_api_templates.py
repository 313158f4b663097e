"""Templates over real HTTP: list, read, write (validated, versioned), preview (answers checked against OpenAPI)."""

from __future__ import annotations

from tests.test_api_schema import ApiClient, add_products, api  # noqa: F401  (fixture)


async def _shipped(api: ApiClient, name: str = "shelf-2.9") -> str:
    reply = await api.call("GET", f"/api/v1/templates/{name}", role="pos")
    assert reply.status == 200 and reply.json["version"] == 0
    return str(reply.json["source"])


async def test_list_and_read(api: ApiClient) -> None:
    reply = await api.call("GET", "/api/v1/templates", role="tech")
    names = {t["name"]: t for t in reply.json["items"]}
    assert {"shelf-2.9", "promo-4.2"} <= set(names)
    assert names["shelf-2.9"]["origin"] == "shipped" and "2.9-bwry" in names["shelf-2.9"]["models"]
    assert "esl-template" in await _shipped(api)
    reply = await api.call("GET", "/api/v1/templates/no-such")
    assert reply.status == 404 and reply.error == "unknown_template"
    reply = await api.call("GET", "/api/v1/templates/..secret")
    assert reply.status == 400 and reply.json["field"] == "name" and "'..secret'" in reply.json["detail"]


async def test_save_versions_and_conflicts(api: ApiClient) -> None:
    source = await _shipped(api)
    reply = await api.call("PUT", "/api/v1/templates/shelf-2.9", role="merchandiser", json={"source": source})
    assert reply.status == 200 and reply.json == {"name": "shelf-2.9", "version": 1}
    reply = await api.call("PUT", "/api/v1/templates/shelf-2.9", role="merchandiser",
                           data=source.encode(), headers={"Content-Type": "text/plain; charset=utf-8"})
    assert reply.status == 200 and reply.json["version"] == 2
    reply = await api.call("PUT", "/api/v1/templates/shelf-2.9", role="merchandiser",
                           json={"source": source, "base_version": 1})
    assert reply.status == 409 and reply.error == "version_conflict" and reply.json["field"] == "base_version"
    reply = await api.call("PUT", "/api/v1/templates/shelf-2.9", role="admin", json={"source": source, "base_version": 2})
    assert reply.status == 200 and reply.json["version"] == 3
    reply = await api.call("GET", "/api/v1/templates/shelf-2.9")
    assert reply.json["version"] == 3
    reply = await api.call("GET", "/api/v1/audit", params={"action": "template.save"})
    assert [(e["actor"], e["after"]["version"]) for e in reply.json["items"]] == [
        ("test-admin", 3), ("test-merchandiser", 2), ("test-merchandiser", 1)]


async def test_a_broken_template_is_422_with_its_line_and_not_stored(api: ApiClient) -> None:
    source = await _shipped(api)
    lines = source.splitlines()
    broken_line = len(lines) // 2
    lines.insert(broken_line, "{% if %}")
    reply = await api.call("PUT", "/api/v1/templates/shelf-2.9", role="merchandiser",
                           json={"source": "\n".join(lines)})
    assert reply.status == 422 and reply.error == "template_error"
    assert reply.json["kind"] == "syntax" and reply.json["line"] == broken_line + 1
    reply = await api.call("GET", "/api/v1/templates/shelf-2.9")
    assert reply.json["version"] == 0 and reply.json["source"] == source


async def test_bad_template_bodies(api: ApiClient) -> None:
    for body, field in (({}, "source"), ({"source": ""}, "source"), ({"source": 5}, "source"),
                        ({"source": "x", "base_version": -1}, "base_version"), ({"source": "x", "v": 1}, "v")):
        reply = await api.call("PUT", "/api/v1/templates/t1", role="merchandiser", json=body)
        assert reply.status == 400 and reply.json["field"] == field, (body, reply.json)
    reply = await api.call("PUT", "/api/v1/templates/t1", role="merchandiser", data=b"<label/>",
                           headers={"Content-Type": "application/xml"})
    assert reply.status == 415 and reply.error == "unsupported_media_type"
    reply = await api.call("PUT", "/api/v1/templates/t1", role="merchandiser", data=b"\xff\xfe",
                           headers={"Content-Type": "text/plain"})
    assert reply.status == 400 and reply.json["field"] == "source"


async def test_preview_by_name_and_by_source(api: ApiClient) -> None:
    await add_products(api, {"sku": "A1", "price": "4.99", "name": "Mleko"})
    by_name = await api.call("POST", "/api/v1/templates/preview", role="merchandiser",
                             json={"name": "shelf-2.9", "sku": "A1"})
    assert by_name.status == 200 and by_name.headers["Content-Type"] == "image/png"
    source = await _shipped(api)
    by_source = await api.call("POST", "/api/v1/templates/preview", role="merchandiser",
                               json={"source": source, "sku": "A1", "model": "2.9-bwry"})
    assert by_source.status == 200 and by_source.body == by_name.body
    sample = await api.call("POST", "/api/v1/templates/preview", role="merchandiser", json={"name": "shelf-2.9"})
    assert sample.status == 200 and sample.body != by_name.body  # a sample product, not A1


async def test_preview_errors(api: ApiClient) -> None:
    cases = [({"source": "{{ product.nme }}"}, 422, "template_error", "source"),
             ({"name": "no-such"}, 404, "unknown_template", "name"),
             ({"name": "shelf-2.9", "sku": "NOPE"}, 404, "unknown_sku", "sku"),
             ({"name": "shelf-2.9", "model": "huge"}, 400, "invalid_body", "model"),
             ({"name": "shelf-2.9", "model": {"x": 1}}, 400, "invalid_body", "model"),
             ({"name": ["shelf-2.9"]}, 400, "invalid_body", "name"),
             ({"name": "shelf-2.9", "sku": ["A"]}, 400, "invalid_body", "sku"),
             ({}, 400, "invalid_body", "source"),
             ({"name": "shelf-2.9", "source": "x"}, 400, "invalid_body", "source")]
    for body, status, code, field in cases:
        reply = await api.call("POST", "/api/v1/templates/preview", role="merchandiser", json=body)
        assert (reply.status, reply.error, reply.json.get("field")) == (status, code, field), (body, reply.json)
