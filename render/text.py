"""Fitting text into a box: wrap on words, shrink step by step, cut the rest with "…".

The promise: the lines returned by `fit_text`, drawn with the glyph cache at the returned
size, one under another ``line_height`` apart, lie wholly inside ``box_w × box_h``. Nothing
ever overflows its box; what does not fit at ``min_size`` is cut with an ellipsis.

Text is normalised first: Unicode NFC (so "e" + combining acute becomes "é"), runs of
spaces and tabs become one space, "\\n" is a hard line break, no-break spaces keep their
neighbours on one line, and characters the font cannot draw (emoji and the like) are
dropped.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

import numpy as np

from render.fonts import FontWeight
from render.glyphs import Face, LineState, get_face

__all__ = [
    "FittedText", "fit_text", "normalise", "ELLIPSIS", "TextFitError",
    "SetPrice", "set_price", "PREFIX_CURRENCIES", "DECIMALS_RATIO",
]

ELLIPSIS = "…"

#: The smallest size `fit_text` goes to, below `min_size`, when not even one line of
#: `min_size` text is as short as the box (better tiny than overflowing).
_FLOOR_SIZE = 4

# Breaking whitespace other than "\n"; no-break spaces (U+00A0, U+202F) stay inside words,
# so "200\u00a0g" is never split across lines.
_SPACES = re.compile(r"[^\S\n\u00a0\u202f]+")


class TextFitError(ValueError):
    """Invalid arguments to `fit_text` (the message names the argument and value)."""


@dataclass(frozen=True, slots=True)
class FittedText:
    """Text as it will be drawn: the font size, the lines (top to bottom), each line's width
    in pixels, the line pitch, and whether text was cut with an ellipsis."""

    size: int
    weight: FontWeight
    lines: tuple[str, ...]
    widths: tuple[int, ...]
    line_height: int
    truncated: bool

    @property
    def height(self) -> int:
        """Height of the block of lines in pixels."""
        return self.line_height * len(self.lines)

    @property
    def width(self) -> int:
        """Width of the widest line in pixels."""
        return max(self.widths, default=0)


def normalise(content: str, face: Face) -> list[list[str]]:
    """Paragraphs (split on "\\n") of words, with undrawable characters removed."""
    text = unicodedata.normalize("NFC", content).replace("\r\n", "\n").replace("\r", "\n")
    paragraphs: list[list[str]] = []
    for para in text.split("\n"):
        cleaned = face.clean(_SPACES.sub(" ", para))
        paragraphs.append([w for w in cleaned.split(" ") if w])
    # Blank paragraphs at either end carry nothing to show.
    while paragraphs and not paragraphs[-1]:
        paragraphs.pop()
    while paragraphs and not paragraphs[0]:
        paragraphs.pop(0)
    return paragraphs


def _break_word(face: Face, word: str, box_w: int) -> tuple[str, str]:
    """The longest non-empty prefix of `word` that fits `box_w`, and the rest; ("", word)
    when not even its first character fits."""
    state = LineState()
    for i, c in enumerate(word):
        nxt = face.extend(state, c)
        if nxt.width > box_w:
            return word[:i], word[i:]
        state = nxt
    return word, ""


def _wrap(face: Face, paragraphs: list[list[str]], box_w: int, limit: int) -> list[str] | None:
    """Greedy word wrap into at most `limit` lines of at most `box_w`; None if it needs more
    lines or a character is wider than the box. (The hot path of fitting: plain integers,
    per-word cached metrics.)"""
    metrics = face.metrics
    space = metrics(" ")[0]
    lines: list[str] = []
    for words in paragraphs:
        current: list[str] = []
        pen = left = right = 0  # the current line's extent, as in LineState
        for word in words:
            adv, wl, wr, _, _ = metrics(word)
            if current:
                p = pen + space
                nl, nr = (min(left, p + wl), max(right, p + wr)) if wl != wr else (left, right)
                if max(nr, p + adv) - nl <= box_w:
                    current.append(word)
                    pen, left, right = p + adv, nl, nr
                    continue
                lines.append(" ".join(current))
                if len(lines) >= limit:
                    return None
                current = []
            rest = word
            while True:
                adv, wl, wr, _, _ = metrics(rest)
                left, right = (min(0, wl), max(0, wr)) if wl != wr else (0, 0)
                if max(right, adv) - left <= box_w:
                    current, pen = [rest], adv
                    break
                head, rest = _break_word(face, rest, box_w)
                if not head:
                    return None
                lines.append(head)
                if len(lines) >= limit:
                    return None
        lines.append(" ".join(current))
        if len(lines) > limit:
            return None
    return lines


def _cut_with_ellipsis(face: Face, text: str, box_w: int) -> str:
    """The longest prefix of `text` + "…" that fits `box_w` ("" if not even "…" fits)."""
    if face.width(ELLIPSIS) > box_w:
        return ""
    lo, hi = 0, len(text)  # invariant: prefix of length lo fits
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if face.width(text[:mid].rstrip() + ELLIPSIS) <= box_w:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo].rstrip() + ELLIPSIS


def _truncate(face: Face, paragraphs: list[list[str]], box_w: int, n_lines: int) -> tuple[list[str], bool]:
    """Fill up to `n_lines - 1` lines greedily and put the remainder of the text into the
    last line, cut with "…" if it does not fit. Returns the lines and whether text was cut."""
    tokens: list[str] = []
    for i, words in enumerate(paragraphs):
        if i:
            tokens.append("\n")
        tokens.extend(words)
    lines: list[str] = []
    line, state, pos = "", LineState(), 0
    while pos < len(tokens) and len(lines) < n_lines - 1:
        tok = tokens[pos]
        if tok == "\n":
            lines.append(line)
            line, state, pos = "", LineState(), pos + 1
            continue
        cand = face.extend(face.extend(state, " "), tok) if line else face.extend(LineState(), tok)
        if cand.width <= box_w:
            line, state, pos = (line + " " + tok if line else tok), cand, pos + 1
            continue
        if line:
            lines.append(line)
            line, state = "", LineState()
            continue
        head, rest = _break_word(face, tok, box_w)
        if not head:
            break  # not one character fits: the ellipsis line takes it
        lines.append(head)
        tokens[pos] = rest
    remainder = " ".join([line] + [t for t in tokens[pos:] if t != "\n"]).strip()
    if face.width(remainder) <= box_w:
        return lines + [remainder], False
    return lines + [_cut_with_ellipsis(face, remainder, box_w)], True


def _validate(box_w: int, box_h: int, size: int, min_size: int, max_lines: int) -> None:
    if box_w <= 0:
        raise TextFitError(f"box_w must be > 0, got {box_w}")
    if box_h <= 0:
        raise TextFitError(f"box_h must be > 0, got {box_h}")
    if not 1 <= min_size <= size:
        raise TextFitError(f"sizes must satisfy 1 <= min_size <= size, got min_size={min_size} size={size}")
    if max_lines < 1:
        raise TextFitError(f"max_lines must be >= 1, got {max_lines}")


def _fitted(face: Face, lines: list[str], truncated: bool) -> FittedText:
    return FittedText(
        size=face.size,
        weight=face.weight,
        lines=tuple(lines),
        widths=tuple(face.width(line) for line in lines),
        line_height=face.line_height,
        truncated=truncated,
    )


@functools.lru_cache(maxsize=8192)
def fit_text(
    content: str,
    box_w: int,
    box_h: int,
    *,
    size: int,
    min_size: int,
    weight: FontWeight = "regular",
    max_lines: int = 1,
) -> FittedText:
    """Fit `content` into a `box_w` × `box_h` pixel box (cached by all arguments).

    Tries `size`, then each smaller size down to `min_size`, wrapping on word boundaries
    (words wider than the box are broken) onto at most `max_lines` lines that fit the box
    height. If nothing fits, the text is set at `min_size` on as many lines as fit and the
    last line is cut with "…". If not even one `min_size` line is short enough for the box,
    the size goes down further (to 4 px) rather than overflow; if even that is too tall,
    no lines are returned. Empty or wholly undrawable content gives no lines.
    """
    _validate(box_w, box_h, size, min_size, max_lines)
    paragraphs = normalise(content, get_face(weight, size))
    if not paragraphs:
        return FittedText(size, weight, (), (), get_face(weight, size).line_height, False)
    for s in range(size, min_size - 1, -1):
        face = get_face(weight, s)
        limit = min(max_lines, box_h // face.line_height)
        if limit < 1:
            continue
        lines = _wrap(face, paragraphs, box_w, limit)
        if lines is not None:
            return _fitted(face, lines, False)
    # Nothing fits: cut at min_size, or at the largest smaller size where one line fits.
    for s in range(min_size, min(_FLOOR_SIZE, min_size) - 1, -1):
        face = get_face(weight, s)
        limit = min(max_lines, box_h // face.line_height)
        if limit >= 1:
            lines, cut = _truncate(face, paragraphs, box_w, limit)
            return _fitted(face, lines, cut)
    face = get_face(weight, min(_FLOOR_SIZE, min_size))
    return FittedText(face.size, weight, (), (), face.line_height, True)


# -- prices ---------------------------------------------------------------------------------

#: Currency symbols written before the amount (others, such as "zł" or "PLN", go after).
PREFIX_CURRENCIES = frozenset({"€", "$", "£"})
#: Size of the raised decimals and of the currency, relative to the units.
DECIMALS_RATIO = 0.45
_MIN_PRICE_SIZE = 6


@dataclass(frozen=True, slots=True)
class SetPrice:
    """A price typeset at font `size` as a read-only coverage array (uint8, 255 = ink,
    trimmed to its ink); `fits` is False when even the smallest size overflows the box
    (the array is then larger than the box and must be clipped by whoever draws it)."""

    coverage: np.ndarray
    size: int
    fits: bool

    @property
    def mask(self) -> np.ndarray:
        """The ink as a bool array."""
        mask: np.ndarray = self.coverage != 0
        return mask


def _price_parts(amount: Decimal) -> tuple[str, str]:
    cents = amount.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
    units, _, frac = f"{cents:f}".partition(".")
    return units, (frac + "00")[:2]


_Piece = tuple[int, int, Face, str]  # x, y (from the big face's ascender line), face, text


def _price_pieces(units: str, cents: str, currency: str, size: int,
                  weight: FontWeight) -> list[_Piece]:
    big = get_face(weight, size)
    small = get_face(weight, max(4, round(size * DECIMALS_RATIO)))
    gap = max(1, round(size * 0.05))
    raised_y = big.cap_top - small.cap_top  # small digits' tops on the big digits' cap line
    pieces: list[_Piece] = []
    x = 0
    cur = small.clean(currency.strip())
    if cur and cur in PREFIX_CURRENCIES:
        pieces.append((x, raised_y, small, cur))
        x += small.width(cur) + gap
    pieces.append((x, 0, big, units))
    x += big.width(units) + gap
    pieces.append((x, raised_y, small, cents))
    if cur and cur not in PREFIX_CURRENCIES:
        pieces.append((x, big.ascent - small.ascent, small, cur))  # on the big baseline
    return pieces


def _ink_extent(pieces: list[_Piece]) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the ink of all pieces together."""
    top = left = 1 << 30
    bottom = right = -(1 << 30)
    for x, y, face, text in pieces:
        ib = face.ink_box(text)
        if ib.empty:
            continue
        top, bottom = min(top, y + ib.top), max(bottom, y + ib.bottom)
        left, right = min(left, x + ib.left), max(right, x + ib.right)
    return top, bottom, left, right


