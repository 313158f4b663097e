"""Waiting for the operator's stop (Ctrl-C or SIGTERM), for every long-running command.

A library module, so that what runs a store (`eslserver.demo`) and the command line
(`esl serve`) share it without the library importing the CLI.
"""

from __future__ import annotations

import asyncio
import signal

__all__ = ["run_until_signal"]


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
