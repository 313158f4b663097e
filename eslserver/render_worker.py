"""What a render process does: products → framebuffers → the cheapest update per label.

Runs in the pipeline's process pool, so everything here is plain data in and out (picklable
frozen dataclasses) and nothing touches the database or the event loop. Compiled templates
are cached per process by (name, version); a product shown on several labels of one model is
rendered once.
"""

from __future__ import annotations

import signal
from collections import OrderedDict
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from firmware_proto.image import ImageError, decompress
from firmware_proto.models import get_model
from firmware_proto.transfer import framebuffer_size, plan_update
from render.batch import render_batch
from render.canvas import clear_image_cache
from render.context import Store
from render.image_refs import EMPTY_IMAGES, ImageSet, check_literal_srcs, image_loader
from render.isolate import LimitedPool
from render.samples import ImageResolver, sample_catalogue
from render.templates import (
    Template,
    TemplateError,
    load_template,
    template_from_string,
)

__all__ = ["LabelUpdate", "PreviewJob", "RenderItem", "RenderJob", "RenderOutcome", "SampleCheck",
           "check_samples", "check_template", "preview",
           "render_job", "render_limited", "warm_up"]

_TEMPLATES: OrderedDict[tuple[str, int], Template] = OrderedDict()
_TEMPLATE_CACHE = 32


@dataclass(frozen=True, slots=True)
class RenderItem:
    """One label to draw: its product record (with ``lowest_30d`` filled in) and, when known,
    the image it shows now (compressed, with its format), for a region or delta update."""

    mac: str
    sku: str
    record: dict[str, Any]
    base_payload: bytes | None = None
    base_format: int | None = None


@dataclass(frozen=True, slots=True)
class RenderJob:
    """Labels that share a template and a model."""

    template: str
    template_version: int
    template_source: str | None  # None: the shipped template of that name
    model: str
    store_name: str
    currency: str
    now: datetime
    items: tuple[RenderItem, ...]
    images: ImageSet = EMPTY_IMAGES  # the uploads its template and products name (eslserver.uploads)


@dataclass(frozen=True, slots=True)
class LabelUpdate:
    """What to send: `firmware_proto.plan_update`'s answer, flattened for pickling and SQL."""

    payload: bytes
    image_format: int
    region: tuple[int, int, int, int] | None
    base_hash: bytes | None
    delta: bool


@dataclass(frozen=True, slots=True)
class RenderOutcome:
    """One label's result. ``update`` is None when the label already shows ``image_hash``."""

    mac: str
    image_hash: bytes | None = None
    image_format: int = 0
    image_payload: bytes = b""  # the whole framebuffer, compressed (kept in the images table)
    update: LabelUpdate | None = None
    error: str | None = None


_LOADER: list[tuple[ImageSet, ImageResolver]] = []
_LOADER_PNG_BYTES = 64 * 1024 * 1024


def _images(images: ImageSet = EMPTY_IMAGES) -> ImageResolver:
    """The loader a job draws with: ``sample:`` photos and the uploads the job carries, never
    a file (the server reads no file a template or a POS names).

    One loader per state of the uploads (`ImageSet.version`), gathering what the jobs of
    that state carry: the same object from job to job, so the static parts of a template
    drawn once (`render.batch.base_canvas`, cached by loader) are reused. Pictures reduced
    for a label are cached by src; when the uploads change (a name deleted, or given to
    another image) that cache is dropped, or a name would keep its old picture."""
    current = _LOADER[0][0] if _LOADER else None
    if (current is None or current.version != images.version
            or sum(map(len, current.pngs.values())) > _LOADER_PNG_BYTES):
        if current is not None and current.version != images.version:
            clear_image_cache()
        held = ImageSet({}, {}, images.version)
        _LOADER[:] = [(held, image_loader(held))]
    held, loader = _LOADER[0]
    held.pngs.update(images.pngs)
    held.refs.update(images.refs)
    return loader


def _template(job: RenderJob) -> Template:
    key = (job.template, job.template_version)
    tpl = _TEMPLATES.get(key)
    if tpl is None:
        tpl = (load_template(job.template) if job.template_source is None
               else template_from_string(job.template_source, job.template))
        _TEMPLATES[key] = tpl
        while len(_TEMPLATES) > _TEMPLATE_CACHE:
            _TEMPLATES.popitem(last=False)
    else:
        _TEMPLATES.move_to_end(key)
    return tpl


