"""Valid data only: history is what was in effect, money in minor units, a promotion below the
price, a bounded seq, unknown SKUs as the store wants, templates that keep every bound label
drawable. Over real HTTP on a real server (every answer checked against the OpenAPI document)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from eslserver.auth import ROLES, create_token
from eslserver.config import ConfigError, load_settings
from eslserver.pos_fields import read_update
from eslserver.price_rules import minor_unit
from eslserver.pricing import PriceError
from eslserver.server import Server
from tests.test_api_schema import ApiClient, add_label, add_products


async def _server(data: Path, **overrides: Any) -> AsyncIterator[ApiClient]:
    settings = load_settings(environ={}, overrides={"data_dir": data, "http_port": 0, **overrides})
    async with Server(settings, mqtt=False, render_processes=False) as server:
        tokens = {role: await create_token(server.db, role, f"test-{role}") for role in ROLES}
        async with aiohttp.ClientSession() as session:
            yield ApiClient(f"http://127.0.0.1:{server.http_port}", session, server, tokens)


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[ApiClient]:
    async for client in _server(tmp_path / "data"):
        yield client


@pytest.fixture
async def strict(tmp_path: Path) -> AsyncIterator[ApiClient]:
    async for client in _server(tmp_path / "strict", unknown_sku="refuse", max_seq_jump=1000):
        yield client


def _ago(**delta: float) -> str:
    return (datetime.now(timezone.utc) - timedelta(**delta)).isoformat()


async def _pos(api: ApiClient, item: dict[str, Any]) -> dict[str, Any]:
    reply = await api.call("POST", "/api/v1/prices", role="pos", json=item, check=True)
    assert reply.json is not None
    return {"status": reply.status, **reply.json}


async def _product(api: ApiClient, sku: str) -> dict[str, Any]:
    reply = await api.call("GET", f"/api/v1/products/{sku}")
    assert reply.status == 200 and reply.json is not None
    return reply.json


# -- history is what was in effect ---------------------------------------------------------

async def test_a_back_dated_price_cannot_rewrite_the_lowest_price_of_30_days(api: ApiClient) -> None:
    """The issue's reproduction: 7.00 shown, promotion 6.00, then 9.00 "since yesterday"."""
    reply = await api.call("POST", "/api/v1/prices/history", json=[
        {"sku": "O1", "price": "7.00", "name": "Kawa", "valid_from": _ago(days=40)}])
    assert reply.status == 200 and reply.json["errors"] == [], reply.json
    await add_products(api, {"sku": "O1", "price": "7.00", "promo": {"price": "6.00", "from": _ago(minutes=1)}})
    before = await _product(api, "O1")
    assert before["lowest_30d"] == "7.00" and before["selling_price"] == "6.00"

    answer = await _pos(api, {"sku": "O1", "price": "9.00", "valid_from": _ago(days=1)})
    assert answer["status"] == 400 and answer["error"] == "invalid_value" and answer["field"] == "valid_from"
    [error] = answer["errors"]
    assert (error["sku"], error["field"]) == ("O1", "valid_from") and "rewritten" in error["detail"]
    after = await _product(api, "O1")
    assert after["history"] == before["history"] and after["lowest_30d"] == "7.00" and after["price"] == "7.00"


async def test_a_valid_from_within_the_tolerance_applies_as_of_its_receipt(api: ApiClient) -> None:
    await add_products(api, {"sku": "T1", "price": "3.00"})
    sent = datetime.now(timezone.utc)
    answer = await _pos(api, {"sku": "T1", "price": "3.50", "valid_from": _ago(seconds=120)})
    assert answer["status"] == 200 and answer["accepted"][0]["status"] == "applied", answer
    newest = (await _product(api, "T1"))["history"][0]
    assert newest["price"] == "3.50" and datetime.fromisoformat(newest["start_at"]) >= sent  # not 2 min ago


