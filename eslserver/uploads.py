"""Images uploaded through the API: checked, stored content-addressed, cached, and handed to
the render jobs that draw them.

An upload is decoded in a render process (inside the template limits, so a hostile file
costs a worker, never the server) by `render.image_decode.normalise`, which checks the size
its header declares before decoding and keeps only a PNG of its own making; that PNG's
SHA-256 is the image's digest. Rows live in the database (``uploaded_images``), so every
server instance sharing it has every upload.

Templates and products name an upload as ``sha256:<digest>`` or by the name it was given
(`render.image_refs`). Render processes have no database: `Uploads.image_set` gathers, once
per batch, the uploads a job may draw (the srcs written out in its template and the strings
of its products that name an upload) with their PNGs, from an in-memory index (name →
digest) and a cache of PNGs, so rendering reads no row per label. Both are this instance's:
an upload or a delete through it resets the index at once; one made by another instance
sharing the database is seen when the index is next loaded (`INDEX_TTL_S`).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from eslserver.audit import Who, record_audit
from eslserver.config import Settings
from eslserver.db.database import Connection, Database
from eslserver.price_rules import image_values
from eslserver.pricing import PriceError, PriceUpdate
from eslserver.store import uploads as rows
from eslserver.timeutil import iso, utcnow
from render.image_decode import Normalised, UploadError, normalise, normalise_job
from render.image_refs import (
    ImageRef,
    ImageRefError,
    ImageSet,
    check_literal_srcs,
    literal_srcs,
    parse_ref,
    upload_ref,
    upload_refs_in,
)
from render.isolate import LimitedPool, LimitExceeded

__all__ = ["INDEX_TTL_S", "UploadConflict", "UploadedImage", "Uploads", "unknown_image"]

INDEX_TTL_S: Final = 30.0
"""How long the name → digest index is trusted before it is read again (uploads and deletes
made through another server instance)."""
_PNG_CACHE_BYTES: Final = 64 * 1024 * 1024


class UploadConflict(ValueError):
    """An upload that would take a name another image has, or rename an image already named."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


@dataclass(frozen=True, slots=True)
class UploadedImage:
    """What the API says about one upload."""

    digest: str
    name: str | None
    media_type: str
    width: int
    height: int
    bytes: int
    created_at: str
    created_by: str

    @classmethod
    def from_row(cls, row: Any) -> UploadedImage:
        return cls(row["digest"], row["name"], row["media_type"], row["width"], row["height"], row["bytes"],
                   row["created_at"], row["created_by"])

    @property
    def src(self) -> str:
        """How a template or a product names it whatever its name: ``sha256:<digest>``."""
        return f"sha256:{self.digest}"

    def to_json(self) -> dict[str, Any]:
        return {"digest": self.digest, "name": self.name, "src": self.src, "width": self.width,
                "height": self.height, "bytes": self.bytes, "media_type": self.media_type,
                "created_at": self.created_at, "created_by": self.created_by}

    def audit(self) -> dict[str, Any]:
        """The audit log's view (no PNG: the digest names it)."""
        return {"name": self.name, "media_type": self.media_type, "width": self.width, "height": self.height,
                "bytes": self.bytes}


@dataclass(frozen=True, slots=True)
class _Index:
    names: dict[str, str]
    digests: frozenset[str]
    version: str
    loaded: float

    def digest(self, ref: ImageRef) -> str | None:
        if ref.kind == "name":
            return self.names.get(ref.key)
        if ref.kind == "digest":
            digest = ref.key.removeprefix("sha256:")
            return digest if digest in self.digests else None
        return None


