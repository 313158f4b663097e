"""Label templates as the server keeps them: shipped ones, and edited ones in the database.

A template saved through the API replaces the shipped one of the same name (or adds a new
name). Saving compiles the source and renders the sample products on every model the
template declares; only a template that passes both replaces the last good version, so a
broken edit never reaches a label. Labels that use the template are marked for redrawing.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any

from PIL import Image

from eslserver import pricing
from eslserver.audit import Who, record_audit
from eslserver.config import DEFAULT_TEMPLATES, Settings
from eslserver.db.database import Database
from eslserver.ingest import price_periods
from eslserver.render_worker import PreviewJob, check_template, preview
from eslserver.store import images as image_rows
from eslserver.store import labels as label_rows
from eslserver.store import products
from eslserver.store import templates as store_templates
from eslserver.timeutil import iso, utcnow
from eslserver.uploads import Uploads
from firmware_proto.image import decompress
from firmware_proto.models import get_model
from firmware_proto.transfer import framebuffer_size
from render.image_refs import EMPTY_IMAGES, ImageSet
from render.isolate import LimitedPool, LimitExceeded
from render.pack import from_framebuffer
from render.palette import to_rgb_image
from render.samples import sample_catalogue
from render.templates import (
    Template,
    TemplateError,
    load_template,
    shipped_template_names,
    template_from_string,
)

__all__ = ["TemplateInUse", "Templates", "framebuffer_png", "png_of_indices"]


def png_of_indices(indices: Any) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(to_rgb_image(indices), "RGB").save(buf, format="PNG")
    return buf.getvalue()


def framebuffer_png(framebuffer: bytes, model: str) -> bytes:
    """A PNG of a packed framebuffer in the panel's colours."""
    return png_of_indices(from_framebuffer(framebuffer, get_model(model)))


class TemplateInUse(ValueError):
    """A template save that would leave bound labels without a template for their model."""

    def __init__(self, name: str, labels: Sequence[tuple[str, str]]) -> None:
        self.name = name
        self.labels = list(labels)
        shown = ", ".join(f"{mac} ({model})" for mac, model in self.labels[:5])
        more = f" and {len(self.labels) - 5} more" if len(self.labels) > 5 else ""
        models = sorted({model for _, model in self.labels})
        super().__init__(f"template {name!r}: {len(self.labels)} bound labels of model {', '.join(models)} are "
                         f"drawn with it and the new version does not declare that model: {shown}{more}")


