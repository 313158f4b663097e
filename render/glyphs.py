"""A glyph cache: every character rendered once per font and size, strings composed in numpy.

Drawing a string with Pillow costs 0.1–0.3 ms; a label has several, and a store reprices
thousands of labels at once. Here each glyph is rendered once with Pillow as a coverage
mask, thresholded into a crisp bilevel mask (label text is flat ink, never dithered), and
strings are composed from cached pieces at kerning-free advance positions:

- glyphs are rasterised by FreeType's monochrome renderer, whose hinted advances are whole
  pixels, so a word looks the same wherever it starts on a line;
- words are therefore cached too (metrics and bitmaps), and a line is measured and drawn
  word by word: product names share most of their vocabulary across a catalogue.

Measuring uses the same integer arithmetic as drawing, so a string measured to fit a box is
drawn exactly that wide.

A line bitmap is ``line_height`` rows tall (ascent + descent): row 0 is the ascender line,
row ``ascent`` the baseline. Its column 0 is the leftmost of the pen origin and any ink, and
its width reaches the rightmost of the final pen position and any ink, so nothing drawn
from it falls outside ``(width, line_height)``. Glyph ink that would leave the line cell
vertically (rare stacked diacritics) is clipped to it.

Characters the font lacks (emoji, most CJK), control and format characters (zero-width
joiners, variation selectors) and lone combining marks are not drawn and take no space:
see `Face.clean`.
"""

from __future__ import annotations

import functools
import threading
import unicodedata
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np
from PIL import Image, ImageDraw

from render.fonts import FontWeight, get_font

__all__ = [
    "Glyph", "Face", "LineState", "InkBox", "Metrics", "LRUCache", "CappedCache", "get_face", "blend",
    "INK_THRESHOLD",
]

#: Coverage (0..255) from which a pixel of the rendered glyph counts as ink.
INK_THRESHOLD = 128
# FreeType's monochrome renderer ("1"): its hinting is made for bilevel output, and at label
# sizes (9–18 px) it gives even stems where thresholding anti-aliased coverage gives stems
# of uneven weight. Its advances are whole pixels (checked for DejaVu at 4–120 px; any
# fraction would be rounded per glyph, measuring and drawing alike).
_RASTER_MODE = "1"

# A code point no font maps (plane 16 private use): what the font draws for it is its
# .notdef glyph; a character drawn identically is one the font lacks.
_PROBE_MISSING = "\U0010fffd"

_METRICS_CAP = 50_000  # word metrics per face (small tuples); cleared when full
_LAYOUT_CAP = 1024  # recent line layouts per face; cleared when full
_BITMAP_CACHE_SIZE = 16_384  # word bitmaps, all faces together
_LINE_CACHE_SIZE = 2048  # line coverages, all faces together


K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LRUCache(Generic[K, V]):
    """A small bounded LRU map, safe to share between threads (values must not be None)."""

    __slots__ = ("_data", "_max", "_lock")

    def __init__(self, maxsize: int) -> None:
        self._data: OrderedDict[K, V] = OrderedDict()
        self._max = maxsize
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
            return value

    def put(self, key: K, value: V) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self._max:
                self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()


class CappedCache(Generic[K, V]):
    """A bounded map for hot paths: plain dict speed (no lock, no recency bookkeeping);
    when full it is emptied and refills with what is in use. Dict operations are atomic
    under the GIL, so threads may share it."""

    __slots__ = ("_data", "_max", "get")

    def __init__(self, maxsize: int) -> None:
        self._data: dict[K, V] = {}
        self._max = maxsize
        self.get: Callable[[K], V | None] = self._data.get

    def put(self, key: K, value: V) -> None:
        if len(self._data) >= self._max:
            self._data.clear()
        self._data[key] = value

    def __len__(self) -> int:
        return len(self._data)

    def clear(self) -> None:
        self._data.clear()


_WORD_BITMAPS: CappedCache[tuple[str, int, str], tuple[np.ndarray, int]] = CappedCache(_BITMAP_CACHE_SIZE)
_LINES: CappedCache[tuple[str, int, str], np.ndarray] = CappedCache(_LINE_CACHE_SIZE)


@dataclass(frozen=True, slots=True)
class Glyph:
    """One character at one size: whole-pixel pen advance, ink offset from the pen origin
    (x0) and from the ascender line (y0), and the ink mask, clipped to the line cell and
    trimmed to its ink (empty for a space)."""

    char: str
    advance: int
    x0: int
    y0: int
    mask: np.ndarray  # bool (h, w)

    @property
    def width(self) -> int:
        return int(self.mask.shape[1])