class Uploads:
    """The store's uploaded images (see the module docstring)."""

    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings
        self.pool: LimitedPool | None = None
        """Render processes to decode uploads in (set by the server; None decodes in a
        thread of this process, for tests that run no processes)."""
        self._index: _Index | None = None
        self._generation = 0
        self._pngs: OrderedDict[str, bytes] = OrderedDict()
        self._png_bytes = 0

    # -- the index and the PNG cache -------------------------------------------------------

    def invalidate(self) -> None:
        """Forget the index (after an upload or a delete)."""
        self._generation += 1
        self._index = None

    async def _current(self) -> _Index:
        index = self._index
        if index is not None and time.monotonic() - index.loaded < INDEX_TTL_S:
            return index
        generation = self._generation
        found = await rows.index(self.db, self.settings.store)
        names = {r["name"]: r["digest"] for r in found if r["name"] is not None}
        digests = frozenset(r["digest"] for r in found)
        version = hashlib.sha256("".join(f"{r['digest']} {r['name'] or ''}\n" for r in found).encode()).hexdigest()
        index = _Index(names, digests, version[:16], time.monotonic())
        if generation == self._generation:  # no upload or delete while it was read
            self._index = index
        return index

    def _keep(self, digest: str, png: bytes) -> None:
        if digest in self._pngs:
            self._pngs.move_to_end(digest)
            return
        self._pngs[digest] = png
        self._png_bytes += len(png)
        while len(self._pngs) > 1 and self._png_bytes > _PNG_CACHE_BYTES:
            _, old = self._pngs.popitem(last=False)
            self._png_bytes -= len(old)

    def _drop(self, digest: str) -> None:
        png = self._pngs.pop(digest, None)
        if png is not None:
            self._png_bytes -= len(png)

    async def _png_many(self, digests: set[str]) -> dict[str, bytes]:
        out = {d: self._pngs[d] for d in digests if d in self._pngs}
        missing = digests - out.keys()
        if missing:
            for digest, png in (await rows.pngs(self.db, missing)).items():
                self._keep(digest, png)
                out[digest] = png
        return out

    # -- what render jobs carry ------------------------------------------------------------

    async def image_set(self, sources: Iterable[str | None] = (),
                        records: Iterable[Mapping[str, Any]] = ()) -> ImageSet:
        """The uploads a job may draw: those named by an ``<image src>`` written out in one of
        `sources` (template texts), or by a string of one of `records` (products), with
        their PNGs. One read of the index (cached) and at most one of PNGs not cached."""
        index = await self._current()
        refs: dict[str, str] = {}
        if index.digests:
            for source in sources:
                for _, src in literal_srcs(source or ""):
                    ref = upload_ref(src)
                    digest = None if ref is None else index.digest(ref)
                    if ref is not None and digest is not None:
                        refs[ref.key] = digest
            for record in records:
                for ref in upload_refs_in(record):
                    if ref.key not in refs:
                        digest = index.digest(ref)
                        if digest is not None:
                            refs[ref.key] = digest
        pngs = await self._png_many(set(refs.values())) if refs else {}
        return ImageSet({k: d for k, d in refs.items() if d in pngs}, pngs, index.version)

    async def check_source(self, source: str, template: str) -> None:
        """`TemplateError` (``markup``, with its line) for an ``<image src>`` written out in
        `source` that is not a ``sample:`` image, a ``sha256:`` digest or a name, or that
        names no upload."""
        index = await self._current()
        check_literal_srcs(source, template, lambda ref: index.digest(ref) is not None)

    # -- the API's operations --------------------------------------------------------------

    async def _normalise(self, data: bytes, media_type: str) -> Normalised:
        if self.pool is None:
            return await asyncio.to_thread(normalise, data, media_type)
        try:
            return await self.pool.run(normalise_job, (data, media_type))
        except LimitExceeded as exc:
            raise UploadError("image_too_large", f"body: decoding the image hit a limit ({exc.reason})") from None

    async def upload(self, data: bytes, media_type: str, name: str | None, *,
                     actor: Who) -> tuple[UploadedImage, bool]:
        """Check, normalise and store an upload (audited ``image.upload``); the image and
        whether it is new. The same image again is answered with the stored one (and named,
        if it had no name). `UploadError` for a file refused, `UploadConflict` for a name
        taken or an image already stored under another name."""
        if name is not None:
            parse_name(name)
        made = await self._normalise(data, media_type)
        store = self.settings.store
        digest = made.digest
        created = False
        try:
            async with self.db.transaction() as conn:
                row = await rows.get(conn, digest)
                if row is not None and (name is None or row["name"] == name):
                    return UploadedImage.from_row(row), False
                if row is not None and (row["name"] is not None or row["store"] != store):
                    raise UploadConflict("image_exists", f"name: this image is already stored as "
                                         f"{row['name']!r} (sha256:{digest}); delete it first to rename it")
                if name is not None:
                    await _name_free(conn, store, name, digest)
                if row is None:
                    await rows.insert(conn, digest=digest, store=store, name=name, media_type=media_type,
                                      width=made.width, height=made.height, png=made.png,
                                      created_at=iso(utcnow()), created_by=actor.name)
                    created = True
                else:
                    assert name is not None
                    await rows.set_name(conn, digest, name)
                stored = await rows.get(conn, digest)
                assert stored is not None
                image = UploadedImage.from_row(stored)
                if created:
                    await record_audit(conn, actor, "image.upload", image.src, None, image.audit())
                else:
                    await record_audit(conn, actor, "image.name", image.src, {"name": None}, {"name": name})
        except self.db.integrity_error:  # a concurrent upload took the name first
            raise UploadConflict("name_taken", f"name: {name!r} was just given to another image") from None
        self.invalidate()
        self._keep(digest, made.png)
        return image, created

    async def delete(self, digest: str, *, actor: Who) -> UploadedImage | None:
        """Forget an upload (audited ``image.delete``); None when this store has none with
        `digest`. Labels showing it keep their image until they are next drawn, which then
        shows the missing-image placeholder."""
        async with self.db.transaction() as conn:
            row = await rows.get(conn, digest)
            if row is None or row["store"] != self.settings.store:
                return None
            image = UploadedImage.from_row(row)
            await rows.delete(conn, digest)
            await record_audit(conn, actor, "image.delete", image.src, image.audit(), None)
        self.invalidate()
        self._drop(digest)
        return image

    async def page(self, limit: int, offset: int) -> tuple[int, list[UploadedImage]]:
        """(how many this store has, one page of them, newest first)."""
        total, found = await rows.page(self.db, self.settings.store, limit, offset)
        return total, [UploadedImage.from_row(r) for r in found]

    async def png(self, digest: str) -> bytes | None:
        """The stored PNG of `digest`; None when no upload has it."""
        return (await self._png_many({digest})).get(digest)


