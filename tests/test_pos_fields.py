"""Price-update errors in the POS's own field names, with hints for misspelt names: the
mapping back (`eslserver.pos_fields`), then end to end over real HTTP and a real broker."""

from __future__ import annotations

import asyncio
import json
from difflib import SequenceMatcher
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from eslserver.auth import create_token
from eslserver.mqtt import MqttConnection, MqttSettings
from eslserver.pos_fields import pos_name, read_update, suggest
from eslserver.pricing import CANONICAL_FIELDS, PriceError, field_path
from eslserver.server import Server
from tests.brokers import broker_url  # noqa: F401  (fixture: mosquitto and amqtt)
from tests.pipeline_shop import collect, shop_settings

POLISH = {"Product_ID": "sku", "Cena": "price", "CenaPromo": "promo.price", "Nazwa": "name", "Promocja": "promo"}


def _refused(item: dict[str, Any], field_map: dict[str, str] = POLISH) -> dict[str, Any]:
    with pytest.raises(PriceError) as info:
        read_update(item, field_map, index=0)
    body = info.value.to_json()
    assert json.loads(json.dumps(body)) == body
    return body


# --- the mapping back ---------------------------------------------------------------------------

@pytest.mark.parametrize(("item", "field", "canonical", "code"), [
    ({"Product_ID": "1", "Cena": "4,99x"}, "Cena", "price", "invalid_value"),        # sent, refused
    ({"Product_ID": "1"}, "Cena", "price", "missing_field"),                         # missing: the map's name
    ({"Product_ID": "1", "price": "-1"}, "price", "price", "invalid_value"),         # canonical names still work
    ({"Product_ID": "1", "Cena": "5", "CenaPromo": "x"}, "CenaPromo", "promo.price", "invalid_value"),
    ({"Product_ID": "1", "Cena": "5", "Promocja": {"from": "2026-01-01"}}, "Promocja.price", "promo.price",
     "missing_field"),                                                               # inside the POS's group
    ({"Product_ID": "1", "Cena": "5", "Nazwa": ["x"]}, "Nazwa", "name", "invalid_value"),
    ({"Product_ID": "1", "Cena": "5", "origin": float("nan")}, "origin", "attributes.origin",
     "invalid_value"),                                                               # a free attribute
])
def test_errors_name_the_pos_field_beside_the_canonical_one(item: dict[str, Any], field: str, canonical: str,
                                                             code: str) -> None:
    body = _refused(item)
    assert (body["field"], body["canonical"], body["error"]) == (field, canonical, code)
    assert body["sku"] == "1" and body["index"] == 0
    assert body["detail"].startswith(f"item 0, sku '1': {field}")
    assert field == canonical or f"{field} ({canonical})" in body["detail"]


def test_without_a_field_map_field_and_canonical_agree() -> None:
    body = _refused({"sku": "1", "price": "abc"}, {})
    assert (body["field"], body["canonical"], body["hint"]) == ("price", "price", None)
    assert body["detail"] == "item 0, sku '1': price='abc': expected a decimal number such as 12.99"


def test_mapping_errors_keep_naming_both_keys_the_pos_sent() -> None:
    body = _refused({"Product_ID": "1", "Cena": "5", "price": "6"})
    assert body["error"] == "field_collision" and body["value"] == ["Cena", "price"]
    assert "'Cena'" in body["detail"] and "'price'" in body["detail"]


@pytest.mark.parametrize(("item", "field_map", "hint"), [
    ({"Product_ID": "1", "Cenna": "4.99"}, POLISH, "'Cenna' is not a field: did you mean Cena?"),
    ({"Product_ID": "1", "cena": "4.99"}, POLISH, "'cena' is not a field: did you mean Cena?"),
    ({"sku": "1", "prcie": "4.99"}, {}, "'prcie' is not a field: did you mean price?"),
    ({"sku": "1", "Price": "4.99"}, {}, "'Price' is not a field: did you mean price?"),
    ({"Product_ID": "1", "Cena": "5", "promo.prise": "4"}, POLISH,
     "'promo.prise' is not a field: did you mean promo.price?"),
    ({"Product_ID": "1", "Cena": "5", "Promocja": {"prise": "4"}}, POLISH,
     "'Promocja.prise' is not a field: did you mean Promocja.price?"),
    ({"sku": "1", "price": "5", "promo": {"price": "4", "form": "2026-01-01"}}, {}, "did you mean promo.from?"),
    ({"Product_ID": "1", "Cena": "x", "Nazwaa": "Mleko"}, POLISH, "'Nazwaa' is not a field: did you mean Nazwa?"),
])
def test_a_misspelt_name_is_hinted(item: dict[str, Any], field_map: dict[str, str], hint: str) -> None:
    body = _refused(item, field_map)
    assert body["hint"] == hint
    assert body["detail"].endswith(f"; {hint}")


