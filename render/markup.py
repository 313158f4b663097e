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

``esl-line`` is reserved: the template engine stamps it on every element so that an error
can name the template line the element came from (`MarkupError.source_line`).
"""

from __future__ import annotations

import difflib
import re
import xml.parsers.expat
from collections.abc import Callable
from dataclasses import dataclass
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
            parsed = self._attributes(spec, name, attrs, err)
            if len(_ATTRS_CACHE) >= _ELEMENT_CACHE_SIZE:
                _ATTRS_CACHE.clear()
            _ATTRS_CACHE[akey] = parsed
        kw = dict(parsed)
        if spec.content is None:
            if any(not seg.isspace() for seg in segments if seg):
                text = _XML_SPACE.sub(" ", "".join(segments)).strip(" ")
                raise err(f"<{name}> takes no text content", None, text[:80])
            text = ""
        elif spec.content_parser is None:
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

    @staticmethod
    def _attributes(spec: _Spec, name: str, attrs: dict[str, str],
                    err: Callable[..., MarkupError]) -> dict[str, Any]:
        """Parsed attributes (with the Box built), cached by the caller: positions and sizes
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


def _attribute_of(exc: LayoutError, attrs: dict[str, str]) -> tuple[str | None, str | None]:
    """The markup attribute a LayoutError message is about (messages start with the field)."""
    message = str(exc)
    for key in sorted(attrs, key=len, reverse=True):
        if message.startswith(key + " ") or message.startswith(f"{key} must") or f" {key}=" in message:
            return key, attrs[key]
    return None, None


def _refuse_doctype(*_args: object) -> None:
    raise MarkupError("document type declarations are not allowed", line=None)


def parse_markup(markup: str) -> Label:
    """Parse layout markup into a `Label`; every problem raises `MarkupError`."""
    if len(markup) > MAX_MARKUP_CHARS:
        raise MarkupError(f"markup is {len(markup)} characters, more than {MAX_MARKUP_CHARS}",
                          line=None)
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