def parse_name(name: str) -> str:
    """`name` if it is an upload name (`render.image_refs.NAME_PATTERN`); `ValueError` naming
    it otherwise."""
    try:
        ref = parse_ref(name)
    except ImageRefError:
        ref = None
    if ref is None or ref.kind != "name":
        raise ValueError(f"name: expected 1-64 lower-case letters, digits, '.', '_' or '-', starting with a "
                         f"letter or digit, got {name[:80]!r}")
    return name


async def _name_free(conn: Connection, store: str, name: str, digest: str) -> None:
    taken = await rows.by_name(conn, store, name)
    if taken is not None and taken["digest"] != digest:
        raise UploadConflict("name_taken", f"name: {name!r} already names sha256:{taken['digest']}; "
                             "delete that image first to give the name to another")


async def unknown_image(conn: Connection, store: str, update: PriceUpdate) -> PriceError | None:
    """The `PriceError` refusing `update` when its ``image`` (or ``attributes.image``) names an
    upload that is not there (a typo, a deleted image); None when every one is there. Read in
    the caller's transaction, so the answer holds for what it commits."""
    for field, value in image_values(update):
        try:
            ref = parse_ref(value)
        except ImageRefError as exc:  # price_rules refused these already; kept for direct callers
            return PriceError(field, value, exc.reason, sku=update.sku)
        if ref.kind == "sample":
            continue
        if ref.kind == "digest":
            found = await rows.get(conn, ref.key.removeprefix("sha256:"))
        else:
            found = await rows.by_name(conn, store, ref.key)
        if found is None:
            return PriceError(field, value, f"no image was uploaded with this {'digest' if ref.kind == 'digest' else 'name'} "
                              "(upload it first: POST /api/v1/images)", sku=update.sku)
    return None
