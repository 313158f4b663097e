"""The server reads no file a template or a POS names: `<image src>` and the POS `image` field
take ``sample:`` images, images uploaded through the API (by name or ``sha256:`` digest) and
nothing else, however a path is spelt. A src written out in a template is refused with its
line; one the data decides at render time is drawn as the missing-image placeholder. The CLI
renderer, which runs a user's own templates on their own machine, keeps reading files inside
the data file's folder. (Uploads themselves, FIFOs and symlinks: tests/test_image_uploads.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image as PILImage

from render.image_refs import EMPTY_IMAGES, ImageRefError, image_loader
from render.samples import SampleError, image_resolver
from tests.test_api_schema import ApiClient, add_products, api  # noqa: F401  (fixture)

_SOURCE = ('{#- esl-template\nmodel: 2.9-bwry\n-#}\n<label model="{{ label.model }}" background="white">\n'
           '<image x="0" y="0" w="100" h="100" src="SRC"/>\n</label>\n')


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "secret.png"
    PILImage.new("RGB", (50, 50), (255, 0, 0)).save(path)
    return path


def _spellings(secret: Path) -> list[str]:
    return [str(secret), f"file://{secret}", f"{secret.parent}/../{secret.parent.name}/{secret.name}",
            f"../../../../../../..{secret}", "/dev/zero", secret.name]


def test_a_server_resolver_reads_no_file(secret: Path) -> None:
    resolve = image_resolver(files=False)
    for src in _spellings(secret):
        with pytest.raises(SampleError, match="expected a sample: image"):
            resolve(src)
    assert resolve("sample:fruit:red").size[0] > 0
    load = image_loader(EMPTY_IMAGES)  # what the render processes of a server draw with
    for src in _spellings(secret):
        with pytest.raises(ImageRefError, match="not an uploaded image|no uploaded image has this name"):
            load(src)
    assert load("sample:fruit:red").size[0] > 0


def test_the_cli_resolver_stays_inside_its_folder(secret: Path, tmp_path: Path) -> None:
    inside = image_resolver(tmp_path)
    assert inside(secret.name).size == (50, 50)
    outside = image_resolver(tmp_path / "sub")
    (tmp_path / "sub").mkdir()
    with pytest.raises(SampleError, match="outside"):
        outside(f"../{secret.name}")


async def test_a_preview_cannot_show_a_file_of_the_server(api: ApiClient, secret: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    """Written out in the template, a path is the template's error, with its line; decided
    by the data, it is drawn as the placeholder a missing image gets: the picture is the same
    whatever the path names, so nothing of the file reaches the preview."""
    for src in _spellings(secret):
        reply = await api.call("POST", "/api/v1/templates/preview", role="merchandiser",
                               json={"source": _SOURCE.replace("SRC", src)})
        assert reply.status == 422 and reply.json["line"] == 5, (src, reply.json)
        assert "image src" in reply.json["detail"] and ("not an uploaded image" in reply.json["detail"]
                                                        or "no image was uploaded" in reply.json["detail"])
    await add_products(api, *({"sku": f"S{i}", "price": "1.00", "attributes": {"pic": src}}
                              for i, src in enumerate(["no-such-image", "sample:fruit:red", *_spellings(secret)])))

    async def preview(sku: str) -> bytes:
        reply = await api.call("POST", "/api/v1/templates/preview", role="merchandiser",
                               json={"source": _SOURCE.replace("SRC", "{{ product.attributes.pic }}"), "sku": sku})
        assert reply.status == 200 and reply.headers["Content-Type"] == "image/png", (sku, reply.body[:200])
        return reply.body

    placeholder = await preview("S0")
    for i, src in enumerate(_spellings(secret), start=2):
        assert await preview(f"S{i}") == placeholder, src
    assert "not an uploaded image" in caplog.text
    assert await preview("S1") != placeholder
