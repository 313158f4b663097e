"""Price-update errors in the POS's own words.

A store's field map lets a POS keep its own names (``Cena`` for ``price``), and validation
works on the canonical names. A POS integrator reads the error against what their system
sent, so `read_update` maps and validates one item and, when it is refused, says it back in
the POS's vocabulary: ``field`` is the name the POS sent (for a missing field, the name the
map expects from it), ``canonical`` the field it stands for, and ``hint`` points at a key
that looks like a misspelling of a known one. Without the hint a misspelt ``Cenna`` is kept
quietly as a free attribute and the POS hears only "price=None: required".
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from datetime import timezone, tzinfo
from typing import Final

from eslserver import pos_limits
from eslserver.price_rules import check_update
from eslserver.pricing import (
    CANONICAL_FIELDS,
    FIELD_GROUPS,
    PriceError,
    PriceUpdate,
    apply_field_map,
    field_path,
    validate_update,
)

__all__ = ["SIMILAR", "read_update", "in_pos_terms", "pos_name", "suggest"]

SIMILAR: Final = 0.75
"""The `difflib` ratio (case ignored) from which an unknown key counts as a misspelling of a
known name: ``prcie``/``price`` 0.8, ``nmae``/``name`` 0.75, but ``unit``/``url`` 0.29."""


def read_update(item: object, field_map: Mapping[str, str], *, index: int | None = None,
                default_currency: str | None = None, tz: tzinfo = timezone.utc) -> PriceUpdate:
    """One POS item through the store's field map, the limits of text and size
    (`eslserver.pos_limits`: a NUL, a lone surrogate or an oversized field refuses this item
    only), `validate_update` and the rules of what a shelf may show
    (`eslserver.price_rules.check_update`: minor units, promotion below price).

    Raises `PriceError` in the POS's terms (`in_pos_terms`).
    """
    mapped = apply_field_map(item, field_map, index=index) if field_map and isinstance(item, Mapping) else item
    try:
        if isinstance(mapped, Mapping):
            pos_limits.check_item(mapped, index=index)
        update = pos_limits.check_update(validate_update(mapped, index=index, default_currency=default_currency,
                                                         tz=tz), index=index)
        return check_update(update, index=index, sent=mapped if isinstance(mapped, Mapping) else None)
    except PriceError as exc:
        in_pos_terms(exc, item, field_map)
        raise


def in_pos_terms(exc: PriceError, item: object, field_map: Mapping[str, str]) -> PriceError:
    """`exc` (a validation error naming a canonical field) with ``field`` set to the POS's
    name for it and ``hint`` to a suggestion, if any; returns `exc`. Errors about the
    message as a whole (``json``, ``record``) are left as they are. Errors of the field
    map itself (two keys for one field) already name the keys the POS sent."""
    if exc.canonical in ("json", "record") or not isinstance(item, Mapping):
        return exc
    path = tuple(exc.canonical.split(".", 1))
    exc.field = pos_name(path, (str(k) for k in item), field_map)
    exc.hint = _hint(exc, path, item, field_map)
    return exc


def _path(key: str, field_map: Mapping[str, str]) -> tuple[str, ...] | None:
    try:
        return field_path(key, field_map)
    except PriceError:  # a map target that is no field: `check_field_map` reports it
        return None


def pos_name(path: Sequence[str], keys: Iterable[str], field_map: Mapping[str, str]) -> str:
    """The POS's name for the canonical field `path` (``("promo", "price")``): the key it
    sent for it, else the key of the group it sent (``Promo.price``), else the name the map
    gives it (``CenaPromo``), else the canonical name."""
    sent = list(keys)
    depths = sorted({len(path), 1}, reverse=True)
    for names in (sent, list(field_map)):
        for depth in depths:
            for name in names:
                if _path(name, field_map) == tuple(path[:depth]):
                    return ".".join((name, *path[depth:]))
        if names is sent and len(path) == 2 and path[0] == "attributes" and path[1] in sent:
            return path[1]  # a name that is no field is kept as an attribute of that name
    return ".".join(path)


def suggest(name: str, choices: Iterable[str]) -> str | None:
    """The choice `name` most likely misspells (case ignored), or None."""
    by_lower: dict[str, str] = {}
    for choice in choices:  # the first of the choices wins over a later one in another case
        by_lower.setdefault(choice.lower(), choice)
    found = difflib.get_close_matches(name.lower(), list(by_lower), n=1, cutoff=SIMILAR)
    return by_lower[found[0]] if found else None


def _hint(exc: PriceError, path: tuple[str, ...], item: Mapping[object, object],
          field_map: Mapping[str, str]) -> str | None:
    allowed = FIELD_GROUPS.get(path[0]) if len(path) == 2 else None
    if allowed is not None and path[1] not in allowed:  # "promo.form": a sub-field misspelt
        match = suggest(path[1], allowed)
        return f"did you mean {exc.field.rsplit('.', 1)[0]}.{match}?" if match else None
    unknown = _unknown_keys(item, field_map)
    if exc.code == "missing_field":  # the missing field was sent under a misspelt name?
        wanted = [exc.field, ".".join(path), *(s for s in field_map if _path(s, field_map) == path)]
        for key in unknown:
            match = suggest(key, wanted)
            if match:
                return f"{key!r} is not a field: did you mean {match}?"
    vocabulary = [*sorted(CANONICAL_FIELDS), *field_map]
    for key in unknown:  # the item is refused anyway: point out any other misspelling now
        match = suggest(key, vocabulary)
        if match:
            return f"{key!r} is not a field: did you mean {match}?"
    return None


def _unknown_keys(item: Mapping[object, object], field_map: Mapping[str, str]) -> list[str]:
    """Names in `item` that are no field: top-level keys that would be kept as free
    attributes, and sub-fields a group does not have (``promo.prise``, ``Promo.prise``)."""
    out: list[str] = []
    for raw, value in item.items():
        key = str(raw)
        path = _path(key, field_map)
        if path is None:
            continue
        allowed = FIELD_GROUPS.get(path[0])
        if key not in field_map and path[0] not in CANONICAL_FIELDS:
            out.append(key)
        elif len(path) == 2 and allowed is not None and path[1] not in allowed:
            out.append(key)
        elif len(path) == 1 and allowed is not None and isinstance(value, Mapping):
            out.extend(f"{key}.{sub}" for sub in value if str(sub) not in allowed)
    return out
