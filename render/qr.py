"""Batch QR encoder in numpy, written from the QR specification (ISO/IEC 18004).

Why: a batch of distinct products has distinct URLs, and encoding them one at a time in
zxing-cpp costs ~0.25 ms a code. Here every code of a batch that shares (version, ecc) is
encoded together: the bit stream, Reed-Solomon over GF(256) (log/antilog tables; one loop
over data-byte positions, never over codes), block interleaving, module placement through a
precomputed index map per version, all eight masks and the penalty rules N1-N4 evaluated on
whole arrays, then format (and version >= 7) information.

Scope (what the caller may rely on): byte mode, non-empty ASCII text, versions 1..10, ECC
levels L, M, Q, H. Anything else (longer or non-ASCII text, empty text) is reported as not
handled - `None` in the result of `encode_batch` and `False` from `handles` - so the caller
uses its general encoder. The smallest version that holds the data is used; the mask is the
first of the eight with the smallest penalty, the rule zxing uses. Text that zxing-cpp also
writes as a single byte segment (it switches to numeric or alphanumeric segments for runs of
digits or capitals, e.g. the EAN in a shop URL) gives the very same symbol (tested).

Penalty rule N3 (the 1:1:3:1:1 finder-like pattern with four light modules before or after
it) treats modules outside the symbol as light (the quiet zone) and counts a pattern once
even when both sides are light, as zxing does.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["MAX_VERSION", "choose_version", "encode_batch", "handles", "penalties"]

#: The largest version this module encodes (57 x 57 modules).
MAX_VERSION = 10

_ECC_BITS = {"L": 0b01, "M": 0b00, "Q": 0b11, "H": 0b10}

# Error-correction block structure (ISO/IEC 18004 table 9), versions 1..10:
# (EC codewords per block, ((number of blocks, data codewords per block), ...)).
_BLOCKS: dict[tuple[int, str], tuple[int, tuple[tuple[int, int], ...]]] = {
    (1, "L"): (7, ((1, 19),)), (1, "M"): (10, ((1, 16),)),
    (1, "Q"): (13, ((1, 13),)), (1, "H"): (17, ((1, 9),)),
    (2, "L"): (10, ((1, 34),)), (2, "M"): (16, ((1, 28),)),
    (2, "Q"): (22, ((1, 22),)), (2, "H"): (28, ((1, 16),)),
    (3, "L"): (15, ((1, 55),)), (3, "M"): (26, ((1, 44),)),
    (3, "Q"): (18, ((2, 17),)), (3, "H"): (22, ((2, 13),)),
    (4, "L"): (20, ((1, 80),)), (4, "M"): (18, ((2, 32),)),
    (4, "Q"): (26, ((2, 24),)), (4, "H"): (16, ((4, 9),)),
    (5, "L"): (26, ((1, 108),)), (5, "M"): (24, ((2, 43),)),
    (5, "Q"): (18, ((2, 15), (2, 16))), (5, "H"): (22, ((2, 11), (2, 12))),
    (6, "L"): (18, ((2, 68),)), (6, "M"): (16, ((4, 27),)),
    (6, "Q"): (24, ((4, 19),)), (6, "H"): (28, ((4, 15),)),
    (7, "L"): (20, ((2, 78),)), (7, "M"): (18, ((4, 31),)),
    (7, "Q"): (18, ((2, 14), (4, 15))), (7, "H"): (26, ((4, 13), (1, 14))),
    (8, "L"): (24, ((2, 97),)), (8, "M"): (22, ((2, 38), (2, 39))),
    (8, "Q"): (22, ((4, 18), (2, 19))), (8, "H"): (26, ((4, 14), (2, 15))),
    (9, "L"): (30, ((2, 116),)), (9, "M"): (22, ((3, 36), (2, 37))),
    (9, "Q"): (20, ((4, 16), (4, 17))), (9, "H"): (24, ((4, 12), (4, 13))),
    (10, "L"): (18, ((2, 68), (2, 69))), (10, "M"): (26, ((4, 43), (1, 44))),
    (10, "Q"): (24, ((6, 19), (2, 20))), (10, "H"): (28, ((6, 15), (2, 16))),
}

# Alignment-pattern centre coordinates (ISO/IEC 18004 annex E), versions 2..10.
_ALIGN: dict[int, tuple[int, ...]] = {
    1: (), 2: (6, 18), 3: (6, 22), 4: (6, 26), 5: (6, 30), 6: (6, 34),
    7: (6, 22, 38), 8: (6, 24, 42), 9: (6, 26, 46), 10: (6, 28, 50),
}

_FORMAT_GEN = 0b10100110111       # x^10 + x^8 + x^5 + x^4 + x^2 + x + 1
_FORMAT_XOR = 0b101010000010010
_VERSION_GEN = 0b1111100100101    # x^12 + x^11 + x^10 + x^9 + x^8 + x^5 + x^2 + 1
_GF_POLY = 0x11D                  # x^8 + x^4 + x^3 + x^2 + 1

_PENALTY_BYTES = 1 << 17   # size of each temporary bitboard array while scoring masks
_GROUP_LIMIT = 512         # codes encoded together at most (bounds memory: 8 masks each)


def _gf_tables() -> tuple[np.ndarray, np.ndarray]:
    exp = np.zeros(512, dtype=np.int32)
    log = np.zeros(256, dtype=np.int32)
    x = 1
    for i in range(255):
        exp[i] = x
        log[x] = i
        x <<= 1
        if x & 0x100:
            x ^= _GF_POLY
    exp[255:510] = exp[0:255]
    return exp, log


_EXP, _LOG = _gf_tables()


def _gf_mul(a: int, b: int) -> int:
    return 0 if a == 0 or b == 0 else int(_EXP[_LOG[a] + _LOG[b]])


@functools.cache
def _rs_table(n_ec: int) -> np.ndarray:
    """(256, n_ec) uint8: row f = f times the generator's coefficients below the leading 1,
    the feedback term of the division by g(x) = (x - a^0)(x - a^1)...(x - a^(n_ec-1))."""
    gen = [1]
    for i in range(n_ec):
        root = int(_EXP[i])
        nxt = gen + [0]
        for j in range(len(gen)):
            nxt[j + 1] ^= _gf_mul(gen[j], root)
        gen = nxt
    coeffs = gen[1:]
    table = np.array([[_gf_mul(f, c) for c in coeffs] for f in range(256)], dtype=np.uint8)
    table.flags.writeable = False
    return table


def _rs_remainders(data: np.ndarray, n_ec: int) -> np.ndarray:
    """EC codewords of every row of `data` (blocks x k, uint8): one step per byte position."""
    table = _rs_table(n_ec)
    rem = np.zeros((data.shape[0], n_ec), dtype=np.uint8)
    zero = np.zeros((data.shape[0], 1), dtype=np.uint8)
    for j in range(data.shape[1]):
        feedback = data[:, j] ^ rem[:, 0]
        rem = np.concatenate((rem[:, 1:], zero), axis=1)
        rem ^= table[feedback]
    return rem


def _bch(value: int, gen: int, bits: int) -> int:
    rem = value << bits
    top = gen.bit_length() - 1
    for shift in range(rem.bit_length() - 1, top - 1, -1):
        if rem >> shift & 1:
            rem ^= gen << (shift - top)
    return (value << bits) | rem


@dataclass(frozen=True)
class _Version:
    """Everything about one version that does not depend on the data or the ECC level."""

    size: int
    function: np.ndarray      # (S, S) bool: module belongs to a function pattern or info area
    base: np.ndarray          # (S, S) bool: dark function modules (format/version areas light)
    order: np.ndarray         # flat indices of the data modules in placement order
    masks: np.ndarray         # (8, S*S) bool: mask patterns on data modules only
    format_a: np.ndarray      # flat indices of the 15 format bits (bit 0 first), copy 1
    format_b: np.ndarray      # the same, copy 2


@functools.cache
def _version(version: int) -> _Version:
    size = 17 + 4 * version
    func = np.zeros((size, size), dtype=bool)
    dark = np.zeros((size, size), dtype=bool)
    # Finder patterns with their separators.
    for r0, c0 in ((0, 0), (0, size - 7), (size - 7, 0)):
        func[max(r0 - 1, 0):r0 + 8, max(c0 - 1, 0):c0 + 8] = True
        dark[r0:r0 + 7, c0:c0 + 7] = True
        dark[r0 + 1:r0 + 6, c0 + 1:c0 + 6] = False
        dark[r0 + 2:r0 + 5, c0 + 2:c0 + 5] = True
    # Timing patterns.
    func[6, :] = True
    func[:, 6] = True
    dark[6, 8:size - 8] = np.arange(8, size - 8) % 2 == 0
    dark[8:size - 8, 6] = np.arange(8, size - 8) % 2 == 0
    # Alignment patterns (not over the finders).
    centres = _ALIGN[version]
    for r in centres:
        for c in centres:
            if (r, c) in ((6, 6), (6, size - 7), (size - 7, 6)):
                continue
            func[r - 2:r + 3, c - 2:c + 3] = True
            dark[r - 2:r + 3, c - 2:c + 3] = True
            dark[r - 1:r + 2, c - 1:c + 2] = False
            dark[r, c] = True
    # Format information areas and the dark module.
    fa = [(i, 8) for i in range(6)] + [(7, 8), (8, 8), (8, 7)] + [(8, 14 - i) for i in range(9, 15)]
    fb = [(8, size - 1 - i) for i in range(8)] + [(size - 15 + i, 8) for i in range(8, 15)]
    for r, c in fa + fb:
        func[r, c] = True
    func[size - 8, 8] = True
    dark[size - 8, 8] = True
    # Version information (7 and up).
    if version >= 7:
        bits = _bch(version, _VERSION_GEN, 12)
        for i in range(18):
            a, b = size - 11 + i % 3, i // 3
            func[b, a] = func[a, b] = True
            dark[b, a] = dark[a, b] = bool(bits >> i & 1)
    # Data modules in placement order: column pairs from the right, zig-zagging up and down,
    # skipping the vertical timing column.
    order: list[int] = []
    upward = True
    col = size - 1
    while col > 0:
        if col == 6:
            col -= 1
        rows = range(size - 1, -1, -1) if upward else range(size)
        for r in rows:
            for c in (col, col - 1):
                if not func[r, c]:
                    order.append(r * size + c)
        upward = not upward
        col -= 2
    y, x = np.indices((size, size))  # row and column of every module
    patterns = np.stack([
        (y + x) % 2 == 0,
        y % 2 == 0,
        x % 3 == 0,
        (y + x) % 3 == 0,
        (y // 2 + x // 3) % 2 == 0,
        (y * x) % 2 + (y * x) % 3 == 0,
        ((y * x) % 2 + (y * x) % 3) % 2 == 0,
        ((y + x) % 2 + (y * x) % 3) % 2 == 0,
    ]) & ~func

    def flat(cells: list[tuple[int, int]]) -> np.ndarray:
        return np.array([r * size + c for r, c in cells], dtype=np.intp)

    for arr in (func, dark, patterns):
        arr.flags.writeable = False
    return _Version(size, func, dark, np.array(order, dtype=np.intp),
                    patterns.reshape(8, -1), flat(fa), flat(fb))


def _data_codewords(version: int, ecc: str) -> int:
    return sum(n * k for n, k in _BLOCKS[version, ecc][1])


def _count_bits(version: int) -> int:
    return 8 if version <= 9 else 16


@functools.cache
def _capacity(version: int, ecc: str) -> int:
    """Bytes of byte-mode data that fit (mode indicator and count included in the budget)."""
    return (8 * _data_codewords(version, ecc) - 4 - _count_bits(version)) // 8


def choose_version(n_bytes: int, ecc: str) -> int | None:
    """The smallest version (1..MAX_VERSION) that holds `n_bytes` in byte mode at `ecc`,
    or None if none of them does."""
    if ecc not in _ECC_BITS:
        raise ValueError(f"ecc must be L, M, Q or H, got {ecc!r}")
    for version in range(1, MAX_VERSION + 1):
        if n_bytes <= _capacity(version, ecc):
            return version
    return None


def handles(data: str, ecc: str) -> bool:
    """Whether `encode_batch` encodes `data` at `ecc` (non-empty ASCII that fits version 10)."""
    return bool(data) and data.isascii() and choose_version(len(data), ecc) is not None


@functools.cache
def _layout(version: int, ecc: str) -> tuple[np.ndarray, np.ndarray]:
    """(interleaving permutation over data + EC codewords, (8, S*S) function modules with the
    format information of each mask) for one (version, ecc)."""
    n_ec, groups = _BLOCKS[version, ecc]
    lengths = [k for n, k in groups for _ in range(n)]
    starts = np.cumsum([0] + lengths[:-1])
    n_data = sum(lengths)
    perm = [int(starts[b]) + i for i in range(max(lengths)) for b in range(len(lengths))
            if i < lengths[b]]
    perm += [n_data + b * n_ec + i for i in range(n_ec) for b in range(len(lengths))]
    ver = _version(version)
    bases = np.repeat(ver.base.reshape(1, -1), 8, axis=0)
    for mask in range(8):
        bits = _bch(_ECC_BITS[ecc] << 3 | mask, _FORMAT_GEN, 10) ^ _FORMAT_XOR
        values = np.array([bits >> i & 1 for i in range(15)], dtype=bool)
        bases[mask, ver.format_a] = values
        bases[mask, ver.format_b] = values
    perm_arr = np.array(perm, dtype=np.intp)
    assert len(perm_arr) * 8 <= len(ver.order), (version, ecc)
    return perm_arr, bases


def _codewords(payloads: list[bytes], version: int, ecc: str) -> np.ndarray:
    """(N, data codewords) uint8: mode 0100, count, bytes, terminator, pad 0xEC 0x11...
    Every field is a whole number of nibbles, so the stream is built as nibbles."""
    n_cw = _data_codewords(version, ecc)
    count_nibbles = _count_bits(version) // 4
    lengths = np.array([len(p) for p in payloads], dtype=np.intp)
    width = int(lengths.max())
    raw = np.frombuffer(b"".join(p.ljust(width, b"\0") for p in payloads),
                        dtype=np.uint8).reshape(len(payloads), width)
    nib = np.zeros((len(payloads), 2 * n_cw), dtype=np.uint8)
    head = 1 + count_nibbles
    nib[:, 0] = 0b0100
    for i in range(count_nibbles):
        nib[:, 1 + i] = (lengths >> (4 * (count_nibbles - 1 - i))) & 0xF
    data_nib = np.empty((len(payloads), 2 * width), dtype=np.uint8)
    data_nib[:, 0::2] = raw >> 4
    data_nib[:, 1::2] = raw & 0xF
    span = min(2 * width, 2 * n_cw - head)
    nib[:, head:head + span] = data_nib[:, :span]
    pos = np.arange(2 * n_cw)[None, :]
    end = (head + 2 * lengths)[:, None]          # first nibble after the data: terminator
    rel = pos - end - 1                          # nibble index within the padding
    pad_byte = np.where((rel // 2) % 2 == 0, 0xEC, 0x11)
    pad = np.where(rel % 2 == 0, pad_byte >> 4, pad_byte & 0xF).astype(np.uint8)
    nib = np.where(pos < end, nib, np.where(pos == end, 0, pad)).astype(np.uint8)
    out: np.ndarray = (nib[:, 0::2] << 4) | nib[:, 1::2]
    return out


def _popcount(words: np.ndarray) -> np.ndarray:
    """Set bits summed over the first axis (the lines of a symbol)."""
    counts: np.ndarray = np.add.reduce(np.bitwise_count(words), axis=0, dtype=np.int32)
    return counts


def _line_penalties(w: np.ndarray, size: int) -> np.ndarray:
    """N1 + N3 of (S, ...) bitboards, one line (row or column) of a symbol each; shape (...)."""
    word = w.dtype.type
    u = [word(k) for k in range(8)]
    eq = w ^ (w >> u[1])
    np.invert(eq, out=eq)
    eq &= word((1 << (size - 1)) - 1)                             # bit j: m[j] == m[j+1]
    run5 = eq & (eq >> u[1])
    run5 &= run5 >> u[2]                                          # bit j: m[j..j+4] one colour
    starts = eq << u[1]
    np.invert(starts, out=starts)
    starts &= run5
    # A run of L >= 5 holds L - 4 windows of five and scores 3 + (L - 5) = (L - 4) + 2.
    n1 = _popcount(run5) + 2 * _popcount(starts)
    dark3 = w & (w >> u[1])
    dark3 &= w >> u[2]                                            # bit j: m[j..j+2] dark
    light = ~w
    pattern = (light >> u[1]) & (light >> u[5])
    pattern &= w
    pattern &= dark3 >> u[2]
    pattern &= w >> u[6]                                          # 1011101 from bit j
    # Shifts bring in zeros, i.e. light modules outside the symbol, on either side.
    dark_after = w | (w >> u[1])
    dark_after |= dark_after >> u[2]                              # bit j: a dark one in m[j..j+3]
    dark_before = (w << u[1]) | (w << u[2])
    dark_before |= dark_before << u[2]                            # bit j: one in m[j-4..j-1]
    lit = dark_before & (dark_after >> u[7])                      # dark before and dark after
    np.invert(lit, out=lit)
    pattern &= lit
    result: np.ndarray = n1 + 40 * _popcount(pattern)
    return result


def _bit_penalties(lines: np.ndarray, size: int) -> np.ndarray:
    """N1 + N2 + N3 + N4 from the bitboards (2 S, ...) of symbols: their S rows, then their
    S columns; words are unsigned integers of at least S bits."""
    rows = lines[:size]
    word = rows.dtype.type
    eq = rows ^ (rows >> word(1))
    np.invert(eq, out=eq)
    eq &= word((1 << (size - 1)) - 1)
    block = rows[:-1] ^ rows[1:]
    np.invert(block, out=block)
    block &= eq[:-1]
    block &= eq[1:]
    n2 = 3 * _popcount(block)
    dark = _popcount(rows)
    n4 = 10 * (np.abs(2 * dark - size * size) * 10 // (size * size))
    total: np.ndarray = _line_penalties(lines, size) + n2 + n4
    return total


def penalties(matrices: np.ndarray) -> np.ndarray:
    """Mask penalty scores N1 + N2 + N3 + N4 (ISO/IEC 18004 7.8.3) of (..., S, S) bool
    symbols (S <= 57), shape (...). N3 treats modules outside the symbol as light."""
    x = np.asarray(matrices, dtype=bool)
    lines = np.concatenate((np.moveaxis(_pack(x), -1, 0),
                            np.moveaxis(_pack(np.swapaxes(x, -1, -2)), -1, 0)))
    return _bit_penalties(lines, x.shape[-1])


def _encode_group(payloads: list[bytes], version: int, ecc: str) -> np.ndarray:
    """(N, S, S) bool symbols of payloads that all use `version` at `ecc`."""
    ver = _version(version)
    perm, bases = _layout(version, ecc)
    data = _codewords(payloads, version, ecc)
    n_ec, groups = _BLOCKS[version, ecc]
    ec_parts = []
    start = 0
    for n_blocks, k in groups:
        blocks = data[:, start:start + n_blocks * k].reshape(-1, k)
        ec_parts.append(_rs_remainders(blocks, n_ec).reshape(len(payloads), n_blocks * n_ec))
        start += n_blocks * k
    full = np.concatenate([data] + ec_parts, axis=1)[:, perm]
    bits = np.unpackbits(full, axis=1).astype(bool)
    size = ver.size
    n = len(payloads)
    placed = np.zeros((n, size * size), dtype=bool)
    placed[:, ver.order[:bits.shape[1]]] = bits       # remainder bits stay 0 (light)
    # All eight masks are scored on bitboards (a line of modules in one uint32/uint64
    # word), so a candidate costs 2 S words, not S*S booleans: OR/XOR commute with packing.
    square = placed.reshape(n, size, size)
    # Bitboards are laid out (line, code, mask) so that sums over lines add whole vectors.
    base_lines, mask_lines = _packed_layout(version, ecc)
    data_lines = np.concatenate((_pack(square).T, _pack(np.swapaxes(square, 1, 2)).T))
    lines = data_lines[:, :, None] ^ mask_lines[:, None, :]
    lines |= base_lines[:, None, :]
    # Scored a slice of codes at a time: small temporaries stay in the processor's cache
    # (and out of fresh mmap'd pages), which makes each code about twice as cheap.
    step = max(1, _PENALTY_BYTES // (2 * size * 8 * lines.itemsize))
    scores = np.concatenate([_bit_penalties(lines[:, lo:lo + step], size)
                             for lo in range(0, n, step)])
    best = np.argmin(scores, axis=1)                  # first of the lowest, as zxing does
    chosen: np.ndarray = bases[best] | (placed ^ ver.masks[best])
    return chosen.reshape(n, size, size)


@functools.cache
def _packed_layout(version: int, ecc: str) -> tuple[np.ndarray, np.ndarray]:
    """Bitboards (2 S, 8) - rows, then columns - of the function modules (with each mask's
    format information) and of the eight mask patterns."""
    size = _version(version).size
    bases = _layout(version, ecc)[1].reshape(8, size, size)
    masks = _version(version).masks.reshape(8, size, size)

    def lines(x: np.ndarray) -> np.ndarray:
        return np.concatenate((_pack(x).T, _pack(np.swapaxes(x, 1, 2)).T))

    return lines(bases), lines(masks)


def _pack(x: np.ndarray) -> np.ndarray:
    """Rows of (..., S, S) bool as (..., S) bitboards, bit c = module in column c: uint32
    words up to S = 32 (versions 1..3, half the memory traffic), else uint64."""
    packed = np.packbits(x, axis=-1, bitorder="little")
    nbytes = 4 if x.shape[-1] <= 32 else 8
    padded = np.zeros(packed.shape[:-1] + (nbytes,), dtype=np.uint8)
    padded[..., :packed.shape[-1]] = packed
    words: np.ndarray = padded.view("<u4" if nbytes == 4 else "<u8")[..., 0]
    return words



def encode_batch(data: Sequence[str], ecc: str) -> list[np.ndarray | None]:
    """The QR symbol of each string at `ecc`: an (S, S) bool array, True = dark, no quiet
    zone; or None for a string this encoder does not handle (see `handles`), which the
    caller then encodes some other way. Strings are grouped by version and each group is
    encoded as whole arrays: 256 distinct shop URLs (version 3) cost ~20 us a code, where
    zxing-cpp takes ~0.25 ms each; a single string costs ~0.3 ms (fixed numpy overhead)."""
    if ecc not in _ECC_BITS:
        raise ValueError(f"ecc must be L, M, Q or H, got {ecc!r}")
    result: list[np.ndarray | None] = [None] * len(data)
    by_version: dict[int, list[int]] = {}
    for index, text in enumerate(data):
        if text and text.isascii():
            version = choose_version(len(text), ecc)
            if version is not None:
                by_version.setdefault(version, []).append(index)
    for version, indices in by_version.items():
        for lo in range(0, len(indices), _GROUP_LIMIT):
            part = indices[lo:lo + _GROUP_LIMIT]
            symbols = _encode_group([data[i].encode("ascii") for i in part], version, ecc)
            for i, symbol in zip(part, symbols):
                result[i] = symbol
    return result
