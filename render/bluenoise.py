"""Threshold masks for ordered dithering: Bayer matrices and a void-and-cluster blue-noise mask.

Both are computed here, deterministically, never loaded from a data file. A mask is an
``(m, m)`` array of distinct ranks ``0 .. m*m-1``; ordered dithering turns a rank into a
threshold, so a flat tone ``f`` lights exactly ``round(f * m * m)`` cells of every tile.

The blue-noise mask follows Ulichney's void-and-cluster method ("The void-and-cluster method
for dither array generation", 1993) on a torus with a Gaussian energy filter. Computing the
64x64 mask takes well under a second and happens once per process (``functools.cache``).
"""

from __future__ import annotations

from functools import cache

import numpy as np

__all__ = ["MaskError", "bayer_matrix", "blue_noise_mask"]


class MaskError(ValueError):
    """A mask size or parameter that cannot produce a threshold mask."""


@cache
def bayer_matrix(size: int = 16) -> np.ndarray:
    """The ``size`` x ``size`` Bayer index matrix (ranks 0 .. size²-1), ``size`` a power of two.

    Built by the usual recursion ``M(2n) = [[4M, 4M+2], [4M+3, 4M+1]]``. The result is
    read-only (it is cached and shared).
    """
    if not isinstance(size, int) or size < 2 or size & (size - 1):
        raise MaskError(f"Bayer matrix size must be a power of two >= 2, got {size!r}")
    m = np.zeros((1, 1), dtype=np.int64)
    while m.shape[0] < size:
        m = np.block([[4 * m, 4 * m + 2], [4 * m + 3, 4 * m + 1]])
    out = m.astype(np.int32)
    out.flags.writeable = False
    return out


def _gaussian_torus(size: int, sigma: float) -> np.ndarray:
    """A (2*size, 2*size) tiling of the toroidal Gaussian centred on (0, 0).

    A window ``[size - y : 2*size - y, size - x : 2*size - x]`` of it is the filter centred on
    (y, x), so an energy update is one slice-add instead of a roll.
    """
    d = np.minimum(np.arange(size), size - np.arange(size)).astype(np.float64)
    g1 = np.exp(-(d * d) / (2.0 * sigma * sigma))
    g = np.outer(g1, g1)
    return np.tile(g, (2, 2))


@cache
def blue_noise_mask(size: int = 64, sigma: float = 1.5, seed: int = 0x5EED) -> np.ndarray:
    """A ``size`` x ``size`` blue-noise rank mask made by void-and-cluster (deterministic).

    The result is read-only (it is cached and shared). Phase 3 of the method (ranking the
    second half by the tightest cluster of zeros) is the same as picking the largest void of
    ones, because the two energies sum to a constant on the torus, so one loop serves both.
    """
    if not isinstance(size, int) or not 4 <= size <= 256:
        raise MaskError(f"blue-noise mask size must be an integer in 4..256, got {size!r}")
    if not sigma > 0:
        raise MaskError(f"blue-noise sigma must be > 0, got {sigma!r}")
    n = size * size
    g = _gaussian_torus(size, sigma)

    def window(flat: int) -> np.ndarray:
        y, x = divmod(flat, size)
        return g[size - y:2 * size - y, size - x:2 * size - x]

    rng = np.random.default_rng(seed)
    ones = np.zeros((size, size), dtype=bool)
    ones.flat[rng.choice(n, size=max(1, n // 10), replace=False)] = True
    energy = np.zeros((size, size), dtype=np.float64)
    for flat in np.flatnonzero(ones):
        energy += window(int(flat))

    def tightest_cluster(pattern: np.ndarray, e: np.ndarray) -> int:
        return int(np.argmax(np.where(pattern, e, -np.inf)))

    def largest_void(pattern: np.ndarray, e: np.ndarray) -> int:
        return int(np.argmin(np.where(pattern, np.inf, e)))

    # Phase 0: move points from clusters to voids until the pattern is stable.
    for _ in range(4 * n):
        c = tightest_cluster(ones, energy)
        ones.flat[c] = False
        energy -= window(c)
        v = largest_void(ones, energy)
        ones.flat[v] = True
        energy += window(v)
        if v == c:
            break

    rank = np.empty(n, dtype=np.int32)
    initial, initial_energy = ones.copy(), energy.copy()
    count = int(ones.sum())
    # Phase 1: rank the initial points by removing the tightest cluster each time.
    pattern, e = initial.copy(), initial_energy.copy()
    for r in range(count - 1, -1, -1):
        c = tightest_cluster(pattern, e)
        pattern.flat[c] = False
        e -= window(c)
        rank[c] = r
    # Phases 2 and 3: fill the largest void each time.
    pattern, e = initial, initial_energy
    for r in range(count, n):
        v = largest_void(pattern, e)
        pattern.flat[v] = True
        e += window(v)
        rank[v] = r
    out = rank.reshape(size, size)
    out.flags.writeable = False
    return out
