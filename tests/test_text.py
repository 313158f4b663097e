"""Text fitting and price setting: nothing ever overflows its box, and text that fits is
set as large as allowed, wrapped on words, with diacritics kept and emoji dropped."""

from __future__ import annotations

import unicodedata
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from render.fonts import FontNotFoundError, font_path, locate_font
from render.glyphs import get_face
from render.text import ELLIPSIS, TextFitError, fit_text, set_price

POLISH = "ąćęłńóśźżĄĆĘŁŃÓŚŹŻ"
OTHER_LATIN = "äöüßÄÖÜřŘčšžéèêàçñåøæ"

alphabet = st.one_of(
    st.sampled_from(list("abcdefghijklmnopqrstuvwxyz ABCXYZ0123456789%,.-/€ " + POLISH + OTHER_LATIN)),
    st.sampled_from(["🍎", "🧈", "\u200d", "\ufe0f", "\u0301", "\n", "\t", "漢", "\x00", "\u00a0"]),
    st.characters(codec="utf-8"),
)
texts = st.one_of(
    st.text(alphabet, max_size=80),
    st.text(alphabet, min_size=250, max_size=320),
)


def _assert_inside(content: str, box_w: int, box_h: int, size: int, min_size: int,
                   weight: str, max_lines: int) -> None:
    fitted = fit_text(content, box_w, box_h, size=size, min_size=min_size,
                      weight=weight, max_lines=max_lines)
    assert len(fitted.lines) <= max_lines
    assert fitted.height <= box_h
    face = get_face(fitted.weight, fitted.size)
    assert fitted.line_height == face.line_height
    for line, width in zip(fitted.lines, fitted.widths):
        bitmap = face.line(line)
        # The bitmap drawn is exactly as wide as measured, and that fits the box.
        assert bitmap.shape == (face.line_height, width)
        assert width <= box_w
    if fitted.truncated and fitted.lines:
        assert fitted.lines[-1] in ("",) or fitted.lines[-1].endswith(ELLIPSIS)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    content=texts,
    box_w=st.integers(1, 300),
    box_h=st.integers(1, 150),
    size=st.integers(4, 60),
    shrink=st.integers(0, 40),
    weight=st.sampled_from(["regular", "bold"]),
    max_lines=st.integers(1, 6),
)
def test_fit_text_never_overflows(content: str, box_w: int, box_h: int, size: int, shrink: int,
                                  weight: str, max_lines: int) -> None:
    _assert_inside(content, box_w, box_h, size, max(4, size - shrink), weight, max_lines)


@pytest.mark.parametrize("box_w,box_h,max_lines", [(170, 40, 2), (288, 16, 1), (60, 120, 6), (12, 12, 3)])
def test_300_character_name_is_cut_with_ellipsis(box_w: int, box_h: int, max_lines: int) -> None:
    name = ("Ser żółty Gouda plastry extra dojrzewający ąęśćż " * 7)[:300]
    _assert_inside(name, box_w, box_h, 18, 8, "regular", max_lines)
    fitted = fit_text(name, box_w, box_h, size=18, min_size=8, max_lines=max_lines)
    assert fitted.truncated
    assert fitted.size == 8 or not fitted.lines


def test_text_that_fits_keeps_its_size_and_words() -> None:
    fitted = fit_text("Masło ekstra", 288, 40, size=20, min_size=8)
    assert fitted.size == 20
    assert fitted.lines == ("Masło ekstra",)
    assert not fitted.truncated


def test_text_shrinks_before_it_wraps_past_max_lines() -> None:
    wide = fit_text("Masło ekstra Łaciate 82% 200 g", 150, 20, size=20, min_size=8)
    assert 8 <= wide.size < 20
    assert len(wide.lines) == 1 and not wide.truncated
    assert wide.widths[0] <= 150


def test_text_wraps_on_word_boundaries() -> None:
    fitted = fit_text("Jabłka Ligol luz klasa pierwsza", 120, 200, size=16, min_size=16, max_lines=5)
    assert fitted.size == 16 and not fitted.truncated
    assert len(fitted.lines) > 1
    assert " ".join(fitted.lines) == "Jabłka Ligol luz klasa pierwsza"


def test_overlong_word_is_broken_not_lost() -> None:
    word = "Donaudampfschifffahrtsgesellschaft"
    fitted = fit_text(word, 60, 200, size=14, min_size=14, max_lines=10)
    assert not fitted.truncated
    assert "".join(fitted.lines) == word
    assert all(w <= 60 for w in fitted.widths)


def test_no_break_space_keeps_quantity_and_unit_together() -> None:
    fitted = fit_text("Mąka pszenna typ 450 1\u00a0kg", 150, 100, size=16, min_size=16, max_lines=4)
    assert "1\u00a0kg" in fitted.lines[-1]
    assert all(not line.endswith(" 1") for line in fitted.lines)


def test_hard_line_break_starts_a_new_line() -> None:
    fitted = fit_text("Promocja\n-30%", 200, 100, size=16, min_size=16, max_lines=3)
    assert fitted.lines == ("Promocja", "-30%")


def test_text_too_long_is_cut_with_ellipsis_at_min_size() -> None:
    fitted = fit_text("Sok pomarańczowy 100% tłoczony " * 5, 120, 30, size=16, min_size=10, max_lines=2)
    assert fitted.truncated and fitted.size == 10
    assert fitted.lines[-1].endswith(ELLIPSIS)
    assert len(fitted.lines) == 2


