"""Product records → the context a label template sees.

A record is the canonical price-update shape of the design (``sku``, ``price``, ``name``,
``regular_price``, ``promo {price, from, to}``, ``unit {size, measure}``, ``vat_rate``,
``currency``, ``attributes``) plus a few conveniences a catalogue has: ``ean``, ``url``,
``image`` and ``lowest_30d`` (until the server keeps price history, the prior price of a
reduction comes with the record). Unknown keys land in ``attributes``.

`Product.from_record` validates one record and raises `ProductError` naming the SKU, the
field and the value; `build_context` turns a valid product into the template context:

========== ==========================================================================
product    dict: sku, name, ean, url, image, vat_rate, attributes
price      Decimal: the price to pay now (the promotion price while a promotion runs)
regular    Decimal or None: the price before the promotion (struck through), if any
promo      dict {price, from, to, regular, percent} while a promotion runs, else None
lowest_30d Decimal or None: lowest price in the 30 days before the reduction (Omnibus)
unit_price dict {amount, per} (per: kg, l, m, m², piece) or None when it equals price
label      dict: model, width, height, colours, diagonal
store      dict: name, currency, symbol
now        timezone-aware UTC datetime
========== ==========================================================================

Names are cleaned rather than refused: Unicode NFC, control and format characters and
emoji (which no label font has) removed, whitespace collapsed, and anything beyond
`MAX_NAME` characters cut with an ellipsis (a label cannot show more; the text box shrinks
and ellipsises what is left).
"""

from __future__ import annotations

import csv
import io
import json
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time, timezone
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

from firmware_proto.models import LabelModel

__all__ = [
    "ProductError", "Product", "Promo", "Unit", "Store", "build_context", "unit_price",
    "parse_decimal", "parse_when", "load_products", "products_from_csv", "products_from_json",
    "CURRENCY_SYMBOLS", "MAX_NAME", "MAX_PRICE",
]

MAX_NAME: Final = 200
MAX_PRICE: Final = Decimal("1000000")
CENT: Final = Decimal("0.01")

CURRENCY_SYMBOLS: Final[Mapping[str, str]] = MappingProxyType({
    "PLN": "zł", "EUR": "€", "CZK": "Kč", "HUF": "Ft", "GBP": "£", "USD": "$", "SEK": "kr",
    "DKK": "kr", "NOK": "kr", "CHF": "CHF", "RON": "lei", "BGN": "лв",
})

# measure → (unit shown, how many of `measure` make one of it)
_MEASURES: Final[Mapping[str, tuple[str, Decimal]]] = MappingProxyType({
    "mg": ("kg", Decimal(1_000_000)), "g": ("kg", Decimal(1000)), "dag": ("kg", Decimal(100)),
    "kg": ("kg", Decimal(1)),
    "ml": ("l", Decimal(1000)), "cl": ("l", Decimal(100)), "dl": ("l", Decimal(10)),
    "l": ("l", Decimal(1)),
    "mm": ("m", Decimal(1000)), "cm": ("m", Decimal(100)), "m": ("m", Decimal(1)),
    "m2": ("m²", Decimal(1)), "m²": ("m²", Decimal(1)),
    "piece": ("piece", Decimal(1)), "pc": ("piece", Decimal(1)), "pcs": ("piece", Decimal(1)),
    "szt": ("piece", Decimal(1)), "szt.": ("piece", Decimal(1)),
})

_KNOWN_KEYS: Final = frozenset({
    "sku", "name", "price", "regular_price", "promo", "lowest_30d", "unit", "vat_rate",
    "currency", "ean", "url", "image", "attributes", "seq", "valid_from",
})


class ProductError(ValueError):
    """A product record that cannot be rendered; names the SKU, the field and the value."""

    def __init__(self, sku: str | None, field_name: str, value: object, reason: str) -> None:
        self.sku = sku
        self.field = field_name
        self.value = value
        self.reason = reason
        shown = repr(value)
        if len(shown) > 60:
            shown = shown[:57] + "..."
        who = f"product {sku!r}" if sku else "product"
        super().__init__(f"{who}: {field_name}={shown}: {reason}")