class Templates:
    """Template storage, validation and previews."""

    def __init__(self, db: Database, settings: Settings, *, on_dirty: Callable[[], None] = lambda: None,
                 on_states: Callable[[Iterable[str]], None] = lambda macs: None,
                 uploads: Uploads | None = None) -> None:
        self.db = db
        self.settings = settings
        self.on_dirty = on_dirty
        self.on_states = on_states
        self.uploads = uploads or Uploads(db, settings)
        """Uploaded images: a template's ``<image src>`` must name one (or a ``sample:``)."""
        self.pool: LimitedPool | None = None
        """Render processes with the template limits, for checks and previews (set by the
        server; None renders in a thread of this process, for tests that run no processes)."""

    async def list(self) -> list[dict[str, Any]]:
        stored = {r["name"]: r for r in await store_templates.stored(self.db)}
        out = []
        for name in sorted(set(shipped_template_names()) | set(stored)):
            row = stored.get(name)
            try:
                tpl = template_from_string(row["source"], name) if row else load_template(name)
                info = tpl.info
                models, description = list(info.models), info.description
            except TemplateError:
                models, description = [], ""
            out.append({"name": name, "version": row["version"] if row else 0, "models": models,
                        "description": description, "origin": "database" if row else "shipped",
                        "updated_at": row["updated_at"] if row else None,
                        "updated_by": row["updated_by"] if row else None})
        return out

    async def get(self, name: str) -> tuple[str, int] | None:
        """(source, version): the stored version, else the shipped one (version 0)."""
        row = await store_templates.get(self.db, name)
        if row is not None:
            return row["source"], row["version"]
        if name in shipped_template_names():
            return load_template(name).source, 0
        return None

    @staticmethod
    def check(source: str, name: str, images: ImageSet = EMPTY_IMAGES) -> Template:
        """Compile and render the sample products on each declared model; TemplateError if not."""
        check_template((source, name, images))
        return template_from_string(source, name)

    async def save(self, name: str, source: str, *, actor: Who) -> int:
        """Store a new version after `check`; the new version number. Refused (`TemplateInUse`)
        when a bound label drawn with it has a model the new version no longer declares: that
        label could not be drawn any more. An ``<image src>`` written out in it must name an
        upload or a ``sample:`` image (a path or URL: `TemplateError` with its line)."""
        await self.uploads.check_source(source, name)
        images = await self.uploads.image_set([source])
        if self.pool is None:
            tpl = await asyncio.to_thread(self.check, source, name, images)
        else:
            await self._limited(check_template, (source, name, images), name)
            tpl = template_from_string(source, name)
        now = iso(utcnow())
        models = [m for m, t in DEFAULT_TEMPLATES.items() if t == name]
        async with self.db.transaction() as conn:
            drawn = await label_rows.drawn_with(conn, name, models)
            broken = [(row["mac"], row["model"]) for row in drawn if row["model"] not in tpl.info.models]
            if broken:
                raise TemplateInUse(name, broken)
            before = await store_templates.get(conn, name)
            version = (before["version"] if before else 0) + 1
            await store_templates.save(conn, name, source, version, now, actor.name)
            await label_rows.mark_dirty(conn, now, template=name, models=models, reopen=True)
            await record_audit(conn, actor, "template.save", name,
                               {"version": before["version"], "source": before["source"]} if before else None,
                               {"version": version, "source": source, "models": list(tpl.info.models)})
        self.on_dirty()
        self.on_states(row["mac"] for row in drawn)  # after the commit: no longer verified as up to date
        return version

    async def preview(self, *, source: str | None = None, name: str | None = None, sku: str | None = None,
                      model: str | None = None, now: datetime | None = None) -> bytes:
        """A PNG of the template (`source`, or the stored/shipped `name`) showing product `sku`
        (default: the first sample product); raises TemplateError, or KeyError for an unknown sku."""
        if source is None:
            if name is None:
                raise TemplateError("<preview>", None, "syntax", "give a template source or name")
            found = await self.get(name)
            if found is None:
                raise TemplateError(name, None, "syntax", f"no template named {name!r}")
            source = found[0]
        when = now or utcnow()
        record: dict[str, Any]
        if sku is not None:
            row = await products.get(self.db, self.settings.store, sku)
            if row is None:
                raise KeyError(f"sku {sku!r} is not in the catalogue")
            periods = (await price_periods(self.db, self.settings.store, [sku]))[sku]
            record = pricing.product_for_render(pricing.record_from_json(row["record"]), periods, when)
        else:
            record = sample_catalogue(when)[0]
        await self.uploads.check_source(source, name or "<preview>")
        job = PreviewJob(source, name or "<preview>", record, model, self.settings.store_name,
                         self.settings.currency, when, await self.uploads.image_set([source], [record]))
        if self.pool is None:
            indices = await asyncio.to_thread(preview, job)
        else:
            indices = await self._limited(preview, job, job.name)
        return await asyncio.to_thread(png_of_indices, indices)

    async def _limited(self, fn: Callable[[Any], Any], arg: Any, name: str) -> Any:
        """``fn(arg)`` in the limited render processes; a limit hit is the template's error."""
        assert self.pool is not None
        try:
            return await self.pool.run(fn, arg)
        except LimitExceeded as exc:
            raise TemplateError(exc.template or name, exc.line, "limit", exc.reason) from None

    async def image_png(self, digest: str) -> bytes | None:
        """A stored image (by content hash) as PNG; None if the server never rendered it."""
        row = await image_rows.get(self.db, digest)
        if row is None:
            return None
        model = get_model(row["model"])
        framebuffer = decompress(row["format"], row["payload"], framebuffer_size(model))
        return framebuffer_png(framebuffer, row["model"])
