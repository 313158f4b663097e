"""render.dither and render.bluenoise: inks only, tone kept, flat ink untouched, batch = single."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import render.dither as dither
from firmware_proto.models import ColourMode
from render.bluenoise import MaskError, bayer_matrix, blue_noise_mask
from render.dither import COLOUR_METRIC, METHODS, DitherError, nearest_index, reduce
from render.layout import Dither
from render.palette import PANEL_RGB, indices_for

MODES: tuple[ColourMode, ...] = ("bw", "bwr", "bwry")
ORDERED: tuple[Dither, ...] = ("bayer", "blue-noise")


def photo(seed: int, height: int, width: int) -> np.ndarray:
    """Smooth gradients, noise and a few shapes: enough to exercise every ink."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    base = np.stack([x / max(width, 1), y / max(height, 1), (x + y) / max(width + height, 1)], axis=-1) * 255
    img = base[..., rng.permutation(3)] + rng.normal(0, 25, (height, width, 3))
    img[height // 4: height // 2, width // 4: width // 2] = rng.integers(0, 256, 3)
    return np.clip(img, 0, 255).astype(np.uint8)


def black_white_fraction(grey: int) -> float:
    """Where a grey lies on the black→white segment under the colour metric (0 black, 1 white)."""
    q = COLOUR_METRIC.astype(np.float64)
    b, w = PANEL_RGB[0].astype(np.float64), PANEL_RGB[1].astype(np.float64)
    x = np.full(3, float(grey))
    return float((x - b) @ q @ (w - b) / ((w - b) @ q @ (w - b)))


images = arrays(
    np.uint8,
    st.tuples(st.integers(1, 9), st.integers(1, 11), st.just(3)),
    elements=st.integers(0, 255),
)


@pytest.mark.parametrize("method", METHODS)
@settings(max_examples=25, deadline=None)
@given(image=images, mode=st.sampled_from(MODES))
def test_output_only_has_the_modes_inks(method: Dither, image: np.ndarray, mode: ColourMode) -> None:
    out = reduce(image, mode, method)
    assert out.dtype == np.uint8 and out.shape == image.shape[:2]
    assert set(np.unique(out).tolist()) <= set(indices_for(mode))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("mode", MODES)
def test_photo_uses_only_inks_and_several_of_them(method: Dither, mode: ColourMode) -> None:
    out = reduce(photo(3, 48, 64), mode, method)
    used = set(np.unique(out).tolist())
    assert used <= set(indices_for(mode)) and len(used) >= 2


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("mode", MODES)
def test_flat_ink_stays_exactly_that_ink(method: Dither, mode: ColourMode) -> None:
    for ink in indices_for(mode):
        flat = np.broadcast_to(PANEL_RGB[ink], (37, 53, 3)).copy()
        assert (reduce(flat, mode, method) == ink).all(), (mode, method, ink)


@pytest.mark.parametrize("method", METHODS)
def test_flat_artwork_with_edges_is_not_dithered(method: Dither) -> None:
    """Text-like artwork drawn in inks keeps every pixel: no noise next to edges either."""
    art = np.ones((40, 60), dtype=np.uint8)
    art[5:15, 3:50] = 0
    art[20:22, :] = 3
    art[25:38, 40:58] = 2
    rgb = PANEL_RGB[art]
    assert (reduce(rgb, "bwry", method) == art).all()


@pytest.mark.parametrize("grey", [64, 128, 192])
@pytest.mark.parametrize("mode", MODES)
def test_floyd_steinberg_keeps_mean_grey(grey: int, mode: ColourMode) -> None:
    img = np.full((64, 96, 3), grey, dtype=np.uint8)
    out = reduce(img, mode, "floyd-steinberg")
    mean = PANEL_RGB[out].reshape(-1, 3).mean(axis=0)
    assert np.abs(mean - grey).max() < 0.03 * 255, mean
    if mode == "bw":
        assert abs((out == 1).mean() - black_white_fraction(grey)) < 0.01


def test_atkinson_keeps_mid_grey() -> None:
    # Atkinson passes on only 6/8 of the error by design: midtones hold, extremes saturate.
    out = reduce(np.full((64, 96, 3), 128, dtype=np.uint8), "bw", "atkinson")
    assert abs((out == 1).mean() - black_white_fraction(128)) < 0.03


@pytest.mark.parametrize("method", ORDERED)
@pytest.mark.parametrize("grey", [40, 100, 128, 200])
def test_ordered_grey_density(method: Dither, grey: int) -> None:
    img = np.full((128, 128, 3), grey, dtype=np.uint8)  # whole tiles of both masks
    out = reduce(img, "bw", method)
    # the colour table is computed at 6-bit cell centres: within 2 levels of 226
    assert abs((out == 1).mean() - black_white_fraction(grey)) < 0.015
    on_bwry = reduce(img, "bwry", method)
    assert set(np.unique(on_bwry).tolist()) <= {0, 1}  # a grey mixes black and white only


def test_ordered_bayer_pattern_is_the_mask() -> None:
    img = np.full((16, 16, 3), 128, dtype=np.uint8)
    out = reduce(img, "bw", "bayer")
    mask = bayer_matrix(16)
    white = out == 1
    # the lit cells are exactly the lowest ranks of the Bayer matrix
    assert mask[white].max() < mask[~white].min()


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("mode", MODES)
def test_batch_equals_single(method: Dither, mode: ColourMode) -> None:
    batch = np.stack([photo(seed, 23, 31) for seed in range(4)])
    out = reduce(batch, mode, method)
    assert out.shape == (4, 23, 31)
    for k in range(4):
        assert (out[k] == reduce(batch[k], mode, method)).all()


def test_batch_equals_single_across_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """The numpy wavefront splits big batches into chunks; the result must not depend on it."""
    batch = np.stack([photo(seed, 17, 29) for seed in range(5)])
    whole = reduce(batch, "bwry", "floyd-steinberg")
    monkeypatch.setattr(dither, "_USE_NUMBA", False)
    assert (reduce(batch, "bwry", "floyd-steinberg") == whole).all()
    monkeypatch.setattr(dither, "_ED_CHUNK_PIXELS", 17 * 29 * 2)
    assert (reduce(batch, "bwry", "floyd-steinberg") == whole).all()


@pytest.mark.parametrize("method", METHODS)
def test_empty_batch(method: Dither) -> None:
    out = reduce(np.zeros((0, 5, 7, 3), dtype=np.uint8), "bwry", method)
    assert out.shape == (0, 5, 7) and out.dtype == np.uint8


@pytest.mark.parametrize("method", METHODS)
def test_deterministic_and_input_untouched(method: Dither) -> None:
    img = photo(5, 30, 40)
    copy = img.copy()
    first = reduce(img, "bwry", method)
    assert (reduce(img, "bwry", method) == first).all()
    assert (img == copy).all()


def test_non_contiguous_input() -> None:
    img = photo(6, 40, 60)
    view = img[::2, ::3]
    for method in METHODS:
        assert (reduce(view, "bwry", method) == reduce(view.copy(), "bwry", method)).all()


@settings(max_examples=40, deadline=None)
@given(image=images, mode=st.sampled_from(MODES))
def test_nearest_is_exact_nearest(image: np.ndarray, mode: ColourMode) -> None:
    inks: np.ndarray = np.array(indices_for(mode))
    p = PANEL_RGB[inks].astype(np.int64)
    d = image.astype(np.int64)[..., None, :] - p
    dist = np.einsum("...kc,cd,...kd->...k", d, COLOUR_METRIC, d)
    got = reduce(image, mode, "nearest")
    got_pos = np.searchsorted(inks, got)
    # equal to the brute force up to exact ties
    assert (np.take_along_axis(dist, got_pos[..., None], -1)[..., 0] == dist.min(-1)).all()
    assert (nearest_index(image, mode) == got).all()


def test_nearest_matches_exact_on_every_table_boundary_colour() -> None:
    rng = np.random.default_rng(9)
    colours = rng.integers(0, 256, (20000, 1, 3), dtype=np.uint8)
    assert (reduce(colours, "bwry", "nearest") == nearest_index(colours, "bwry")).all()


def test_saturated_colours_go_to_the_obvious_ink() -> None:
    swatch = np.array([[[255, 0, 0], [255, 230, 0], [0, 0, 0], [255, 255, 255]]], dtype=np.uint8)
    assert reduce(swatch, "bwry", "nearest").tolist() == [[3, 2, 0, 1]]
    assert reduce(swatch, "bwr", "nearest").tolist()[0][0] == 3


@pytest.mark.parametrize(
    ("rgb", "mode", "method", "match"),
    [
        (np.zeros((4, 4, 3), dtype=np.float32), "bwry", "nearest", "float32"),
        (np.zeros((4, 4), dtype=np.uint8), "bwry", "nearest", r"\(4, 4\)"),
        (np.zeros((4, 4, 4), dtype=np.uint8), "bwry", "bayer", r"\(4, 4, 4\)"),
        (np.zeros((0, 4, 3), dtype=np.uint8), "bwry", "bayer", r"\(0, 4, 3\)"),
        (np.zeros((1, 2, 4, 4, 3), dtype=np.uint8), "bwry", "atkinson", "shape"),
        (np.zeros((4, 4, 3), dtype=np.uint8), "rgb", "nearest", "'rgb'"),
        (np.zeros((4, 4, 3), dtype=np.uint8), "bwry", "jarvis", "'jarvis'"),
        ([[[0, 0, 0]]], "bwry", "nearest", "list"),
    ],
)
def test_bad_input(rgb: object, mode: str, method: str, match: str) -> None:
    with pytest.raises(DitherError, match=match):
        reduce(rgb, mode, method)  # type: ignore[arg-type]
    assert issubclass(DitherError, ValueError)


def test_masks_are_rank_permutations_and_deterministic() -> None:
    for mask in (bayer_matrix(8), bayer_matrix(16), blue_noise_mask(64)):
        n = mask.size
        assert sorted(mask.ravel().tolist()) == list(range(n))
    blue_noise_mask.cache_clear()
    again = blue_noise_mask(64)
    assert (again == blue_noise_mask(32 * 2)).all()
    assert (blue_noise_mask(16) == blue_noise_mask(16)).all()


def test_blue_noise_has_little_low_frequency_energy() -> None:
    mask = blue_noise_mask(64)
    for level in (0.1, 0.5):
        pattern = (mask < level * mask.size).astype(np.float64)
        spectrum = np.abs(np.fft.fft2(pattern - pattern.mean())) ** 2
        low = spectrum[:3, :3].sum() + spectrum[-2:, :3].sum() + spectrum[:3, -2:].sum() + spectrum[-2:, -2:].sum()
        # white noise puts about 24/4096 (0.6%) of its energy in these 24 lowest bins
        assert low < 0.001 * spectrum.sum()


def test_bad_mask_parameters() -> None:
    with pytest.raises(MaskError, match="12"):
        bayer_matrix(12)
    with pytest.raises(MaskError, match="3"):
        blue_noise_mask(3)
    with pytest.raises(MaskError, match="sigma"):
        blue_noise_mask(16, sigma=0.0)


REFERENCE_KERNELS: dict[str, list[tuple[int, int, float]]] = {
    "floyd-steinberg": [(0, 1, 7 / 16), (1, -1, 3 / 16), (1, 0, 5 / 16), (1, 1, 1 / 16)],
    "atkinson": [(0, 1, 1 / 8), (0, 2, 1 / 8), (1, -1, 1 / 8), (1, 0, 1 / 8), (1, 1, 1 / 8), (2, 0, 1 / 8)],
}


def reference_diffusion(image: np.ndarray, mode: ColourMode, method: str) -> np.ndarray:
    """Textbook raster-order error diffusion, one pixel at a time, in exact arithmetic.

    Same rules as promised by render.dither: corrected value rounded half-to-even and clamped
    to 0..255, nearest ink under COLOUR_METRIC, exact ties going to the higher index.
    """
    height, width, _ = image.shape
    inks = indices_for(mode)
    p = [tuple(int(c) for c in PANEL_RGB[k]) for k in inks]
    q = COLOUR_METRIC.tolist()
    acc = [[[0.0, 0.0, 0.0] for _ in range(width)] for _ in range(height)]
    out = np.zeros((height, width), dtype=np.uint8)
    for i in range(height):
        for j in range(width):
            v = [min(255, max(0, round(int(image[i, j, c]) + acc[i][j][c]))) for c in range(3)]
            best = None
            for pos, ink in enumerate(inks):
                d = [v[c] - p[pos][c] for c in range(3)]
                dist = sum(d[a] * q[a][b] * d[b] for a in range(3) for b in range(3))
                key = (-dist, ink)
                if best is None or key > best[0]:
                    best = (key, pos)
            assert best is not None
            pos = best[1]
            out[i, j] = inks[pos]
            err = [v[c] - p[pos][c] for c in range(3)]
            for di, dj, w in REFERENCE_KERNELS[method]:
                if 0 <= i + di < height and 0 <= j + dj < width:
                    for c in range(3):
                        acc[i + di][j + dj][c] += w * err[c]
    return out


DIFFUSION: tuple[Dither, ...] = ("floyd-steinberg", "atkinson")
BACKENDS = ("numba", "numpy")


def diffuse(batch: np.ndarray, mode: ColourMode, method: Dither, backend: str) -> np.ndarray:
    """Error diffusion of a (N, H, W, 3) batch by one named implementation of render.dither."""
    kernel = dither._KERNELS[method]
    if backend == "numpy":
        return dither._diffuse_wavefront(batch, indices_for(mode), kernel)
    compiled = dither._numba_kernel(kernel)
    if compiled is None:
        pytest.skip("numba does not import here")
    return dither._diffuse_numba(batch, indices_for(mode), compiled)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("method", DIFFUSION)
@settings(max_examples=20, deadline=None)
@given(image=images, mode=st.sampled_from(MODES))
def test_diffusion_equals_raster_order_reference(backend: str, method: Dither, image: np.ndarray, mode: ColourMode) -> None:
    got = diffuse(image[None], mode, method, backend)[0]
    assert (got == reference_diffusion(image, mode, method)).all()


@pytest.mark.parametrize("backend", [*BACKENDS, "reduce"])
@pytest.mark.parametrize("method", DIFFUSION)
def test_diffusion_equals_reference_on_a_photo(backend: str, method: Dither) -> None:
    img = photo(11, 21, 34)
    got = reduce(img, "bwry", method) if backend == "reduce" else diffuse(img[None], "bwry", method, backend)[0]
    assert (got == reference_diffusion(img, "bwry", method)).all()


# pixel values at the ends of the range and at mid-grey make clamping and exact ties likely
batches = arrays(
    np.uint8,
    st.tuples(st.integers(1, 3), st.integers(1, 12), st.integers(1, 14), st.just(3)),
    elements=st.one_of(st.integers(0, 255), st.sampled_from([0, 1, 127, 128, 254, 255])),
)


@pytest.mark.parametrize("method", DIFFUSION)
@settings(max_examples=60, deadline=None)
@given(batch=batches, mode=st.sampled_from(MODES))
def test_numba_kernel_equals_numpy_wavefront(method: Dither, batch: np.ndarray, mode: ColourMode) -> None:
    assert (diffuse(batch, mode, method, "numba") == diffuse(batch, mode, method, "numpy")).all()


@pytest.mark.parametrize("method", DIFFUSION)
@pytest.mark.parametrize("mode", MODES)
def test_numba_kernel_equals_numpy_wavefront_on_photos(method: Dither, mode: ColourMode) -> None:
    """Odd and even heights, widths below and above the kernel's two-column skew."""
    for height, width in ((61, 97), (2, 2), (3, 1), (1, 40), (40, 3)):
        batch = np.stack([photo(seed, height, width) for seed in range(3)])
        assert (diffuse(batch, mode, method, "numba") == diffuse(batch, mode, method, "numpy")).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("method", DIFFUSION)
def test_diffusion_batch_equals_single(backend: str, method: Dither) -> None:
    batch = np.stack([photo(seed, 19, 27) for seed in range(4)])
    whole = diffuse(batch, "bwry", method, backend)
    for k in range(4):
        assert (whole[k] == diffuse(batch[k:k + 1], "bwry", method, backend)[0]).all()


def test_reduce_runs_the_numba_kernel_when_numba_imports() -> None:
    pytest.importorskip("numba")
    img = photo(12, 30, 41)
    for method in DIFFUSION:
        assert dither._numba_kernel(dither._KERNELS[method]) is not None
        assert (reduce(img, "bwr", method) == diffuse(img[None], "bwr", method, "numba")[0]).all()


def test_without_numba_reduce_falls_back_to_the_wavefront(monkeypatch: pytest.MonkeyPatch) -> None:
    img = photo(13, 9, 14)
    monkeypatch.setitem(sys.modules, "numba", None)  # `import numba` now raises ImportError
    dither._numba_kernel.cache_clear()
    try:
        assert dither._numba_kernel(dither._KERNELS["atkinson"]) is None
        assert (reduce(img, "bwry", "atkinson") == reference_diffusion(img, "bwry", "atkinson")).all()
    finally:
        dither._numba_kernel.cache_clear()


@pytest.mark.parametrize(
    ("denominator", "taps", "match"),
    [
        (12, ((0, 1, 12),), "power of two"),
        (16, ((0, 1, 7), (1, -2, 9)), "wavefront"),  # (i + 1, j - 2) is on the same step
        (16, ((0, 0, 16),), "wavefront"),
        (8, ((0, 1, 8), (1, 0, 1)), "sum"),
    ],
)
def test_kernel_tables_the_implementations_cannot_run_are_refused(
    denominator: int, taps: tuple[tuple[int, int, int], ...], match: str
) -> None:
    kernel = dither._DiffusionKernel(denominator, taps)
    with pytest.raises(RuntimeError, match=match):
        dither._checked_taps(kernel)
    with pytest.raises(RuntimeError, match=match):
        dither._diffuse_wavefront(np.zeros((1, 4, 4, 3), dtype=np.uint8), (0, 1), kernel)
