"""Templates (sandbox, autoescape, errors with lines, filters) and the template context."""

from __future__ import annotations

from datetime import date, datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jinja2.runtime import Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment

from firmware_proto.models import MODELS, get_model
from render.context import (
    _PLAIN_CHARS, Product, ProductError, Store, _clean_text, _clean_text_full, _ean13_check,
    build_context, load_products, parse_when, products_from_csv, unit_price, Unit,
)
from render.layout import Price, Text, ean13_check_digit
from render.markup import _parse_expat, _parse_lines
from render.samples import sample_catalogue
from render.templates import (
    TemplateError, _environment, _number, load_template, shipped_template_names,
    shipped_templates, template_from_string,
)

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)
HEADER = "{#- esl-template\nmodel: 2.9-bwry\ndescription: test\n-#}\n"


def _ctx(record: dict[str, Any] | None = None, model: str = "2.9-bwry") -> dict[str, Any]:
    rec = {"sku": "1", "name": "Masło", "price": "7.49"} if record is None else record
    return build_context(Product.from_record(rec), get_model(model), Store("Sklep", "PLN"), NOW)


def _tmpl(body: str, name: str = "t") -> Any:
    return template_from_string(HEADER + body, name)


# --- metadata ---------------------------------------------------------------------------------

def test_shipped_templates_declare_models_and_descriptions() -> None:
    names = shipped_template_names()
    assert {"shelf-2.9", "promo-4.2", "talker-7.5", "shelf-1.54-bw"} <= set(names)
    for t in shipped_templates():
        assert t.info.models and all(m in MODELS for m in t.info.models)
        assert t.info.description
        assert t.info.origin == "package"
    assert load_template("shelf-2.9").info.model == "2.9-bwry"
    assert load_template("shelf-2.9.j2") is load_template("shelf-2.9")


@pytest.mark.parametrize(("source", "words"), [
    ("<label/>", "starts with a {#- esl-template"),
    ("{#- esl-template\ndescription: x\n-#}", "missing 'model:'"),
    ("{#- esl-template\nmodel: 9.9-rgb\n-#}", "unknown label model '9.9-rgb'"),
    ("{#- esl-template\nmodel 2.9-bwry\n-#}", "expected 'key: value'"),
])
def test_bad_metadata(source: str, words: str) -> None:
    with pytest.raises(TemplateError) as info:
        template_from_string(source, "meta")
    assert info.value.kind == "metadata" and words in str(info.value)


def test_load_template_from_a_path_and_unknown_name(tmp_path: Path) -> None:
    p = tmp_path / "mine.j2"
    p.write_text(HEADER + '<label model="{{ label.model }}"/>', encoding="utf-8")
    t = load_template(p)
    assert t.name == "mine" and t.info.origin == str(p)
    assert t.render_label(_ctx()).model == "2.9-bwry"
    with pytest.raises(TemplateError, match="not a shipped template"):
        load_template("no-such-template")


# --- rendering, autoescape ------------------------------------------------------------------

def test_autoescape_keeps_hostile_names_as_text() -> None:
    t = _tmpl('<label model="{{ label.model }}"><text x="0" y="0" w="9" h="9" '
              'colour="{{ product.name }}x">{{ product.name }}</text></label>')
    name = 'M&M\'s <mini> "x" </text><rect x="0" y="0" w="1" h="1"/>'
    with pytest.raises(TemplateError):  # the name lands in an attribute: refused, not injected
        t.render_label(_ctx({"sku": "1", "name": name, "price": "1"}))
    t2 = _tmpl('<label model="{{ label.model }}"><text x="0" y="0" w="9" h="9">{{ product.name }}</text></label>')
    label = t2.render_label(_ctx({"sku": "1", "name": name, "price": "1"}))
    assert label.elements == (Text(label.elements[0].box, name),)  # type: ignore[union-attr]


def test_filters_money_number_date_percent_and_ean_test() -> None:
    t = _tmpl(
        '{{ 1234.5|money }}|{{ price|money("EUR") }}|{{ "7,5"|number(1) }}|{{ price|units }}|'
        '{{ price|cents }}|{{ now|date }}|{{ now|date("%Y-%m") }}|{{ 25|percent }}|'
        '{{ "5901234123457" is ean13 }}|{{ "5901234123456" is ean13 }}|{{ none|date }}|'
        '{{ 1234567.891|money(none) }}'
    )
    out = t.render_markup({**_ctx(), "price": Decimal("7.05")})
    assert out == ("1\u00a0234,50\u00a0zł|7,05\u00a0€|7,5|7|05|23.11.2026|2026-11|25%|"
                   "True|False||1\u00a0234\u00a0567,89")