def render_job(job: RenderJob) -> list[RenderOutcome]:
    """Render every label of `job`; one label's failure is that label's ``error``."""
    try:
        template = _template(job)
        model = get_model(job.model)
    except (TemplateError, KeyError) as exc:
        return [RenderOutcome(item.mac, error=f"template {job.template!r}: {exc}") for item in job.items]
    by_sku: dict[str, int] = {}
    records: list[dict[str, Any]] = []
    for item in job.items:
        if item.sku not in by_sku:
            by_sku[item.sku] = len(records)
            records.append(item.record)
    try:
        results = render_batch(template, records, model=job.model,
                               store=Store(name=job.store_name, currency=job.currency), now=job.now,
                               images=_images(job.images))
    except TemplateError as exc:  # the template does not support this model
        return [RenderOutcome(item.mac, error=str(exc)) for item in job.items]
    size = framebuffer_size(model)
    out: list[RenderOutcome] = []
    for item in job.items:
        res = results[by_sku[item.sku]]
        if res.error is not None or res.framebuffer is None or res.payload is None or res.hash is None:
            out.append(RenderOutcome(item.mac, error=res.error or "render produced no image"))
            continue
        base_fb: bytes | None = None
        if item.base_payload is not None and item.base_format is not None:
            try:
                base_fb = decompress(item.base_format, item.base_payload, size)
            except ImageError:
                base_fb = None  # an unreadable stored base: send the whole image
            if base_fb is not None and len(base_fb) != size:
                base_fb = None
        update: LabelUpdate | None
        if base_fb is None:
            update = LabelUpdate(res.payload.data, int(res.payload.format), None, None, False)
        else:
            plan = plan_update(model, res.framebuffer, base_fb=base_fb,
                               full=(res.payload.data, res.payload.format))
            update = None if plan is None else LabelUpdate(
                plan.payload, int(plan.image_format),
                None if plan.region is None else (plan.region.x, plan.region.y, plan.region.w, plan.region.h),
                plan.base_hash, plan.delta)
        out.append(RenderOutcome(item.mac, res.hash, int(res.payload.format), res.payload.data, update))
    return out


@dataclass(frozen=True, slots=True)
class PreviewJob:
    """One template drawn for one product, in a render process (never the server's)."""

    source: str
    name: str
    record: dict[str, Any]
    model: str | None
    store_name: str
    currency: str
    now: datetime
    images: ImageSet = EMPTY_IMAGES


def preview(job: PreviewJob) -> Any:
    """The palette indices of `job`'s label; `TemplateError` when it cannot be drawn."""
    tpl = template_from_string(job.source, job.name)
    result = render_batch(tpl, [job.record], model=job.model, store=Store(job.store_name, job.currency),
                          now=job.now, images=_images(job.images), keep_indices=True)[0]
    if result.error is not None or result.indices is None:
        raise TemplateError(job.name, None, "runtime", result.error or "no image")
    return result.indices


def check_template(job: tuple[str, str] | tuple[str, str, ImageSet]) -> None:
    """Compile template source and render the sample products on each model it declares
    (with the uploads its srcs name, when given); `TemplateError` (naming model and sample)
    if any fails, or (``markup``, with its line) for an ``<image src>`` of no accepted form."""
    source, name, *rest = job
    images = rest[0] if rest else EMPTY_IMAGES
    tpl = template_from_string(source, name)
    check_literal_srcs(source, name)
    records = sample_catalogue()[:3]
    for model in tpl.info.models:
        for result in render_batch(tpl, records, model=model, images=_images(images)):
            if result.error is not None:
                raise TemplateError(name, None, "runtime", f"{model}, sample {result.sku}: {result.error}")


@dataclass(frozen=True, slots=True)
class SampleCheck:
    """One model's result of `check_samples`: the errors, each with the samples that hit it."""

    template: str
    model: str
    labels: int
    errors: dict[str, list[str]]


def check_samples(job: tuple[str, datetime]) -> list[SampleCheck]:
    """`esl templates check`'s work for one template (a shipped name or a file): the sample
    catalogue drawn on every model it declares. `TemplateError` if it does not compile."""
    ref, now = job
    tmpl = load_template(ref)
    check_literal_srcs(tmpl.source, tmpl.name)  # a path or URL: refused with its line (uploads need a server)
    records = sample_catalogue(now)
    out: list[SampleCheck] = []
    for model in tmpl.info.models:
        results = render_batch(tmpl, records, model=model, images=_images(), now=now)
        errors: dict[str, list[str]] = {}
        for r in results:
            if r.error is not None:
                errors.setdefault(r.error, []).append(r.sku)
        out.append(SampleCheck(tmpl.name, model, len(results), errors))
    return out


async def render_limited(pool: LimitedPool, job: RenderJob) -> list[RenderOutcome]:
    """`render_job` in `pool`; when the batch hits a limit, bisection finds the labels that
    hit it (each gets the limit as its error, and keeps its last good image) and the others
    are rendered."""
    return await pool.bisect(render_job, job.items, lambda items: replace(job, items=tuple(items)),
                             lambda item, exc: RenderOutcome(item.mac, error=f"template {job.template!r}: {exc}"))


def warm_up() -> None:
    """Import and compile what the first real job would (run once per worker at start).

    A worker ignores SIGINT: Ctrl-C in a terminal reaches the whole process group, and the
    server shuts its workers down itself; without this each worker died mid-wait with a
    KeyboardInterrupt traceback on the operator's screen."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for name in ("shelf-2.9",):
        try:
            load_template(name)
        except TemplateError:
            pass
