"""How big a POS message, an item and its fields may be, and which text is refused: the numbers, once.

A POS that sends a 10 MB name, an attribute blob of megabytes or ten thousand keys would
make every later change of that product store and audit megabytes; a string holding a NUL,
a lone surrogate (``"\\ud800"`` escaped in JSON) or bytes that are not UTF-8 cannot be
stored as text at all, and used to fail the whole message after it had been accepted. So
each item is checked here before it is validated, and an item that breaks a limit is
refused on its own, naming the field (``too_large``, ``invalid_text``); the rest of its batch
is applied. A message over `MAX_MESSAGE_BYTES` (MQTT) or `MAX_ITEMS` is refused whole,
unread. docs/mqtt.asyncapi.yaml and docs/operations.md state the same numbers.

A payload that is not UTF-8 is decoded with ``errors="surrogateescape"``
(`eslserver.pricing.parse_payload`): its bad bytes become U+DC80..U+DCFF, so only the items
whose strings hold them are refused here, not the whole message.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final

from eslserver.audit import json_default
from eslserver.pricing import MAX_UPDATE_ID, PriceError, PriceUpdate
from render.context import MAX_NAME

__all__ = [
    "LIMITS", "MAX_ATTRIBUTES_BYTES", "MAX_ATTRIBUTES_KEYS", "MAX_ITEMS", "MAX_MESSAGE_BYTES", "MAX_NAME",
    "MAX_TEXT", "MAX_UPDATE_ID", "check_attributes", "check_item", "check_items", "check_message_size",
    "check_update",
]

MAX_MESSAGE_BYTES: Final = 1 << 20
"""An MQTT message on ``pos/prices`` (1 MiB); HTTP bodies have their own limit (4 MiB)."""
MAX_ITEMS: Final = 1000
"""Items in one message (MQTT or HTTP)."""
MAX_TEXT: Final = 1000
"""Characters of any string of an item (a key, an attribute's value, ``image``…) that has no
tighter limit of its own."""
MAX_ATTRIBUTES_BYTES: Final = 8192
"""``attributes`` (the free ones an item sets, and the product's after merging) as compact JSON."""
MAX_ATTRIBUTES_KEYS: Final = 64
"""Names in ``attributes`` (likewise)."""

LIMITS: Final = MappingProxyType({
    "message_bytes": MAX_MESSAGE_BYTES, "items": MAX_ITEMS, "name_chars": MAX_NAME, "text_chars": MAX_TEXT,
    "attributes_bytes": MAX_ATTRIBUTES_BYTES, "attributes_keys": MAX_ATTRIBUTES_KEYS,
    "update_id_chars": MAX_UPDATE_ID,
})
"""Every limit by name (the documents and tests read them here). ``sku`` (64 characters) and
``url`` (512) are limited where they are validated (`render.context.Product.from_record`)."""

_BAD_TEXT: Final = re.compile("[\x00\ud800-\udfff]")
_FIELD_LIMITS: Final = MappingProxyType({"name": MAX_NAME})


def check_message_size(size: int, limit: int = MAX_MESSAGE_BYTES) -> None:
    """`PriceError` (``too_large``) for a message of more than `limit` bytes (MQTT: `MAX_MESSAGE_BYTES`)."""
    if size > limit:
        raise PriceError("message", f"{size} bytes", f"larger than the limit of {limit} bytes "
                         "for one POS message; not read (split it into smaller batches)", code="too_large")


def check_items(count: int) -> None:
    """`PriceError` (``too_large``) for a message of more than `MAX_ITEMS` items."""
    if count > MAX_ITEMS:
        raise PriceError("items", count, f"more than {MAX_ITEMS} items in one message; none applied "
                         "(split it into smaller batches)", code="too_large")


def check_item(record: Mapping[str, Any], *, index: int | None = None) -> None:
    """`PriceError` naming the first string of `record` (a key or a value, at any depth) that
    holds a NUL, a lone surrogate or bytes that are not UTF-8 (``invalid_text``), or is longer
    than its limit (``too_large``: `MAX_NAME` for ``name``, `MAX_TEXT` otherwise). `record`
    has canonical names (after the field map); `eslserver.pos_fields` says them back in the
    POS's. Walks without recursion, so nesting depth costs no stack."""
    sku = record.get("sku") if isinstance(record.get("sku"), str) else None
    stack: list[tuple[str, str, object]] = [(str(k), str(k), v) for k, v in reversed(list(record.items()))]
    while stack:
        path, key, value = stack.pop()
        _check_text(path, key, index, sku)
        if isinstance(value, str):
            _check_text(path, value, index, sku, limit=_FIELD_LIMITS.get(path, MAX_TEXT))
        elif isinstance(value, Mapping):
            stack.extend((f"{path}.{k}", str(k), v) for k, v in reversed(list(value.items())))
        elif isinstance(value, list):
            stack.extend((f"{path}.{i}", "", v) for i, v in reversed(list(enumerate(value))))


def _check_text(path: str, text: str, index: int | None, sku: str | None, *, limit: int = MAX_TEXT) -> None:
    bad = _BAD_TEXT.search(text)
    if bad is not None:
        char = bad.group()
        what = "a NUL character" if char == "\x00" else "a lone surrogate or bytes that are not UTF-8"
        raise PriceError(path, text, f"holds {what} (character {bad.start()}); text must be valid Unicode "
                         "without NUL", code="invalid_text", index=index, sku=sku)
    if len(text) > limit:
        raise PriceError(path, text, f"{len(text)} characters; at most {limit}", code="too_large",
                         index=index, sku=sku)


def check_attributes(attributes: Mapping[str, Any] | None, *, index: int | None = None,
                     sku: str | None = None, merged: bool = False) -> None:
    """`PriceError` (``too_large``) for attributes with more than `MAX_ATTRIBUTES_KEYS` names
    or more than `MAX_ATTRIBUTES_BYTES` as compact JSON; `merged`: they are the product's
    after this update (so that updates cannot grow a product without bound)."""
    if not attributes:
        return
    whose = "the product's attributes after this update" if merged else "attributes"
    if len(attributes) > MAX_ATTRIBUTES_KEYS:
        raise PriceError("attributes", f"{len(attributes)} names", f"{whose}: more than {MAX_ATTRIBUTES_KEYS} "
                         "names", code="too_large", index=index, sku=sku)
    size = len(json.dumps(attributes, default=json_default, ensure_ascii=False, separators=(",", ":")).encode())
    if size > MAX_ATTRIBUTES_BYTES:
        raise PriceError("attributes", f"{size} bytes", f"{whose}: more than {MAX_ATTRIBUTES_BYTES} bytes as "
                         "JSON", code="too_large", index=index, sku=sku)


def check_update(update: PriceUpdate, *, index: int | None = None) -> PriceUpdate:
    """`update` if the attributes it sets are within the limits (`check_attributes`)."""
    attributes = update.fields.get("attributes")
    if attributes is not None:
        check_attributes(attributes, index=index, sku=update.sku)
    return update
