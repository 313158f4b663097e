"""Render benchmark: our pipeline against a Pillow-only pipeline, measured in the same run.

    python -m benchmarks.render [--n 2000] [--baseline-n 200] [--rss-n 10000] [--skip-rss]

Per shipped template, the marginal milliseconds per label of a batch of `--n` distinct
products (distinct names, prices, EANs and URLs, so no QR code or text is reused) through:

* ours: `render.batch.render_batch` — template → markup → layout, drawing into palette
  indices (glyph cache, zxing-cpp QR), colour reduction of photos, packing, DEFLATE, hash;
* baseline: the same layouts drawn the way Pillow-based ESL tools do it —
  `ImageDraw.text` with truetype fonts (fonts loaded once), `qrcode` for QR codes,
  `Image.quantize` with Floyd–Steinberg onto the panel palette for the whole picture,
  numpy 2-bit packing, zlib and SHA-256. The baseline is handed the layouts for free (our
  side pays for its template), so the ratio is conservative. It runs on `--baseline-n`
  products (it caches nothing, so its per-label cost does not depend on the batch size).

"Marginal" is the slope between a batch of n/5 and a batch of n products (fixed costs such
as font loading and the static-prefix canvas fall out). Everything runs on one core
(`sched_setaffinity`). Also printed: the dithering table from `benchmarks.dither.run()`
when that module exists, payload bytes per template, and the peak RSS of streaming a
`--rss-n` batch of 2.9" labels through `iter_render` (measured in a child process).
A table goes to stdout, then one JSON line.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import random
import resource
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

import numpy as np
from PIL import Image as PILImage
from PIL import ImageDraw, ImageFont

from firmware_proto.image import COMPRESS_LEVEL
from firmware_proto.models import LabelModel, get_model
from render.context import Product, Store, build_context
from render.layout import QR, Barcode, Image, Label, Line, Price, Rect, Text, ean13_check_digit
from render.palette import PANEL_RGB, indices_for

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)
STORE = Store("Sklep Pod Lipami", "PLN")

_ADJ = ["Świeży", "Polski", "Domowy", "Wiejski", "Złoty", "Łagodny", "Pikantny", "Ekologiczny",
        "Kremowy", "Chrupiący", "Żytni", "Śląski", "Mazurski", "Górski", "Jesienny"]
_NOUN = ["ser", "chleb", "jogurt", "sok", "dżem", "miód", "twaróg", "makaron", "pasztet",
         "kefir", "żurek", "barszcz", "śledź", "ogórek", "kabanos", "napój", "rogal"]
_MEAS = [(200, "g"), (500, "g"), (1, "kg"), (330, "ml"), (1, "l"), (1.5, "l"), (6, "szt"), (250, "g")]
_IMAGES = ["sample:fruit:red", "sample:bottle:green", "sample:package:yellow", "sample:loaf:brown",
           "sample:fruit:yellow", "sample:bottle:blue"]


def products(n: int, seed: int) -> list[dict[str, Any]]:
    """`n` distinct product records (every name, price, EAN and URL differs)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        k = seed * 1_000_000 + i
        body = f"590{k % 10**9:09d}"
        size, measure = _MEAS[rng.randrange(len(_MEAS))]
        price = Decimal(rng.randrange(99, 9999)) / 100 + Decimal(i % 7) / 1000
        rec: dict[str, Any] = {
            "sku": f"B{k}",
            "name": f"{rng.choice(_ADJ)} {rng.choice(_NOUN)} {rng.choice(_NOUN)} nr {k}",
            "price": str(price.quantize(Decimal('0.01'))),
            "ean": body + str(ean13_check_digit(body)),
            "url": f"https://sklep.example/p/B{k}",
            "unit": {"size": size, "measure": measure},
            "image": _IMAGES[i % len(_IMAGES)],
            "attributes": {"origin": "Polska"},
        }
        if i % 3 == 0:
            promo = (price * Decimal("0.8")).quantize(Decimal("0.01"))
            rec["promo"] = {"price": str(promo), "from": "2026-11-16", "to": "2026-11-29"}
            rec["lowest_30d"] = str((price * Decimal("0.95")).quantize(Decimal("0.01")))
        out.append(rec)
    return out


# --- the Pillow-only baseline ----------------------------------------------------------------

