"""Fault hooks: a TEST hook that holds a code path open so that a test can kill the process there.

A crash test must kill the server at the moment that matters (say, while an ingest
transaction is open: rows written, nothing committed), not "about then" after a sleep that
is too short on a slow machine and too long on a fast one. So the code that matters says
where it is:

    await faults.reached("ingest.in_transaction")

and a test starts the process with ``ESL_FAULT_HOOK=ingest.in_transaction`` in its
environment. Reaching that point then writes one line to stderr,
``FAULT-HOOK ingest.in_transaction pid=1234``, flushes it, and holds that code path (an
asyncio sleep: the rest of the process keeps running) for ``ESL_FAULT_HOOK_PAUSE_S`` seconds
(default 30), long enough for the test to see the line and SIGKILL the process. Every time
the point is reached it pauses again.

This is a test hook, not a setting: it is read from the environment once, at import, and
is no part of `eslserver.config`. With ``ESL_FAULT_HOOK`` unset (production), `reached`
compares two strings and returns an awaitable that finishes at once: nothing is scheduled,
nothing is logged. The points are listed in `POINTS`; an unknown name in the environment
stops the import with an error naming it, so a misspelt hook cannot make a test pass
without ever having paused.
"""

from __future__ import annotations

import asyncio
import math
import os
import sys
from collections.abc import Awaitable, Generator, Mapping
from typing import Final

__all__ = ["POINTS", "FaultHookError", "hook_from_environ", "reached"]

POINTS: Final = frozenset({
    "ingest.in_transaction",  # eslserver.ingest: a message's rows written inside the open transaction
})
"""Every point the code marks with `reached`."""

_DEFAULT_PAUSE_S: Final = 30.0


class FaultHookError(ValueError):
    """``ESL_FAULT_HOOK`` or ``ESL_FAULT_HOOK_PAUSE_S`` holds a value that is not allowed."""


def hook_from_environ(environ: Mapping[str, str]) -> tuple[str | None, float]:
    """The armed point (None: no hook) and its pause in seconds, from `environ`."""
    point = environ.get("ESL_FAULT_HOOK") or None
    if point is not None and point not in POINTS:
        raise FaultHookError(f"ESL_FAULT_HOOK names no fault point: {point!r} (known: {', '.join(sorted(POINTS))})")
    raw = environ.get("ESL_FAULT_HOOK_PAUSE_S")
    if raw is None or raw == "":
        return point, _DEFAULT_PAUSE_S
    try:
        pause = float(raw)
    except ValueError:
        raise FaultHookError(f"ESL_FAULT_HOOK_PAUSE_S must be a number of seconds, got {raw!r}") from None
    if not math.isfinite(pause) or pause < 0:
        raise FaultHookError(f"ESL_FAULT_HOOK_PAUSE_S must be a finite number >= 0, got {raw!r}")
    return point, pause


_POINT, _PAUSE_S = hook_from_environ(os.environ)


class _Passed:
    """An awaitable that is already finished (reusable, bound to no event loop)."""

    __slots__ = ()

    def __await__(self) -> Generator[None, None, None]:
        return
        yield  # a generator that yields nothing: `await` returns None at once


_PASSED: Final = _Passed()


def reached(point: str) -> Awaitable[None]:
    """Await this where `point` is reached; it pauses there only when ``ESL_FAULT_HOOK`` names it."""
    if point != _POINT:
        return _PASSED
    return _pause(point)


async def _pause(point: str) -> None:
    sys.stderr.write(f"FAULT-HOOK {point} pid={os.getpid()}\n")
    sys.stderr.flush()
    await asyncio.sleep(_PAUSE_S)
