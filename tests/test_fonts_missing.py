"""Without the DejaVu fonts, commands that draw labels stop at once with one line saying what
to install (before: `esl demo` ran on, printing a render-worker traceback every second).

``ESL_FONT_DIR`` names the only directory fonts are taken from, so an empty one stands for a
machine without fonts-dejavu-core.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import get_args

import pytest

from render.fonts import FONT_FILES, FontWeight, font_path
from tests.processes import esl_argv


def _esl(font_dir: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESL_")}
    env["ESL_FONT_DIR"] = str(font_dir)
    return subprocess.run(esl_argv(*args), cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
                          check=False)


def _assert_one_line_saying_what_to_install(done: subprocess.CompletedProcess[str], command: str,
                                            font_dir: Path) -> None:
    assert done.returncode == 1, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    line = lines[0]
    assert line.startswith(f"esl {command}: font DejaVuSans.ttf "), line
    assert f"not found in {font_dir}" in line and "apt-get install fonts-dejavu-core" in line, line
    assert "ESL_FONT_DIR" in line and "Traceback" not in done.stdout + done.stderr


@pytest.fixture
def no_fonts(tmp_path: Path) -> Path:
    empty = tmp_path / "no-fonts"
    empty.mkdir()
    return empty


def test_esl_render_without_fonts_says_what_to_install(tmp_path: Path, no_fonts: Path) -> None:
    data = tmp_path / "products.json"
    data.write_text(json.dumps([{"sku": "1", "name": "Mleko", "price": "3.49"}]))
    done = _esl(no_fonts, "render", "shelf-2.9", "--data", str(data), "--out", str(tmp_path / "out"), cwd=tmp_path)
    _assert_one_line_saying_what_to_install(done, "render", no_fonts)
    assert not (tmp_path / "out").exists()


def test_esl_demo_without_fonts_stops_before_starting_anything(tmp_path: Path, no_fonts: Path) -> None:
    data = tmp_path / "store"
    done = _esl(no_fonts, "demo", "--data", str(data), "--http-port", "0", "--duration", "5", cwd=tmp_path)
    _assert_one_line_saying_what_to_install(done, "demo", no_fonts)
    assert not data.exists()  # no database, no broker, no labels: nothing was started


def test_a_font_dir_with_the_fonts_is_the_one_used(tmp_path: Path) -> None:
    fonts = tmp_path / "fonts"
    fonts.mkdir()
    for weight in get_args(FontWeight):
        (fonts / FONT_FILES[weight][0]).symlink_to(font_path(weight))
    done = _esl(fonts, "templates", "check", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    env = {**os.environ, "ESL_FONT_DIR": str(fonts)}
    probe = subprocess.run([sys.executable, "-c", "from render.fonts import font_path; print(font_path('bold'))"],
                           env=env, capture_output=True, text=True, timeout=60, check=True)
    assert probe.stdout.strip() == str(fonts / "DejaVuSans-Bold.ttf")
