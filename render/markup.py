"""The layout markup a template produces, parsed into `render.layout.Label`.

The markup is a tiny XML vocabulary::

    <label model="2.9-bwry" background="white">
      <rect x="0" y="0" w="296" h="24" fill="red"/>
      <text x="4" y="2" w="288" h="20" size="16" weight="bold" colour="white">Masło</text>
      <price x="150" y="40" w="140" h="60" size="56" currency="PLN">7.49</price>
      <line x1="0" y1="100" x2="296" y2="100" width="2"/>
      <qr x="230" y="70" size="56" ecc="M">https://example.com/p/1</qr>
      <barcode x="4" y="90" w="120" h="36">5901234123457</barcode>
      <image x="0" y="0" w="400" h="480" src="sample:apple" fit="cover" dither="atkinson"/>
    </label>

Attribute names are the dataclass field names of `render.layout` (``min_size``,
``max_lines``, ``show_digits``...), with ``x y w h`` for an element's box. The element's text
content is the text (XML whitespace collapsed to single spaces, no-break spaces kept; ``<br/>`` is a hard line break,
the only element allowed inside another), the price amount (a decimal,
``.`` or ``,`` as separator), the QR data or the EAN-13 digits. Booleans are
``true/false/yes/no/1/0``.

The parser is the standard library's expat, so every element carries the line it starts on;
every problem, including a `LayoutError` raised by the dataclasses, becomes one
`MarkupError` naming the element, the attribute, the value and the line. Document type
declarations (and with them entity expansion attacks) are refused.

Markup shaped the way templates write it (one element per line) first takes a faster path
(`_parse_lines`, below) that caches elements by their line and never reports an error itself:
anything it does not handle, and anything wrong, is parsed again by expat, so the labels built
and the errors raised are exactly expat's.

``esl-line`` is reserved: the template engine stamps it on every element so that an error
can name the template line the element came from (`MarkupError.source_line`).
"""

from __future__ import annotations

import difflib
import re
import xml.parsers.expat
from collections.abc import Callable
from dataclasses import dataclass, fields
from decimal import Decimal
from typing import Any, Final

from render.context import parse_decimal
from render.layout import (
    QR, Barcode, Box, Element, Image, Label, LayoutError, Line, Price, Rect, Text,
)

__all__ = ["MarkupError", "parse_markup", "ELEMENTS", "LINE_ATTRIBUTE", "MAX_MARKUP_CHARS"]

LINE_ATTRIBUTE: Final = "esl-line"
"""Reserved attribute carrying the template line an element came from."""

MAX_MARKUP_CHARS: Final = 2_000_000
_MAX_ELEMENTS: Final = 5_000
# Elements built from identical markup are shared: the static parts of a template cost one
# dictionary look-up per label, and identical elements are the same object (which makes the
# batch's static-prefix comparison cheap). Values are frozen, so sharing is safe; the cache
# is cleared when full (a plain dict is thread-safe for these single operations).
_ELEMENT_CACHE: dict[tuple[str, tuple[tuple[str, str], ...], tuple[str, ...]], Element] = {}
_ELEMENT_CACHE_SIZE: Final = 8192
_ATTRS_CACHE: dict[tuple[str, tuple[tuple[str, str], ...]], dict[str, Any]] = {}
_XML_SPACE: Final = re.compile(r"[ \t\r\n]+")  # XML whitespace only: no-break spaces stay


class MarkupError(ValueError):
    """Markup that cannot become a label. The message names element, attribute, value, line.

    ``line`` is the line in the markup; ``source_line`` the template line when the element
    carried an ``esl-line`` stamp (or the nearest preceding stamped element's line).
    """

    def __init__(
        self,
        message: str,
        *,
        line: int | None,
        element: str | None = None,
        attribute: str | None = None,
        value: str | None = None,
        source_line: int | None = None,
    ) -> None:
        self.reason = message
        self.line = line
        self.element = element
        self.attribute = attribute
        self.value = value
        self.source_line = source_line
        where = f"line {line}" if line is not None else "markup"
        what = f"<{element}>" if element else ""
        if attribute is not None:
            what += f" attribute {attribute}={value!r}"
        elif value is not None:
            what += f" content {value!r}"
        super().__init__(f"{where}: {what + ': ' if what else ''}{message}")


