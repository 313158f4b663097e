"""What a handheld scanner typed: a label (its MAC, or the barcode printed on it) or a product.

Pure text rules, no I/O; the pairing loop asks the server which reading is right.

A label scan is a MAC in any of the usual spellings — ``AA:BB:CC:DD:EE:FF``,
``aa-bb-cc-dd-ee-ff``, ``aabb.ccdd.eeff``, ``AABBCCDDEEFF`` — or a label barcode: the same
with a short letter prefix (``ESL-AABBCCDDEEFF``, ``L:AA:BB:…``) or at the end of a URL
(``https://…/l/AABBCCDDEEFF``). A product scan is a SKU or a barcode: EAN-13, EAN-8 or
UPC-A (a UPC-A is also looked up as the EAN-13 with a leading zero). Twelve decimal digits
read both as a bare MAC and as a UPC-A; the loop tries the label first.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["label_mac", "gtin_valid", "product_keys", "looks_like_gtin"]

_HEX: Final = "[0-9A-Fa-f]"
_MAC_FORMS: Final = (
    rf"{_HEX}{{2}}(?::{_HEX}{{2}}){{5}}",
    rf"{_HEX}{{2}}(?:-{_HEX}{{2}}){{5}}",
    rf"{_HEX}{{4}}\.{_HEX}{{4}}\.{_HEX}{{4}}",
    rf"{_HEX}{{12}}",
)
_MAC_RE: Final = re.compile("|".join(_MAC_FORMS))
_PREFIX_MAX: Final = 8


def label_mac(scan: str) -> str | None:
    """The MAC (``AA:BB:CC:DD:EE:FF``) a label scan names, or None when it is not one."""
    text = scan.strip()
    if "/" in text:  # a URL: the last path segment
        text = text.split("?", 1)[0].split("#", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    for mac in _without_prefix(text):
        if _MAC_RE.fullmatch(mac):
            digits = re.sub(r"[^0-9A-Fa-f]", "", mac).upper()
            return ":".join(digits[i:i + 2] for i in range(0, 12, 2))
    return None


def _without_prefix(text: str) -> list[str]:
    """`text`, and what follows each letter prefix it may carry (``ESL-``, ``L:``, ``ESL``): up
    to eight letters, then a separator — or no separator when a letter is not a hex digit, so
    that ``AABBCCDDEEFF00`` is not read as ``AA`` + a MAC."""
    out = [text]
    for k in range(1, min(_PREFIX_MAX, len(text) - 1) + 1):
        prefix, rest = text[:k], text[k:]
        if not (prefix.isascii() and prefix.isalpha()):
            break
        if rest[0] in "-:_ ":
            out.append(rest[1:])
        elif re.search("[G-Zg-z]", prefix):
            out.append(rest)
    return out


def gtin_valid(code: str) -> bool:
    """An EAN-8, UPC-A (12) or EAN-13 with a right check digit."""
    if not (code.isascii() and code.isdigit() and len(code) in (8, 12, 13)):
        return False
    digits = [int(c) for c in code]
    body, check = digits[:-1], digits[-1]
    total = sum(d * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(body)))
    return (10 - total % 10) % 10 == check


def looks_like_gtin(scan: str) -> bool:
    """All digits, of a GTIN's length (whether or not the check digit is right)."""
    text = scan.strip()
    return text.isascii() and text.isdigit() and len(text) in (8, 12, 13)


def product_keys(scan: str) -> tuple[str, ...]:
    """What to look a product scan up as, in order: the text itself (a SKU or an EAN), and for
    a UPC-A also its EAN-13 form."""
    text = scan.strip()
    keys = [text]
    if len(text) == 12 and gtin_valid(text):
        keys.append("0" + text)
    return tuple(keys)
