"""Price updates from a POS: parsing, field maps, validation, merging, price history, Omnibus.

Pure functions and frozen values, no IO: the ingest path (MQTT, HTTP) calls them and stores
what they return. The flow for one message::

    items = parse_payload(body)                       # PriceError: the whole payload is bad
    for i, item in enumerate(items):                  # each item on its own: a bad one is
        rec = apply_field_map(item, store_map, index=i)   # answered, the rest still applied
        upd = validate_update(rec, index=i, default_currency=store.currency)
        ...  # seq check (SQL), then when the change takes effect:
        rows = periods_for_update(stored, upd, effective_at)   # before merging
        stored = merge_record(stored, upd)                      # the new product record
    # rendering, at time `now`:
    product = Product.from_record(product_for_render(stored, history, now))
    wake_at = next_change_after(stored, now)          # when a promotion starts or ends

``seq`` — a number the POS increases with every change of one SKU (any non-negative integer
below 2**63; digit strings accepted). The caller keeps the highest ``seq`` seen per SKU and
applies an update only when its ``seq`` is greater; an equal ``seq`` is a redelivery and a
smaller one is stale: both are ignored and counted, never answered as errors. An update
without ``seq`` is applied in arrival order and does not change the stored ``seq``. The seq
is not part of the product record (`merge_record` leaves it out); it lives beside it.

``valid_from`` — when the change should reach the shelf (a scheduled price). ``None`` means
now. A time must carry its offset (``Z`` or ``+01:00``); a bare date means 00:00 of that
day in the store's time zone (`validate_update`'s ``tz``, UTC unless given). The caller
keeps an update whose ``valid_from`` lies in the future as pending, in ``valid_from``
order, and applies it when due: `periods_for_update` on the record as it was, then
`merge_record`, with ``effective_at`` the time it was applied (never before
``valid_from``). The seq check is done on arrival against the highest seq seen, pending
ones included.

Stored records are plain JSON values: what `merge_record` returns has money as decimal
strings (exactly the digits validated, never a float) and times as ISO 8601 UTC strings
(``2026-11-30T23:59:59Z``); `record_to_json`/`record_from_json` store and load it
unchanged, and `render.context.Product.from_record` reads it as it is.

Price history is a list of `PricePeriod` rows in the order they were added (pass all rows
of the SKU, ordered by insertion): a later row overrides earlier ones where it covers an
instant (a new base price ends a promotion that was still running or planned; a promotion
window lies over the base price). A record holds one promotion: a new one replaces the
current one when the message is applied. `prior_price` reads the history for the lowest
price in the 30 days before a reduction (directive 98/6/EC art. 6a, added by the Omnibus
directive 2019/2161; in Poland art. 4 of the 2014 act on price information): a product on
sale for less than 30 days gets the lowest price since it went on sale, and a progressive
reduction (a reduction that deepens without a break) gets the prior price of its first
step.

A ``lowest_30d`` sent by the POS is its own statement of the prior price (it may know
history from before this server existed): it wins over the computed value, and only for
the reduction it came with — `merge_record` drops it when a later update changes the
price, the regular price or the promotion without repeating it.
"""

from __future__ import annotations

import functools
import heapq
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone, tzinfo
from decimal import Decimal
from types import MappingProxyType
from typing import Any, Final

from render.context import Product, ProductError, Promo, parse_decimal, parse_when

__all__ = [
    "PriceError", "PriceUpdate", "PricePeriod", "ERROR_CODES", "CANONICAL_FIELDS", "FIELD_GROUPS", "MAX_UPDATE_ID",
    "parse_payload", "field_path", "apply_field_map", "check_field_map", "validate_update", "merge_record",
    "record_to_json", "record_from_json", "periods_for_update", "selling_price_at",
    "prior_price", "lookback_start", "product_for_render", "next_change_after",
]

#: Stable error codes of `PriceError.to_json` (the ``"error"`` member).
ERROR_CODES: Final = frozenset({
    "invalid_json",      # not JSON, not UTF-8, NaN/Infinity, nested too deeply
    "invalid_payload",   # JSON, but neither an object nor an array
    "invalid_record",    # an item of the array that is not an object
    "missing_field",     # a required field absent or empty (sku, price, promo.price)
    "invalid_value",     # a field whose value is refused (named with the value)
    "field_collision",   # two keys of one message land on one canonical field
    "invalid_field_map", # a store field map with a target that is not a canonical field
    "unknown_sku",       # a SKU not in the catalogue, in a store that lets no POS create products
    "seq_jump",          # a seq further above the stored one than the store's max_seq_jump
    "too_large",         # a message, a batch or a field above its limit (eslserver.pos_limits)
    "invalid_text",      # text with a NUL, a lone surrogate or bytes that are not UTF-8
})

#: The canonical top-level fields of a price update (docs/mqtt.asyncapi.yaml, "PriceUpdate").
CANONICAL_FIELDS: Final = frozenset({
    "sku", "price", "currency", "name", "regular_price", "promo", "unit", "vat_rate",
    "valid_from", "seq", "attributes", "ean", "url", "image", "lowest_30d", "update_id",
})

