"""QR and EAN-13 symbols as module matrices (True = dark module), ready to scale and draw.

QR codes of ASCII text up to version 10 (URLs, SKUs) come from our numpy encoder `render.qr`,
which encodes a whole chunk of labels at once (`qr_matrices`, ~20 us a code); anything else
from zxing-cpp (C++, ~0.2 ms), or the pure-Python ``qrcode`` package (5–7 ms) when
zxing-cpp is missing or refuses the data, or for text that only ISO-8859-1 holds beyond
ASCII (see `_latin1_only`). Symbols are cached by (data, ecc) across batches: a price
change does not change a product's URL. EAN-13 is
encoded here from the standard's tables (the symbol is simple, and owning it keeps the
parity logic testable).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from typing import Literal

import numpy as np

from render.glyphs import LRUCache

__all__ = [
    "CodeError", "EccLevel", "EAN13_GUARDS", "qr_matrix", "qr_matrices", "ean13_modules",
    "ean13_check_digit",
]

log = logging.getLogger(__name__)

EccLevel = Literal["L", "M", "Q", "H"]


class CodeError(ValueError):
    """Data that cannot be encoded as the requested symbol (message names the value)."""


def _qr_zxing(data: str, ecc: str) -> np.ndarray | None:
    try:
        import zxingcpp
    except ImportError:
        return None
    try:
        code = zxingcpp.create_barcode(data, zxingcpp.BarcodeFormat.QRCode, ec_level=ecc)
        img = np.asarray(code.to_image(scale=1, add_quiet_zones=False))
    except (RuntimeError, ValueError, TypeError) as exc:
        log.warning("zxing-cpp could not encode QR %r (ecc %s): %s; using qrcode", data[:60], ecc, exc)
        return None
    if img.ndim != 2 or img.shape[0] != img.shape[1] or img.shape[0] < 21:
        log.warning("zxing-cpp returned a %s image for QR %r; using qrcode", img.shape, data[:60])
        return None
    return img < 128


def _qr_pure(data: str, ecc: str) -> np.ndarray:
    import qrcode  # type: ignore[import-untyped]
    import qrcode.constants as qc  # type: ignore[import-untyped]
    from qrcode.exceptions import DataOverflowError  # type: ignore[import-untyped]

    level = {"L": qc.ERROR_CORRECT_L, "M": qc.ERROR_CORRECT_M, "Q": qc.ERROR_CORRECT_Q, "H": qc.ERROR_CORRECT_H}[ecc]
    qr = qrcode.QRCode(error_correction=level, border=0, box_size=1)
    qr.add_data(data)
    try:
        qr.make(fit=True)
    except DataOverflowError:
        raise CodeError(f"QR data of {len(data.encode())} bytes does not fit any QR version at ecc {ecc}") from None
    return np.array(qr.get_matrix(), dtype=bool)


def _latin1_only(data: str) -> bool:
    """Non-ASCII text that ISO-8859-1 can hold. zxing-cpp stores such text as ISO-8859-1
    bytes without an ECI header (QR's implicit charset), and readers - zxing's own
    included - then often guess Shift_JIS ("ÓÓ" reads as "ﾓﾓ"). The qrcode package writes
    UTF-8 bytes, which readers recognise, so such (rare) data goes there."""
    if data.isascii():
        return False
    try:
        data.encode("latin-1")
    except UnicodeEncodeError:
        return False  # zxing-cpp writes it as UTF-8 with an ECI header: unambiguous
    return True


_QR_CACHE: LRUCache[tuple[str, str], np.ndarray] = LRUCache(16384)


def _freeze(matrix: np.ndarray) -> np.ndarray:
    matrix = np.ascontiguousarray(matrix, dtype=bool)
    matrix.flags.writeable = False
    return matrix


def _qr_single(data: str, ecc: str) -> np.ndarray:
    """One symbol, by the same encoder a batch would use, so that a label draws the same
    modules (and gets the same content hash) however it is rendered: `render.qr` for ASCII
    text up to version 10, else zxing-cpp, else the qrcode package."""
    from render import qr

    matrix = qr.encode_batch([data], ecc)[0] if qr.handles(data, ecc) else None
    if matrix is None and not _latin1_only(data):
        matrix = _qr_zxing(data, ecc)
    if matrix is None:
        matrix = _qr_pure(data, ecc)
    return _freeze(matrix)


def qr_matrix(data: str, ecc: EccLevel = "M") -> np.ndarray:
    """The QR modules for `data` at error-correction level `ecc`: a read-only square bool
    array (True = dark), without quiet zone. Cached by (data, ecc) in a bounded LRU."""
    if ecc not in ("L", "M", "Q", "H"):
        raise CodeError(f"ecc must be L, M, Q or H, got {ecc!r}")
    if not data:
        raise CodeError("QR data must not be empty")
    key = (data, ecc)
    matrix = _QR_CACHE.get(key)
    if matrix is None:
        matrix = _qr_single(data, ecc)
        _QR_CACHE.put(key, matrix)
    return matrix


def qr_matrices(items: Sequence[tuple[str, str]]) -> None:
    """Fill the `qr_matrix` cache for every (data, ecc) of `items` not cached yet, encoding
    them together with the batch encoder `render.qr` (~20 us a code in a chunk of 256
    instead of ~0.25 ms one at a time). Items that encoder does not handle (non-ASCII, beyond
    version 10) and invalid items are left to `qr_matrix`, which encodes or refuses them one
    by one when they are drawn. The symbols are the ones `qr_matrix` would make."""
    from render import qr

    wanted = [key for key in dict.fromkeys(items)
              if key[1] in ("L", "M", "Q", "H") and qr.handles(*key) and _QR_CACHE.get(key) is None]
    todo: dict[str, list[str]] = {}
    for data, ecc in wanted[:16384]:  # more would evict one another before they are drawn
        todo.setdefault(ecc, []).append(data)
    for ecc, texts in todo.items():
        for text, matrix in zip(texts, qr.encode_batch(texts, ecc)):
            if matrix is not None:
                _QR_CACHE.put((text, ecc), _freeze(matrix))


# -- EAN-13 --------------------------------------------------------------------------------

# Left-hand odd parity ("L") codes for digits 0..9, 7 modules each, 1 = dark.
_L = ("0001101", "0011001", "0010011", "0111101", "0100011",
      "0110001", "0101111", "0111011", "0110111", "0001011")
# Right-hand ("R") codes are the complement of L; even parity ("G") codes are R reversed.
_R = tuple("".join("1" if b == "0" else "0" for b in code) for code in _L)
_G = tuple(code[::-1] for code in _R)
# Which of L/G encodes each of the six left digits, chosen by the (implicit) first digit.
_PARITY = ("LLLLLL", "LLGLGG", "LLGGLG", "LLGGGL", "LGLLGG",
           "LGGLLG", "LGGGLL", "LGLGLG", "LGLGGL", "LGGLGL")
_START, _CENTRE, _END = "101", "01010", "101"

#: Module ranges of the guard bars (start, centre, end), drawn longer than data bars.
EAN13_GUARDS = ((0, 3), (45, 50), (92, 95))


def ean13_check_digit(first12: str) -> int:
    """The EAN-13 check digit of twelve digits (weights 1, 3, 1, 3… from the left)."""
    if len(first12) != 12 or not (first12.isascii() and first12.isdigit()):
        raise CodeError(f"EAN-13 needs 12 digits before the check digit, got {first12!r}")
    total = sum(int(d) * (3 if i % 2 else 1) for i, d in enumerate(first12))
    return (10 - total % 10) % 10


@functools.lru_cache(maxsize=4096)
def _ean13_cached(digits: str) -> np.ndarray:
    parity = _PARITY[int(digits[0])]
    left = "".join((_L if p == "L" else _G)[int(d)] for p, d in zip(parity, digits[1:7]))
    right = "".join(_R[int(d)] for d in digits[7:13])
    bits = _START + left + _CENTRE + right + _END
    modules: np.ndarray = np.frombuffer(bits.encode("ascii"), dtype=np.uint8) == ord("1")
    modules.flags.writeable = False
    return modules


def ean13_modules(digits: str) -> np.ndarray:
    """The 95 modules (True = bar) of EAN-13 `digits` (13 digits, check digit included and
    verified): start guard, six left digits in L/G codes by the parity pattern of the first
    digit, centre guard, six right digits in R codes, end guard. No quiet zones."""
    if len(digits) != 13 or not (digits.isascii() and digits.isdigit()):
        raise CodeError(f"EAN-13 must be 13 digits, got {digits!r}")
    expected = ean13_check_digit(digits[:12])
    if int(digits[12]) != expected:
        raise CodeError(f"EAN-13 {digits!r} has check digit {digits[12]}, expected {expected}")
    return _ean13_cached(digits)