@dataclass(frozen=True, slots=True)
class LineState:
    """Running extent of a line being measured: pen position and ink span so far."""

    pen: int = 0
    left: int = 0
    right: int = 0

    @property
    def width(self) -> int:
        """Width of the line bitmap for the characters measured so far."""
        return max(self.right, self.pen) - min(self.left, 0)


@dataclass(frozen=True, slots=True)
class InkBox:
    """Where a line bitmap has ink: rows [top, bottom) and columns [left, right); all zero
    when it has none."""

    top: int
    bottom: int
    left: int
    right: int

    @property
    def empty(self) -> bool:
        return self.bottom <= self.top


_EMPTY = LineState()
#: (advance, ink left, ink right, ink top, ink bottom) of a run of characters; see
#: `Face.metrics`.
Metrics = tuple[int, int, int, int, int]


class Face:
    """DejaVu Sans at one weight and pixel size, with its glyph and word caches.

    Get faces through `get_face`, which keeps one per (weight, size).
    """

    def __init__(self, weight: FontWeight, size: int) -> None:
        self.weight: FontWeight = weight
        self.size = size
        self.font = get_font(weight, size)
        ascent, descent = self.font.getmetrics()
        self.ascent: int = ascent
        self.descent: int = descent
        self.line_height: int = ascent + descent
        self._glyphs: dict[str, Glyph | None] = {}
        self._metrics: dict[str, Metrics] = {}
        self._drawable: set[str] = set()  # characters known to have a glyph
        self._layouts: dict[str, tuple[list[tuple[int, str]], Metrics]] = {}
        self._notdef = self._render(_PROBE_MISSING)
        #: Row (from the ascender line) where capitals and digits start.
        self.cap_top: int = int(self.font.getbbox("H", mode=_RASTER_MODE, anchor="la")[1])
        #: Row (from the ascender line) where lower-case letters such as "x" start.
        self.x_top: int = int(self.font.getbbox("x", mode=_RASTER_MODE, anchor="la")[1])

    def __repr__(self) -> str:
        return f"Face({self.weight!r}, {self.size})"

    # -- glyphs ----------------------------------------------------------------------------

    def _render(self, ch: str) -> Glyph:
        font = self.font
        advance = round(font.getlength(ch, mode=_RASTER_MODE))
        x0, y0, x1, y1 = (int(v) for v in font.getbbox(ch, mode=_RASTER_MODE, anchor="la"))
        w, h = x1 - x0, y1 - y0
        if w <= 0 or h <= 0:
            return Glyph(ch, advance, 0, 0, np.zeros((0, 0), dtype=bool))
        img = Image.new("L", (w, h), 0)
        draw = ImageDraw.Draw(img)
        draw.fontmode = _RASTER_MODE
        draw.text((-x0, -y0), ch, font=font, fill=255, anchor="la")
        mask = np.asarray(img) >= INK_THRESHOLD
        # Clip to the line cell so a line bitmap never grows past line_height, then trim to
        # the ink so that metrics are exact ink extents.
        top, bottom = max(0, -y0), min(h, self.line_height - y0)
        mask = mask[top:bottom]
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        if rows.size == 0:
            return Glyph(ch, advance, 0, 0, np.zeros((0, 0), dtype=bool))
        mask = mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        return Glyph(ch, advance, x0 + int(cols[0]), y0 + top + int(rows[0]),
                     np.ascontiguousarray(mask))

    def _is_missing(self, g: Glyph) -> bool:
        nd = self._notdef
        return (
            g.advance == nd.advance
            and g.x0 == nd.x0
            and g.y0 == nd.y0
            and g.mask.shape == nd.mask.shape
            and bool(np.array_equal(g.mask, nd.mask))
        )

    def glyph(self, ch: str) -> Glyph | None:
        """The cached glyph for `ch`, or None when it is not drawable with this face."""
        try:
            return self._glyphs[ch]
        except KeyError:
            pass
        result: Glyph | None
        cat = unicodedata.category(ch)
        if cat in ("Cc", "Cf", "Cs", "Co", "Cn", "Mn", "Me", "Zl", "Zp"):
            result = None
        else:
            g = self._render(ch)
            result = None if self._is_missing(g) else g
        self._glyphs[ch] = result  # a racing thread computes the same value
        if result is not None:
            self._drawable.add(ch)
        return result

    def supports(self, ch: str) -> bool:
        """Whether `ch` is drawn by this face (space counts)."""
        return self.glyph(ch) is not None

    def clean(self, text: str) -> str:
        """`text` without the characters this face does not draw (see module docstring)."""
        if self._drawable.issuperset(text):
            return text
        glyph = self.glyph
        return "".join(c for c in text if glyph(c) is not None)

    # -- measuring -------------------------------------------------------------------------

    def metrics(self, text: str) -> Metrics:
        """(advance, ink left, ink right, ink top, ink bottom) of `text` set from pen 0 on
        one line; columns are pen-relative, rows from the ascender line; the ink fields are
        all 0 when `text` has no ink. Cached per face: call it per word."""
        m = self._metrics.get(text)
        if m is not None:
            return m
        pen, left, right, top, bottom, inked = 0, 0, 0, 0, 0, False
        glyph = self.glyph
        for c in text:
            g = glyph(c)
            if g is None:
                continue
            if g.mask.size:
                gx = pen + g.x0
                gr = gx + g.mask.shape[1]
                gb = g.y0 + g.mask.shape[0]
                if not inked:
                    left, right, top, bottom, inked = gx, gr, g.y0, gb, True
                else:
                    left, right = min(left, gx), max(right, gr)
                    top, bottom = min(top, g.y0), max(bottom, gb)
            pen += g.advance
        m = (pen, left, right, top, bottom)
        if len(self._metrics) >= _METRICS_CAP:
            self._metrics.clear()
        self._metrics[text] = m
        return m

    def extend(self, state: LineState, text: str) -> LineState:
        """The line extent after appending `text` to a line measured as `state`."""
        adv, left, right, _, _ = self.metrics(text)
        pen = state.pen
        if left == right:  # no ink
            return LineState(pen + adv, state.left, state.right)
        return LineState(pen + adv, min(state.left, pen + left), max(state.right, pen + right))

    def _layout(self, text: str) -> tuple[list[tuple[int, str]], Metrics]:
        """Words of `text` with their pen positions, and the metrics of the whole line
        (cached briefly: a line is measured when fitted, then laid out when drawn)."""
        cached = self._layouts.get(text)
        if cached is not None:
            return cached
        result = self._layout_words(text)
        if len(self._layouts) >= _LAYOUT_CAP:
            self._layouts.clear()
        self._layouts[text] = result
        return result

    def _layout_words(self, text: str) -> tuple[list[tuple[int, str]], Metrics]:
        space = self.metrics(" ")[0]
        placed: list[tuple[int, str]] = []
        pen = left = right = top = bottom = 0
        inked = False
        for i, word in enumerate(text.split(" ")):
            if i:
                pen += space
            if not word:
                continue
            adv, wl, wr, wt, wb = self.metrics(word)
            if wl != wr:
                placed.append((pen, word))
                if not inked:
                    left, right, top, bottom, inked = pen + wl, pen + wr, wt, wb, True
                else:
                    left, right = min(left, pen + wl), max(right, pen + wr)
                    top, bottom = min(top, wt), max(bottom, wb)
            pen += adv
        return placed, (pen, left, right, top, bottom)

    def width(self, text: str) -> int:
        """Width in pixels of the bitmap `line(text)` returns (its ink never leaves it)."""
        adv, left, right, _, _ = self.metrics(text) if " " not in text else self._layout(text)[1]
        return max(right, adv) - min(left, 0)

    def ink_box(self, text: str) -> InkBox:
        """Where `line(text)` has ink, computed from cached metrics without drawing."""
        adv, left, right, top, bottom = self.metrics(text) if " " not in text else self._layout(text)[1]
        if left == right:
            return InkBox(0, 0, 0, 0)
        origin = min(left, 0)
        return InkBox(top, bottom, left - origin, right - origin)

    # -- drawing ---------------------------------------------------------------------------
    #
    # Bitmaps here are "coverage" arrays: uint8, 0 (paper) or 255 (ink). Drawing one into an
    # index array is then three whole-array byte operations (see `blend`), several times
    # faster than numpy's boolean-mask assignment, and a line is one np.concatenate of
    # cached word bitmaps and blank gaps.

    def _word_bitmap(self, word: str) -> tuple[np.ndarray, int]:
        """A word's coverage (line_height rows × its ink columns) and the pen-relative
        column of its column 0. Cached across faces in a bounded LRU."""
        key = (self.weight, self.size, word)
        cached = _WORD_BITMAPS.get(key)
        if cached is not None:
            return cached
        _, left, right, _, _ = self.metrics(word)
        buf = np.zeros((self.line_height, right - left), dtype=np.uint8)
        pen = 0
        glyph = self.glyph
        for c in word:
            g = glyph(c)
            if g is None:
                continue
            if g.mask.size:
                h, w = g.mask.shape
                x = pen + g.x0 - left
                buf[g.y0 : g.y0 + h, x : x + w][g.mask] = 255
            pen += g.advance
        buf.flags.writeable = False
        result = (buf, left)
        _WORD_BITMAPS.put(key, result)
        return result

    def coverage(self, text: str) -> np.ndarray:
        """Read-only uint8 coverage (line_height, width(text)), 255 where `text` has ink."""
        key = (self.weight, self.size, text)
        cached = _LINES.get(key)
        if cached is not None:
            return cached
        placed, (adv, left, right, _, _) = self._layout(text)
        origin = min(left, 0)
        width = max(right, adv) - origin
        lh = self.line_height
        pieces: list[np.ndarray] = []
        spans: list[tuple[int, np.ndarray]] = []
        cursor, overlap = 0, False
        for pen, word in placed:
            bitmap, off = self._word_bitmap(word)
            start = pen + off - origin
            if start < cursor:
                overlap = True
            elif start > cursor:
                pieces.append(_blank(lh, start - cursor))
            pieces.append(bitmap)
            spans.append((start, bitmap))
            cursor = start + bitmap.shape[1]
        if overlap:  # ink of one word reaching over the next: OR them instead
            line = np.zeros((lh, width), dtype=np.uint8)
            for start, bitmap in spans:
                line[:, start : start + bitmap.shape[1]] |= bitmap
        else:
            if cursor < width:
                pieces.append(_blank(lh, width - cursor))
            if len(pieces) == 1:
                line = pieces[0]
            elif pieces:
                line = np.concatenate(pieces, axis=1)
            else:
                line = np.zeros((lh, width), dtype=np.uint8)
        line.flags.writeable = False
        _LINES.put(key, line)
        return line

    def line(self, text: str) -> np.ndarray:
        """A bool mask (line_height, width(text)) of `text` drawn on one line."""
        mask: np.ndarray = self.coverage(text) != 0
        return mask

    def draw(self, target: np.ndarray, x: int, y: int, text: str, value: int,
             clip: tuple[int, int, int, int] | None = None) -> None:
        """Set the ink pixels of `text` in the uint8 array `target` to `value`, with the
        line bitmap's top-left corner at (x, y), only inside `clip` = (x0, y0, x1, y1)
        (default: all of `target`)."""
        blend(target, x, y, self.coverage(text), value, clip)