# Groups a dotted target may address, with the sub-fields allowed (None: any name).
_GROUPS: Final[Mapping[str, frozenset[str] | None]] = MappingProxyType({
    "promo": frozenset({"price", "from", "to"}),
    "unit": frozenset({"size", "measure"}),
    "attributes": None,
})
#: The groups a dotted field names (``promo.price``) and their sub-fields (None: any name).
FIELD_GROUPS: Final = _GROUPS
# Record fields an update carries (besides sku/seq/valid_from), in a fixed order.
_UPDATE_FIELDS: Final = (
    "price", "currency", "name", "regular_price", "promo", "unit", "vat_rate", "ean", "url",
    "image", "lowest_30d",
)
_MONEY_FIELDS: Final = ("price", "regular_price", "vat_rate", "lowest_30d")
_MAX_DECIMAL_TEXT: Final = 32  # what parse_decimal accepts as text: a stored value must reload
_MAX_SEQ: Final = 2**63 - 1    # SQLite INTEGER
_TICK: Final = timedelta(microseconds=1)
_END_OF_DAY: Final = time(23, 59, 59)  # as render.context.parse_when
# Period ends are inclusive (as `Promo.active`): a promotion "to 2026-11-30" ends 23:59:59
# and the next one "from 2026-12-01" starts a second later. Timeline pieces shorter than
# this are such seams, not prices a shopper saw: they neither break a progressive reduction
# nor count as a price of the 30 days.
_SEAM: Final = timedelta(seconds=1)
_VALUE_TEXT: Final = 200
MAX_UPDATE_ID: Final = 64
"""Characters of an ``update_id`` (printable ASCII); `eslserver.pos_limits` lists it with the other limits."""
_UPDATE_ID: Final = re.compile(f"[\x20-\x7e]{{1,{MAX_UPDATE_ID}}}")

_Bad = Callable[[str, object, str], "PriceError"]  # builds an error for this item's sku


# --- errors ---------------------------------------------------------------------------------