def test_money_rounds_half_up_with_decimal() -> None:
    t = _tmpl("{{ a|money }} {{ b|money }}")
    assert t.render_markup({"a": Decimal("0.005"), "b": Decimal("2.675")}) == "0,01\u00a0zł 2,68\u00a0zł"


def test_shipped_templates_render_every_sample_product_on_every_model() -> None:
    records = sample_catalogue(NOW)
    extra = [
        {"sku": "bare", "price": "1"},  # no name, ean, url, unit, promo
        {"sku": "long", "name": "Ż" * 300, "price": "99999.99", "url": "https://x.example/" + "a" * 200},
        {"sku": "emoji", "name": "Jabłka 🍎🍏 słodkie 👍🏽", "price": "3.99", "unit": "2 kg"},
        {"sku": "free", "name": "Gratis", "price": "0", "promo": {"price": "0"}, "regular_price": "5"},
    ]
    for t in shipped_templates():
        for model in t.info.models:
            for rec in records + extra:
                label = t.render_label(_ctx(rec, model))
                assert label.model == model


def test_promo_template_shows_regular_struck_promo_price_and_omnibus_text() -> None:
    t = load_template("promo-4.2")
    rec = {"sku": "7", "name": "Ser", "price": "5.99", "lowest_30d": "5.79",
           "promo": {"price": "4.49", "from": "2026-11-16", "to": "2026-11-29"},
           "unit": {"size": 150, "measure": "g"}, "url": "https://sklep.example/p/7"}
    label = t.render_label(_ctx(rec, "4.2-bwry"))
    prices = [e for e in label.elements if isinstance(e, Price)]
    assert [(p.amount, p.strike) for p in prices] == [(Decimal("5.99"), True), (Decimal("4.49"), False)]
    texts = " | ".join(e.content for e in label.elements if isinstance(e, Text))
    assert "Najniższa cena z 30 dni przed obniżką: 5,79\u00a0zł" in texts
    assert "29.11.2026" in texts
    assert "-22%" in texts  # from the lowest 30-day price, not the regular one
    assert "Cena za 1\u00a0kg: 29,93\u00a0zł" in texts
    english = build_context(Product.from_record(rec), get_model("4.2-bwry"), Store("Shop", "EUR"), NOW)
    texts_en = " | ".join(e.content for e in t.render_label(english).elements if isinstance(e, Text))
    assert "Lowest price in the 30 days before the reduction: 5,79\u00a0€" in texts_en


# --- errors with line numbers ---------------------------------------------------------------

def test_syntax_error_names_template_and_line() -> None:
    with pytest.raises(TemplateError) as info:
        _tmpl('<label model="x">\n\n{% if %}\n</label>', "broken")
    err = info.value
    assert (err.template, err.line, err.kind) == ("broken", 7, "syntax")
    assert str(err).startswith("broken:7: syntax error:")


def test_undefined_variable_is_an_error_with_its_line() -> None:
    t = _tmpl('<label model="{{ label.model }}">\n<text x="0" y="0" w="9" h="9">{{ prodcut.name }}</text>\n</label>')
    with pytest.raises(TemplateError) as info:
        t.render_label(_ctx())
    assert (info.value.line, info.value.kind) == (6, "undefined")
    assert "prodcut" in str(info.value)


def test_runtime_error_has_its_line() -> None:
    t = _tmpl("<label model=\"{{ label.model }}\">\n\n\n{{ price / 0 }}</label>")
    with pytest.raises(TemplateError) as info:
        t.render_label(_ctx())
    assert (info.value.line, info.value.kind) == (8, "runtime")


