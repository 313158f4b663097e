"""The fonts labels are drawn with: DejaVu Sans and DejaVu Sans Bold from the operating system.

Fonts are never copied into the repository; they come from Debian's ``fonts-dejavu-core``
(or any system that has DejaVu). Lookup: the directory named by ``ESL_FONT_DIR`` only, when
it is set (a deployment gets exactly the fonts it names, never a silent fallback); else the
usual font directories, then ``fc-match``. A missing font is a `FontNotFoundError` naming the
file and the package to install, raised the first time a font is needed (importing this
module never fails), or up front by `require_fonts` in commands that are about to render.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import subprocess
from pathlib import Path
from typing import Literal, get_args

from PIL import ImageFont

__all__ = [
    "FontNotFoundError", "FontWeight", "FONT_FILES", "font_path", "get_font", "locate_font",
    "require_fonts",
]

log = logging.getLogger(__name__)

FontWeight = Literal["regular", "bold"]

#: File name and fontconfig pattern per weight.
FONT_FILES: dict[str, tuple[str, str]] = {
    "regular": ("DejaVuSans.ttf", "DejaVu Sans:style=Book"),
    "bold": ("DejaVuSans-Bold.ttf", "DejaVu Sans:style=Bold"),
}

_SEARCH_DIRS = (
    "/usr/share/fonts/truetype/dejavu",
    "/usr/share/fonts/dejavu",
    "/usr/share/fonts/TTF",
    "/usr/local/share/fonts",
    "/usr/share/fonts/truetype",
    "/opt/homebrew/share/fonts",
    "/Library/Fonts",
)


class FontNotFoundError(RuntimeError):
    """A font the renderer needs is not installed on this machine."""


def _from_fc_match(pattern: str, filename: str) -> Path | None:
    exe = shutil.which("fc-match")
    if exe is None:
        return None
    try:
        out = subprocess.run(
            [exe, "--format=%{file}", pattern], capture_output=True, text=True, timeout=10, check=False
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("fc-match failed for %r: %s", pattern, exc)
        return None
    # fc-match always answers with *some* font; accept only the file we asked for.
    if out and Path(out).name == filename and Path(out).is_file():
        return Path(out)
    return None


def locate_font(filename: str, pattern: str, dirs: list[str], *, fc_match: bool = True) -> Path:
    """`filename` from the first of `dirs` holding it, else (with `fc_match`) from fc-match
    (`pattern`); raises `FontNotFoundError` naming what is missing and how to install it."""
    for d in dirs:
        candidate = Path(d) / filename
        if candidate.is_file():
            return candidate
    found = _from_fc_match(pattern, filename) if fc_match else None
    if found is not None:
        return found
    where = ", ".join(dirs) + (" nor by fc-match" if fc_match else "")
    raise FontNotFoundError(
        f"font {filename} (DejaVu Sans, needed to draw labels) not found in {where}; "
        "install it with `apt-get install fonts-dejavu-core` (Debian/Ubuntu; `dnf install "
        "dejavu-sans-fonts` on Fedora, `brew install --cask font-dejavu` on macOS) "
        "or set ESL_FONT_DIR to a directory holding DejaVuSans.ttf and DejaVuSans-Bold.ttf"
    )


@functools.lru_cache(maxsize=None)
def font_path(weight: FontWeight) -> Path:
    """The path of the DejaVu Sans file for `weight`; raises `FontNotFoundError` if absent."""
    try:
        filename, pattern = FONT_FILES[weight]
    except KeyError:
        raise ValueError(f"weight must be regular or bold, got {weight!r}") from None
    override = os.environ.get("ESL_FONT_DIR")
    if override:
        return locate_font(filename, pattern, [override], fc_match=False)
    return locate_font(filename, pattern, list(_SEARCH_DIRS))


def require_fonts() -> None:
    """Find every font labels are drawn with now, so that a command about to render stops
    with one clear `FontNotFoundError` instead of failing label by label later."""
    for weight in get_args(FontWeight):
        font_path(weight)


@functools.lru_cache(maxsize=512)
def get_font(weight: FontWeight, size: int) -> ImageFont.FreeTypeFont:
    """The FreeType font for (`weight`, `size` in pixels), loaded once and cached.

    Basic (kerning-free) layout is forced so that a string's advance is exactly the sum of
    its characters' advances, which the glyph cache relies on.
    """
    if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= 1000:
        raise ValueError(f"font size must be an integer 1..1000, got {size!r}")
    return ImageFont.truetype(
        str(font_path(weight)), size, layout_engine=ImageFont.Layout.BASIC
    )