def test_free_attributes_that_resemble_nothing_get_no_hint() -> None:
    body = _refused({"Product_ID": "1", "origin": "PL", "brand": "Łaciate", "Cena": ""})
    assert body["hint"] is None and body["field"] == "Cena" and body["error"] == "missing_field"


_NAMES = st.from_regex(r"[A-Z][a-z]{5,10}", fullmatch=True).filter(
    lambda n: n.lower() not in CANONICAL_FIELDS and SequenceMatcher(None, n.lower(), "price").ratio() < 0.5)


@given(pos=_NAMES, target=st.sampled_from(["price", "promo.price", "name", "regular_price", "unit.size"]),
       value=st.sampled_from(["x", "-1", "4,99,9"]))
def test_any_mapped_name_is_the_field_of_its_error(pos: str, target: str, value: str) -> None:
    field_map = {"Product_ID": "sku", pos: target}
    item: dict[str, Any] = {"Product_ID": "A", pos: value}
    if target != "price":
        item["price"] = "1.00"
    if target == "unit.size":
        item["unit.measure"] = "g"
    try:
        read_update(item, field_map)
    except PriceError as exc:
        assert (exc.field, exc.canonical) == (pos, target), exc
        assert str(exc).startswith(f"sku 'A': {pos} ({target})=")
    else:
        assert target == "name"  # any text is a name
    assert pos_name(field_path(pos, field_map), [pos], field_map) == pos


@given(pos=_NAMES.filter(lambda n: len(set(n.lower())) == len(n)), at=st.integers(min_value=1, max_value=3))
def test_a_swapped_pair_of_letters_in_a_mapped_name_is_hinted(pos: str, at: int) -> None:
    typo = pos[:at] + pos[at + 1] + pos[at] + pos[at + 2:]  # distinct letters: 5 of 6 or more still match
    body = _refused({"Product_ID": "A", typo: "4.99"}, {"Product_ID": "sku", pos: "price"})
    assert (body["field"], body["canonical"], body["error"]) == (pos, "price", "missing_field")
    assert body["hint"] == f"{typo!r} is not a field: did you mean {pos}?"


@given(name=st.text(min_size=1, max_size=12))
def test_suggest_only_offers_one_of_the_choices(name: str) -> None:
    choices = ["price", "Cena", "promo.price"]
    found = suggest(name, choices)
    assert found is None or found in choices
    if name.lower() in (c.lower() for c in choices):
        assert found is not None and found.lower() == name.lower()


# --- end to end -------------------------------------------------------------------------------

async def test_http_answers_in_the_pos_field_names(tmp_path: Path) -> None:
    settings = shop_settings(tmp_path / "data", None, field_map=POLISH)
    async with Server(settings, mqtt=False, render_processes=False) as server:
        token = await create_token(server.db, "pos", "till-1")
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
            url = f"http://127.0.0.1:{server.http_port}/api/v1/prices"
            async with http.post(url, json={"Product_ID": "100", "Cenna": "4.99"}) as resp:
                assert resp.status == 400
                body = await resp.json()
            async with http.post(url, json=[{"Product_ID": "101", "Cena": "4.99"},
                                            {"Product_ID": "102", "Cena": "4,99x"}]) as resp:
                assert resp.status == 200
                batch = await resp.json()
    assert (body["error"], body["field"]) == ("missing_field", "Cena")
    (err,) = body["errors"]
    assert (err["field"], err["canonical"], err["value"]) == ("Cena", "price", None)
    assert err["hint"] == "'Cenna' is not a field: did you mean Cena?"
    assert "did you mean Cena?" in body["detail"]
    assert [a["sku"] for a in batch["accepted"]] == ["101"]
    (err,) = batch["errors"]
    assert (err["index"], err["field"], err["canonical"], err["value"]) == (1, "Cena", "price", "4,99x")


async def test_mqtt_error_topic_names_the_pos_field(tmp_path: Path, broker_url: str) -> None:  # noqa: F811
    broker = broker_url
    settings = shop_settings(tmp_path / "data", broker, field_map=POLISH)
    async with Server(settings, http=False, render_processes=False) as server:
        sub, errors = await collect(broker, server.topics.pos_errors)
        pos = MqttConnection(MqttSettings.from_url(broker), client_id="till-1", clean_session=True)
        async with sub, pos:
            assert server.mqtt is not None
            for conn in (server.mqtt, sub, pos):  # subscribed once connected
                await asyncio.wait_for(conn.connected.wait(), 10)
            await pos.publish(server.topics.pos_prices, json.dumps(
                [{"Product_ID": "200", "Cena": "2.49"}, {"Product_ID": "201", "Cenaa": "1.99"}]).encode(), qos=1)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10
            while not errors and loop.time() < deadline:
                await asyncio.sleep(0.05)
    assert errors, "nothing on the error topic"
    body = json.loads(errors[0].payload)
    assert body["accepted"] == 1
    (err,) = body["errors"]
    assert (err["index"], err["sku"], err["field"], err["canonical"]) == (1, "201", "Cena", "price")
    assert err["hint"] == "'Cenaa' is not a field: did you mean Cena?"
