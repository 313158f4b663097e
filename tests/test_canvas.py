"""The canvas draws layouts straight into palette indices: only the panel's inks, flat
(never dithered) artwork, Pillow-compatible geometry, colours degraded per the palette,
pictures that fail to load replaced by a placeholder, and byte-exact golden labels.

Golden images live in tests/golden/ as palette PNGs (pixel value = palette index). After an
intended change to drawing (or a new FreeType/DejaVu), regenerate them with
``ESL_REGEN_GOLDEN=1 python -m pytest tests/test_canvas.py -k golden`` and review the diff.
"""

from __future__ import annotations

import logging
import os
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image as PILImage
from PIL import ImageDraw

from firmware_proto.models import MODELS, get_model
from render.canvas import Canvas, DrawError, clear_image_cache, draw_label
from render.layout import (
    QR, Barcode, Box, Element, Image, Label, Line, Price, Rect, Text,
)
from render.palette import BLACK, PANEL_RGB, RED, WHITE, YELLOW, indices_for

GOLDEN = Path(__file__).parent / "golden"
COLOURS = ["black", "white", "yellow", "red"]


# -- basics --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(MODELS))
def test_canvas_is_the_model_in_reading_orientation(name: str) -> None:
    model = get_model(name)
    canvas = Canvas(model)
    assert canvas.indices.shape == (model.height, model.width)
    assert canvas.indices.dtype == np.uint8
    assert np.all(canvas.indices == WHITE)


def test_copy_is_independent() -> None:
    base = Canvas(get_model("2.9-bwry"), background="yellow")
    copy = base.copy()
    copy.rect((0, 0, 9, 9), fill="red")
    assert np.all(base.indices == YELLOW)
    assert np.all(copy.indices[:10, :10] == RED)


@pytest.mark.parametrize("mode,colour,role,expected", [
    ("bwry", "yellow", "fill", YELLOW),
    ("bwr", "yellow", "fill", RED),
    ("bwr", "yellow", "ink", RED),
    ("bw", "red", "ink", BLACK),
    ("bw", "red", "fill", WHITE),
    ("bw", "yellow", "fill", WHITE),
])
def test_colours_degrade_per_palette_resolve(mode: str, colour: str, role: str, expected: int) -> None:
    model = next(m for m in MODELS.values() if m.colours == mode)
    canvas = Canvas(model)
    if role == "fill":
        canvas.rect(Box(10, 10, 20, 20), fill=colour)
        assert np.all(canvas.indices[10:30, 10:30] == expected)
    else:
        canvas.text(Box(10, 10, 100, 30), "Żółć", size=20, fill=colour)
        assert set(np.unique(canvas.indices)) == {WHITE, expected}


# -- flat artwork ----------------------------------------------------------------------------


@pytest.mark.parametrize("ink,paper", [("black", "white"), ("red", "white"), ("black", "yellow"),
                                       ("white", "red"), ("yellow", "black")])
def test_text_is_flat_ink_never_dithered(ink: str, paper: str) -> None:
    canvas = Canvas(get_model("4.2-bwry"), background=paper)
    canvas.text(Box(5, 5, 390, 200), "Masło ekstra Łaciate 82% — zażółć gęślą jaźń €",
                size=40, min_size=10, max_lines=4, weight="bold", fill=ink)
    canvas.price(Box(5, 210, 390, 85), Decimal("1299.99"), currency="zł", size=80, fill=ink)
    values = set(np.unique(canvas.indices).tolist())
    assert values <= {canvas.colour(ink), canvas.colour(paper, "fill")}


def _element(draw: st.DrawFn) -> Element:
    x, y = draw(st.integers(-20, 300)), draw(st.integers(-20, 140))
    w, h = draw(st.integers(1, 200)), draw(st.integers(1, 100))
    colour = draw(st.sampled_from(COLOURS))
    kind = draw(st.sampled_from(["text", "price", "rect", "line", "qr", "barcode"]))
    if kind == "text":
        return Text(Box(x, y, w, h), draw(st.text(max_size=60)), size=draw(st.integers(8, 40)),
                    min_size=8, max_lines=draw(st.integers(1, 4)), colour=colour,  # type: ignore[arg-type]
                    align=draw(st.sampled_from(["left", "center", "right"])),
                    valign=draw(st.sampled_from(["top", "middle", "bottom"])),
                    strike=draw(st.booleans()))
    if kind == "price":
        return Price(Box(x, y, w, h), Decimal(draw(st.integers(0, 10**7))) / 100,
                     currency=draw(st.sampled_from(["zł", "€", "PLN", ""])), size=draw(st.integers(8, 80)),
                     colour=colour, strike=draw(st.booleans()))  # type: ignore[arg-type]
    if kind == "rect":
        return Rect(Box(x, y, w, h), fill=draw(st.sampled_from([None, *COLOURS])),
                    outline=draw(st.sampled_from([None, *COLOURS])),
                    width=draw(st.integers(0, 5)), radius=draw(st.integers(0, 20)))
    if kind == "line":
        return Line(x, y, x + draw(st.integers(-50, 50)), y + draw(st.integers(-50, 50)),
                    colour=colour, width=draw(st.integers(1, 6)))  # type: ignore[arg-type]
    if kind == "qr":
        return QR(x, y, draw(st.integers(40, 120)), "https://sklep.example/p/" + str(w * h),
                  colour=colour)  # type: ignore[arg-type]
    return Barcode(Box(x, y, max(w, 120), max(h, 40)), "5901234123457", colour=colour)  # type: ignore[arg-type]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(model=st.sampled_from(sorted(MODELS)), background=st.sampled_from(COLOURS),
       elements=st.lists(st.composite(_element)(), max_size=8))
