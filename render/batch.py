"""Many products through one template: layout, draw, pack, compress and hash, in chunks.

What is shared across a batch (and across batches):

* the compiled template (`render.templates` caches shipped ones);
* fonts and glyphs (`render.glyphs` caches faces), QR and barcode symbols by content
  (`render.codes` / `render.canvas` caches), reduced photos by source and size;
* static regions: layout elements are frozen and hashable, so the longest common prefix of
  the elements (in paint order) over a chunk's labels (grouped by background and first
  element, so promotion and regular labels each get theirs) is drawn once into a base `Canvas`,
  kept in a small LRU keyed by the prefix itself, and each product only draws what follows
  it. A template that puts its fixed artwork (frames, headers, logos) first gets it free.
  Drawing from the base is byte-identical to drawing everything (tested), because each
  element paints the same pixels whatever was under them, in the same order.

Chunks of `chunk` products are packed together with `render.pack.to_framebuffers`, so memory
is bounded by the chunk, not the batch: `iter_render` streams results. One product's error
(bad data, a template error, an element that cannot be drawn) becomes that product's
`RenderResult.error`; the rest of the batch carries on.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Final

import numpy as np

from firmware_proto.models import LabelModel, get_model
from render.canvas import Canvas, ImageLoader, draw_label
from render.codes import qr_matrices
from render.context import Product, ProductError, Store, build_context
from render.isolate import TemplateLimit
from render.layout import QR, Element, Label
from render.pack import Payload, encode_payload, to_framebuffers
from render.templates import Template, TemplateError

__all__ = ["RenderResult", "render_batch", "iter_render", "common_prefix", "base_canvas",
           "DEFAULT_CHUNK"]

log = logging.getLogger(__name__)

DEFAULT_CHUNK: Final = 256
_BASE_CACHE_SIZE: Final = 32


@dataclass(frozen=True, slots=True, eq=False)
class RenderResult:
    """One product's outcome. Exactly one of (`payload`, `error`) is set.

    `indices` (palette indices, height × width) is kept only when asked for (previews).
    `hash` is the content hash of the packed framebuffer, the one the label will report.
    """

    index: int
    sku: str
    model: str
    framebuffer: bytes | None = None
    payload: Payload | None = None
    hash: bytes | None = None
    indices: np.ndarray | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


# --- static prefix --------------------------------------------------------------------------

def common_prefix(labels: Sequence[Label]) -> tuple[Element, ...]:
    """The longest run of elements, from the first, that every label starts with."""
    if not labels:
        return ()
    first = labels[0].elements
    n = len(first)
    for label in labels[1:]:
        els = label.elements
        n = min(n, len(els))
        i = 0
        while i < n and (els[i] is first[i] or els[i] == first[i]):
            i += 1
        n = i
        if n == 0:
            break
    return first[:n]


_bases: OrderedDict[tuple[str, str, tuple[Element, ...], ImageLoader | None], Canvas] = OrderedDict()
_bases_lock = threading.Lock()


def base_canvas(model: LabelModel, background: str, prefix: tuple[Element, ...],
                images: ImageLoader | None = None) -> Canvas:
    """A canvas with `prefix` drawn on `background`, cached by its content (never mutate it;
    `draw_label(..., base=)` copies it)."""
    key = (model.name, background, prefix, images)
    with _bases_lock:
        canvas = _bases.get(key)
        if canvas is not None:
            _bases.move_to_end(key)
            return canvas
    canvas = Canvas(model, background)
    for element in prefix:
        canvas.draw(element, images=images)
    canvas.indices.flags.writeable = False
    with _bases_lock:
        _bases[key] = canvas
        while len(_bases) > _BASE_CACHE_SIZE:
            _bases.popitem(last=False)
    return canvas


# --- pipeline ----------------------------------------------------------------------------

def _sku_of(record: Any, index: int) -> str:
    if isinstance(record, Product):
        return record.sku
    if isinstance(record, Mapping):
        sku = record.get("sku")
        if isinstance(sku, (str, int)) and not isinstance(sku, bool) and str(sku).strip():
            return str(sku).strip()
    return f"#{index + 1}"


def _layout_chunk(template: Template, items: list[tuple[int, Any]], model: LabelModel,
                  store: Store, now: datetime,
                  errors: dict[int, RenderResult]) -> list[tuple[int, str, Label]]:
    """Lay out a chunk one stage at a time: every record becomes a product, then every
    product a context, every context markup and every markup a label.

    The labels and errors are those of laying out one product after the other (a product's
    first failing stage is its error, recorded in `errors`, and it skips the rest); running
    each stage over the whole chunk is about a quarter faster, because each stage's code and
    data stay in the processor's caches instead of taking turns with the three others.
    """
    pending: list[tuple[int, str, Any]] = [(index, _sku_of(record, index), record)
                                           for index, record in items]

    def stage(step: Callable[[Any], Any]) -> None:
        nonlocal pending
        done: list[tuple[int, str, Any]] = []
        for index, sku, value in pending:
            try:
                done.append((index, sku, step(value)))
            except (ProductError, TemplateError) as exc:
                errors[index] = RenderResult(index, sku, model.name, error=str(exc))
            except TemplateLimit:  # the batch's budget: render.isolate bisects
                raise
            except Exception as exc:  # noqa: BLE001 - the per-product boundary: never stop a batch
                log.exception("template %s: unexpected error laying out product %s",
                              template.name, sku)
                errors[index] = RenderResult(
                    index, sku, model.name,
                    error=f"{template.name}: internal error: {type(exc).__name__}: {exc}")
        pending = done

    def label_of(markup: str) -> Label:
        label = template.label_from_markup(markup)
        if label.model != model.name:
            raise TemplateError(template.name, None, "model",
                                f"template drew a {label.model!r} label, the batch is for {model.name!r}")
        return label

    stage(lambda record: record if isinstance(record, Product) else Product.from_record(record))
    stage(lambda product: build_context(product, model, store, now))
    stage(template.render_markup)
    stage(label_of)
    return pending


def _render_chunk(template: Template, items: list[tuple[int, Any]], model: LabelModel,
                  store: Store, images: ImageLoader | None, now: datetime,
                  keep_indices: bool) -> list[RenderResult]:
    layout_errors: dict[int, RenderResult] = {}
    labels = _layout_chunk(template, items, model, store, now, layout_errors)
    # Errors in input order, then the draw errors (as when products were laid out one by one).
    results: dict[int, RenderResult] = dict(sorted(layout_errors.items()))
    # Every QR code of the chunk in one call to the batch encoder (fills qr_matrix's cache).
    qr_matrices([(el.data, el.ecc) for _, _, label in labels for el in label.elements
                 if isinstance(el, QR)])

    # Labels are grouped by background and first element (a template's promotion branch
    # typically changes its first, static element), and each group gets its own prefix.
    groups: dict[tuple[str, Element | None], list[tuple[int, str, Label]]] = {}
    for entry in labels:
        els = entry[2].elements
        groups.setdefault((entry[2].background, els[0] if els else None), []).append(entry)

    drawn: list[tuple[int, str, np.ndarray]] = []
    for (background, _), group in groups.items():
        prefix = common_prefix([label for _, _, label in group])
        try:
            base = base_canvas(model, background, prefix, images)
        except ValueError as exc:  # a shared element cannot be drawn: draw one by one
            log.warning("template %s: static prefix cannot be drawn (%s); drawing per product",
                        template.name, exc)
            prefix, base = (), base_canvas(model, background, (), images)
        skip = len(prefix)
        for index, sku, label in group:
            rest = label if skip == 0 else Label(label.model, label.background, label.elements[skip:])
            try:
                drawn.append((index, sku, draw_label(rest, images=images, base=base)))
            except ValueError as exc:  # DrawError, CodeError, LayoutError: this product only
                results[index] = RenderResult(index, sku, model.name,
                                              error=f"{template.name}: draw error: {exc}")
            except MemoryError:  # the batch's budget: render.isolate bisects
                raise TemplateLimit("memory", template.name, None) from None
            except Exception as exc:  # noqa: BLE001 - the per-product boundary: never stop a batch
                log.exception("template %s: unexpected error drawing product %s", template.name, sku)
                results[index] = RenderResult(
                    index, sku, model.name,
                    error=f"{template.name}: internal draw error: {type(exc).__name__}: {exc}")

    if drawn:
        stack = np.stack([ind for _, _, ind in drawn])
        framebuffers = to_framebuffers(stack, model)
        for (index, sku, indices), fb in zip(drawn, framebuffers):
            payload = encode_payload(fb)
            results[index] = RenderResult(
                index, sku, model.name, framebuffer=fb, payload=payload, hash=payload.hash,
                indices=indices if keep_indices else None,
            )
    failed = [r for r in results.values() if r.error is not None]
    if failed:
        log.warning("template %s: %d of %d products failed (first: %s)", template.name,
                    len(failed), len(items), failed[0].error)
    return [results[index] for index, _ in items]


def _resolve_model(template: Template, model: str | None) -> LabelModel:
    name = model or template.info.model
    if name not in template.info.models:
        raise TemplateError(template.name, None, "model",
                            f"label model {name!r} is not one the template declares "
                            f"({', '.join(template.info.models)})")
    return get_model(name)


def iter_render(
    template: Template,
    products: Iterable[Mapping[str, Any] | Product],
    *,
    model: str | None = None,
    store: Store | None = None,
    images: ImageLoader | None = None,
    now: datetime | None = None,
    chunk: int = DEFAULT_CHUNK,
    keep_indices: bool = False,
) -> Iterator[RenderResult]:
    """Render products lazily, `chunk` at a time, yielding results in input order.

    `model` defaults to the template's first declared model (another model must be one
    the template declares, else `TemplateError` before anything is rendered); `now` (UTC)
    decides which promotions run, default the current time, fixed for the whole batch.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    label_model = _resolve_model(template, model)
    store = store or Store()
    when = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
    pending: list[tuple[int, Any]] = []
    for index, record in enumerate(products):
        pending.append((index, record))
        if len(pending) >= chunk:
            yield from _render_chunk(template, pending, label_model, store, images, when, keep_indices)
            pending = []
    if pending:
        yield from _render_chunk(template, pending, label_model, store, images, when, keep_indices)


def render_batch(
    template: Template,
    products: Iterable[Mapping[str, Any] | Product],
    *,
    model: str | None = None,
    store: Store | None = None,
    images: ImageLoader | None = None,
    now: datetime | None = None,
    chunk: int = DEFAULT_CHUNK,
    keep_indices: bool = False,
) -> list[RenderResult]:
    """Render all products (see `iter_render`) and return the results in input order."""
    return list(iter_render(template, products, model=model, store=store, images=images,
                            now=now, chunk=chunk, keep_indices=keep_indices))
