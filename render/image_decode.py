"""Uploaded pictures made safe: checked from their header, decoded, re-encoded as our own PNG.

An upload is untrusted bytes. A PNG of a few tens of kilobytes can declare 20000×20000
pixels of one colour (1.2 GB decoded): so the size the header declares is checked against
`MAX_SIDE` and `MAX_PIXELS` *before* a single pixel is decoded (Pillow's ``open`` reads only
the header; ``load`` decodes). Pillow's own decompression-bomb check is a process-wide
setting that only warns below twice its limit; here its warning is an error for the length of
the call, and our limits apply whatever that setting is. A truncated or foreign file, or
one that is not the format its media type says, is refused.

What is kept is what we made: the first frame, EXIF orientation applied, converted to RGB (or
RGBA when it has transparency), scaled to at most `STORED_MAX_SIDE` a side (a label is at
most 800 pixels wide, and every render job carries the PNGs it draws), encoded as PNG with
no metadata. Its SHA-256 is the image's digest. Decodes run one at a time per process, so
concurrent uploads cannot add up their memory.
"""

from __future__ import annotations

import hashlib
import io
import threading
import warnings
from dataclasses import dataclass
from typing import Final

import numpy as np
from PIL import Image as PILImage
from PIL import ImageOps

__all__ = ["MEDIA_TYPES", "MAX_SIDE", "MAX_PIXELS", "STORED_MAX_SIDE", "UploadError", "Normalised", "normalise",
           "normalise_job", "open_stored"]

MEDIA_TYPES: Final = {"image/png": "PNG", "image/jpeg": "JPEG", "image/gif": "GIF", "image/webp": "WEBP"}
"""Accepted upload media types and the one Pillow format each is decoded as."""
MAX_SIDE: Final = 4096
"""Largest width or height an upload may declare."""
MAX_PIXELS: Final = 16_000_000
"""Largest width × height an upload may declare."""
STORED_MAX_SIDE: Final = 1024
"""Largest side of the PNG kept (larger uploads are scaled down, aspect kept)."""

_DECODE_LOCK: Final = threading.Lock()
_SIXTEEN_BIT: Final = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})


class UploadError(ValueError):
    """An upload refused: `code` (``invalid_image`` or ``image_too_large``) and a reason that
    names the field (``body``) and what was found."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason

    def __reduce__(self) -> tuple[object, ...]:
        """Pickled whole, so an upload refused in a render process reaches the server as it is."""
        return (type(self), (self.code, self.reason))


@dataclass(frozen=True, slots=True)
class Normalised:
    """The PNG kept for an upload, its digest (SHA-256 hex of `png`) and its size."""

    png: bytes
    digest: str
    width: int
    height: int


def _check_size(width: int, height: int, what: str) -> None:
    if width < 1 or height < 1:
        raise UploadError("invalid_image", f"body: {what} declares {width}×{height} pixels")
    if width > MAX_SIDE or height > MAX_SIDE or width * height > MAX_PIXELS:
        raise UploadError("image_too_large", f"body: {what} declares {width}×{height} pixels; at most "
                                             f"{MAX_SIDE}×{MAX_SIDE} and {MAX_PIXELS} pixels in all")


def _open(data: bytes, fmt: str, what: str) -> PILImage.Image:
    """The image's header read (no pixel decoded yet); refused beyond the limits."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", PILImage.DecompressionBombWarning)
            im = PILImage.open(io.BytesIO(data), formats=[fmt])
    except (PILImage.DecompressionBombError, PILImage.DecompressionBombWarning) as exc:
        raise UploadError("image_too_large", f"body: {what} declares too many pixels ({exc}); at most "
                                             f"{MAX_SIDE}×{MAX_SIDE} and {MAX_PIXELS} in all") from None
    except PILImage.UnidentifiedImageError:
        raise UploadError("invalid_image", f"body: not a {fmt} image ({what}): the bytes are not one") from None
    except (OSError, ValueError, SyntaxError, EOFError, IndexError, TypeError, KeyError) as exc:
        raise UploadError("invalid_image", f"body: a {fmt} image that cannot be read ({exc})") from None
    _check_size(im.width, im.height, what)
    return im


def _rgb(im: PILImage.Image) -> PILImage.Image:
    """RGB, or RGBA when some pixel is not opaque."""
    if im.mode in _SIXTEEN_BIT:  # 16-bit grey: keep the top 8 bits (convert() would clip at 255)
        im = PILImage.fromarray(np.clip(np.asarray(im, dtype=np.int64) >> 8, 0, 255).astype(np.uint8), "L")
    if im.has_transparency_data:
        rgba = im.convert("RGBA")
        alpha = rgba.getchannel("A").getextrema()
        if isinstance(alpha, tuple) and alpha[0] != 255:
            return rgba
        return rgba.convert("RGB")
    return im.convert("RGB")


def normalise(data: bytes, media_type: str) -> Normalised:
    """The PNG to keep for upload `data` declared as `media_type` (one of `MEDIA_TYPES`);
    `UploadError` for a file that is not that format, is damaged, or is too large."""
    fmt = MEDIA_TYPES.get(media_type)
    if fmt is None:
        raise UploadError("invalid_image", f"Content-Type: expected one of {', '.join(MEDIA_TYPES)}, "
                                           f"got {media_type!r}")
    with _DECODE_LOCK:
        im = _open(data, fmt, media_type)
        try:
            if fmt == "JPEG":  # let the decoder scale down by 1/2..1/8 while it reads
                im.draft("RGB", (STORED_MAX_SIDE, STORED_MAX_SIDE))
            im.load()  # the first frame only: an animation's others are never decoded
            out = _rgb(ImageOps.exif_transpose(im))
        except UploadError:
            raise
        except (OSError, ValueError, SyntaxError, EOFError, IndexError, TypeError, KeyError,
                MemoryError) as exc:
            raise UploadError("invalid_image", f"body: a {fmt} image that cannot be decoded "
                                               f"({type(exc).__name__}: {exc})") from None
        finally:
            im.close()
        if max(out.size) > STORED_MAX_SIDE:
            out.thumbnail((STORED_MAX_SIDE, STORED_MAX_SIDE), PILImage.Resampling.LANCZOS)
        out.info = {}  # no text, ICC or transparency chunks of the upload: only what we made
        buf = io.BytesIO()
        out.save(buf, format="PNG", compress_level=6)
    png = buf.getvalue()
    return Normalised(png, hashlib.sha256(png).hexdigest(), out.width, out.height)


def normalise_job(job: tuple[bytes, str]) -> Normalised:
    """`normalise` with its arguments in one tuple (`render.isolate.LimitedPool.run` passes one)."""
    return normalise(*job)


def open_stored(png: bytes) -> PILImage.Image:
    """A PNG made by `normalise`, decoded (with the same header checks: it came from a
    database, and a render process trusts no bytes it did not make)."""
    im = _open(png, "PNG", "stored image")
    try:
        im.load()
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise UploadError("invalid_image", f"stored image cannot be decoded ({exc})") from None
    return im
