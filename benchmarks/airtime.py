"""Bytes on air for an image update: our protocol against the OpenEPaperLink way, same run.

Run: ``python -m benchmarks.airtime [--seed N] [--trials N]``. Prints a table and one JSON line.

What is counted
- **ours**: every frame of our protocol that is transmitted (lost ones too): offer, parts,
  status answers, status requests after timeouts, retransmissions; authenticated (AES-CCM tag +
  counter) as in production; frames sized for BLE (ATT MTU 247 → 244-byte frames). Driven
  through the real `GatewaySession` / `LabelSession` state machines over a seeded lossy channel
  (each frame, either direction, lost with probability p).
- **OEPL**: the OpenEPaperLink way, modelled from its firmware structures: the payload is
  4-byte length + zlib (window 4096, level 9, as the OEPL AP's miniz does) of a 6-byte image
  header and the two bitplanes; split in 4096-byte blocks, each sent as a 4-byte block header
  plus data in 42 parts of 99 bytes. Every 802.15.4 frame carries the OEPL MAC header
  (MacFrameNormal: frame control 2, seq 1, PAN 2, dst 8, src 8 = 21 bytes), a packet-type byte
  and the FCS (2): a part is 21+1+3+99+2 = 126 bytes. Per block the tag sends a blockRequest
  (checksum 1, data version 8, block id 1, type 1, requested-parts bitmap 6 → 41 bytes) and the
  AP answers a blockRequestAck (checksum 1, please-wait 2 → 27 bytes). Per transfer the AP sends
  AvailDataInfo (17 → 41 bytes) and the tag an xferComplete (→ 25 bytes). "oepl" resends the
  whole block if any part of it is lost (the pessimistic model); "oepl-sel" is kinder, resending only
  the parts the tag's requested-parts bitmap names.
- "frame" columns count each protocol's frames as defined above; "+phy" columns add the radio's
  own per-packet overhead: 802.15.4 PHY 6 bytes (preamble 4, SFD 1, length 1); BLE 1M PHY with a
  GATT write: 17 bytes (preamble 1, access address 4, LL header 2, CRC 3, L2CAP 4, ATT 3).
  Link-layer acknowledgements are left out on both sides.

Two sets of images. Synthesised ones (text set in DejaVu fonts, a QR-like module grid, a red
price, a yellow promo band; the 7.5" one adds an ordered-dithered photo area), where a
price-only change redraws the price and sends that region (a 128x96 label area). And labels
drawn by our shipped templates (`shelf-2.9` for a sample product, then the same product 20 %
cheaper; `talker-7.5` with its dithered photo), sent exactly as the renderer packs them.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from firmware_proto import (
    GatewaySession, ImageUpdate, LabelFlash, LabelModel, LabelSession, Region, best_payload,
    changed_region, derive_factory_key, get_model, image_hash, plan_update,
)
from render.pack import to_framebuffer

MTU = 244
BLE_LINK_OVERHEAD = 17
PHY_154_OVERHEAD = 6
OEPL_MAC = 21 + 1 + 2            # MacFrameNormal + packet type + FCS
OEPL_PART = OEPL_MAC + 3 + 99
OEPL_BLOCK_REQ = OEPL_MAC + 17
OEPL_BLOCK_ACK = OEPL_MAC + 3
OEPL_AVAIL_INFO = OEPL_MAC + 17
OEPL_XFER_COMPLETE = OEPL_MAC + 1
OEPL_BLOCK = 4096
OEPL_PARTS_PER_BLOCK = 42
OEPL_MAX_ATTEMPTS = 2000          # per block, then the transfer is counted as failed
FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
MAC = "AA:BB:CC:00:00:01"


# -- images ----------------------------------------------------------------------------------

def _font(name: str, size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.truetype(str(FONT_DIR / name), size)
    except OSError:
        return ImageFont.load_default()


def _draw_layer(size: tuple[int, int], draw: Callable[[ImageDraw.ImageDraw], None]) -> np.ndarray:
    img = Image.new("L", size, 0)
    draw(ImageDraw.Draw(img))
    return np.asarray(img) > 127


def _qr_like(rng: np.random.Generator, modules: int, scale: int) -> np.ndarray:
    grid = rng.random((modules, modules)) < 0.5
    for oy, ox in ((0, 0), (0, modules - 7), (modules - 7, 0)):  # finder patterns
        grid[oy:oy + 7, ox:ox + 7] = True
        grid[oy + 1:oy + 6, ox + 1:ox + 6] = False
        grid[oy + 2:oy + 5, ox + 2:ox + 5] = True
    return np.kron(grid, np.ones((scale, scale), dtype=bool))


def label_29(price: str, seed: int = 7) -> np.ndarray:
    """A 296x128 shelf label as palette indices (0 black, 1 white, 2 yellow, 3 red)."""
    w, h = 296, 128
    img = np.ones((h, w), dtype=np.uint8)
    img[0:18, :] = 2  # yellow promo band
    img[_draw_layer((w, h), lambda d: d.text((4, 1), "PROMO -20%  until Sunday", font=_font("DejaVuSans-Bold.ttf", 13), fill=255))] = 0
    text = _draw_layer((w, h), lambda d: (
        d.text((4, 22), "Organic Apples Gala", font=_font("DejaVuSans-Bold.ttf", 16), fill=255),
        d.text((4, 42), "Origin: Poland, class I", font=_font("DejaVuSans.ttf", 11), fill=255),
        d.text((4, 56), "1 kg  ·  EAN 5901234123457", font=_font("DejaVuSans.ttf", 11), fill=255),
        d.text((4, 112), "lowest 30 days: 4.99", font=_font("DejaVuSans.ttf", 10), fill=255)))
    img[text] = 0
    qr = _qr_like(np.random.default_rng(seed), 25, 2)
    img[70:70 + qr.shape[0], 4:4 + qr.shape[1]][qr] = 0
    img[price_area_29()] = 1
    y0, y1, x0, x1 = _PRICE_29
    pr = _draw_layer((x1 - x0, y1 - y0), lambda d: (
        d.text((2, 4), price, font=_font("DejaVuSans-Bold.ttf", 44), fill=255),
        d.text((6, 62), "PLN / kg", font=_font("DejaVuSans.ttf", 14), fill=255)))
    img[y0:y1, x0:x1][pr] = 3
    return img


_PRICE_29 = (24, 120, 160, 288)   # y0, y1, x0, x1: a 128x96 price area on the 2.9" label


def price_area_29() -> tuple[slice, slice]:
    y0, y1, x0, x1 = _PRICE_29
    return slice(y0, y1), slice(x0, x1)


def label_75(seed: int = 11) -> np.ndarray:
    """An 800x480 label with text, a QR-like code and an ordered-dithered photo area."""
    w, h = 800, 480
    img = np.ones((h, w), dtype=np.uint8)
    img[0:40, :] = 3
    img[_draw_layer((w, h), lambda d: d.text((10, 4), "WEEKLY OFFER", font=_font("DejaVuSans-Bold.ttf", 28), fill=255))] = 1
    text = _draw_layer((w, h), lambda d: [
        d.text((430, 60 + 26 * i), line, font=_font("DejaVuSans.ttf", 20), fill=255)
        for i, line in enumerate(["Espresso beans 1 kg", "100 % Arabica, medium roast",
                                  "Origin: Brazil, Colombia", "Best before 2027-05",
                                  "Unit price 39.99 / kg", "Allergens: none"])])
    img[text] = 0
    img[_draw_layer((w, h), lambda d: d.text((430, 250), "39.99", font=_font("DejaVuSans-Bold.ttf", 96), fill=255))] = 3
    qr = _qr_like(np.random.default_rng(seed), 33, 4)
    img[340:340 + qr.shape[0], 640:640 + qr.shape[1]][qr] = 0
    # photo area: a smooth synthetic "photo" dithered to the four inks with a Bayer matrix
    ph, pw = 380, 400
    yy, xx = np.mgrid[0:ph, 0:pw].astype(np.float64)
    rng = np.random.default_rng(seed)
    lum = (0.5 + 0.3 * np.sin(xx / 37.0) * np.cos(yy / 23.0) + 0.2 * np.exp(-((xx - 200) ** 2 + (yy - 190) ** 2) / 9000.0)
           + 0.05 * rng.standard_normal((ph, pw)))
    warm = 0.5 + 0.5 * np.sin((xx + yy) / 61.0)
    bayer = np.array([[0, 8, 2, 10], [12, 4, 14, 6], [3, 11, 1, 9], [15, 7, 13, 5]]) / 16.0
    thr = np.tile(bayer, (ph // 4 + 1, pw // 4 + 1))[:ph, :pw]
    photo = np.where(lum > thr * 0.9 + 0.05, 1, 0).astype(np.uint8)
    colour = (warm > 0.6) & (lum > thr * 0.6 + 0.2) & (lum < thr * 0.6 + 0.7)
    photo[colour] = np.where(warm[colour] > 0.8, 3, 2)
    img[60:60 + ph, 10:10 + pw] = photo
    return img


def to_panel(img: np.ndarray, model: LabelModel) -> np.ndarray:
    """Label orientation → panel scan order (rotate by the model's mounting)."""
    return np.rot90(img, k=-(model.rotation // 90)).copy()


def oepl_payload(panel: np.ndarray) -> bytes:
    """OEPL's compressed image: u32 length, zlib (wbits 12, level 9) of header + bitplanes."""
    h, w = panel.shape
    plane0 = np.packbits((panel & 1).astype(np.uint8), axis=1).tobytes()
    plane1 = np.packbits((panel >> 1).astype(np.uint8), axis=1).tobytes()
    raw = bytes((6,)) + w.to_bytes(2, "little") + h.to_bytes(2, "little") + bytes((2,)) + plane0 + plane1
    c = zlib.compressobj(9, zlib.DEFLATED, 12, 9)
    return len(raw).to_bytes(4, "little") + c.compress(raw) + c.flush()


# -- our protocol over a lossy channel -----------------------------------------------------------

@dataclass
class Airtime:
    to_label: int = 0
    from_label: int = 0
    frames: int = 0
    ok: bool = False

    @property
    def total(self) -> int:
        return self.to_label + self.from_label


def run_ours(model: LabelModel, base_fb: bytes, update: ImageUpdate, loss: float,
             rng: random.Random) -> Airtime:
    fk = derive_factory_key(b"bench", MAC)
    flash = LabelFlash.new(model, fk)
    label = LabelSession(model, MAC, flash, max_frame=MTU)
    gw = GatewaySession(MAC)
    for r in label.receive(gw.pair(fk)):
        gw.open(r)
    flash.framebuffer = base_fb
    sender = gw.send_update(update, max_frame=MTU)
    air = Airtime()
    pending = sender.start()
    for _ in range(10_000):
        replies: list[bytes] = []
        for f in pending:
            air.to_label += len(f)
            air.frames += 1
            if rng.random() < loss:
                continue
            for r in label.receive(f):
                air.from_label += len(r)
                air.frames += 1
                if rng.random() >= loss:
                    replies.append(r)
        pending = []
        for r in replies:
            pending += sender.handle(gw.open(r))
        if sender.finished:
            break
        if not pending:
            pending = sender.on_timeout()
    air.ok = sender.done and label.displayed_hash == update.image_hash
    return air


# -- OpenEPaperLink model ---------------------------------------------------------------------------

def run_oepl(payload: bytes, loss: float, rng: random.Random, *, selective: bool) -> Airtime:
    air = Airtime()

    def send(n: int, to_tag: bool) -> bool:
        if to_tag:
            air.to_label += n
        else:
            air.from_label += n
        air.frames += 1
        return rng.random() >= loss

    while not send(OEPL_AVAIL_INFO, True):
        send(OEPL_AVAIL_INFO - 17 + 20, False)  # the tag checks in again (AvailDataReq)
    for start in range(0, len(payload), OEPL_BLOCK):
        block = 4 + len(payload[start:start + OEPL_BLOCK])
        nparts = min(OEPL_PARTS_PER_BLOCK, -(-block // 99))
        need = set(range(nparts))
        for _attempt in range(OEPL_MAX_ATTEMPTS):
            if not send(OEPL_BLOCK_REQ, False):
                continue
            send(OEPL_BLOCK_ACK, True)
            got = {p for p in sorted(need) if send(OEPL_PART, True)}
            need = need - got if selective else (set() if got == need else set(range(nparts)))
            if not need:
                break
        else:
            return air
    while not send(OEPL_XFER_COMPLETE, False):
        pass
    air.ok = True
    return air


# -- driver ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    name: str
    model: LabelModel
    base_fb: bytes
    target_fb: bytes
    region: Region | None
    oepl: bytes  # OEPL payload of the target image (OEPL has no region update: full image)


def cases() -> list[Case]:
    m29, m75 = get_model("2.9-bwry"), get_model("7.5-bwry")
    old29, new29 = label_29("4.99"), label_29("3.79")
    p_old, p_new = to_panel(old29, m29), to_panel(new29, m29)
    fb_old, fb_new = to_framebuffer(old29, m29), to_framebuffer(new29, m29)
    blank29 = bytes(len(fb_old))
    region = _price_region(m29)
    label75 = label_75()
    img75, fb75 = to_panel(label75, m75), to_framebuffer(label75, m75)
    return [
        Case('2.9" full', m29, blank29, fb_old, None, oepl_payload(p_old)),
        Case('7.5" full', m75, bytes(len(fb75)), fb75, None, oepl_payload(img75)),
        Case('2.9" price', m29, fb_old, fb_new, region, oepl_payload(p_new)),
        Case('2.9" price-diff', m29, fb_old, fb_new, changed_region(fb_old, fb_new, m29) or region,
             oepl_payload(p_new)),
    ]


def rendered_cases() -> list[Case]:
    """The same measurements on labels our shipped templates draw (render/, sample catalogue):
    a 2.9" shelf label in full, then the same label after a price change, and a 7.5" talker."""
    from datetime import datetime, timezone

    from render.batch import render_batch
    from render.samples import image_resolver, sample_catalogue
    from render.templates import load_template

    now = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)
    product = next(p for p in sample_catalogue(now) if not p.get("promo"))
    repriced = dict(product, price=str(round(float(product["price"]) * 0.8, 2)))
    images = image_resolver()
    out = []
    for name, tmpl_name, records in (('2.9" shelf-2.9', "shelf-2.9", [product, repriced]),
                                      ('7.5" talker-7.5', "talker-7.5", [product])):
        tmpl = load_template(tmpl_name)
        model = get_model(tmpl.info.model)
        res = render_batch(tmpl, records, images=images, now=now, keep_indices=True)
        panels = [to_panel(r.indices, model) for r in res]
        blank = bytes(len(res[0].framebuffer))
        out.append(Case(f"{name} full", model, blank, res[0].framebuffer, None, oepl_payload(panels[0])))
        if len(res) > 1:
            region = changed_region(res[0].framebuffer, res[1].framebuffer, model)
            assert region is not None
            out.append(Case(f"{name} price", model, res[0].framebuffer, res[1].framebuffer, region,
                            oepl_payload(panels[1])))
    return out


def _price_region(model: LabelModel) -> Region:
    """The price area of the label in panel coordinates (rotated like the panel)."""
    mask = np.zeros((model.height, model.width), dtype=bool)
    mask[price_area_29()] = True
    ys, xs = np.nonzero(to_panel(mask.astype(np.uint8), model))
    ppb = 8 // model.bits_per_pixel
    x0, x1 = xs.min() // ppb * ppb, -(-(xs.max() + 1) // ppb) * ppb
    return Region(int(x0), int(ys.min()), int(x1 - x0), int(ys.max() + 1 - ys.min()))


def update_for(case: Case) -> ImageUpdate:
    """Full images are sent whole (the label shows something unrelated); price changes as the
    cheapest update `plan_update` finds from the old image (region and/or XOR delta)."""
    if case.region is None:
        payload, fmt = best_payload(case.target_fb)
        return ImageUpdate(payload, fmt, image_hash(case.target_fb))
    update = plan_update(case.model, case.target_fb, base_fb=case.base_fb, region=case.region)
    assert update is not None
    return update


def phy_bytes(air: Airtime, per_frame: int) -> int:
    return air.total + air.frames * per_frame


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--trials", type=int, default=9, help="seeded runs per lossy case (mean)")
    args = ap.parse_args(argv)
    losses = (0.0, 0.1, 0.3)
    results: dict[str, dict[str, float | int | bool | str]] = {}
    rows = []
    for case in cases() + rendered_cases():
        update = update_for(case)
        for loss in losses:
            n = 1 if loss == 0 else args.trials
            ours = [run_ours(case.model, case.base_fb, update, loss, random.Random(args.seed * 1000 + i))
                    for i in range(n)]
            oepl = [run_oepl(case.oepl, loss, random.Random(args.seed * 1000 + i), selective=False) for i in range(n)]
            sel = [run_oepl(case.oepl, loss, random.Random(args.seed * 1000 + i), selective=True) for i in range(n)]
            key = f"{case.name}@{int(loss * 100)}%"
            r = {
                "payload": len(update.payload), "oepl_payload": len(case.oepl),
                "format": f"{update.image_format.name}{'+delta' if update.delta else ''}",
                "ours": int(statistics.mean(a.total for a in ours)),
                "ours_phy": int(statistics.mean(phy_bytes(a, BLE_LINK_OVERHEAD) for a in ours)),
                "ours_label_tx": int(statistics.mean(a.from_label for a in ours)),
                "ours_label_rx": int(statistics.mean(a.to_label for a in ours)),
                "ours_ok": all(a.ok for a in ours),
                "oepl": int(statistics.mean(a.total for a in oepl)),
                "oepl_phy": int(statistics.mean(phy_bytes(a, PHY_154_OVERHEAD) for a in oepl)),
                "oepl_ok": all(a.ok for a in oepl),
                "oepl_sel": int(statistics.mean(a.total for a in sel)),
                "oepl_sel_phy": int(statistics.mean(phy_bytes(a, PHY_154_OVERHEAD) for a in sel)),
            }
            results[key] = r
            rows.append((key, r))
    # derived figures
    for key, r in results.items():
        r["ratio_vs_oepl"] = round(float(r["ours"]) / float(r["oepl"]), 3)
        r["ratio_vs_oepl_phy"] = round(float(r["ours_phy"]) / float(r["oepl_phy"]), 3)
        r["ratio_vs_oepl_sel"] = round(float(r["ours"]) / float(r["oepl_sel"]), 3)
        base = results[key.split("@")[0] + "@0%"]
        r["loss_overhead"] = round(float(r["ours"]) / float(base["ours"]), 3)
    full0 = float(results['2.9" full@0%']["ours"])
    price_vs_full = round(float(results['2.9" price@0%']["ours"]) / full0, 3)
    diff_vs_full = round(float(results['2.9" price-diff@0%']["ours"]) / full0, 3)
    rendered_vs_full = round(float(results['2.9" shelf-2.9 price@0%']["ours"])
                             / float(results['2.9" shelf-2.9 full@0%']["ours"]), 3)

    hdr = (f"{'case':<26}{'payload':>8}{'ours':>8}{'+phy':>8}{'oepl':>9}{'+phy':>9}{'oepl-sel':>9}"
           f"{'ours/oepl':>10}{'(+phy)':>8}{'/sel':>7}{'vs 0%':>7}")
    print(hdr)
    print("-" * len(hdr))
    for key, r in rows:
        oepl = f"{r['oepl']}" + ("" if r["oepl_ok"] else "*")
        print(f"{key:<26}{r['payload']:>8}{r['ours']:>8}{r['ours_phy']:>8}{oepl:>9}{r['oepl_phy']:>9}"
              f"{r['oepl_sel']:>9}{r['ratio_vs_oepl']:>10.3f}{r['ratio_vs_oepl_phy']:>8.3f}"
              f"{r['ratio_vs_oepl_sel']:>7.3f}{r['loss_overhead']:>7.3f}")
    print("* OEPL whole-block resend gave up after", OEPL_MAX_ATTEMPTS, "attempts on a block")
    print(f"price-only update / full 2.9\" image (ours, 0% loss): 128x96 price area {price_vs_full:.3f}, "
          f"changed-bytes region {diff_vs_full:.3f}; shelf-2.9 template (price and unit price "
          f"change) {rendered_vs_full:.3f}")
    battery = _battery(results)
    if battery:
        print(f"battery life at four updates a day, check-in every {WAKE_INTERVAL_S:.0f} s "
              "(simulator.battery model):", "; ".join(f"{k}: {v:.0f} days" for k, v in battery.items()))
    else:
        print("battery life: simulator.battery.estimate_life_days not available")
    print(json.dumps({"benchmark": "airtime", "mtu": MTU, "seed": args.seed, "trials": args.trials,
                      "price_vs_full": price_vs_full, "price_diff_vs_full": diff_vs_full,
                      "rendered_price_vs_full": rendered_vs_full, "battery_days_4_updates": battery,
                      "results": results}, sort_keys=True))
    return 0 if all(r["ours_ok"] for r in results.values()) else 1


WAKE_INTERVAL_S = 60.0
"""Check-in period assumed for the battery estimate (labels wake once a minute)."""


def _battery(results: dict[str, dict[str, float | int | bool | str]]) -> dict[str, float]:
    """Days on one cell at four updates a day, from the simulator's power model if present."""
    try:
        from simulator.battery import estimate_life_days
    except ImportError:
        return {}
    m29 = get_model("2.9-bwry")
    checkin = len(_paired_checkin())
    out: dict[str, float] = {}
    for name, key in (('2.9" full image, 10% loss', '2.9" full@10%'),
                      ('2.9" price change, 10% loss', '2.9" price@10%')):
        r = results[key]
        out[name] = round(estimate_life_days(m29, 4, int(r["ours_label_tx"]), int(r["ours_label_rx"]),
                                             WAKE_INTERVAL_S, checkin_bytes=checkin), 1)
    return out


def _paired_checkin() -> bytes:
    m = get_model("2.9-bwry")
    fk = derive_factory_key(b"bench", MAC)
    lab = LabelSession(m, MAC, LabelFlash.new(m, fk))
    lab.receive(GatewaySession(MAC).pair(fk))
    return lab.checkin()


if __name__ == "__main__":
    sys.exit(main())