def _json_safe(value: object, depth: int = 0) -> object:
    """`value` as something json.dumps accepts and a POS can show, bounded in size."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if abs(value) <= _MAX_SEQ else _short(str(value))
    if isinstance(value, str):
        return _printable(_short(value))
    if isinstance(value, Decimal):
        return _short(str(value))
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if depth < 2 and isinstance(value, Mapping) and len(value) <= 16:
        return {_printable(str(k)): _json_safe(v, depth + 1) for k, v in value.items()}
    if depth < 2 and isinstance(value, list | tuple) and len(value) <= 16:
        return [_json_safe(v, depth + 1) for v in value]
    return _short(repr(value))


def _short(text: str) -> str:
    return text if len(text) <= _VALUE_TEXT else text[: _VALUE_TEXT - 1] + "…"


def _printable(text: str) -> str:
    """`text` as valid Unicode without NUL: a lone surrogate (or a byte that was not UTF-8,
    decoded with surrogateescape) becomes ``\\udcff`` and a NUL ``\\x00``, so that an answer
    naming it can be sent as UTF-8 and shown as it is."""
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


class PriceError(ValueError):
    """One rejected message, or one rejected item of a batch.

    Names where (``index`` in the batch, ``sku`` when known), what (``field``, dotted for
    nested ones such as ``promo.price``, and the ``value`` received) and why (``reason``,
    with a stable ``code`` from `ERROR_CODES`). ``index`` may be set after the fact, and so
    may the POS's own words (`eslserver.pos_fields`): ``field`` then is the name the POS
    sent (``Cena``), ``canonical`` the field it stands for (``price``), and ``hint`` a
    suggestion for a name that looks misspelt ("did you mean price?").
    """

    def __init__(
        self, field: str, value: object, reason: str, *, code: str = "invalid_value",
        index: int | None = None, sku: str | None = None,
    ) -> None:
        if code not in ERROR_CODES:
            raise ValueError(f"unknown error code {code!r}")
        super().__init__(field, value, reason)
        self.field = field
        self.canonical = field
        self.value = value
        self.reason = reason
        self.code = code
        self.index = index
        self.sku = sku
        self.hint: str | None = None

    def __str__(self) -> str:
        where = []
        if self.index is not None:
            where.append(f"item {self.index}")
        if self.sku:
            where.append(f"sku {self.sku!r}")
        shown = repr(self.value)
        if len(shown) > 60:
            shown = shown[:57] + "..."
        prefix = f"{', '.join(where)}: " if where else ""
        field = self.field if self.canonical == self.field else f"{self.field} ({self.canonical})"
        hint = f"; {self.hint}" if self.hint else ""
        return f"{prefix}{field}={shown}: {self.reason}{hint}"

    def to_json(self) -> dict[str, Any]:
        """The error as answered to the POS (HTTP body item, or MQTT ``pos/errors``)."""
        return {
            "index": self.index, "sku": _json_safe(self.sku), "field": _printable(self.field),
            "canonical": _printable(self.canonical), "value": _json_safe(self.value), "error": self.code,
            "detail": _printable(str(self)), "hint": None if self.hint is None else _printable(self.hint),
        }


def _from_product_error(exc: ProductError, index: int | None) -> PriceError:
    if exc.field == "record":
        code = "invalid_record"
    elif exc.value in (None, "") and exc.reason.startswith("required"):
        code = "missing_field"
    else:
        code = "invalid_value"
    return PriceError(exc.field, exc.value, exc.reason, code=code, index=index, sku=exc.sku)


# --- payload --------------------------------------------------------------------------------

def _refuse_constant(name: str) -> object:
    raise _NotANumber(name)


class _NotANumber(Exception):
    pass


class _Repeated(dict[str, Any]):
    """A JSON object in which a key appears twice (json keeps the last silently)."""

    repeated: str


class _RefusedItem(dict[str, Any]):
    """An item of a payload that repeats a key somewhere inside: still a dict (its sku can
    be logged), refused by `apply_field_map` and `validate_update`."""

    path: str
    value: object  # the last of the repeated values


def _repeated_key(pairs: list[tuple[str, Any]]) -> str:
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            return key
        seen.add(key)
    raise AssertionError("no key repeated")


def _repeated_path(value: object) -> tuple[str, object] | None:
    if isinstance(value, _Repeated):
        return value.repeated, value[value.repeated]
    children = value.items() if isinstance(value, dict) else (
        enumerate(value) if isinstance(value, list) else ())
    for key, child in children:
        found = _repeated_path(child)
        if found is not None:
            return f"{key}.{found[0]}", found[1]
    return None


def _check_refused(record: object, index: int | None) -> None:
    if isinstance(record, _RefusedItem):
        raise PriceError(record.path, record.value, "given twice in one object", index=index,
                         sku=str(record["sku"]) if isinstance(record.get("sku"), str | int) else None)


def parse_payload(data: bytes | str) -> list[object]:
    """The items of a message: a JSON object (one item) or an array (a batch, maybe empty).

    Numbers with a fraction or exponent become `Decimal` and integers `int`, both exact
    (never float); NaN and Infinity are refused. Items are returned as they are, objects
    or not: `validate_update` refuses a bad item with its own error, so the rest of a
    batch still applies. An object that repeats a key (JSON would keep the last value
    silently) makes its item one that `apply_field_map` and `validate_update` refuse.
    Raises `PriceError` (field ``json``) when the payload as a whole cannot be read, with
    the position (``line L column C``) as its value. Bytes that are not UTF-8 are decoded
    with ``errors="surrogateescape"`` (U+DC80..U+DCFF): inside a string they make only that
    item one `eslserver.pos_limits.check_item` refuses; anywhere else the JSON is unreadable.
    """
    if isinstance(data, bytes | bytearray | memoryview):
        text = bytes(data).decode("utf-8-sig", "surrogateescape")
    else:
        text = data
    repeated = False

    def objects(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        nonlocal repeated
        out = dict(pairs)
        if len(out) == len(pairs):
            return out
        repeated = True
        marked = _Repeated(out)
        marked.repeated = _repeated_key(pairs)
        return marked

    try:
        parsed = json.loads(text, parse_float=Decimal, parse_constant=_refuse_constant,
                            object_pairs_hook=objects)
    except json.JSONDecodeError as exc:
        raise PriceError("json", f"line {exc.lineno} column {exc.colno}",
                         f"not JSON: {exc.msg}", code="invalid_json") from None
    except _NotANumber as exc:
        raise PriceError("json", str(exc), "not JSON: NaN and Infinity are not numbers",
                         code="invalid_json") from None
    except RecursionError:
        raise PriceError("json", "nesting", "nested too deeply", code="invalid_json") from None
    except ValueError:  # an integer beyond the interpreter's digit limit
        raise PriceError("json", "number", "a number too long to read",
                         code="invalid_json") from None
    if isinstance(parsed, dict):
        parsed = [parsed]
    if not isinstance(parsed, list):
        raise PriceError("json", parsed, "expected an object or an array of objects",
                         code="invalid_payload")
    if repeated:  # rare: find the items concerned, the others stay as they are
        for i, item in enumerate(parsed):
            found = _repeated_path(item) if isinstance(item, dict) else None
            if found is not None:
                refused = _RefusedItem(item)
                refused.path, refused.value = found
                parsed[i] = refused
    return parsed


# --- field maps -----------------------------------------------------------------------------

def _target_path(target: str, source: str) -> tuple[str, ...]:
    """A map target as a path: ``("price",)`` or ``("promo", "price")``."""
    path = _split_target(target) if isinstance(target, str) else None
    if path is None:
        choices = [f"{g}.{s}" for g, subs in _GROUPS.items() for s in sorted(subs or {"NAME"})]
        raise PriceError("field_map", {source: target},
                         f"target must be a field name or one of {', '.join(choices)}",
                         code="invalid_field_map")
    return path


@functools.lru_cache(maxsize=1024)
def _split_target(target: str) -> tuple[str, ...] | None:
    if not target or target.strip() != target:
        return None
    if "." not in target:
        return (target,)
    head, _, sub = target.partition(".")
    allowed = _GROUPS.get(head, frozenset())
    if not sub or (allowed is not None and sub not in allowed):
        return None
    return (head, sub)


def _key_path(key: str) -> tuple[str, ...]:
    """The path of a record key that no map entry names: dotted keys of a group
    (``promo.price`` sent as such by a flat POS) are paths, anything else is one key."""
    if "." not in key:
        return (key,)
    head, _, sub = key.partition(".")
    return (head, sub) if sub and head in _GROUPS else (key,)  # validate_update checks sub


def field_path(key: str, field_map: Mapping[str, str]) -> tuple[str, ...]:
    """Where a key of a POS record lands: ``("price",)``, ``("promo", "price")``. A key the
    map names goes to its target (`PriceError` ``invalid_field_map`` if that is no field);
    any other key is a path of its own (dotted group keys such as ``promo.price`` nest)."""
    target = field_map.get(key)
    return _target_path(target, key) if target is not None else _key_path(key)


def check_field_map(field_map: Mapping[str, str]) -> None:
    """Validate a store's field map once (at configuration): sources non-empty text,
    targets a field name or ``promo.price|from|to``, ``unit.size|measure``,
    ``attributes.NAME``. Raises `PriceError` with code ``invalid_field_map``."""
    if not isinstance(field_map, Mapping):
        raise PriceError("field_map", field_map, "expected a table of POS name = field name",
                         code="invalid_field_map")
    for source, target in field_map.items():
        if not isinstance(source, str) or not source:
            raise PriceError("field_map", source, "source must be a non-empty name",
                             code="invalid_field_map")
        _target_path(target, source)


def apply_field_map(
    record: Mapping[str, Any], field_map: Mapping[str, str], *, index: int | None = None,
) -> dict[str, Any]:
    """`record` with its POS names turned into canonical ones.

    A key the map names goes to its target (dotted targets build the nested object:
    ``"CenaPromo": "promo.price"``); any other key passes through as it is. A group built
    only from dotted keys whose values are all empty (``"CenaPromo": ""``) becomes ``None``:
    the POS says there is no promotion (or unit) any more. Two keys landing on one field
    (``Cena`` mapped to price, and ``price`` itself; or ``promo.price`` and a ``promo``
    object with a price) raise `PriceError` code ``field_collision`` naming both.
    """
    if not isinstance(record, Mapping):
        raise PriceError("record", record, "expected an object with sku and price",
                         code="invalid_record", index=index)
    _check_refused(record, index)
    sku = _guess_sku(record, field_map)
    plain: dict[str, tuple[str, Any]] = {}
    dotted: dict[tuple[str, str], tuple[str, Any]] = {}
    for raw_key, value in record.items():
        key = str(raw_key)
        try:
            path = field_path(key, field_map)
        except PriceError as exc:
            exc.index, exc.sku = index, sku
            raise
        if len(path) == 1:
            name = path[0]
            if name in plain:
                raise _collision(name, plain[name][0], key, index, sku)
            plain[name] = (key, value)
        else:
            pair = (path[0], path[1])
            if pair in dotted:
                raise _collision(".".join(pair), dotted[pair][0], key, index, sku)
            dotted[pair] = (key, value)
    out: dict[str, Any] = {name: value for name, (_, value) in plain.items()}
    built: dict[str, dict[str, Any]] = {}
    for (head, sub), (key, value) in dotted.items():
        if head in plain:
            whole_key, whole = plain[head]
            if not isinstance(whole, Mapping) or sub in whole:
                raise _collision(f"{head}.{sub}", whole_key, key, index, sku)
            if head not in built:
                built[head] = dict(whole)
            built[head][sub] = value
        else:
            built.setdefault(head, {})[sub] = value
    for head, group in built.items():
        only_dotted = head not in plain
        if only_dotted and head != "attributes" and all(v in (None, "") for v in group.values()):
            out[head] = None
        else:
            out[head] = group
    return out


def _collision(field: str, first: str, second: str, index: int | None, sku: str | None) -> PriceError:
    return PriceError(field, [first, second],
                      f"both {first!r} and {second!r} give {field}; send one of them",
                      code="field_collision", index=index, sku=sku)


def _guess_sku(record: Mapping[str, Any], field_map: Mapping[str, str]) -> str | None:
    for key, value in record.items():
        if field_map.get(str(key), str(key)) == "sku" and isinstance(value, str | int):
            return str(value).strip() or None
    return None


# --- validation -----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class PriceUpdate:
    """One validated price update.

    `fields` holds exactly the record fields the message carried, validated and
    normalised: money as `Decimal`, times as UTC `datetime`, ``promo`` as a mapping
    ``{price, from, to}`` (from/to may be None), ``unit`` as ``{size, measure}``,
    ``attributes`` as a mapping whose None values delete that attribute. A field whose
    value is None is cleared by `merge_record` (``"promo": null`` ends a promotion).
    ``price`` is always there. `update_id` is the POS's own name for this change (duplicates
    of it are recognised); like `seq` it lives beside the record, not in it.
    """

    sku: str
    fields: Mapping[str, Any]
    seq: int | None = None
    valid_from: datetime | None = None
    update_id: str | None = None


def validate_update(
    record: object, *, index: int | None = None, default_currency: str | None = None,
    tz: tzinfo = timezone.utc,
) -> PriceUpdate:
    """Validate one (field-mapped) update; raises `PriceError` naming the field and value.

    Field rules are those of `render.context.Product.from_record` (what is stored always
    renders), plus: ``seq`` a non-negative integer (digits as text accepted); ``valid_from``
    and ``promo.from``/``promo.to`` ISO 8601 with an offset, or a bare date (00:00 in `tz`,
    the store's time zone, UTC unless given; for ``promo.to`` 23:59:59 that day) — a time
    without offset is refused, since it is ambiguous; decimal numbers of at most 32
    characters.
    Without ``currency`` the update is in `default_currency` (the store's), when given.
    Keys that are not canonical fields become attributes, as in rendering.
    """
    if default_currency is not None and not (
            isinstance(default_currency, str) and len(default_currency) == 3
            and default_currency.isascii() and default_currency.isalpha()):
        raise ValueError(f"default_currency must be an ISO 4217 code, got {default_currency!r}")
    if not isinstance(record, Mapping):
        raise PriceError("record", record, "expected an object with sku and price",
                         code="invalid_record", index=index)
    _check_refused(record, index)
    try:
        product = Product.from_record(record)
    except ProductError as exc:
        raise _from_product_error(exc, index) from None
    sku = product.sku

    def bad(field: str, value: object, reason: str) -> PriceError:
        return PriceError(field, value, reason, index=index, sku=sku)

    for name in _MONEY_FIELDS:
        value = getattr(product, name)
        if value is not None and len(str(value)) > _MAX_DECIMAL_TEXT:
            raise bad(name, record.get(name), f"at most {_MAX_DECIMAL_TEXT} characters as text")
    for group in ("promo", "unit"):
        raw = record.get(group)
        allowed = _GROUPS[group]
        if isinstance(raw, Mapping) and allowed is not None:
            for key in raw:
                if key not in allowed:  # a misspelt "to" must not make a promotion endless
                    raise bad(f"{group}.{key}", raw[key],
                              f"unknown; {group} has {', '.join(sorted(allowed))}")
    seq = _parse_seq(record.get("seq"), bad)
    update_id = _parse_update_id(record.get("update_id"), bad)
    valid_from = _parse_instant("valid_from", record.get("valid_from"), bad, tz)

    fields: dict[str, Any] = {"price": product.price}
    if "name" in record:
        fields["name"] = product.name or None
    if product.currency is not None:
        fields["currency"] = product.currency
    elif default_currency is not None:
        fields["currency"] = default_currency.upper()
    elif "currency" in record:
        fields["currency"] = None
    for name in ("regular_price", "vat_rate", "lowest_30d", "ean", "url", "image"):
        if name in record:
            fields[name] = getattr(product, name)
    if "promo" in record:
        fields["promo"] = _promo_fields(record["promo"], product.promo, bad, tz)
    if "unit" in record:
        unit = product.unit
        if unit is not None and len(str(unit.size)) > _MAX_DECIMAL_TEXT:
            raise bad("unit.size", unit.size, f"at most {_MAX_DECIMAL_TEXT} characters as text")
        fields["unit"] = (None if unit is None
                          else MappingProxyType({"size": unit.size, "measure": unit.measure}))
    attributes = _attribute_fields(record, bad)
    if attributes is not _ABSENT:
        fields["attributes"] = attributes
    return PriceUpdate(sku=sku, fields=MappingProxyType(fields), seq=seq, valid_from=valid_from,
                       update_id=update_id)


_ABSENT: Final[Any] = object()


def _promo_fields(
    raw: object, promo: Promo | None, bad: _Bad, tz: tzinfo,
) -> Mapping[str, Any] | None:
    if promo is None:
        return None
    assert isinstance(raw, Mapping)  # Product.from_record refused anything else
    start = _parse_instant("promo.from", raw.get("from"), bad, tz)
    end = _parse_instant("promo.to", raw.get("to"), bad, tz)
    if start is not None and end is not None and end < start:
        raise bad("promo.to", raw.get("to"), "ends before it starts")
    if len(str(promo.price)) > _MAX_DECIMAL_TEXT:
        raise bad("promo.price", raw.get("price"), f"at most {_MAX_DECIMAL_TEXT} characters as text")
    return MappingProxyType({"price": promo.price, "from": start, "to": end})


def _attribute_fields(record: Mapping[str, Any], bad: _Bad) -> Any:
    """The attributes an update sets (None values delete one), or `_ABSENT`."""
    extra = {str(k): v for k, v in record.items() if k not in CANONICAL_FIELDS}
    explicit = record.get("attributes", _ABSENT)
    if explicit is None:
        if extra:
            raise bad("attributes", None,
                      f"null clears every attribute, but the message also sets {sorted(extra)[0]!r}")
        return None
    if explicit is _ABSENT and not extra:
        return _ABSENT
    attrs = dict(extra)
    if explicit is not _ABSENT:
        assert isinstance(explicit, Mapping)  # Product.from_record refused anything else
        attrs.update({str(k): v for k, v in explicit.items()})
    for key, value in attrs.items():
        try:
            attrs[key] = _plain_json(value)
        except ValueError as exc:
            raise bad(f"attributes.{key}", value, str(exc)) from None
    return MappingProxyType(attrs)


def _plain_json(value: object, depth: int = 0) -> object:
    """A JSON value (Decimal for numbers with a fraction); floats become exact Decimals."""
    if depth > 8:
        raise ValueError("nested too deeply")
    if value is None or isinstance(value, str | bool | int | Decimal):
        if isinstance(value, Decimal) and not value.is_finite():
            raise ValueError("expected a finite number")
        return value
    if isinstance(value, float):
        return parse_decimal(value)
    if isinstance(value, Mapping):
        return {str(k): _plain_json(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain_json(v, depth + 1) for v in value]
    raise ValueError(f"expected a JSON value, got {type(value).__name__}")


def _parse_seq(value: object, bad: _Bad) -> int | None:
    if value is None:
        return None
    n: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        n = value
    elif isinstance(value, str):
        s = value.strip()
        if s.isascii() and s.isdigit() and len(s) <= 19:
            n = int(s)
    if n is None or not 0 <= n <= _MAX_SEQ:
        raise bad("seq", value, "expected a non-negative integer below 2**63")
    return n


def _parse_update_id(value: object, bad: _Bad) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or _UPDATE_ID.fullmatch(value) is None:
        raise bad("update_id", value, f"expected 1 to {MAX_UPDATE_ID} printable ASCII characters")
    return value


def _parse_instant(field: str, value: object, bad: _Bad, tz: tzinfo) -> datetime | None:
    """An aware UTC datetime; a bare date is 00:00 in `tz` (23:59:59 for ``promo.to``)."""
    if value is None or value == "":
        return None
    day: date | None = None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise bad(field, value, "a time needs its UTC offset")
        return value.astimezone(timezone.utc)
    if isinstance(value, date):
        day = value
    elif not isinstance(value, str):
        raise bad(field, value, "expected an ISO 8601 time such as 2026-12-01T06:00:00Z")
    elif len(value.strip()) == 10:
        try:
            day = date.fromisoformat(value.strip())
        except ValueError:
            raise bad(field, value, "expected an ISO 8601 date such as 2026-12-01") from None
    if day is not None:
        at = _END_OF_DAY if field == "promo.to" else time.min
        return datetime.combine(day, at, tzinfo=tz).astimezone(timezone.utc)
    assert isinstance(value, str)
    s = value.strip()
    try:
        dt = datetime.fromisoformat(s)
    except ValueError:
        raise bad(field, value, "expected an ISO 8601 time such as 2026-12-01T06:00:00Z") from None
    if dt.tzinfo is None:
        raise bad(field, value, "a time needs its UTC offset (2026-12-01T06:00:00Z or "
                                "+01:00); a bare date means the start of that day")
    return dt.astimezone(timezone.utc)


# --- stored records -------------------------------------------------------------------------

def _iso(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def _stored(value: object) -> Any:
    """A validated value in stored form: Decimal → str, datetime → ISO UTC, mappings → dict."""
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return value
    if kind is dict:
        return {str(k): _stored(v) for k, v in value.items()}  # type: ignore[attr-defined]
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return _iso(value)
    if isinstance(value, Mapping):
        return {str(k): _stored(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_stored(v) for v in value]
    return value


def merge_record(stored: Mapping[str, Any] | None, update: PriceUpdate) -> dict[str, Any]:
    """The product record after `update`: fields it carries replace the stored ones, None
    clears one, attributes merge name by name (None deletes one, ``"attributes": null``
    all). The result is in stored form (JSON values only; see the module docstring);
    `stored` may be in stored form or hold Decimal/datetime values."""
    if stored is None:
        out: dict[str, Any] = {"sku": update.sku}
    else:
        if stored.get("sku") != update.sku:
            raise ValueError(f"record of sku {stored.get('sku')!r} updated with sku {update.sku!r}")
        out = _stored(stored)
    before = _schedule(out) if "lowest_30d" in out else None
    for name, value in update.fields.items():
        if name == "attributes" and value is not None:
            attrs = dict(out.get("attributes") or {})
            for key, item in value.items():
                if item is None:
                    attrs.pop(key, None)
                else:
                    attrs[key] = _stored(item)
            if attrs:
                out["attributes"] = attrs
            else:
                out.pop("attributes", None)
        elif value is None:
            out.pop(name, None)
        elif name == "promo":
            out["promo"] = {k: _stored(v) for k, v in value.items() if v is not None}
        else:
            out[name] = _stored(value)
    if ("lowest_30d" in out and "lowest_30d" not in update.fields
            and before is not None and before != _schedule(out)):
        del out["lowest_30d"]  # the POS's statement was about the reduction it came with
    return out


def record_to_json(record: Mapping[str, Any]) -> str:
    """A record as compact JSON text (keys sorted), in stored form: Decimal values as
    their exact decimal text, datetimes as ISO 8601 UTC."""
    return json.dumps(_stored(record), sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False, allow_nan=False)


def record_from_json(text: str) -> dict[str, Any]:
    """The record `record_to_json` wrote, unchanged (numbers with a fraction, if any,
    come back as Decimal, never float)."""
    try:
        data = json.loads(text, parse_float=Decimal, parse_constant=_refuse_constant)
    except (ValueError, _NotANumber) as exc:
        raise PriceError("record", _short(text), f"stored record is not JSON: {exc}",
                         code="invalid_record") from None
    if not isinstance(data, dict):
        raise PriceError("record", _short(text), "stored record is not an object",
                         code="invalid_record")
    return data


@dataclass(frozen=True, slots=True)
class _Schedule:
    """What decides the selling price over time: base price, regular price, promotion."""

    price: Decimal
    regular: Decimal | None
    promo: Promo | None


def _schedule(record: Mapping[str, Any]) -> _Schedule:
    def money(value: object) -> Decimal | None:
        return None if value in (None, "") else parse_decimal(value)

    price = money(record.get("price"))
    if price is None:
        raise ValueError(f"record of sku {record.get('sku')!r} has no price")
    promo: Promo | None = None
    raw = record.get("promo")
    if isinstance(raw, Mapping) and raw.get("price") not in (None, ""):
        start, end = raw.get("from"), raw.get("to")
        promo = Promo(
            parse_decimal(raw["price"]),
            None if start in (None, "") else parse_when(start),
            None if end in (None, "") else parse_when(end, end_of_day=True),
        )
    return _Schedule(price, money(record.get("regular_price")), promo)


def _schedule_after(old: _Schedule | None, update: PriceUpdate) -> _Schedule:
    """`_schedule(merge_record(stored, update))`, from `_schedule(stored)`, without merging."""
    fields = update.fields
    regular = fields["regular_price"] if "regular_price" in fields else (
        None if old is None else old.regular)
    promo = None if old is None else old.promo
    if "promo" in fields:
        raw = fields["promo"]
        promo = None if raw is None else Promo(raw["price"], raw["from"], raw["to"])
    return _Schedule(fields["price"], regular, promo)


# --- price history --------------------------------------------------------------------------

def _utc(name: str, value: datetime) -> datetime:
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise ValueError(f"{name} must be a timezone-aware datetime, got {value!r}")
    return value.astimezone(timezone.utc)


@dataclass(frozen=True, slots=True)
class PricePeriod:
    """One price-history row: `price` was the selling price from `start` to `end`
    (inclusive; None: until a later row overrides it). `reduction` marks a promotion
    window, or a base price the POS marked as reduced (``regular_price > price``)."""

    price: Decimal
    start: datetime
    end: datetime | None
    reduction: bool

    def __post_init__(self) -> None:
        if not isinstance(self.price, Decimal) or not self.price.is_finite() or self.price < 0:
            raise ValueError(f"price must be a non-negative Decimal, got {self.price!r}")
        object.__setattr__(self, "start", _utc("start", self.start))
        if self.end is not None:
            object.__setattr__(self, "end", _utc("end", self.end))
            if self.end < self.start:
                raise ValueError(f"period ends ({self.end}) before it starts ({self.start})")

    def covers(self, t: datetime) -> bool:
        return self.start <= t and (self.end is None or t <= self.end)

    def to_row(self) -> tuple[str, str, str | None, int]:
        """``(price, start, end, reduction)`` for a database row: the exact decimal text,
        ISO 8601 UTC times (they sort as text), 0 or 1; `from_row` reverses it."""
        return (str(self.price), _iso(self.start), None if self.end is None else _iso(self.end),
                int(self.reduction))

    @classmethod
    def from_row(cls, price: str, start: str, end: str | None, reduction: int) -> PricePeriod:
        return cls(Decimal(price), datetime.fromisoformat(start),
                   None if end is None else datetime.fromisoformat(end), bool(reduction))


def periods_for_update(
    stored: Mapping[str, Any] | None, update: PriceUpdate, effective_at: datetime,
) -> list[PricePeriod]:
    """The history rows `update` adds when it takes effect at `effective_at`.

    Nothing when the selling schedule (price, regular price, promotion) is unchanged.
    Otherwise the base price, open-ended from `effective_at` (it overrides whatever older
    rows said from then on: a cancelled promotion ends there), then the promotion window
    if the record has one that is not over, from its start (or `effective_at` when that
    is later) to its end. `effective_at` must not be before the update's ``valid_from``.
    """
    effective_at = _utc("effective_at", effective_at)
    if update.valid_from is not None and effective_at < update.valid_from:
        raise ValueError(f"update of sku {update.sku!r} applied at {effective_at}, "
                         f"before its valid_from {update.valid_from}")
    old = None if stored is None else _schedule(stored)
    after = _schedule_after(old, update)
    if after == old:
        return []
    reduced = after.regular is not None and after.regular > after.price
    rows = [PricePeriod(after.price, effective_at, None, reduced)]
    promo = after.promo
    if promo is not None and (promo.end is None or promo.end >= effective_at):
        start = effective_at if promo.start is None else max(promo.start, effective_at)
        rows.append(PricePeriod(promo.price, start, promo.end, True))
    return rows


def _state_at(periods: Sequence[PricePeriod], t: datetime) -> PricePeriod | None:
    for period in reversed(periods):
        if period.covers(t):
            return period
    return None


def selling_price_at(periods: Sequence[PricePeriod], t: datetime) -> Decimal | None:
    """The price on the shelf at `t`: the last row covering `t`, None when none does."""
    state = _state_at(periods, _utc("t", t))
    return None if state is None else state.price


@dataclass(frozen=True, slots=True)
class _Piece:
    start: datetime
    end: datetime  # exclusive
    period: PricePeriod | None


def _timeline(periods: Sequence[PricePeriod], until: datetime) -> list[_Piece]:
    """The selling state as contiguous pieces before `until` (a sweep: later rows win)."""
    points = sorted({p.start for p in periods if p.start < until}
                    | {p.end + _TICK for p in periods if p.end is not None and p.end + _TICK < until})
    order = sorted(range(len(periods)), key=lambda i: periods[i].start)
    active: list[int] = []  # max-heap of row positions (negated), ended rows removed lazily
    j = 0
    pieces: list[_Piece] = []
    current: int | None = None
    for k, x in enumerate(points):
        while j < len(order) and periods[order[j]].start <= x:
            heapq.heappush(active, -order[j])
            j += 1
        while active and not periods[-active[0]].covers(x):
            heapq.heappop(active)
        top = -active[0] if active else None
        end = points[k + 1] if k + 1 < len(points) else until
        if pieces and top == current:
            pieces[-1] = _Piece(pieces[-1].start, end, pieces[-1].period)
        else:
            pieces.append(_Piece(x, end, None if top is None else periods[top]))
            current = top
    return pieces


def prior_price(
    periods: Sequence[PricePeriod], reduction_start: datetime, *, days: int = 30,
) -> Decimal | None:
    """The prior price of a reduction starting at `reduction_start` (Omnibus rule).

    The lowest selling price in the `days` days before it, over the instants at which the
    product had a price (on sale for less than that: the lowest since it went on sale).
    When the price just before the start was itself a reduction, the reduction is
    progressive: the rule applies to the start of its first step (walking back through
    reductions that follow each other without a break). Only prices before that start are
    read. None when the product had no price before it.
    """
    pieces, window = _lookback(periods, reduction_start, days)
    prices = [p.period.price for p in pieces if p.period is not None and p.end > window]
    return min(prices) if prices else None


def lookback_start(periods: Sequence[PricePeriod], t: datetime, *, days: int = 30) -> datetime:
    """The earliest instant whose price `prior_price` reads for a reduction in force at `t`:
    `days` before the start of its first step. A reduction that has lasted for months, or
    a progressive one, reaches back further than `days` before `t`: what history must be
    kept for the rule (`eslserver.retention`) is known only from the history itself."""
    return _lookback(periods, t, days)[1]


def _lookback(periods: Sequence[PricePeriod], reduction_start: datetime,
              days: int) -> tuple[list[_Piece], datetime]:
    """The timeline pieces before the first step of the reduction at `reduction_start`, and
    the start of its `days`-day window."""
    if days <= 0:
        raise ValueError(f"days must be positive, got {days}")
    start = _utc("reduction_start", reduction_start)
    pieces = [p for p in _timeline(periods, start) if p.end - p.start >= _SEAM]
    k = len(pieces)
    while k > 0:
        last = pieces[k - 1]
        if last.period is None or not last.period.reduction or last.end + _SEAM <= start:
            break
        start = last.start
        k -= 1
    return pieces[:k], start - timedelta(days=days)


def product_for_render(
    record: Mapping[str, Any], periods: Sequence[PricePeriod], now: datetime,
) -> dict[str, Any]:
    """The record for `render.context.Product.from_record` at time `now`: `record` with
    ``lowest_30d`` set to the prior price of the reduction in force at `now` (an active
    promotion, or ``regular_price > price``), computed from `periods` unless the POS sent
    its own; removed when there is no reduction or no earlier price (the template then
    falls back to the regular price). The promotion window stays as stored: rendering
    decides from `now` whether it shows."""
    now = _utc("now", now)
    out: dict[str, Any] = dict(_stored(record))
    try:
        schedule = _schedule(out)
    except ValueError as exc:
        raise PriceError("record", record.get("price"), str(exc), code="invalid_record",
                         sku=str(record.get("sku"))) from None
    in_force = ((schedule.promo is not None and schedule.promo.active(now))
                or (schedule.regular is not None and schedule.regular > schedule.price))
    if in_force and out.get("lowest_30d") in (None, ""):
        prior = prior_price(periods, now)
        if prior is None:
            out.pop("lowest_30d", None)
        else:
            out["lowest_30d"] = str(prior)
    elif not in_force:
        out.pop("lowest_30d", None)
    return out


def next_change_after(record: Mapping[str, Any], t: datetime) -> datetime | None:
    """The first instant after `t` at which the label's content changes by itself: the
    stored promotion starts, or ends (the instant after its inclusive end). None when
    nothing is planned."""
    t = _utc("t", t)
    promo = _schedule(record).promo
    if promo is None:
        return None
    times = [x for x in (promo.start, None if promo.end is None else promo.end + _TICK)
             if x is not None and x > t]
    return min(times) if times else None