# --- value parsers -----------------------------------------------------------------------

def _int(text: str) -> int:
    if text.isdigit() and text.isascii() and len(text) <= 9:  # the common case, fast
        return int(text)
    s = text.strip()
    digits = s[1:] if s[:1] in ("+", "-") else s
    if not (digits.isascii() and digits.isdigit()) or len(s) > 9:
        raise ValueError("expected a whole number")
    return int(s)


_TRUE = frozenset({"true", "yes", "1", "on"})
_FALSE = frozenset({"false", "no", "0", "off"})


def _bool(text: str) -> bool:
    s = text.strip().lower()
    if s in _TRUE:
        return True
    if s in _FALSE:
        return False
    raise ValueError("expected true or false")


def _str(text: str) -> str:
    return text.strip()


def _opt_colour(text: str) -> str | None:
    s = text.strip().lower()
    return None if s in ("", "none", "transparent") else s


def _lower(text: str) -> str:
    return text.strip().lower()


# --- element table -------------------------------------------------------------------------

_Parser = Callable[[str], Any]


@dataclass(frozen=True, slots=True)
class _Spec:
    """How one element's attributes and content become a layout dataclass."""

    cls: type
    attributes: dict[str, _Parser]
    required: tuple[str, ...]
    box: bool
    content: str | None  # dataclass field the text content goes to
    content_parser: _Parser | None = None
    content_required: bool = False


_BOX_ATTRS: dict[str, _Parser] = {"x": _int, "y": _int, "w": _int, "h": _int}

ELEMENTS: Final[dict[str, _Spec]] = {
    "text": _Spec(Text, {**_BOX_ATTRS, "size": _int, "min_size": _int, "weight": _lower,
                         "align": _lower, "valign": _lower, "max_lines": _int,
                         "colour": _lower, "strike": _bool},
                  ("x", "y", "w", "h"), True, "content"),
    "price": _Spec(Price, {**_BOX_ATTRS, "currency": _str, "size": _int, "colour": _lower,
                           "align": _lower, "strike": _bool, "weight": _lower},
                   ("x", "y", "w", "h"), True, "amount", parse_decimal, True),
    "rect": _Spec(Rect, {**_BOX_ATTRS, "fill": _opt_colour, "outline": _opt_colour,
                         "width": _int, "radius": _int},
                  ("x", "y", "w", "h"), True, None),
    "line": _Spec(Line, {"x1": _int, "y1": _int, "x2": _int, "y2": _int, "colour": _lower,
                         "width": _int},
                  ("x1", "y1", "x2", "y2"), False, None),
    "qr": _Spec(QR, {"x": _int, "y": _int, "size": _int, "ecc": lambda s: s.strip().upper(),
                     "colour": _lower},
                ("x", "y", "size"), False, "data", _str, True),
    "barcode": _Spec(Barcode, {**_BOX_ATTRS, "colour": _lower, "show_digits": _bool},
                     ("x", "y", "w", "h"), True, "digits", _str, True),
    "image": _Spec(Image, {**_BOX_ATTRS, "src": _str, "fit": _lower, "dither": _lower},
                   ("x", "y", "w", "h", "src"), True, None),
}
"""Element name → how it is built. Public so that tools (template checks, docs) can list it."""

_LABEL_ATTRS: dict[str, _Parser] = {"model": _str, "background": _lower}


