"""Palette indices and the colours e-paper panels really show.

Index order is fixed by the design (0 black, 1 white, 2 yellow, 3 red) for every model, so
an index means the same ink on a BW, BWR or BWRY panel; a model simply never uses the
indices it lacks. Colour names are normalised here and nowhere else.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from firmware_proto.models import ColourMode

__all__ = [
    "BLACK", "WHITE", "YELLOW", "RED", "ColourName", "COLOUR_NAMES", "PANEL_RGB",
    "indices_for", "palette_rgb", "resolve", "to_rgb_image", "PaletteError",
]

BLACK, WHITE, YELLOW, RED = 0, 1, 2, 3

ColourName = Literal["black", "white", "yellow", "red"]
COLOUR_NAMES: dict[str, int] = {"black": BLACK, "white": WHITE, "yellow": YELLOW, "red": RED}

# What the inks look like on a typical panel (used for previews and for matching photo
# colours to inks); not pure sRGB primaries, because e-paper red and yellow are duller.
PANEL_RGB = np.array(
    [
        (0x10, 0x10, 0x10),  # black
        (0xF2, 0xF2, 0xEC),  # white (paper)
        (0xE6, 0xC0, 0x00),  # yellow
        (0xC0, 0x1C, 0x1C),  # red
    ],
    dtype=np.uint8,
)

_MODE_INDICES: dict[str, tuple[int, ...]] = {
    "bw": (BLACK, WHITE),
    "bwr": (BLACK, WHITE, RED),
    "bwry": (BLACK, WHITE, YELLOW, RED),
}


class PaletteError(ValueError):
    """An unknown colour name or colour mode."""


def indices_for(mode: ColourMode) -> tuple[int, ...]:
    """The palette indices a panel of this colour mode can show."""
    try:
        return _MODE_INDICES[mode]
    except KeyError:
        raise PaletteError(f"unknown colour mode {mode!r}; expected bw, bwr or bwry") from None


def palette_rgb(mode: ColourMode) -> np.ndarray:
    """(n, 3) uint8 panel colours for `indices_for(mode)`, in the same order."""
    return PANEL_RGB[list(indices_for(mode))]


def resolve(colour: str, mode: ColourMode, *, role: Literal["ink", "fill"] = "ink") -> int:
    """Map a colour name to the index a panel of `mode` shows for it.

    A colour the panel lacks degrades so the label stays legible: yellow becomes red on a
    BWR panel; on a BW panel accent ink becomes black (text stays readable) and accent fill
    becomes white (black text on it stays readable).
    """
    try:
        index = COLOUR_NAMES[colour.strip().lower()]
    except (KeyError, AttributeError):
        raise PaletteError(
            f"unknown colour {colour!r}; expected one of {', '.join(COLOUR_NAMES)}"
        ) from None
    available = indices_for(mode)
    if index in available:
        return index
    if mode == "bwr" and index == YELLOW:
        return RED
    return BLACK if role == "ink" else WHITE


def to_rgb_image(indices: np.ndarray) -> np.ndarray:
    """Palette indices (H, W) → the panel's real colours (H, W, 3) uint8 for previews."""
    rgb: np.ndarray = PANEL_RGB[indices]
    return rgb