_L = ["0001101", "0011001", "0010011", "0111101", "0100011", "0110001", "0101111", "0111011",
      "0110111", "0001011"]
_G = ["".join("1" if c == "0" else "0" for c in code)[::-1] for code in _L]
_R = ["".join("1" if c == "0" else "0" for c in code) for code in _L]
_PARITY = ["LLLLLL", "LLGLGG", "LLGGLG", "LLGGGL", "LGLLGG", "LGGLLG", "LGGGLL", "LGLGLG",
           "LGLGGL", "LGGLGL"]


def _ean_bits(digits: str) -> str:
    left = "".join((_L if p == "L" else _G)[int(d)] for p, d in zip(_PARITY[int(digits[0])], digits[1:7]))
    return "101" + left + "01010" + "".join(_R[int(d)] for d in digits[7:]) + "101"


class PillowBaseline:
    """Draws `render.layout.Label`s with Pillow the conventional way (see module docstring)."""

    _RGB = {"black": tuple(int(v) for v in PANEL_RGB[0]), "white": tuple(int(v) for v in PANEL_RGB[1]),
            "yellow": tuple(int(v) for v in PANEL_RGB[2]), "red": tuple(int(v) for v in PANEL_RGB[3])}

    def __init__(self, images: Callable[[str], PILImage.Image]) -> None:
        from render.fonts import font_path

        self._paths = {"regular": str(font_path("regular")), "bold": str(font_path("bold"))}
        self._fonts: dict[tuple[str, int], ImageFont.FreeTypeFont] = {}
        self._images = images
        self._palettes: dict[str, PILImage.Image] = {}

    def font(self, weight: str, size: int) -> ImageFont.FreeTypeFont:
        key = (weight, size)
        f = self._fonts.get(key)
        if f is None:
            f = self._fonts[key] = ImageFont.truetype(self._paths[weight], size)
        return f

    def _wrap(self, draw: ImageDraw.ImageDraw, text: str, font: ImageFont.FreeTypeFont, w: int,
              max_lines: int) -> list[str] | None:
        lines: list[str] = []
        cur = ""
        for word in text.split():
            trial = f"{cur} {word}".strip()
            if draw.textlength(trial, font=font) <= w:
                cur = trial
            else:
                if cur:
                    lines.append(cur)
                cur = word
                if len(lines) >= max_lines:
                    return None
        if cur:
            lines.append(cur)
        return lines if len(lines) <= max_lines else None

    def _text(self, draw: ImageDraw.ImageDraw, e: Text) -> None:
        b = e.box
        lines: list[str] = []
        size = e.size
        for size in range(e.size, e.min_size - 1, -1):
            font = self.font(e.weight, size)
            lh = int(size * 1.17)
            got = self._wrap(draw, e.content, font, b.w, min(e.max_lines, max(1, b.h // lh)))
            if got is not None:
                lines = got
                break
        else:
            font = self.font(e.weight, e.min_size)
            lines = [e.content[: max(1, b.w // max(1, e.min_size // 2))] + "…"]
        lh = int(size * 1.17)
        for i, line in enumerate(lines):
            tw = draw.textlength(line, font=font)
            x = b.x + (b.w - tw if e.align == "right" else (b.w - tw) / 2 if e.align == "center" else 0)
            draw.text((x, b.y + i * lh), line, font=font, fill=self._RGB[e.colour])

    def _price(self, draw: ImageDraw.ImageDraw, e: Price) -> None:
        b = e.box
        units, _, cents = f"{e.amount.quantize(Decimal('0.01')):f}".partition(".")
        size = e.size
        while True:
            big, small = self.font(e.weight, size), self.font(e.weight, max(6, int(size * 0.45)))
            wu = draw.textlength(units, font=big)
            wc = max(draw.textlength(cents, font=small), draw.textlength(e.currency, font=small))
            if (wu + wc <= b.w and size <= b.h) or size <= 8:
                break
            size -= 2
        x = b.x + b.w - (wu + wc) if e.align == "right" else b.x
        y = b.y + (b.h - size) // 2
        fill = self._RGB[e.colour]
        draw.text((x, y), units, font=big, fill=fill)
        draw.text((x + wu + 2, y), cents, font=small, fill=fill)
        draw.text((x + wu + 2, y + size // 2), e.currency, font=small, fill=fill)
        if e.strike:
            draw.line((x, y + size, x + wu + wc, y), fill=fill, width=max(1, size // 10))

    def draw(self, label: Label, model: LabelModel) -> PILImage.Image:
        img = PILImage.new("RGB", (model.width, model.height), self._RGB[label.background])
        draw = ImageDraw.Draw(img)
        for e in label.elements:
            if isinstance(e, Text):
                self._text(draw, e)
            elif isinstance(e, Price):
                self._price(draw, e)
            elif isinstance(e, Rect):
                b = e.box
                draw.rounded_rectangle((b.x, b.y, b.x + b.w - 1, b.y + b.h - 1), radius=e.radius,
                                       fill=self._RGB[e.fill] if e.fill else None,
                                       outline=self._RGB[e.outline] if e.outline else None, width=e.width)
            elif isinstance(e, Line):
                draw.line((e.x1, e.y1, e.x2, e.y2), fill=self._RGB[e.colour], width=e.width)
            elif isinstance(e, QR):
                import qrcode

                q = qrcode.QRCode(border=0, box_size=1, error_correction={
                    "L": qrcode.constants.ERROR_CORRECT_L, "M": qrcode.constants.ERROR_CORRECT_M,
                    "Q": qrcode.constants.ERROR_CORRECT_Q, "H": qrcode.constants.ERROR_CORRECT_H}[e.ecc])
                q.add_data(e.data)
                q.make(fit=True)
                qimg = q.make_image().get_image().convert("RGB")
                n = qimg.size[0]
                scale = max(1, e.size // n)
                img.paste(qimg.resize((n * scale, n * scale), PILImage.Resampling.NEAREST), (e.x, e.y))
            elif isinstance(e, Barcode):
                b = e.box
                bits = _ean_bits(e.digits)
                m = max(1, b.w // 113)
                x0 = b.x + (b.w - 95 * m) // 2
                draw.rectangle((b.x, b.y, b.x + b.w - 1, b.y + b.h - 1), fill=self._RGB["white"])
                for i, bit in enumerate(bits):
                    if bit == "1":
                        draw.rectangle((x0 + i * m, b.y, x0 + i * m + m - 1, b.y + b.h - 14), fill=self._RGB[e.colour])
                draw.text((x0, b.y + b.h - 12), e.digits, font=self.font("regular", 11), fill=self._RGB[e.colour])
            elif isinstance(e, Image):
                pic = self._images(e.src).copy()
                pic.thumbnail((e.box.w, e.box.h))
                img.paste(pic, (e.box.x, e.box.y))
        return img

    def palette(self, model: LabelModel) -> PILImage.Image:
        p = self._palettes.get(model.colours)
        if p is None:
            colours = [int(v) for i in indices_for(model.colours) for v in PANEL_RGB[i]]
            p = PILImage.new("P", (1, 1))
            p.putpalette(colours * (768 // len(colours)))
            self._palettes[model.colours] = p
        return p

    def pipeline(self, label: Label, model: LabelModel) -> bytes:
        """Draw, quantize (Floyd–Steinberg), pack 2 bits a pixel, zlib, hash: the payload."""
        img = self.draw(label, model)
        q = img.quantize(palette=self.palette(model), dither=PILImage.Dither.FLOYDSTEINBERG)
        idx = np.asarray(q, dtype=np.uint8) % len(indices_for(model.colours))
        lut = np.array(indices_for(model.colours), dtype=np.uint8)
        px = lut[idx]
        if model.rotation:
            px = np.rot90(px, k=-model.rotation // 90)
        h, w = px.shape
        px = np.pad(px, ((0, 0), (0, (-w) % 4)))
        packed = (px[:, 0::4] << 6) | (px[:, 1::4] << 4) | (px[:, 2::4] << 2) | px[:, 3::4]
        raw = packed.astype(np.uint8).tobytes()
        data = zlib.compress(raw, COMPRESS_LEVEL)
        hashlib.sha256(raw).digest()
        return data


# --- measurement -----------------------------------------------------------------------------

def _pin_one_core() -> str:
    try:
        cpus = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpus[-1]})
        return f"cpu {cpus[-1]}"
    except (AttributeError, OSError):
        return "unpinned"


def _time(fn: Callable[[], Any]) -> float:
    """CPU seconds `fn` takes in this process (robust on a machine shared with other jobs;
    everything measured here is single-threaded)."""
    gc.collect()
    t0 = time.process_time()
    fn()
    return time.process_time() - t0


def _variant(recs: list[dict[str, Any]], variant: str) -> list[dict[str, Any]]:
    """``qr``: products without an EAN, so templates that prefer a barcode draw a QR code."""
    if variant == "qr":
        return [{k: v for k, v in r.items() if k != "ean"} for r in recs]
    return recs


def bench_template(name: str, n: int, baseline_n: int, variant: str = "") -> dict[str, Any]:
    from render.batch import iter_render, render_batch
    from render.samples import image_resolver
    from render.templates import load_template

    tmpl = load_template(name)
    model = get_model(tmpl.info.model)
    images = image_resolver()
    small, large = max(1, n // 5), n
    # Warm up (fonts, glyphs of the alphabet, the static prefix, photos) on other products.
    render_batch(tmpl, products(100, seed=90), store=STORE, images=images, now=NOW)
    small_recs = _variant(products(small, seed=1), variant)
    large_recs = _variant(products(large, seed=2), variant)
    t_small = _time(lambda: render_batch(tmpl, small_recs, store=STORE, images=images, now=NOW))
    payload: list[int] = []
    errors: list[str] = []

    def run_large() -> None:
        for r in iter_render(tmpl, large_recs, store=STORE, images=images, now=NOW):
            if r.payload is not None:
                payload.append(len(r.payload.data))
            else:
                errors.append(r.error or "")

    t_large = _time(run_large)
    failed = len(errors)
    ours_ms = (t_large - t_small) / (large - small) * 1000 if large > small else t_large / large * 1000

    # Where the time goes: the same stages as render_batch, timed one by one.
    from render.batch import base_canvas, common_prefix
    from render.canvas import draw_label
    from render.pack import encode_payload, to_framebuffers

    recs = _variant(products(min(n, 500), seed=3), variant)
    labels: list[Label] = []
    t_layout = _time(lambda: labels.extend(
        tmpl.render_label(build_context(Product.from_record(r), model, STORE, NOW)) for r in recs))
    prefix = common_prefix(labels)
    base_c = base_canvas(model, labels[0].background, prefix, images)
    rests = [Label(lab.model, lab.background, lab.elements[len(prefix):]) for lab in labels]
    drawn: list[Any] = []
    t_draw = _time(lambda: drawn.extend(draw_label(r, images=images, base=base_c) for r in rests))
    fbs: list[bytes] = []
    t_pack = _time(lambda: fbs.extend(to_framebuffers(np.stack(drawn), model)))
    t_encode = _time(lambda: [encode_payload(fb) for fb in fbs])
    k = 1000 / len(recs)
    stages = {"layout_ms": round(t_layout * k, 3), "draw_ms": round(t_draw * k, 3),
              "pack_ms": round(t_pack * k, 3), "encode_ms": round(t_encode * k, 3)}
    layout_ms = t_layout * k
    del drawn, fbs, rests

    base = PillowBaseline(images)
    for lab in labels[:5]:
        base.pipeline(lab, model)  # warm fonts
    b_labels = [tmpl.render_label(build_context(Product.from_record(r), model, STORE, NOW))
                for r in _variant(products(baseline_n, seed=4), variant)]
    t_base = _time(lambda: [base.pipeline(lab, model) for lab in b_labels])
    base_ms = t_base / len(b_labels) * 1000
    base_bytes = [len(base.pipeline(lab, model)) for lab in b_labels[:20]]
    return {
        "template": name + (f" ({variant})" if variant else ""), "model": model.name, "n": n, "failed": failed,
        "ours_ms": round(ours_ms, 3), "ours_layout_ms": round(layout_ms, 3), "stages": stages,
        "baseline_ms": round(base_ms, 3), "speedup": round(base_ms / ours_ms, 1),
        "payload_bytes_mean": round(sum(payload) / max(1, len(payload))),
        "payload_bytes_max": max(payload, default=0),
        "baseline_bytes_mean": round(sum(base_bytes) / max(1, len(base_bytes))),
        "raw_bytes": model.max_image_bytes,
    }


def rss_child(n: int) -> None:
    """Stream `n` 2.9" labels through iter_render and print the peak RSS (MiB) as JSON."""
    from render.batch import iter_render
    from render.templates import load_template

    tmpl = load_template("shelf-2.9")
    before = _peak_rss_mib()
    count = total = 0
    t0 = time.perf_counter()
    for r in iter_render(tmpl, (p for p in products(n, seed=5)), store=STORE, now=NOW, chunk=256):
        count += 1
        total += len(r.payload.data) if r.payload is not None else 0
    secs = time.perf_counter() - t0
    print(json.dumps({"labels": count, "peak_rss_mib": round(_peak_rss_mib(), 1),
                      "rss_before_mib": round(before, 1), "seconds": round(secs, 2),
                      "payload_bytes": total}))


def _peak_rss_mib() -> float:
    """Peak resident memory of this process: VmHWM (reset by exec, unlike ru_maxrss, which a
    child started from a big parent inherits on Linux), else ru_maxrss."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=2000, help="distinct products per batch (default 2000)")
    ap.add_argument("--baseline-n", type=int, default=200, help="products through the Pillow baseline")
    ap.add_argument("--rss-n", type=int, default=10_000, help="labels in the peak-memory run")
    ap.add_argument("--skip-rss", action="store_true")
    ap.add_argument("--templates", default="", help="comma-separated subset of templates")
    ap.add_argument("--rss-child", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.rss_child:
        _pin_one_core()
        rss_child(args.rss_child)
        return
    core = _pin_one_core()
    from render.templates import shipped_template_names

    names = [t for t in args.templates.split(",") if t] or shipped_template_names()
    rss: dict[str, Any] | None = None
    if not args.skip_rss:  # first, while this process is small
        out = subprocess.run([sys.executable, "-m", "benchmarks.render", "--rss-child", str(args.rss_n)],
                             capture_output=True, text=True, check=True)
        rss = json.loads(out.stdout.strip().splitlines()[-1])
    rows = []
    for name in names:
        rows.append(bench_template(name, args.n, args.baseline_n))
        if name == "shelf-2.9":  # the reference label: also with a QR code instead of EAN
            rows.append(bench_template(name, args.n, args.baseline_n, "qr"))

    print(f"render benchmark: {args.n} distinct products per template, baseline on "
          f"{args.baseline_n}, one core ({core})")
    print(f"{'template':<19} {'model':<9} {'ours ms':>8} {'pillow ms':>9} {'speedup':>7}"
          f" | {'layout':>6} {'draw':>6} {'pack':>6} {'encode':>6}"
          f" | {'bytes':>6} {'pillow B':>8} {'raw B':>6} {'failed':>6}")
    for r in rows:
        st = r["stages"]
        print(f"{r['template']:<19} {r['model']:<9} {r['ours_ms']:>8.3f} {r['baseline_ms']:>9.2f}"
              f" {r['speedup']:>6.1f}x | {st['layout_ms']:>6.3f} {st['draw_ms']:>6.3f}"
              f" {st['pack_ms']:>6.3f} {st['encode_ms']:>6.3f}"
              f" | {r['payload_bytes_mean']:>6}"
              f" {r['baseline_bytes_mean']:>8} {r['raw_bytes']:>6} {r['failed']:>6}")
    print("(CPU ms per label. Stages timed separately on up to 500 of the products: layout = "
          "record -> context -> template -> markup -> Label; draw = render.canvas from the "
          "static-prefix base; pack = render.pack.to_framebuffers; encode = "
          "render.pack.encode_payload (smallest of DEFLATE / DEFLATE_PLANES / RAW, SHA-256). The "
          "Pillow pipeline compresses at the same zlib level, COMPRESS_LEVEL)")

    dither_rows: list[dict[str, Any]] | None = None
    try:
        from benchmarks import dither as dither_bench
    except ImportError:
        print("(benchmarks.dither not available: no dithering table)")
    else:
        dither_rows = dither_bench.run()
        if dither_rows:
            keys = list(dither_rows[0])
            print("dithering:")
            print("  " + "  ".join(f"{k:>12}" for k in keys))
            for d in dither_rows:
                print("  " + "  ".join(f"{str(d.get(k, '')):>12}" for k in keys))

    if rss is not None:
        print(f"peak RSS streaming {rss['labels']} 2.9\" labels (iter_render, chunk 256): "
              f"{rss['peak_rss_mib']} MiB ({rss['seconds']} s)")
    print(json.dumps({"benchmark": "render", "n": args.n, "templates": rows, "dither": dither_rows,
                      "rss": rss}))


if __name__ == "__main__":
    main()
