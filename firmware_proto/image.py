"""The image payload a label stores and shows: packed framebuffer, compression, hash, regions.

The framebuffer is the panel's scan order (after the model's rotation), row-major, most
significant bits first, ``bits_per_pixel`` per pixel, each row padded to whole bytes. Both the
renderer (which produces it) and the label (which checks and displays it) use this module,
so the hash the server expects is by construction the hash the label reports.
"""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass
from enum import IntEnum
from functools import cache
from typing import TYPE_CHECKING

from zlib_ng import zlib_ng

from firmware_proto.models import LabelModel

if TYPE_CHECKING:  # numpy is imported where bit planes are made: a gateway forwards payloads
    import numpy as np  # without it and installs without numpy (see requirements/gateway.txt)

__all__ = [
    "HASH_SIZE", "ImageFormat", "ImageError", "Region", "image_hash", "row_stride",
    "COMPRESS_LEVEL", "compress", "best_payload", "decompress", "extract_region", "apply_region",
    "to_planes", "from_planes",
]

HASH_SIZE = 8
"""Bytes of content hash carried on the air (truncated SHA-256; labels have SHA-256 hardware)."""


class ImageError(ValueError):
    """An image payload or region that does not fit the label it is meant for."""


class ImageFormat(IntEnum):
    """How a payload is compressed; the byte travels with the image so the label can decode it."""

    RAW = 0
    DEFLATE = 1  # raw DEFLATE (RFC 1951, no zlib header) of the packed framebuffer
    DEFLATE_PLANES = 2  # raw DEFLATE of the bytes split into bit planes (see `to_planes`)


