"""Colour reduction of RGB pictures to a panel's palette indices, in numpy (and numba).

``reduce(rgb, mode, method)`` maps uint8 RGB, one image ``(H, W, 3)`` or a batch
``(N, H, W, 3)``, to palette indices (0 black, 1 white, 2 yellow, 3 red) that the colour mode
can show, matching against the panel's real ink colours (`render.palette.palette_rgb`).

Colour distance. Squared Euclidean distance in full-range BT.601 Y'CbCr (the JPEG space,
luma and two colour differences), on gamma-encoded sRGB values. Written as a quadratic form on
RGB it is ``Q = Mᵀ M``; we use ``round(16 Q) = [[6, 0, -1], [0, 10, -1], [-1, -1, 4]]`` so every
score is an exact integer in float32. That exactness is a promise, not a detail: a pixel's
result does not depend on which other images share its batch or on how BLAS orders a sum.

Methods:

- ``nearest``: exact nearest ink; for flat artwork (text, prices, codes). A 6-bit-per-channel
  table answers for every cell whose eight corners agree (Voronoi cells are convex, so the
  whole cell agrees); pixels in the few cells that straddle a boundary are computed exactly.
- ``bayer`` (16x16) and ``blue-noise`` (64x64 void-and-cluster mask, `render.bluenoise`):
  ordered dithering by two-ink mixing. For each colour the table holds the pair of inks whose
  segment passes closest to it and the mixing fraction along that segment (computed at the
  6-bit cell centre); the mask threshold picks one of the two. A palette colour mixes with
  nothing, so flat ink stays exactly flat, and a grey between black and white lights the
  fraction of white pixels its position on that segment asks for.
- ``floyd-steinberg`` and ``atkinson``: error diffusion in RGB, raster order, no serpentine
  (each corrected value rounded half-to-even to an integer and clamped to 0..255, as Pillow
  does; exact distance ties go to the higher index; Atkinson passes on 6/8 of the error by
  design, so extreme tones saturate). The weights are one table, `_KERNELS`, read by two
  implementations that give the same indices bit for bit (tests/test_dither.py checks both
  against a one-pixel-at-a-time textbook loop and against each other):

  - a numba kernel (`_raster_kernel`), used whenever numba imports: one pass over each image
    in integer arithmetic, with a four-row error ring, two rows in flight (the second two
    columns behind, so their dependency chains overlap) and nothing allocated per pixel.
    One core, the GIL released. numba is used because numpy cannot reach the target
    (at least Pillow's C ``quantize`` speed on batched 800x480): a serial recurrence leaves
    numpy a Python-level step per wavefront, about 0.6x Pillow at batch 16 and 0.14x for one
    image, after six approaches were tried. Compiled on first use and cached on disk.
  - the numpy wavefront, the fallback when numba does not import (numba's wheels reach a new
    CPython release months after it, so the package must work without it): pixel (i, j)
    depends only on pixels with a smaller ``j + 2i``, so each of the ``W + 2H - 2`` steps
    quantises every pixel with the same ``j + 2i`` of every image in the batch with about ten
    numpy calls; no per-pixel Python. Its throughput grows with the batch: a single image
    pays the per-step overhead alone, so reduce many labels' photos in one call.

Memory: the numba kernel needs four rows of errors beside its output; the numpy wavefront
works on chunks of at most `_ED_CHUNK_PIXELS` pixels (about 8 bytes a pixel); table methods
on bands of `_TABLE_CHUNK_PIXELS`. The colour tables (4 MiB per mode for ``nearest``, 8 MiB
for the ordered methods) are built on first use, once per process.
"""

from __future__ import annotations

import logging
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache, lru_cache
from types import ModuleType
from typing import Final, get_args

import numpy as np
from numpy.lib.stride_tricks import as_strided

from firmware_proto.models import ColourMode
from render.bluenoise import bayer_matrix, blue_noise_mask
from render.layout import Dither
from render.palette import PANEL_RGB, PaletteError, indices_for

__all__ = ["DitherError", "METHODS", "COLOUR_METRIC", "reduce", "nearest_index"]

log = logging.getLogger(__name__)

METHODS: Final[tuple[Dither, ...]] = get_args(Dither)

COLOUR_METRIC: Final = np.array([[6, 0, -1], [0, 10, -1], [-1, -1, 4]], dtype=np.int64)
"""16 x the BT.601 Y'CbCr squared-distance form on RGB, rounded to integers (see module doc)."""

