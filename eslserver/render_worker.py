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
from render.context import Store
from render.isolate import LimitedPool
from render.samples import image_resolver, sample_catalogue
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


_RESOLVER: list[Any] = []


def _images() -> Any:
    if not _RESOLVER:
        _RESOLVER.append(image_resolver(files=False))  # the server reads no file a template or POS names
    return _RESOLVER[0]


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
                               images=_images())
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


def preview(job: PreviewJob) -> Any:
    """The palette indices of `job`'s label; `TemplateError` when it cannot be drawn."""
    tpl = template_from_string(job.source, job.name)
    result = render_batch(tpl, [job.record], model=job.model, store=Store(job.store_name, job.currency),
                          now=job.now, images=_images(), keep_indices=True)[0]
    if result.error is not None or result.indices is None:
        raise TemplateError(job.name, None, "runtime", result.error or "no image")
    return result.indices


def check_template(job: tuple[str, str]) -> None:
    """Compile template source and render the sample products on each model it declares;
    `TemplateError` (naming model and sample) if any fails."""
    source, name = job
    tpl = template_from_string(source, name)
    records = sample_catalogue()[:3]
    for model in tpl.info.models:
        for result in render_batch(tpl, records, model=model, images=_images()):
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
