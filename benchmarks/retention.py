"""How long does pruning images hold the write lock when most old images are still in use?

    python -m benchmarks.retention [--labels 100000] [--unused 5000]

A real SQLite file, migrated as the server migrates it, holding `--labels` labels that each
show one old image and expect another (images still in use, however old) and `--unused` old
images nothing uses, spread among them. Measured, for the images pass of a retention round
(batches of 500): the longest write transaction, their total and their count, first without
a sweep (each batch looks for unused images from the oldest on: the baseline, which looks at
the images in use again at every batch), then with `eslserver.store.images.Sweep` (each old
image looked at once per pass). A table goes to stdout, then one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from eslserver.db.database import Database
from eslserver.db.sqlite import SqliteDatabase
from eslserver.store import images

_CUTOFF = "2026-06-01"


async def _fill(db: Database, labels: int, unused: int) -> None:
    total = 2 * labels + unused
    step = max(1, total // max(1, unused))
    async with db.transaction() as conn:
        await conn.executemany("INSERT INTO images (hash, model, format, payload, created_at) "
                               "VALUES (?, '2.9-bwry', 1, x'00', ?)",
                               [(f"{i:064x}", f"2026-01-01T00:00:00.{i:07d}") for i in range(total)])
        used = [i for i in range(total) if i % step != step - 1][:2 * labels]
        await conn.executemany("INSERT INTO labels (mac, store, model, updated_at, expected_hash, displayed_hash) "
                               "VALUES (?, 'demo', '2.9-bwry', '2026-01-01', ?, ?)",
                               [(f"L{n}", f"{used[2 * n]:064x}", f"{used[2 * n + 1]:064x}") for n in range(labels)])


async def _pass(path: Path, *, swept: bool) -> dict[str, Any]:
    async with SqliteDatabase(path) as db:
        sweep = images.Sweep() if swept else None
        times: list[float] = []
        deleted = 0
        while True:
            started = time.perf_counter()
            async with db.transaction() as conn:
                n = await images.prune_before(conn, _CUTOFF, 500, sweep=sweep)
            times.append(time.perf_counter() - started)
            deleted += n
            if (sweep.done if sweep is not None else n < 500):
                break
        return {"deleted": deleted, "transactions": len(times), "longest_ms": max(times) * 1000,
                "total_ms": sum(times) * 1000}


async def main(labels: int, unused: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out: dict[str, Any] = {"labels": labels, "unused": unused}
        for name, swept in (("baseline", False), ("sweep", True)):
            path = Path(tmp) / f"{name}.db"
            async with SqliteDatabase(path) as db:
                await _fill(db, labels, unused)
            out[name] = await _pass(path, swept=swept)
        out["longest_ratio"] = out["baseline"]["longest_ms"] / out["sweep"]["longest_ms"]
        return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", type=int, default=100_000)
    parser.add_argument("--unused", type=int, default=5_000)
    args = parser.parse_args()
    result = asyncio.run(main(args.labels, args.unused))
    print(f"{result['labels']} labels (2 old images in use each), {result['unused']} old unused images")
    print(f"{'':10} {'deleted':>8} {'batches':>8} {'longest ms':>11} {'total ms':>9}")
    for name in ("baseline", "sweep"):
        r = result[name]
        print(f"{name:10} {r['deleted']:>8} {r['transactions']:>8} {r['longest_ms']:>11.1f} {r['total_ms']:>9.1f}")
    print(f"longest write transaction, baseline / sweep: {result['longest_ratio']:.1f}x")
    print(json.dumps(result))
