"""Keeps a gateway's radio connected, whatever the radio: one reconnect loop for all of them.

A radio can be lost while the gateway runs (`esl simulate` restarted, a USB adapter pulled).
`RadioWatch` notices it (`Radio.is_up` turned false), reconnects with exponential backoff and
jitter (``min_s`` doubling up to ``max_s``), and says so: ``up`` and ``since`` are what the
gateway's status event reports (``radio: down`` while it cannot reach the radio), and
``on_change`` is called on each change so the status goes out at once, not at the next
interval. The loss and the recovery are logged once each, never a line per attempt.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from datetime import UTC, datetime

from eslserver.logs import FailureLog
from firmware_proto.link import Radio

__all__ = ["RadioWatch"]

log = logging.getLogger(__name__)


class RadioWatch:
    """Watches one started radio; `run` is the task body (it never returns)."""

    def __init__(self, radio: Radio, *, min_s: float = 0.5, max_s: float = 30.0, check_s: float = 1.0,
                 on_change: Callable[[bool], None] = lambda up: None,
                 rng: random.Random | None = None, **log_fields: str) -> None:
        for name, value in (("min_s", min_s), ("max_s", max_s), ("check_s", check_s)):
            if not value > 0:
                raise ValueError(f"{name} must be > 0 s, got {value!r}")
        if max_s < min_s:
            raise ValueError(f"max_s must be >= min_s ({min_s!r}), got {max_s!r}")
        self.radio = radio
        self.min_s, self.max_s, self.check_s = min_s, max_s, check_s
        self.on_change = on_change
        self.up = True
        """Whether the radio works (the gateway starts it before watching)."""
        self.since = datetime.now(UTC)
        """When `up` last changed."""
        self.reconnects = 0
        self._rng = rng or random.Random()
        self._failure = FailureLog(log, "radio connection", **log_fields)

    def _set(self, up: bool) -> None:
        if up != self.up:
            self.up, self.since = up, datetime.now(UTC)
            self.on_change(up)

    def delay_s(self, failures: int) -> float:
        """The wait before reconnect attempt `failures` + 1: doubling, capped, with jitter
        (½ to 1 of it), so gateways that lost one radio together do not retry in step."""
        base = min(self.max_s, self.min_s * 2 ** min(failures, 30))
        return base * (0.5 + 0.5 * self._rng.random())

    async def run(self) -> None:
        failures = 0
        while True:
            if self.radio.is_up:
                await asyncio.sleep(self.check_s)
                continue
            if self.up:
                log.warning("radio lost; reconnecting (labels cannot be reached meanwhile)")
                self._set(False)
            await asyncio.sleep(self.delay_s(failures))
            try:
                await self.radio.start()
            except (ConnectionError, OSError, TimeoutError) as exc:
                failures += 1
                self._failure.failed(exc, retry_s=self.delay_s(failures))
                continue
            failures = 0
            self.reconnects += 1
            self._failure.ok()
            log.warning("radio is back (reconnected)")
            self._set(True)
