"""Dithering benchmark: `render.dither.reduce` against Pillow's C quantizer, in the same run.

    python -m benchmarks.dither [--repeat 3]

For 296x128, 400x300 and 800x480 photo-like pictures (seeded gradients, noise and shapes)
and batches of 1 and 16, megapixels per second of every method of `render.dither.reduce` to
the four BWRY inks, and of Pillow's ``Image.quantize(palette=..., dither=FLOYDSTEINBERG)``
and ``dither=NONE`` to the same four colours (one image after another; Pillow has no batch).
Error diffusion is measured twice: ``floyd-steinberg`` and ``atkinson`` as `reduce` runs them
(the numba kernel when numba imports), and ``floyd-steinberg-numpy`` / ``atkinson-numpy``
with the numpy wavefront that `reduce` falls back to without numba (same indices, bit for bit).
``vs_pillow_fs`` is each row's throughput over Pillow Floyd–Steinberg's at the same size.
Each figure is the best of ``repeat`` timed runs after one warm-up run (which also builds
the cached colour tables and masks and compiles or loads the numba kernel). A table goes to
stdout, then one JSON line, which also names the backend `reduce` diffused with.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image

import render.dither as render_dither
from render.dither import METHODS, reduce
from render.layout import Dither
from render.palette import PANEL_RGB

__all__ = ["SIZES", "BATCHES", "photo_like", "run", "summary", "main"]

SIZES: tuple[tuple[int, int], ...] = ((296, 128), (400, 300), (800, 480))  # (width, height)
BATCHES: tuple[int, ...] = (1, 16)
NUMPY_SUFFIX = "-numpy"  # error diffusion forced onto the numpy wavefront
DIFFUSION: tuple[Dither, ...] = ("floyd-steinberg", "atkinson")


def photo_like(seed: int, width: int, height: int) -> np.ndarray:
    """A seeded (height, width, 3) uint8 picture: smooth colour gradients, noise, shapes."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    u, v = x / width, y / height
    img = np.stack(
        [
            128 + 110 * np.sin(2.0 * np.pi * (u * rng.uniform(0.5, 1.5) + rng.uniform())),
            128 + 110 * np.cos(2.0 * np.pi * (v * rng.uniform(0.5, 1.5) + rng.uniform())),
            255 * (u + v) / 2,
        ],
        axis=-1,
    )
    for _ in range(6):  # discs and boxes of flat-ish colour
        cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(0.05, 0.25) * height
        colour = rng.uniform(0, 255, 3).astype(np.float32)
        if rng.random() < 0.5:
            img[(x - cx) ** 2 + (y - cy) ** 2 < r * r] = colour
        else:
            img[(abs(x - cx) < r) & (abs(y - cy) < r / 2)] = colour
    img += rng.normal(0, 12, img.shape).astype(np.float32)
    out: np.ndarray = np.clip(img, 0, 255).astype(np.uint8)
    return out


def _pillow_palette() -> Image.Image:
    pal = Image.new("P", (1, 1))
    pal.putpalette(PANEL_RGB.ravel().tolist())
    return pal


