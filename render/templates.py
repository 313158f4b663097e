"""Label templates: sandboxed Jinja2 producing layout markup, checked and mapped to lines.

A template is Jinja2 source that renders the markup of `render.markup`. It declares itself
in a leading comment::

    {#- esl-template
    model: 2.9-bwry, 2.13-bwr
    description: 2.9" shelf label: name, price, unit price, EAN-13 or QR
    -#}

``model`` lists the label models the layout is drawn for (the first is the default);
``description`` is free text; ``name`` may override the file stem.

Environment choices, and why:

* `ImmutableSandboxedEnvironment`: templates are edited by merchandisers over the HTTP API,
  so they are untrusted code. On top of the sandbox every attribute or item name starting
  with ``_`` is refused when the template is compiled (a `TemplateError` of kind
  ``security``), so ``''.__class__.__mro__`` or ``self._TemplateReference__context`` never
  run at all; what the sandbox catches at run time (``str.format`` tricks) is reported the
  same way. ``'x' * 10**9``, huge powers and other size bombs are refused too (`render.limits`).
* autoescape on: the output is XML, so a product called ``M&M's <mini>`` stays one text.
* `StrictUndefined`: a misspelt variable (``prodcut.name``) fails loudly with its line
  instead of silently blanking thousands of shelf labels. Optional data is never
  *undefined*: the context always has ``promo``, ``lowest_30d``, ``unit_price``,
  ``regular`` and ``product.ean/url/image`` set (to None when absent), so templates test
  ``{% if promo %}``; free attributes are read with ``product.attributes.get('origin')``.
* ``trim_blocks``/``lstrip_blocks``: block tags do not leave blank lines in the markup.

Errors are `TemplateError` with the template name, the template line and a kind
(``syntax``, ``security``, ``undefined``, ``runtime``, ``markup``, ``model``). Markup errors
are mapped back to the template line: every element start tag written literally in the
template is stamped with ``esl-line="N"`` as the template is compiled.
"""

from __future__ import annotations

import functools
import importlib.resources
import logging
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension
from jinja2.lexer import Token, TokenStream
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from firmware_proto.models import MODELS
from render.context import CURRENCY_SYMBOLS, parse_decimal
from render.isolate import ResourceLimit, TemplateLimit
from render.layout import Label, ean13_check_digit
from render.limits import bounded_concat, bounded_filters, check_binop, check_call
from render.markup import ELEMENTS, LINE_ATTRIBUTE, MarkupError, parse_markup

__all__ = [
    "TemplateError", "TemplateInfo", "Template", "load_template", "template_from_string",
    "shipped_template_names", "shipped_templates", "ErrorKind", "PACKAGE",
]

log = logging.getLogger(__name__)

PACKAGE: Final = "esl_templates"
_SUFFIX: Final = ".j2"
MAX_SOURCE_CHARS: Final = 200_000

ErrorKind = Literal["syntax", "security", "undefined", "runtime", "markup", "model", "metadata", "limit"]


