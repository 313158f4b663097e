"""Drawing layouts straight into palette indices.

A `Canvas` is one label's bitmap of palette indices (0 black, 1 white, 2 yellow, 3 red),
(height, width) uint8 in reading orientation, bound to one label model. Its methods are
shaped like ``PIL.ImageDraw`` (geometry first, keyword options) and take colour *names*,
which are resolved through `render.palette.resolve` in exactly one place, `Canvas.colour`,
so a colour a panel lacks degrades the same way everywhere.

Flat artwork (text, prices, rules, codes) is drawn as crisp ink: only palette indices are
ever written, never a dithered shade. Photos (`Image` elements) are scaled and reduced with
`render.dither.reduce` and pasted as indices.

Geometry conventions:
- ``box`` arguments are a `render.layout.Box` or an ``(x, y, w, h)`` tuple;
- ``xy`` of `Canvas.rect` is a `Box` or Pillow-style corners ``(x0, y0, x1, y1)`` with the
  bottom-right corner included, as in ``ImageDraw.rectangle``;
- ``xy`` of `Canvas.line` is a flat ``(x1, y1, x2, y2, ...)`` or a sequence of points.
Everything is clipped to the canvas; text, prices and barcodes are also clipped to their box.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any, Literal, Union

import numpy as np
from PIL import Image as PILImage
from PIL import ImageDraw

from firmware_proto.models import LabelModel, get_model
from render.codes import EAN13_GUARDS, EccLevel, ean13_modules, qr_matrix
from render.fonts import FontWeight
from render.glyphs import Face, LRUCache, blend, get_face
from render.layout import QR, Barcode, Box, Dither, Element, Image, Label, Line, Price, Rect, Text
from render.palette import BLACK, WHITE, resolve
from render.text import FittedText, fit_text, set_price

__all__ = ["Canvas", "DrawError", "draw_label", "ImageLoader", "BoxLike", "clear_image_cache"]

log = logging.getLogger(__name__)

BoxLike = Union[Box, tuple[int, int, int, int]]
ImageLoader = Callable[[str], PILImage.Image]
Fit = Literal["contain", "cover", "stretch"]

_Reduced = tuple[np.ndarray, tuple[int, int]]  # indices and their offset inside the box

_QR_BLOCKS: LRUCache[tuple[str, str, int, int], np.ndarray] = LRUCache(4096)
_BARCODE_BLOCKS: LRUCache[tuple[str, int, int, bool, int], np.ndarray] = LRUCache(1024)
_IMAGES: LRUCache[tuple[str, int, int, str, str, str], _Reduced] = LRUCache(64)
_warned_lock = threading.Lock()
_warned_srcs: set[str] = set()
_MAX_WARNED = 1024


class DrawError(ValueError):
    """Something that cannot be drawn as asked (a code too big for its box, a base canvas of
    another model); the message names the element's field and value."""


def clear_image_cache() -> None:
    """Forget reduced catalogue pictures (e.g. after the catalogue's images changed)."""
    _IMAGES.clear()


_ALIGNS = ("left", "center", "right")
_VALIGNS = ("top", "middle", "bottom")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise DrawError(f"{name} must be one of {', '.join(choices)}, got {value!r}")


def _box(box: BoxLike) -> tuple[int, int, int, int]:
    if isinstance(box, Box):
        return box.x, box.y, box.w, box.h
    x, y, w, h = (int(v) for v in box)
    if w <= 0 or h <= 0:
        raise DrawError(f"box must have positive width and height, got {box!r}")
    return x, y, w, h


def _warn_once(src: str, message: str, *args: object) -> None:
    with _warned_lock:
        if src in _warned_srcs:
            return
        if len(_warned_srcs) < _MAX_WARNED:
            _warned_srcs.add(src)
    log.warning(message, *args)