async def test_historic_import_is_admin_only_audited_and_never_rewrites(api: ApiClient) -> None:
    items = [{"sku": "H1", "price": "5.00", "valid_from": _ago(days=20)},
             {"sku": "H1", "price": "4.00", "valid_from": _ago(days=10)}]
    reply = await api.call("POST", "/api/v1/prices/history", role="pos", json=items)
    assert reply.status == 403
    reply = await api.call("POST", "/api/v1/prices/history", json=items[::-1])  # applied oldest first
    assert reply.status == 200 and len(reply.json["accepted"]) == 2, reply.json
    history = (await _product(api, "H1"))["history"]
    assert [h["price"] for h in history] == ["4.00", "5.00"]
    reply = await api.call("POST", "/api/v1/prices/history", json=[
        {"sku": "H1", "price": "1.00", "valid_from": _ago(days=15)},  # before the latest recorded change
        {"sku": "H1", "price": "1.00"}])  # no past time
    assert reply.status == 400 and [e["field"] for e in reply.json["errors"]] == ["valid_from", "valid_from"]
    assert (await _product(api, "H1"))["history"] == history
    audit = (await api.call("GET", "/api/v1/audit")).json["items"]
    assert sum(1 for a in audit if a["action"] == "price.import_history" and a["target"] == "H1") == 2


# -- money in minor units, promotions below the price ----------------------------------------

@pytest.mark.parametrize("value", ["0.004", "-0", "-0.00", "1E-30", "4.999", "NaN", "Infinity", "-1"])
async def test_prices_the_shelf_cannot_show_are_refused_naming_field_and_value(api: ApiClient, value: str) -> None:
    answer = await _pos(api, {"sku": "M1", "price": value})
    assert answer["status"] == 400
    [error] = answer["errors"]
    assert error["field"] == "price" and error["value"] == value, error
    assert (await api.call("GET", "/api/v1/products/M1", check=False)).status == 404


async def test_promotion_not_below_the_regular_price_is_refused(api: ApiClient) -> None:
    for promo, regular in (("7.00", None), ("7.50", None), ("8.00", "8.00")):
        item: dict[str, Any] = {"sku": "P1", "price": "7.00", "promo": {"price": promo}}
        if regular:
            item["regular_price"] = regular
        answer = await _pos(api, item)
        assert answer["status"] == 400 and answer["errors"][0]["field"] == "promo.price", answer
        assert answer["errors"][0]["value"] == promo
    assert (await _pos(api, {"sku": "P1", "price": "7.00", "promo": {"price": "6.99"}}))["status"] == 200


@given(st.decimals(allow_nan=False, allow_infinity=False, min_value=0, max_value=999_999, places=None),
       st.sampled_from(["PLN", "EUR", "JPY", "KWD"]))
def test_money_with_more_places_than_the_minor_unit_is_refused(value: Decimal, currency: str) -> None:
    places = minor_unit(currency)
    item = {"sku": "X", "price": str(value), "currency": currency}
    exponent = value.as_tuple().exponent
    assert isinstance(exponent, int)
    too_precise = value != value.quantize(Decimal(1).scaleb(-places)) if exponent < -places else False
    if too_precise or (value.is_zero() and value.is_signed()) or len(str(value)) > 32:
        with pytest.raises(PriceError) as caught:
            read_update(item, {})
        assert caught.value.field == "price" and caught.value.value in (str(value), value)
    else:
        assert read_update(item, {}).fields["price"] == value


@given(st.integers(min_value=-40, max_value=-3), st.integers(min_value=1, max_value=99).filter(lambda d: d % 10))
def test_tiny_exponents_are_refused(exponent: int, digits: int) -> None:
    """``1E-30``, ``15E-3``: a significant digit beyond the cent."""
    text = f"{digits}E{exponent}"
    with pytest.raises(PriceError, match="minor unit") as caught:
        read_update({"sku": "X", "price": text, "currency": "PLN"}, {})
    assert caught.value.field == "price" and caught.value.value == text


