"""The registry of label models.

One place names every panel the system can drive, so that the renderer, the radio protocol
and the simulator agree on sizes and colours. ``width``/``height`` are the label as a shopper
reads it; ``rotation`` is how the panel is mounted (the renderer rotates before packing).
``model_id`` is the byte that identifies the model on the air.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["ColourMode", "LabelModel", "MODELS", "MODELS_BY_ID", "get_model", "UnknownModelError"]

ColourMode = Literal["bw", "bwr", "bwry"]


class UnknownModelError(KeyError):
    """A model name or wire id that is not in the registry."""


@dataclass(frozen=True, slots=True)
class LabelModel:
    name: str
    model_id: int
    diagonal: str
    width: int
    height: int
    colours: ColourMode
    rotation: int
    bits_per_pixel: int
    partial_refresh: bool

    def __post_init__(self) -> None:
        if not 0 < self.model_id < 256:
            raise ValueError(f"model_id must fit one byte, got {self.model_id}")
        if self.rotation not in (0, 90, 180, 270):
            raise ValueError(f"rotation must be 0, 90, 180 or 270, got {self.rotation}")
        if self.bits_per_pixel not in (1, 2):
            raise ValueError(f"bits_per_pixel must be 1 or 2, got {self.bits_per_pixel}")
        if self.colours != "bw" and self.bits_per_pixel != 2:
            raise ValueError(f"{self.colours} needs 2 bits a pixel")

    @property
    def max_image_bytes(self) -> int:
        """The label's image buffer: one uncompressed packed frame, rows padded to bytes."""
        width, height = self.panel_size
        return (width * self.bits_per_pixel + 7) // 8 * height

    @property
    def panel_size(self) -> tuple[int, int]:
        """(width, height) of the panel's own scan order, after rotation."""
        if self.rotation in (90, 270):
            return self.height, self.width
        return self.width, self.height


MODELS: dict[str, LabelModel] = {
    m.name: m
    for m in (
        LabelModel("1.54-bw", 0x01, '1.54"', 200, 200, "bw", 0, 1, True),
        LabelModel("2.13-bwr", 0x02, '2.13"', 250, 122, "bwr", 90, 2, False),
        LabelModel("2.9-bwry", 0x03, '2.9"', 296, 128, "bwry", 90, 2, False),
        LabelModel("4.2-bwry", 0x04, '4.2"', 400, 300, "bwry", 0, 2, False),
        LabelModel("7.5-bwry", 0x05, '7.5"', 800, 480, "bwry", 0, 2, False),
    )
}

MODELS_BY_ID: dict[int, LabelModel] = {m.model_id: m for m in MODELS.values()}


def get_model(name_or_id: str | int) -> LabelModel:
    """Look a model up by registry name or wire id; unknown ones raise `UnknownModelError`."""
    table: dict[str, LabelModel] | dict[int, LabelModel]
    table = MODELS_BY_ID if isinstance(name_or_id, int) else MODELS
    try:
        return table[name_or_id]  # type: ignore[index]
    except KeyError:
        raise UnknownModelError(
            f"unknown label model {name_or_id!r}; known: {', '.join(MODELS)}"
        ) from None