def test_markup_error_is_mapped_back_to_the_template_line() -> None:
    t = _tmpl(
        '<label model="{{ label.model }}">\n'
        '{% for i in range(3) %}\n'
        '  <text x="{{ i }}" y="0" w="9" h="9">ok</text>\n'
        '{% endfor %}\n'
        '  <price x="0" y="0"\n'
        '         w="9" h="9" size="{{ 2 }}">{{ price }}</price>\n'
        '</label>'
    )
    with pytest.raises(TemplateError) as info:
        t.render_label(_ctx())
    assert (info.value.line, info.value.kind) == (9, "markup")  # where <price starts
    assert "<price> attribute size='2'" in str(info.value)


def test_model_mismatch_is_reported() -> None:
    t = _tmpl('<label model="4.2-bwry"/>')
    with pytest.raises(TemplateError) as info:
        t.render_label(_ctx())
    assert info.value.kind == "model"


# --- sandbox --------------------------------------------------------------------------------

ESCAPES = [
    "{{ ''.__class__.__mro__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os }}",
    "{{ joiner.__init__.__globals__ }}",
    "{{ namespace.__init__.__globals__ }}",
    "{{ self._TemplateReference__context }}",
    "{{ self.__dict__ }}",
    "{{ lipsum.__globals__['os'] }}",
    "{{ product['__class__'] }}",
    "{{ ''|attr('__class__') }}",
    "{{ '{0.__class__}'.format('') }}",
    "{{ '{0.__init__.__globals__}'.format(cycler) }}",
    "{{ '{x.__class__}'.format_map({'x': ''}) }}",
    "{% set x = product.attributes.update({'a': 1}) %}{{ x }}",
    "{{ (1).real.__class__ }}",
    "{% include '/etc/passwd' %}",
    "{% import 'x' as y %}",
]


@pytest.mark.parametrize("escape", ESCAPES)
def test_sandbox_escapes_are_refused(escape: str) -> None:
    with pytest.raises(TemplateError) as info:
        t = _tmpl(escape)
        t.render_markup(_ctx())
    assert info.value.kind == "security"
    assert info.value.line == 5


@pytest.mark.parametrize("source", ["{{ 'x' * 10**9 }}", "{{ [0] * 200000 }}", "{{ 10 ** 100000 }}"])
def test_resource_exhaustion_is_refused(source: str) -> None:
    with pytest.raises(TemplateError) as info:
        _tmpl(source).render_markup(_ctx())
    assert info.value.kind == "security" and info.value.line == 5
    assert _tmpl("{{ 'ab' * 3 }}{{ 2 ** 10 }}").render_markup(_ctx()) == "ababab1024"


def test_runaway_recursion_is_a_runtime_error() -> None:
    t = _tmpl("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(1) }}")
    with pytest.raises(TemplateError) as info:
        t.render_markup(_ctx())
    assert info.value.kind == "runtime" and "RecursionError" in str(info.value)


# --- context ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("price", "size", "measure", "amount", "per"), [
    ("7.49", 200, "g", "37.45", "kg"),
    ("2.19", "1.5", "l", "1.46", "l"),
    ("8.49", 900, "ml", "9.43", "l"),
    ("4.79", 500, "ml", "9.58", "l"),
    ("3.00", 33, "cl", "9.09", "l"),
    ("15.99", 8, "szt", "2.00", "piece"),
    ("12.00", 250, "cm", "4.80", "m"),
    ("99.00", 2, "m²", "49.50", "m²"),
    ("99.00", 2, "m2", "49.50", "m²"),
    ("0.99", 50, "g", "19.80", "kg"),
    ("5.00", 1, "mg", "5000000.00", "kg"),
])
def test_unit_price_conversions(price: str, size: object, measure: str, amount: str, per: str) -> None:
    result = unit_price(Decimal(price), Product.from_record(
        {"sku": "1", "price": price, "unit": {"size": size, "measure": measure}}).unit)
    assert result == {"amount": Decimal(amount), "per": per}
    assert isinstance(result["amount"], Decimal)


def test_unit_price_omitted_when_equal_to_price() -> None:
    assert unit_price(Decimal("4.99"), Unit(Decimal(1), "kg")) is None
    assert unit_price(Decimal("4.99"), Unit(Decimal(1000), "g")) is None
    assert unit_price(Decimal("4.99"), Unit(Decimal(1), "szt")) is None
    assert unit_price(Decimal("4.99"), None) is None
    assert _ctx({"sku": "1", "price": "3.79", "unit": "1 l"})["unit_price"] is None
    assert _ctx({"sku": "1", "price": "3.79", "unit": "500ml"})["unit_price"] == {
        "amount": Decimal("7.58"), "per": "l"}