def test_labels_contain_only_the_panels_palette_indices(model: str, background: str,
                                                        elements: list[Element]) -> None:
    label = Label(model, background=background, elements=tuple(elements))  # type: ignore[arg-type]
    indices = draw_label(label)
    m = get_model(model)
    assert indices.shape == (m.height, m.width) and indices.dtype == np.uint8
    assert set(np.unique(indices).tolist()) <= set(indices_for(m.colours))


@settings(max_examples=40, deadline=None)
@given(x=st.integers(-10, 300), y=st.integers(-10, 130), w=st.integers(2, 80), h=st.integers(2, 80),
       width=st.integers(0, 6), fill=st.booleans())
def test_rect_matches_pillow(x: int, y: int, w: int, h: int, width: int, fill: bool) -> None:
    # Pillow draws an extra row for rectangles thinner than twice their outline (its quirk).
    assume(min(w, h) > 2 * width)
    canvas = Canvas(get_model("2.9-bwry"))
    xy = (x, y, x + w - 1, y + h - 1)
    canvas.rect(xy, fill="yellow" if fill else None, outline="red", width=width)
    img = PILImage.new("L", (296, 128), WHITE)
    ImageDraw.Draw(img).rectangle(xy, fill=YELLOW if fill else None, outline=RED if width else None,
                                  width=width)
    assert np.array_equal(canvas.indices, np.asarray(img))


def test_axis_aligned_lines_cover_their_pixels() -> None:
    canvas = Canvas(get_model("2.9-bwry"))
    canvas.line((10, 20, 100, 20), fill="red", width=3)
    canvas.line([(200, 5), (200, 50)], fill="black", width=2)
    assert np.all(canvas.indices[19:22, 10:101] == RED)
    assert not np.any(canvas.indices[18] == RED) and not np.any(canvas.indices[22] == RED)
    assert np.all(canvas.indices[5:51, 200:202] == BLACK)
    assert np.count_nonzero(canvas.indices == RED) == 3 * 91


def test_diagonal_line_joins_its_ends() -> None:
    canvas = Canvas(get_model("2.9-bwry"))
    canvas.line((0, 0, 99, 49), fill="black", width=1)
    assert canvas.indices[0, 0] == BLACK and canvas.indices[49, 99] == BLACK
    cols = np.flatnonzero((canvas.indices == BLACK).any(axis=0))
    assert cols.tolist() == list(range(100))  # no gaps


def test_text_is_clipped_to_its_box_and_aligned() -> None:
    canvas = Canvas(get_model("2.9-bwry"))
    fitted = canvas.text(Box(50, 30, 120, 40), "Cena", size=20, align="right", valign="bottom")
    ink = np.argwhere(canvas.indices == BLACK)
    assert ink.size and fitted.lines == ("Cena",)
    assert ink[:, 0].min() >= 30 and ink[:, 0].max() < 70
    assert ink[:, 1].min() >= 50 and ink[:, 1].max() < 170
    assert ink[:, 1].max() >= 165  # right-aligned


def test_bad_arguments_are_named() -> None:
    canvas = Canvas(get_model("2.9-bwry"))
    with pytest.raises(DrawError, match="align"):
        canvas.text(Box(0, 0, 100, 20), "x", align="justify")
    with pytest.raises(DrawError, match="valign"):
        canvas.text(Box(0, 0, 100, 20), "x", valign="centre")
    with pytest.raises(DrawError, match="box"):
        canvas.text((0, 0, 0, 20), "x")
    with pytest.raises(ValueError, match="colour"):
        canvas.rect(Box(0, 0, 5, 5), fill="purple")
    with pytest.raises(DrawError, match="pairs"):
        canvas.line((0, 0, 5))