_BAYER_SIZE: Final = 16
_BLUE_NOISE_SIZE: Final = 64
_CELL_BITS: Final = 6  # colour table resolution per channel
_LUT_SIZE: Final = 0x3F3F3F + 1  # index = r>>2 | (g>>2)<<8 | (b>>2)<<16
_AMBIGUOUS: Final = 255
_SCORE_LOW: Final = 1 << 21  # every diffusion score lies in [2**21, 2**22): ulp exactly 1/4
_ED_CHUNK_PIXELS: Final = 1 << 23  # pixels per error-diffusion chunk (about 8 bytes each)
_TABLE_CHUNK_PIXELS: Final = 1 << 17  # pixels per table-lookup chunk (temporaries stay in cache)
_BLOCK: Final = 16  # steps whose pixels are skewed into the ring at a time


@dataclass(frozen=True)
class _DiffusionKernel:
    """Error-diffusion weights: ``taps`` of (row offset, column offset, numerator), all over
    one power-of-two ``denominator``, so every share of an integer error is exact in float32
    as in integers. The one table both the numba kernel and the numpy wavefront read."""

    denominator: int
    taps: tuple[tuple[int, int, int], ...]


_KERNELS: Final[dict[str, _DiffusionKernel]] = {
    # right 7/16; below-left 3/16, below 5/16, below-right 1/16
    "floyd-steinberg": _DiffusionKernel(16, ((0, 1, 7), (1, -1, 3), (1, 0, 5), (1, 1, 1))),
    # right, right+2; below-left, below, below-right; two below: 1/8 each
    "atkinson": _DiffusionKernel(8, ((0, 1, 1), (0, 2, 1), (1, -1, 1), (1, 0, 1), (1, 1, 1), (2, 0, 1))),
}
_USE_NUMBA = True
"""Whether `reduce` diffuses with the numba kernel when numba imports; tests and the
benchmark set it to False to run the numpy wavefront instead."""


class DitherError(ValueError):
    """Input that colour reduction cannot take; the message names the value."""


# ---------------------------------------------------------------------------------------------
# input checks


def _check_input(rgb: object, mode: object, method: object) -> tuple[np.ndarray, tuple[int, ...]]:
    if method not in METHODS:
        raise DitherError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    try:
        idx = indices_for(mode)  # type: ignore[arg-type]
    except (PaletteError, TypeError):
        raise DitherError(f"colour mode must be bw, bwr or bwry, got {mode!r}") from None
    if not isinstance(rgb, np.ndarray):
        raise DitherError(f"rgb must be a numpy array, got {type(rgb).__name__}")
    if rgb.dtype != np.uint8:
        raise DitherError(f"rgb must have dtype uint8, got {rgb.dtype}")
    if rgb.ndim not in (3, 4) or rgb.shape[-1] != 3 or 0 in rgb.shape[-3:-1]:
        raise DitherError(f"rgb must have shape (H, W, 3) or (N, H, W, 3) with H, W >= 1, got {rgb.shape}")
    return rgb, idx


def reduce(rgb: np.ndarray, mode: ColourMode, method: Dither = "floyd-steinberg") -> np.ndarray:
    """Palette indices (H, W) or (N, H, W) uint8 for uint8 RGB (H, W, 3) or (N, H, W, 3).

    Only indices of ``render.palette.indices_for(mode)`` appear. Every image of a batch is
    reduced independently: ``reduce(batch)[k]`` equals ``reduce(batch[k])`` bit for bit.
    Raises `DitherError` (a ValueError) naming a bad dtype, shape, mode or method.
    """
    arr, idx = _check_input(rgb, mode, method)
    if arr.size == 0:  # an empty batch
        return np.empty(arr.shape[:-1], dtype=np.uint8)
    batch = arr if arr.ndim == 4 else arr[None]
    batch = np.ascontiguousarray(batch)
    if method == "nearest":
        out = _nearest(batch, idx)
    elif method in ("bayer", "blue-noise"):
        out = _ordered(batch, idx, method)
    else:
        out = _diffuse(batch, idx, _KERNELS[method])
    return out if arr.ndim == 4 else out[0]


# ---------------------------------------------------------------------------------------------
# colour tables


def _palette(idx: tuple[int, ...]) -> np.ndarray:
    return PANEL_RGB[list(idx)].astype(np.int64)