class Canvas:
    """A label's bitmap of palette indices with drawing primitives (see module docstring)."""

    __slots__ = ("model", "indices")

    def __init__(self, model: LabelModel, background: str = "white") -> None:
        self.model = model
        self.indices: np.ndarray = np.full(
            (model.height, model.width), self.colour(background, "fill"), dtype=np.uint8
        )

    def copy(self) -> Canvas:
        """An independent canvas with the same model and pixels (e.g. a template's static
        parts drawn once, copied per product)."""
        other = Canvas.__new__(Canvas)
        other.model = self.model
        other.indices = self.indices.copy()
        return other

    def colour(self, name: str, role: Literal["ink", "fill"] = "ink") -> int:
        """The palette index for colour `name` on this model (the one place names resolve)."""
        return resolve(name, self.model.colours, role=role)

    # -- low level ---------------------------------------------------------------------------

    def _clip(self, x: int, y: int, w: int, h: int,
              clip: tuple[int, int, int, int] | None) -> tuple[int, int, int, int]:
        """Intersect rectangle (x, y, w, h) with the canvas and `clip`: (x0, y0, x1, y1)."""
        H, W = self.indices.shape
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, W), min(y + h, H)
        if clip is not None:
            cx, cy, cw, ch = clip
            x0, y0, x1, y1 = max(x0, cx), max(y0, cy), min(x1, cx + cw), min(y1, cy + ch)
        return x0, y0, x1, y1

    def _blit_mask(self, x: int, y: int, mask: np.ndarray, ink: int,
                   clip: tuple[int, int, int, int] | None = None) -> None:
        """Set pixels where bool `mask` (placed at x, y) is True to `ink`, inside `clip`
        = (x, y, w, h) if given."""
        coverage = np.where(mask, np.uint8(255), np.uint8(0))
        self._blit_coverage(x, y, coverage, ink, clip)

    def _blit_coverage(self, x: int, y: int, coverage: np.ndarray, ink: int,
                       clip: tuple[int, int, int, int] | None = None) -> None:
        """Set pixels where uint8 `coverage` (placed at x, y) is 255 to `ink`, inside `clip`
        = (x, y, w, h) if given."""
        box = None if clip is None else (clip[0], clip[1], clip[0] + clip[2], clip[1] + clip[3])
        blend(self.indices, x, y, coverage, ink, box)

    def _fill(self, x: int, y: int, w: int, h: int, index: int,
              clip: tuple[int, int, int, int] | None = None) -> None:
        x0, y0, x1, y1 = self._clip(x, y, w, h, clip)
        if x1 > x0 and y1 > y0:
            self.indices[y0:y1, x0:x1] = index

    def paste_indices(self, xy: tuple[int, int], indices: np.ndarray) -> None:
        """Copy a block of palette indices (e.g. an already reduced photo) with its top-left
        corner at `xy`, clipped to the canvas. Values must be valid palette indices."""
        block = np.asarray(indices)
        if block.ndim != 2:
            raise DrawError(f"indices must be a 2-D array, got shape {block.shape}")
        if block.size and int(block.max()) > 3:
            raise DrawError(f"indices must be palette indices 0..3, got max {int(block.max())}")
        self._paste(int(xy[0]), int(xy[1]), block)

    def _paste(self, x: int, y: int, block: np.ndarray) -> None:
        h, w = block.shape
        x0, y0, x1, y1 = self._clip(x, y, w, h, None)
        if x1 > x0 and y1 > y0:
            self.indices[y0:y1, x0:x1] = block[y0 - y : y1 - y, x0 - x : x1 - x]

    # -- shapes ------------------------------------------------------------------------------

    def rect(self, xy: BoxLike | Sequence[int], *, fill: str | None = None,
             outline: str | None = None, width: int = 1, radius: int = 0) -> None:
        """A rectangle: `fill` inside, `outline` of `width` pixels drawn inwards (as
        ``ImageDraw.rectangle``); `radius` > 0 rounds the corners."""
        if isinstance(xy, Box):
            x, y, w, h = xy.x, xy.y, xy.w, xy.h
        else:
            x0, y0, x1, y1 = (int(v) for v in xy)
            if x1 < x0 or y1 < y0:
                raise DrawError(f"rect xy must have x1 >= x0 and y1 >= y0, got {tuple(xy)!r}")
            x, y, w, h = x0, y0, x1 - x0 + 1, y1 - y0 + 1
        fill_i = None if fill is None else self.colour(fill, "fill")
        out_i = None if outline is None or width <= 0 else self.colour(outline, "ink")
        if radius > 0:
            r = min(radius, (min(w, h) - 1) // 2)
            if fill_i is not None:
                self._blit_mask(x, y, _rounded_mask(w, h, r, None), fill_i)
            if out_i is not None:
                self._blit_mask(x, y, _rounded_mask(w, h, r, width), out_i)
            return
        if fill_i is not None:
            self._fill(x, y, w, h, fill_i)
        if out_i is not None:
            t = min(width, (min(w, h) + 1) // 2)
            self._fill(x, y, w, t, out_i)
            self._fill(x, y + h - t, w, t, out_i)
            self._fill(x, y, t, h, out_i)
            self._fill(x + w - t, y, t, h, out_i)

    def line(self, xy: Sequence[int] | Sequence[tuple[int, int]], *, fill: str = "black",
             width: int = 1) -> None:
        """A polyline through the points of `xy`, `width` pixels thick. Horizontal and
        vertical segments cover rows/columns ``c - (width - 1) // 2 .. c + width // 2``."""
        pts = _points(xy)
        ink = self.colour(fill, "ink")
        width = max(1, int(width))
        lo = (width - 1) // 2
        for (xa, ya), (xb, yb) in zip(pts, pts[1:]):
            if ya == yb:
                x0, x1 = min(xa, xb), max(xa, xb)
                self._fill(x0, ya - lo, x1 - x0 + 1, width, ink)
            elif xa == xb:
                y0, y1 = min(ya, yb), max(ya, yb)
                self._fill(xa - lo, y0, width, y1 - y0 + 1, ink)
            else:
                pad = width
                ox, oy = min(xa, xb) - pad, min(ya, yb) - pad
                img = PILImage.new("1", (abs(xb - xa) + 2 * pad + 1, abs(yb - ya) + 2 * pad + 1), 0)
                ImageDraw.Draw(img).line((xa - ox, ya - oy, xb - ox, yb - oy), fill=1, width=width)
                self._blit_mask(ox, oy, np.asarray(img, dtype=bool), ink)

    # -- type --------------------------------------------------------------------------------

    def text(self, box: BoxLike, content: str, *, size: int = 16, min_size: int = 8,
             weight: FontWeight = "regular", align: str = "left", valign: str = "top",
             max_lines: int = 1, fill: str = "black", strike: bool = False) -> FittedText:
        """Fit `content` into `box` (see `render.text.fit_text`) and draw it in flat `fill`
        ink; `strike` draws a line through the middle of each line's lower-case letters.
        Returns how the text was set."""
        x, y, w, h = _box(box)
        _check_choice("align", align, _ALIGNS)
        _check_choice("valign", valign, _VALIGNS)
        fitted = fit_text(content, w, h, size=size, min_size=min_size, weight=weight,
                          max_lines=max_lines)
        if not fitted.lines:
            return fitted
        ink = self.colour(fill, "ink")
        face = get_face(weight, fitted.size)
        lh = fitted.line_height
        if valign == "middle":
            ty = y + (h - fitted.height) // 2
        elif valign == "bottom":
            ty = y + h - fitted.height
        else:
            ty = y
        clip = (x, y, w, h)
        thick = max(1, round(fitted.size / 12))
        for i, (line, lw) in enumerate(zip(fitted.lines, fitted.widths)):
            if not line:
                continue
            if align == "center":
                lx = x + (w - lw) // 2
            elif align == "right":
                lx = x + w - lw
            else:
                lx = x
            ly = ty + i * lh
            face.draw(self.indices, lx, ly, line, ink, (x, y, x + w, y + h))
            if strike:
                mid = ly + (face.x_top + face.ascent) // 2 - thick // 2
                self._fill(lx, mid, lw, thick, ink, clip)
        return fitted

    def price(self, box: BoxLike, amount: Decimal, *, currency: str = "PLN", size: int = 48,
              fill: str = "black", align: str = "right", strike: bool = False,
              weight: FontWeight = "bold") -> int:
        """Draw `amount` as a shelf price (see `render.text.set_price`), shrunk until it fits
        `box`, aligned horizontally by `align` and centred vertically. Returns the size used."""
        x, y, w, h = _box(box)
        _check_choice("align", align, _ALIGNS)
        setting = set_price(Decimal(amount), currency, w, h, size=size, weight=weight, strike=strike)
        mh, mw = setting.coverage.shape
        if align == "center":
            px = x + (w - mw) // 2
        elif align == "left":
            px = x
        else:
            px = x + w - mw
        py = y + (h - mh) // 2
        self._blit_coverage(px, py, setting.coverage, self.colour(fill, "ink"), (x, y, w, h))
        return setting.size

    # -- codes -------------------------------------------------------------------------------

    def qr(self, xy: tuple[int, int], size: int, data: str, *, ecc: EccLevel = "M",
           fill: str = "black") -> int:
        """A QR code in the `size` × `size` square at `xy`: modules scaled by the largest
        whole number of pixels that fits, centred; the square is painted white first so the
        code has paper under it (black under white ink: an inverted code). Leave a quiet
        zone around the square in the layout.
        Returns the module size in pixels; raises `DrawError` if not 1 px a module fits."""
        x, y = int(xy[0]), int(xy[1])
        matrix = qr_matrix(data, ecc)
        n = int(matrix.shape[0])
        scale = size // n
        if scale < 1:
            raise DrawError(f"qr size {size} px is smaller than the {n} modules of data {data[:40]!r} at ecc {ecc}")
        ink = self.colour(fill, "ink")
        paper = _paper_for(ink)
        key = (data, ecc, scale, ink)
        block = _QR_BLOCKS.get(key)
        if block is None:
            lut = np.array([paper, ink], dtype=np.uint8)
            small = lut[matrix.view(np.uint8)]
            block = np.ascontiguousarray(
                np.broadcast_to(small[:, None, :, None], (n, scale, n, scale)).reshape(n * scale, n * scale)
            )
            block.flags.writeable = False
            _QR_BLOCKS.put(key, block)
        self._fill(x, y, size, size, paper)
        off = (size - n * scale) // 2
        self._paste(x + off, y + off, block)
        return scale

    def barcode(self, box: BoxLike, digits: str, *, fill: str = "black",
                show_digits: bool = True) -> int:
        """An EAN-13 symbol centred in `box` on white paper: bars a whole number of pixels
        per module (quiet zones inside the box when they fit), guard bars longer, and the
        digits under the bars when `show_digits` and the box allows. Returns the module
        width; raises `DrawError` when the box is narrower than 95 px."""
        x, y, w, h = _box(box)
        ink = self.colour(fill, "ink")
        key = (digits, w, h, show_digits, ink)
        block = _BARCODE_BLOCKS.get(key)
        if block is None:
            block = _barcode_block(digits, w, h, show_digits, ink)
            block.flags.writeable = False
            _BARCODE_BLOCKS.put(key, block)
        self._paste(x, y, block)
        return int(_barcode_module(w)[0])

    # -- pictures ----------------------------------------------------------------------------

    def image(self, box: BoxLike, picture: PILImage.Image, *, fit: Fit = "contain",
              dither: Dither = "floyd-steinberg") -> None:
        """Scale `picture` into `box` by `fit`, reduce it to this panel's inks with
        `render.dither.reduce` (method `dither`) and paste it."""
        x, y, w, h = _box(box)
        indices, (ox, oy) = _reduce_picture(picture, w, h, fit, dither, self.model)
        self.paste_indices((x + ox, y + oy), indices)

    def placeholder(self, box: BoxLike) -> None:
        """The neutral frame drawn where a picture could not be loaded: an outline and a
        cross, in black."""
        x, y, w, h = _box(box)
        self.rect(Box(x, y, w, h), outline="black", width=1)
        self.line((x, y, x + w - 1, y + h - 1), fill="black")
        self.line((x, y + h - 1, x + w - 1, y), fill="black")

    def draw_image(self, element: Image, images: ImageLoader | None) -> None:
        """Draw an `Image` element, loading it with `images(src)` and caching the reduced
        result; a picture that cannot be loaded or decoded becomes a placeholder (logged
        once per src), never an exception."""
        b = element.box
        key = (element.src, b.w, b.h, element.fit, element.dither, self.model.colours)
        cached = _IMAGES.get(key)
        if cached is None:
            if images is None:
                _warn_once(element.src, "no image loader given; drawing a placeholder for %r", element.src)
                self.placeholder(b)
                return
            try:
                picture = images(element.src)
                picture.load()
                if picture.width < 1 or picture.height < 1:
                    raise DrawError(f"image {element.src!r} has no pixels")
            except Exception as exc:  # noqa: BLE001 - any loader failure must not stop a batch
                _warn_once(element.src, "could not load image %r (%s: %s); drawing a placeholder",
                           element.src, type(exc).__name__, exc)
                self.placeholder(b)
                return
            cached = _reduce_picture(picture, b.w, b.h, element.fit, element.dither, self.model)
            _IMAGES.put(key, cached)
        indices, (ox, oy) = cached
        self._paste(b.x + ox, b.y + oy, indices)

    # -- layout elements ---------------------------------------------------------------------

    def draw(self, element: Element, *, images: ImageLoader | None = None) -> None:
        """Draw one layout element (dispatching on its type).

        An element drawn into a box of its own (text, price, QR code, barcode, image) must
        fit the label's size: the box is what gets allocated (a picture scaled to it, a
        barcode drawn at it), so ``<image w="60000" h="60000">`` is refused here instead of
        asking for gigabytes. Rectangles and lines are only clipped, never allocated."""
        self._check_fits(element)
        if isinstance(element, Text):
            self.text(element.box, element.content, size=element.size, min_size=element.min_size,
                      weight=element.weight, align=element.align, valign=element.valign,
                      max_lines=element.max_lines, fill=element.colour, strike=element.strike)
        elif isinstance(element, Price):
            self.price(element.box, element.amount, currency=element.currency, size=element.size,
                       fill=element.colour, align=element.align, strike=element.strike,
                       weight=element.weight)
        elif isinstance(element, Rect):
            self.rect(element.box, fill=element.fill, outline=element.outline,
                      width=element.width, radius=element.radius)
        elif isinstance(element, Line):
            self.line((element.x1, element.y1, element.x2, element.y2), fill=element.colour,
                      width=element.width)
        elif isinstance(element, QR):
            self.qr((element.x, element.y), element.size, element.data, ecc=element.ecc,
                    fill=element.colour)
        elif isinstance(element, Barcode):
            self.barcode(element.box, element.digits, fill=element.colour,
                         show_digits=element.show_digits)
        elif isinstance(element, Image):
            self.draw_image(element, images)
        else:
            raise DrawError(f"element must be a layout element, got {type(element).__name__}")


    def _check_fits(self, element: Element) -> None:
        H, W = self.indices.shape
        if isinstance(element, QR):
            if element.size > max(W, H):
                raise DrawError(f"qr size={element.size} is larger than the {W}×{H} label")
            return
        box = getattr(element, "box", None)
        if box is None or isinstance(element, Rect):
            return
        if box.w > W or box.h > H:
            kind = type(element).__name__.lower()
            raise DrawError(f"{kind} w={box.w} h={box.h} is larger than the {W}×{H} label")


def draw_label(label: Label, *, images: ImageLoader | None = None,
               base: Canvas | None = None) -> np.ndarray:
    """Draw every element of `label` in order and return the (height, width) uint8 indices.

    With `base` (e.g. a template's static parts drawn once), drawing starts from a copy of
    it; it must be of the label's model. `images` loads an `Image` element's src.
    """
    model = get_model(label.model)
    if base is not None:
        if base.model.name != model.name:
            raise DrawError(f"base canvas is for model {base.model.name!r}, label is {label.model!r}")
        canvas = base.copy()
    else:
        canvas = Canvas(model, label.background)
    for element in label.elements:
        canvas.draw(element, images=images)
    return canvas.indices


# -- helpers ---------------------------------------------------------------------------------


def _paper_for(ink: int) -> int:
    """The light colour under a code: white paper, or black under white ink (an inverted
    code, which readers also decode), so that a code always has contrast."""
    return BLACK if ink == WHITE else WHITE


def _points(xy: Sequence[int] | Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    items: list[Any] = list(xy)
    if items and isinstance(items[0], (tuple, list)):
        pts = [(int(p[0]), int(p[1])) for p in items]
    else:
        flat = [int(v) for v in items]
        if len(flat) % 2:
            raise DrawError(f"line xy needs pairs of coordinates, got {len(flat)} numbers")
        pts = list(zip(flat[::2], flat[1::2]))
    if len(pts) < 2:
        raise DrawError(f"line xy needs at least two points, got {pts!r}")
    return pts


def _rounded_mask(w: int, h: int, r: int, width: int | None) -> np.ndarray:
    img = PILImage.new("1", (w, h), 0)
    draw = ImageDraw.Draw(img)
    if width is None:
        draw.rounded_rectangle((0, 0, w - 1, h - 1), radius=r, fill=1)
    else:
        draw.rounded_rectangle((0, 0, w - 1, h - 1), radius=r, outline=1, width=width)
    return np.asarray(img, dtype=bool)


def _barcode_module(w: int) -> tuple[int, int, int]:
    """(module px, left quiet modules, right quiet modules) for an EAN-13 `w` px wide."""
    m = w // (11 + 95 + 7)
    if m >= 1:
        return m, 11, 7
    return w // 95, 0, 0


@functools.lru_cache(maxsize=64)
def _guard_modules(m: int) -> np.ndarray:
    """Pixel columns (95 × m) that are guard bars, which extend below the others."""
    guards = np.zeros(95, dtype=bool)
    for a, b in EAN13_GUARDS:
        guards[a:b] = True
    guards &= ean13_modules("0000000000000")  # guard patterns are the same in every code
    return np.repeat(guards, m)


@functools.lru_cache(maxsize=256)
def _digit_face(m: int, h: int) -> Face | None:
    """The largest regular face whose six digits fit under a half of an EAN-13 symbol of
    module width `m` and whose digit height leaves three quarters of `h` to the bars."""
    for s in range(min(64, h), 3, -1):
        f = get_face("regular", s)
        if f.width("000000") <= 40 * m and (f.ascent - f.cap_top) <= h // 4:
            return f
    return None


def _barcode_block(digits: str, w: int, h: int, show_digits: bool, ink: int) -> np.ndarray:
    modules = ean13_modules(digits)
    m, ql, qr_ = _barcode_module(w)
    if m < 1:
        raise DrawError(f"barcode box width {w} px is narrower than the 95 modules of EAN-13 {digits}")
    paper = _paper_for(ink)
    block = np.full((h, w), paper, dtype=np.uint8)
    x0 = (w - (ql + 95 + qr_) * m) // 2 + ql * m
    face = _digit_face(m, h) if show_digits else None
    digit_h = 0 if face is None else face.ascent - face.cap_top + max(1, m)
    bars_h = h - digit_h
    if bars_h < 1:
        raise DrawError(f"barcode box height {h} px leaves no room for bars")
    lut = np.array([paper, ink], dtype=np.uint8)
    block[:bars_h, x0 : x0 + 95 * m] = lut[np.repeat(modules, m).view(np.uint8)]  # broadcast
    if face is not None:
        block[bars_h : bars_h + digit_h // 2, x0 : x0 + 95 * m] = lut[_guard_modules(m).view(np.uint8)]
        top = h - face.ascent  # line top so that the baseline is the block's last row + 1
        groups = ((digits[1:7], 3, 45), (digits[7:13], 50, 92))
        for text, a, b in groups:
            lx = x0 + (a * m + b * m - face.width(text)) // 2
            face.draw(block, lx, top, text, ink)
        fx = x0 - face.width(digits[0]) - m
        if fx >= 0:
            face.draw(block, fx, top, digits[0], ink)
    return block


def _reduce_picture(picture: PILImage.Image, w: int, h: int, fit: str, method: Dither,
                    model: LabelModel) -> _Reduced:
    """Scale `picture` into w × h by `fit`, flatten alpha onto white, reduce to indices.
    Returns the indices and their offset inside the box."""
    from render import dither  # written alongside; imported late so drawing works without it

    if picture.mode in ("RGBA", "LA", "PA") or (picture.mode == "P" and "transparency" in picture.info):
        rgba = picture.convert("RGBA")
        paper = PILImage.new("RGBA", rgba.size, (255, 255, 255, 255))
        picture = PILImage.alpha_composite(paper, rgba)
    rgb = picture.convert("RGB")
    sw, sh = rgb.size
    if sw < 1 or sh < 1:
        raise DrawError(f"image has no pixels ({sw}x{sh})")
    ox = oy = 0
    resample = PILImage.Resampling.LANCZOS
    if fit == "stretch":
        rgb = rgb.resize((w, h), resample)
    elif fit == "cover":
        k = max(w / sw, h / sh)
        nw, nh = max(w, round(sw * k)), max(h, round(sh * k))
        left, top = (nw - w) // 2, (nh - h) // 2
        rgb = rgb.resize((nw, nh), resample).crop((left, top, left + w, top + h))
    else:
        k = min(w / sw, h / sh)
        nw, nh = max(1, min(w, round(sw * k))), max(1, min(h, round(sh * k)))
        rgb = rgb.resize((nw, nh), resample)
        ox, oy = (w - nw) // 2, (h - nh) // 2
    arr = np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8))
    indices = np.asarray(dither.reduce(arr, model.colours, method), dtype=np.uint8)
    indices.flags.writeable = False
    return indices, (ox, oy)
