"""The OpenAPI document against the server, and the harness the other API tests use.

`ApiClient` talks real HTTP to a real `Server` (SQLite file in tmp_path, HTTP on a free port
of 127.0.0.1, no MQTT, rendering in-process) and checks every answer against the document:
the route and status must be documented, the content type must be the documented one, and
a JSON body must match the documented schema (a small JSON Schema validator below, for the
subset the document uses: jsonschema is not a dependency of the project).
"""

from __future__ import annotations

import asyncio
import io
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from PIL import Image as PILImage

from eslserver.api.app import all_routes, create_app
from eslserver.api.openapi import document
from eslserver.auth import ROLES, create_token
from eslserver.config import load_settings
from eslserver.server import Server

DOC = document()


# --- a JSON Schema subset validator ---------------------------------------------------------

class SchemaMismatch(AssertionError):
    pass


_TYPES: Mapping[str, Any] = {
    "object": lambda v: isinstance(v, dict), "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str), "boolean": lambda v: isinstance(v, bool),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "null": lambda v: v is None,
}
_KNOWN = {"type", "properties", "required", "additionalProperties", "items", "enum", "$ref", "oneOf",
          "minimum", "maximum", "minItems", "maxItems", "pattern", "format", "description"}


def _resolve(ref: str, root: Mapping[str, Any]) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = root
    for part in ref[2:].split("/"):
        node = node[part]
    return node