def test_minor_units_follow_iso_4217() -> None:
    assert [minor_unit(c) for c in ("PLN", "EUR", "HUF", "JPY", "KRW", "KWD", "BHD", "CLF", None)] == \
        [2, 2, 2, 0, 0, 3, 3, 4, 2]


# -- seq and unknown SKUs --------------------------------------------------------------------

async def test_a_forged_seq_is_refused_and_an_admin_can_reset_a_stored_one(strict: ApiClient,
                                                                            api: ApiClient) -> None:
    await strict.call("POST", "/api/v1/import", role="tech",
                      json={"rows": [{"line": 2, "fields": {"sku": "S1", "price": "2.00"}}]})
    assert (await _pos(strict, {"sku": "S1", "price": "2.10", "seq": 5}))["status"] == 200
    answer = await _pos(strict, {"sku": "S1", "price": "0.01", "seq": 99999999999})
    assert answer["status"] == 400 and answer["error"] == "seq_jump" and answer["errors"][0]["value"] == 99999999999
    answer = await _pos(strict, {"sku": "S1", "price": "2.20", "seq": 6})  # the genuine next one still counts
    assert answer["accepted"][0]["status"] == "applied"

    # without max_seq_jump (a POS sending timestamps) a forged seq makes the genuine ones stale ...
    await add_products(api, {"sku": "S2", "price": "2.00", "seq": 1})
    await add_products(api, {"sku": "S2", "price": "0.01", "seq": 99999999999})
    assert (await _pos(api, {"sku": "S2", "price": "2.30", "seq": 2}))["accepted"][0]["status"] == "stale"
    # ... until an admin resets the SKU's seq (tokens of other roles may not)
    assert (await api.call("POST", "/api/v1/products/S2/seq-reset", role="tech")).status == 403
    assert (await api.call("POST", "/api/v1/products/nope/seq-reset")).status == 404
    reply = await api.call("POST", "/api/v1/products/S2/seq-reset")
    assert reply.status == 200 and reply.json == {"sku": "S2", "seq": None, "previous_seq": 99999999999}
    assert (await _pos(api, {"sku": "S2", "price": "2.30", "seq": 2}))["accepted"][0]["status"] == "applied"
    assert (await _product(api, "S2"))["price"] == "2.30"
    audit = (await api.call("GET", "/api/v1/audit")).json["items"]
    assert any(a["action"] == "price.seq_reset" and a["target"] == "S2" for a in audit)


async def test_unknown_skus_are_refused_when_the_store_says_so(strict: ApiClient) -> None:
    answer = await _pos(strict, {"sku": "NEW-1", "price": "1.00"})
    assert answer["status"] == 400 and answer["error"] == "unknown_sku"
    assert answer["errors"][0]["sku"] == "NEW-1" and "NEW-1" in answer["errors"][0]["detail"]
    assert (await strict.call("GET", "/api/v1/products/NEW-1", check=False)).status == 404


async def test_products_a_pos_created_are_listed_as_new_until_a_person_changes_them(api: ApiClient) -> None:
    await add_products(api, {"sku": "N1", "price": "1.00", "name": "Nowy"})  # a pos token
    await api.call("POST", "/api/v1/import", role="tech",
                   json={"rows": [{"line": 2, "fields": {"sku": "N2", "price": "1.00"}}]})
    listed = {p["sku"]: p["created_by_pos"] for p in (await api.call("GET", "/api/v1/products")).json["items"]}
    assert listed == {"N1": True, "N2": False}
    await add_products(api, {"sku": "N1", "price": "1.10"})  # the POS again: still new
    assert (await _product(api, "N1"))["created_by_pos"] is True
    reply = await api.call("POST", "/api/v1/prices", role="merchandiser", json={"sku": "N1", "price": "1.20"})
    assert reply.status == 200
    assert (await _product(api, "N1"))["created_by_pos"] is False


