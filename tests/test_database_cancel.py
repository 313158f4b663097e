"""A write transaction cancelled at any await (a client gone, a shutdown) leaves the one writer
connection usable: no BEGIN left open behind a cancelled await, nothing of the block committed."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from eslserver.db.sqlite import SqliteDatabase


@pytest.mark.parametrize("yields", range(0, 8))
async def test_a_transaction_cancelled_anywhere_leaves_the_writer_usable(tmp_path: Path, yields: int) -> None:
    async with SqliteDatabase(tmp_path / "esl.db") as db:
        async def write() -> None:
            async with db.transaction() as conn:
                await conn.execute("INSERT INTO stores (id, name, currency, field_map, created_at) "
                                   "VALUES ('cancelled', 'x', 'PLN', '{}', '2026-01-01T00:00:00+00:00')")

        task = asyncio.create_task(write())
        for _ in range(yields):  # cancel it at a different point of BEGIN, the insert or COMMIT
            await asyncio.sleep(0)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        async with db.transaction() as conn:  # the next writer is not "within a transaction"
            await conn.execute("INSERT INTO stores (id, name, currency, field_map, created_at) "
                               "VALUES ('next', 'y', 'PLN', '{}', '2026-01-01T00:00:00+00:00')")
        rows = [r[0] for r in await db.read("SELECT id FROM stores ORDER BY id")]
        assert "next" in rows and set(rows) <= {"cancelled", "next"}