@cache
def _plane_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-byte lookups: the nibble of high bits, the nibble of low bits, and the inverse
    (built on first use, so that importing this module does not import numpy)."""
    import numpy as np

    b = np.arange(256, dtype=np.uint16)
    hi = np.zeros(256, dtype=np.uint8)
    lo = np.zeros(256, dtype=np.uint8)
    for pixel in range(4):  # pixel 0 is the most significant pair
        shift = 6 - 2 * pixel
        hi |= (((b >> (shift + 1)) & 1) << (3 - pixel)).astype(np.uint8)
        lo |= (((b >> shift) & 1) << (3 - pixel)).astype(np.uint8)
    join = np.zeros(256, dtype=np.uint8)
    join[(hi.astype(np.uint16) << 4) | lo] = np.arange(256, dtype=np.uint8)
    return hi, lo, join


def to_planes(packed: bytes) -> bytes:
    """2-bit pixels regrouped as two bit planes: all high bits, then all low bits.

    Text and line art on a mostly black-and-white label compress better this way (the colour
    plane is nearly empty); dithered photos may not, so the sender picks the smaller format.
    Works on any byte string of 2-bit pixels (a framebuffer or a region's rows); an odd length
    leaves the last nibble of each plane zero.
    """
    import numpy as np

    hi_nibble, lo_nibble, _ = _plane_tables()
    arr = np.frombuffer(packed, dtype=np.uint8)
    if arr.size % 2:
        arr = np.append(arr, np.uint8(0))
    planes: list[bytes] = []
    for table in (hi_nibble, lo_nibble):
        nib = table[arr]
        planes.append(bytes(((nib[0::2] << 4) | nib[1::2]).data))
    return planes[0] + planes[1]


def from_planes(planes: bytes, size: int) -> bytes:
    """Inverse of `to_planes` for a `size`-byte result."""
    half = (size * 4 + 7) // 8
    if len(planes) != 2 * half:
        raise ImageError(f"bit planes are {len(planes)} bytes, expected {2 * half} for {size} bytes")
    import numpy as np

    arr = np.frombuffer(planes, dtype=np.uint8)
    hi = np.empty(2 * half, dtype=np.uint16)
    lo = np.empty(2 * half, dtype=np.uint16)
    hi[0::2], hi[1::2] = arr[:half] >> 4, arr[:half] & 0x0F
    lo[0::2], lo[1::2] = arr[half:] >> 4, arr[half:] & 0x0F
    return bytes(_plane_tables()[2][(hi << 4) | lo][:size].data)


def image_hash(packed: bytes) -> bytes:
    """Content hash of a packed (uncompressed) framebuffer or whole-screen result."""
    return hashlib.sha256(packed).digest()[:HASH_SIZE]


def row_stride(model: LabelModel) -> int:
    """Bytes per framebuffer row in the panel's scan order."""
    width, _ = model.panel_size
    return (width * model.bits_per_pixel + 7) // 8


COMPRESS_LEVEL = 6
"""DEFLATE level for payloads: level 9 costs 4-8x the CPU for 1-3 % fewer bytes on labels.

Compression uses zlib-ng (the same DEFLATE stream, about twice as fast as zlib at the same
level and ratio); decompression, as on a label, uses plain zlib."""


def compress(fmt: ImageFormat, packed: bytes, level: int = COMPRESS_LEVEL) -> bytes:
    """Encode a packed framebuffer (or region) in `fmt`."""
    if fmt is ImageFormat.RAW:
        return bytes(packed)
    if fmt is ImageFormat.DEFLATE or fmt is ImageFormat.DEFLATE_PLANES:
        return _deflate(to_planes(packed) if fmt is ImageFormat.DEFLATE_PLANES else packed, level)
    raise ImageError(f"unknown image format {fmt!r}")


def _deflate(data: bytes, level: int) -> bytes:
    c = zlib_ng.compressobj(level, zlib_ng.DEFLATED, -15, 9)
    return c.compress(data) + c.flush()


def best_payload(packed: bytes) -> tuple[bytes, ImageFormat]:
    """The smallest encoding of `packed` (a framebuffer or region) among our formats.

    Every label gets whichever format suits its content (planes for text and line art, plain
    DEFLATE for dithered photos, RAW when nothing helps); ties go to the lower format number.
    """
    raw = bytes(packed)
    options = [(compress(f, raw), f) for f in (ImageFormat.DEFLATE, ImageFormat.DEFLATE_PLANES)]
    options.append((raw, ImageFormat.RAW))
    return min(options, key=lambda o: (len(o[0]), int(o[1])))


def decompress(fmt: int, data: bytes, expected_size: int) -> bytes:
    """Decode a payload that must expand to exactly `expected_size` bytes.

    Never produces more than `expected_size` bytes, whatever the input claims, so a hostile
    or corrupt payload cannot make a label (or the simulator) allocate without bound.
    """
    try:
        f = ImageFormat(fmt)
    except ValueError:
        raise ImageError(f"unknown image format {fmt}") from None
    if f is ImageFormat.RAW:
        out = bytes(data)
    elif f is ImageFormat.DEFLATE_PLANES:
        planes = decompress(ImageFormat.DEFLATE, data, 2 * ((expected_size * 4 + 7) // 8))
        return from_planes(planes, expected_size)
    else:
        d = zlib.decompressobj(-15)
        try:
            out = d.decompress(data, expected_size + 1)
            if len(out) <= expected_size:
                out += d.flush(expected_size + 1 - len(out))
        except zlib.error as exc:
            raise ImageError(f"corrupt DEFLATE payload: {exc}") from None
        if not d.eof and len(out) <= expected_size:
            raise ImageError("truncated DEFLATE payload")
    if len(out) != expected_size:
        raise ImageError(f"payload expands to {len(out)} bytes, expected {expected_size}")
    return out


@dataclass(frozen=True, slots=True)
class Region:
    """A rectangle of the framebuffer in panel coordinates (scan order, after rotation).

    ``x`` and ``w`` are whole bytes of a row (multiples of 8 // bits_per_pixel pixels) so a
    region is a set of row slices and a label can patch its buffer without bit shifting.
    """

    x: int
    y: int
    w: int
    h: int

    def check(self, model: LabelModel) -> None:
        """Raise `ImageError` unless this region lies on byte boundaries inside the panel."""
        pw, ph = model.panel_size
        ppb = 8 // model.bits_per_pixel
        if min(self.x, self.y) < 0 or self.w <= 0 or self.h <= 0:
            raise ImageError(f"region {self} must have x, y >= 0 and w, h > 0")
        if self.x + self.w > pw or self.y + self.h > ph:
            raise ImageError(f"region {self} exceeds the {pw}x{ph} panel of {model.name}")
        if self.x % ppb or (self.w % ppb and self.x + self.w != pw):
            raise ImageError(f"region {self} must start and end on a {ppb}-pixel byte boundary")

    def byte_span(self, model: LabelModel) -> tuple[int, int]:
        """(first byte, byte count) of the region within one framebuffer row."""
        bpp = model.bits_per_pixel
        start = self.x * bpp // 8
        end = ((self.x + self.w) * bpp + 7) // 8
        return start, end - start

    def size(self, model: LabelModel) -> int:
        """Bytes of packed pixels the region carries."""
        return self.byte_span(model)[1] * self.h


def extract_region(framebuffer: bytes, region: Region, model: LabelModel) -> bytes:
    """The packed bytes of `region`, row after row."""
    region.check(model)
    stride = row_stride(model)
    start, count = region.byte_span(model)
    return b"".join(
        framebuffer[(region.y + r) * stride + start:(region.y + r) * stride + start + count]
        for r in range(region.h)
    )


def apply_region(framebuffer: bytes, region: Region, pixels: bytes, model: LabelModel) -> bytes:
    """A copy of `framebuffer` with `region` replaced by `pixels` (as from `extract_region`)."""
    region.check(model)
    stride = row_stride(model)
    if len(framebuffer) != stride * model.panel_size[1]:
        raise ImageError(f"framebuffer is {len(framebuffer)} bytes, expected {stride * model.panel_size[1]}")
    start, count = region.byte_span(model)
    if len(pixels) != count * region.h:
        raise ImageError(f"region pixels are {len(pixels)} bytes, expected {count * region.h}")
    buf = bytearray(framebuffer)
    for r in range(region.h):
        off = (region.y + r) * stride + start
        buf[off:off + count] = pixels[r * count:(r + 1) * count]
    return bytes(buf)