def test_strike_adds_a_rule_through_text() -> None:
    plain, struck = Canvas(get_model("2.9-bwry")), Canvas(get_model("2.9-bwry"))
    plain.text(Box(0, 0, 200, 30), "9,99 zł", size=20)
    struck.text(Box(0, 0, 200, 30), "9,99 zł", size=20, strike=True)
    extra = (struck.indices == BLACK) & (plain.indices != BLACK)
    rows = np.flatnonzero(extra.any(axis=1))
    assert rows.size and rows.max() - rows.min() <= 3  # one horizontal rule


def test_paste_indices_clips_and_validates() -> None:
    canvas = Canvas(get_model("1.54-bw"))
    canvas.paste_indices((190, -5), np.zeros((20, 20), dtype=np.uint8))
    assert np.all(canvas.indices[0:15, 190:200] == BLACK)
    assert np.count_nonzero(canvas.indices == BLACK) == 15 * 10
    with pytest.raises(DrawError, match="palette indices"):
        canvas.paste_indices((0, 0), np.full((2, 2), 7, dtype=np.uint8))


def test_base_canvas_is_copied_not_changed() -> None:
    model = get_model("2.9-bwry")
    base = Canvas(model)
    base.rect(Box(0, 0, 296, 20), fill="red")
    before = base.indices.copy()
    label = Label("2.9-bwry", elements=(Text(Box(4, 30, 200, 30), "Chleb"),))
    out = draw_label(label, base=base)
    assert np.array_equal(base.indices, before)
    assert np.all(out[:20] == RED) and np.any(out[30:60] == BLACK)
    with pytest.raises(DrawError, match="model"):
        draw_label(Label("4.2-bwry"), base=base)


# -- pictures --------------------------------------------------------------------------------


def test_missing_image_draws_a_placeholder_and_logs_once(caplog: pytest.LogCaptureFixture) -> None:
    clear_image_cache()

    def loader(src: str) -> PILImage.Image:
        return PILImage.open(Path("/nonexistent") / src)

    label = Label("7.5-bwry", elements=(Image(Box(100, 50, 200, 150), "missing-photo.png"),
                                        Text(Box(400, 50, 300, 40), "Kawa")))
    with caplog.at_level(logging.WARNING, logger="render.canvas"):
        first = draw_label(label, images=loader)
        second = draw_label(label, images=loader)
    assert np.array_equal(first, second)
    assert np.all(first[50, 100:300] == BLACK) and np.all(first[199, 100:300] == BLACK)
    assert np.all(first[50:200, 100] == BLACK) and np.all(first[50:200, 299] == BLACK)
    assert first[125, 200] == BLACK or first[124, 199] == BLACK  # the cross
    assert np.any(first[50:90, 400:700] == BLACK)  # the batch goes on
    warnings = [r for r in caplog.records if "missing-photo.png" in r.getMessage()]
    assert len(warnings) == 1


def test_no_image_loader_draws_a_placeholder() -> None:
    label = Label("7.5-bwry", elements=(Image(Box(10, 10, 50, 50), "a.png"),))
    out = draw_label(label)
    assert np.all(out[10, 10:60] == BLACK)


def test_corrupt_image_draws_a_placeholder(tmp_path: Path) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    label = Label("7.5-bwry", elements=(Image(Box(10, 10, 50, 50), str(bad)),))
    out = draw_label(label, images=PILImage.open)
    assert np.all(out[10, 10:60] == BLACK)


@pytest.mark.parametrize("fit,expect_box", [
    ("contain", (25, 0, 50, 50)),   # a square photo in a 100x50 box: 50x50, centred
    ("stretch", (0, 0, 100, 50)),
    ("cover", (0, 0, 100, 50)),
])
def test_image_is_scaled_into_its_box(fit: str, expect_box: tuple[int, int, int, int]) -> None:
    pytest.importorskip("render.dither")
    clear_image_cache()
    photo = PILImage.new("RGB", (40, 40), (16, 16, 16))  # square, black
    label = Label("7.5-bwry", elements=(Image(Box(0, 0, 100, 50), f"sq-{fit}", fit=fit,  # type: ignore[arg-type]
                                              dither="nearest"),))
    out = draw_label(label, images=lambda src: photo)
    dark = np.argwhere(out == BLACK)
    x0, y0, w, h = expect_box
    if fit == "contain":
        assert dark[:, 1].min() == x0 and dark[:, 1].max() == x0 + w - 1
    else:
        assert dark[:, 1].min() == 0 and dark[:, 1].max() == 99
    assert dark[:, 0].min() == 0 and dark[:, 0].max() == 49
    assert set(np.unique(out).tolist()) <= {BLACK, WHITE}