def test_context_promo_active_window_and_percent() -> None:
    rec = {"sku": "1", "price": "10.00", "lowest_30d": "9.00",
           "promo": {"price": "7.20", "from": "2026-11-20", "to": "2026-11-23"}}
    ctx = _ctx(rec)
    assert ctx["price"] == Decimal("7.20") and ctx["regular"] == Decimal("10.00")
    assert ctx["promo"]["percent"] == 20  # from the lowest 30-day price, 9.00
    assert ctx["promo"]["to"] == datetime(2026, 11, 23, 23, 59, 59, tzinfo=timezone.utc)
    assert ctx["lowest_30d"] == Decimal("9.00")
    ended = dict(rec, promo={"price": "7.20", "from": "2026-11-01", "to": "2026-11-22"})
    ctx = _ctx(ended)
    assert ctx["promo"] is None and ctx["price"] == Decimal("10.00") and ctx["lowest_30d"] is None
    regular_only = _ctx({"sku": "1", "price": "8", "regular_price": "10"})
    assert regular_only["promo"]["percent"] == 20 and regular_only["regular"] == Decimal("10")


def test_context_shape() -> None:
    ctx = _ctx({"sku": 42, "name": "  Masło\n extra\t", "price": 7.49, "ean": "5901234123457",
                "attributes": {"origin": "PL"}, "color": "gold"})
    assert ctx["product"]["sku"] == "42" and ctx["product"]["name"] == "Masło extra"
    assert ctx["price"] == Decimal("7.49")
    assert ctx["product"]["attributes"] == {"origin": "PL", "color": "gold"}
    assert ctx["label"] == {"model": "2.9-bwry", "width": 296, "height": 128, "colours": "bwry",
                            "diagonal": '2.9"'}
    assert ctx["store"] == {"name": "Sklep", "currency": "PLN", "symbol": "zł"}
    assert ctx["now"] == NOW and ctx["now"].tzinfo is timezone.utc
    with pytest.raises(ValueError, match="timezone-aware"):
        build_context(Product.from_record({"sku": "1", "price": 1}), get_model("2.9-bwry"), Store(),
                      datetime(2026, 1, 1))


def test_names_are_cleaned_not_refused() -> None:
    p = Product.from_record({"sku": "1", "price": 1, "name": "Jabłka 🍎\u200b\x00 słodkie 👍🏽"})
    assert p.name == "Jabłka słodkie"
    long = Product.from_record({"sku": "1", "price": 1, "name": "x" * 300})
    assert len(long.name) == 200 and long.name.endswith("…")


BAD_PRODUCTS = [
    ({"name": "x", "price": 1}, "sku", None),
    ({"sku": "", "price": 1}, "sku", ""),
    ({"sku": "1"}, "price", None),
    ({"sku": "1", "price": ""}, "price", ""),
    ({"sku": "1", "price": "-1.00"}, "price", "-1.00"),
    ({"sku": "1", "price": "abc"}, "price", "abc"),
    ({"sku": "1", "price": "NaN"}, "price", "NaN"),
    ({"sku": "1", "price": "1e400"}, "price", "1e400"),
    ({"sku": "1", "price": True}, "price", True),
    ({"sku": "1", "price": [1]}, "price", [1]),
    ({"sku": "1", "price": 1, "name": 5}, "name", 5),
    ({"sku": "1", "price": 1, "ean": "5901234123456"}, "ean", "5901234123456"),
    ({"sku": "1", "price": 1, "ean": "12345"}, "ean", "12345"),
    ({"sku": "1", "price": 1, "promo": {"price": "x"}}, "promo.price", "x"),
    ({"sku": "1", "price": 1, "promo": {"price": 1, "to": "soon"}}, "promo.to", "soon"),
    ({"sku": "1", "price": 1, "promo": {"price": 1, "from": "2026-12-02", "to": "2026-12-01"}}, "promo.to", "2026-12-01"),
    ({"sku": "1", "price": 1, "promo": [1]}, "promo", [1]),
    ({"sku": "1", "price": 1, "unit": {"size": 0, "measure": "g"}}, "unit.size", 0),
    ({"sku": "1", "price": 1, "unit": {"size": 1, "measure": "furlong"}}, "unit.measure", "furlong"),
    ({"sku": "1", "price": 1, "unit": "lots"}, "unit", "lots"),
    ({"sku": "1", "price": 1, "currency": "zloty"}, "currency", "zloty"),
    ({"sku": "1", "price": 1, "url": 7}, "url", 7),
    ({"sku": "1", "price": 1, "lowest_30d": "-2"}, "lowest_30d", "-2"),
]


