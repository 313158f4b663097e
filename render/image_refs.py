"""What an ``<image src>`` or a product's ``image`` may name when a server renders it, and the
loader a render process draws those images with.

A server renders what merchandisers' templates and POS messages name, and neither may choose
a file on the server's disk. So a reference has one of three forms, told apart by its
spelling alone (`parse_ref`), and nothing in this module opens a file:

- ``sample:kind:colour``: a generated product photo (`render.samples.product_photo`);
- ``sha256:<64 hex digits>``: an image uploaded through the API, by the SHA-256 of the PNG
  the server stored;
- the name an upload was given (``logo-bio``): 1-64 lower-case letters, digits, ``.``, ``_``
  and ``-``, starting with a letter or a digit (`NAME_PATTERN`).

Anything else (``/etc/x.png``, ``../x.png``, ``file:…``, ``http:…``, ``C:\\x``) is refused
with an `ImageRefError` naming the src. Whether a name or digest was really uploaded is the
server's question (its database); a render process has no database, so a job carries the
uploaded images it may draw (`ImageSet`) and `image_loader` draws from that alone.
"""

from __future__ import annotations

import functools
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

from PIL import Image as PILImage

from render.samples import PHOTO_COLOURS, PHOTO_KINDS, ImageResolver, product_photo
from render.templates import TemplateError

__all__ = ["NAME_PATTERN", "DIGEST_PATTERN", "ImageRef", "ImageRefError", "ImageSet", "EMPTY_IMAGES",
           "parse_ref", "upload_ref", "literal_srcs", "check_literal_srcs", "image_loader", "upload_refs_in"]

NAME_PATTERN: Final = r"^[a-z0-9][a-z0-9._-]{0,63}$"
"""An uploaded image's name (the API and the OpenAPI document state this same pattern)."""
DIGEST_PATTERN: Final = r"^[0-9a-f]{64}$"
"""A stored image's SHA-256, lower-case hex."""
_NAME_RE: Final = re.compile(NAME_PATTERN)
_DIGEST_RE: Final = re.compile(r"^sha256:([0-9a-fA-F]{64})$")
_SHOWN: Final = 120  # characters of a refused src quoted in an error

RefKind = Literal["sample", "digest", "name"]


class ImageRefError(ValueError):
    """An image reference of none of the accepted forms, or one that names no image: the
    message names the src; `reason` is the rest."""

    def __init__(self, src: object, reason: str) -> None:
        super().__init__(f"image src {_quoted(src) if isinstance(src, str) else repr(src)}: {reason}")
        self.src = src
        self.reason = reason

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.src, self.reason))


@dataclass(frozen=True, slots=True)
class ImageRef:
    """A parsed reference: `key` is what an `ImageSet` is keyed by (``sha256:`` and lower-case
    hex for a digest, the name itself for a name, the src for a sample)."""

    kind: RefKind
    key: str


def _quoted(src: str) -> str:
    return repr(src if len(src) <= _SHOWN else src[:_SHOWN] + "…")


def parse_ref(src: str) -> ImageRef:
    """`src` as one of the three accepted forms; `ImageRefError` naming it otherwise."""
    if not isinstance(src, str):
        raise ImageRefError(src, "expected text")
    if src.startswith("sample:"):
        parts = src.split(":")
        kind = parts[1] if len(parts) > 1 else "fruit"
        colour = parts[2] if len(parts) > 2 else "red"
        if len(parts) > 3 or kind not in PHOTO_KINDS or colour not in PHOTO_COLOURS:
            raise ImageRefError(src, f"not a sample image; expected sample:KIND:COLOUR with KIND one of "
                                     f"{', '.join(PHOTO_KINDS)} and COLOUR one of {', '.join(PHOTO_COLOURS)}")
        return ImageRef("sample", src)
    digest = _DIGEST_RE.fullmatch(src)
    if digest is not None:
        return ImageRef("digest", "sha256:" + digest.group(1).lower())
    if _NAME_RE.fullmatch(src):
        return ImageRef("name", src)
    raise ImageRefError(src, "not an uploaded image, a sha256: digest or a sample: image")


def upload_ref(value: object) -> ImageRef | None:
    """`value` as a reference to an upload (a digest or a name), else None (never raises):
    how the server picks, among a product's strings, the ones that may name an upload."""
    if not isinstance(value, str) or not value or len(value) > 71:
        return None
    try:
        ref = parse_ref(value)
    except ImageRefError:
        return None
    return ref if ref.kind != "sample" else None