def test_photo_is_reduced_to_the_panels_inks_and_cached() -> None:
    pytest.importorskip("render.dither")
    clear_image_cache()
    ramp = np.zeros((60, 90, 3), dtype=np.uint8)
    ramp[..., 0] = np.linspace(0, 255, 90, dtype=np.uint8)[None, :]
    ramp[..., 1] = np.linspace(0, 255, 60, dtype=np.uint8)[:, None]
    photo = PILImage.fromarray(ramp)
    calls: list[str] = []

    def loader(src: str) -> PILImage.Image:
        calls.append(src)
        return photo

    for model in ("2.13-bwr", "2.13-bwr", "1.54-bw"):
        label = Label(model, elements=(Image(Box(10, 10, 90, 60), "ramp.png", fit="stretch"),))
        out = draw_label(label, images=loader)
        assert set(np.unique(out).tolist()) <= set(indices_for(get_model(model).colours))
        assert len(set(np.unique(out[10:70, 10:100]).tolist())) >= 2  # dithered, not blank
    assert calls == ["ramp.png", "ramp.png"]  # once per colour mode, then from the cache


def test_transparent_image_is_flattened_on_paper() -> None:
    pytest.importorskip("render.dither")
    clear_image_cache()
    photo = PILImage.new("RGBA", (20, 20), (200, 0, 0, 0))  # fully transparent red
    label = Label("7.5-bwry", elements=(Image(Box(0, 0, 20, 20), "clear", dither="nearest"),))
    out = draw_label(label, images=lambda src: photo)
    assert np.all(out[:20, :20] == WHITE)


# -- golden labels -------------------------------------------------------------------------


def _golden_labels() -> dict[str, Label]:
    return {
        "shelf-2.9-bwry": Label("2.9-bwry", elements=(
            Rect(Box(0, 0, 296, 20), fill="red"),
            Text(Box(4, 2, 200, 16), "Sklep Żabka — Łódź", size=14, min_size=10, weight="bold",
                 colour="white"),
            Text(Box(4, 24, 180, 40), "Masło ekstra Łaciate 82% 200 g 🧈 zażółć gęślą jaźń",
                 size=18, min_size=10, max_lines=2),
            Price(Box(150, 60, 142, 50), Decimal("7.99"), currency="zł", size=48),
            Price(Box(4, 66, 80, 22), Decimal("9.49"), currency="zł", size=20, strike=True,
                  colour="red"),
            Text(Box(4, 110, 180, 16), "39,95 zł/kg", size=12, min_size=8),
            QR(96, 62, 50, "https://sklep.example/p/5901234123457", ecc="M"),
            Line(0, 21, 295, 21, colour="yellow"),
        )),
        "promo-2.13-bwr": Label("2.13-bwr", background="white", elements=(
            Rect(Box(0, 0, 250, 122), outline="black", width=2, radius=8),
            Rect(Box(6, 6, 90, 24), fill="yellow", radius=4),  # degrades to red on BWR
            Text(Box(8, 8, 86, 20), "-30%", size=18, weight="bold", align="center",
                 colour="white"),
            Text(Box(104, 6, 140, 40), "Kawa ziarnista Arabica 1 kg", size=16, min_size=9,
                 max_lines=2, align="right"),
            Price(Box(6, 40, 110, 30), Decimal("59.99"), currency="€", size=28, strike=True),
            Price(Box(120, 48, 124, 66), Decimal("41.99"), currency="€", size=56, colour="red"),
            Text(Box(6, 76, 110, 40), "Najniższa cena z 30 dni przed obniżką: 54,99 €",
                 size=10, min_size=7, max_lines=3),
        )),
        "barcode-1.54-bw": Label("1.54-bw", elements=(
            Text(Box(5, 5, 190, 50), "Żubrówka Biała 0,5 l äöüß ř", size=20, min_size=10,
                 max_lines=2, weight="bold", align="center", valign="middle"),
            Price(Box(5, 55, 190, 60), Decimal("29.90"), currency="PLN", size=56,
                  colour="red", align="center"),  # red ink is black on BW
            Barcode(Box(10, 120, 180, 75), "5900000000008"),
        )),
    }


@pytest.mark.parametrize("name", sorted(_golden_labels()))
def test_golden_labels_are_byte_exact(name: str) -> None:
    indices = draw_label(_golden_labels()[name])
    path = GOLDEN / f"{name}.png"
    if os.environ.get("ESL_REGEN_GOLDEN") == "1":
        GOLDEN.mkdir(exist_ok=True)
        img = PILImage.fromarray(indices, mode="P")
        img.putpalette(PANEL_RGB.flatten().tolist())
        img.save(path, optimize=True)
    assert path.exists(), f"{path} missing; run with ESL_REGEN_GOLDEN=1 to create it"
    golden = np.asarray(PILImage.open(path))
    assert golden.shape == indices.shape
    diff = np.argwhere(golden != indices)
    assert diff.size == 0, f"{len(diff)} pixels differ from {path.name}, first at (y, x) {diff[0].tolist()}"
