"""Token buckets per key: how much of something each one may do, in bursts and over time.

Why: a gateway can report new labels as fast as it likes, and each one is a database row and
a label the store lists; a real store discovers a few at a time, a forged one hundreds a
second (issue 13). `Buckets` lets each key (a gateway) spend ``burst`` at once, then ``rate``
per second; what is over is refused, never queued.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

__all__ = ["Buckets"]

_MAX_KEYS: Final = 10_000


class Buckets:
    """One token bucket per key: `burst` tokens, refilled at `rate_per_s`; ``rate_per_s == 0``
    means no limit. `clock` (monotonic seconds) is for tests."""

    def __init__(self, rate_per_s: float, burst: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        if rate_per_s < 0 or burst < 1:
            raise ValueError(f"rate_per_s must be >= 0 and burst >= 1, got {rate_per_s!r} and {burst!r}")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, when counted)

    def take(self, key: str) -> bool:
        """Spend one token of `key`'s bucket; False (nothing spent) when it is empty."""
        if self.rate_per_s == 0:
            return True
        now = self._clock()
        tokens, then = self._buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - then) * self.rate_per_s)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return False
        if key not in self._buckets and len(self._buckets) >= _MAX_KEYS:  # forget the longest-idle key
            self._buckets.pop(min(self._buckets, key=lambda k: self._buckets[k][1]))
        self._buckets[key] = (tokens - 1.0, now)
        return True
