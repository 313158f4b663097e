"""Schemathesis against the running server: the API does what its OpenAPI document says.

One real `Server` (SQLite in a temporary directory, HTTP on a free port of 127.0.0.1, no
MQTT) runs in a thread with its own event loop; the schema is the one it serves at
``/api/v1/openapi.json``. Every documented operation gets a bounded, seeded set of valid
(positive) and invalid (negative) requests, with a token of each role in turn, and every
answer goes through schemathesis' checks: no 5xx, documented status, content type, body and
headers, invalid input refused and valid input accepted. Deterministic (``derandomize``),
so a failure here fails the same way on every run.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hypothesis
import hypothesis.strategies as st
import pytest
import requests
import schemathesis
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance, negative_data_rejection, not_a_server_error, positive_data_acceptance,
    response_headers_conformance, response_schema_conformance, status_code_conformance,
)

from eslserver.api.openapi import document
from eslserver.auth import ROLES, create_token
from eslserver.config import load_settings
from eslserver.server import Server

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          response_headers_conformance, negative_data_rejection, positive_data_acceptance]
EXAMPLES = 8
"""Per operation and mode: about 30 operations x 2 modes x 8 = a few hundred requests."""

_DOC = document()
_CASES = sorted((method.upper(), path, mode) for path, ops in _DOC["paths"].items() for method, op in ops.items()
                for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
                if mode is GenerationMode.POSITIVE or op.get("parameters") or op.get("requestBody"))
"""Negative cases only where there is an input to get wrong."""
_ACCEPTED = ["2xx", "401", "403", "404", "409", "422"]
_CONFIG = schemathesis.config.SchemathesisConfig.from_dict({
    "checks": {"positive_data_acceptance": {"expected-statuses": _ACCEPTED}},
    "operations": [{"include-path-regex": "^/api/v1/(prices|prices/history|import)$",
                    "checks": {"positive_data_acceptance": {"expected-statuses": [*_ACCEPTED, "400"]}}}]})
"""A valid request may still name a label or SKU that is not there (404), race a version (409)
or carry a template that does not render (422: no schema can say which Jinja2 renders). POS
batches and import rows are checked item by item against the catalogue, the price rules and
the store's field map (which renames fields), so a well-formed batch whose every item breaks
a rule is answered 400 with one error per item: documented, and still checked against the
document's error shapes by the other checks."""


@dataclass(frozen=True)
class Live:
    base: str
    tokens: dict[str, str]
    schema: Any


def _serve(data: Path, ready: threading.Event, out: dict[str, Any]) -> None:
    async def main() -> None:
        settings = load_settings(environ={}, overrides={"data_dir": data, "http_port": 0})
        async with Server(settings, mqtt=False, render_processes=False) as server:
            out["tokens"] = {role: await create_token(server.db, role, f"fuzz-{role}") for role in ROLES}
            out["port"] = server.http_port
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            out["stop"] = lambda: loop.call_soon_threadsafe(stop.set)
            ready.set()
            await stop.wait()

    try:
        asyncio.run(main())
    except BaseException as exc:  # reported to the fixture, which fails the tests with it
        out["error"] = exc
        ready.set()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    ready = threading.Event()
    out: dict[str, Any] = {}
    thread = threading.Thread(target=_serve, args=(tmp_path_factory.mktemp("fuzz"), ready, out),
                              name="fuzz-server", daemon=True)
    thread.start()
    assert ready.wait(60), "server did not start"
    if "error" in out:
        raise out["error"]
    base = f"http://127.0.0.1:{out['port']}"
    try:
        raw = requests.get(base + "/api/v1/openapi.json", timeout=10).json()
        yield Live(base, out["tokens"], schemathesis.openapi.from_dict(raw, config=_CONFIG))
    finally:
        out["stop"]()
        thread.join(60)
        assert not thread.is_alive(), "server thread did not stop"


def _operation(live: Live, method: str, path: str) -> Any:
    for result in live.schema.get_all_operations():
        op = result.ok()
        if op.method.upper() == method and op.path == path:
            return op
    raise AssertionError(f"{method} {path} is not in the served document")


def _drops_token(case: Any) -> bool:
    """Whether schemathesis made this negative case by leaving out the Authorization header."""
    data = getattr(getattr(case.meta, "phase", None), "data", None)
    names = [getattr(data, "parameter", None), *(getattr(m, "parameter", None) for m in getattr(data, "mutations", ()))]
    return any(str(name).lower() == "authorization" for name in names if name)


@pytest.mark.parametrize(("method", "path", "mode"), _CASES, ids=[f"{m} {p} {g.value}" for m, p, g in _CASES])
def test_operation_keeps_to_the_document(live: Live, method: str, path: str, mode: GenerationMode) -> None:
    op = _operation(live, method, path)

    @hypothesis.settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
                         suppress_health_check=list(hypothesis.HealthCheck),
                         phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate])
    @hypothesis.given(case=op.as_strategy(generation_mode=mode), role=st.sampled_from(sorted(ROLES)))
    def run(case: Any, role: str) -> None:
        if path == "/api/v1/events/stream" and mode is GenerationMode.POSITIVE:
            case.query = {"limit": 1}  # the `ready` event, then the end: a stream otherwise never ends
        # a negative case whose invalid part is the missing token goes out as generated (401);
        # every other case carries a real token, or the server would only ever say 401
        headers = {} if _drops_token(case) else {"Authorization": f"Bearer {live.tokens[role]}"}
        response = case.call(base_url=live.base, headers=headers, timeout=30)
        case.validate_response(response, checks=CHECKS, headers=headers)

    run()


@pytest.mark.parametrize("path", ["/api/v1/labels", "/api/v1/templates/shelf-2.9", "/api/v1/openapi.json",
                                  "/metrics", "/healthz", "/ui/", "/api/docs", "/api/v1/events/stream"])
def test_head_answers_wherever_get_does(live: Live, path: str) -> None:
    auth = {"Authorization": f"Bearer {live.tokens['admin']}"}
    get = requests.get(live.base + path, headers=auth, timeout=10, params={"limit": "1"}
                       if path.endswith("stream") else None)
    head = requests.head(live.base + path, headers=auth, timeout=10)
    assert get.status_code == 200, (path, get.text[:200])
    assert head.status_code == 200, (path, head.text[:200])
    assert head.content == b""
    assert head.headers["Content-Type"] == get.headers["Content-Type"]


def test_a_template_cannot_take_the_preview_routes_name(live: Live) -> None:
    auth = {"Authorization": f"Bearer {live.tokens['merchandiser']}"}
    source = requests.get(live.base + "/api/v1/templates/shelf-2.9", headers=auth, timeout=10).json()["source"]
    for name in ("preview", "Preview"):
        reply = requests.put(f"{live.base}/api/v1/templates/{name}", headers=auth, json={"source": source},
                             timeout=30)
        assert reply.status_code == 400, reply.text
        assert reply.json()["field"] == "name" and repr(name) in reply.json()["detail"]
    reply = requests.get(live.base + "/api/v1/templates/preview", headers=auth, timeout=10)
    assert reply.status_code == 404 and reply.json()["error"] == "unknown_template"
