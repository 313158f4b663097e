"""`esl render`, `esl templates list|check`, `esl samples` through typer's CliRunner."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from typer.testing import CliRunner

from eslserver.cli import app
from firmware_proto.image import ImageFormat, decompress
from firmware_proto.models import get_model
from render.palette import PANEL_RGB

runner = CliRunner()

PRODUCTS = [
    {"sku": "100", "name": "Masło Extra", "price": "7.49", "ean": "5901234123457",
     "unit": {"size": 200, "measure": "g"}},
    {"sku": "../evil/200", "name": "Kawa <b>&</b>", "price": 44.99, "url": "https://sklep.example/p/200"},
]


def _colours_of(png: Path) -> set[tuple[int, int, int]]:
    with PILImage.open(png) as im:
        arr = np.asarray(im.convert("RGB")).reshape(-1, 3)
    return {tuple(int(v) for v in c) for c in np.unique(arr, axis=0)}


def test_help_lists_the_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for cmd in ("render", "templates", "samples"):
        assert cmd in result.output


def test_render_json_writes_previews_and_payloads(tmp_path: Path) -> None:
    data = tmp_path / "products.json"
    data.write_text(json.dumps(PRODUCTS), encoding="utf-8")
    out, pay = tmp_path / "png", tmp_path / "bin"
    result = runner.invoke(app, ["render", "shelf-2.9", "--data", str(data), "--out", str(out),
                                 "--payload", str(pay)])
    assert result.exit_code == 0, result.output
    assert "2/2 labels" in result.stdout and "ms/label" in result.stdout and "bytes" in result.stdout
    pngs = sorted(p.name for p in out.iterdir())
    assert pngs == ["100.png", "evil_200.png"]  # the SKU cannot escape the folder
    model = get_model("2.9-bwry")
    for png in out.iterdir():
        with PILImage.open(png) as im:
            assert im.size == (model.width, model.height)
        assert _colours_of(png) <= {tuple(int(v) for v in c) for c in PANEL_RGB}
    payloads = sorted(pay.iterdir())
    assert [p.stem for p in payloads] == ["100", "evil_200"]
    for binary in payloads:
        fmt = ImageFormat[binary.suffix[1:].upper()]
        packed = decompress(int(fmt), binary.read_bytes(), model.max_image_bytes)
        assert len(packed) == model.max_image_bytes


def test_render_csv_reports_bad_rows_and_exits_non_zero(tmp_path: Path) -> None:
    data = tmp_path / "products.csv"
    data.write_text("sku;name;price;unit_size;unit_measure\n"
                    "1;Mleko;3,79;1;l\n"
                    "2;Chleb;abc;;\n"
                    "3;Ser;-5;;\n", encoding="utf-8")
    out = tmp_path / "out"
    result = runner.invoke(app, ["render", "shelf-1.54-bw", "--data", str(data), "--out", str(out)])
    assert result.exit_code == 1
    assert "1/3 labels" in result.stdout and "2 failed" in result.stdout
    assert "error: 2: product '2': price='abc'" in result.stderr
    assert "error: 3: product '3': price='-5': must not be negative" in result.stderr
    assert [p.name for p in out.iterdir()] == ["1.png"]


def test_render_defaults_to_an_esl_render_folder_and_reports_non_objects(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("p.json").write_text(json.dumps([PRODUCTS[0], 42]), encoding="utf-8")
    result = runner.invoke(app, ["render", "promo-4.2", "--data", "p.json"])
    assert result.exit_code == 1
    assert "1/2 labels" in result.stdout and "esl-render" in result.stdout
    assert "error: #2: product: record=42" in result.stderr
    assert [p.name for p in Path("esl-render").iterdir()] == ["100.png"]


def test_render_unknown_template_or_model(tmp_path: Path) -> None:
    data = tmp_path / "p.json"
    data.write_text(json.dumps(PRODUCTS), encoding="utf-8")
    result = runner.invoke(app, ["render", "nope", "--data", str(data), "--out", str(tmp_path)])
    assert result.exit_code == 2 and "not a shipped template" in result.stderr
    result = runner.invoke(app, ["render", "shelf-2.9", "--data", str(data), "--model", "7.5-bwry",
                                 "--out", str(tmp_path)])
    assert result.exit_code == 2 and "7.5-bwry" in result.stderr


def test_templates_list_json() -> None:
    result = runner.invoke(app, ["templates", "list", "--json"])
    assert result.exit_code == 0
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert rows["shelf-2.9"]["model"] == "2.9-bwry"
    assert (rows["talker-7.5"]["width"], rows["talker-7.5"]["height"]) == (800, 480)
    assert rows["shelf-1.54-bw"]["colours"] == "bw"
    plain = runner.invoke(app, ["templates", "list"])
    assert plain.exit_code == 0 and "promo-4.2" in plain.stdout and "400x300" in plain.stdout


def test_templates_check_passes_for_shipped_templates() -> None:
    result = runner.invoke(app, ["templates", "check"])
    assert result.exit_code == 0, result.output
    assert "shelf-2.9 [2.9-bwry]" in result.stdout and "ok" in result.stdout


def test_templates_check_names_template_and_line_of_a_broken_file(tmp_path: Path) -> None:
    broken = tmp_path / "broken.j2"
    broken.write_text("{#- esl-template\nmodel: 2.9-bwry\n-#}\n"
                      '<label model="{{ label.model }}">\n'
                      '  <text x="0" y="0" w="100" h="20">{{ product.name }}</text>\n'
                      '  <price x="0" y="20" w="100" h="40" size="{{ 7 }}">{{ price }}</price>\n'
                      "</label>\n", encoding="utf-8")
    result = runner.invoke(app, ["templates", "check", str(broken)])
    assert result.exit_code == 1
    assert "broken:6: markup error" in result.stderr
    syntax = tmp_path / "syntax.j2"
    syntax.write_text("{#- esl-template\nmodel: 2.9-bwry\n-#}\n<label>\n{% for %}\n", encoding="utf-8")
    result = runner.invoke(app, ["templates", "check", str(syntax)])
    assert result.exit_code == 1 and "syntax:5: syntax error" in result.stderr


def test_samples_renders_every_template(tmp_path: Path) -> None:
    out = tmp_path / "samples"
    result = runner.invoke(app, ["samples", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert str(out.resolve()) in result.stdout
    folders = {p.name: sorted(p.glob("*.png")) for p in out.iterdir()}
    assert set(folders) == {"shelf-2.9", "promo-4.2", "talker-7.5", "shelf-1.54-bw"}
    assert all(len(pngs) >= 20 for pngs in folders.values())
    assert _colours_of(folders["shelf-1.54-bw"][0]) <= {tuple(int(v) for v in PANEL_RGB[i]) for i in (0, 1)}