def test_unknown_sku_setting_is_checked() -> None:
    with pytest.raises(ConfigError, match="unknown_sku.*'maybe'"):
        load_settings(environ={"ESL_UNKNOWN_SKU": "maybe"})
    with pytest.raises(ConfigError, match="max_seq_jump"):
        load_settings(environ={"ESL_MAX_SEQ_JUMP": "-1"})


# -- a template save that would break bound labels -----------------------------------------

_TEMPLATE = """{{#- esl-template
model: {models}
-#}}
<label model="{{{{ label.model }}}}" background="white">
  <price x="4" y="4" w="142" h="64" size="40" currency="{{{{ store.currency }}}}">{{{{ price }}}}</price>
</label>
"""


async def test_a_template_save_that_drops_a_model_in_use_is_refused_with_the_labels(api: ApiClient) -> None:
    reply = await api.call("PUT", "/api/v1/templates/mine", json={"source": _TEMPLATE.format(models="2.9-bwry, 4.2-bwry")})
    assert reply.status == 200, reply.json
    await add_products(api, {"sku": "L1", "price": "1.00"})
    await add_label(api, "AA:BB:CC:00:00:01", "L1", "2.9-bwry", template="mine")
    await add_label(api, "AA:BB:CC:00:00:02", "L1", "4.2-bwry", template="mine")
    await add_label(api, "AA:BB:CC:00:00:03", "L1", "2.9-bwry")  # shelf-2.9, its model's default
    reply = await api.call("PUT", "/api/v1/templates/mine", json={"source": _TEMPLATE.format(models="4.2-bwry")})
    assert reply.status == 409 and reply.json["error"] == "template_in_use", reply.json
    assert reply.json["labels"] == [{"mac": "AA:BB:CC:00:00:01", "model": "2.9-bwry"}]
    assert "AA:BB:CC:00:00:01" in reply.json["detail"]
    assert (await api.call("GET", "/api/v1/templates/mine")).json["version"] == 1  # not stored
    reply = await api.call("PUT", "/api/v1/templates/shelf-2.9", json={"source": _TEMPLATE.format(models="4.2-bwry")})
    assert reply.status == 409 and [x["mac"] for x in reply.json["labels"]] == ["AA:BB:CC:00:00:03"]
    reply = await api.call("PUT", "/api/v1/templates/mine", json={"source": _TEMPLATE.format(models="2.9-bwry, 4.2-bwry")})
    assert reply.status == 200


# -- the admin's commands --------------------------------------------------------------------

async def test_esl_import_history_and_reset_seq(api: ApiClient, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from eslserver.cli import app

    env = {"ESL_SERVER": api.base, "ESL_TOKEN": api.tokens["admin"], "ESL_CLI_CONFIG": str(tmp_path / "none.toml")}

    async def esl(*args: str, code: int = 0, token: str = "admin") -> str:
        result = await asyncio.to_thread(CliRunner().invoke, app, list(args),
                                         env={**env, "ESL_TOKEN": api.tokens[token]}, catch_exceptions=False)
        assert result.exit_code == code, (args, result.stdout, result.stderr)
        return result.stdout + result.stderr

    history = tmp_path / "history.json"
    history.write_text(json.dumps([{"sku": "C1", "price": "3.00", "valid_from": _ago(days=9), "seq": 100},
                                   {"sku": "C1", "price": "2.50", "valid_from": _ago(days=3)},
                                   {"sku": "C1", "price": "2.999", "valid_from": _ago(days=2)}]))
    out = await esl("import-history", str(history), code=1)
    assert "2 historic prices recorded, 1 refused" in out and "2.999" in out, out
    assert [h["price"] for h in (await _product(api, "C1"))["history"]] == ["2.50", "3.00"]
    assert "admin" in await esl("reset-seq", "C1", token="pos", code=1)
    assert "seq 100 forgotten" in await esl("reset-seq", "C1")
    assert (await _pos(api, {"sku": "C1", "price": "2.40", "seq": 1}))["accepted"][0]["status"] == "applied"
