"""Stopping the simulator's background tasks the same way everywhere."""

from __future__ import annotations

import asyncio

__all__ = ["cancel_and_wait"]


async def cancel_and_wait(*tasks: asyncio.Task[object] | None) -> None:
    """Cancel every task given (None is skipped) and wait until each has finished.

    A task's own cancellation is expected and swallowed; any other exception it ends with is
    raised, so a crash in a background loop is not lost at shutdown.
    """
    live = [t for t in tasks if t is not None]
    for task in live:
        task.cancel()
    for task in live:
        try:
            await task
        except asyncio.CancelledError:
            pass