def _ink_terms(idx: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """``Q p_k`` (k, 3) and ``p_k·Q p_k`` (k,) int64 for the inks `idx`, Q = `COLOUR_METRIC`:
    ``(x - p_k)·Q (x - p_k) = x·Q x - 2 x·Q p_k + p_k·Q p_k``, whose last two terms rank the
    inks for a pixel x. Every colour decision of this module is made from these terms."""
    p = _palette(idx)
    qp = p @ COLOUR_METRIC
    return qp, np.einsum("kc,kc->k", qp, p)


def _scores(rgb: np.ndarray, idx: tuple[int, ...]) -> np.ndarray:
    """(..., k) int64 squared distances x 16 under `COLOUR_METRIC`, minus a per-pixel term."""
    qp, const = _ink_terms(idx)
    scores: np.ndarray = const - 2 * (rgb.astype(np.int64) @ qp.T)
    return scores


def nearest_index(rgb: np.ndarray, mode: ColourMode) -> np.ndarray:
    """Exact nearest palette index for each colour of a (..., 3) uint8 array, without tables.

    The definition `reduce(..., "nearest")` is held to (an exact distance tie goes to the
    lower index); also handy to resolve a few single colours.
    """
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim < 1 or rgb.shape[-1] != 3:
        raise DitherError(f"rgb must be a uint8 array of shape (..., 3), got {getattr(rgb, 'shape', rgb)!r}")
    _, idx = _check_input(np.zeros((1, 1, 3), dtype=np.uint8), mode, "nearest")
    near: np.ndarray = np.asarray(idx, dtype=np.uint8)[np.argmin(_scores(rgb, idx), axis=-1)]
    return near


def _cell_index(batch: np.ndarray) -> np.ndarray:
    """Per pixel ``r>>2 | (g>>2)<<8 | (b>>2)<<16`` (uint32), read as unaligned 32-bit words.

    `batch` must be C-contiguous. The word of pixel k also holds the red byte of pixel k+1
    (masked off); the last pixel, whose word would run past the buffer, is done by hand.
    """
    flat = batch.reshape(-1)
    count = flat.size // 3
    key = np.empty(count, dtype=np.uint32)
    if count > 1:
        words = np.ndarray(shape=(count - 1,), dtype="<u4", buffer=flat, offset=0, strides=(3,))
        np.right_shift(words, 2, out=key[:-1])
    red, green, blue = (int(c) for c in flat[-3:])
    key[-1] = (red >> 2) | ((green >> 2) << 8) | ((blue >> 2) << 16)
    key &= 0x3F3F3F
    return key.reshape(batch.shape[:-1])


def _lut_positions() -> np.ndarray:
    c = np.arange(1 << _CELL_BITS, dtype=np.int64)
    return (c[:, None, None] | (c[None, :, None] << 8) | (c[None, None, :] << 16)).ravel()


def _argmin_linear(axes: tuple[np.ndarray, ...], idx: tuple[int, ...]) -> np.ndarray:
    """Nearest ink position on the grid ``axes[0] x axes[1] x axes[2]`` (separable scores)."""
    qp, const = _ink_terms(idx)
    r, g, b = (a.astype(np.int64) for a in axes)
    best: np.ndarray | None = None
    arg = np.zeros((len(r), len(g), len(b)), dtype=np.uint8)
    for k in range(len(idx)):
        score = (const[k] - 2 * qp[k, 0] * r)[:, None, None] - (2 * qp[k, 1] * g)[None, :, None]
        score = score - (2 * qp[k, 2] * b)[None, None, :]
        if best is None:
            best = score
        else:
            better = score < best
            arg[better] = k
            best = np.minimum(best, score)
    return arg


@cache
def _nearest_table(idx: tuple[int, ...]) -> np.ndarray:
    """uint8 table over 6-bit cells: the ink of cells wholly in one Voronoi cell, else 255."""
    cells = 1 << _CELL_BITS
    corners = np.stack([np.arange(cells) * 4, np.arange(cells) * 4 + 3], axis=1).ravel()  # (128,)
    near = _argmin_linear((corners, corners, corners), idx).reshape(cells, 2, cells, 2, cells, 2)
    lo = near.min(axis=(1, 3, 5))
    hi = near.max(axis=(1, 3, 5))
    value = np.where(lo == hi, np.asarray(idx, dtype=np.uint8)[lo], _AMBIGUOUS).astype(np.uint8)
    table = np.full(_LUT_SIZE, _AMBIGUOUS, dtype=np.uint8)
    table[_lut_positions()] = value.ravel()
    table.flags.writeable = False
    log.debug("built the nearest-ink table for inks %s", idx)
    return table


def _table_chunks(n: int, height: int, width: int) -> list[tuple[slice, slice]]:
    """(images, rows) slices of about `_TABLE_CHUNK_PIXELS` pixels: whole small images, or
    bands of rows of a big one, so the per-pixel temporaries of a table lookup stay cached."""
    per_image = height * width
    if per_image >= _TABLE_CHUNK_PIXELS:
        rows = max(1, _TABLE_CHUNK_PIXELS // width)
        return [(slice(k, k + 1), slice(r, r + rows)) for k in range(n) for r in range(0, height, rows)]
    step = _TABLE_CHUNK_PIXELS // per_image
    return [(slice(k, k + step), slice(0, height)) for k in range(0, n, step)]


def _nearest(batch: np.ndarray, idx: tuple[int, ...]) -> np.ndarray:
    n, height, width, _ = batch.shape
    table = _nearest_table(idx)
    out = np.empty((n, height, width), dtype=np.uint8)
    for images, rows in _table_chunks(n, height, width):
        part = batch[images, rows]
        q = np.take(table, _cell_index(part))
        hard = q == _AMBIGUOUS
        if hard.any():
            q[hard] = np.asarray(idx, dtype=np.uint8)[np.argmin(_scores(part[hard], idx), axis=-1)]
        out[images, rows] = q
    return out


# ---------------------------------------------------------------------------------------------
# ordered dithering


@cache
def _mix_table(idx: tuple[int, ...]) -> np.ndarray:
    """uint16 table over 6-bit cells: ``(i | j << 2) << 9 | a`` with a = 256 x fraction of j.

    The pair (i, j) is the one whose segment in colour space passes closest (under
    `COLOUR_METRIC`) to the cell centre; cells holding an exact ink colour mix nothing.
    """
    cells = 1 << _CELL_BITS
    centre = np.arange(cells, dtype=np.float64) * 4 + 1.5
    r, g, b = np.meshgrid(centre, centre, centre, indexing="ij")
    x = np.stack([r.ravel(), g.ravel(), b.ravel()], axis=1)
    q = COLOUR_METRIC.astype(np.float64)
    xq = x @ q
    x2 = np.einsum("nc,nc->n", xq, x)
    p = _palette(idx).astype(np.float64)
    best_d = np.full(len(x), np.inf)
    best_code = np.zeros(len(x), dtype=np.int64)
    best_a = np.zeros(len(x), dtype=np.float64)
    for a in range(len(idx)):
        pa = p[a]
        near_a = x2 - 2 * (xq @ pa) + pa @ q @ pa  # |x - p_a|^2
        for b_ in range(a, len(idx)):
            d = p[b_] - pa
            den = float(d @ q @ d)
            if den == 0:
                frac = np.zeros(len(x))
                dist = near_a
            else:
                u = xq @ d - pa @ q @ d  # (x - p_a) . Q d
                frac = np.clip(u / den, 0.0, 1.0)
                dist = near_a - 2 * frac * u + frac * frac * den  # |x - p_a - frac d|^2
            better = dist < best_d - 1e-9
            best_d = np.where(better, dist, best_d)
            best_a = np.where(better, frac, best_a)
            best_code = np.where(better, idx[a] | (idx[b_] << 2), best_code)
    alpha = np.rint(best_a * 256).astype(np.int64)
    entry = (best_code << 9) | alpha
    table = np.zeros(_LUT_SIZE, dtype=np.uint16)
    table[_lut_positions()] = entry
    for k in idx:  # an ink colour is shown as that ink, never mixed
        red, green, blue = (int(c) for c in PANEL_RGB[k])
        table[(red >> 2) | ((green >> 2) << 8) | ((blue >> 2) << 16)] = (k | (k << 2)) << 9
    table.flags.writeable = False
    log.debug("built the two-ink mixing table for inks %s", idx)
    return table


@lru_cache(maxsize=32)
def _threshold(method: str, height: int, width: int) -> np.ndarray:
    """(H, W) uint16 ``255 - t`` with t in 0..255 the mask threshold, tiled from (0, 0)."""
    mask = bayer_matrix(_BAYER_SIZE) if method == "bayer" else blue_noise_mask(_BLUE_NOISE_SIZE)
    m = mask.shape[0]
    t = (mask.astype(np.int64) * 256 + 128) // (m * m)  # rank -> 0..255, equal counts per level
    reps = (-(-height // m), -(-width // m))
    tiled = (255 - np.tile(t, reps)[:height, :width]).astype(np.uint16)
    tiled.flags.writeable = False
    return tiled


def _ordered(batch: np.ndarray, idx: tuple[int, ...], method: str) -> np.ndarray:
    n, height, width, _ = batch.shape
    table = _mix_table(idx)
    threshold = _threshold(method, height, width)
    out = np.empty((n, height, width), dtype=np.uint8)
    for images, rows in _table_chunks(n, height, width):
        part = np.take(table, _cell_index(batch[images, rows]))
        # low 9 bits: a + 255 - t, whose bit 8 is set exactly when t < a; above: the pair code
        part += threshold[rows]
        part >>= 8  # (i | j << 2) << 1 | chose_j
        shift = part & 1
        shift <<= 1
        part >>= 1
        np.right_shift(part, shift, out=part)  # i, or j when chosen
        part &= 3
        out[images, rows] = part
    return out


# ---------------------------------------------------------------------------------------------
# error diffusion


@cache
def _diffusion_scores(idx: tuple[int, ...]) -> tuple[tuple[int, int, int, int], ...]:
    """Integer ink scores for error diffusion: per ink of `idx`, ``(c_r, c_g, c_b, c_0)`` with
    ``score_k(x) = c_r r + c_g g + c_b b + c_0`` for a corrected pixel x = (r, g, b) in 0..255.

    ``score_k = 8 x·Q p_k - 4 p_k·Q p_k + index_k = 4 (x·Q x - (x - p_k)·Q (x - p_k)) + index_k``:
    the largest score is the nearest ink, and as the distance part is a multiple of 4, an
    exact tie goes to the higher index and ``max & 3`` is the chosen ink's palette index
    (two's complement keeps that true for negative scores). Both error-diffusion paths use
    this one definition: the numba kernel as is, the wavefront as `_diffusion_palette`.
    """
    qp, sq = _ink_terms(idx)
    coef = 8 * qp
    const = np.asarray(idx, dtype=np.int64) - 4 * sq
    bound = 255 * int(np.abs(coef).sum(axis=1).max()) + int(np.abs(const).max())
    if bound >= 1 << 31:
        raise RuntimeError(f"colour metric too wide for int32 scores (bound {bound})")
    return tuple((int(c[0]), int(c[1]), int(c[2]), int(c0)) for c, c0 in zip(coef, const))


@cache
def _diffusion_palette(idx: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Score matrix (k, 4) over RGB1 pixels, and the inks as complex128 (4,) rows of RGB1.

    The score of ink k at pixel x is ``shift + score_k(x) / 4`` with ``score_k`` from
    `_diffusion_scores`, that is ``shift + 2 x·Q p_k - p_k·Q p_k + index_k / 4``. For every pixel
    of the RGB cube ``shift`` puts every score in [2**21, 2**22), where float32 holds exactly
    the multiples of 1/4, and every partial sum of the matmul is a multiple of 1/4 below 2**22
    in magnitude: so the integer part is exact whatever order BLAS sums in, and the two lowest
    mantissa bits carry the ink index, read back by one max.
    """
    terms = np.asarray(_diffusion_scores(idx), dtype=np.int64)
    c = terms[:, :3] // 4  # 2 Q p_k, exactly
    const = terms[:, 3]
    lo = 255 * np.minimum(c, 0).sum(axis=1) + const // 4  # least score - shift, per ink
    hi = 255 * np.maximum(c, 0).sum(axis=1) + const // 4
    shift = _SCORE_LOW - int(lo.min())
    if shift + int(hi.max()) >= 1 << 22 or 255 * int(np.abs(c).sum(axis=1).max()) >= 1 << 22:
        raise RuntimeError(f"colour metric too wide for exact float32 scores (shift {shift})")
    score = np.concatenate([c, (shift + const / 4)[:, None]], axis=1).astype(np.float32)
    inks = np.ones((4, 4), dtype=np.float32)
    inks[:, :3] = PANEL_RGB
    score.flags.writeable = False
    return score, inks.view(np.complex128).ravel()


@cache
def _checked_taps(kernel: _DiffusionKernel) -> int:
    """log2 of the kernel's denominator, once the table is checked for what both paths assume:
    a power-of-two denominator, taps ahead in raster order and on a later wavefront step
    (``dj + 2 di >= 1``), weights summing to at most one (so an error share stays within
    255 in magnitude, well inside the float32 and packed-integer ranges)."""
    shift = kernel.denominator.bit_length() - 1
    if not 2 <= kernel.denominator <= 1 << 10 or kernel.denominator != 1 << shift:
        raise RuntimeError(f"kernel denominator must be a power of two in 2..1024, got {kernel.denominator}")
    for di, dj, w in kernel.taps:
        if di < 0 or (di == 0 and dj <= 0) or dj + 2 * di < 1 or w <= 0:
            raise RuntimeError(f"kernel tap {(di, dj, w)} is not ahead of its pixel on the wavefront")
    if sum(w for _, _, w in kernel.taps) > kernel.denominator:
        raise RuntimeError(f"kernel weights sum past one: {kernel}")
    return shift


def _diffuse(batch: np.ndarray, idx: tuple[int, ...], kernel: _DiffusionKernel) -> np.ndarray:
    """Error-diffuse a C-contiguous batch with the numba kernel, or else the numpy wavefront."""
    compiled = _numba_kernel(kernel) if _USE_NUMBA else None
    if compiled is not None:
        return _diffuse_numba(batch, idx, compiled)
    return _diffuse_wavefront(batch, idx, kernel)


# ---------------------------------------------------------------------------------------------
# error diffusion: the numba kernel

_LANE: Final = 21  # bits per colour channel of a packed error


def _raster_kernel(kernel: _DiffusionKernel) -> Callable[..., None]:
    """The plain-Python source of the compiled kernel for one diffusion table (see below).

    The table's taps, its denominator and the tables derived from them are closure constants,
    so numba unrolls the tap loop and folds the weights (1.2-1.5x faster than passing them
    in); numba's cache keys a closure on the values it captures. The ink scores come in as an
    argument, so a kernel serves every colour mode.

    Layout and arithmetic, all integer and so exactly the wavefront's float32 sums:

    - Errors are numerators over ``D = 2**shift``, the three channels packed in one int64 at
      21 bits a channel (a pixel's accumulated error lies in [-255 D, 255 D]). Sums of packed
      values are the packed sums, so each tap is one multiply-add whatever the channel count.
      Adding ``bias`` (255 D in every lane) makes every lane non-negative for the read-back.
    - ``lut[(pixel << shift) + lane + 255 D]`` is the corrected value: rounded half to even
      and clamped to 0..255 (one load instead of a dozen branch-free operations).
    - Rows go in pairs, the second two columns behind the first: each tap lands at least one
      wavefront step ahead (``dj + 2 di >= 1``, checked), so pixel (i + 1, j - 2) has all its
      error once pixel (i, j) is done, and the two independent dependency chains overlap in
      the processor. The error buffer is a ring of ``2 + rows below`` rows rounded up to a
      power of two (4 for both kernels), each ``W + columns left + columns right`` long.
    """
    shift = _checked_taps(kernel)
    taps = kernel.taps
    below = max(di for di, _, _ in taps)
    left = max(0, -min(dj for _, dj, _ in taps))
    right = max(0, max(dj for _, dj, _ in taps))
    ring = 1 << (1 + below).bit_length()  # a power of two >= 2 + below
    ring_mask = ring - 1
    lane_mask = (1 << _LANE) - 1
    span = 255 * kernel.denominator
    bias = span * (1 + (1 << _LANE) + (1 << 2 * _LANE))
    values = np.arange(-span, 2 * span + 1, dtype=np.int64)
    lut = np.clip((values + (kernel.denominator >> 1) - 1 + ((values >> shift) & 1)) >> shift, 0, 255)
    lut = lut.astype(np.uint8)
    inks = PANEL_RGB.astype(np.int64)
    packed_inks = inks[:, 0] + (inks[:, 1] << _LANE) + (inks[:, 2] << 2 * _LANE)
    skew = 2

    def diffuse(batch: np.ndarray, scores: tuple[tuple[int, int, int, int], ...], out: np.ndarray) -> None:
        """Error-diffuse `batch` (N, H, W, 3) uint8 into palette indices `out` (N, H, W) uint8;
        `scores` is `_diffusion_scores`, padded to four inks by repeating the first."""
        n, height, width = out.shape
        err = np.zeros((ring, width + left + right), dtype=np.int64)
        (a_r, a_g, a_b, a_0), (b_r, b_g, b_b, b_0), (c_r, c_g, c_b, c_0), (d_r, d_g, d_b, d_0) = scores

        def pixel(m: int, i: int, j: int) -> None:  # numba inlines it
            x = err[i & ring_mask, j + left] + bias
            r = np.int64(lut[(np.int64(batch[m, i, j, 0]) << shift) + (x & lane_mask)])
            g = np.int64(lut[(np.int64(batch[m, i, j, 1]) << shift) + ((x >> _LANE) & lane_mask)])
            b = np.int64(lut[(np.int64(batch[m, i, j, 2]) << shift) + (x >> (2 * _LANE))])
            top = max(
                max(a_r * r + a_g * g + a_b * b + a_0, b_r * r + b_g * g + b_b * b + b_0),
                max(c_r * r + c_g * g + c_b * b + c_0, d_r * r + d_g * g + d_b * b + d_0),
            )
            ink = top & 3
            out[m, i, j] = ink
            e = r + (g << _LANE) + (b << (2 * _LANE)) - packed_inks[ink]
            for di, dj, w in taps:
                err[(i + di) & ring_mask, j + left + dj] += w * e

        for m in range(n):
            err[:] = 0
            for i in range(0, height - 1, 2):
                for j in range(min(skew, width)):
                    pixel(m, i, j)
                for j in range(skew, width):
                    pixel(m, i, j)
                    pixel(m, i + 1, j - skew)
                for j in range(max(0, width - skew), width):
                    pixel(m, i + 1, j)
                err[i & ring_mask] = 0
                err[(i + 1) & ring_mask] = 0
            if height % 2:
                for j in range(width):
                    pixel(m, height - 1, j)

    return diffuse


def _import_numba() -> ModuleType | None:
    try:
        return importlib.import_module("numba")
    except ImportError as exc:
        log.info("numba does not import (%s): error diffusion runs on the numpy wavefront", exc)
        return None


@cache
def _numba_kernel(kernel: _DiffusionKernel) -> Callable[..., None] | None:
    """`_raster_kernel` compiled by numba (nogil, one core), or None when numba does not import.

    numba is imported here, on the first error diffusion, not with the module: it costs a
    quarter of a second that nothing else needs. Machine code is compiled on the first call
    (1-2 s) and cached in ``render/__pycache__``, or numba's user cache directory when that is
    not writable (``NUMBA_CACHE_DIR`` overrides both), so later processes load it in
    milliseconds. With nowhere to cache at all, it is compiled in every process.
    """
    numba = _import_numba()
    if numba is None:
        return None
    source = _raster_kernel(kernel)
    try:
        compiled: Callable[..., None] = numba.njit(cache=True, nogil=True)(source)
    except RuntimeError as exc:  # numba found no writable cache directory
        log.warning("error-diffusion kernel not cached on disk (%s): compiling it in this process", exc)
        compiled = numba.njit(nogil=True)(source)
    return compiled


@cache
def _padded_scores(idx: tuple[int, ...]) -> tuple[tuple[int, int, int, int], ...]:
    scores = _diffusion_scores(idx)
    return scores + (scores[0],) * (4 - len(scores))  # a repeated ink never changes the max


def _diffuse_numba(batch: np.ndarray, idx: tuple[int, ...], compiled: Callable[..., None]) -> np.ndarray:
    n, height, width, _ = batch.shape
    out = np.empty((n, height, width), dtype=np.uint8)
    pixels = np.ascontiguousarray(batch).view()
    pixels.flags.writeable = False  # one compiled signature whether or not the caller's is
    compiled(pixels, _padded_scores(idx), out)
    return out


# ---------------------------------------------------------------------------------------------
# error diffusion: the numpy wavefront (fallback)


def _wavefront_spans(kernel: _DiffusionKernel) -> tuple[list[tuple[int, int, int, int]], np.ndarray]:
    """The taps as spans of consecutive steps ``s = j + 2i`` per row offset: (row offset, first
    step offset, last + 1, first weight) and the (float32) weights they index, gaps as 0."""
    _checked_taps(kernel)  # the same checks as the numba path
    spans: list[tuple[int, int, int, int]] = []
    weights: list[float] = []
    for di in sorted({di for di, _, _ in kernel.taps}):
        by_step = {dj + 2 * di: w for tdi, dj, w in kernel.taps if tdi == di}
        s0, s1 = min(by_step), max(by_step) + 1
        spans.append((di, s0, s1, len(weights)))
        weights += [by_step.get(s, 0) / kernel.denominator for s in range(s0, s1)]
    return spans, np.asarray(weights, dtype=np.float32).reshape(-1, 1, 1, 1)


def _diffuse_wavefront(batch: np.ndarray, idx: tuple[int, ...], kernel: _DiffusionKernel) -> np.ndarray:
    n, height, width, _ = batch.shape
    out = np.empty((n, height, width), dtype=np.uint8)
    step = max(1, _ED_CHUNK_PIXELS // (height * width))
    for start in range(0, n, step):
        out[start:start + step] = _diffuse_chunk(batch[start:start + step], idx, kernel)
    return out


def _diffuse_chunk(batch: np.ndarray, idx: tuple[int, ...], kernel: _DiffusionKernel) -> np.ndarray:
    """Error-diffuse a batch along anti-diagonals ``s = j + 2i`` (see the module doc).

    Layout: pixels as (row, column, image, RGB1) uint8 in a padded buffer. A ring of
    ``2 * _BLOCK`` step slots, each (row, image, RGB1) float32, holds for each coming step its
    pixels plus the error pushed to them so far: one `_BLOCK` ahead, the pixels of the next
    block of steps are copied in skewed (slot s, row i = pixel (i, s - 2i)), so that one step's
    pixels (rows lo..hi, every image) are one contiguous slab. Kernels reach fewer than
    `_BLOCK` steps ahead, so a block's slots get no error before their pixels are copied in.
    The constant fourth channel carries the score offsets through the single matmul that
    scores all inks; the chosen inks go to a skewed output, un-skewed at the end.
    """
    n, height, width, _ = batch.shape
    px = n * 4  # bytes per (row, column)
    pad = _BLOCK * px
    xbuf = np.empty(height * width * px + 2 * pad, dtype=np.uint8)
    x = xbuf[pad:pad + height * width * px].reshape(height, width, n, 4)
    x[..., 3] = 1
    x[..., :3] = batch.transpose(1, 2, 0, 3)
    steps = width + 2 * (height - 1)
    skew_out = np.empty((steps, height, n), dtype=np.uint8)

    score, inks = _diffusion_palette(idx)
    spans, weights = _wavefront_spans(kernel)  # (row offset, first slot, last slot + 1, first weight)
    reach = max(s1 - 1 for _, _, s1, _ in spans)
    below = max(di for di, _, _, _ in spans)
    if reach >= _BLOCK:
        raise RuntimeError(f"kernel reaches {reach} steps ahead; the ring allows {_BLOCK - 1}")
    ring = 2 * _BLOCK
    acc = np.zeros((ring, height + below, n, 4), dtype=np.float32)

    def load(block: int) -> None:
        """Copy the pixels of steps block*_BLOCK ... into their ring slots (rows r0..r1)."""
        s = block * _BLOCK
        r0 = max(0, (s - width + 2) // 2)
        r1 = min(height, (s + _BLOCK - 1) // 2 + 1)
        if s >= steps or r1 <= r0:
            return
        # columns s + g - 2i lie in [-(_BLOCK - 1), width + _BLOCK - 2]: inside the padding
        origin = xbuf[pad + (r0 * width + s - 2 * r0) * px:]
        view = as_strided(origin, shape=(_BLOCK, r1 - r0, n, 4), strides=(px, (width - 2) * px, 4, 1))
        half = (block % 2) * _BLOCK
        np.copyto(acc[half:half + _BLOCK, r0:r1], view)

    zero, top = np.float32(0), np.float32(255)
    load(0)
    for s in range(steps):
        if s % _BLOCK == 0:
            load(s // _BLOCK + 1)
        lo = max(0, (s - width + 2) // 2)
        hi = min(height, s // 2 + 1)
        if lo >= hi:
            continue
        p = s % ring
        v = acc[p, lo:hi]
        np.rint(v, out=v)
        np.clip(v, zero, top, out=v)
        flat = v.reshape(-1, 4)
        q = (score @ flat.T).view(np.int32).max(axis=0)  # positive floats order as their bits
        q &= 3
        flat -= inks.take(q).view(np.float32).reshape(-1, 4)  # v is now the error
        share = weights * v
        for di, s0, s1, w0 in spans:
            if p + s1 <= ring:
                acc[p + s0:p + s1, lo + di:hi + di] += share[w0:w0 + s1 - s0]
            else:  # the span wraps around the ring
                for k in range(s1 - s0):
                    acc[(p + s0 + k) % ring, lo + di:hi + di] += share[w0 + k]
        skew_out[s, lo:hi] = q.reshape(hi - lo, n)
    so = skew_out.strides
    res = as_strided(skew_out, shape=(n, height, width), strides=(so[2], 2 * so[0] + so[1], so[0]))
    return res.copy()