class TemplateError(ValueError):
    """A template that cannot produce a label, with its name and (template) line."""

    def __init__(self, template: str, line: int | None, kind: ErrorKind, reason: str) -> None:
        self.template = template
        self.line = line
        self.kind = kind
        self.reason = reason
        where = f"{template}:{line}" if line is not None else template
        super().__init__(f"{where}: {kind} error: {reason}")

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled whole, so an error raised in a render process (`render.isolate`) reaches
        the caller with its template, line and kind."""
        return (type(self), (self.template, self.line, self.kind, self.reason))


@dataclass(frozen=True, slots=True)
class TemplateInfo:
    """What a template says about itself."""

    name: str
    models: tuple[str, ...]
    description: str
    origin: str  # "package" or a file path

    @property
    def model(self) -> str:
        """The default label model."""
        return self.models[0]


# --- compile-time line stamping and security check ---------------------------------------

_TAG_RE: Final = re.compile(r"<(%s)(?=[\s/>])" % "|".join(["label", *ELEMENTS]))


class _LineStamp(Extension):
    """Stamps each literal element start tag with the template line it is written on."""

    def filter_stream(self, stream: TokenStream) -> Iterator[Token]:
        for token in stream:
            if token.type != "data" or "<" not in token.value:
                yield token
                continue
            value: str = token.value

            def stamp(m: re.Match[str], _v: str = value, _line: int = token.lineno) -> str:
                line = _line + _v.count("\n", 0, m.start())
                return f'<{m.group(1)} {LINE_ATTRIBUTE}="{line}"'

            yield Token(token.lineno, "data", _TAG_RE.sub(stamp, value))


def _security_check(ast: nodes.Template, name: str) -> None:
    """Refuse private/dunder attribute and item access before the template ever runs."""
    for node in ast.find_all((nodes.Getattr, nodes.Getitem)):
        if isinstance(node, nodes.Getattr):
            attr: str = node.attr
        else:
            arg = getattr(node, "arg", None)
            if not (isinstance(arg, nodes.Const) and isinstance(arg.value, str)):
                continue
            attr = arg.value
        if attr.startswith("_"):
            raise TemplateError(name, node.lineno, "security",
                                f"access to {attr!r} is not allowed in templates")
    for tag in ast.find_all((nodes.Extends, nodes.Include, nodes.Import, nodes.FromImport)):
        raise TemplateError(name, tag.lineno, "security",
                            "templates cannot include, import or extend other templates")


# --- filters -----------------------------------------------------------------------------

def _to_decimal(value: Any) -> Decimal:
    return value if isinstance(value, Decimal) else parse_decimal(value)


_QUANTA: Final = {places: Decimal(1).scaleb(-places) for places in range(7)}


def _number(value: Any, places: int = 2, sep: str = ",") -> str:
    """``1234.5`` → ``1 234,50`` (non-breaking space groups, decimal comma by default)."""
    quantum = _QUANTA.get(places) if type(places) is int else None
    if quantum is None:
        quantum = Decimal(1).scaleb(-places)
    d = _to_decimal(value).quantize(quantum, rounding=ROUND_HALF_UP)
    sign = "-" if d < 0 else ""
    whole, _, frac = f"{abs(d):,f}".partition(".")  # "," groups the units in threes
    out = sign + whole.replace(",", "\u00a0")
    return f"{out}{sep}{frac}" if places > 0 else out


def _money(value: Any, currency: str | None = "PLN", places: int = 2) -> str:
    """``7.49`` → ``7,49 zł``; the currency code is shown as its usual symbol."""
    text = _number(value, places)
    if not currency:
        return text
    return f"{text}\u00a0{CURRENCY_SYMBOLS.get(currency, currency)}"


def _units(value: Any) -> str:
    d = _to_decimal(value).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
    return f"{int(d)}"


def _cents(value: Any) -> str:
    d = _to_decimal(value).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
    return f"{d:f}".partition(".")[2] or "00"


def _date(value: Any, fmt: str = "%d.%m.%Y") -> str:
    """A date or datetime (or ISO text) formatted with strftime; None gives ''."""
    if value is None:
        return ""
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if not isinstance(value, (date, datetime)):
        raise ValueError(f"date filter expects a date, got {value!r}")
    if "%" not in fmt or len(fmt) > 40:
        raise ValueError(f"date format must be a short strftime pattern, got {fmt!r}")
    return value.strftime(fmt)


def _percent(value: Any) -> str:
    return f"{int(_to_decimal(value))}%"


def _is_ean13(value: Any) -> bool:
    s = "" if value is None else str(value)
    return len(s) == 13 and s.isascii() and s.isdigit() and ean13_check_digit(s[:12]) == int(s[12])


_DICT_ATTRIBUTES: Final = frozenset(dir(dict))


class _Environment(ImmutableSandboxedEnvironment):
    """The sandbox, plus the size caps of `render.limits` on operators, string methods,
    string-building filters and the output, so ``'x' * 10**9``, ``9 ** 9 ** 9`` or a
    ``replace`` that multiplies a string cannot exhaust memory or time (Jinja's sandbox
    bounds ``range`` but not these)."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})
    concat = staticmethod(bounded_concat)

    def getattr(self, obj: Any, attribute: str) -> Any:
        """``product.name`` on the context's plain dicts without the failed attribute look-up
        (an exception per access) the sandbox tries first. Same result: a plain dict has no
        attributes but those of its type, so for any other name the sandbox would fall back
        to the item, or to undefined."""
        if type(obj) is dict and type(attribute) is str and attribute not in _DICT_ATTRIBUTES:
            try:
                return obj[attribute]
            except (TypeError, LookupError):
                return self.undefined(obj=obj, name=attribute)
        return super().getattr(obj, attribute)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        check_binop(operator, left, right)
        return super().call_binop(context, operator, left, right)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        check_call(__obj, args, kwargs)
        return super().call(__context, __obj, *args, **kwargs)


