"""The server reads no file a template or a POS names: `<image src>` and the POS `image` field
take ``sample:`` images only (uploads through the API are still to come), however the path is
spelt; anything else is drawn as the missing-image placeholder. The CLI renderer, which runs a user's own templates on their own machine, keeps reading
files inside the data file's folder."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image as PILImage

from render.samples import SampleError, image_resolver
from tests.test_api_schema import ApiClient, api  # noqa: F401  (fixture)

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


def test_the_cli_resolver_stays_inside_its_folder(secret: Path, tmp_path: Path) -> None:
    inside = image_resolver(tmp_path)
    assert inside(secret.name).size == (50, 50)
    outside = image_resolver(tmp_path / "sub")
    (tmp_path / "sub").mkdir()
    with pytest.raises(SampleError, match="outside"):
        outside(f"../{secret.name}")


async def test_a_preview_cannot_show_a_file_of_the_server(api: ApiClient, secret: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    """A refused image is drawn as the placeholder a missing image gets: the picture is the
    same whatever the path names, so nothing of the file reaches the preview."""
    async def preview(src: str) -> bytes:
        reply = await api.call("POST", "/api/v1/templates/preview", role="merchandiser",
                               json={"source": _SOURCE.replace("SRC", src)})
        assert reply.status == 200 and reply.headers["Content-Type"] == "image/png", (src, reply.body[:200])
        return reply.body

    placeholder = await preview("no-such-image")
    for src in _spellings(secret):
        assert await preview(src) == placeholder, src
    assert "expected a sample: image" in caplog.text
    assert await preview("sample:fruit:red") != placeholder
