"""Run a simulated store radio until told to stop (what ``esl simulate`` does).

Kept apart from the CLI so that the demo and tests can run the same thing in-process.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from simulator.radio_server import RadioServer
from simulator.snapshots import SnapshotWriter
from simulator.store import SimStore, StoreConfig

__all__ = ["SimulationConfig", "parse_listen", "run_simulation"]

log = logging.getLogger(__name__)


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) → (host, port); `ValueError` naming the value."""
    host, sep, port_s = value.rpartition(":")
    if not sep or not host:
        raise ValueError(f"listen must be HOST:PORT, got {value!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_s)
    except ValueError:
        raise ValueError(f"listen port must be a number, got {port_s!r} in {value!r}") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"listen port must be in 0..65535, got {port} in {value!r}")
    return host, port


@dataclass(frozen=True, slots=True)
class SimulationConfig:
    """What ``esl simulate`` runs: a store, where it listens, snapshots, the summary cadence."""

    store: StoreConfig
    host: str = "127.0.0.1"
    port: int = 0
    snapshots: Path | None = None
    snapshot_interval_s: float = 2.0
    summary_interval_s: float = 10.0

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {self.port!r}")
        if not self.summary_interval_s > 0:
            raise ValueError(f"summary_interval_s must be > 0, got {self.summary_interval_s!r}")


async def run_simulation(config: SimulationConfig, *, print_line: Callable[[str], None] = print,
                         stop: asyncio.Event | None = None) -> None:
    """Serve the store until `stop` is set, or SIGINT/SIGTERM arrive (when `stop` is None).

    Prints ``listening on HOST:PORT`` first (the real port, so ``:0`` works), then a
    one-line summary every ``summary_interval_s``.
    """
    loop = asyncio.get_running_loop()
    handled: list[signal.Signals] = []
    signals = (signal.SIGINT, signal.SIGTERM) if stop is None else ()
    stop = stop if stop is not None else asyncio.Event()
    for sig in signals:
        try:
            loop.add_signal_handler(sig, stop.set)
            handled.append(sig)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or Windows
            pass
    store = SimStore(config.store)
    server = RadioServer(store, config.host, config.port)
    writer = (SnapshotWriter(store, config.snapshots, min_interval_s=config.snapshot_interval_s)
              if config.snapshots is not None else None)
    try:
        async with store:
            async with server:
                if writer is not None:
                    await writer.start()
                host, port = server.address
                print_line(f"listening on {host}:{port} with {len(store.labels)} labels "
                           f"(seed {config.store.seed})")
                while not stop.is_set():
                    try:
                        async with asyncio.timeout(config.summary_interval_s):
                            await stop.wait()
                    except TimeoutError:
                        print_line(f"gateways={server.gateways} {store.stats().line()}")
                if writer is not None:
                    await writer.aclose()
                    writer.write_changed(loop.time() + config.snapshot_interval_s)
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)
    print_line(f"stopped: {store.stats().line()}")
