"""eslserver.pricing: POS messages → validated updates → stored records and price history,
and the Omnibus prior price read from that history."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from eslserver.pricing import (
    ERROR_CODES,
    PriceError,
    PricePeriod,
    PriceUpdate,
    apply_field_map,
    check_field_map,
    merge_record,
    next_change_after,
    parse_payload,
    periods_for_update,
    prior_price,
    product_for_render,
    record_from_json,
    record_to_json,
    selling_price_at,
    validate_update,
)
from firmware_proto.models import MODELS
from render.context import Product, Store, build_context

UTC = timezone.utc
POLISH_POS = {
    "Product_ID": "sku", "Cena": "price", "CenaPromo": "promo.price", "PromoOd": "promo.from",
    "PromoDo": "promo.to", "CenaRegularna": "regular_price", "Nazwa": "name",
    "Kraj": "attributes.origin",
}


def at(text: str) -> datetime:
    """A UTC instant written out: ``2026-11-10`` or ``2026-11-10T08:00``."""
    dt = datetime.fromisoformat(text)
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def D(text: str | int) -> Decimal:
    return Decimal(text)


# --- parse_payload ----------------------------------------------------------------------

def test_payload_object_array_and_empty_array() -> None:
    assert parse_payload(b'{"sku": "1", "price": 2}') == [{"sku": "1", "price": 2}]
    assert parse_payload('[{"sku": "1"}, 5, "x"]') == [{"sku": "1"}, 5, "x"]
    assert parse_payload(b"[]") == []
    assert parse_payload(b'\xef\xbb\xbf{"sku": "1"}') == [{"sku": "1"}]  # UTF-8 BOM tolerated


def test_payload_numbers_are_decimal_never_float() -> None:
    [item] = parse_payload(b'{"price": 0.1, "regular_price": 1e2, "seq": 7, "x": [2.50]}')
    assert isinstance(item, dict)
    assert item["price"] == D("0.1") and type(item["price"]) is Decimal
    assert str(item["regular_price"]) == "1E+2"
    assert item["seq"] == 7 and type(item["seq"]) is int
    assert str(item["x"][0]) == "2.50"


@pytest.mark.parametrize(("payload", "code", "value"), [
    (b'{"sku": "1", "price": }', "invalid_json", "line 1 column 23"),
    (b'[{"sku": "1"},\n {"sku" "2"}]', "invalid_json", "line 2 column 9"),
    (b"", "invalid_json", "line 1 column 1"),
    (b'{"price": NaN}', "invalid_json", "NaN"),
    (b'{"price": -Infinity}', "invalid_json", "-Infinity"),
    (b'{"sku": "1", \xe9}', "invalid_json", "line 1 column 14"),  # not UTF-8 outside a string (inside: one item)
    (b'"12.99"', "invalid_payload", "12.99"),
    (b"12.99", "invalid_payload", D("12.99")),
    (b"null", "invalid_payload", None),
    (b"[" * 100_000 + b"]" * 100_000, "invalid_json", "nesting"),
    (b'{"seq": ' + b"1" * 5000 + b"}", "invalid_json", "number"),
])
def test_payload_refused_as_a_whole(payload: bytes, code: str, value: object) -> None:
    with pytest.raises(PriceError) as info:
        parse_payload(payload)
    err = info.value
    assert (err.field, err.code, err.value) == ("json", code, value)
    json.dumps(err.to_json())


# --- validate_update: a table of good and bad messages ----------------------------------

GOOD: list[tuple[dict[str, Any], dict[str, Any], int | None, datetime | None]] = [
    ({"sku": "A1", "price": "12.99"}, {"price": D("12.99")}, None, None),
    ({"sku": 42, "price": 3}, {"price": D(3)}, None, None),
    ({"sku": " A1 ", "price": "12,99", "seq": "17"}, {"price": D("12.99")}, 17, None),
    ({"sku": "A1", "price": D("0.10"), "seq": 0, "valid_from": "2026-12-01"},
     {"price": D("0.10")}, 0, at("2026-12-01")),
    ({"sku": "A1", "price": 1, "valid_from": "2026-12-01T07:00:00+01:00"},
     {"price": D(1)}, None, at("2026-12-01T06:00")),
    ({"sku": "A1", "price": 1, "valid_from": "2026-12-01T06:00:00Z"}, {"price": D(1)}, None,
     at("2026-12-01T06:00")),
    ({"sku": "A1", "price": "9.99", "promo": {"price": "7.49", "from": "2026-11-01",
                                             "to": "2026-11-30"}},
     {"price": D("9.99"), "promo": {"price": D("7.49"), "from": at("2026-11-01"),
                                     "to": at("2026-11-30T23:59:59")}}, None, None),
    ({"sku": "A1", "price": 5, "promo": {"price": 4}},
     {"price": D(5), "promo": {"price": D(4), "from": None, "to": None}}, None, None),
    ({"sku": "A1", "price": 5, "promo": None}, {"price": D(5), "promo": None}, None, None),
    ({"sku": "A1", "price": 5, "currency": "eur", "name": "  Masło\n82% ",
      "unit": {"size": 200, "measure": "g"}, "vat_rate": 5, "regular_price": None},
     {"price": D(5), "currency": "EUR", "name": "Masło 82%",
      "unit": {"size": D(200), "measure": "g"}, "vat_rate": D(5), "regular_price": None},
     None, None),
    ({"sku": "A1", "price": 5, "origin": "PL", "attributes": {"barcode": "5901234123457",
                                                              "shelf": None}},
     {"price": D(5), "attributes": {"origin": "PL", "barcode": "5901234123457", "shelf": None}},
     None, None),
]


@pytest.mark.parametrize(("record", "fields", "seq", "valid_from"), GOOD)
def test_good_messages(record: dict[str, Any], fields: dict[str, Any], seq: int | None,
                       valid_from: datetime | None) -> None:
    update = validate_update(record)
    assert update.sku == "A1" or update.sku == "42"
    assert {k: _plain(v) for k, v in update.fields.items()} == fields
    assert (update.seq, update.valid_from) == (seq, valid_from)


def _plain(value: object) -> object:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


BAD: list[tuple[object, str, object, str]] = [
    ({}, "sku", None, "missing_field"),
    ({"sku": "", "price": 1}, "sku", "", "missing_field"),
    ({"sku": "A1"}, "price", None, "missing_field"),
    ({"sku": "A1", "price": ""}, "price", "", "missing_field"),
    ({"sku": "A1", "price": "abc"}, "price", "abc", "invalid_value"),
    ({"sku": "A1", "price": True}, "price", True, "invalid_value"),
    ({"sku": "A1", "price": "-1"}, "price", "-1", "invalid_value"),
    ({"sku": "A1", "price": "2000000"}, "price", "2000000", "invalid_value"),
    ({"sku": "A1", "price": D("1." + "0" * 40)}, "price", D("1." + "0" * 40), "invalid_value"),
    ({"sku": "A1", "price": 1, "seq": -1}, "seq", -1, "invalid_value"),
    ({"sku": "A1", "price": 1, "seq": "1.5"}, "seq", "1.5", "invalid_value"),
    ({"sku": "A1", "price": 1, "seq": D("3.0")}, "seq", D("3.0"), "invalid_value"),
    ({"sku": "A1", "price": 1, "seq": True}, "seq", True, "invalid_value"),
    ({"sku": "A1", "price": 1, "seq": "\u0663"}, "seq", "\u0663", "invalid_value"),
    ({"sku": "A1", "price": 1, "seq": 2**63}, "seq", 2**63, "invalid_value"),
    ({"sku": "A1", "price": 1, "valid_from": "2026-12-01T06:00"}, "valid_from",
     "2026-12-01T06:00", "invalid_value"),
    ({"sku": "A1", "price": 1, "valid_from": "20261201"}, "valid_from", "20261201",
     "invalid_value"),
    ({"sku": "A1", "price": 1, "valid_from": "tomorrow"}, "valid_from", "tomorrow",
     "invalid_value"),
    ({"sku": "A1", "price": 1, "valid_from": 1764568800}, "valid_from", 1764568800,
     "invalid_value"),
    ({"sku": "A1", "price": 1, "promo": {"from": "2026-12-01"}}, "promo.price", None,
     "missing_field"),
    ({"sku": "A1", "price": 1, "promo": {"price": 1, "from": "2026-12-01T10:00"}},
     "promo.from", "2026-12-01T10:00", "invalid_value"),
    ({"sku": "A1", "price": 1, "promo": {"price": 1, "from": "2026-12-05",
                                         "to": "2026-12-01"}}, "promo.to", "2026-12-01",
     "invalid_value"),
    ({"sku": "A1", "price": 1, "promo": "half price"}, "promo", "half price", "invalid_value"),
    ({"sku": "A1", "price": 1, "promo": {"price": 1, "until": "2026-12-01"}}, "promo.until",
     "2026-12-01", "invalid_value"),
    ({"sku": "A1", "price": 1, "unit": {"size": 1, "measure": "kg", "tare": 2}}, "unit.tare", 2,
     "invalid_value"),
    ({"sku": "A1", "price": 1, "currency": "PL"}, "currency", "PL", "invalid_value"),
    ({"sku": "A1", "price": 1, "ean": "5901234123450"}, "ean", "5901234123450",
     "invalid_value"),
    ({"sku": "A1", "price": 1, "unit": "500 bananas"}, "unit.measure", "bananas",
     "invalid_value"),
    ({"sku": "A1", "price": 1, "attributes": None, "origin": "PL"}, "attributes", None,
     "invalid_value"),
    ({"sku": "A1", "price": 1, "attributes": {"when": object()}}, "attributes.when", None,
     "invalid_value"),
    (5, "record", 5, "invalid_record"),
    (["sku", "A1"], "record", ["sku", "A1"], "invalid_record"),
]


@pytest.mark.parametrize(("record", "field", "value", "code"), BAD)
def test_bad_messages_name_field_and_value(record: object, field: str, value: object,
                                           code: str) -> None:
    with pytest.raises(PriceError) as info:
        validate_update(record, index=3)
    err = info.value
    assert err.field == field
    if field != "attributes.when":
        assert err.value == value
    assert err.code == code and err.index == 3
    if isinstance(record, dict) and record.get("sku") == "A1":
        assert err.sku == "A1"
    out = err.to_json()
    assert json.loads(json.dumps(out)) == out
    assert set(out) == {"index", "sku", "field", "canonical", "value", "error", "detail", "hint"}
    assert out["error"] in ERROR_CODES and field in out["detail"]


def test_a_batch_is_validated_item_by_item() -> None:
    body = json.dumps([
        {"sku": "A", "price": "1.00"},
        {"sku": "B", "price": "one"},
        "not an object",
        {"sku": "C", "price": "3.00", "seq": 4},
    ]).encode()
    good: list[PriceUpdate] = []
    errors: list[dict[str, Any]] = []
    for i, item in enumerate(parse_payload(body)):
        try:
            good.append(validate_update(item, index=i))
        except PriceError as exc:
            errors.append(exc.to_json())
    assert [(u.sku, u.fields["price"], u.seq) for u in good] == [("A", D("1.00"), None),
                                                                 ("C", D("3.00"), 4)]
    assert [(e["index"], e["sku"], e["field"], e["value"]) for e in errors] == [
        (1, "B", "price", "one"), (2, None, "record", "not an object")]


def test_a_repeated_key_refuses_its_item_only() -> None:
    items = parse_payload(b'[{"sku": "A", "price": 1, "price": 2}, {"sku": "B", "price": 1},'
                          b' {"sku": "C", "price": 1, "promo": {"price": 1, "price": 3}}]')
    assert items == [{"sku": "A", "price": 2}, {"sku": "B", "price": 1},
                     {"sku": "C", "price": 1, "promo": {"price": 3}}]  # still readable
    refused = []
    for i, item in enumerate(items):
        for step in (lambda r: apply_field_map(r, {}, index=i),
                     lambda r: validate_update(r, index=i)):
            try:
                step(item)
            except PriceError as exc:
                refused.append((exc.index, exc.sku, exc.field, exc.value))
    assert refused == [(0, "A", "price", 2), (0, "A", "price", 2),
                       (2, "C", "promo.price", 3), (2, "C", "promo.price", 3)]


def test_default_currency_is_the_messages_currency_when_it_has_none() -> None:
    assert validate_update({"sku": "A", "price": 1}, default_currency="pln").fields["currency"] == "PLN"
    assert validate_update({"sku": "A", "price": 1, "currency": "EUR"},
                           default_currency="PLN").fields["currency"] == "EUR"
    assert "currency" not in validate_update({"sku": "A", "price": 1}).fields
    with pytest.raises(ValueError, match="ISO 4217"):
        validate_update({"sku": "A", "price": 1}, default_currency="złoty")


def test_bare_dates_in_the_stores_time_zone() -> None:
    cet = timezone(timedelta(hours=1), "CET")
    update = validate_update({"sku": "A", "price": 1, "valid_from": "2026-12-01",
                              "promo": {"price": 1, "from": "2026-12-01", "to": "2026-12-07"}},
                             tz=cet)
    assert update.valid_from == at("2026-11-30T23:00")
    assert update.fields["promo"]["from"] == at("2026-11-30T23:00")
    assert update.fields["promo"]["to"] == at("2026-12-07T22:59:59")
    # explicit offsets are not touched by the zone
    timed = validate_update({"sku": "A", "price": 1, "valid_from": "2026-12-01T06:00:00Z"},
                            tz=cet)
    assert timed.valid_from == at("2026-12-01T06:00")
    stored = merge_record(None, update)
    assert stored["promo"] == {"price": "1", "from": "2026-11-30T23:00:00Z",
                               "to": "2026-12-07T22:59:59Z"}


def test_error_value_is_json_safe_and_bounded() -> None:
    err = PriceError("name", "x" * 1000, "too long", sku="A")
    assert len(err.to_json()["value"]) == 200
    err = PriceError("when", at("2026-11-01"), "bad")
    assert err.to_json()["value"] == "2026-11-01T00:00:00+00:00"
    err.index = 7  # set after the fact by a caller that validates without an index
    assert err.to_json()["index"] == 7 and str(err).startswith("item 7")
    with pytest.raises(ValueError, match="unknown error code"):
        PriceError("x", 1, "r", code="oops")


# --- field maps -------------------------------------------------------------------------

def test_polish_pos_field_map() -> None:
    [item] = parse_payload(
        '{"Product_ID": "5901234", "Cena": "12,99", "CenaPromo": "9,99", '
        '"PromoOd": "2026-11-01", "PromoDo": "2026-11-30", "Nazwa": "Ser żółty", '
        '"Kraj": "PL", "Dostawca": "Mlekpol", "seq": 3}')
    assert isinstance(item, dict)
    record = apply_field_map(item, POLISH_POS)
    assert record == {
        "sku": "5901234", "price": "12,99", "name": "Ser żółty", "seq": 3, "Dostawca": "Mlekpol",
        "promo": {"price": "9,99", "from": "2026-11-01", "to": "2026-11-30"},
        "attributes": {"origin": "PL"},
    }
    update = validate_update(record)
    assert update.fields["price"] == D("12.99")
    assert update.fields["promo"]["price"] == D("9.99")
    assert dict(update.fields["attributes"]) == {"origin": "PL", "Dostawca": "Mlekpol"}


def test_field_map_canonical_names_pass_through_and_dotted_keys_nest() -> None:
    record = apply_field_map({"Product_ID": "1", "price": 2, "promo.price": 1, "unit.size": 500,
                              "unit.measure": "g"}, {"Product_ID": "sku"})
    assert record == {"sku": "1", "price": 2, "promo": {"price": 1},
                      "unit": {"size": 500, "measure": "g"}}


def test_field_map_misspelt_flat_promo_key_is_refused_not_kept_as_attribute() -> None:
    record = apply_field_map({"sku": "1", "price": 5, "promo.price": 4, "promo.until": "x"}, {})
    with pytest.raises(PriceError) as info:
        validate_update(record)
    assert (info.value.field, info.value.value) == ("promo.until", "x")


def test_field_map_empty_flat_promo_clears_it() -> None:
    record = apply_field_map({"Product_ID": "1", "Cena": "5", "CenaPromo": "", "PromoOd": None},
                             POLISH_POS)
    assert record["promo"] is None
    assert validate_update(record).fields["promo"] is None


def test_field_map_object_and_flat_keys_combine() -> None:
    record = apply_field_map({"Product_ID": "1", "Cena": 5, "promo": {"from": "2026-11-01"},
                              "CenaPromo": 4}, POLISH_POS)
    assert record["promo"] == {"from": "2026-11-01", "price": 4}


@pytest.mark.parametrize(("record", "field", "names"), [
    ({"Product_ID": "1", "Cena": 5, "price": 6}, "price", ["Cena", "price"]),
    ({"Product_ID": "1", "Cena": 5, "CenaPromo": 4, "promo": {"price": 3}}, "promo.price",
     ["promo", "CenaPromo"]),
    ({"Product_ID": "1", "Cena": 5, "CenaPromo": 4, "promo": None}, "promo.price",
     ["promo", "CenaPromo"]),
    ({"Product_ID": "1", "Cena": 5, "CenaPromo": 4, "promo.price": 3}, "promo.price",
     ["CenaPromo", "promo.price"]),
    ({"Product_ID": "1", "sku": "2", "Cena": 5}, "sku", ["Product_ID", "sku"]),
])
def test_field_map_collision_names_both(record: dict[str, Any], field: str,
                                        names: list[str]) -> None:
    with pytest.raises(PriceError) as info:
        apply_field_map(record, POLISH_POS, index=2)
    err = info.value
    assert (err.field, err.code, err.index, err.sku) == (field, "field_collision", 2, "1")
    assert sorted(err.value) == sorted(names)  # type: ignore[call-overload]
    assert all(repr(n) in str(err) for n in names)


@pytest.mark.parametrize("target", ["promo.cost", "unit.weight", "stock.level", "attributes.",
                                    "", " price"])
def test_field_map_bad_targets(target: str) -> None:
    with pytest.raises(PriceError) as info:
        check_field_map({"X": target})
    assert info.value.code == "invalid_field_map"
    with pytest.raises(PriceError):
        apply_field_map({"X": 1}, {"X": target})
    check_field_map(POLISH_POS)
    apply_field_map({"Y": 1}, {"X": target})  # a target unused by a message is not read


def test_field_map_refuses_non_objects() -> None:
    with pytest.raises(PriceError) as info:
        apply_field_map([1, 2], POLISH_POS, index=0)  # type: ignore[arg-type]
    assert (info.value.field, info.value.code) == ("record", "invalid_record")


# --- merge semantics --------------------------------------------------------------------

def _merge(stored: dict[str, Any] | None, message: dict[str, Any]) -> dict[str, Any]:
    return merge_record(stored, validate_update(message))


def test_merge_fields_present_replace_absent_stay_none_clears() -> None:
    first = _merge(None, {"sku": "A", "price": "9.99", "name": "Mleko", "vat_rate": 5,
                          "unit": "1 l", "regular_price": "12.00",
                          "attributes": {"origin": "PL", "shelf": "3"}})
    assert first == {"sku": "A", "price": "9.99", "name": "Mleko", "vat_rate": "5",
                     "unit": {"size": "1", "measure": "l"}, "regular_price": "12.00",
                     "attributes": {"origin": "PL", "shelf": "3"}}
    second = _merge(first, {"sku": "A", "price": "8.49", "regular_price": None,
                            "attributes": {"shelf": None, "url2": "x"}})
    assert second == {"sku": "A", "price": "8.49", "name": "Mleko", "vat_rate": "5",
                      "unit": {"size": "1", "measure": "l"},
                      "attributes": {"origin": "PL", "url2": "x"}}
    assert first["price"] == "9.99"  # the stored record is not modified
    third = _merge(second, {"sku": "A", "price": "8.49", "attributes": None, "name": None})
    assert "attributes" not in third and "name" not in third


def test_merge_promo_set_replace_and_clear() -> None:
    rec = _merge(None, {"sku": "A", "price": 10, "promo": {"price": 8, "from": "2026-11-01"}})
    assert rec["promo"] == {"price": "8", "from": "2026-11-01T00:00:00Z"}
    rec = _merge(rec, {"sku": "A", "price": 10, "promo": {"price": "7.5",
                                                          "to": "2026-11-30T18:00:00+01:00"}})
    assert rec["promo"] == {"price": "7.5", "to": "2026-11-30T17:00:00Z"}
    rec = _merge(rec, {"sku": "A", "price": 10})
    assert rec["promo"] == {"price": "7.5", "to": "2026-11-30T17:00:00Z"}  # absent: unchanged
    rec = _merge(rec, {"sku": "A", "price": 10, "promo": None})
    assert "promo" not in rec


def test_merge_refuses_another_skus_record() -> None:
    with pytest.raises(ValueError, match="'B'"):
        _merge({"sku": "B", "price": "1"}, {"sku": "A", "price": 1})


def test_merge_keeps_pos_lowest_30d_only_for_its_reduction() -> None:
    rec = _merge(None, {"sku": "A", "price": 10, "promo": {"price": 8}, "lowest_30d": "9.50"})
    assert rec["lowest_30d"] == "9.50"
    assert _merge(rec, {"sku": "A", "price": 10, "name": "x"})["lowest_30d"] == "9.50"
    assert "lowest_30d" not in _merge(rec, {"sku": "A", "price": 10, "promo": {"price": 7}})
    assert "lowest_30d" not in _merge(rec, {"sku": "A", "price": 11})


def test_stored_record_renders_as_it_is() -> None:
    rec = _merge(None, {"sku": "A", "price": "12.99", "promo": {"price": "9.99"},
                        "unit": "500 g", "attributes": {"weight": 1.5}})
    text = record_to_json(rec)
    assert json.loads(text)["attributes"] == {"weight": "1.5"}
    product = Product.from_record(record_from_json(text))
    assert product.price == D("12.99") and product.promo is not None
    assert product.promo.price == D("9.99")


def test_record_json_round_trip_and_refusals() -> None:
    rec = {"sku": "A", "price": D("1.10"), "promo": {"price": D("0.90"),
                                                     "from": at("2026-11-01T10:00:00.5")}}
    back = record_from_json(record_to_json(rec))
    assert back == {"sku": "A", "price": "1.10",
                    "promo": {"price": "0.90", "from": "2026-11-01T10:00:00.500000Z"}}
    assert record_to_json(back) == record_to_json(rec)
    for bad in ("[1]", "{", '{"price": NaN}'):
        with pytest.raises(PriceError):
            record_from_json(bad)


decimal_texts = st.decimals(min_value=0, max_value=1_000_000, allow_nan=False,
                            allow_infinity=False).map(str).filter(lambda s: len(s) <= 32)


@settings(max_examples=300, deadline=None)
@given(decimal_texts, st.booleans(), st.booleans())
def test_decimal_round_trips_exactly(text: str, as_number: bool, in_promo: bool) -> None:
    value = text if not as_number else json.loads(f'"{text}"')  # the JSON text below differs
    literal = text if as_number else json.dumps(value)
    body = (f'{{"sku": "A", "price": 1, "promo": {{"price": {literal}}}}}' if in_promo
            else f'{{"sku": "A", "price": {literal}}}')
    [item] = parse_payload(body.encode())
    stored = merge_record(None, validate_update(item))
    back = record_from_json(record_to_json(stored))
    got = back["promo"]["price"] if in_promo else back["price"]
    assert isinstance(got, str)
    assert Decimal(got) == Decimal(text)
    assert Decimal(got).as_tuple() == Decimal(text).as_tuple()  # same digits and exponent


# --- price history and the Omnibus prior price ------------------------------------------

class Shelf:
    """A product fed messages at given times, as the ingest path does."""

    def __init__(self) -> None:
        self.record: dict[str, Any] | None = None
        self.history: list[PricePeriod] = []

    def send(self, when: str, **message: Any) -> Shelf:
        update = validate_update({"sku": "A", **message})
        self.history += periods_for_update(self.record, update, at(when))
        self.record = merge_record(self.record, update)
        return self

    def prior(self, start: str) -> Decimal | None:
        return prior_price(self.history, at(start))

    def shows(self, now: str) -> dict[str, Any]:
        assert self.record is not None
        rec = product_for_render(self.record, self.history, at(now))
        return build_context(Product.from_record(rec), MODELS["2.9-bwry"], Store(), at(now))


def test_periods_for_update_rows() -> None:
    upd = validate_update({"sku": "A", "price": 10, "promo": {"price": 8, "from": "2026-11-01",
                                                              "to": "2026-11-07"}})
    rows = periods_for_update(None, upd, at("2026-10-20"))
    assert rows == [PricePeriod(D(10), at("2026-10-20"), None, False),
                    PricePeriod(D(8), at("2026-11-01"), at("2026-11-07T23:59:59"), True)]
    stored = merge_record(None, upd)
    assert periods_for_update(stored, upd, at("2026-10-21")) == []  # nothing changed
    # a promotion already running when the message arrives starts on the shelf then
    rows = periods_for_update(None, upd, at("2026-11-03T12:00"))
    assert rows[1].start == at("2026-11-03T12:00")
    # one that is over is no row at all
    assert len(periods_for_update(None, upd, at("2026-11-08"))) == 1
    # regular_price > price: the base price itself is a reduction
    marked = validate_update({"sku": "A", "price": 8, "regular_price": 10})
    assert periods_for_update(stored, marked, at("2026-12-01")) == [
        PricePeriod(D(8), at("2026-12-01"), None, True)]
    with pytest.raises(ValueError, match="timezone-aware"):
        periods_for_update(None, upd, datetime(2026, 11, 1))
    scheduled = validate_update({"sku": "A", "price": 9, "valid_from": "2026-12-01"})
    with pytest.raises(ValueError, match="valid_from"):
        periods_for_update(stored, scheduled, at("2026-11-30T23:00"))
    assert periods_for_update(stored, scheduled, at("2026-12-01T00:00:02"))[0].price == D(9)


def test_selling_price_later_rows_override_where_they_cover() -> None:
    shelf = (Shelf().send("2026-10-01", price="10.00")
             .send("2026-10-05", price="10.00", promo={"price": "8.00", "from": "2026-10-10",
                                                       "to": "2026-10-20"})
             .send("2026-10-15", price="11.00"))  # the promotion continues over a new base
    h = shelf.history
    assert selling_price_at(h, at("2026-09-30")) is None
    assert selling_price_at(h, at("2026-10-09T23:59")) == D("10.00")
    assert selling_price_at(h, at("2026-10-16")) == D("8.00")
    assert selling_price_at(h, at("2026-10-20T23:59:59")) == D("8.00")
    assert selling_price_at(h, at("2026-10-21")) == D("11.00")
    shelf.send("2026-10-17", price="11.00", promo=None)  # promotion cancelled
    assert selling_price_at(shelf.history, at("2026-10-17T00:00:01")) == D("11.00")
    assert selling_price_at(shelf.history, at("2026-10-16")) == D("8.00")


def test_omnibus_lowest_of_the_30_days_before() -> None:
    shelf = (Shelf().send("2026-09-01", price="12.00")
             .send("2026-09-15", price="8.00")
             .send("2026-10-05", price="11.00")
             .send("2026-10-20", price="13.00")
             .send("2026-11-01", price="13.00", promo={"price": "9.99", "from": "2026-11-10"}))
    # 30 days before 10 November: from 11 October, when 11.00 was in force (8.00 was earlier)
    assert shelf.prior("2026-11-10") == D("11.00")
    # 30 days before 3 November reach back to 4 October, still 8.00
    assert shelf.prior("2026-11-03") == D("8.00")
    ctx = shelf.shows("2026-11-12")
    assert ctx["price"] == D("9.99") and ctx["lowest_30d"] == D("11.00")
    assert ctx["promo"]["percent"] == 9  # 1 - 9.99 / 11.00 = 9.2 %
    assert shelf.shows("2026-11-09")["promo"] is None


def test_omnibus_on_sale_less_than_30_days() -> None:
    shelf = (Shelf().send("2026-11-01", price="15.00")
             .send("2026-11-05", price="14.00")
             .send("2026-11-08", price="14.00", promo={"price": "11.99", "from": "2026-11-12"}))
    assert shelf.prior("2026-11-12") == D("14.00")  # lowest since it went on sale
    assert shelf.shows("2026-11-13")["lowest_30d"] == D("14.00")
    # a product first seen already reduced has no prior price: the template falls back
    fresh = Shelf().send("2026-11-01", price="10", promo={"price": "8"})
    assert fresh.prior("2026-11-01") is None
    ctx = fresh.shows("2026-11-02")
    assert ctx["lowest_30d"] is None and ctx["promo"]["percent"] == 20


def test_omnibus_progressive_reduction_uses_the_first_steps_prior() -> None:
    shelf = (Shelf().send("2026-09-01", price="20.00")
             .send("2026-10-25", price="20.00", promo={"price": "17.99", "from": "2026-11-01",
                                                       "to": "2026-11-07"})
             .send("2026-11-08", price="20.00",  # applied when due (valid_from)
                   promo={"price": "15.99", "from": "2026-11-08", "to": "2026-11-14"}))
    # the second step follows the first without a break (23:59:59 → 00:00:00)
    assert shelf.prior("2026-11-08") == D("20.00")
    ctx = shelf.shows("2026-11-10")
    assert ctx["price"] == D("15.99") and ctx["lowest_30d"] == D("20.00")
    assert ctx["promo"]["percent"] == 20
    # a step sent mid-promotion that starts at once deepens it without a break as well
    mid = (Shelf().send("2026-09-01", price="20.00")
           .send("2026-11-01", price="20.00", promo={"price": "17.99", "to": "2026-11-07"})
           .send("2026-11-04T15:30", price="20.00", promo={"price": "14.99"}))
    assert mid.prior("2026-11-04T15:30") == D("20.00")
    assert mid.shows("2026-11-05")["lowest_30d"] == D("20.00")


def test_a_promotion_replaced_early_ends_when_the_message_arrives() -> None:
    # one promotion per record: the next step sent half a day before it starts ends the
    # current one at once, the shelf shows 20.00 in between, and that break counts
    shelf = (Shelf().send("2026-09-01", price="20.00")
             .send("2026-10-25", price="20.00", promo={"price": "17.99", "from": "2026-11-01",
                                                       "to": "2026-11-07"})
             .send("2026-11-07T12:00", price="20.00",
                   promo={"price": "15.99", "from": "2026-11-08", "to": "2026-11-14"}))
    assert selling_price_at(shelf.history, at("2026-11-07T18:00")) == D("20.00")
    assert shelf.prior("2026-11-08") == D("17.99")
    # marked reductions (regular_price > price) deepening count the same way
    marked = (Shelf().send("2026-09-01", price="10.00")
              .send("2026-10-01", price="9.00", regular_price="10.00")
              .send("2026-10-20", price="7.00", regular_price="10.00"))
    assert marked.prior("2026-10-20") == D("10.00")
    assert marked.shows("2026-10-25")["lowest_30d"] == D("10.00")


def test_omnibus_promo_ends_and_a_new_one_starts_later() -> None:
    shelf = (Shelf().send("2026-09-01", price="20.00")
             .send("2026-09-20", price="20.00", promo={"price": "15.00", "from": "2026-10-01",
                                                       "to": "2026-10-07"})
             .send("2026-10-15", price="20.00", promo={"price": "16.00", "from": "2026-10-20",
                                                       "to": "2026-10-31"}))
    # a break of 12 days at 20.00: not progressive, and the earlier promotion price counts
    assert shelf.prior("2026-10-20") == D("15.00")
    assert shelf.shows("2026-10-21")["lowest_30d"] == D("15.00")
    # a later promotion whose 30 days no longer reach the first one
    shelf.send("2026-11-01", price="20.00", promo={"price": "16.00", "from": "2026-11-30"})
    assert shelf.prior("2026-11-30") == D("16.00")  # the second promotion, ended 31 Oct
    assert shelf.prior("2026-12-02") == D("16.00")  # progressive walk from inside
    shelf2 = (Shelf().send("2026-09-01", price="20.00")
              .send("2026-09-20", price="20.00", promo={"price": "15.00", "from": "2026-10-01",
                                                        "to": "2026-10-07"})
              .send("2026-10-10", price="20.00", promo={"price": "16.00",
                                                        "from": "2026-11-10"}))
    assert shelf2.prior("2026-11-10") == D("20.00")  # 11 Oct – 9 Nov: only 20.00


def test_omnibus_price_increase_inside_the_window() -> None:
    shelf = (Shelf().send("2026-10-01", price="10.00")
             .send("2026-10-25", price="14.00")
             .send("2026-11-01", price="14.00", promo={"price": "12.00", "from": "2026-11-05"}))
    assert shelf.prior("2026-11-05") == D("10.00")  # not the 14.00 just before
    ctx = shelf.shows("2026-11-06")
    assert ctx["lowest_30d"] == D("10.00") and ctx["regular"] == D("14.00")


def test_pos_lowest_30d_wins_over_the_computed_one() -> None:
    shelf = (Shelf().send("2026-11-01", price="10.00")
             .send("2026-11-05", price="10.00", promo={"price": "8.00"}, lowest_30d="9.00"))
    assert shelf.shows("2026-11-06")["lowest_30d"] == D("9.00")
    shelf.send("2026-11-06", price="10.00", promo={"price": "7.00"})
    assert shelf.shows("2026-11-07")["lowest_30d"] == D("10.00")  # computed again


def test_product_for_render_without_reduction_drops_lowest() -> None:
    rec = {"sku": "A", "price": "5", "lowest_30d": "4"}
    assert "lowest_30d" not in product_for_render(rec, [], at("2026-11-01"))
    with pytest.raises(ValueError, match="timezone-aware"):
        product_for_render(rec, [], datetime(2026, 11, 1))


def test_prior_price_arguments() -> None:
    rows = [PricePeriod(D(5), at("2026-10-01"), None, False)]
    assert prior_price(rows, at("2026-10-10"), days=7) == D(5)
    assert prior_price(rows, at("2026-10-01")) is None
    with pytest.raises(ValueError):
        prior_price(rows, at("2026-10-10"), days=0)
    with pytest.raises(ValueError, match="ends"):
        PricePeriod(D(5), at("2026-10-02"), at("2026-10-01"), False)
    with pytest.raises(ValueError, match="non-negative"):
        PricePeriod(D(-1), at("2026-10-01"), None, False)


def test_next_change_after() -> None:
    rec = _merge(None, {"sku": "A", "price": 10, "promo": {"price": 8, "from": "2026-11-01",
                                                           "to": "2026-11-07"}})
    end = at("2026-11-07T23:59:59") + timedelta(microseconds=1)
    assert next_change_after(rec, at("2026-10-20")) == at("2026-11-01")
    assert next_change_after(rec, at("2026-11-01")) == end
    assert next_change_after(rec, at("2026-11-07T23:59:59")) == end
    assert next_change_after(rec, end) is None
    assert next_change_after({"sku": "A", "price": "1"}, at("2026-11-01")) is None
    open_ended = _merge(None, {"sku": "A", "price": 10, "promo": {"price": 8}})
    assert next_change_after(open_ended, at("2026-11-01")) is None
    # what next_change_after announces is when the rendered content changes
    shelf = Shelf()
    shelf.record, shelf.history = rec, periods_for_update(None, validate_update(
        {"sku": "A", "price": 10, "promo": {"price": 8, "from": "2026-11-01",
                                           "to": "2026-11-07"}}), at("2026-10-01"))
    before = shelf.shows("2026-11-07T23:59:59")["price"]
    assert before == D(8)
    ctx = build_context(Product.from_record(product_for_render(rec, shelf.history, end)),
                        MODELS["2.9-bwry"], Store(), end)
    assert ctx["price"] == D(10)


@settings(max_examples=100, deadline=None)
@given(st.decimals(min_value=0, max_value=10**6, allow_nan=False, allow_infinity=False),
       st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1),
                    timezones=st.just(UTC)),
       st.none() | st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=3650)),
       st.booleans())
def test_period_rows_round_trip(price: Decimal, start: datetime, span: timedelta | None,
                                reduction: bool) -> None:
    end = None if span is None else start + span
    row = PricePeriod(price, start, end, reduction)
    back = PricePeriod.from_row(*row.to_row())
    assert back == row and str(back.price) == str(price)


# --- properties -------------------------------------------------------------------------

T0 = at("2026-01-01")
prices = st.sampled_from([D(p) for p in ("1.00", "2.50", "3.99", "4.00", "7.25", "9.99")])


@st.composite
def histories(draw: st.DrawFn) -> list[PricePeriod]:
    """Rows as the ingest path writes them: appended in time order, hour-aligned."""
    rows: list[PricePeriod] = []
    t = T0
    for _ in range(draw(st.integers(1, 12))):
        t += timedelta(hours=draw(st.integers(1, 24 * 20)))
        if draw(st.booleans()):
            rows.append(PricePeriod(draw(prices), t, None, draw(st.booleans())))
        else:
            start = t + timedelta(hours=draw(st.integers(0, 24 * 10)))
            end = start + timedelta(hours=draw(st.integers(1, 24 * 15))) - timedelta(seconds=1)
            rows.append(PricePeriod(draw(prices), start,
                                    end if draw(st.booleans()) else None, True))
    return rows


hours = st.integers(1, 24 * 200).map(lambda h: T0 + timedelta(hours=h))


@settings(max_examples=300, deadline=None)
@given(histories(), hours)
def test_prior_is_at_least_the_lowest_earlier_price(rows: list[PricePeriod],
                                                    start: datetime) -> None:
    prior = prior_price(rows, start)
    earlier = [r.price for r in rows if r.start < start]
    if prior is None:
        return
    assert earlier and prior >= min(earlier)
    assert prior in earlier


@settings(max_examples=200, deadline=None)
@given(prices, st.integers(1, 24 * 90), st.integers(1, 24 * 60), st.integers(1, 5),
       st.sampled_from([7, 30]))
def test_prior_of_a_flat_history_is_the_price_just_before(
        price: Decimal, lead_h: int, run_h: int, repeats: int, days: int) -> None:
    start = T0 + timedelta(hours=lead_h)
    # the same base price re-sent several times, then a reduction
    rows = [PricePeriod(price, T0 + timedelta(hours=lead_h * i / repeats), None, False)
            for i in range(repeats)]
    rows.append(PricePeriod(price / 2, start, start + timedelta(hours=run_h), True))
    assert prior_price(rows, start, days=days) == price
    assert prior_price(rows, start, days=days) == selling_price_at(rows, start - timedelta(seconds=1))
    assert prior_price(rows, start + timedelta(hours=run_h) / 2, days=days) == price


@settings(max_examples=300, deadline=None)
@given(histories(), histories(), hours)
def test_prior_never_looks_after_the_start(rows: list[PricePeriod], later: list[PricePeriod],
                                           start: datetime) -> None:
    after = [PricePeriod(r.price, start + (r.start - T0), None if r.end is None
                         else start + (r.end - T0), r.reduction) for r in later]
    assert prior_price(rows + after, start) == prior_price(rows, start)
    # and rows covering the start change nothing before it: cut them there
    cut = [r for r in rows if r.start < start]
    assert prior_price(cut, start) == prior_price(rows, start)


def _brute_state(rows: Sequence[PricePeriod], t: datetime) -> PricePeriod | None:
    found = None
    for r in rows:
        if r.start <= t and (r.end is None or t <= r.end):
            found = r
    return found


@settings(max_examples=300, deadline=None)
@given(histories(), hours)
def test_prior_matches_an_hourly_scan(rows: list[PricePeriod], start: datetime) -> None:
    """Checked against the definition, hour by hour (all rows here are hour-aligned, so
    the state in the middle of each hour is the state of the whole hour)."""
    half = timedelta(minutes=30)
    s = start
    while (st_ := _brute_state(rows, s - half)) is not None and st_.reduction:
        s -= timedelta(hours=1)
    samples = [_brute_state(rows, s - timedelta(hours=k) + half) for k in range(1, 30 * 24 + 1)]
    seen = [x.price for x in samples if x is not None]
    expected = min(seen) if seen else None
    assume(_brute_state(rows, s - timedelta(days=30)) is _brute_state(rows, s - timedelta(days=30) + half))
    assert prior_price(rows, start) == expected


@st.composite
def message_streams(draw: st.DrawFn) -> list[tuple[int, dict[str, Any]]]:
    """(hour, message) pairs at increasing hours, as a POS sends them."""
    out: list[tuple[int, dict[str, Any]]] = []
    hour = 0
    for _ in range(draw(st.integers(1, 8))):
        hour += draw(st.integers(1, 24 * 10))
        msg: dict[str, Any] = {"price": str(draw(prices))}
        if draw(st.booleans()):
            msg["regular_price"] = draw(st.none() | prices.map(str))
        choice = draw(st.sampled_from(["absent", "clear", "set"]))
        if choice == "clear":
            msg["promo"] = None
        elif choice == "set":
            promo: dict[str, Any] = {"price": str(draw(prices))}
            if draw(st.booleans()):
                promo["from"] = _iso_h(hour + draw(st.integers(-48, 24 * 10)))
            if draw(st.booleans()):
                promo["to"] = _iso_h(hour + draw(st.integers(-24, 24 * 20)))
            if "from" in promo and "to" in promo and promo["to"] < promo["from"]:
                promo["from"], promo["to"] = promo["to"], promo["from"]
            msg["promo"] = promo
        out.append((hour, msg))
    return out


def _iso_h(hour: int) -> str:
    return (T0 + timedelta(hours=hour)).isoformat()


@settings(max_examples=150, deadline=None)
@given(message_streams())
def test_history_agrees_with_what_the_label_shows(stream: list[tuple[int, dict[str, Any]]]) -> None:
    """After each message, until the next, the price history says the price the rendered
    record shows, at every instant where something could change."""
    shelf = Shelf()
    model = MODELS["2.9-bwry"]
    for k, (hour, msg) in enumerate(stream):
        shelf.send(_iso_h(hour), **msg)
        assert shelf.record is not None
        start = T0 + timedelta(hours=hour)
        stop = (T0 + timedelta(hours=stream[k + 1][0]) if k + 1 < len(stream)
                else start + timedelta(days=40))
        probes = {start, stop - timedelta(microseconds=1)}
        t = start
        while t < stop and len(probes) < 400:
            probes.add(t)
            t = next_change_after(shelf.record, t) or stop
            probes.add(t - timedelta(microseconds=1))
        for t in sorted(p for p in probes if start <= p < stop):
            rec = product_for_render(shelf.record, shelf.history, t)
            ctx = build_context(Product.from_record(rec), model, Store(), t)
            assert selling_price_at(shelf.history, t) == ctx["price"], t
            if ctx["promo"] is not None and ctx["lowest_30d"] is not None:
                assert ctx["lowest_30d"] == prior_price(shelf.history, t)
