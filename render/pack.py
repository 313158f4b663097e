"""Palette indices → the bytes a label stores: framebuffer, bit planes, payload, changed region.

Orientation. Indices arrive in reading orientation, shape ``(model.height, model.width)``.
The panel scans the picture turned ``model.rotation`` degrees **clockwise**: for 90°, panel
pixel (row y, column x) shows reading pixel (row ``height - 1 - x``, column y), i.e.
``np.rot90(indices, -rotation // 90)``; the result has the shape of ``model.panel_size``.

Framebuffer (`to_framebuffer`). Panel rows top to bottom, each row left to right, most
significant bits first, ``model.bits_per_pixel`` bits a pixel, each row padded with zero bits
to a whole number of bytes (`firmware_proto.image.row_stride`). With 2 bits a pixel the bits
are the palette index (00 black, 01 white, 10 yellow, 11 red); with 1 bit (``bw`` models) a
pixel is 1 for white and 0 for black.

Bit planes (`to_planes`): two 1-bit images of the same scan order, rows padded to bytes:

==========  ======================  ==================
ink         black/white plane bit   colour plane bit
==========  ======================  ==================
black       0                       0
white       1                       0
yellow      1                       1
red         0                       1
==========  ======================  ==================

so the black/white plane alone is the picture a black/white panel would show (yellow is a
light ink, red a dark one) and the colour plane marks every coloured pixel. ``bwr``: red is
the colour plane (its black/white bit is 0). ``bw``: the colour plane is all zero.

Payload (`encode_payload`): the framebuffer compressed with whichever
`firmware_proto.image.ImageFormat` is smallest for that image (RAW on a tie), with
``hash = image_hash(framebuffer)`` of the uncompressed bytes, as the label reports it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from firmware_proto.image import (
    ImageError,
    ImageFormat,
    Region,
    best_payload,
    decompress,
    image_hash,
    row_stride,
)
from firmware_proto.models import LabelModel
from firmware_proto.transfer import changed_region, framebuffer_size
from render.palette import BLACK, RED, WHITE, YELLOW, indices_for

__all__ = [
    "PackError", "Payload", "framebuffer_size", "to_framebuffer", "to_framebuffers",
    "from_framebuffer", "to_planes", "from_planes", "encode_payload", "decode_payload",
    "diff_region",
]


class PackError(ValueError):
    """Indices, bytes or a payload that do not fit the label model; names the value."""


def _plane_stride(model: LabelModel) -> int:
    return (model.panel_size[0] + 7) // 8


def _check_inks(indices: np.ndarray, what: str, model: LabelModel) -> None:
    """Raise `PackError` naming the first index that is not an ink of `model`."""
    if indices.size == 0:
        return
    allowed = indices_for(model.colours)
    lo, hi = int(indices.min()), int(indices.max())
    ok = lo >= 0 and hi <= max(allowed)
    if ok and len(allowed) != max(allowed) + 1:  # a gap: bwr has no yellow (2)
        missing = [k for k in range(max(allowed)) if k not in allowed]
        ok = not np.isin(indices, missing).any()
    if not ok:
        bad = ~np.isin(indices, allowed)
        raise PackError(
            f"{what} holds index {int(indices[bad].flat[0])}, not a {model.colours} ink of {model.name}; "
            f"allowed {allowed}"
        )


def _check_indices(indices: object, model: LabelModel, *, batch: bool) -> np.ndarray:
    if not isinstance(indices, np.ndarray):
        raise PackError(f"indices must be a numpy array, got {type(indices).__name__}")
    if not np.issubdtype(indices.dtype, np.integer):
        raise PackError(f"indices must have an integer dtype, got {indices.dtype}")
    want = (model.height, model.width)
    shape_ok = indices.ndim == 3 and indices.shape[1:] == want if batch else indices.shape == want
    if not shape_ok:
        expected = f"(N, {want[0]}, {want[1]})" if batch else str(want)
        raise PackError(f"indices for {model.name} must have shape {expected}, got {indices.shape}")
    _check_inks(indices, "indices", model)
    return indices.astype(np.uint8, copy=False)


def _to_panel(indices: np.ndarray, model: LabelModel) -> np.ndarray:
    """Reading orientation → panel scan order on the last two axes (clockwise rotation)."""
    return np.rot90(indices, -(model.rotation // 90), axes=(-2, -1))


def _from_panel(panel: np.ndarray, model: LabelModel) -> np.ndarray:
    return np.ascontiguousarray(np.rot90(panel, model.rotation // 90, axes=(-2, -1)))


def _pack(panel: np.ndarray, model: LabelModel) -> np.ndarray:
    """(..., h, w) panel indices → (..., h, stride) uint8 rows, MSB first."""
    if model.bits_per_pixel == 1:
        return np.packbits(panel == WHITE, axis=-1)
    width = panel.shape[-1]
    stride = (width + 3) // 4
    quads = np.zeros(panel.shape[:-1] + (stride * 4,), dtype=np.uint8)
    quads[..., :width] = panel  # the padding pixels stay 0
    q = quads.reshape(panel.shape[:-1] + (stride, 4))
    out = q[..., 0] << 6
    out |= q[..., 1] << 4
    out |= q[..., 2] << 2
    out |= q[..., 3]
    return out


def to_framebuffer(indices: np.ndarray, model: LabelModel) -> bytes:
    """Pack (height, width) palette indices in reading orientation into `model`'s framebuffer.

    Raises `PackError` for a wrong shape, a non-integer dtype or an index the model lacks.
    """
    arr = _check_indices(indices, model, batch=False)
    return _pack(_to_panel(arr, model), model).tobytes()


def to_framebuffers(indices: np.ndarray, model: LabelModel) -> list[bytes]:
    """`to_framebuffer` for a batch (N, height, width), packed in one vectorised pass."""
    arr = _check_indices(indices, model, batch=True)
    packed = _pack(_to_panel(arr, model), model)
    return [packed[k].tobytes() for k in range(packed.shape[0])]


def _check_bytes(name: str, data: object, size: int, model: LabelModel) -> np.ndarray:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise PackError(f"{name} must be bytes, got {type(data).__name__}")
    if len(data) != size:
        raise PackError(f"{name} is {len(data)} bytes, expected {size} for {model.name}")
    return np.frombuffer(bytes(data), dtype=np.uint8)




def from_framebuffer(data: bytes, model: LabelModel) -> np.ndarray:
    """The (height, width) uint8 indices of a framebuffer: the exact inverse of `to_framebuffer`.

    Padding bits are ignored. Raises `PackError` on a wrong size or an ink the model lacks.
    """
    pw, ph = model.panel_size
    raw = _check_bytes("framebuffer", data, framebuffer_size(model), model).reshape(ph, row_stride(model))
    bits = np.unpackbits(raw, axis=-1)
    panel: np.ndarray
    if model.bits_per_pixel == 1:
        panel = np.where(bits[:, :pw] == 1, WHITE, BLACK).astype(np.uint8)
    else:
        pairs = bits[:, :2 * pw].reshape(ph, pw, 2)
        panel = (pairs[..., 0] << 1) | pairs[..., 1]
    _check_inks(panel, "framebuffer", model)
    return _from_panel(panel, model)


def to_planes(indices: np.ndarray, model: LabelModel) -> tuple[bytes, bytes]:
    """(black/white plane, colour plane) of (height, width) indices; encoding in the module doc."""
    panel = _to_panel(_check_indices(indices, model, batch=False), model)
    light = (panel == WHITE) | (panel == YELLOW)
    colour = (panel == YELLOW) | (panel == RED)
    return np.packbits(light, axis=-1).tobytes(), np.packbits(colour, axis=-1).tobytes()


def from_planes(bw_plane: bytes, colour_plane: bytes, model: LabelModel) -> np.ndarray:
    """The inverse of `to_planes`; raises `PackError` on wrong sizes or inks the model lacks."""
    pw, ph = model.panel_size
    size = _plane_stride(model) * ph
    light = np.unpackbits(_check_bytes("black/white plane", bw_plane, size, model).reshape(ph, -1), axis=-1)[:, :pw]
    colour = np.unpackbits(_check_bytes("colour plane", colour_plane, size, model).reshape(ph, -1), axis=-1)[:, :pw]
    table = np.array([[BLACK, WHITE], [RED, YELLOW]], dtype=np.uint8)  # [colour, light]
    panel = table[colour, light]
    _check_inks(panel, "planes", model)
    return _from_panel(panel, model)


@dataclass(frozen=True, slots=True)
class Payload:
    """A framebuffer as it travels: compressed `data` in `format`, and its content hash.

    ``hash`` is `firmware_proto.image.image_hash` of the uncompressed framebuffer and
    ``raw_size`` its length, so a label can bound decompression and check what it shows.
    """

    format: ImageFormat
    data: bytes
    hash: bytes
    raw_size: int


def encode_payload(framebuffer: bytes) -> Payload:
    """Compress `framebuffer` in whichever format is smallest for it (`firmware_proto.image.best_payload`)."""
    if not isinstance(framebuffer, (bytes, bytearray, memoryview)):
        raise PackError(f"framebuffer must be bytes, got {type(framebuffer).__name__}")
    raw = bytes(framebuffer)
    data, fmt = best_payload(raw)
    return Payload(fmt, data, image_hash(raw), len(raw))


def decode_payload(payload: Payload, model: LabelModel) -> bytes:
    """The framebuffer a payload carries, checked against `model`'s size and the payload hash.

    Decompression never produces more than the model's framebuffer size. Raises `PackError`.
    """
    size = framebuffer_size(model)
    if payload.raw_size != size:
        raise PackError(f"payload raw_size is {payload.raw_size}, expected {size} for {model.name}")
    try:
        raw = decompress(payload.format, payload.data, size)
    except ImageError as exc:
        raise PackError(f"payload for {model.name}: {exc}") from None
    got = image_hash(raw)
    if got != payload.hash:
        raise PackError(f"payload hash mismatch: expected {payload.hash.hex()}, got {got.hex()}")
    return raw


def diff_region(old: bytes, new: bytes, model: LabelModel) -> Region | None:
    """The smallest byte-aligned region (panel coordinates) covering every changed byte.

    None when the framebuffers are identical. Raises `PackError` on wrong sizes.
    """
    size = framebuffer_size(model)
    _check_bytes("old framebuffer", old, size, model)
    _check_bytes("new framebuffer", new, size, model)
    return changed_region(bytes(old), bytes(new), model)
