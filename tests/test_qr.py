"""The batch QR encoder (render.qr): every symbol decodes with an independent reader
(zxing-cpp) to exactly its text, uses the smallest version that holds it, carries the mask
of lowest penalty (checked with a deliberately plain, loop-based penalty written here from
the specification), and a batch gives the same symbols as one string at a time."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import zxingcpp
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from render import qr

# Byte-mode capacities (bytes) of versions 1..10 at L, M, Q, H (ISO/IEC 18004 table 7).
_CAPACITY = {
    "L": (17, 32, 53, 78, 106, 134, 154, 192, 230, 271),
    "M": (14, 26, 42, 62, 84, 106, 122, 152, 180, 213),
    "Q": (11, 20, 32, 46, 60, 74, 86, 108, 130, 151),
    "H": (7, 14, 24, 34, 44, 58, 64, 84, 98, 119),
}

_QR_FORMAT: Any = zxingcpp.BarcodeFormat.QRCode  # the stubs want a BarcodeFormats set
_PRINTABLE = st.characters(min_codepoint=0x20, max_codepoint=0x7E)


def _decode(matrix: np.ndarray) -> list[str]:
    """Read a symbol drawn x4 with a four-module light quiet zone, as a PIL image."""
    img = np.where(matrix, 0, 255).astype(np.uint8)
    img = np.pad(np.repeat(np.repeat(img, 4, axis=0), 4, axis=1), 16, constant_values=255)
    pil = Image.fromarray(img, mode="L")
    return [r.text for r in zxingcpp.read_barcodes(pil, formats=_QR_FORMAT)]


def _smallest_version(n_bytes: int, ecc: str) -> int:
    return next(v for v, cap in enumerate(_CAPACITY[ecc], start=1) if n_bytes <= cap)


# -- an independent, straightforward penalty (ISO/IEC 18004 7.8.3) -------------------------


def _slow_penalty(m: np.ndarray) -> int:
    grid = [[bool(v) for v in row] for row in m]
    size = len(grid)
    lines = grid + [[grid[r][c] for r in range(size)] for c in range(size)]
    score = 0
    for line in lines:  # N1: runs of five or more of one colour
        run = 1
        for i in range(1, size + 1):
            if i < size and line[i] == line[i - 1]:
                run += 1
                continue
            if run >= 5:
                score += 3 + (run - 5)
            run = 1
    for r in range(size - 1):  # N2: 2x2 blocks of one colour
        for c in range(size - 1):
            if grid[r][c] == grid[r][c + 1] == grid[r + 1][c] == grid[r + 1][c + 1]:
                score += 3
    finder = [True, False, True, True, True, False, True]
    for line in lines:  # N3: 1:1:3:1:1 with four light modules (outside is light) either side
        def light(lo: int, hi: int, line: list[bool] = line) -> bool:
            return not any(line[i] for i in range(max(lo, 0), min(hi, size)))
        for x in range(size - 6):
            if line[x:x + 7] == finder and (light(x - 4, x) or light(x + 7, x + 11)):
                score += 40
    dark = sum(v for row in grid for v in row)  # N4: every 5 % away from half dark
    score += 10 * (abs(dark * 2 - size * size) * 10 // (size * size))
    return score


def _all_masks(matrix: np.ndarray, version: int, ecc: str) -> tuple[int, list[np.ndarray]]:
    """The mask the symbol carries and the symbol under each of the eight masks."""
    layout = qr._version(version)
    bases = qr._layout(version, ecc)[1]
    flat = matrix.reshape(-1)
    func = layout.function.reshape(-1)
    chosen = [k for k in range(8) if np.array_equal(flat[func], bases[k][func])]
    assert len(chosen) == 1
    data = flat ^ layout.masks[chosen[0]]
    size = layout.size
    return chosen[0], [(bases[k] | ((data ^ layout.masks[k]) & ~func)).reshape(size, size)
                       for k in range(8)]


# -- tests ---------------------------------------------------------------------------------


@st.composite
def _text_and_ecc(draw: st.DrawFn) -> tuple[str, str]:
    ecc = draw(st.sampled_from("LMQH"))
    version = draw(st.integers(1, 10))
    low = 1 if version == 1 else _CAPACITY[ecc][version - 2] + 1
    n = draw(st.integers(low, _CAPACITY[ecc][version - 1]))
    return draw(st.text(_PRINTABLE, min_size=n, max_size=n)), ecc


@settings(max_examples=60, deadline=None)
@given(case=_text_and_ecc())
def test_symbol_decodes_in_smallest_version(case: tuple[str, str]) -> None:
    text, ecc = case
    [matrix] = qr.encode_batch([text], ecc)
    assert matrix is not None and matrix.dtype == bool
    version = _smallest_version(len(text), ecc)
    assert matrix.shape == (17 + 4 * version, 17 + 4 * version)
    assert _decode(matrix) == [text]


@settings(max_examples=15, deadline=None)
@given(case=_text_and_ecc())
def test_chosen_mask_has_lowest_penalty(case: tuple[str, str]) -> None:
    text, ecc = case
    [matrix] = qr.encode_batch([text], ecc)
    assert matrix is not None
    chosen, candidates = _all_masks(matrix, (matrix.shape[0] - 17) // 4, ecc)
    slow = [_slow_penalty(c) for c in candidates]
    assert slow[chosen] == min(slow)
    assert chosen == slow.index(min(slow))  # ties go to the first mask, as in zxing
    assert list(qr.penalties(np.stack(candidates))) == slow


@pytest.mark.parametrize("ecc", ["L", "M", "Q", "H"])
def test_urls_decode(ecc: str) -> None:
    urls = ["https://sklep.example/p/5900010012345", "https://sklep.example/p/5900010012352",
            "HTTPS://SKLEP.EXAMPLE/P/1", "https://example.com/?q=a%20b&x=1#frag",
            "https://shop.example/products/" + "long-name-" * 8 + "42", "x"]
    for url, matrix in zip(urls, qr.encode_batch(urls, ecc)):
        assert matrix is not None and _decode(matrix) == [url]


@settings(max_examples=10, deadline=None)
@given(texts=st.lists(st.text(_PRINTABLE, min_size=1, max_size=160), min_size=1, max_size=12),
       ecc=st.sampled_from("LMQH"))
def test_batch_equals_one_at_a_time(texts: list[str], ecc: str) -> None:
    batch = qr.encode_batch(texts, ecc)
    for text, symbol in zip(texts, batch):
        [single] = qr.encode_batch([text], ecc)
        if single is None:
            assert symbol is None and not qr.handles(text, ecc)
        else:
            assert symbol is not None and np.array_equal(symbol, single)


def test_unhandled_strings_are_none() -> None:
    texts = ["ok", "Café", "漢字", "", "a" * 272, "a" * 271]
    assert [m is None for m in qr.encode_batch(texts, "L")] == [False, True, True, True, True, False]
    assert [qr.handles(t, "L") for t in texts] == [True, False, False, False, False, True]
    assert qr.encode_batch(["a" * 120], "H") == [None]
    assert qr.encode_batch([], "M") == []


def test_bad_ecc_is_refused() -> None:
    with pytest.raises(ValueError, match="'X'"):
        qr.encode_batch(["a"], "X")


def test_same_symbols_as_zxing_for_byte_only_text() -> None:
    # Lowercase letters can only be byte mode, so zxing-cpp encodes the same codewords and,
    # with the same mask rules, must give the very same symbol.
    rng = np.random.default_rng(7)
    for ecc in "LMQH":
        texts = ["".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), size=n))
                 for n in rng.integers(1, _CAPACITY[ecc][-1] + 1, size=12)]
        for text, ours in zip(texts, qr.encode_batch(texts, ecc)):
            theirs = zxingcpp.create_barcode(text, zxingcpp.BarcodeFormat.QRCode, ec_level=ecc)
            img = np.asarray(theirs.to_image(scale=1, add_quiet_zones=False)) < 128
            assert ours is not None and np.array_equal(ours, img), (text, ecc)


@pytest.mark.parametrize("version", range(1, 11))
def test_codewords_fill_the_symbol(version: int) -> None:
    # Data + EC codewords of every level fill the data modules, leaving the spec's
    # remainder bits: none for version 1, seven for versions 2..6, none for 7..10.
    remainder = 0 if version == 1 or version >= 7 else 7
    modules = len(qr._version(version).order)
    for ecc in "LMQH":
        n_ec, groups = qr._BLOCKS[version, ecc]
        total = sum(n * (k + n_ec) for n, k in groups)
        assert modules - 8 * total == remainder, (version, ecc)


def test_qr_matrices_fills_the_qr_matrix_cache() -> None:
    from render import codes

    cached = codes.qr_matrix("https://sklep.example/p/already-cached", "M")
    items = [(f"https://sklep.example/p/batch-{i}", "Q") for i in range(20)]
    items += [("https://sklep.example/p/already-cached", "M"), ("Zażółć gęślą jaźń", "M"),
              ("", "M"), ("bad ecc", "X"), ("https://sklep.example/p/batch-0", "Q")]
    codes.qr_matrices(items)
    # What was cached stays; the batch symbols are what qr_matrix now returns.
    assert codes.qr_matrix("https://sklep.example/p/already-cached", "M") is cached
    batch = qr.encode_batch([data for data, _ in items[:20]], "Q")
    for (data, _), expected in zip(items[:20], batch):
        got = codes.qr_matrix(data, "Q")
        assert expected is not None and np.array_equal(got, expected)
        assert not got.flags.writeable and _decode(got) == [data]
    # Non-ASCII text still goes through the single-code path (UTF-8 with an ECI header).
    assert _decode(codes.qr_matrix("Zażółć gęślą jaźń", "M")) == ["Zażółć gęślą jaźń"]


def test_a_label_draws_the_same_symbol_alone_or_in_a_batch() -> None:
    """Content hashes must not depend on how a label was rendered: the single-code path and
    the batch prefetch give identical modules (URLs with digit runs are where encoders that
    mix segments would differ)."""
    from render import codes

    urls = [f"https://sklep.example/p/59000100{i:05d}" for i in range(8)]
    codes._QR_CACHE.clear()
    alone = [codes.qr_matrix(u, "M") for u in urls]
    codes._QR_CACHE.clear()
    codes.qr_matrices([(u, "M") for u in urls])
    for u, single in zip(urls, alone):
        assert np.array_equal(codes.qr_matrix(u, "M"), single)
