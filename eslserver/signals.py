"""Waiting for the operator's stop (Ctrl-C or SIGTERM), for every long-running command.

A library module, so that what runs a store (`eslserver.demo`) and the command line
(`esl serve`) share it without the library importing the CLI.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator

__all__ = ["cancel_on_signal", "run_until_signal"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


async def run_until_signal() -> None:
    """Return on SIGINT or SIGTERM; the handlers are removed again, so a second Ctrl-C while
    shutting down interrupts as Python's default does."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


@contextlib.asynccontextmanager
async def cancel_on_signal() -> AsyncIterator[None]:
    """SIGINT or SIGTERM cancel the block wherever it waits (a start-up held by a locked
    database or a slow broker), and the block ends quietly: the process always honours the
    operator's stop, and what the block opened is closed on the way out (a statement waiting
    for a lock held by another process first ends its wait, ``busy_timeout``: 10 s at most; a
    second signal does not wait). A `run_until_signal` inside takes the signals over while it
    waits."""
    task = asyncio.current_task()
    if task is None:
        raise RuntimeError("cancel_on_signal needs a running task")
    loop = asyncio.get_running_loop()
    fired = False

    def stop() -> None:
        nonlocal fired
        fired = True
        task.cancel()
        for sig in _SIGNALS:  # a second signal ends the process at once, as Python's default does
            loop.remove_signal_handler(sig)

    for sig in _SIGNALS:
        loop.add_signal_handler(sig, stop)
    try:
        yield
    except asyncio.CancelledError:
        if not fired:
            raise
        task.uncancel()
    finally:
        for sig in _SIGNALS:
            loop.remove_signal_handler(sig)