def upload_refs_in(value: object, depth: int = 0) -> Iterator[ImageRef]:
    """Every string inside `value` (a product record: mappings, lists) that has the form of an
    upload reference; bounded in depth like the records themselves."""
    if depth > 8:
        return
    if isinstance(value, str):
        ref = upload_ref(value)
        if ref is not None:
            yield ref
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from upload_refs_in(item, depth + 1)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from upload_refs_in(item, depth + 1)


_COMMENT_RE: Final = re.compile(r"\{#.*?#\}", re.DOTALL)
_SRC_RE: Final = re.compile(r"""<image\b[^>]*?\bsrc\s*=\s*(?:"([^"]*)"|'([^']*)')""", re.DOTALL)


@functools.lru_cache(maxsize=64)
def literal_srcs(source: str) -> tuple[tuple[int, str], ...]:
    """``(line, src)`` of every ``<image src="…">`` written out in template `source` (values
    with Jinja2 expressions in them are the data's, decided at render time; comments are
    skipped). Cached: the pipeline asks for every batch of a template."""
    text = _COMMENT_RE.sub(lambda m: "\n" * m.group(0).count("\n"), source)
    out: list[tuple[int, str]] = []
    for match in _SRC_RE.finditer(text):
        value = match.group(1) if match.group(1) is not None else match.group(2)
        if "{{" in value or "{%" in value:
            continue
        start = match.start(1) if match.group(1) is not None else match.start(2)
        out.append((text.count("\n", 0, start) + 1, value))
    return tuple(out)


def check_literal_srcs(source: str, template: str,
                       exists: Callable[[ImageRef], bool] | None = None) -> list[ImageRef]:
    """The upload references written out in `source`; `TemplateError` (``markup``, with the
    line) for a src of no accepted form, or, when `exists` is given, for one naming no upload."""
    refs: list[ImageRef] = []
    for line, src in literal_srcs(source):
        try:
            ref = parse_ref(src)
        except ImageRefError as exc:
            raise TemplateError(template, line, "markup", str(exc)) from None
        if ref.kind == "sample":
            continue
        if exists is not None and not exists(ref):
            what = "no image was uploaded with this digest" if ref.kind == "digest" else \
                "no image was uploaded with this name"
            raise TemplateError(template, line, "markup", f"image src {_quoted(src)}: {what}")
        refs.append(ref)
    return refs


@dataclass(frozen=True, slots=True)
class ImageSet:
    """The uploaded images a render job may draw: `refs` maps each reference key (a name, or
    ``sha256:<hex>``) to its digest, `pngs` each digest to the PNG the server stored.
    `version` names the state of the store's uploads (it changes with every upload and
    delete): a render process that sees a new one forgets the pictures it reduced under
    the old names. Plain dicts, so that a job pickles."""

    refs: dict[str, str] = field(default_factory=dict)
    pngs: dict[str, bytes] = field(default_factory=dict)
    version: str = ""


EMPTY_IMAGES: Final = ImageSet()

# --- decoding in a render process ---------------------------------------------------------------

_DECODED_PIXELS: Final = 8 * 1024 * 1024  # decoded pictures kept per process, in pixels
_decoded: OrderedDict[str, PILImage.Image] = OrderedDict()
_decoded_lock = threading.Lock()


def _picture(digest: str, png: bytes) -> PILImage.Image:
    """The stored PNG `digest` decoded (kept by digest: content never changes under it)."""
    with _decoded_lock:
        found = _decoded.get(digest)
        if found is not None:
            _decoded.move_to_end(digest)
            return found
    from render.image_decode import open_stored  # noqa: PLC0415 - Pillow plugins, loaded on first use

    picture = open_stored(png)
    with _decoded_lock:
        _decoded[digest] = picture
        while len(_decoded) > 1 and sum(p.width * p.height for p in _decoded.values()) > _DECODED_PIXELS:
            _decoded.popitem(last=False)
    return picture


def image_loader(images: ImageSet) -> ImageResolver:
    """A loader for `render.batch` that draws ``sample:`` photos and the uploads in `images`,
    and refuses everything else with an `ImageRefError` naming the src (no file is read)."""

    def load(src: str) -> PILImage.Image:
        ref = parse_ref(src)
        if ref.kind == "sample":
            parts = src.split(":")
            return product_photo(parts[1] if len(parts) > 1 else "fruit", parts[2] if len(parts) > 2 else "red")
        digest = images.refs.get(ref.key)
        png = images.pngs.get(digest) if digest is not None else None
        if digest is None or png is None:
            raise ImageRefError(src, f"no uploaded image has this {'digest' if ref.kind == 'digest' else 'name'}")
        return _picture(digest, png)

    return load
