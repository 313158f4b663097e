"""The batch API: isolation of errors, static-prefix caching, chunked streaming, payloads."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pytest

from firmware_proto.image import decompress, image_hash
from firmware_proto.models import get_model
from render.batch import common_prefix, iter_render, render_batch
from render.canvas import draw_label
from render.context import Product, Store, build_context
from render.layout import QR, Barcode, Box, Label, Line, Rect, Text
from render.pack import to_framebuffer
from render.palette import to_rgb_image
from render.samples import image_resolver, sample_catalogue
from render.templates import TemplateError, load_template, shipped_templates, template_from_string

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)
STORE = Store("Sklep Testowy", "PLN")


def _records(n: int) -> list[dict[str, Any]]:
    base = sample_catalogue(NOW)
    return [dict(base[i % len(base)], sku=f"S{i:05d}") for i in range(n)]


def test_common_prefix() -> None:
    a = Rect(Box(0, 0, 10, 10), fill="red")
    b = Line(0, 0, 5, 5)
    c = Text(Box(0, 0, 9, 9), "x")
    d = Text(Box(0, 0, 9, 9), "y")
    assert common_prefix([]) == ()
    assert common_prefix([Label("m", "white", (a, b, c))]) == (a, b, c)
    assert common_prefix([Label("m", "white", (a, b, c)), Label("m", "white", (a, b, d))]) == (a, b)
    assert common_prefix([Label("m", "white", (a, b)), Label("m", "white", (a, b, d))]) == (a, b)
    assert common_prefix([Label("m", "white", (a,)), Label("m", "white", (b, a))]) == ()


@pytest.mark.parametrize("template", [t.name for t in shipped_templates()])
def test_static_prefix_cache_is_byte_identical_to_drawing_everything(template: str) -> None:
    tmpl = load_template(template)
    model = get_model(tmpl.info.model)
    images = image_resolver()
    records = _records(24)
    results = render_batch(tmpl, records, store=STORE, images=images, now=NOW, keep_indices=True, chunk=10)
    assert [r.sku for r in results] == [r["sku"] for r in records]
    for rec, res in zip(records, results):
        assert res.error is None, res.error
        label = tmpl.render_label(build_context(Product.from_record(rec), model, STORE, NOW))
        direct = draw_label(label, images=images)
        assert res.indices is not None
        assert np.array_equal(res.indices, direct)
        assert res.framebuffer == to_framebuffer(direct, model)


def test_payload_hash_and_compression_round_trip() -> None:
    tmpl = load_template("shelf-2.9")
    model = get_model("2.9-bwry")
    results = render_batch(tmpl, _records(5), store=STORE, now=NOW)
    for r in results:
        assert r.ok and r.payload is not None and r.framebuffer is not None
        assert r.indices is None  # previews only when asked for
        assert r.hash == r.payload.hash == image_hash(r.framebuffer)
        assert decompress(int(r.payload.format), r.payload.data, r.payload.raw_size) == r.framebuffer
        assert len(r.framebuffer) == model.max_image_bytes
        assert r.model == "2.9-bwry"
    assert len({r.hash for r in results}) == 5  # distinct products, distinct images


def test_one_products_error_never_stops_the_batch() -> None:
    tmpl = template_from_string(
        "{#- esl-template\nmodel: 2.9-bwry\n-#}\n"
        '<label model="{{ label.model }}">\n'
        '  <rect x="0" y="0" w="296" h="20" fill="red"/>\n'
        '  <text x="0" y="20" w="296" h="20">{{ product.name }}</text>\n'
        '  <text x="0" y="40" w="296" h="20">{{ 100 / price }}</text>\n'
        '{% if product.url %}  <qr x="0" y="60" size="21">{{ product.url }}</qr>\n{% endif %}'
        "</label>\n", "fragile")
    records: list[Any] = [
        {"sku": "ok1", "name": "Masło", "price": "7.49"},
        {"sku": "neg", "name": "Minus", "price": "-1"},
        {"sku": "zero", "name": "Gratis", "price": "0"},  # template divides by the price
        {"sku": "bigqr", "price": "1", "url": "https://example.com/" + "q" * 300},  # too big for 21 px
        "not a record",
        {"sku": "nan", "price": "NaN"},
        {"sku": "emoji", "name": "Jabłka 🍎 " + "x" * 300, "price": "2.50"},
        {"sku": "ok2", "name": "Ser", "price": "5.99"},
    ]
    results = render_batch(tmpl, records, now=NOW, chunk=3)
    by_sku = {r.sku: r for r in results}
    assert [r.index for r in results] == list(range(len(records)))
    assert by_sku["ok1"].ok and by_sku["ok2"].ok and by_sku["emoji"].ok
    assert "price='-1'" in (by_sku["neg"].error or "")
    assert "fragile:7: runtime error" in (by_sku["zero"].error or "")
    assert "draw error" in (by_sku["bigqr"].error or "")
    assert "record" in (by_sku["#5"].error or "")
    assert "price='NaN'" in (by_sku["nan"].error or "")
    for r in results:
        assert (r.error is None) == (r.payload is not None)


def test_chunked_iteration_is_lazy_and_matches_one_batch() -> None:
    tmpl = load_template("shelf-2.9")
    records = _records(11)
    consumed = 0

    def products() -> Iterator[dict[str, Any]]:
        nonlocal consumed
        for r in records:
            consumed += 1
            yield r

    stream = iter_render(tmpl, products(), store=STORE, now=NOW, chunk=4)
    first = next(stream)
    assert consumed == 4  # only the first chunk was read
    rest = list(stream)
    assert consumed == 11
    whole = render_batch(tmpl, records, store=STORE, now=NOW, chunk=256)
    assert [r.hash for r in [first, *rest]] == [r.hash for r in whole]
    with pytest.raises(ValueError, match="chunk"):
        list(iter_render(tmpl, records, chunk=0))


def test_model_must_be_one_the_template_declares() -> None:
    with pytest.raises(TemplateError, match="not one the template declares"):
        render_batch(load_template("shelf-2.9"), _records(1), model="7.5-bwry")


@pytest.mark.parametrize("template", [t.name for t in shipped_templates()])
@pytest.mark.parametrize("drop", ["ean", "url"])
def test_every_code_a_shipped_template_draws_decodes(template: str, drop: str) -> None:
    zxingcpp = pytest.importorskip("zxingcpp")
    tmpl = load_template(template)
    model = get_model(tmpl.info.model)
    recs = [dict(r) for r in _records(4)]
    for r in recs:
        r.pop(drop)
    results = render_batch(tmpl, recs, store=STORE, now=NOW, keep_indices=True, images=image_resolver())
    for rec, result in zip(recs, results):
        label = tmpl.render_label(build_context(Product.from_record(rec), model, STORE, NOW))
        expected = sorted([e.data for e in label.elements if isinstance(e, QR)]
                          + [e.digits for e in label.elements if isinstance(e, Barcode)])
        assert expected, "every shipped template shows a code when the product has one"
        assert result.indices is not None
        rgb = np.kron(to_rgb_image(result.indices), np.ones((2, 2, 1), dtype=np.uint8))
        found = zxingcpp.read_barcodes(rgb, formats=(zxingcpp.BarcodeFormat.QRCode, zxingcpp.BarcodeFormat.EAN13))
        assert sorted(f.text for f in found) == expected


@pytest.mark.parametrize("template", [t.name for t in shipped_templates()])
def test_shipped_templates_put_static_artwork_first(template: str) -> None:
    """Templates are written so the static-prefix cache has something to share: within the
    promotion and the regular labels, the first elements are identical for every product."""
    tmpl = load_template(template)
    model = get_model(tmpl.info.model)
    labels = [tmpl.render_label(build_context(Product.from_record(r), model, STORE, NOW))
              for r in _records(22)]
    groups: dict[object, list[Label]] = {}
    for label in labels:
        groups.setdefault(label.elements[0], []).append(label)
    assert 1 <= len(groups) <= 2
    for group in groups.values():
        assert len(common_prefix(group)) >= 1


def _one_by_one(tmpl: Any, records: list[Any], model: str) -> list[tuple[str, object]]:
    """The reference: each product laid out on its own, start to finish."""
    out: list[tuple[str, object]] = []
    m = get_model(model)
    for record in records:
        try:
            product = record if isinstance(record, Product) else Product.from_record(record)
            label = tmpl.render_label(build_context(product, m, STORE, NOW))
            if label.model != model:
                raise TemplateError(tmpl.name, None, "model", "other model")
            out.append(("label", label))
        except ValueError as exc:  # ProductError, TemplateError
            out.append(("error", str(exc)))
    return out


def test_layout_stage_by_stage_matches_one_product_at_a_time() -> None:
    """`render_batch` lays a chunk out stage by stage; every product must still get the label
    (hence the pixels) or the error it gets on its own, whichever stage it fails in."""
    tmpl = template_from_string(
        "{#- esl-template\nmodel: 2.9-bwry\n-#}\n"
        '<label model="{{ label.model }}">\n'
        '  <rect x="0" y="0" w="296" h="20" fill="red"/>\n'
        '  <text x="0" y="20" w="296" h="20">{{ product.name }}</text>\n'
        "{% if product.name == 'markup' %}  <blink/>\n{% endif %}"
        "{% if product.name == 'runtime' %}{{ 1 // 0 }}{% endif %}"
        "{% if product.name == 'undefined' %}{{ product.nmae }}{% endif %}"
        '  <price x="100" y="40" w="196" h="60">{{ price }}</price>\n'
        "</label>\n", "staged")
    records: list[Any] = [
        {"sku": "a", "name": "Masło", "price": "7.49"}, {"sku": "b", "price": "-1"},
        {"sku": "c", "name": "markup", "price": "1"}, {"sku": "d", "name": "runtime", "price": "1"},
        "not a record", {"sku": "e", "name": "undefined", "price": "1"},
        Product.from_record({"sku": "f", "name": "M&M's <mini>", "price": "2"}),
        {"sku": "g", "name": "Ser", "price": "5.99", "ean": "5901234123450"},
        {"sku": "h", "name": "Ser", "price": "5.99"},
    ]
    expected = _one_by_one(tmpl, records, "2.9-bwry")
    assert [kind for kind, _ in expected] == ["label", "error", "error", "error", "error", "error",
                                              "label", "error", "label"]
    for chunk in (1, 2, 4, 256):
        results = render_batch(tmpl, records, now=NOW, store=STORE, chunk=chunk, keep_indices=True)
        assert [r.index for r in results] == list(range(len(records)))
        for r, (kind, value) in zip(results, expected):
            if kind == "error":
                assert r.error == value
            else:
                assert r.ok and r.indices is not None
                assert np.array_equal(r.indices, draw_label(value))  # type: ignore[arg-type]
    # The shipped templates over the sample catalogue, promotions and all.
    for shipped in shipped_templates():
        records = sample_catalogue(NOW)
        results = render_batch(shipped, records, now=NOW, store=STORE, images=image_resolver(),
                               keep_indices=True)
        for r, (kind, value) in zip(results, _one_by_one(shipped, records, shipped.info.model)):
            assert kind == "label" and r.ok and r.indices is not None
            assert np.array_equal(r.indices, draw_label(value, images=image_resolver()))  # type: ignore[arg-type]
