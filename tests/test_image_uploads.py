"""Images uploaded through the API, and the only images a server draws besides ``sample:``.

Over real HTTP to a real server: an upload is checked from its header before any pixel is
decoded (a PNG bomb of a few tens of kilobytes is refused), stored as the server's own PNG
under its SHA-256, and then drawn where a template's ``<image src>`` or a product's
``image`` names it (by name or ``sha256:``), in a preview and on a label. Everything else a
template or a POS may name (an absolute path, ``..``, a ``file:`` URL, a symlink to a secret
in the data directory, ``/dev/zero``, a FIFO) is refused and never opened: a FIFO would
block whoever opened it, so every call here is bounded in time and the test would fail
instead of hanging.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from PIL import Image as PILImage

from eslserver.auth import create_token
from eslserver.config import load_settings
from eslserver.render_worker import check_samples
from eslserver.server import Server

from render.image_decode import MAX_PIXELS, UploadError, normalise, normalise_job
from render.image_refs import ImageRefError, ImageSet, check_literal_srcs, image_loader, literal_srcs, parse_ref
from render.isolate import LimitedPool, ProcessLimits
from render.palette import PANEL_RGB, RED, YELLOW
from render.templates import TemplateError
from tests.test_api_schema import ApiClient, Reply, add_label, add_products, api, wait_rendered  # noqa: F401

RED_RGB = tuple(int(v) for v in PANEL_RGB[RED])
YELLOW_RGB = tuple(int(v) for v in PANEL_RGB[YELLOW])
_LIMIT_S = 30.0  # a call that opened a FIFO would block past this


def _png(colour: tuple[int, ...] = RED_RGB, size: tuple[int, int] = (64, 64), mode: str = "RGB",
         fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    PILImage.new(mode, size, colour if mode != "1" else 1).save(buf, format=fmt)
    return buf.getvalue()


def _source(src: str, *, fit: str = "contain") -> str:
    return ('{#- esl-template\nmodel: 2.9-bwry\n-#}\n<label model="{{ label.model }}" background="white">\n'
            f'<image x="0" y="0" w="100" h="100" src="{src}" fit="{fit}"/>\n</label>\n')


def _pixel(png: bytes, xy: tuple[int, int] = (50, 50)) -> tuple[int, ...]:
    with PILImage.open(io.BytesIO(png)) as im:
        return tuple(im.convert("RGB").getpixel(xy))  # type: ignore[arg-type]


async def _call(api: ApiClient, method: str, path: str, **kw: Any) -> Reply:
    return await asyncio.wait_for(api.call(method, path, **kw), _LIMIT_S)


async def _upload(api: ApiClient, data: bytes, *, media: str = "image/png", name: str | None = None,
                  role: str | None = "merchandiser", check: bool = True) -> Reply:
    return await _call(api, "POST", "/api/v1/images", role=role, data=data, headers={"Content-Type": media},
                       params={"name": name} if name is not None else None, check=check)


async def _preview(api: ApiClient, source: str, sku: str | None = None) -> Reply:
    body: dict[str, Any] = {"source": source}
    if sku is not None:
        body["sku"] = sku
    return await _call(api, "POST", "/api/v1/templates/preview", role="merchandiser", json=body)


@pytest.fixture
def hostile(api: ApiClient) -> list[str]:
    """Spellings of files on the server: a secret PNG in the data directory (red, so it
    would show), a symlink to it, ``..``, a ``file:`` URL, ``/dev/zero`` and a FIFO."""
    data = Path(api.server.settings.data_dir)
    secret = data / "secret.png"
    secret.write_bytes(_png(RED_RGB, (50, 50)))
    (data / "logo.png").symlink_to(secret)
    fifo = data / "pipe.png"
    os.mkfifo(fifo)
    return [str(secret), str(data / "logo.png"), f"{data}/../{data.name}/secret.png", f"../../../../../..{secret}",
            f"file://{secret}", "/dev/zero", str(fifo), f"http://127.0.0.1:1/{secret.name}", "C:\\secret.png"]


# --- uploading ------------------------------------------------------------------------------------

async def test_an_upload_is_kept_as_the_servers_own_png_under_its_digest(api: ApiClient) -> None:
    jpeg = _png((10, 200, 30), (2000, 1000), fmt="JPEG")
    reply = await _upload(api, jpeg, media="image/jpeg", name="shelf-photo")
    assert reply.status == 201, reply.json
    image = reply.json
    assert image["name"] == "shelf-photo" and image["media_type"] == "image/jpeg"
    assert (image["width"], image["height"]) == (1024, 512)  # scaled to at most 1024 a side
    assert image["src"] == f"sha256:{image['digest']}" and image["created_by"] == "test-merchandiser"
    stored = await _call(api, "GET", f"/api/v1/images/{image['digest']}", role="pos")
    assert stored.status == 200 and stored.headers["Content-Type"] == "image/png"
    assert len(stored.body) == image["bytes"] and stored.body != jpeg
    assert hashlib.sha256(stored.body).hexdigest() == image["digest"]  # what is stored is what we made
    again = await _upload(api, jpeg, media="image/jpeg")
    assert again.status == 200 and again.json == image
    listed = await _call(api, "GET", "/api/v1/images", role="tech")
    assert listed.json["total"] == 1 and listed.json["items"] == [image]
    audit = await _call(api, "GET", "/api/v1/audit", params={"action": "image.upload"})
    assert [(e["target"], e["after"]["name"]) for e in audit.json["items"]] == [(image["src"], "shelf-photo")]


async def test_names_are_unique_and_never_silently_moved(api: ApiClient) -> None:
    red = (await _upload(api, _png(RED_RGB), name="logo")).json
    reply = await _upload(api, _png(YELLOW_RGB), name="logo")
    assert reply.status == 409 and reply.error == "name_taken" and reply.json["field"] == "name"
    reply = await _upload(api, _png(RED_RGB), name="logo-2")
    assert reply.status == 409 and reply.error == "image_exists" and "'logo'" in reply.json["detail"]
    unnamed = (await _upload(api, _png(YELLOW_RGB))).json
    assert unnamed["name"] is None
    named = await _upload(api, _png(YELLOW_RGB), name="sun")
    assert named.status == 200 and named.json["name"] == "sun" and named.json["digest"] == unnamed["digest"]
    for bad in ("../x", "/etc/x", ".hidden", "Logo", "a" * 65, "x y", "sha256:" + "0" * 64):
        reply = await _upload(api, _png(RED_RGB), name=bad)
        assert reply.status == 400 and reply.json["field"] == "name", (bad, reply.json)
    assert red["name"] == "logo"


async def test_who_may_upload_and_delete(api: ApiClient) -> None:
    reply = await _upload(api, _png(), role="pos")
    assert reply.status == 403 and reply.error == "forbidden"
    reply = await _upload(api, _png(), role=None)
    assert reply.status == 401
    digest = (await _upload(api, _png(), role="admin")).json["digest"]
    reply = await _call(api, "DELETE", f"/api/v1/images/{digest}", role="tech")
    assert reply.status == 403
    assert (await _call(api, "GET", f"/api/v1/images/{digest}", role=None)).status == 401
    reply = await _call(api, "DELETE", f"/api/v1/images/{digest}", role="merchandiser")
    assert reply.status == 200 and reply.json["digest"] == digest
    assert (await _call(api, "GET", f"/api/v1/images/{digest}")).status == 404
    assert (await _call(api, "DELETE", f"/api/v1/images/{digest}")).status == 404
    assert (await _call(api, "GET", "/api/v1/images/not-a-digest")).status == 400
    audit = await _call(api, "GET", "/api/v1/audit", params={"action": "image.delete"})
    assert [(e["actor"], e["target"]) for e in audit.json["items"]] == [("test-merchandiser", f"sha256:{digest}")]


async def test_a_png_bomb_and_broken_files_are_refused_naming_the_body(api: ApiClient) -> None:
    bomb = _png(mode="1", size=(20000, 20000))  # 400 Mpx of one colour: 1.2 GB as RGB
    assert len(bomb) < 100_000
    reply = await _upload(api, bomb)
    assert reply.status == 422 and reply.error == "image_too_large" and reply.json["field"] == "body"
    assert "pixels" in reply.json["detail"]
    wide = _png(mode="1", size=(5000, 10))  # few pixels, but a side over the limit
    reply = await _upload(api, wide)
    assert reply.status == 422 and reply.error == "image_too_large" and "5000×10" in reply.json["detail"]
    noise = io.BytesIO()
    PILImage.fromarray(np.random.default_rng(3).integers(0, 255, (200, 200, 3), dtype=np.uint8)).save(noise, "PNG")
    for data, media, code in ((noise.getvalue()[:3000], "image/png", "invalid_image"),  # truncated
                              (b"\x89PNG\r\n\x1a\n" + os.urandom(500), "image/png", "invalid_image"),
                              (b"GIF89a but not really", "image/gif", "invalid_image"),
                              (_png(fmt="JPEG"), "image/png", "invalid_image"),  # not what it says it is
                              (b"", "image/webp", "invalid_image")):
        reply = await _upload(api, data, media=media)
        assert reply.status == 422 and reply.error == code and reply.json["field"] == "body", (media, reply.json)
    reply = await _upload(api, _png(), media="text/plain")
    assert reply.status == 415


    async def chunks() -> AsyncIterator[bytes]:  # streamed, no Content-Length: the limit holds while reading
        for _ in range(5):
            yield b"\0" * (1024 * 1024)

    reply = await _call(api, "POST", "/api/v1/images", role="merchandiser", data=chunks(),  # type: ignore[arg-type]
                        headers={"Content-Type": "image/png"})
    assert reply.status == 413 and reply.json["detail"] == "body: expected at most 4194304 bytes"
    assert (await _call(api, "GET", "/api/v1/images")).json["total"] == 0


def test_a_bomb_is_refused_inside_a_render_process_too() -> None:
    """The server decodes uploads in its limited render processes: the refusal crosses the
    process boundary whole (code and reason), and a good image comes back as the PNG kept."""
    pool = LimitedPool(1, ProcessLimits(cpu_s=20, memory_mb=512, timeout_s=30), name="upload-test")
    try:
        with pytest.raises(UploadError) as refused:
            pool.call(normalise_job, (_png(mode="1", size=(20000, 20000)), "image/png"))
        assert refused.value.code == "image_too_large"
        made = pool.call(normalise_job, (_png(RED_RGB, (40, 30)), "image/png"))
        assert (made.width, made.height) == (40, 30) and made == normalise(_png(RED_RGB, (40, 30)), "image/png")
    finally:
        pool.close()


def test_the_header_is_checked_before_a_pixel_is_decoded() -> None:
    # 4096 x 4096 = 16.8 Mpx: each side is allowed, the product is not
    with pytest.raises(UploadError, match=f"{MAX_PIXELS} pixels"):
        normalise(_png(mode="1", size=(4096, 4096)), "image/png")
    kept = normalise(_png((0, 0, 0, 0), (20, 20), mode="RGBA"), "image/png")
    assert PILImage.open(io.BytesIO(kept.png)).mode == "RGBA"  # transparency kept
    kept = normalise(_png((9, 9, 9, 255), (20, 20), mode="RGBA"), "image/png")
    assert PILImage.open(io.BytesIO(kept.png)).mode == "RGB"  # an opaque alpha is dropped


# --- drawing uploads ------------------------------------------------------------------------------

async def test_an_upload_shows_in_a_preview_by_name_and_by_digest(api: ApiClient) -> None:
    image = (await _upload(api, _png(RED_RGB), name="logo-red")).json
    for src in ("logo-red", image["src"]):
        reply = await _preview(api, _source(src))
        assert reply.status == 200, reply.json
        assert _pixel(reply.body) == RED_RGB, src


async def test_a_name_given_to_other_pixels_is_drawn_with_them(api: ApiClient) -> None:
    """Reduced pictures are cached by src in the render processes: deleting an image and
    giving its name to another must not leave the old picture under the name."""
    red = (await _upload(api, _png(RED_RGB), name="logo")).json
    assert _pixel((await _preview(api, _source("logo"))).body) == RED_RGB
    await _call(api, "DELETE", f"/api/v1/images/{red['digest']}")
    await _upload(api, _png(YELLOW_RGB), name="logo")
    assert _pixel((await _preview(api, _source("logo"))).body) == YELLOW_RGB


async def test_a_label_whose_product_names_an_upload_shows_it(api: ApiClient) -> None:
    await _upload(api, _png(YELLOW_RGB), name="sun")
    reply = await _call(api, "PUT", "/api/v1/templates/pic", role="merchandiser",
                        json={"source": _source("{{ product.image }}", fit="stretch")})
    assert reply.status == 200, reply.json
    await add_products(api, {"sku": "P1", "price": "1.00", "name": "Sun", "image": "sun"})
    mac = "AA:BB:CC:00:01:01"
    await add_label(api, mac, "P1", template="pic")
    await asyncio.wait_for(wait_rendered(api, mac), _LIMIT_S)
    reply = await _call(api, "GET", f"/api/v1/labels/{mac}/image/expected.png")
    assert _pixel(reply.body) == YELLOW_RGB


async def test_a_literal_src_must_name_an_upload_or_a_sample(api: ApiClient, hostile: list[str]) -> None:
    for src in [*hostile, "no-such-image", "sha256:" + "ab" * 32, "sample:unicorn:red"]:
        for reply in (await _preview(api, _source(src)),
                      await _call(api, "PUT", "/api/v1/templates/bad", role="merchandiser",
                                  json={"source": _source(src)})):
            assert reply.status == 422 and reply.json["kind"] == "markup" and reply.json["line"] == 5, (src, reply.json)
            assert "image src" in reply.json["detail"], reply.json
        assert src[:40] in reply.json["detail"] or repr(src)[1:40] in reply.json["detail"], (src, reply.json)
    assert (await _call(api, "GET", "/api/v1/templates/bad")).status == 404


async def test_what_a_product_names_at_render_time_is_never_read(api: ApiClient, hostile: list[str]) -> None:
    """A src decided by the data (``{{ product.attributes.pic }}``): no file is opened (the
    FIFO would block), and the picture is the placeholder any missing image gets."""
    await add_products(api, *({"sku": f"H{i}", "price": "1.00", "attributes": {"pic": src}}
                              for i, src in enumerate(hostile)), {"sku": "N", "price": "1.00",
                                                                   "attributes": {"pic": "no-such-image"}})
    source = _source("{{ product.attributes.pic }}")
    placeholder = (await _preview(api, source, "N")).body
    for i, src in enumerate(hostile):
        reply = await _preview(api, source, f"H{i}")
        assert reply.status == 200 and reply.body == placeholder, src


async def test_a_pos_image_must_name_an_upload_a_digest_or_a_sample(api: ApiClient, hostile: list[str]) -> None:
    image = (await _upload(api, _png(), name="logo-red")).json
    bad = [*hostile, "no-such-image", "sha256:" + "cd" * 32]
    reply = await _call(api, "POST", "/api/v1/prices", role="pos",
                        json=[{"sku": f"X{i}", "price": "1.00", "image": src} for i, src in enumerate(bad)])
    assert reply.status == 400 and len(reply.json["errors"]) == len(bad)
    for error, src in zip(reply.json["errors"], bad, strict=True):
        assert (error["field"], error["value"]) == ("image", src), error
    assert "no image was uploaded with this name" in reply.json["errors"][-2]["detail"]
    reply = await _call(api, "POST", "/api/v1/prices", role="pos",
                        json=[{"sku": "A1", "price": "1.00", "attributes": {"image": "/etc/passwd"}}])
    assert reply.json["errors"][0]["field"] == "attributes.image"
    good = ["logo-red", image["src"], "sample:bottle:green"]
    reply = await _call(api, "POST", "/api/v1/prices", role="pos",
                        json=[{"sku": f"G{i}", "price": "1.00", "image": src} for i, src in enumerate(good)])
    assert reply.status == 200 and not reply.json["errors"], reply.json
    await _call(api, "DELETE", f"/api/v1/images/{image['digest']}")
    reply = await _call(api, "POST", "/api/v1/prices", role="pos", json={"sku": "G0", "price": "1.10", "image": "logo-red"})
    assert reply.status == 400 and reply.json["errors"][0]["field"] == "image"
    reply = await _preview(api, _source("logo-red"))
    assert reply.status == 422 and "no image was uploaded with this name" in reply.json["detail"]


async def test_uploads_and_labels_in_real_render_processes(tmp_path: Path) -> None:
    """As `esl serve` runs: uploads are decoded in the limited render processes, and preview
    and pipeline jobs carry the PNGs they draw across the process boundary."""
    settings = load_settings(environ={}, overrides={"data_dir": tmp_path / "data", "http_port": 0,
                                                    "render_workers": 1, "debounce_ms": 5})
    async with Server(settings, mqtt=False) as server, aiohttp.ClientSession() as session:
        tokens = {role: await create_token(server.db, role, f"test-{role}") for role in ("merchandiser", "tech", "pos",
                                                                                         "admin")}
        live = ApiClient(f"http://127.0.0.1:{server.http_port}", session, server, tokens)
        reply = await _upload(live, _png(mode="1", size=(20000, 20000)))
        assert reply.status == 422 and reply.error == "image_too_large"
        assert (await _upload(live, _png(YELLOW_RGB), name="sun")).status == 201
        assert _pixel((await _preview(live, _source("sun"))).body) == YELLOW_RGB
        await _call(live, "PUT", "/api/v1/templates/pic", role="merchandiser",
                    json={"source": _source("{{ product.image }}", fit="stretch")})
        await add_products(live, {"sku": "P1", "price": "1.00", "image": "sun"})
        mac = "AA:BB:CC:00:01:02"
        await add_label(live, mac, "P1", template="pic")
        await asyncio.wait_for(wait_rendered(live, mac), 120)
        assert _pixel((await _call(live, "GET", f"/api/v1/labels/{mac}/image/expected.png")).body) == YELLOW_RGB


def test_templates_check_refuses_a_path_with_its_line(tmp_path: Path) -> None:
    """`esl templates check` runs without a server: a path or URL is refused with its line;
    a name or digest (which only a server can look up) is drawn as the placeholder."""
    bad = tmp_path / "bad.j2"
    bad.write_text(_source("/etc/passwd"), encoding="utf-8")
    with pytest.raises(TemplateError) as refused:
        check_samples((str(bad), datetime.now(timezone.utc)))
    assert refused.value.line == 5 and "'/etc/passwd'" in str(refused.value)
    named = tmp_path / "named.j2"
    named.write_text(_source("logo-bio"), encoding="utf-8")
    assert all(not c.errors for c in check_samples((str(named), datetime.now(timezone.utc))))


# --- the reference forms, without a server ------------------------------------------------------

@pytest.mark.parametrize(("src", "kind"), [
    ("sample:fruit:red", "sample"), ("sample:bottle", "sample"), ("sha256:" + "A" * 64, "digest"),
    ("logo-bio", "name"), ("logo.png", "name"), ("0", "name"),
    ("/etc/passwd", None), ("../x", None), ("..", None), (".x", None), ("file:///x", None), ("http://x/y", None),
    ("Logo", None), ("a/b", None), ("sha256:abc", None), ("sample:fruit:red:x", None), ("sample:../x", None),
    ("", None), ("a" * 65, None), ("logo\n", None),
])
def test_reference_forms(src: str, kind: str | None) -> None:
    if kind is None:
        with pytest.raises(ImageRefError, match="image src"):
            parse_ref(src)
    else:
        assert parse_ref(src).kind == kind
    assert parse_ref("sha256:" + "A" * 64).key == "sha256:" + "a" * 64


def test_literal_srcs_are_found_with_their_lines() -> None:
    source = ('{#- esl-template\nmodel: 2.9-bwry\n<image src="/in/a/comment"/>\n-#}\n<label model="m">\n'
              "<image x='0' y='0' w='1' h='1' src='logo'/>\n<image x=\"0\"\n  src=\"{{ product.image }}\"/>\n"
              '<image x="0" y="0" w="1" h="1"\n   src="/etc/x.png"/>\n</label>\n')
    assert literal_srcs(source) == ((6, "logo"), (10, "/etc/x.png"))
    with pytest.raises(TemplateError) as refused:
        check_literal_srcs(source, "t")
    assert refused.value.line == 10 and refused.value.kind == "markup"
    assert "'/etc/x.png': not an uploaded image, a sha256: digest or a sample: image" in str(refused.value)


def test_a_render_process_draws_only_what_its_job_carries() -> None:
    png = normalise(_png(RED_RGB, (8, 8)), "image/png")
    load = image_loader(ImageSet({"logo": png.digest, f"sha256:{png.digest}": png.digest}, {png.digest: png.png}))
    assert load("logo").getpixel((4, 4)) == RED_RGB
    assert load(f"sha256:{png.digest.upper()}").size == (8, 8)
    for src in ("other", "/dev/zero", f"sha256:{'0' * 64}"):
        with pytest.raises(ImageRefError):
            load(src)
