"""Sample data for demos and template checks: a catalogue and generated product photos.

The catalogue (``esl_templates/sample_catalogue.json``) holds Polish/EU groceries with
diacritics, valid EAN-13s, unit sizes and promotions. Its promotion windows are moved by
whole weeks so that they run at the `now` given (a demo rendered in any month shows them).

Product photos are drawn here with numpy (lit spheres, cylinders, boxes over a soft
background with a shadow), so the demo and the benchmarks need no third-party images.
``sample:<kind>:<colour>`` names one, e.g. ``sample:fruit:red`` or ``sample:bottle:green``.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

import numpy as np
from PIL import Image as PILImage

from render.context import parse_when

__all__ = [
    "SampleError", "sample_catalogue", "product_photo", "image_resolver", "PHOTO_KINDS",
    "PHOTO_COLOURS", "ImageResolver",
]

ImageResolver = Callable[[str], PILImage.Image]

PHOTO_KINDS: Final = ("fruit", "bottle", "package", "loaf")
PHOTO_COLOURS: Final[dict[str, tuple[int, int, int]]] = {
    "red": (196, 38, 34), "yellow": (236, 186, 36), "brown": (128, 78, 40),
    "white": (232, 230, 222), "blue": (52, 104, 186), "green": (52, 128, 60),
}


class SampleError(ValueError):
    """An unknown sample photo name or an image source that cannot be read."""


def sample_catalogue(now: datetime | None = None) -> list[dict[str, Any]]:
    """The sample product records (fresh copies), promotions moved to run at `now`."""
    text = (importlib.resources.files("esl_templates") / "sample_catalogue.json").read_text("utf-8")
    records: list[dict[str, Any]] = json.loads(text, parse_float=Decimal)
    now = now or datetime.now(timezone.utc)
    for rec in records:
        promo = rec.get("promo")
        if not promo or not promo.get("from") or not promo.get("to"):
            continue
        start, end = parse_when(promo["from"]), parse_when(promo["to"], end_of_day=True)
        week = timedelta(days=7)
        if now > end:
            k = -(-(now - end) // week)  # whole weeks forward, rounded up
        elif now < start:
            k = (now - start) // week  # whole weeks back (negative), rounded away from zero
        else:
            continue
        promo["from"] = (start + k * week).date().isoformat()
        promo["to"] = (end + k * week).date().isoformat()
    return records


# --- generated photos ----------------------------------------------------------------------

def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    return x / w, y / h


def _background(h: int, w: int) -> np.ndarray:
    x, y = _grid(h, w)
    top = np.array([236, 238, 242], np.float32)
    bottom = np.array([196, 200, 208], np.float32)
    img = top + (bottom - top) * (y[..., None] ** 1.3)
    img += 10 * np.sin(x * 3.1)[..., None]  # a soft side light
    return img


def _shadow(img: np.ndarray, cx: float, cy: float, rx: float, ry: float) -> None:
    h, w, _ = img.shape
    x, y = _grid(h, w)
    d = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2
    img *= (1 - 0.45 * np.exp(-d * 1.6))[..., None]


def _paint(img: np.ndarray, mask: np.ndarray, colour: np.ndarray, shade: np.ndarray) -> None:
    lit = colour[None, None, :] * shade[..., None]
    img[mask] = lit[mask]


def _fruit(img: np.ndarray, colour: np.ndarray) -> None:
    h, w, _ = img.shape
    x, y = _grid(h, w)
    cx, cy, r = 0.5, 0.55, 0.3
    _shadow(img, cx + 0.04, cy + r * 0.95, r * 1.1, r * 0.22)
    dx, dy = (x - cx) / r, (y - cy) / (r * 0.95)
    d2 = dx * dx + dy * dy
    mask = d2 < 1
    nz = np.sqrt(np.clip(1 - d2, 0, 1))
    light = np.array([-0.5, -0.6, 0.62])
    lam = np.clip(dx * light[0] + dy * light[1] + nz * light[2], 0, 1)
    shade = 0.25 + 0.85 * lam
    _paint(img, mask, colour, shade)
    spec = np.exp(-(((dx + 0.35) ** 2 + (dy + 0.4) ** 2) / 0.02)) * mask
    img += (spec * 120)[..., None]
    # stem and leaf
    stem = (np.abs(x - cx - 0.01) < 0.012) & (y > cy - r * 1.15) & (y < cy - r * 0.85)
    img[stem] = (70, 50, 30)
    lx, ly = (x - cx - 0.09) / 0.09, (y - cy + r * 1.02) / 0.035
    leaf = lx * lx + ly * ly < 1
    img[leaf] = np.array([60, 130, 50], np.float32) * (0.8 + 0.3 * (1 - ly[leaf] ** 2))[..., None]


def _bottle(img: np.ndarray, colour: np.ndarray) -> None:
    h, w, _ = img.shape
    x, y = _grid(h, w)
    cx, half = 0.5, 0.15
    _shadow(img, cx + 0.03, 0.9, half * 1.4, 0.04)
    u = (x - cx) / half
    neck_half = 0.35
    shoulder = np.clip((y - 0.2) / 0.15, 0, 1)
    width = neck_half + (1 - neck_half) * (3 * shoulder**2 - 2 * shoulder**3)
    body = (np.abs(u) < width) & (y > 0.1) & (y < 0.9)
    nz = np.sqrt(np.clip(1 - (u / np.maximum(width, 1e-3)) ** 2, 0, 1))
    shade = 0.3 + 0.8 * np.clip(-0.45 * u / np.maximum(width, 1e-3) + 0.8 * nz, 0, 1)
    _paint(img, body, colour, shade)
    cap = (np.abs(u) < neck_half * 1.15) & (y > 0.06) & (y < 0.13)
    _paint(img, cap, np.array([40, 40, 44], np.float32), 0.7 + 0.5 * nz)
    label = body & (y > 0.45) & (y < 0.72)
    _paint(img, label, np.array([242, 240, 232], np.float32), 0.55 + 0.5 * nz)
    stripe = body & (y > 0.55) & (y < 0.6)
    _paint(img, stripe, colour * 0.8, 0.55 + 0.5 * nz)
    glint = body & (np.abs(u + 0.5 * width) < 0.08)
    img[glint] = np.minimum(img[glint] + 70, 255)


def _package(img: np.ndarray, colour: np.ndarray) -> None:
    h, w, _ = img.shape
    x, y = _grid(h, w)
    _shadow(img, 0.52, 0.86, 0.34, 0.05)
    front = (x > 0.2) & (x < 0.68) & (y > 0.22) & (y < 0.85)
    side = (x >= 0.68) & (x < 0.82) & (y > 0.22 - (x - 0.68) * 0.5) & (y < 0.85 - (x - 0.68) * 0.5)
    top = (y <= 0.22) & (y > 0.15) & (x > 0.2 + (0.22 - y) * 2) & (x < 0.82 + (0.22 - y) * 2 - 0.14)
    grad = 0.85 + 0.25 * (1 - y)
    _paint(img, front, colour, grad)
    _paint(img, side, colour, 0.62 * grad)
    _paint(img, top, colour, np.full_like(x, 1.08))
    band = front & (y > 0.45) & (y < 0.65)
    _paint(img, band, np.array([245, 244, 238], np.float32), grad)
    mark = band & (((x - 0.44) / 0.1) ** 2 + ((y - 0.55) / 0.07) ** 2 < 1)
    _paint(img, mark, np.array([200, 40, 36], np.float32), grad)


def _loaf(img: np.ndarray, colour: np.ndarray) -> None:
    h, w, _ = img.shape
    x, y = _grid(h, w)
    cx, cy, rx, ry = 0.5, 0.6, 0.36, 0.2
    _shadow(img, cx + 0.02, cy + ry * 0.95, rx * 1.05, 0.05)
    dx, dy = (x - cx) / rx, (y - cy) / ry
    d2 = dx * dx + dy * dy
    mask = (d2 < 1) & (dy < 0.75)
    nz = np.sqrt(np.clip(1 - d2, 0, 1))
    shade = 0.35 + 0.8 * np.clip(-0.3 * dx - 0.6 * dy + 0.7 * nz, 0, 1)
    _paint(img, mask, colour, shade)
    for k in (-0.45, 0.0, 0.45):  # scores in the crust
        cut = mask & (np.abs(dx - k - 0.25 * dy) < 0.05) & (dy < 0.1)
        img[cut] = np.minimum(img[cut] * 1.35 + 30, 255)


_DRAW: Final = {"fruit": _fruit, "bottle": _bottle, "package": _package, "loaf": _loaf}


@functools.lru_cache(maxsize=32)
def product_photo(kind: str, colour: str = "red", size: tuple[int, int] = (480, 480)) -> PILImage.Image:
    """A generated, photo-like RGB product picture (deterministic for its arguments)."""
    if kind not in _DRAW:
        raise SampleError(f"unknown sample photo kind {kind!r}; expected one of {', '.join(_DRAW)}")
    if colour not in PHOTO_COLOURS:
        raise SampleError(f"unknown sample photo colour {colour!r}; expected one of {', '.join(PHOTO_COLOURS)}")
    w, h = size
    if not (16 <= w <= 4096 and 16 <= h <= 4096):
        raise SampleError(f"sample photo size must be 16..4096 pixels a side, got {size}")
    img = _background(h, w)
    _DRAW[kind](img, np.array(PHOTO_COLOURS[colour], np.float32))
    rng = np.random.default_rng(7)
    img += rng.normal(0, 3.0, img.shape).astype(np.float32)  # sensor grain, like a real photo
    return PILImage.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def image_resolver(base_dir: str | Path | None = None, *, files: bool = True) -> ImageResolver:
    """A callable turning an element's ``src`` into a PIL image.

    ``sample:kind:colour`` gives a generated photo; anything else is a file path, which must
    lie inside `base_dir` when one is given (templates never read arbitrary files). With
    ``files=False`` no path is ever read: a server renders what templates and POS messages
    name, and neither may choose a file on the server's disk.
    """
    base = Path(base_dir).resolve() if base_dir is not None else None

    @functools.lru_cache(maxsize=64)
    def resolve(src: str) -> PILImage.Image:
        if src.startswith("sample:"):
            parts = src.split(":")
            return product_photo(parts[1] if len(parts) > 1 else "fruit",
                                 parts[2] if len(parts) > 2 else "red")
        if not files:
            raise SampleError(f"image src {src[:200]!r}: expected a sample: image "
                              "(this renderer reads no files)")
        path = Path(src)
        if base is not None:
            path = (base / path).resolve()
            if not path.is_relative_to(base):
                raise SampleError(f"image src {src!r} lies outside {base}")
        try:
            with PILImage.open(path) as im:
                im.load()
                return im.convert("RGB")
        except (OSError, ValueError) as exc:
            raise SampleError(f"cannot read image src {src!r}: {exc}") from None

    return resolve