def _suggest(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


# --- parser ----------------------------------------------------------------------------------

class _Builder:
    """expat callbacks collecting elements; raises MarkupError from inside the callbacks."""

    def __init__(self, parser: xml.parsers.expat.XMLParserType) -> None:
        self._p = parser
        self.model: str | None = None
        self.background: str = "white"
        self.elements: list[Element] = []
        self._depth = 0
        self._open: tuple[str, dict[str, str], int, int | None] | None = None
        self._chunks: list[str] = []
        self._segments: list[str] = []
        self.last_source_line: int | None = None

    def _err(self, message: str, *, line: int | None = None, element: str | None = None,
             attribute: str | None = None, value: str | None = None,
             source_line: int | None = None) -> MarkupError:
        return MarkupError(
            message, line=self._p.CurrentLineNumber if line is None else line,
            element=element, attribute=attribute, value=value,
            source_line=source_line if source_line is not None else self.last_source_line,
        )

    def start(self, name: str, attrs: dict[str, str]) -> None:
        line = self._p.CurrentLineNumber
        source_line: int | None = None
        if LINE_ATTRIBUTE in attrs:
            raw = attrs.pop(LINE_ATTRIBUTE)
            if raw.isdigit():
                source_line = int(raw)
                self.last_source_line = source_line
        self._depth += 1
        if self._depth == 1:
            if name != "label":
                raise self._err("the root element must be <label>", element=name)
            for key, raw in attrs.items():
                if key not in _LABEL_ATTRS:
                    raise self._err(f"unknown attribute{_suggest(key, list(_LABEL_ATTRS))}",
                                    element=name, attribute=key, value=raw)
            if "model" not in attrs or not attrs["model"].strip():
                raise self._err("missing attribute model", element=name)
            self.model = attrs["model"].strip()
            if "background" in attrs:
                self.background = _lower(attrs["background"])
            return
        if self._depth > 2:
            parent = self._open[0] if self._open else "label"
            if name == "br" and parent == "text" and self._depth == 3 and not attrs:
                self._segments.append("".join(self._chunks))
                self._chunks = []
                return
            raise self._err(f"elements cannot be nested inside <{parent}>"
                            + (" (only <br/> inside <text>)" if parent == "text" else ""),
                            element=name)
        if name not in ELEMENTS:
            raise self._err(f"unknown element{_suggest(name, list(ELEMENTS))}; expected one of "
                            f"{', '.join(ELEMENTS)}", element=name)
        if len(self.elements) >= _MAX_ELEMENTS:
            raise self._err(f"more than {_MAX_ELEMENTS} elements", element=name)
        self._open = (name, attrs, line, source_line)
        self._chunks = []
        self._segments = []

    def data(self, text: str) -> None:
        if self._depth == 2:
            self._chunks.append(text)
        elif text.strip():
            where = "<label>" if self._depth == 1 else "the document"
            raise self._err(f"text {text.strip()[:40]!r} outside an element in {where}",
                            element="label" if self._depth == 1 else None)

    def end(self, name: str) -> None:
        self._depth -= 1
        if self._depth == 1 and self._open is not None:
            self._segments.append("".join(self._chunks))
            name, attrs, line, source_line = self._open
            key = (name, tuple(attrs.items()), tuple(self._segments))
            element = _ELEMENT_CACHE.get(key)
            if element is None:
                element = self._build(name, attrs, line, source_line, self._segments)
                if len(_ELEMENT_CACHE) >= _ELEMENT_CACHE_SIZE:
                    _ELEMENT_CACHE.clear()
                _ELEMENT_CACHE[key] = element
            self.elements.append(element)
            self._open = None

    def _build(self, name: str, attrs: dict[str, str], line: int, source_line: int | None,
               segments: list[str]) -> Element:
        spec = ELEMENTS[name]

        def err(msg: str, attr: str | None = None, val: str | None = None) -> MarkupError:
            return self._err(msg, line=line, element=name, attribute=attr, value=val,
                             source_line=source_line)

        akey = (name, tuple(attrs.items()))
        parsed = _ATTRS_CACHE.get(akey)
        if parsed is None:
            parsed = _attributes(spec, attrs, err)
            if len(_ATTRS_CACHE) >= _ELEMENT_CACHE_SIZE:
                _ATTRS_CACHE.clear()
            _ATTRS_CACHE[akey] = parsed
        return _element(spec, name, parsed, attrs, segments, err)


_ErrorFactory = Callable[..., MarkupError]


def _attributes(spec: _Spec, attrs: dict[str, str], err: _ErrorFactory) -> dict[str, Any]:
    """Parsed attributes (with the Box built), cached by the callers: positions and sizes
    repeat from label to label even where the content differs."""
    kw: dict[str, Any] = {}
    for key, raw in attrs.items():
        parse = spec.attributes.get(key)
        if parse is None:
            raise err(f"unknown attribute{_suggest(key, list(spec.attributes))}; expected "
                      f"one of {', '.join(spec.attributes)}", key, raw)
        try:
            kw[key] = parse(raw)
        except ValueError as exc:
            raise err(str(exc), key, raw) from None
    for key in spec.required:
        if key not in kw:
            raise err(f"missing attribute {key}")
    if spec.box:
        try:
            box = Box(kw.pop("x"), kw.pop("y"), kw.pop("w"), kw.pop("h"))
        except LayoutError as exc:
            attr, val = _attribute_of(exc, attrs)
            raise err(str(exc), attr, val) from None
        kw["box"] = box
    return kw


def _element(spec: _Spec, name: str, parsed: dict[str, Any], attrs: dict[str, str],
             segments: list[str], err: _ErrorFactory) -> Element:
    """One element from its parsed attributes and its text segments (split at ``<br/>``)."""
    kw = dict(parsed)
    if spec.content is None:
        if any(not seg.isspace() for seg in segments if seg):
            text = _XML_SPACE.sub(" ", "".join(segments)).strip(" ")
            raise err(f"<{name}> takes no text content", None, text[:80])
        text = ""
    elif spec.content_parser is None:
        if len(segments) == 1:
            text = kw[spec.content] = _XML_SPACE.sub(" ", segments[0]).strip(" ")
        else:
            text = kw[spec.content] = "\n".join(
                _XML_SPACE.sub(" ", seg).strip(" ") for seg in segments).strip("\n")
    else:
        text = _XML_SPACE.sub(" ", "".join(segments)).strip(" ")
        if not text and spec.content_required:
            raise err(f"<{name}> needs text content ({spec.content})")
        try:
            kw[spec.content] = spec.content_parser(text)
        except ValueError as exc:
            raise err(str(exc), None, text[:80]) from None
    try:
        element: Element = spec.cls(**kw)
    except LayoutError as exc:
        attr, val = _attribute_of(exc, attrs)
        if attr is None and spec.content is not None:
            raise err(str(exc), None, text[:80]) from None
        raise err(str(exc), attr, val) from None
    return element


def _attribute_of(exc: LayoutError, attrs: dict[str, str]) -> tuple[str | None, str | None]:
    """The markup attribute a LayoutError message is about (messages start with the field)."""
    message = str(exc)
    for key in sorted(attrs, key=len, reverse=True):
        if message.startswith(key + " ") or message.startswith(f"{key} must") or f" {key}=" in message:
            return key, attrs[key]
    return None, None


def _refuse_doctype(*_args: object) -> None:
    raise MarkupError("document type declarations are not allowed", line=None)


# --- the fast path -----------------------------------------------------------------------------
#
# Templates write one element per line, so a label's markup is mostly lines seen before
# (frames, headers, the store name) and lines that differ only in their text (name, price).
# `_parse_lines` handles exactly that shape without expat: a strict subset of XML (double-quoted
# attributes separated by spaces, the five named entities and valid character references,
# ``<br/>`` in text, no comments, CDATA or declarations) where every line is the root start
# tag, one whole element, ``</label>`` or blank. It caches elements by their exact line and
# parsed attributes by their exact start tag. Anything else, and every error, goes to the
# expat parser, so what is accepted, what is built and every error message stay the same.

_LINE_CACHE: dict[str, Element] = {}
_MAX_CACHED_LINE: Final = 2048
_START_CACHE: dict[str, _Start] = {}
_ROOT_CACHE: dict[str, tuple[str, str]] = {}
_START_TAG: Final = re.compile(
    r'<([a-z]+)((?: +[A-Za-z_][A-Za-z0-9_.-]*="[^"<\t]*")*) *(/?)>')
_ATTRIBUTE: Final = re.compile(r' +([A-Za-z_][A-Za-z0-9_.-]*)="([^"]*)"')
# Characters XML refuses, plus a few it allows but that are not worth a fast path for.
_SLOW_CHARS: Final = "\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff\ufdd0-\ufdef\ufffe\uffff"
_SLOW_CHAR: Final = re.compile(f"[{_SLOW_CHARS}]")
# Content that is not plain text: a slow character, markup, a reference or a CDATA end.
_NOT_PLAIN: Final = re.compile(f"[{_SLOW_CHARS}<&]|]]>")
_NAMED_ENTITIES: Final = {"amp": "&", "lt": "<", "gt": ">", "quot": '"', "apos": "'"}
_HEX_DIGITS: Final = frozenset("0123456789abcdefABCDEF")


class _Slow(Exception):
    """The markup is outside what the fast path handles: parse it with expat."""


def _slow_err(*_args: object) -> MarkupError:
    raise _Slow


# The references templates write (and autoescape makes), decoded with `str.replace`: none of
# the characters they stand for is "&", so no replacement can make or break another reference,
# and "&amp;" goes last.
_COMMON_REFERENCES: Final = (("&#160;", "\u00a0"), ("&#34;", '"'), ("&#39;", "'"), ("&lt;", "<"),
                             ("&gt;", ">"), ("&quot;", '"'), ("&apos;", "'"))


def _unescape(text: str) -> str:
    """Character and entity references resolved as expat resolves them (else `_Slow`)."""
    if "&" not in text:
        return text
    out = text
    for reference, char in _COMMON_REFERENCES:
        if reference in out:
            out = out.replace(reference, char)
    if "&" not in out.replace("&amp;", ""):
        return out.replace("&amp;", "&")
    return _unescape_all(text)


def _unescape_all(text: str) -> str:
    pieces = text.split("&")
    out = [pieces[0]]
    for piece in pieces[1:]:
        ref, sep, rest = piece.partition(";")
        if not sep:
            raise _Slow
        if ref[:1] == "#":
            digits = ref[2:] if ref[1:2] == "x" else ref[1:]
            if not digits or not digits.isascii() or len(digits) > 12:
                raise _Slow
            if ref[1:2] == "x":
                if not _HEX_DIGITS.issuperset(digits):
                    raise _Slow
                code = int(digits, 16)
            elif digits.isdigit():
                code = int(digits)
            else:
                raise _Slow
            if not (code in (0x9, 0xA, 0xD) or 0x20 <= code <= 0xD7FF
                    or 0xE000 <= code <= 0xFFFD or 0x10000 <= code <= 0x10FFFF):
                raise _Slow
            out.append(chr(code))
        else:
            char = _NAMED_ENTITIES.get(ref)
            if char is None:
                raise _Slow
            out.append(char)
        out.append(rest)
    return "".join(out)


def _start_tag(tag: str) -> tuple[str, dict[str, str], bool]:
    """Element name, attributes (``esl-line`` dropped) and whether `tag` closes itself."""
    m = _START_TAG.fullmatch(tag)
    if m is None:
        raise _Slow
    attrs: dict[str, str] = {}
    count = 0
    for key, raw in _ATTRIBUTE.findall(m.group(2)):
        if _SLOW_CHAR.search(raw):
            raise _Slow
        attrs[key] = _unescape(raw)
        count += 1
    if len(attrs) != count:  # a duplicate attribute: expat's error
        raise _Slow
    attrs.pop(LINE_ATTRIBUTE, None)
    return m.group(1), attrs, m.group(3) == "/"


def _root(line: str) -> tuple[str, str]:
    """(model, background) of a ``<label ...>`` start tag that passes `_Builder.start`."""
    cached = _ROOT_CACHE.get(line)
    if cached is not None:
        return cached
    name, attrs, closed = _start_tag(line)
    if name != "label" or closed or not attrs.keys() <= _LABEL_ATTRS.keys():
        raise _Slow
    model = attrs.get("model", "").strip()
    if not model:
        raise _Slow
    background = _lower(attrs["background"]) if "background" in attrs else "white"
    try:  # `Label` checks its background only, never its elements: check it once here
        Label(model, background)  # type: ignore[arg-type]
    except LayoutError:
        raise _Slow from None
    if len(_ROOT_CACHE) >= _ELEMENT_CACHE_SIZE:
        _ROOT_CACHE.clear()
    _ROOT_CACHE[line] = (model, background)
    return model, background


def _ean13_ok(digits: str) -> bool:
    """`Barcode`'s check: 13 ASCII digits whose last is `ean13_check_digit` of the others
    (computed on bytes, a few times faster; compared with it in tests)."""
    if not (len(digits) == 13 and digits.isascii() and digits.isdigit()):
        return False
    b = digits.encode("ascii")
    total = sum(b[0:12:2]) + 3 * sum(b[1:12:2]) - 48 * 24  # 48 = ord("0"), 6 + 3 * 6 digits
    return b[12] - 48 == (10 - total % 10) % 10


# What the element's own checks ask of its content (the other fields were checked when the
# start tag was first seen, by building the element with `placeholder` as its content). A
# content that passes its guard would pass the element's checks, so the element can be put
# together field by field, without running checks whose cost is mostly formatting the error
# messages they do not raise. tests/test_markup.py holds these guards to the classes' checks.
_CONTENT_GUARDS: Final[dict[type, tuple[Any, Callable[[Any], bool] | None]]] = {
    Text: ("", None),  # Text checks none of its content
    Price: (Decimal(0), lambda amount: amount >= 0),  # parse_decimal: a finite Decimal
    Barcode: ("0000000000000", _ean13_ok),
    QR: ("0", lambda data: 0 < len(data.encode()) <= 1024),
}


@dataclass(frozen=True, slots=True)
class _Start:
    """A start tag seen before: the element it opens and its attributes parsed; for the
    elements in `_CONTENT_GUARDS`, every field but the content, already checked."""

    name: str
    spec: _Spec
    parsed: dict[str, Any]
    attrs: dict[str, str]
    close: str
    closed: bool
    content: str  # the field the text content goes to ("" for none)
    fields: tuple[tuple[str, Any], ...] | None  # None: build the element with `_element`
    guard: Callable[[Any], bool] | None  # None: any content will do


_set_field: Final = object.__setattr__


def _start(tag: str) -> _Start:
    started = _START_CACHE.get(tag)
    if started is not None:
        return started
    name, attrs, closed = _start_tag(tag)
    spec = ELEMENTS.get(name)
    if spec is None:
        raise _Slow
    parsed = _attributes(spec, attrs, _slow_err)
    known: tuple[tuple[str, Any], ...] | None = None
    guard: Callable[[Any], bool] | None = None
    if spec.content is not None and spec.cls in _CONTENT_GUARDS:
        placeholder, guard = _CONTENT_GUARDS[spec.cls]
        try:
            proto = spec.cls(**parsed, **{spec.content: placeholder})
        except LayoutError:  # the attributes are wrong: leave the error to the expat path
            raise _Slow from None
        known = tuple((f.name, getattr(proto, f.name)) for f in fields(spec.cls)
                      if f.name != spec.content)
    started = _Start(name, spec, parsed, attrs, f"</{name}>", closed, spec.content or "", known,
                     guard)
    if len(_START_CACHE) >= _ELEMENT_CACHE_SIZE:
        _START_CACHE.clear()
    _START_CACHE[tag] = started
    return started


def _collapse(text: str) -> str:
    """``_XML_SPACE.sub(" ", text).strip(" ")``, skipping the substitution when it is a no-op."""
    if "  " in text or "\t" in text or "\n" in text or "\r" in text:
        text = _XML_SPACE.sub(" ", text)
    return text.strip(" ")


def _line_element(line: str) -> Element:
    """The element one whole line of markup holds (``<name ...>text</name>`` or ``<name .../>``)."""
    end = line.find(">") + 1
    if end == 0 or line[0] != "<":
        raise _Slow
    tag = line[:end]
    st = _START_CACHE.get(tag)
    if st is None:
        st = _start(tag)
    if end == len(line):  # <name .../>, alone on its line
        if not st.closed:
            raise _Slow
        segments = [""]
    else:  # <name ...>text</name>
        if st.closed or not line.endswith(st.close):
            raise _Slow
        content = line[end:len(line) - len(st.close)]
        if _NOT_PLAIN.search(content) is None:
            segments = [content]
        elif _SLOW_CHAR.search(content) or "]]>" in content:
            raise _Slow
        elif "<" in content:
            if st.name != "text":
                raise _Slow
            segments = content.split("<br/>")
            if any("<" in seg for seg in segments):
                raise _Slow
            segments = [_unescape(seg) for seg in segments]
        else:
            segments = [_unescape(content)]
    if st.fields is None:
        return _element(st.spec, st.name, st.parsed, st.attrs, segments, _slow_err)
    # The content exactly as `_element` makes it.
    spec = st.spec
    value: Any
    if spec.content_parser is None:
        if len(segments) == 1:
            value = _collapse(segments[0])
        else:
            value = "\n".join(_collapse(seg) for seg in segments).strip("\n")
    else:
        text = _collapse("".join(segments))
        if not text and spec.content_required:
            raise _Slow
        value = spec.content_parser(text)  # a ValueError sends the line to the expat path
    if st.guard is not None and not st.guard(value):
        raise _Slow
    element: Element = object.__new__(spec.cls)
    for field_name, field_value in st.fields:
        _set_field(element, field_name, field_value)
    _set_field(element, st.content, value)
    return element


def _parse_lines(markup: str) -> Label:
    """The fast path (see above); raises `_Slow` for anything it does not handle."""
    if "\r" in markup:
        raise _Slow
    lines = iter(markup.split("\n"))
    for raw in lines:  # the first line that is not blank: the root start tag
        line = raw.strip(" \t")
        if line:
            model, background = _root(line)
            break
    else:
        raise _Slow
    elements: list[Element] = []
    cache = _LINE_CACHE
    for raw in lines:
        line = raw.strip(" \t")
        element = cache.get(line)  # never "" or "</label>": only element lines are cached
        if element is None:
            if line == "</label>":
                break
            if not line:
                continue
            try:
                element = _line_element(line)
            except (MarkupError, ValueError) as exc:
                raise _Slow from exc
            if len(line) <= _MAX_CACHED_LINE:  # long lines hardly repeat: do not hoard them
                if len(cache) >= _ELEMENT_CACHE_SIZE:
                    cache.clear()
                cache[line] = element
        elements.append(element)
    else:
        raise _Slow  # no </label>
    for raw in lines:  # after </label>: blank lines only
        if raw.strip(" \t"):
            raise _Slow
    if len(elements) > _MAX_ELEMENTS:
        raise _Slow
    label = object.__new__(Label)  # what Label(model, background, elements) makes (see `_root`)
    _set_field(label, "model", model)
    _set_field(label, "background", background)
    _set_field(label, "elements", tuple(elements))
    return label


def parse_markup(markup: str) -> Label:
    """Parse layout markup into a `Label`; every problem raises `MarkupError`."""
    if len(markup) > MAX_MARKUP_CHARS:
        raise MarkupError(f"markup is {len(markup)} characters, more than {MAX_MARKUP_CHARS}",
                          line=None)
    try:
        return _parse_lines(markup)
    except _Slow:
        pass
    return _parse_expat(markup)


def _parse_expat(markup: str) -> Label:
    """The reference parser: all of the markup language, and every error with its line."""
    parser = xml.parsers.expat.ParserCreate("utf-8")
    builder = _Builder(parser)
    parser.StartElementHandler = builder.start
    parser.EndElementHandler = builder.end
    parser.CharacterDataHandler = builder.data
    parser.StartDoctypeDeclHandler = _refuse_doctype
    parser.EntityDeclHandler = _refuse_doctype
    parser.ProcessingInstructionHandler = None
    try:
        parser.Parse(markup, True)
    except MarkupError as exc:
        if exc.line is None:
            exc.line = parser.CurrentLineNumber
            exc.args = (f"line {exc.line}: {exc.reason}",)
        raise
    except xml.parsers.expat.ExpatError as exc:
        raise MarkupError(
            f"malformed markup: {xml.parsers.expat.ErrorString(exc.code)} (column {exc.offset + 1})",
            line=exc.lineno, source_line=builder.last_source_line,
        ) from None
    if builder.model is None:
        raise MarkupError("empty markup: expected a <label> element", line=1)
    try:
        return Label(builder.model, builder.background, tuple(builder.elements))  # type: ignore[arg-type]
    except LayoutError as exc:
        raise MarkupError(str(exc), line=1, element="label", attribute="background",
                          value=builder.background) from None
