"""Micro-benchmark: drawing a 2.9" shelf label into palette indices, per element, against
Pillow doing the same drawing in the same run.

Run: ``python benchmarks/draw.py [--n 2000] [--repeat 3]``. Prints a table and one JSON line.

Every product is distinct (name, price, unit price, URL, EAN), as in a store-wide
repricing. "ours" includes everything our canvas does (fitting, shrinking, caching);
the Pillow baseline only *draws* the same, already fitted, lines with ``ImageDraw.text`` on
an "L" image at the same size (so the ratio understates our advantage), and encodes QR
codes with the ``qrcode`` package. QR codes are measured both ways: "cached" is the price
change case (the product URL was encoded in an earlier batch), "new" encodes with
zxing-cpp. Each figure is the best of ``--repeat`` passes over all products.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

# Run as a script, this folder comes first on sys.path, and benchmarks/render.py would
# shadow the `render` package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import numpy as np  # noqa: E402 - after the sys.path fix
from PIL import Image, ImageDraw  # noqa: E402

from firmware_proto.models import get_model
from render import codes
from render.canvas import Canvas, _QR_BLOCKS, _BARCODE_BLOCKS, draw_label
from render.fonts import get_font
from render.layout import QR, Barcode, Box, Label, Price, Text, ean13_check_digit
from render.text import DECIMALS_RATIO, fit_text, set_price

_WORDS = (
    "masło ser żółty gouda jogurt naturalny kawa ziarnista herbata czarna sok pomarańczowy "
    "mleko chleb żytni pełnoziarnisty woda mineralna gazowana czekolada gorzka makaron penne "
    "ryż basmati jabłka szampion pomidory malinowe ogórki kiszone kiełbasa śląska szynka "
    "wędzona płatki owsiane miód wielokwiatowy olej rzepakowy mąka pszenna cukier trzcinowy"
).split()
_BRANDS = ("Łaciate", "Mlekovita", "Wedel", "Pudliszki", "Żywiec", "Tymbark", "Sokołów", "Lubella")
_SIZES = ("200 g", "1 kg", "500 ml", "1,5 l", "6 × 330 ml", "250 g", "90 g")


def _catalogue(n: int, seed: int = 7) -> list[dict[str, Any]]:
    rnd = random.Random(seed)
    products = []
    for i in range(n):
        name = " ".join(rnd.choice(_WORDS) for _ in range(rnd.randint(2, 5))).capitalize()
        name = f"{name} {rnd.choice(_BRANDS)} {rnd.choice(_SIZES)}"
        price = Decimal(rnd.randint(1, 300)) + Decimal(rnd.choice([99, 49, 29, 0, 79, rnd.randint(0, 99)])) / 100
        first12 = f"590{i:09d}"
        products.append({
            "name": name,
            "price": price,
            "unit": f"{price * 4:.2f} zł/kg".replace(".", ","),
            "url": f"https://sklep.example/p/{first12}",
            "ean": first12 + str(ean13_check_digit(first12)),
        })
    return products


NAME_BOX, PRICE_BOX, UNIT_BOX = Box(4, 4, 288, 40), Box(150, 48, 142, 60), Box(4, 110, 150, 16)
QR_XY, QR_SIZE = (4, 48), 60
EAN_BOX = Box(70, 48, 120, 60)


def _label(p: dict[str, Any], *, code: str) -> Label:
    elements: list[Any] = [
        Text(NAME_BOX, p["name"], size=18, min_size=10, max_lines=2, weight="bold"),
        Price(PRICE_BOX, p["price"], currency="zł", size=56),
        Text(UNIT_BOX, p["unit"], size=12, min_size=8),
    ]
    if code == "qr":
        elements.append(QR(QR_XY[0], QR_XY[1], QR_SIZE, p["url"], ecc="M"))
    else:
        elements.append(Barcode(EAN_BOX, p["ean"]))
    return Label("2.9-bwry", elements=tuple(elements))


# -- Pillow baseline -------------------------------------------------------------------------


class _PillowLabel:
    """The same drawing done with ImageDraw on an "L" image of palette indices."""

    def __init__(self) -> None:
        self.img = Image.new("L", (296, 128), 1)
        self.draw = ImageDraw.Draw(self.img)
        self.draw.fontmode = "1"

    def text(self, box: Box, content: str, *, size: int, min_size: int, max_lines: int,
             weight: str) -> None:
        fitted = fit_text(content, box.w, box.h, size=size, min_size=min_size,
                          max_lines=max_lines, weight=weight)
        font = get_font(weight, fitted.size)
        for i, line in enumerate(fitted.lines):
            self.draw.text((box.x, box.y + i * fitted.line_height), line, font=font, fill=0)

    def price(self, box: Box, amount: Decimal, size: int) -> None:
        units, cents = f"{amount:.2f}".split(".")
        big, small = get_font("bold", size), get_font("bold", round(size * DECIMALS_RATIO))
        x = box.x + 10
        self.draw.text((x, box.y), units, font=big, fill=0)
        x += int(big.getlength(units)) + 2
        self.draw.text((x, box.y + 5), cents, font=small, fill=0)
        self.draw.text((x, box.y + 30), "zł", font=small, fill=0)

    def qr(self, data: str) -> None:
        import qrcode  # type: ignore[import-untyped]

        q = qrcode.QRCode(error_correction=qrcode.constants.ERROR_CORRECT_M, border=0, box_size=1)
        q.add_data(data)
        q.make(fit=True)
        m = np.array(q.get_matrix(), dtype=np.uint8)
        s = QR_SIZE // m.shape[0]
        block = Image.fromarray(np.where(m, 0, 1).astype(np.uint8)).resize((m.shape[0] * s,) * 2, Image.Resampling.NEAREST)
        self.img.paste(block, QR_XY)


# -- timing ----------------------------------------------------------------------------------


def _best(fn: Callable[[], None], n: int, repeat: int, setup: Callable[[], None] | None = None) -> float:
    """Best of `repeat` passes; µs per item."""
    best = float("inf")
    for _ in range(repeat):
        if setup is not None:
            setup()
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best / n * 1e6


def _clear_text_caches() -> None:
    fit_text.cache_clear()
    set_price.cache_clear()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    n, rep = args.n, args.repeat
    model = get_model("2.9-bwry")
    products = _catalogue(n)
    # A separate catalogue to warm fonts, glyphs and vocabulary (not the measured products).
    for p in _catalogue(200, seed=99):
        draw_label(_label(p, code="qr"))
        draw_label(_label(p, code="ean"))

    canvas = Canvas(model)
    pil = _PillowLabel()
    rows: list[tuple[str, float, float]] = []

    def ours_name() -> None:
        for p in products:
            canvas.text(NAME_BOX, p["name"], size=18, min_size=10, max_lines=2, weight="bold")

    def pil_name() -> None:
        for p in products:
            pil.text(NAME_BOX, p["name"], size=18, min_size=10, max_lines=2, weight="bold")

    # Pillow baseline gets fitting results cached (it only draws); ours starts cold each pass.
    pil_name()
    rows.append(("name (fit + draw, 2 lines)", _best(ours_name, n, rep, _clear_text_caches),
                 _best(pil_name, n, rep)))

    def ours_price() -> None:
        for p in products:
            canvas.price(PRICE_BOX, p["price"], currency="zł", size=56)

    def pil_price() -> None:
        for p in products:
            pil.price(PRICE_BOX, p["price"], 56)

    rows.append(("price (set + draw)", _best(ours_price, n, rep, _clear_text_caches), _best(pil_price, n, rep)))

    def ours_unit() -> None:
        for p in products:
            canvas.text(UNIT_BOX, p["unit"], size=12, min_size=8)

    def pil_unit() -> None:
        for p in products:
            pil.text(UNIT_BOX, p["unit"], size=12, min_size=8, max_lines=1, weight="regular")

    pil_unit()
    rows.append(("unit price (fit + draw)", _best(ours_unit, n, rep, _clear_text_caches), _best(pil_unit, n, rep)))

    def ours_qr() -> None:
        for p in products:
            canvas.qr(QR_XY, QR_SIZE, p["url"], ecc="M")

    def pil_qr() -> None:
        for p in products:
            pil.qr(p["url"])

    ours_qr()  # encode once: the price-change case
    qr_rep = max(1, min(rep, 2))
    t_pil_qr = _best(pil_qr, n, 1)
    rows.append(("QR (URL cached from earlier batch)", _best(ours_qr, n, rep), t_pil_qr))

    def clear_qr() -> None:
        codes._QR_CACHE.clear()
        _QR_BLOCKS.clear()

    rows.append(("QR (new URL: zxing-cpp encode)", _best(ours_qr, n, qr_rep, clear_qr), t_pil_qr))

    def ours_ean() -> None:
        for p in products:
            canvas.barcode(EAN_BOX, p["ean"])

    def clear_ean() -> None:
        _BARCODE_BLOCKS.clear()
        codes._ean13_cached.cache_clear()

    def pil_ean() -> None:
        font = get_font("regular", 9)
        for p in products:
            mods = codes.ean13_modules(p["ean"])
            pil.draw.rectangle((EAN_BOX.x, EAN_BOX.y, EAN_BOX.x + EAN_BOX.w - 1, EAN_BOX.y + EAN_BOX.h - 1), fill=1)
            for i in np.flatnonzero(mods):
                x = EAN_BOX.x + 9 + int(i)
                pil.draw.line((x, EAN_BOX.y, x, EAN_BOX.y + 48), fill=0)
            pil.draw.text((EAN_BOX.x + 12, EAN_BOX.y + 50), p["ean"][1:7], font=font, fill=0)
            pil.draw.text((EAN_BOX.x + 60, EAN_BOX.y + 50), p["ean"][7:], font=font, fill=0)

    rows.append(("EAN-13 (new digits)", _best(ours_ean, n, rep, clear_ean), _best(pil_ean, n, rep)))

    labels_qr = [_label(p, code="qr") for p in products]
    labels_ean = [_label(p, code="ean") for p in products]

    def ours_label_qr() -> None:
        for lab in labels_qr:
            draw_label(lab)

    def ours_label_ean() -> None:
        for lab in labels_ean:
            draw_label(lab)

    def pil_label() -> None:
        for p in products:
            lab = _PillowLabel()
            lab.text(NAME_BOX, p["name"], size=18, min_size=10, max_lines=2, weight="bold")
            lab.price(PRICE_BOX, p["price"], 56)
            lab.text(UNIT_BOX, p["unit"], size=12, min_size=8, max_lines=1, weight="regular")
            lab.qr(p["url"])

    t_pil_label = _best(pil_label, n, 1)
    rows.append(("whole label, QR cached (draw_label)", _best(ours_label_qr, n, rep, _clear_text_caches), t_pil_label))
    rows.append(("whole label, EAN-13 (draw_label)", _best(ours_label_ean, n, rep, _clear_text_caches), t_pil_label))
    small = labels_qr[: min(n, 500)]  # a batch whose fitted text stays in the caches

    def ours_small_again() -> None:
        for lab in small:
            draw_label(lab)

    ours_small_again()
    rows.append(("whole label, QR, same 500 labels redrawn", _best(ours_small_again, len(small), rep), t_pil_label))

    width = max(len(r[0]) for r in rows)
    title = f"element (2.9-inch label, {n} distinct products)"
    width = max(width, len(title))
    print(f"{title:<{width}}  {'ours µs':>9}  {'Pillow µs':>10}  {'ratio':>7}")
    result: dict[str, Any] = {"benchmark": "draw", "n": n, "repeat": rep, "elements": {}}
    for name, ours, base in rows:
        ratio = base / ours if ours > 0 else float("inf")
        print(f"{name:<{width}}  {ours:>9.1f}  {base:>10.1f}  {ratio:>6.1f}×")
        result["elements"][name] = {"ours_us": round(ours, 2), "pillow_us": round(base, 2), "ratio": round(ratio, 2)}
    print(json.dumps(result, ensure_ascii=False))


if __name__ == "__main__":
    main()