def parse_decimal(value: object) -> Decimal:
    """A Decimal from a JSON/CSV value: ``12.99``, ``"12.99"``, ``"12,99"``, ``12``.

    Raises ValueError for booleans, non-numbers, NaN and infinities. Floats go through
    ``str`` so that 0.1 stays 0.1.
    """
    if isinstance(value, str):  # the common case first (no str is also a bool or a number)
        s = value.strip().replace("\u00a0", "").replace(" ", "")
        if s.count(",") == 1 and "." not in s:
            s = s.replace(",", ".")
        if not s or len(s) > 32:
            raise ValueError("expected a decimal number such as 12.99")
        try:
            d = Decimal(s)
        except InvalidOperation:
            raise ValueError("expected a decimal number such as 12.99") from None
    elif isinstance(value, bool) or value is None:
        raise ValueError("expected a decimal number")
    elif isinstance(value, Decimal):
        d = value
    elif isinstance(value, int):
        d = Decimal(value)
    elif isinstance(value, float):
        d = Decimal(str(value))
    else:
        raise ValueError(f"expected a decimal number, got {type(value).__name__}")
    if not d.is_finite():
        raise ValueError("expected a finite decimal number")
    return d


def parse_when(value: object, *, end_of_day: bool = False) -> datetime:
    """A timezone-aware UTC datetime from ISO 8601 text, a date or a datetime.

    A bare date means the start of that day (UTC), or its last second with `end_of_day`
    (a promotion "until 30.11" runs through the 30th). Naive times are taken as UTC.
    """
    if type(value) is str:  # promotion windows repeat across a catalogue: parse each once
        key = (value, end_of_day)
        cached = _WHEN_CACHE.get(key)
        if cached is None:
            cached = _parse_when(value, end_of_day)
            if len(_WHEN_CACHE) >= _WHEN_CACHE_SIZE:
                _WHEN_CACHE.clear()
            _WHEN_CACHE[key] = cached
        return cached
    return _parse_when(value, end_of_day)


_WHEN_CACHE: dict[tuple[str, bool], datetime] = {}
_WHEN_CACHE_SIZE: Final = 4096