def _blank(height: int, width: int) -> np.ndarray:
    key = (height, width)
    blank = _BLANKS.get(key)
    if blank is None:
        blank = np.zeros(key, dtype=np.uint8)
        blank.flags.writeable = False
        if len(_BLANKS) < 4096:
            _BLANKS[key] = blank
    return blank


_BLANKS: dict[tuple[int, int], np.ndarray] = {}


def blend(target: np.ndarray, x: int, y: int, coverage: np.ndarray, value: int,
          clip: tuple[int, int, int, int] | None = None) -> None:
    """Set ``target`` (2-D uint8) to `value` where `coverage` (uint8 0/255, placed with its
    top-left corner at x, y) is 255, within `clip` = (x0, y0, x1, y1) and the target.

    Done as ``t ^= (t ^ value) & coverage``: three byte-wise passes, no boolean indexing.
    """
    H, W = target.shape
    if clip is None:
        cx0, cy0, cx1, cy1 = 0, 0, W, H
    else:
        cx0, cy0, cx1, cy1 = max(0, clip[0]), max(0, clip[1]), min(W, clip[2]), min(H, clip[3])
    h, w = coverage.shape
    x0, y0, x1, y1 = max(x, cx0), max(y, cy0), min(x + w, cx1), min(y + h, cy1)
    if x1 <= x0 or y1 <= y0:
        return
    region = target[y0:y1, x0:x1]
    tmp = region ^ np.uint8(value)
    tmp &= coverage[y0 - y : y1 - y, x0 - x : x1 - x]
    region ^= tmp


@functools.lru_cache(maxsize=256)
def get_face(weight: FontWeight, size: int) -> Face:
    """The shared `Face` for (`weight`, `size`)."""
    return Face(weight, size)
