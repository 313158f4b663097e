"""A simulated label's LED: on/off, colour, and flashing until a time."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["LedState", "LED_OFF"]


@dataclass(frozen=True, slots=True)
class LedState:
    """What the LED does. ``flash_until`` is loop time (seconds); ``None`` means no flashing.

    ``colour`` is 0xRRGGBB as the command asked for it (a real LED shows the nearest it can).
    """

    on: bool = False
    colour: int = 0x000000
    flashing: bool = False
    flash_until: float | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.colour <= 0xFFFFFF:
            raise ValueError(f"colour must be 0xRRGGBB, got {self.colour!r}")

    def at(self, now: float) -> LedState:
        """The state as seen at `now`: flashing stops (and the LED goes off) once it is over."""
        if self.flashing and self.flash_until is not None and now >= self.flash_until:
            return LED_OFF
        return self


LED_OFF = LedState()