@functools.lru_cache(maxsize=1)
def _environment() -> ImmutableSandboxedEnvironment:
    env = _Environment(
        autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
        lstrip_blocks=True, extensions=[_LineStamp], auto_reload=False, cache_size=0,
    )
    env.filters.update(bounded_filters(env.filters))
    env.filters.update(money=_money, number=_number, units=_units, cents=_cents,
                       date=_date, percent=_percent)
    env.tests["ean13"] = _is_ean13
    return env


# --- metadata --------------------------------------------------------------------------------

_HEADER_RE: Final = re.compile(r"\A\s*\{#-?\s*esl-template\b(?P<body>.*?)-?#\}", re.S)


def _metadata(source: str, name: str, origin: str) -> TemplateInfo:
    m = _HEADER_RE.match(source)
    if m is None:
        raise TemplateError(name, 1, "metadata",
                            "a template starts with a {#- esl-template ... -#} comment "
                            "declaring at least 'model: <label model>'")
    fields: dict[str, str] = {}
    for i, raw in enumerate(m.group("body").splitlines()):
        line = raw.strip()
        if not line:
            continue
        key, sep, value = line.partition(":")
        if not sep:
            raise TemplateError(name, 1 + i, "metadata", f"expected 'key: value', got {line!r}")
        fields[key.strip().lower()] = value.strip()
    models = tuple(m_.strip() for m_ in fields.get("model", "").split(",") if m_.strip())
    if not models:
        raise TemplateError(name, 1, "metadata", "missing 'model:' in the esl-template header")
    for model in models:
        if model not in MODELS:
            raise TemplateError(name, 1, "metadata",
                                f"unknown label model {model!r}; known: {', '.join(MODELS)}")
    return TemplateInfo(fields.get("name", name), models, fields.get("description", ""), origin)


# --- the template --------------------------------------------------------------------------

def _template_line(tb: TracebackType | None, filename: str) -> int | None:
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == filename:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


