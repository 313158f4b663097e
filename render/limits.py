"""Size caps for what a template computes, checked before the work is done.

Templates are untrusted code (merchandisers edit them over the HTTP API), and Jinja's sandbox
bounds ``range`` but nothing else: ``((10**1000)**1000)**10`` held a server for seconds,
``("x"*100000)|replace("x", "x"*1000)`` and ``"%10000000d"|format(1)`` built strings of
10⁸ characters. Each check here estimates the size of a result from its operands and refuses
it (`SizeLimitError`, a `SecurityError`, so the template reports its line and kind
``security``) before anything is allocated. These caps are far above anything a label needs
and cost nothing on a real template; what they cannot foresee (an endless loop, a slow
accumulation) is stopped by the process limits of `render.isolate`.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping, Sized
from typing import Any, Final

from jinja2.exceptions import SecurityError

__all__ = [
    "SizeLimitError", "MAX_STRING", "MAX_SEQUENCE", "MAX_INT_BITS", "MAX_MARKUP",
    "check_binop", "check_call", "bounded_filters", "bounded_concat",
]

MAX_STRING: Final = 100_000
"""Characters in one string a template builds (a label shows a few hundred)."""
MAX_SEQUENCE: Final = 100_000
"""Items in one list or tuple a template builds (Jinja's ``range`` limit)."""
MAX_INT_BITS: Final = 16_384
"""Bits of one integer (about 4,900 digits; ``10 ** 1000`` is 3,322 bits)."""
MAX_MARKUP: Final = 1_000_000
"""Characters of markup one render (or one macro call) may produce."""

_BIG_NUMBER: Final = re.compile(r"\d{%d,}" % len(str(MAX_STRING)))


class SizeLimitError(SecurityError):
    """A template operation whose result would be larger than a cap; says which and how big."""


def _length(value: Any) -> int | None:
    return len(value) if isinstance(value, (str, list, tuple)) else None


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_binop(operator: str, left: Any, right: Any) -> None:
    """Refuse ``**``, ``*``, ``+`` and ``%`` whose result would exceed a cap."""
    if operator == "**":
        if _int(left) and _int(right) and right > 0 and abs(left) > 1:
            bits = abs(left).bit_length() * right
            if bits > MAX_INT_BITS:
                raise SizeLimitError(f"{_short(left)} ** {right} would have about {bits} bits, "
                                     f"more than the limit of {MAX_INT_BITS}")
    elif operator == "*":
        if _int(left) and _int(right):
            bits = abs(left).bit_length() + abs(right).bit_length()
            if bits > MAX_INT_BITS:
                raise SizeLimitError(f"a product of about {bits} bits is more than the limit of {MAX_INT_BITS}")
        for seq, count in ((left, right), (right, left)):
            n = _length(seq)
            if n is not None and _int(count) and n * count > _cap(seq):
                raise SizeLimitError(f"a sequence of {n} repeated {count} times is longer than {_cap(seq)}")
    elif operator == "+":
        a, b = _length(left), _length(right)
        if a is not None and b is not None and a + b > _cap(left):
            raise SizeLimitError(f"joining {a} and {b} items is longer than {_cap(left)}")
    elif operator == "%" and isinstance(left, str):
        _check_format(left, right if isinstance(right, tuple) else (right,), {})


def _cap(value: Any) -> int:
    return MAX_STRING if isinstance(value, str) else MAX_SEQUENCE


def _short(value: int) -> str:
    return str(value) if value.bit_length() < 64 else f"a {value.bit_length()}-bit number"


def _check_format(fmt: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
    """A width or precision in a ``%`` or ``{}`` format (written or passed as ``*``) that
    would pad a string past `MAX_STRING`."""
    m = _BIG_NUMBER.search(fmt)
    if m is not None and int(m.group()) > MAX_STRING:
        raise SizeLimitError(f"format width {m.group()} is more than the limit of {MAX_STRING} characters")
    for value in (*args, *kwargs.values()):
        if _int(value) and value > MAX_STRING and "*" in fmt:
            raise SizeLimitError(f"format width {value} is more than the limit of {MAX_STRING} characters")


def _check_width(what: str, width: Any, lines: int = 1, base: int = 0) -> None:
    if _int(width) and base + width * lines > MAX_STRING:
        raise SizeLimitError(f"{what} width {width} would make a string longer than the limit of "
                             f"{MAX_STRING} characters")


_WIDTH_METHODS: Final = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs"})


def check_call(obj: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
    """Refuse string methods whose result would exceed `MAX_STRING` (``'x'.ljust(10**8)``,
    ``'{:>99999999}'.format(1)``), before they run."""
    # the sandbox hands out str.format wrapped (``__wrapped__`` is the bound method)
    owner = getattr(getattr(obj, "__wrapped__", obj), "__self__", None)
    if not isinstance(owner, str):
        return
    name = getattr(obj, "__name__", "")
    if name in _WIDTH_METHODS:
        for value in (*args, *kwargs.values()):
            _check_width(f"str.{name}", value, base=len(owner))
    elif name in ("format", "format_map"):
        _check_format(owner, args, kwargs if name == "format" else {})
    elif name == "replace" and len(args) >= 2:
        _check_replace(owner, args[0], args[1], args[2] if len(args) > 2 else None)


def _check_replace(s: Any, old: Any, new: Any, count: Any = None) -> None:
    if not (isinstance(s, str) and isinstance(new, str)):
        return
    old_s = str(old)
    growth = len(new) - len(old_s)
    if growth <= 0:
        return
    hits = s.count(old_s) if old_s else len(s) + 1
    if _int(count) and count >= 0:
        hits = min(hits, count)
    size = len(s) + hits * growth
    if size > MAX_STRING:
        raise SizeLimitError(f"replace would make a string of {size} characters, more than the limit "
                             f"of {MAX_STRING}")


def _lines(value: Any) -> int:
    return str(value).count("\n") + 1


def _bounded(name: str, check: Callable[..., None], inner: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(inner)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        check(*args, **kwargs)
        result = inner(*args, **kwargs)
        n = _length(result)
        if n is not None and n > _cap(result):
            raise SizeLimitError(f"filter {name} made {n} items, more than the limit of {_cap(result)}")
        return result
    return wrapper


def _pre_replace(_eval_ctx: Any, s: Any, old: Any, new: Any, count: Any = None) -> None:
    _check_replace(str(s), old, str(new), count)


def _pre_format(value: Any, *args: Any, **kwargs: Any) -> None:
    _check_format(str(value), args, kwargs)


def _pre_center(value: Any, width: Any = 80, *_: Any) -> None:
    _check_width("center", width)


def _pre_indent(s: Any, width: Any = 4, *_: Any, **__: Any) -> None:
    text = str(s)
    if isinstance(width, str):
        width = len(width)
    _check_width("indent", width, _lines(text), len(text))


def _pre_wordwrap(env: Any, s: Any, width: Any = 79, break_long_words: bool = True,
                  wrapstring: Any = None, *_: Any, **kwargs: Any) -> None:
    wrap = kwargs.get("wrapstring", wrapstring)
    if isinstance(wrap, str) and isinstance(s, Sized) and len(wrap) * len(s) > MAX_STRING:
        raise SizeLimitError(f"wordwrap with a {len(wrap)}-character wrapstring could make a string "
                             f"longer than the limit of {MAX_STRING}")


def _pre_join(_eval_ctx: Any, values: Any, d: Any = "", *_: Any, **__: Any) -> None:
    sep = d
    if isinstance(values, Sized) and isinstance(sep, str) and len(sep) * len(values) > MAX_STRING:
        raise SizeLimitError(f"join with a {len(sep)}-character separator over {len(values)} items "
                             f"is longer than the limit of {MAX_STRING}")


_PRE_CHECKS: Final[Mapping[str, Callable[..., None]]] = {
    "replace": _pre_replace, "format": _pre_format, "center": _pre_center, "indent": _pre_indent,
    "wordwrap": _pre_wordwrap, "join": _pre_join,
}


def bounded_filters(filters: Mapping[str, Callable[..., Any]]) -> dict[str, Callable[..., Any]]:
    """Jinja's string-building filters wrapped with their size checks (the others unchanged):
    the check runs before the filter, and the result's length is checked after it."""
    return {name: _bounded(name, check, filters[name]) for name, check in _PRE_CHECKS.items()
            if name in filters}


def bounded_concat(parts: Any) -> str:
    """``"".join`` that stops at `MAX_MARKUP` characters: Jinja joins a render's (and each
    macro call's) output with the environment's ``concat``, so a loop that prints a long
    string many times is refused instead of filling memory."""
    out: list[str] = []
    total = 0
    for part in parts:
        total += len(part)
        if total > MAX_MARKUP:
            raise SizeLimitError(f"the template's output is longer than the limit of {MAX_MARKUP} characters")
        out.append(part)
    return "".join(out)