def validate(value: Any, schema: Mapping[str, Any], root: Mapping[str, Any] = DOC, where: str = "$") -> None:
    """Raise `SchemaMismatch` naming the JSON path when `value` does not match `schema`."""
    unknown = set(schema) - _KNOWN
    if unknown:
        raise SchemaMismatch(f"{where}: validator does not support {sorted(unknown)}")
    if "$ref" in schema:
        validate(value, _resolve(schema["$ref"], root), root, where)
        return
    if "oneOf" in schema:
        matches = 0
        reasons = []
        for option in schema["oneOf"]:
            try:
                validate(value, option, root, where)
                matches += 1
            except SchemaMismatch as exc:
                reasons.append(str(exc))
        if matches != 1:
            raise SchemaMismatch(f"{where}: matches {matches} of oneOf ({'; '.join(reasons)})")
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_TYPES[t](value) for t in types):
            raise SchemaMismatch(f"{where}: expected {'/'.join(types)}, got {value!r:.80}")
    if "enum" in schema and value not in schema["enum"]:
        raise SchemaMismatch(f"{where}: {value!r} not in {schema['enum']}")
    if isinstance(value, str) and "pattern" in schema and not re.search(schema["pattern"], value):
        raise SchemaMismatch(f"{where}: {value!r} does not match {schema['pattern']}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            raise SchemaMismatch(f"{where}: {value} < {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            raise SchemaMismatch(f"{where}: {value} > {schema['maximum']}")
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0) or len(value) > schema.get("maxItems", len(value)):
            raise SchemaMismatch(f"{where}: {len(value)} items outside the allowed count")
        if "items" in schema:
            for i, item in enumerate(value):
                validate(item, schema["items"], root, f"{where}[{i}]")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for name in schema.get("required", []):
            if name not in value:
                raise SchemaMismatch(f"{where}: required member {name!r} missing")
        extra = schema.get("additionalProperties", True)
        for name, member in value.items():
            if name in props:
                validate(member, props[name], root, f"{where}.{name}")
            elif extra is False:
                raise SchemaMismatch(f"{where}: member {name!r} is not documented")
            elif isinstance(extra, dict):
                validate(member, extra, root, f"{where}.{name}")


# --- the harness ------------------------------------------------------------------------------

def _template_regex(path: str) -> re.Pattern[str]:
    parts = re.split(r"(\{[^}]+\})", path)
    return re.compile("^" + "".join("[^/]+" if p.startswith("{") else re.escape(p) for p in parts) + "$")


_PATHS = sorted(DOC["paths"], key=lambda p: (p.count("{"), -len(re.sub(r"\{[^}]+\}", "", p)), p))
"""Literal segments win, then the template with more literal text (``/images/{hash}.png``
before ``/images/{digest}``)."""


def documented_operation(method: str, path: str) -> tuple[str, dict[str, Any]]:
    for template in _PATHS:
        if _template_regex(template).match(path) and method.lower() in DOC["paths"][template]:
            return template, DOC["paths"][template][method.lower()]
    raise AssertionError(f"{method} {path} is not documented")


@dataclass
class Reply:
    status: int
    headers: Mapping[str, str]
    body: bytes
    json: Any = None

    @property
    def error(self) -> str | None:
        return self.json.get("error") if isinstance(self.json, dict) else None


@dataclass
class ApiClient:
    """HTTP to one running server; `tokens` holds one token per role."""

    base: str
    session: aiohttp.ClientSession
    server: Server
    tokens: dict[str, str]
    seen: set[tuple[str, str, str]] = field(default_factory=set)

    async def call(self, method: str, path: str, *, role: str | None = "admin", token: str | None = None,
                   json: Any = None, data: bytes | str | io.BytesIO | None = None, headers: Mapping[str, str] | None = None,
                   params: Mapping[str, str] | None = None, check: bool = True) -> Reply:
        hdrs = dict(headers or {})
        if token is not None:
            hdrs["Authorization"] = f"Bearer {token}"
        elif role is not None:
            hdrs["Authorization"] = f"Bearer {self.tokens[role]}"
        async with self.session.request(method, self.base + path, json=json, data=data, headers=hdrs,
                                        params=params) as resp:
            body = await resp.read()
            reply = Reply(resp.status, resp.headers.copy(), body)  # case-insensitive
            if resp.content_type == "application/json":
                reply.json = await resp.json()
        if check:
            self.check(method, path, reply)
        return reply

    def check(self, method: str, path: str, reply: Reply) -> None:
        """The reply's status, content type and body are what the document says."""
        template, op = documented_operation(method, path.split("?")[0])
        responses = op["responses"]
        assert str(reply.status) in responses, \
            f"{method} {template}: status {reply.status} not documented ({sorted(responses)}): {reply.body[:300]!r}"
        content = responses[str(reply.status)].get("content", {})
        ctype = reply.headers.get("Content-Type", "").split(";")[0].strip()
        assert ctype in content, f"{method} {template} {reply.status}: content type {ctype!r}, documented {list(content)}"
        if ctype == "application/json":
            validate(reply.json, content[ctype]["schema"], DOC, f"{method} {template} {reply.status}")
        elif ctype == "image/png":
            assert reply.body.startswith(b"\x89PNG\r\n\x1a\n")
        self.seen.add((method, template, str(reply.status)))


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[ApiClient]:
    settings = load_settings(environ={}, overrides={"data_dir": tmp_path / "data", "http_port": 0})
    async with Server(settings, mqtt=False, render_processes=False) as server:
        tokens = {role: await create_token(server.db, role, f"test-{role}") for role in ROLES}
        async with aiohttp.ClientSession() as session:
            yield ApiClient(f"http://127.0.0.1:{server.http_port}", session, server, tokens)


async def add_products(api: ApiClient, *items: dict[str, Any]) -> None:
    reply = await api.call("POST", "/api/v1/prices", role="pos", json=list(items))
    assert reply.status == 200 and not reply.json["errors"], reply.json


async def add_label(api: ApiClient, mac: str, sku: str, model: str = "2.9-bwry", **extra: Any) -> Reply:
    reply = await api.call("PUT", f"/api/v1/labels/{mac}/binding", role="tech", json={"sku": sku, "model": model,
                                                                                      **extra})
    assert reply.status == 200, reply.json
    return reply


async def sql(api: ApiClient, statement: str, *params: Any) -> None:
    """Set up state the API cannot (what gateways report: battery, displayed hash …)."""
    async with api.server.db.transaction() as conn:
        await conn.execute(statement, params)


async def wait_rendered(api: ApiClient, mac: str) -> str:
    """The label's expected hash, once the pipeline has rendered it."""
    for _ in range(400):
        row = await api.server.db.read_one("SELECT expected_hash FROM labels WHERE mac = ? AND dirty = 0", (mac,))
        if row is not None and row[0] is not None:
            return str(row[0])
        await asyncio.sleep(0.05)
    raise AssertionError(f"label {mac} was never rendered")


# --- tests of the document itself --------------------------------------------------------------

def test_every_route_is_documented_and_every_documented_route_exists(tmp_path: Path) -> None:
    settings = load_settings(environ={}, overrides={"data_dir": tmp_path})
    app = create_app(Server(settings, mqtt=False, http=False, render_processes=False))
    served = set()
    for resource in app.router.resources():
        info = resource.get_info()
        path = info.get("path") or info.get("formatter")
        for route in resource:
            if route.method != "HEAD":  # HEAD mirrors every GET (tests/test_api_fuzz.py)
                served.add((route.method, path))
    documented = {(m.upper(), p) for p, ops in DOC["paths"].items() for m in ops}
    assert served == documented
    assert served == {(r.method, r.path) for r in all_routes()}


def test_roles_in_the_document_are_the_routes_roles() -> None:
    for route in all_routes():
        op = DOC["paths"][route.path][route.method.lower()]
        if route.roles is None:
            assert op["security"] == [] and "401" not in op["responses"]
        else:
            assert op["security"] == [{"bearer": []}] and "401" in op["responses"]
            expected = sorted(ROLES) if not route.roles else sorted({*route.roles, "admin"})
            assert op["x-roles"] == expected
            # every token route may refuse: a role not allowed, or a token restricted to other stores
            assert "403" in op["responses"] and ("(`forbidden`" in op["responses"]["403"]["description"]) == bool(
                route.roles)


def test_every_ref_resolves_and_every_schema_uses_the_supported_subset() -> None:
    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "$ref" in node:
                _resolve(node["$ref"], DOC)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(DOC)
    for name, schema in DOC["components"]["schemas"].items():
        stack = [schema]
        while stack:
            s = stack.pop()
            assert not (set(s) - _KNOWN), (name, set(s) - _KNOWN)
            stack.extend(v for v in s.get("properties", {}).values())
            stack.extend(v for v in s.get("oneOf", []))
            for key in ("items", "additionalProperties"):
                if isinstance(s.get(key), dict):
                    stack.append(s[key])


def test_document_is_valid_openapi_when_a_validator_is_installed() -> None:
    validator = pytest.importorskip("openapi_spec_validator")
    validator.validate(DOC)


@pytest.mark.parametrize(("value", "schema_name", "fails_at"), [
    ({"error": "x", "detail": "y"}, "Error", None),
    ({"error": "x"}, "Error", "required member 'detail'"),
    ({"error": "x", "detail": "y", "extra": 1}, "Error", "'extra' is not documented"),
    ({"error": 1, "detail": "y"}, "Error", "expected string"),
    ({"index": 0, "sku": "A", "seq": None, "update_id": "t-1", "status": "applied"}, "PriceAccepted", None),
    ({"index": 0, "sku": "A", "seq": 1, "update_id": None, "status": "done"}, "PriceAccepted", "not in"),
    ({"index": True, "sku": "A", "seq": 1, "update_id": None, "status": "applied"}, "PriceAccepted",
     "expected integer"),
    ({"index": 0, "sku": "A", "status": "applied"}, "PriceAccepted", "required member 'seq'"),
    ({"items": [{"id": "gw", "status": "online", "last_seen": None, "labels": -1, "info": {}}]},
     "GatewayList", "< 0"),
])
def test_validator_accepts_and_rejects(value: Any, schema_name: str, fails_at: str | None) -> None:
    schema = {"$ref": f"#/components/schemas/{schema_name}"}
    if fails_at is None:
        validate(value, schema)
    else:
        with pytest.raises(SchemaMismatch, match=re.escape(fails_at)):
            validate(value, schema)


async def test_openapi_is_served_without_a_token_and_equals_the_module_document(api: ApiClient) -> None:
    reply = await api.call("GET", "/api/v1/openapi.json", role=None)
    assert reply.status == 200
    assert reply.json == DOC


async def test_unknown_route_and_wrong_method_answer_json(api: ApiClient) -> None:
    reply = await api.call("GET", "/api/v1/nothing-here", check=False)
    assert reply.status == 404 and reply.json == {"error": "not_found", "detail": "no route GET /api/v1/nothing-here"}
    reply = await api.call("DELETE", "/api/v1/prices", check=False)
    assert reply.status == 405 and reply.error == "method_not_allowed"
    assert "POST" in reply.headers.get("Allow", "")


async def test_a_tour_gets_a_documented_success_from_every_route(api: ApiClient) -> None:
    """One pass over the whole API; fails when a route is added without a success here."""
    mac = "AA:BB:CC:00:00:09"
    await add_products(api, {"sku": "T1", "price": "2.49", "name": "Tour"})
    await add_label(api, mac, "T1")
    digest = await wait_rendered(api, mac)
    await sql(api, "UPDATE labels SET label_key = ?, displayed_hash = expected_hash WHERE mac = ?", b"k" * 16, mac)
    source = (await api.call("GET", "/api/v1/templates/shelf-2.9")).json["source"]
    calls: list[tuple[str, str, Any]] = [
        ("GET", "/api/v1/products", None), ("GET", "/api/v1/products/T1", None),
        ("GET", "/api/v1/labels", None), ("GET", f"/api/v1/labels/{mac}", None),
        ("POST", f"/api/v1/labels/{mac}/flash", {"seconds": 2}),
        ("GET", f"/api/v1/labels/{mac}/image/expected.png", None),
        ("GET", f"/api/v1/labels/{mac}/image/displayed.png", None),
        ("GET", f"/api/v1/labels/{mac}/events", None), ("GET", f"/api/v1/images/{digest}.png", None),
        ("GET", "/api/v1/gateways", None), ("GET", "/api/v1/templates", None),
        ("GET", "/api/v1/templates/shelf-2.9", None), ("PUT", "/api/v1/templates/tour", {"source": source}),
        ("POST", "/api/v1/templates/preview", {"name": "tour", "sku": "T1"}),
        ("GET", "/api/v1/jobs", None), ("GET", "/api/v1/audit", None), ("GET", "/api/v1/summary", None),
        ("GET", "/api/v1/me", None), ("GET", "/api/v1/stores", None), ("GET", "/metrics", None), ("GET", "/healthz", None),
        ("GET", "/api/v1/openapi.json", None),
        ("GET", f"/api/v1/labels/{mac}/history", None),
        ("GET", "/api/v1/events/stream?limit=1", None),
        ("POST", "/api/v1/import", {"rows": [{"line": 2, "fields": {"sku": "T1", "price": "2.59"}, "label": mac}]}),
        ("POST", "/api/v1/prices/history", [{"sku": "T0", "price": "1.99", "valid_from": "2026-01-05T08:00:00Z"}]),
        ("POST", "/api/v1/products/T1/seq-reset", None),
        ("POST", f"/api/v1/labels/{mac}/reset", None),
        ("DELETE", f"/api/v1/labels/{mac}/binding", None),
    ]
    # the configured store's paths, then the same store's routes once more as one store of the chain
    in_store = f"/api/v1/stores/{api.server.settings.store}"
    chain = ("/api/v1/templates", "/api/v1/audit", "/api/v1/me", "/api/v1/stores", "/metrics", "/healthz",
             "/api/v1/openapi.json",
             "/api/v1/events/stream", f"/api/v1/images/{digest}.png")
    history = [{"sku": "T2", "price": "1.99", "valid_from": "2026-01-05T08:00:00Z"}]  # history is never rewritten
    scoped = [("POST", f"{in_store}/prices", [{"sku": "T3", "price": "1.00", "name": "Tour 3"}]),
              ("PUT", f"{in_store}/labels/{mac}/binding", {"sku": "T1"}),
              *((m, in_store + p[len("/api/v1"):], history if p == "/api/v1/prices/history" else b)
                for m, p, b in calls if not p.startswith(chain))]
    for round_ in (calls, scoped):
        for method, path, body in round_:
            reply = await api.call(method, path, json=body)
            assert reply.status < 300, (method, path, reply.json)
        await add_label(api, mac, "T1")  # bound, drawn and keyed again for the second round
        await wait_rendered(api, mac)
        await sql(api, "UPDATE labels SET label_key = ?, displayed_hash = expected_hash WHERE mac = ?", b"k" * 16, mac)
    picture = io.BytesIO()
    PILImage.new("RGB", (8, 8), (200, 30, 30)).save(picture, format="PNG")
    for prefix in ("/api/v1", in_store):
        upload = await api.call("POST", f"{prefix}/images", role="merchandiser", params={"name": "tour-logo"},
                                data=picture.getvalue(), headers={"Content-Type": "image/png"})
        assert upload.status == 201, upload.json
        for method, path in (("GET", f"{prefix}/images"), ("GET", f"{prefix}/images/{upload.json['digest']}"),
                             ("DELETE", f"{prefix}/images/{upload.json['digest']}")):
            reply = await api.call(method, path)
            assert reply.status == 200, (method, path, reply.json)
    succeeded = {(m, p) for m, p, status in api.seen if status.startswith("2")}
    assert succeeded == {(r.method, r.path) for r in all_routes()}
