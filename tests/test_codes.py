"""QR codes and EAN-13 barcodes decode back to their data with an independent decoder
(zxing-cpp's reader), both as module matrices and as drawn on a label."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import zxingcpp
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_proto.models import get_model
from render.canvas import Canvas, DrawError, draw_label
from render.codes import CodeError, _qr_pure, ean13_check_digit, ean13_modules, qr_matrix
from render.layout import QR, Barcode, Box, Label, LayoutError
from render.layout import ean13_check_digit as layout_check_digit
from render.palette import BLACK, RED, WHITE


def _image(dark: np.ndarray, scale: int, quiet: int) -> np.ndarray:
    """Greyscale image (0 dark, 255 light) of a bool matrix, upscaled, with a quiet zone."""
    img = np.where(dark, 0, 255).astype(np.uint8)
    img = np.repeat(np.repeat(img, scale, axis=0), scale, axis=1)
    return np.pad(img, quiet * scale, constant_values=255)


def _decode(img: np.ndarray, fmt: Any) -> list[str]:
    return [r.text for r in zxingcpp.read_barcodes(img, formats=fmt)]


def _with_check_digit(first12: str) -> str:
    return first12 + str(ean13_check_digit(first12))


# -- QR ------------------------------------------------------------------------------------


# Printable ASCII (URLs), Latin letters with diacritics (Latin-1 and beyond), CJK, emoji.
_QR_TEXT = st.text(
    st.one_of(st.characters(min_codepoint=0x20, max_codepoint=0x7E),
              st.sampled_from(list("¡ÓąćęłńóśźżĄĆĘŁŃÓŚŹŻäöüßřčé€漢字🍎"))),
    min_size=1, max_size=120,
)


@settings(max_examples=40, deadline=None)
@given(data=_QR_TEXT, ecc=st.sampled_from(["L", "M", "Q", "H"]))
def test_qr_matrix_decodes_to_its_data(data: str, ecc: str) -> None:
    matrix = qr_matrix(data, ecc)  # type: ignore[arg-type]
    assert matrix.dtype == bool and matrix.ndim == 2 and matrix.shape[0] == matrix.shape[1]
    assert (matrix.shape[0] - 17) % 4 == 0  # a real QR version: 21, 25, ... modules
    assert _decode(_image(matrix, 3, 4), zxingcpp.BarcodeFormat.QRCode) == [data]


@pytest.mark.parametrize("data", ["¡", "ÓÓ", "Café", "Käse für Äpfel"])
def test_latin1_text_decodes_as_itself(data: str) -> None:
    # Latin-1-only text must not be read back as Shift_JIS ("ÓÓ" -> "ﾓﾓ").
    assert _decode(_image(qr_matrix(data, "M"), 3, 4), zxingcpp.BarcodeFormat.QRCode) == [data]


@pytest.mark.parametrize("ecc", ["L", "M", "Q", "H"])
def test_qrcode_fallback_decodes_too(ecc: str) -> None:
    data = "https://sklep.example/p/5901234123457?utm=esl"
    matrix = _qr_pure(data, ecc)
    assert _decode(_image(matrix, 3, 4), zxingcpp.BarcodeFormat.QRCode) == [data]


def test_qr_matrix_is_cached_and_read_only() -> None:
    a = qr_matrix("https://sklep.example/p/1", "H")
    assert qr_matrix("https://sklep.example/p/1", "H") is a
    assert qr_matrix("https://sklep.example/p/1", "L") is not a
    with pytest.raises(ValueError):
        a[0, 0] = False


def test_higher_ecc_needs_more_modules() -> None:
    data = "https://sklep.example/produkt/ser-zolty-gouda-plastry-150g"
    assert qr_matrix(data, "H").shape[0] > qr_matrix(data, "L").shape[0]


@pytest.mark.parametrize("data,ecc", [("", "M"), ("x", "X")])
def test_qr_bad_input_is_refused(data: str, ecc: str) -> None:
    with pytest.raises(CodeError):
        qr_matrix(data, ecc)  # type: ignore[arg-type]


@pytest.mark.parametrize("colour,ink,paper", [("black", BLACK, WHITE), ("red", RED, WHITE),
                                              ("white", WHITE, BLACK)])
def test_qr_drawn_on_a_label_decodes(colour: str, ink: int, paper: int) -> None:
    url = "https://sklep.example/p/5901234123457"
    label = Label("2.9-bwry", background="yellow",
                  elements=(QR(200, 20, 90, url, ecc="H", colour=colour),))  # type: ignore[arg-type]
    indices = draw_label(label)
    square = indices[20:110, 200:290]
    assert set(np.unique(square)) == {ink, paper}  # paper under the code, flat ink
    grey = np.where(indices == ink, 0, 255).astype(np.uint8)
    grey = np.repeat(np.repeat(grey, 3, axis=0), 3, axis=1)
    assert _decode(grey, zxingcpp.BarcodeFormat.QRCode) == [url]


def test_qr_too_small_for_its_data_is_a_clear_error() -> None:
    canvas = Canvas(get_model("2.9-bwry"))
    with pytest.raises(DrawError, match="modules"):
        canvas.qr((0, 0), 21, "https://sklep.example/" + "x" * 200, ecc="H")


# -- EAN-13 --------------------------------------------------------------------------------


def test_ean13_modules_match_the_standard_for_a_known_code() -> None:
    # 5901234123457: first digit 5 -> parity LGGLLG; written out from the GS1 tables.
    expected = (
        "101"
        "0001011" "0100111" "0110011" "0010011" "0111101" "0011101"  # 9L 0G 1G 2L 3L 4G
        "01010"
        "1100110" "1101100" "1000010" "1011100" "1001110" "1000100"  # 1 2 3 4 5 7 (R)
        "101"
    )
    modules = ean13_modules("5901234123457")
    assert "".join("1" if b else "0" for b in modules) == expected


@settings(max_examples=40, deadline=None)
@given(first12=st.text("0123456789", min_size=12, max_size=12))
def test_ean13_decodes_to_its_digits(first12: str) -> None:
    digits = _with_check_digit(first12)
    modules = ean13_modules(digits)
    assert modules.shape == (95,)
    bars = np.tile(modules, (60, 1))
    img = np.where(bars, 0, 255).astype(np.uint8)
    img = np.repeat(img, 2, axis=1)
    img = np.pad(img, ((10, 10), (24, 24)), constant_values=255)
    assert _decode(img, zxingcpp.BarcodeFormat.EAN13) == [digits]


def test_check_digits_agree_with_the_layout_model() -> None:
    for first12 in ("590123412345", "400638133393", "000000000000", "978020137962"):
        assert ean13_check_digit(first12) == layout_check_digit(first12)


def test_bad_check_digit_is_refused_before_drawing() -> None:
    with pytest.raises(LayoutError, match="check digit"):
        Barcode(Box(0, 0, 200, 60), "5901234123458")
    with pytest.raises(CodeError, match="check digit"):
        ean13_modules("5901234123458")
    with pytest.raises(CodeError):
        ean13_modules("59012341234")
    canvas = Canvas(get_model("2.9-bwry"))
    with pytest.raises(CodeError):
        canvas.barcode((0, 0, 200, 60), "5901234123458")


@pytest.mark.parametrize("model,width,show", [("2.9-bwry", 140, True), ("4.2-bwry", 300, True),
                                              ("1.54-bw", 190, False), ("2.9-bwry", 100, True)])
def test_barcode_drawn_on_a_label_decodes(model: str, width: int, show: bool) -> None:
    digits = "5901234123457"
    label = Label(model, elements=(Barcode(Box(5, 10, width, 70), digits, show_digits=show),))
    indices = draw_label(label)
    assert set(np.unique(indices)) == {BLACK, WHITE}
    grey = np.where(indices == BLACK, 0, 255).astype(np.uint8)
    grey = np.pad(np.repeat(np.repeat(grey, 3, axis=0), 3, axis=1), 30, constant_values=255)
    assert _decode(grey, zxingcpp.BarcodeFormat.EAN13) == [digits]


def test_barcode_box_narrower_than_the_symbol_is_a_clear_error() -> None:
    canvas = Canvas(get_model("2.9-bwry"))
    with pytest.raises(DrawError, match="95 modules"):
        canvas.barcode(Box(0, 0, 94, 60), "5901234123457")
