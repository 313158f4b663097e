"""Write each label's screen as a PNG when it changes, at most once per interval per label.

One task scans the store (cheap: compares an int per label), so 10,000 idle labels cost
nothing; files are written atomically (temporary file, then rename) so a viewer never sees
half a PNG. File name: the MAC with dashes, ``02-E5-00-00-00-01.png``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
from pathlib import Path

from simulator.store import SimStore
from simulator.tasks import cancel_and_wait

__all__ = ["SnapshotWriter", "snapshot_path"]

log = logging.getLogger(__name__)

_PER_PASS = 100


def snapshot_path(directory: Path, address: str) -> Path:
    return directory / (address.replace(":", "-") + ".png")


class SnapshotWriter:
    """Owns one scanning task (`start` / `aclose`); `write_changed` does one pass."""

    def __init__(self, store: SimStore, directory: Path, *, min_interval_s: float = 2.0,
                 scan_interval_s: float = 0.5) -> None:
        if not math.isfinite(min_interval_s) or min_interval_s < 0:
            raise ValueError(f"min_interval_s must be a finite number >= 0, got {min_interval_s!r}")
        if not math.isfinite(scan_interval_s) or scan_interval_s <= 0:
            raise ValueError(f"scan_interval_s must be a finite number > 0, got {scan_interval_s!r}")
        self.store = store
        self.directory = directory
        self.min_interval_s = min_interval_s
        self.scan_interval_s = scan_interval_s
        # only changes are written: what every label shows at the start is known (blank)
        self._written: dict[str, tuple[int, float]] = {
            address: (label.screen_version, -math.inf) for address, label in store.labels.items()}
        self._task: asyncio.Task[None] | None = None
        self.files_written = 0

    def write_changed(self, now: float, *, limit: int | None = None) -> int:
        """Write the labels whose screen changed (rate-limited); return how many.

        ``limit`` caps the files written in this pass (the rest wait for the next), so a whole
        store changing at once does not stall the event loop for seconds.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        count = 0
        for address, label in self.store.labels.items():
            if limit is not None and count >= limit:
                break
            version, at = self._written.get(address, (-1, -math.inf))
            if label.screen_version == version or now - at < self.min_interval_s:
                continue
            path = snapshot_path(self.directory, address)
            tmp = path.with_suffix(".png.tmp")
            tmp.write_bytes(label.snapshot_png())
            os.replace(tmp, path)
            self._written[address] = (label.screen_version, now)
            count += 1
        self.files_written += count
        return count

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                self.write_changed(loop.time(), limit=_PER_PASS)
            except OSError as exc:
                log.error("cannot write snapshots to %s: %s", self.directory, exc)
            await asyncio.sleep(self.scan_interval_s)

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="simulator-snapshots")

    async def aclose(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)
