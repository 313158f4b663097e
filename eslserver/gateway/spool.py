"""The gateway's durable job spool: one SQLite file (WAL), so a kill -9 loses no job.

Life of a job: `put` (before the broker gets its PUBACK) → `note_used` as the gateway's
counters advance (so a restarted gateway never reuses one) → `finish` after the ack or nack was
published. `pending` lists what a restarted gateway must resume. A finished job leaves a small
tombstone (no envelope) for ``keep_done_s``, so a broker's redelivery of a job the gateway
already finished is recognised and not run twice.

Jobs are keyed by (job_id, attempt): a server retry of the same job is a new delivery.
Writes use ``synchronous=FULL``: a job is on disk before the broker is told it was received.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from typing import Self

import aiosqlite

from eslserver.private_files import create_private, tighten

__all__ = ["SpoolError", "PutResult", "SpooledJob", "JobSpool"]

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id       INTEGER NOT NULL,   -- u64 stored as signed 64-bit (two's complement)
    attempt      INTEGER NOT NULL,
    envelope     BLOB,               -- NULL once finished (a tombstone)
    received_at  REAL    NOT NULL,   -- Unix time the gateway first received it
    used_through INTEGER NOT NULL DEFAULT 0,  -- highest counter this job may have used
    done_at      REAL,
    PRIMARY KEY (job_id, attempt)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS jobs_done ON jobs (done_at);
"""


class SpoolError(RuntimeError):
    """The spool file cannot be opened or written (disk full, permissions, not a database)."""


class PutResult(Enum):
    NEW = "new"            # spooled now: run it
    DUPLICATE = "duplicate"  # already spooled and not finished (a redelivery): already running
    DONE = "done"          # already finished (a redelivery after the result): ignore


@dataclass(frozen=True, slots=True)
class SpooledJob:
    """One unfinished job as a restarted gateway finds it."""

    job_id: int
    attempt: int
    envelope: bytes
    received_at: datetime
    used_through: int


def _to_db(job_id: int) -> int:
    if not 0 <= job_id < 1 << 64:
        raise ValueError(f"job_id must be in 0..2**64-1, got {job_id!r}")
    return job_id - (1 << 64) if job_id >= 1 << 63 else job_id


def _from_db(value: int) -> int:
    return value + (1 << 64) if value < 0 else value


class JobSpool:
    """Async context manager over the spool file at `path` (created 0600, with its directory 0700)."""

    def __init__(self, path: Path, *, keep_done_s: float = 86_400.0) -> None:
        self.path = Path(path)
        self.keep_done_s = keep_done_s
        self._db: aiosqlite.Connection | None = None

    async def open(self) -> None:
        if self._db is not None:
            return
        try:
            # 0600 from the start (its -wal and -shm take its mode): envelopes carry label keys
            if not create_private(self.path):
                tighten(self.path, also=("-wal", "-shm"))
            db = await aiosqlite.connect(self.path)
        except (OSError, aiosqlite.Error) as exc:
            raise SpoolError(f"spool {self.path}: cannot open: {exc}") from exc
        try:
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute("PRAGMA synchronous=FULL")
            await db.execute("PRAGMA busy_timeout=5000")
            await db.executescript(_SCHEMA)
            await db.execute("DELETE FROM jobs WHERE done_at IS NOT NULL AND done_at < ?",
                             (time.time() - self.keep_done_s,))
            await db.commit()
        except aiosqlite.Error as exc:
            await db.close()
            raise SpoolError(f"spool {self.path}: {exc}") from exc
        self._db = db

    async def close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            await db.close()

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise SpoolError(f"spool {self.path} is not open")
        return self._db

    async def _write(self, sql: str, args: tuple[object, ...]) -> int:
        try:
            cur = await self.db.execute(sql, args)
            await self.db.commit()
        except aiosqlite.Error as exc:
            raise SpoolError(f"spool {self.path}: {exc}") from exc
        return cur.rowcount

    async def put(self, job_id: int, attempt: int, envelope: bytes,
                  received_at: datetime | None = None, *, used_through: int = 0) -> PutResult:
        """Store a job durably (committed when this returns) unless it is already known.

        ``used_through`` notes counters the job may use at once (saves a `note_used` write).
        """
        at = (received_at or datetime.now(UTC)).timestamp()
        key = (_to_db(job_id), attempt)
        if await self._write("INSERT OR IGNORE INTO jobs (job_id, attempt, envelope, received_at, used_through) "
                             "VALUES (?, ?, ?, ?, ?)", (*key, envelope, at, used_through)):
            return PutResult.NEW
        async with self.db.execute("SELECT done_at FROM jobs WHERE job_id = ? AND attempt = ?", key) as cur:
            row = await cur.fetchone()
        return PutResult.DONE if row is not None and row[0] is not None else PutResult.DUPLICATE

    async def note_used(self, job_id: int, attempt: int, used_through: int) -> None:
        """Record that the job may have used counters up to `used_through` (only ever raised)."""
        await self._write("UPDATE jobs SET used_through = MAX(used_through, ?) "
                          "WHERE job_id = ? AND attempt = ?", (used_through, _to_db(job_id), attempt))

    async def finish(self, job_id: int, attempt: int) -> None:
        """The job's result was published: drop its envelope, keep a tombstone."""
        await self._write("UPDATE jobs SET envelope = NULL, done_at = ? WHERE job_id = ? AND attempt = ?",
                          (time.time(), _to_db(job_id), attempt))

    async def pending(self) -> list[SpooledJob]:
        """Unfinished jobs, oldest first."""
        try:
            async with self.db.execute(
                    "SELECT job_id, attempt, envelope, received_at, used_through FROM jobs "
                    "WHERE done_at IS NULL ORDER BY received_at") as cur:
                rows = await cur.fetchall()
        except aiosqlite.Error as exc:
            raise SpoolError(f"spool {self.path}: {exc}") from exc
        return [SpooledJob(_from_db(r[0]), r[1], bytes(r[2]), datetime.fromtimestamp(r[3], UTC), r[4])
                for r in rows]

    async def count(self) -> int:
        """Unfinished jobs in the spool."""
        async with self.db.execute("SELECT COUNT(*) FROM jobs WHERE done_at IS NULL") as cur:
            row = await cur.fetchone()
        return 0 if row is None else int(row[0])