def _parse_when(value: object, end_of_day: bool) -> datetime:
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, date):
        dt = datetime.combine(value, time.max.replace(microsecond=0) if end_of_day else time.min)
    elif isinstance(value, str):
        s = value.strip()
        try:
            if len(s) == 10:
                d = date.fromisoformat(s)
                dt = datetime.combine(d, time.max.replace(microsecond=0) if end_of_day else time.min)
            else:
                dt = datetime.fromisoformat(s.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError("expected an ISO 8601 date such as 2026-11-30") from None
    else:
        raise ValueError("expected an ISO 8601 date such as 2026-11-30")
    if dt.tzinfo is None:
        return dt.replace(tzinfo=timezone.utc)
    return dt.astimezone(timezone.utc)


# Text that `_clean_text` returns unchanged: letters, digits and punctuation of the Latin
# scripts (no controls, format characters, emoji or whitespace but single inner spaces).
# Checked against the slow path character by character in tests/test_templates.py.
_PLAIN_CHARS: Final = "!-~\u00a1-\u00ac\u00ae-\u017f\u2013\u2014\u2018-\u201e\u2026\u20ac"
_PLAIN_TEXT: Final = re.compile(f"[{_PLAIN_CHARS}]+(?: [{_PLAIN_CHARS}]+)*")


def _clean_text(value: str, limit: int) -> str:
    if (len(value) <= limit and _PLAIN_TEXT.fullmatch(value) is not None
            and unicodedata.is_normalized("NFC", value)):
        return value  # what `_clean_text_full` returns for it, without a loop per character
    return _clean_text_full(value, limit)


def _clean_text_full(value: str, limit: int) -> str:
    text = unicodedata.normalize("NFC", value)
    kept = []
    for ch in text:
        if ch in "\t\n\r":
            kept.append(" ")
            continue
        cat = unicodedata.category(ch)
        if cat in ("Cc", "Cf", "Cs", "Co", "Cn"):
            continue
        if "\ufe00" <= ch <= "\ufe0f" or (cat in ("So", "Mn", "Sk") and ord(ch) > 0x1F000):
            continue  # variation selectors, emoji, skin tones: no label font has them
        kept.append(ch)
    text = " ".join("".join(kept).split())
    if len(text) > limit:
        text = text[: limit - 1].rstrip() + "…"
    return text


def _ean13_check(digits: str) -> int:
    """`render.layout.ean13_check_digit` of the first twelve of `digits` (ASCII digits),
    computed on bytes: the same digit, a few times faster (compared in tests)."""
    b = digits.encode("ascii")
    total = sum(b[0:12:2]) + 3 * sum(b[1:12:2]) - 48 * 24  # 48 = ord("0"), 6 + 3 * 6 digits
    return (10 - total % 10) % 10


@dataclass(frozen=True, slots=True)
class Promo:
    """A promotion price, valid from `start` to `end` (either may be open)."""

    price: Decimal
    start: datetime | None = None
    end: datetime | None = None

    def active(self, now: datetime) -> bool:
        return (self.start is None or self.start <= now) and (self.end is None or now <= self.end)


@dataclass(frozen=True, slots=True)
class Unit:
    """The quantity a price buys: ``size`` of ``measure`` (500 g, 1.5 l, 6 pcs)."""

    size: Decimal
    measure: str


@dataclass(frozen=True, slots=True)
class Store:
    """The store a label hangs in; `currency` is the default for products without one."""

    name: str = "Sklep"
    currency: str = "PLN"


@dataclass(frozen=True, slots=True)
class Product:
    """One validated product record."""

    sku: str
    price: Decimal
    name: str = ""
    ean: str | None = None
    url: str | None = None
    image: str | None = None
    currency: str | None = None
    regular_price: Decimal | None = None
    promo: Promo | None = None
    lowest_30d: Decimal | None = None
    unit: Unit | None = None
    vat_rate: Decimal | None = None
    attributes: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Product:
        """Validate a record; raises `ProductError` naming the field and value at fault."""
        if type(record) is not dict and not isinstance(record, Mapping):
            raise ProductError(None, "record", record, "expected an object with sku and price")
        raw_sku = record.get("sku")
        if isinstance(raw_sku, int) and not isinstance(raw_sku, bool):
            raw_sku = str(raw_sku)
        if not isinstance(raw_sku, str) or not raw_sku.strip():
            raise ProductError(None, "sku", raw_sku, "required: a non-empty string")
        sku = raw_sku.strip()
        if len(sku) > 64 or not sku.isprintable():
            raise ProductError(None, "sku", raw_sku, "must be at most 64 printable characters")

        def money(name: str, value: object, *, required: bool = False) -> Decimal | None:
            if value is None or value == "":
                if required:
                    raise ProductError(sku, name, value, "required")
                return None
            try:
                d = parse_decimal(value)
            except ValueError as exc:
                raise ProductError(sku, name, value, str(exc)) from None
            if d < 0:
                raise ProductError(sku, name, value, "must not be negative")
            if d > MAX_PRICE:
                raise ProductError(sku, name, value, f"must be at most {MAX_PRICE}")
            return d

        price = money("price", record.get("price"), required=True)
        assert price is not None

        name_raw = record.get("name", "")
        if name_raw is None:
            name_raw = ""
        if not isinstance(name_raw, str):
            raise ProductError(sku, "name", name_raw, "expected text")
        name = _clean_text(name_raw, MAX_NAME)

        attributes: dict[str, Any] = {}
        raw_attrs = record.get("attributes")
        if raw_attrs is not None:
            if type(raw_attrs) is not dict and not isinstance(raw_attrs, Mapping):
                raise ProductError(sku, "attributes", raw_attrs, "expected an object")
            attributes.update({str(k): v for k, v in raw_attrs.items()})
        for key, value in record.items():
            if key not in _KNOWN_KEYS and value not in (None, ""):
                attributes.setdefault(str(key), value)

        ean_raw = record.get("ean", attributes.get("barcode", attributes.get("ean")))
        ean: str | None = None
        if ean_raw not in (None, ""):
            ean = str(ean_raw).strip()
            if not (len(ean) == 13 and ean.isascii() and ean.isdigit()):
                raise ProductError(sku, "ean", ean_raw, "expected 13 digits (EAN-13)")
            check = _ean13_check(ean)
            if int(ean[12]) != check:
                raise ProductError(sku, "ean", ean_raw, f"wrong check digit, expected {check}")

        url_raw = record.get("url", attributes.get("url"))
        url: str | None = None
        if url_raw not in (None, ""):
            if not isinstance(url_raw, str) or len(url_raw) > 512 or not url_raw.isprintable():
                raise ProductError(sku, "url", url_raw, "expected a URL of at most 512 characters")
            url = url_raw.strip()

        image_raw = record.get("image", attributes.get("image"))
        image = str(image_raw).strip() if image_raw not in (None, "") else None

        currency_raw = record.get("currency")
        currency: str | None = None
        if currency_raw not in (None, ""):
            if not (isinstance(currency_raw, str) and len(currency_raw.strip()) == 3
                    and currency_raw.strip().isalpha()):
                raise ProductError(sku, "currency", currency_raw, "expected an ISO 4217 code such as PLN")
            currency = currency_raw.strip().upper()

        promo: Promo | None = None
        raw_promo = record.get("promo")
        if raw_promo not in (None, ""):
            if type(raw_promo) is not dict and not isinstance(raw_promo, Mapping):
                raise ProductError(sku, "promo", raw_promo, "expected an object {price, from, to}")
            pprice = money("promo.price", raw_promo.get("price"), required=True)
            assert pprice is not None
            bounds: list[datetime | None] = []
            for key in ("from", "to"):
                v = raw_promo.get(key)
                if v in (None, ""):
                    bounds.append(None)
                    continue
                try:
                    bounds.append(parse_when(v, end_of_day=key == "to"))
                except ValueError as exc:
                    raise ProductError(sku, f"promo.{key}", v, str(exc)) from None
            if bounds[0] is not None and bounds[1] is not None and bounds[0] > bounds[1]:
                raise ProductError(sku, "promo.to", raw_promo.get("to"), "ends before it starts")
            promo = Promo(pprice, bounds[0], bounds[1])

        unit: Unit | None = None
        raw_unit = record.get("unit")
        if raw_unit not in (None, ""):
            unit = _parse_unit(sku, raw_unit)

        vat = money("vat_rate", record.get("vat_rate"))
        return cls(
            sku=sku, price=price, name=name, ean=ean, url=url, image=image, currency=currency,
            regular_price=money("regular_price", record.get("regular_price")), promo=promo,
            lowest_30d=money("lowest_30d", record.get("lowest_30d")), unit=unit, vat_rate=vat,
            attributes=MappingProxyType(attributes),
        )


def _parse_unit(sku: str, raw: object) -> Unit:
    size_raw: object
    measure_raw: object
    if isinstance(raw, str):
        parts = raw.strip().replace(",", ".").split()
        if len(parts) == 1:  # "500g"
            s = parts[0]
            i = len(s) - len(s.lstrip("0123456789."))
            parts = [s[:i], s[i:]] if i else parts
        if len(parts) != 2:
            raise ProductError(sku, "unit", raw, "expected a size and a measure such as '500 g'")
        size_raw, measure_raw = parts
    elif isinstance(raw, Mapping):
        size_raw, measure_raw = raw.get("size"), raw.get("measure")
    else:
        raise ProductError(sku, "unit", raw, "expected {size, measure}")
    try:
        size = parse_decimal(size_raw)
    except ValueError as exc:
        raise ProductError(sku, "unit.size", size_raw, str(exc)) from None
    if size <= 0:
        raise ProductError(sku, "unit.size", size_raw, "must be greater than zero")
    measure = str(measure_raw).strip().lower() if measure_raw is not None else ""
    if measure not in _MEASURES:
        raise ProductError(sku, "unit.measure", measure_raw,
                           f"expected one of {', '.join(sorted(_MEASURES))}")
    return Unit(size, measure)


def unit_price(price: Decimal, unit: Unit | None) -> dict[str, Any] | None:
    """{amount, per} for `price` buying `unit`, rounded half-up to the cent; None without a
    unit or when it equals the selling price (1 kg, 1 l, one piece), as 98/6/EC allows."""
    if unit is None:
        return None
    per, factor = _MEASURES[unit.measure]
    amount = (price * factor / unit.size).quantize(CENT, rounding=ROUND_HALF_UP)
    if amount == price.quantize(CENT, rounding=ROUND_HALF_UP):
        return None
    return {"amount": amount, "per": per}


def build_context(
    product: Product, model: LabelModel, store: Store, now: datetime
) -> dict[str, Any]:
    """The template context for one product on one label model at time `now` (UTC)."""
    if now.tzinfo is None:
        raise ValueError(f"now must be timezone-aware, got {now!r}")
    currency = product.currency or store.currency
    promo: dict[str, Any] | None = None
    price = product.price
    regular: Decimal | None = None
    if product.promo is not None and product.promo.active(now):
        regular = product.regular_price if product.regular_price is not None else product.price
        price = product.promo.price
        promo = {"price": price, "from": product.promo.start, "to": product.promo.end}
    elif product.regular_price is not None and product.regular_price > product.price:
        regular = product.regular_price
        promo = {"price": price, "from": None, "to": None}
    if promo is not None:
        prior = product.lowest_30d if product.lowest_30d is not None else regular
        promo["regular"] = regular
        promo["percent"] = (
            int(((1 - price / prior) * 100).quantize(Decimal(1), rounding=ROUND_HALF_UP))
            if prior else 0
        )
    return {
        "product": {
            "sku": product.sku, "name": product.name, "ean": product.ean, "url": product.url,
            "image": product.image, "vat_rate": product.vat_rate,
            "attributes": dict(product.attributes),
        },
        "price": price,
        "regular": regular,
        "promo": promo,
        "lowest_30d": product.lowest_30d if promo is not None else None,
        "unit_price": unit_price(price, product.unit),
        "label": {
            "model": model.name, "width": model.width, "height": model.height,
            "colours": model.colours, "diagonal": model.diagonal,
        },
        "store": {"name": store.name, "currency": currency,
                  "symbol": CURRENCY_SYMBOLS.get(currency, currency)},
        "now": now.astimezone(timezone.utc),
    }


# --- loading catalogues ---------------------------------------------------------------------

def products_from_json(text: str) -> list[Any]:
    """Records from a JSON list (or ``{"products": [...]}``); numbers become Decimal."""
    try:
        data = json.loads(text, parse_float=Decimal)
    except json.JSONDecodeError as exc:
        raise ProductError(None, "json", f"line {exc.lineno}", exc.msg) from None
    if isinstance(data, Mapping) and isinstance(data.get("products"), list):
        data = data["products"]
    if isinstance(data, Mapping):
        data = [data]
    if not isinstance(data, list):
        raise ProductError(None, "json", type(data).__name__, "expected a list of products")
    # Entries that are not objects are passed on as they are: `Product.from_record` refuses
    # each one with its own error, and the rest of the file still renders.
    return [dict(r) if isinstance(r, Mapping) else r for r in data]


def products_from_csv(text: str) -> list[dict[str, Any]]:
    """Records from CSV with a header row.

    Columns: the record keys, plus ``promo_price``/``promo_from``/``promo_to``,
    ``unit_size``/``unit_measure`` (or ``unit`` as ``500 g``); ``attr.X`` and any other
    column go to attributes. ``;`` or ``,`` separated (sniffed), empty cells are absent.
    """
    sample = text[:4096]
    try:
        dialect: type[csv.Dialect] | csv.Dialect = csv.Sniffer().sniff(sample, delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    rows = csv.DictReader(io.StringIO(text), dialect=dialect)
    out: list[dict[str, Any]] = []
    for row in rows:
        rec: dict[str, Any] = {}
        promo: dict[str, str] = {}
        unit: dict[str, str] = {}
        attrs: dict[str, str] = {}
        for key, value in row.items():
            if key is None or value is None or value.strip() == "":
                continue
            k = key.strip()
            v = value.strip()
            if k.startswith("promo_"):
                promo[k[6:]] = v
            elif k in ("unit_size", "unit_measure"):
                unit[k[5:]] = v
            elif k.startswith("attr."):
                attrs[k[5:]] = v
            else:
                rec[k] = v
        if promo:
            rec["promo"] = promo
        if unit:
            rec["unit"] = unit
        if attrs:
            rec["attributes"] = attrs
        out.append(rec)
    return out


def load_products(path: str | Path) -> list[Any]:
    """Records from a ``.json`` or ``.csv`` file (by suffix; content sniffed otherwise)."""
    p = Path(path)
    text = p.read_text(encoding="utf-8-sig")
    if p.suffix.lower() == ".csv" or (p.suffix.lower() != ".json" and not text.lstrip()[:1] in "[{"):
        return products_from_csv(text)
    return products_from_json(text)