@pytest.mark.parametrize(("record", "field", "value"), BAD_PRODUCTS)
def test_bad_product_data_names_field_and_value(record: dict[str, Any], field: str, value: object) -> None:
    with pytest.raises(ProductError) as info:
        Product.from_record(record)
    assert info.value.field == field and info.value.value == value
    assert f"{field}={value!r}"[:40] in str(info.value)


def test_prices_accept_decimal_comma_and_keep_decimal_exact() -> None:
    assert Product.from_record({"sku": "1", "price": "12,99"}).price == Decimal("12.99")
    assert Product.from_record({"sku": "1", "price": 0.1}).price == Decimal("0.1")
    assert Product.from_record({"sku": "1", "price": 3}).price == Decimal(3)


def test_products_from_csv_and_json_files(tmp_path: Path) -> None:
    csv_text = ("sku;name;price;ean;unit_size;unit_measure;promo_price;promo_to;attr.origin;brand\n"
                "1;Masło;7,49;5901234123457;200;g;;;Polska;Mlekovita\n"
                "2;Ser;5.99;;;;4.49;2026-11-29;;\n")
    recs = products_from_csv(csv_text)
    assert recs[0] == {"sku": "1", "name": "Masło", "price": "7,49", "ean": "5901234123457",
                       "unit": {"size": "200", "measure": "g"},
                       "attributes": {"origin": "Polska"}, "brand": "Mlekovita"}
    assert recs[1]["promo"] == {"price": "4.49", "to": "2026-11-29"}
    p = Product.from_record(recs[0])
    assert p.price == Decimal("7.49") and p.attributes["brand"] == "Mlekovita"
    (tmp_path / "p.csv").write_text(csv_text, encoding="utf-8")
    (tmp_path / "p.json").write_text('[{"sku": "1", "price": 7.49}]', encoding="utf-8")
    assert load_products(tmp_path / "p.csv") == recs
    assert load_products(tmp_path / "p.json") == [{"sku": "1", "price": Decimal("7.49")}]
    (tmp_path / "bad.json").write_text('[{"sku": ', encoding="utf-8")
    with pytest.raises(ProductError, match="json"):
        load_products(tmp_path / "bad.json")


def test_sample_catalogue_is_valid_and_promotions_run_now() -> None:
    for when in (NOW, datetime(2031, 3, 3, tzinfo=timezone.utc), datetime(2024, 2, 29, tzinfo=timezone.utc)):
        products = [Product.from_record(r) for r in sample_catalogue(when)]
        assert len(products) >= 20
        promos = [p for p in products if p.promo]
        assert len(promos) >= 4 and all(p.promo.active(when) for p in promos)  # type: ignore[union-attr]
        assert all(p.ean for p in products)
        assert any(ch in "".join(p.name for p in products) for ch in "ąćęłńóśźż")
    assert date.fromisoformat("2026-11-29")  # the catalogue's own dates are ISO


# --- the fast paths of layout, held to the straightforward code they replace ---------------------



@pytest.mark.parametrize(("obj", "attribute"), [
    ({"name": "Masło"}, "name"), ({"name": "Masło"}, "missing"), ({"items": 1}, "items"),
    ({"get": 1, "keys": 2}, "keys"), ({"__class__": 1}, "__class__"), ({}, "copy"),
    ({"a": 1}, "mro"), ({1: "one"}, "real"), ("text", "upper"), (Decimal("1.5"), "real"),
    (Decimal("1.5"), "name"), ([1, 2], "append"), ({"x": 1}.items(), "mapping"),
])
def test_sandbox_attribute_lookup_is_unchanged(obj: Any, attribute: str) -> None:
    env = _environment()
    ours = env.getattr(obj, attribute)
    theirs = ImmutableSandboxedEnvironment.getattr(env, obj, attribute)
    if isinstance(theirs, Undefined):
        assert type(ours) is type(theirs) and ours._undefined_name == theirs._undefined_name
        assert ours._undefined_obj is theirs._undefined_obj
    else:
        assert ours == theirs


