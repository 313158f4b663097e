"""Payloads of real labels: the smallest format is kept, and a label decodes it.

Payloads are compressed with zlib-ng and decompressed, as on a label, with plain zlib; this
checks both on every shipped template over the sample catalogue.
"""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from firmware_proto.image import ImageFormat, best_payload, compress, decompress
from render.batch import render_batch
from render.samples import image_resolver, sample_catalogue
from render.templates import shipped_templates

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize("template", shipped_templates(), ids=lambda t: t.name)
def test_payload_is_smallest_and_decodes_with_zlib(template, tmp_path) -> None:
    results = render_batch(template, sample_catalogue(NOW), images=image_resolver(tmp_path), now=NOW)
    assert results and all(r.error is None for r in results)
    for r in results:
        data, fmt = best_payload(r.framebuffer)
        sizes = {f: len(compress(f, r.framebuffer)) for f in ImageFormat}
        assert len(data) == min(sizes.values()), (r.sku, fmt, sizes)
        assert decompress(fmt, data, len(r.framebuffer)) == r.framebuffer
