"""Rules a price update must meet beyond its shape: money in the currency's minor unit, a
promotion below the regular price, a ``valid_from`` that does not rewrite history, an
``image`` that names an upload, a ``sha256:`` digest or a ``sample:`` image (never a file).

They live apart from `eslserver.pricing` (the shape of an update and its history) because
they are about what a shelf may legally show: a label that says 0,00 zł for ``0.004``, a
"promotion" above the regular price, or a lowest-30-day price the shelf never showed are
each worse than refusing the item, naming field and value, so the POS can correct it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from types import MappingProxyType
from typing import Any, Final

from eslserver.pricing import PriceError, PriceUpdate
from render.image_refs import ImageRefError, parse_ref

__all__ = ["MINOR_UNITS", "minor_unit", "quantise", "check_update", "check_valid_from", "image_values"]

MINOR_UNITS: Final = MappingProxyType({
    # ISO 4217 currencies whose minor unit is not 2 decimal places (all others: 2)
    **dict.fromkeys(("BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX",
                     "UYI", "VND", "VUV", "XAF", "XOF", "XPF"), 0),
    **dict.fromkeys(("BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"), 3),
    **dict.fromkeys(("CLF", "UYW"), 4),
})
"""Decimal places of a currency's minor unit (ISO 4217 list one), where it is not 2."""

_MONEY: Final = ("price", "regular_price", "lowest_30d")


def minor_unit(currency: str | None) -> int:
    """Decimal places a price in `currency` may have (2 unless `MINOR_UNITS` says otherwise)."""
    return MINOR_UNITS.get((currency or "").upper(), 2)


def quantise(field: str, value: Decimal, places: int, *, index: int | None = None,
             sku: str | None = None, sent: object = None) -> Decimal:
    """`value` if it is a whole number of minor units, else `PriceError` naming `field` and
    the value as `sent` (default `value`): a digit beyond the minor unit (``0.004``,
    ``1E-30``) would be rounded away on the label, so it is refused, as is a negative zero
    (a sign the POS did not mean). Trailing zeros are fine (``1.500`` is 1.50); the digits
    are kept as sent (``2.5``).
    """
    def bad(reason: str) -> PriceError:
        return PriceError(field, str(value) if sent is None else sent, reason, index=index, sku=sku)

    if not value.is_finite():
        raise bad("expected a finite decimal number")
    if value.is_zero() and value.is_signed():
        raise bad("negative zero is not a price")
    try:
        exact = value.quantize(Decimal(1).scaleb(-places))
    except InvalidOperation:
        raise bad("too large a number") from None
    if exact != value:
        raise bad(f"more precision than the currency's minor unit ({places} decimal places)")
    return value


def check_update(update: PriceUpdate, *, index: int | None = None,
                 sent: Mapping[str, Any] | None = None) -> PriceUpdate:
    """`update` if its money is in whole minor units of its currency (`quantise`) and its
    promotion, if any, is below the regular price; else `PriceError` naming the field and
    its value as `sent` (the item before validation, when given)."""
    places = minor_unit(update.fields.get("currency"))
    fields = update.fields
    sku = update.sku
    raw: Mapping[str, Any] = sent if isinstance(sent, Mapping) else {}
    raw_promo = raw.get("promo") if isinstance(raw.get("promo"), Mapping) else {}
    for name in _MONEY:
        if fields.get(name) is not None:
            quantise(name, fields[name], places, index=index, sku=sku, sent=raw.get(name))
    promo = fields.get("promo")
    if promo is not None:
        promo_price = quantise("promo.price", promo["price"], places, index=index, sku=sku,
                               sent=raw_promo.get("price"))
        name = "price" if fields.get("regular_price") is None else "regular_price"
        regular = fields[name]
        if promo_price >= regular:
            raise PriceError("promo.price", raw_promo.get("price", str(promo_price)),
                             f"a promotion must be below the regular price ({name} {regular})",
                             index=index, sku=sku)
    for field, value in image_values(update):
        try:
            parse_ref(value)
        except ImageRefError as exc:  # a path, a URL: the server never reads what a POS names
            raise PriceError(field, value, exc.reason, index=index, sku=sku) from None
    return update


def image_values(update: PriceUpdate) -> list[tuple[str, str]]:
    """``(field, value)`` of the images `update` names: ``image``, and ``attributes.image``
    (a template's ``product.image`` falls back to it)."""
    out: list[tuple[str, str]] = []
    image = update.fields.get("image")
    if image is not None:
        out.append(("image", str(image)))
    attributes = update.fields.get("attributes")
    if isinstance(attributes, Mapping) and attributes.get("image") not in (None, ""):
        out.append(("attributes.image", str(attributes["image"]).strip()))
    return out


def check_valid_from(update: PriceUpdate, received: datetime, tolerance_s: int, *,
                     index: int | None = None) -> PriceUpdate:
    """`update` as it may be applied at `received`: a ``valid_from`` up to `tolerance_s` in
    the past applies as of receipt (None); an older one is refused, since history records
    what the shelf showed and a POS must not rewrite it (historic prices are imported by
    an admin, audited: ``esl import-history``)."""
    if update.valid_from is None or update.valid_from > received:
        return update
    if received - update.valid_from > timedelta(seconds=tolerance_s):
        raise PriceError("valid_from", update.valid_from.isoformat(),
                         f"more than {tolerance_s} s in the past; recorded prices cannot be rewritten "
                         "(historic prices are an admin import)", index=index, sku=update.sku)
    return replace(update, valid_from=None)