def test_dict_methods_still_win_over_keys_and_stay_sandboxed() -> None:
    ctx = _ctx({"sku": "1", "price": "1", "attributes": {"items": "x", "origin": "PL"}})
    t = _tmpl("{{ product.attributes.origin }} {{ product.attributes['items'] }} "
              "{{ product.attributes.items is callable }} {{ range(2)|list }}")
    assert t.render_markup(ctx) == "PL x True [0, 1]"
    with pytest.raises(TemplateError) as info:
        _tmpl("{{ product.attributes.update({'a': 1}) }}").render_markup(ctx)
    assert info.value.kind == "security"
    with pytest.raises(TemplateError) as info:
        _tmpl("{{ product.nmae }}").render_markup(ctx)
    assert info.value.kind == "undefined" and info.value.line == 5


def _number_reference(value: Any, places: int = 2, sep: str = ",") -> str:
    from decimal import ROUND_HALF_UP

    from render.context import parse_decimal

    d = (value if isinstance(value, Decimal) else parse_decimal(value)).quantize(
        Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)
    sign = "-" if d < 0 else ""
    whole, _, frac = f"{abs(d):f}".partition(".")
    groups: list[str] = []
    while len(whole) > 3:
        groups.insert(0, whole[-3:])
        whole = whole[:-3]
    groups.insert(0, whole)
    out = sign + "\u00a0".join(groups)
    return f"{out}{sep}{frac}" if places > 0 else out


@settings(max_examples=300, deadline=None)
@given(st.decimals(allow_nan=False, allow_infinity=False, min_value=Decimal("-1e15"),
                   max_value=Decimal("1e15")) | st.integers(-10**15, 10**15), st.integers(-3, 8))
def test_number_filter_groups_units_in_threes(value: Any, places: int) -> None:
    assert _number(value, places) == _number_reference(value, places)


def test_plain_names_are_exactly_what_cleaning_keeps() -> None:
    import re

    plain = [chr(c) for c in range(0x3000) if re.fullmatch(f"[{_PLAIN_CHARS}]", chr(c))]
    assert "ż" in plain and "€" in plain and "\u00a0" not in plain and "\u00ad" not in plain
    for ch in plain:
        assert _clean_text_full(f"a{ch}b {ch}", 200) == f"a{ch}b {ch}"


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=30) | st.text(st.sampled_from("aż ŁĄ\u00a0\u0301\t€🍎\u200b."), max_size=30),
       st.integers(3, 40))
def test_clean_text_fast_path_is_the_full_cleaning(text: str, limit: int) -> None:
    assert _clean_text(text, limit) == _clean_text_full(text, limit)


@settings(max_examples=300, deadline=None)
@given(st.text(st.sampled_from("0123456789"), min_size=13, max_size=13))
def test_ean13_check_is_layouts(digits: str) -> None:
    assert _ean13_check(digits) == ean13_check_digit(digits[:12])


def test_parse_when_gives_the_same_datetimes_from_its_cache() -> None:
    for _ in range(2):
        assert parse_when("2026-11-30", end_of_day=True) == datetime(2026, 11, 30, 23, 59, 59,
                                                                      tzinfo=timezone.utc)
        assert parse_when("2026-11-30") == datetime(2026, 11, 30, tzinfo=timezone.utc)
        assert parse_when("2026-11-30T10:00:00+02:00") == datetime(2026, 11, 30, 8, tzinfo=timezone.utc)
        with pytest.raises(ValueError, match="ISO 8601"):
            parse_when("soon")


@pytest.mark.parametrize("name", shipped_template_names())
def test_shipped_templates_take_the_fast_markup_path(name: str) -> None:
    """Every shipped template writes the one-element-per-line markup `_parse_lines` handles,
    and it builds the very labels expat builds."""
    t = load_template(name)
    for model in t.info.models:
        for rec in sample_catalogue(NOW):
            ctx = build_context(Product.from_record(rec), get_model(model), Store("Sklep & Co", "PLN"), NOW)
            markup = t.render_markup(ctx)
            assert _parse_lines(markup) == _parse_expat(markup) == t.render_label(ctx)
