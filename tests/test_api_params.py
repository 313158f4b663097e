"""The API's input parsers: MAC addresses, JSON bodies, query parameters (hypothesis), and the
body edge cases over real HTTP."""

from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Any

import pytest
from aiohttp.test_utils import make_mocked_request
from hypothesis import given, settings
from hypothesis import strategies as st

from eslserver.api.errors import ApiError
from eslserver.api.routing import json_object, normalise_mac, page_params, parse_json, query_bool, query_int
from tests.test_api_schema import ApiClient, api  # noqa: F401  (fixture)

CANONICAL = re.compile(r"^([0-9A-F]{2}:){5}[0-9A-F]{2}$")


@given(st.binary(min_size=6, max_size=6), st.sampled_from([":", "-", ""]), st.booleans())
def test_every_spelling_of_a_mac_normalises_to_the_canonical_one(raw: bytes, sep: str, lower: bool) -> None:
    text = sep.join(f"{b:02x}" if lower else f"{b:02X}" for b in raw)
    assert normalise_mac(text) == ":".join(f"{b:02X}" for b in raw)


@given(st.text(max_size=30))
def test_any_text_is_a_canonical_mac_or_a_400_naming_it(text: str) -> None:
    try:
        out = normalise_mac(text)
    except ApiError as exc:
        assert exc.status == 400 and exc.field == "mac" and "got " in exc.detail
    else:
        assert CANONICAL.match(out)


@pytest.mark.parametrize("bad", ["AA:BB:CC:DD:EE", "AA:BB:CC:DD:EE:FF\n", "AA:BB-CC:DD:EE:FF", "AABBCCDDEEF0F", "GG:BB:CC:DD:EE:FF", ""])
def test_bad_macs(bad: str) -> None:
    with pytest.raises(ApiError, match=re.escape(f"got {bad!r}")):
        normalise_mac(bad)


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_any_body_parses_or_is_a_400_invalid_json(body: bytes) -> None:
    try:
        parse_json(body)
    except ApiError as exc:
        assert (exc.status, exc.code, exc.field) == (400, "invalid_json", "body")


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=10)
                    | st.decimals(allow_nan=False, allow_infinity=False, places=3).map(lambda d: d.normalize()),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
                    max_leaves=20))
def test_json_round_trips_with_exact_decimals(value: Any) -> None:
    text = json.dumps(value, default=str)
    assert parse_json(text.encode()) == json.loads(text, parse_float=Decimal)


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_not_json(constant: str) -> None:
    with pytest.raises(ApiError, match=re.escape(f"got {constant} (not a JSON value)")):
        parse_json(f'{{"price": {constant}}}'.encode())


def test_deep_nesting_is_a_400_not_a_crash() -> None:
    with pytest.raises(ApiError, match="nested too deeply"):
        parse_json(b"[" * 100_000)


def test_json_object_names_unknown_and_missing_fields() -> None:
    with pytest.raises(ApiError, match=r"^colour: expected no such field \(allowed: sku, template\), got 'red'$"):
        json_object({"sku": "A", "colour": "red"}, ("sku", "template"))
    with pytest.raises(ApiError, match=r"^sku: required field is missing$"):
        json_object({}, ("sku",), ("sku",))


@given(st.text(max_size=8) | st.integers(-1000, 1000).map(str))
def test_query_int_takes_only_in_range_decimal_integers(raw: str) -> None:
    request = _request({"limit": raw})
    try:
        value = query_int(request, "limit", default=None, lo=1, hi=500)
    except ApiError as exc:
        assert exc.field == "limit" and repr(raw) in exc.detail
    else:
        assert re.fullmatch(r"[0-9]+", raw) and value == int(raw) and 1 <= value <= 500


def _request(query: dict[str, str]) -> Any:
    from urllib.parse import urlencode
    return make_mocked_request("GET", "/x?" + urlencode(query))


def test_repeated_and_boolean_parameters() -> None:
    with pytest.raises(ApiError, match=r"^limit: expected one value"):
        page_params(make_mocked_request("GET", "/x?limit=1&limit=2"))
    assert page_params(_request({})) == (100, 0)
    assert query_bool(_request({"stale": "TRUE"}), "stale") is True
    assert query_bool(_request({"stale": "0"}), "stale") is False
    assert query_bool(_request({}), "stale") is None
    with pytest.raises(ApiError, match=r"^stale: expected true or false, got 'perhaps'$"):
        query_bool(_request({"stale": "perhaps"}), "stale")


async def test_deeply_nested_body_over_http_is_a_400(api: ApiClient) -> None:
    reply = await api.call("POST", "/api/v1/prices", role="pos", data=b"[" * 50_000,
                           headers={"Content-Type": "application/json"})
    assert reply.status == 400 and reply.error == "invalid_json"


async def test_a_json_content_type_with_charset_is_accepted(api: ApiClient) -> None:
    reply = await api.call("POST", "/api/v1/prices", role="pos", data=json.dumps({"sku": "Ł1", "price": "1"}).encode(),
                           headers={"Content-Type": "application/json; charset=utf-8"})
    assert reply.status == 200
    reply = await api.call("POST", "/api/v1/prices", role="pos", data=b'{"sku": "A", "price": "1"}')
    assert reply.status == 415 and "got 'application/octet-stream'" in reply.json["detail"]


ODD_BODIES: list[Any] = [None, 0, -1, 1.5, "x", "", [], [None], [[]], {}, {"": 1}, {"sku": None}, {"sku": {"a": [1]}},
                         {"sku": "A1", "price": None}, {"source": None}, {"seconds": None}, {"seconds": 1e300},
                         {"name": None, "source": None}, {"sku": "\u0000"}, {"template": None, "sku": "A1"}]


async def test_odd_json_bodies_never_crash_a_route(api: ApiClient) -> None:
    """Every route that takes a body answers odd JSON with a documented 4xx (or 2xx), never 500."""
    await api.call("POST", "/api/v1/prices", role="pos", json={"sku": "A1", "price": "1.00"})
    targets = [("POST", "/api/v1/prices"), ("PUT", "/api/v1/labels/AA:BB:CC:00:00:01/binding"),
               ("POST", "/api/v1/labels/AA:BB:CC:00:00:01/flash"), ("PUT", "/api/v1/templates/odd"),
               ("POST", "/api/v1/templates/preview")]
    for method, path in targets:
        for body in ODD_BODIES:
            reply = await api.call(method, path, role="admin", data=json.dumps(body).encode(),
                                   headers={"Content-Type": "application/json"})
            assert reply.status < 500, (method, path, body, reply.json)


async def test_a_misspelt_query_parameter_is_a_400_naming_it(api: ApiClient) -> None:
    """`?stat=offline` must not quietly answer with every label."""
    reply = await api.call("GET", "/api/v1/labels", params={"stat": "offline"})
    assert reply.status == 400 and reply.error == "unknown_parameter"
    assert reply.json["field"] == "stat" and "'stat'" in reply.json["detail"] and "state" in reply.json["detail"]
    reply = await api.call("GET", "/api/v1/gateways", params={"limit": "5"})
    assert reply.status == 400 and reply.json["field"] == "limit"
    assert (await api.call("GET", "/api/v1/labels", params={"state": "offline"})).status == 200
    assert (await api.call("GET", "/healthz", role=None, params={"probe": "1"}, check=False)).status in (200, 503)
