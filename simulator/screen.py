"""What a simulated label shows: framebuffer → palette indices → PNG in the panel's colours.

The framebuffer is the panel's scan order (`firmware_proto.image`); a snapshot undoes the
model's mounting rotation so the PNG is the label as a shopper reads it. When the renderer's
own inverse (`render.pack.from_framebuffer`) exists we use it, so the snapshot and the
renderer can never disagree about rotation; otherwise we unpack here with the same
convention (the renderer turns the upright image clockwise by ``rotation`` degrees).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from functools import lru_cache

import numpy as np
from PIL import Image

from firmware_proto.image import row_stride
from firmware_proto.label import blank_framebuffer as _label_blank
from firmware_proto.models import LabelModel
from render.palette import PANEL_RGB

__all__ = [
    "ScreenError", "blank_framebuffer", "unpack_panel", "to_indices", "pack_indices", "to_rgb",
    "snapshot_png", "demo_indices",
]


class ScreenError(ValueError):
    """A framebuffer that does not fit the model it is said to belong to."""


def _framebuffer_size(model: LabelModel) -> int:
    return row_stride(model) * model.panel_size[1]


@lru_cache(maxsize=None)
def blank_framebuffer(model: LabelModel) -> bytes:
    """The label's all-white framebuffer, one object shared by every label of `model`."""
    return _label_blank(model)


def unpack_panel(framebuffer: bytes, model: LabelModel) -> np.ndarray:
    """Palette indices (panel_h, panel_w) uint8 in the panel's own scan order."""
    if len(framebuffer) != _framebuffer_size(model):
        raise ScreenError(
            f"framebuffer is {len(framebuffer)} bytes, {model.name} needs {_framebuffer_size(model)}"
        )
    pw, ph = model.panel_size
    rows = np.frombuffer(framebuffer, dtype=np.uint8).reshape(ph, row_stride(model))
    bits = np.unpackbits(rows, axis=1)
    if model.bits_per_pixel == 1:
        return bits[:, :pw].copy()
    pairs = bits[:, : pw * 2].reshape(ph, pw, 2)
    return (pairs[:, :, 0] << 1) | pairs[:, :, 1]


def _own_to_indices(framebuffer: bytes, model: LabelModel) -> np.ndarray:
    panel = unpack_panel(framebuffer, model)
    return np.ascontiguousarray(np.rot90(panel, k=model.rotation // 90))


def _find_inverse() -> Callable[[bytes, LabelModel], np.ndarray] | None:
    try:
        from render.pack import from_framebuffer
    except ImportError:
        return None
    return from_framebuffer


def to_indices(framebuffer: bytes, model: LabelModel) -> np.ndarray:
    """Palette indices (height, width) uint8, upright as a shopper reads the label."""
    inverse = _find_inverse()
    if inverse is not None:
        try:
            out = np.asarray(inverse(framebuffer, model), dtype=np.uint8)
        except ValueError:
            # the renderer refuses inks the model lacks; a label shows whatever it verified
            out = None
        if out is not None and out.shape == (model.height, model.width):
            return out
    return _own_to_indices(framebuffer, model)


def pack_indices(indices: np.ndarray, model: LabelModel) -> bytes:
    """Upright palette indices (height, width) → the packed framebuffer (inverse of `to_indices`).

    For tests, benchmarks and the demo: the product's renderer is `render`; this follows the
    same convention (and uses the renderer's packer when it exists).
    """
    arr = np.asarray(indices, dtype=np.uint8)
    if arr.shape != (model.height, model.width):
        raise ScreenError(f"indices are {arr.shape}, {model.name} needs {(model.height, model.width)}")
    if int(arr.max(initial=0)) >= 1 << model.bits_per_pixel:
        raise ScreenError(f"index {int(arr.max())} does not fit {model.bits_per_pixel} bits a pixel")
    forward = _find_forward()
    if forward is not None:
        return bytes(forward(arr, model))
    panel = np.rot90(arr, k=-(model.rotation // 90))
    ph, pw = panel.shape
    if model.bits_per_pixel == 1:
        return np.packbits(panel, axis=1).tobytes()
    bits = np.empty((ph, pw * 2), dtype=np.uint8)
    bits[:, 0::2] = panel >> 1
    bits[:, 1::2] = panel & 1
    return np.packbits(bits, axis=1).tobytes()


def _find_forward() -> Callable[[np.ndarray, LabelModel], bytes] | None:
    try:
        from render.pack import to_framebuffer
    except ImportError:
        return None
    return to_framebuffer


def demo_indices(model: LabelModel, n: int) -> np.ndarray:
    """A deterministic label-like picture (bars, a block per colour), different for each `n`."""
    h, w = model.height, model.width
    img = np.full((h, w), 1, dtype=np.uint8)
    inks = [0, 3, 2] if model.colours == "bwry" else [0, 3] if model.colours == "bwr" else [0]
    y0 = 4 + n % max(1, h // 4)
    img[y0:y0 + max(2, h // 8), 4:w - 4] = 0
    for i, ink in enumerate(inks):
        x = (n * 7 + i * (w // 4)) % max(1, w - w // 5)
        img[h // 2:h // 2 + h // 4, x:x + w // 6] = ink
    for bit in range(16):  # a bar code of n, so every n differs
        if n >> bit & 1:
            img[h - h // 6:h - 2, 4 + bit * 3:6 + bit * 3] = 0
    return img


def to_rgb(framebuffer: bytes, model: LabelModel) -> np.ndarray:
    """(height, width, 3) uint8 in the colours the panel really shows."""
    rgb: np.ndarray = PANEL_RGB[to_indices(framebuffer, model)]
    return rgb


def snapshot_png(framebuffer: bytes, model: LabelModel) -> bytes:
    """A PNG of the label as it looks on the shelf."""
    buf = io.BytesIO()
    Image.fromarray(to_rgb(framebuffer, model), "RGB").save(buf, format="PNG", optimize=False)
    return buf.getvalue()