class Template:
    """A compiled, checked template. Thread-safe to render concurrently."""

    def __init__(self, source: str, *, name: str, origin: str) -> None:
        if len(source) > MAX_SOURCE_CHARS:
            raise TemplateError(name, None, "syntax",
                                f"template is {len(source)} characters, more than {MAX_SOURCE_CHARS}")
        self.info = _metadata(source, name, origin)
        self.name = self.info.name
        self.source = source
        self._filename = f"<esl-template {self.name}>"
        env = _environment()
        try:
            ast = env.parse(source, self.name, self._filename)
            _security_check(ast, self.name)
            code = env.compile(ast, self.name, self._filename)
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(self.name, exc.lineno, "syntax", exc.message or str(exc)) from None
        except SecurityError as exc:
            raise TemplateError(self.name, None, "security", str(exc)) from None
        # A plain dict of the globals, not Jinja's ChainMap over the environment's: every
        # render copies the globals into its context, and walking a ChainMap (twice) cost more
        # than the rest of starting a render. The same names and values: the environment's
        # globals are never changed after `_environment()` has built it.
        globals_ = dict(env.make_globals(None))
        self._template = env.template_class.from_code(env, code, globals_)

    def __repr__(self) -> str:
        return f"Template({self.name!r}, models={self.info.models!r})"

    def render_markup(self, context: Mapping[str, Any]) -> str:
        """The markup for one context; runtime problems raise `TemplateError` with the line."""
        try:
            return self._template.render(context)
        except ResourceLimit as exc:  # a worker's budget ran out (render.isolate): the batch's
            raise TemplateLimit(exc.limit, self.name, self._limit_line(exc.__traceback__)) from None
        except MemoryError as exc:
            raise TemplateLimit("memory", self.name,
                                _template_line(exc.__traceback__, self._filename)) from None
        except SecurityError as exc:
            raise TemplateError(self.name, _template_line(exc.__traceback__, self._filename),
                                "security", str(exc)) from None
        except jinja2.UndefinedError as exc:
            raise TemplateError(self.name, _template_line(exc.__traceback__, self._filename),
                                "undefined", exc.message or str(exc)) from None
        except jinja2.TemplateSyntaxError as exc:  # pragma: no cover - compiled already
            raise TemplateError(self.name, exc.lineno, "syntax", exc.message or str(exc)) from None
        except (TypeError, ValueError, ArithmeticError, LookupError, AttributeError,
                RuntimeError, jinja2.TemplateError) as exc:  # RuntimeError: RecursionError
            raise TemplateError(self.name, _template_line(exc.__traceback__, self._filename),
                                "runtime", f"{type(exc).__name__}: {exc}") from None

    def _limit_line(self, tb: TracebackType | None) -> int | None:
        """The template line a `ResourceLimit` interrupted. Jinja rewrites the traceback of
        an ``Exception`` to template lines; a BaseException keeps the compiled code's."""
        line = None
        while tb is not None:
            if tb.tb_frame.f_code.co_filename == self._filename:
                line = self._template.get_corresponding_lineno(tb.tb_lineno)
            tb = tb.tb_next
        return line

    def render_label(self, context: Mapping[str, Any]) -> Label:
        """Render and parse one label; markup errors name the template line they came from."""
        return self.label_from_markup(self.render_markup(context))

    def label_from_markup(self, markup: str) -> Label:
        """Parse markup this template rendered (`render_markup`) into its label, as
        `render_label` does; markup errors name the template line they came from."""
        try:
            label = parse_markup(markup)
        except MarkupError as exc:
            if exc.source_line is not None:
                raise TemplateError(self.name, exc.source_line, "markup",
                                    str(exc).replace(f"line {exc.line}: ", "", 1)) from None
            raise TemplateError(self.name, None, "markup", f"markup {exc}") from None
        if label.model not in self.info.models:
            raise TemplateError(self.name, None, "model",
                                f"template produced a <label model={label.model!r}>, but declares "
                                f"models {', '.join(self.info.models)}")
        return label


def template_from_string(source: str, name: str = "<string>") -> Template:
    """Compile template source (e.g. from the HTTP API); raises `TemplateError`."""
    return Template(source, name=name, origin="string")


def shipped_template_names() -> list[str]:
    """Names of the templates shipped in the `esl_templates` package, sorted."""
    root = importlib.resources.files(PACKAGE)
    return sorted(p.name[: -len(_SUFFIX)] for p in root.iterdir() if p.name.endswith(_SUFFIX))


@functools.lru_cache(maxsize=64)
def _shipped(name: str) -> Template:
    res = importlib.resources.files(PACKAGE) / f"{name}{_SUFFIX}"
    return Template(res.read_text(encoding="utf-8"), name=name, origin="package")


def shipped_templates() -> list[Template]:
    """Every shipped template, compiled (cached)."""
    return [_shipped(n) for n in shipped_template_names()]


def load_template(ref: str | Path) -> Template:
    """A shipped template by name (``shelf-2.9`` or ``shelf-2.9.j2``) or a template file path.

    A path wins when it exists; an unknown name raises `TemplateError` listing the shipped ones.
    """
    path = Path(ref)
    if path.is_file():
        try:
            source = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise TemplateError(str(path), None, "syntax", f"cannot read: {exc}") from None
        stem = path.name[: -len(_SUFFIX)] if path.name.endswith(_SUFFIX) else path.stem
        return Template(source, name=stem, origin=str(path))
    name = str(ref)
    if name.endswith(_SUFFIX):
        name = name[: -len(_SUFFIX)]
    if name in shipped_template_names():
        return _shipped(name)
    raise TemplateError(str(ref), None, "syntax",
                        f"no such template file, and not a shipped template "
                        f"({', '.join(shipped_template_names())})")