def _compose_price(pieces: list[_Piece], extent: tuple[int, int, int, int], size: int,
                   strike: bool) -> np.ndarray:
    top, bottom, left, right = extent
    buf = np.zeros((bottom - top, right - left), dtype=np.uint8)
    for x, y, face, text in pieces:
        face.draw(buf, x - left, y - top, text, 255)
    if strike:
        _strike_diagonal(buf, max(1, round(size / 10)))
    buf.flags.writeable = False
    return buf


def _strike_diagonal(buf: np.ndarray, thickness: int) -> None:
    """Cross coverage `buf` out with a line from its bottom-left to its top-right corner."""
    h, w = buf.shape
    xs = np.arange(w)
    yc = np.rint((h - 1) * (1 - xs / max(1, w - 1))).astype(np.intp)
    # Vertical thickness grows with the slope so the stroke looks as thick as `thickness`.
    t = max(thickness, round(thickness * (1 + (h / max(1, w)) ** 2) ** 0.5))
    for dy in range(-(t // 2), t - t // 2):
        buf[np.clip(yc + dy, 0, h - 1), xs] = 255


@functools.lru_cache(maxsize=4096)
def set_price(amount: Decimal, currency: str, box_w: int, box_h: int, *, size: int,
              weight: FontWeight = "bold", strike: bool = False) -> SetPrice:
    """Typeset `amount` the way shelves show it and shrink it until it fits the box.

    Large units; the two decimals at 45 % of the size, raised so their tops line up with the
    units' cap height, with no separator; the currency small, under the decimals on the
    baseline ("zł", "PLN"...), or raised before the units for €, $ and £. `strike` crosses
    the whole price out diagonally (a regular price during a promotion). The amount is
    rounded half-up to cents. Cached by all arguments: prices repeat across a batch.
    """
    if box_w <= 0 or box_h <= 0:
        raise TextFitError(f"price box must be positive, got {box_w}x{box_h}")
    if amount < 0 or not amount.is_finite():
        raise TextFitError(f"amount must be a finite non-negative Decimal, got {amount!r}")
    units, cents = _price_parts(amount)
    s = size
    while True:
        pieces = _price_pieces(units, cents, currency, s, weight)
        extent = _ink_extent(pieces)
        h, w = extent[1] - extent[0], extent[3] - extent[2]
        fits = w <= box_w and h <= box_h
        if fits or s <= _MIN_PRICE_SIZE:
            return SetPrice(_compose_price(pieces, extent, s, strike), s, fits)
        ratio = min(box_w / max(1, w), box_h / max(1, h))
        s = max(_MIN_PRICE_SIZE, min(s - 1, int(s * ratio)))