def _best(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm-up: caches, tables, allocator
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def run(repeat: int = 3) -> list[dict[str, Any]]:
    """Measure every method and the Pillow baselines; one dict per (size, batch, method).

    Keys: ``size`` ("WxH"), ``batch``, ``method`` (ours, or "pillow-fs" / "pillow-none"),
    ``mpx_s`` (megapixels a second), ``ms_per_image`` and ``vs_pillow_fs`` (ratio of
    throughput to Pillow Floyd–Steinberg at the same size).
    """
    palette = _pillow_palette()
    rows: list[dict[str, Any]] = []
    for width, height in SIZES:
        images = np.stack([photo_like(seed, width, height) for seed in range(max(BATCHES))])
        pil_images = [Image.fromarray(img) for img in images]
        mpx = width * height / 1e6

        def pillow(dither: Image.Dither) -> Callable[[], object]:
            return lambda: [im.quantize(palette=palette, dither=dither) for im in pil_images]

        baselines = (("pillow-fs", Image.Dither.FLOYDSTEINBERG), ("pillow-none", Image.Dither.NONE))
        ours: list[tuple[int, str, float]] = []
        baseline = {name: float("inf") for name, _ in baselines}
        for batch in BATCHES:
            # the baseline is measured next to every batch size and its best kept, so a burst
            # of load from elsewhere on the machine does not favour either side
            for name, dither in baselines:
                baseline[name] = min(baseline[name], _best(pillow(dither), repeat) / len(pil_images))
            chunk = np.ascontiguousarray(images[:batch])
            for method in METHODS:
                ours.append((batch, method, _best(lambda: reduce(chunk, "bwry", method), repeat) / batch))
            for kind in DIFFUSION:
                ours.append((batch, kind + NUMPY_SUFFIX, _best(lambda: _numpy_reduce(chunk, kind), repeat) / batch))
        fs = baseline["pillow-fs"]
        for name, per_image in baseline.items():
            rows.append(_row(width, height, len(pil_images), name, per_image, mpx, fs))
        for size, name, per_image in ours:
            rows.append(_row(width, height, size, name, per_image, mpx, fs))
    return rows


def _numpy_reduce(batch: np.ndarray, method: Dither) -> np.ndarray:
    """`reduce` as it runs where numba does not import: on the numpy wavefront."""
    saved = render_dither._USE_NUMBA
    render_dither._USE_NUMBA = False
    try:
        return reduce(batch, "bwry", method)
    finally:
        render_dither._USE_NUMBA = saved


def _diffusion_backend() -> str:
    """What `reduce` error-diffuses with here: "numba <version>", or "numpy" without numba."""
    compiled = render_dither._numba_kernel(render_dither._KERNELS["floyd-steinberg"])
    if compiled is None:
        return "numpy"
    import numba

    return f"numba {numba.__version__}"


def _row(width: int, height: int, batch: int, method: str, per_image: float, mpx: float, fs: float) -> dict[str, Any]:
    return {
        "size": f"{width}x{height}",
        "batch": batch,
        "method": method,
        "mpx_s": round(mpx / per_image, 1),
        "ms_per_image": round(per_image * 1e3, 3),
        "vs_pillow_fs": round(fs / per_image, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per figure (best is kept)")
    args = parser.parse_args()
    rows = run(args.repeat)
    backend = _diffusion_backend()
    print(f"error diffusion in reduce: {backend}")
    print(f"{'size':>8} {'batch':>5} {'method':>21} {'MPx/s':>8} {'ms/image':>9} {'vs Pillow FS':>12}")
    for r in rows:
        print(f"{r['size']:>8} {r['batch']:>5} {r['method']:>21} {r['mpx_s']:>8} {r['ms_per_image']:>9} {r['vs_pillow_fs']:>12}")
    print(json.dumps({"benchmark": "dither", "repeat": args.repeat, "diffusion_backend": backend,
                      "summary": summary(rows), "results": rows}))


def summary(rows: list[dict[str, Any]]) -> dict[str, float]:
    """The headline ratios on 800x480: batched error diffusion and ordered dithering."""
    at = {(r["size"], r["batch"], r["method"]): r["vs_pillow_fs"] for r in rows}
    big, batch = "800x480", max(BATCHES)
    return {
        "fs_batched_vs_pillow_fs": at[(big, batch, "floyd-steinberg")],
        "atkinson_batched_vs_pillow_fs": at[(big, batch, "atkinson")],
        "fs_single_vs_pillow_fs": at[(big, 1, "floyd-steinberg")],
        "atkinson_single_vs_pillow_fs": at[(big, 1, "atkinson")],
        "fs_numpy_batched_vs_pillow_fs": at[(big, batch, "floyd-steinberg" + NUMPY_SUFFIX)],
        "fs_numpy_single_vs_pillow_fs": at[(big, 1, "floyd-steinberg" + NUMPY_SUFFIX)],
        "bayer_single_vs_pillow_fs": at[(big, 1, "bayer")],
        "blue_noise_single_vs_pillow_fs": at[(big, 1, "blue-noise")],
        "bayer_batched_vs_pillow_fs": at[(big, batch, "bayer")],
        "blue_noise_batched_vs_pillow_fs": at[(big, batch, "blue-noise")],
    }


if __name__ == "__main__":
    main()
