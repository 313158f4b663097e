"""The layout model: what a template describes, before anything is drawn.

Templates produce markup; the markup parser turns it into these frozen values; the canvas
draws them. Every element is validated at construction so that drawing never has to guess.
Coordinates are pixels in the label's reading orientation, origin top-left.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Literal, Union

__all__ = [
    "LayoutError", "Box", "Text", "Price", "Rect", "Line", "QR", "Barcode", "Image",
    "Element", "Label", "Align", "VAlign", "Weight", "Dither", "ean13_check_digit",
]

Align = Literal["left", "center", "right"]
VAlign = Literal["top", "middle", "bottom"]
Weight = Literal["regular", "bold"]
Dither = Literal["nearest", "bayer", "blue-noise", "floyd-steinberg", "atkinson"]
Colour = Literal["black", "white", "yellow", "red"]

_COLOURS = ("black", "white", "yellow", "red")
_DITHERS = ("nearest", "bayer", "blue-noise", "floyd-steinberg", "atkinson")


class LayoutError(ValueError):
    """A layout element with an invalid value; the message names the field and the value."""


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise LayoutError(message)


def _check_colour(name: str, value: str | None, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    _check(value in _COLOURS, f"{name} must be one of {', '.join(_COLOURS)}, got {value!r}")


@dataclass(frozen=True, slots=True)
class Box:
    x: int
    y: int
    w: int
    h: int

    def __post_init__(self) -> None:
        for name in ("x", "y", "w", "h"):
            v = getattr(self, name)
            _check(isinstance(v, int) and not isinstance(v, bool), f"{name} must be an integer, got {v!r}")
        _check(self.w > 0, f"w must be > 0, got {self.w}")
        _check(self.h > 0, f"h must be > 0, got {self.h}")


@dataclass(frozen=True, slots=True)
class Text:
    """Text fitted into `box`: wrapped onto at most `max_lines` lines and shrunk from `size`
    down to `min_size` until it fits; what still does not fit is cut with an ellipsis."""

    box: Box
    content: str
    size: int = 16
    min_size: int = 8
    weight: Weight = "regular"
    align: Align = "left"
    valign: VAlign = "top"
    max_lines: int = 1
    colour: Colour = "black"
    strike: bool = False

    def __post_init__(self) -> None:
        _check(4 <= self.min_size <= self.size <= 400, f"text size must satisfy 4 <= min_size <= size <= 400, got min_size={self.min_size} size={self.size}")
        _check(self.weight in ("regular", "bold"), f"weight must be regular or bold, got {self.weight!r}")
        _check(self.align in ("left", "center", "right"), f"align must be left, center or right, got {self.align!r}")
        _check(self.valign in ("top", "middle", "bottom"), f"valign must be top, middle or bottom, got {self.valign!r}")
        _check(1 <= self.max_lines <= 20, f"max_lines must be 1..20, got {self.max_lines}")
        _check_colour("colour", self.colour)


@dataclass(frozen=True, slots=True)
class Price:
    """A price drawn the way shelves show it: large units, small raised decimals, and the
    currency symbol; `strike` draws it crossed out (a regular price during a promotion)."""

    box: Box
    amount: Decimal
    currency: str = "PLN"
    size: int = 48
    colour: Colour = "black"
    align: Align = "right"
    strike: bool = False
    weight: Weight = "bold"

    def __post_init__(self) -> None:
        _check(isinstance(self.amount, Decimal) and self.amount.is_finite(), f"amount must be a finite Decimal, got {self.amount!r}")
        _check(self.amount >= 0, f"amount must be >= 0, got {self.amount}")
        _check(8 <= self.size <= 400, f"size must be 8..400, got {self.size}")
        _check(len(self.currency) <= 8, f"currency must be at most 8 characters, got {self.currency!r}")
        _check_colour("colour", self.colour)
        _check(self.align in ("left", "center", "right"), f"align must be left, center or right, got {self.align!r}")


@dataclass(frozen=True, slots=True)
class Rect:
    box: Box
    fill: Colour | None = None
    outline: Colour | None = None
    width: int = 1
    radius: int = 0

    def __post_init__(self) -> None:
        _check_colour("fill", self.fill, optional=True)
        _check_colour("outline", self.outline, optional=True)
        _check(0 <= self.width <= 100, f"width must be 0..100, got {self.width}")
        _check(0 <= self.radius <= 1000, f"radius must be 0..1000, got {self.radius}")


@dataclass(frozen=True, slots=True)
class Line:
    x1: int
    y1: int
    x2: int
    y2: int
    colour: Colour = "black"
    width: int = 1

    def __post_init__(self) -> None:
        _check_colour("colour", self.colour)
        _check(1 <= self.width <= 100, f"width must be 1..100, got {self.width}")


@dataclass(frozen=True, slots=True)
class QR:
    """A QR code whose modules are scaled by a whole number of pixels to fit `size`."""

    x: int
    y: int
    size: int
    data: str
    ecc: Literal["L", "M", "Q", "H"] = "M"
    colour: Colour = "black"

    def __post_init__(self) -> None:
        _check(self.size >= 21, f"size must be >= 21 pixels, got {self.size}")
        _check(0 < len(self.data.encode()) <= 1024, f"data must be 1..1024 bytes, got {len(self.data.encode())}")
        _check(self.ecc in ("L", "M", "Q", "H"), f"ecc must be L, M, Q or H, got {self.ecc!r}")
        _check_colour("colour", self.colour)


def ean13_check_digit(first12: str) -> int:
    """The EAN-13 check digit for twelve digits (weights 1,3,1,3… from the left)."""
    total = sum(int(d) * (3 if i % 2 else 1) for i, d in enumerate(first12))
    return (10 - total % 10) % 10


@dataclass(frozen=True, slots=True)
class Barcode:
    """An EAN-13 barcode; `digits` must be 13 digits with a correct check digit."""

    box: Box
    digits: str
    colour: Colour = "black"
    show_digits: bool = True

    def __post_init__(self) -> None:
        _check(len(self.digits) == 13 and self.digits.isascii() and self.digits.isdigit(), f"EAN-13 must be 13 digits, got {self.digits!r}")
        expected = ean13_check_digit(self.digits[:12])
        _check(int(self.digits[12]) == expected, f"EAN-13 {self.digits!r} has check digit {self.digits[12]}, expected {expected}")
        _check_colour("colour", self.colour)


@dataclass(frozen=True, slots=True)
class Image:
    """A catalogue picture scaled into `box`; photos are dithered with `dither`."""

    box: Box
    src: str
    fit: Literal["contain", "cover", "stretch"] = "contain"
    dither: Dither = "floyd-steinberg"

    def __post_init__(self) -> None:
        _check(bool(self.src), "src must not be empty")
        _check(self.fit in ("contain", "cover", "stretch"), f"fit must be contain, cover or stretch, got {self.fit!r}")
        _check(self.dither in _DITHERS, f"dither must be one of {', '.join(_DITHERS)}, got {self.dither!r}")


Element = Union[Text, Price, Rect, Line, QR, Barcode, Image]


@dataclass(frozen=True, slots=True)
class Label:
    """A whole label: the model it is drawn for, its paper colour and elements in paint order."""

    model: str
    background: Colour = "white"
    elements: tuple[Element, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        _check_colour("background", self.background)