@pytest.mark.parametrize("weight", ["regular", "bold"])
def test_diacritics_and_euro_have_glyphs(weight: str) -> None:
    face = get_face(weight, 16)
    for ch in POLISH + OTHER_LATIN + "€":
        glyph = face.glyph(ch)
        assert glyph is not None, ch
        assert glyph.mask.any(), ch
    fitted = fit_text("zażółć gęślą jaźń " + POLISH, 1000, 30, size=16, min_size=16, weight=weight)
    assert fitted.lines == ("zażółć gęślą jaźń " + POLISH,)


def test_fonts_come_from_the_system(tmp_path: Path) -> None:
    for weight in ("regular", "bold"):
        path = font_path(weight)
        assert path.is_file() and path.name.startswith("DejaVuSans")
        assert not path.resolve().is_relative_to(Path(__file__).resolve().parents[1])
    with pytest.raises(FontNotFoundError, match="fonts-dejavu-core"):
        locate_font("NoSuchFont-Bold.ttf", "No Such Font:style=Bold", [str(tmp_path)])


def test_characters_the_font_lacks_are_dropped() -> None:
    fitted = fit_text("Jabłko 🍎 \u200d\ufe0f", 300, 30, size=16, min_size=8)
    assert fitted.lines == ("Jabłko",)
    assert fit_text("🍎🧈", 300, 30, size=16, min_size=8).lines == ()
    assert fit_text("", 300, 30, size=16, min_size=8).lines == ()


def test_decomposed_accents_are_composed() -> None:
    decomposed = unicodedata.normalize("NFD", "Żółć")
    assert fit_text(decomposed, 300, 30, size=16, min_size=8).lines == ("Żółć",)


def test_box_shorter_than_min_size_goes_smaller_rather_than_overflow() -> None:
    fitted = fit_text("Cena", 100, 8, size=16, min_size=12)
    assert fitted.lines and fitted.height <= 8
    assert fit_text("Cena", 100, 2, size=16, min_size=12).lines == ()


@pytest.mark.parametrize("kwargs", [
    {"box_w": 0}, {"box_h": -1}, {"size": 8, "min_size": 9}, {"max_lines": 0},
])
def test_bad_arguments_name_the_argument(kwargs: dict[str, int]) -> None:
    args = {"box_w": 100, "box_h": 20, "size": 12, "min_size": 8, "max_lines": 1} | kwargs
    with pytest.raises(TextFitError, match=next(iter(kwargs))):
        fit_text("x", args["box_w"], args["box_h"], size=args["size"],
                 min_size=args["min_size"], max_lines=args["max_lines"])


# -- prices ----------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    cents=st.integers(0, 10**9),
    currency=st.sampled_from(["zł", "PLN", "€", "$", "£", "", "Kč", "🍎"]),
    box_w=st.integers(1, 300),
    box_h=st.integers(1, 150),
    size=st.integers(8, 120),
    strike=st.booleans(),
)
def test_price_fits_or_says_it_does_not(cents: int, currency: str, box_w: int, box_h: int,
                                        size: int, strike: bool) -> None:
    setting = set_price(Decimal(cents) / 100, currency, box_w, box_h, size=size, strike=strike)
    h, w = setting.mask.shape
    assert setting.size <= size
    if setting.fits:
        assert w <= box_w and h <= box_h
    else:
        assert setting.size == 6


def test_price_shrinks_to_fit_its_box() -> None:
    big = set_price(Decimal("1234.99"), "zł", 400, 200, size=48)
    small = set_price(Decimal("1234.99"), "zł", 80, 40, size=48)
    assert big.size == 48 and big.fits
    assert small.size < 48 and small.fits
    assert small.mask.shape[1] <= 80 and small.mask.shape[0] <= 40


def test_price_rounds_half_up_to_cents() -> None:
    a = set_price(Decimal("4.995"), "zł", 300, 100, size=40).mask
    b = set_price(Decimal("5.00"), "zł", 300, 100, size=40).mask
    c = set_price(Decimal("5"), "zł", 300, 100, size=40).mask
    assert np.array_equal(a, b) and np.array_equal(b, c)


def test_price_decimals_are_raised_to_the_cap_line() -> None:
    # "1" then raised "11": the decimals' ink starts on the first row, as the units' does,
    # and ends well above the units' baseline.
    mask = set_price(Decimal("1.11"), "", 300, 100, size=60).mask
    cols = np.flatnonzero(mask.any(axis=0))
    gaps = np.flatnonzero(np.diff(cols) > 1)
    units = mask[:, : cols[gaps[0]] + 1]
    decimals = mask[:, cols[gaps[0] + 1] :]
    u_rows = np.flatnonzero(units.any(axis=1))
    d_rows = np.flatnonzero(decimals.any(axis=1))
    assert abs(int(u_rows[0]) - int(d_rows[0])) <= 1
    assert d_rows[-1] < u_rows[-1] * 0.6


def test_prefix_currency_goes_before_the_units() -> None:
    def first_baseline_ink(currency: str) -> int:
        mask = set_price(Decimal("2.50"), currency, 300, 100, size=40).mask
        return int(np.flatnonzero(mask[-1])[0])  # the units sit on the last row

    assert first_baseline_ink("") == 0
    assert first_baseline_ink("zł") == 0  # after: under the decimals
    assert first_baseline_ink("PLN") == 0
    assert first_baseline_ink("€") > 5  # before: raised, the units start after it
    assert first_baseline_ink("$") > 5


def test_strike_crosses_the_price_out() -> None:
    plain = set_price(Decimal("9.49"), "zł", 200, 80, size=40).mask
    struck = set_price(Decimal("9.49"), "zł", 200, 80, size=40, strike=True).mask
    assert plain.shape == struck.shape
    assert struck.sum() > plain.sum()
    assert np.all(struck[plain])  # nothing removed
    assert struck[-1, 0] and struck[0, -1]  # corner to corner
