"""The outbox: durable jobs for gateways, written in the same transaction as what caused them.

A job is ``queued`` until the dispatcher claims it (``sent``, with the gateway it went to),
then ``done`` or back to ``queued`` with a later ``next_attempt_at`` (retry), or ``failed``.
A newer image for a label turns its older queued image jobs into ``superseded``. At most one
job per label is ``sent`` at a time, oldest first, so a pairing always precedes the image.

`Outbox` is the one place a job is created or ended, and it counts each such change in the
metrics when its transaction commits (``esl_jobs_created_total``,
``esl_jobs_finished_total``): counted where it happens, the counters cannot disagree with
each other or with the table.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, Final

from eslserver.db.database import Connection, Database
from eslserver.metrics import JOB_OUTCOMES, Metrics
from eslserver.store import jobs as job_rows
from eslserver.store import labels as label_rows
from eslserver.timeutil import iso

__all__ = ["OPEN_STATES", "JobKind", "Outbox"]

OPEN_STATES: Final = ("queued", "sent")


class JobKind:
    PAIR: Final = "pair"
    IMAGE: Final = "image"
    COMMAND: Final = "command"


class Outbox:
    """Creates and ends jobs inside the caller's transaction (`conn`), and counts them."""

    def __init__(self, db: Database, metrics: Metrics) -> None:
        self.db = db
        self.metrics = metrics

    async def insert(self, conn: Connection, *, store: str, mac: str, kind: str, now: datetime,
                     origin_at: str | None = None, **columns: Any) -> int:
        """Queue a job; `columns` are other job columns (image_hash, payload, command, …)."""
        job = await job_rows.insert(conn, {"store": store, "mac": mac, "kind": kind, "state": "queued",
                                           "next_attempt_at": iso(now), "created_at": iso(now),
                                           "origin_at": origin_at, **columns})
        self._created(kind, 1)
        return job

    async def insert_many(self, conn: Connection, *, store: str, kind: str, now: datetime,
                          columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """Queue one job of `kind` per row, a row holding the values of `columns` (one
        statement for all: a repricing queues thousands at once)."""
        if not rows:
            return
        stamp = iso(now)
        await job_rows.insert_many(conn, ["store", "kind", "state", "next_attempt_at", "created_at", *columns],
                                   [(store, kind, "queued", stamp, stamp, *row) for row in rows])
        self._created(kind, len(rows))

    async def ensure_pair(self, conn: Connection, *, store: str, mac: str, now: datetime,
                          sealed_key: bytes) -> bool:
        """Queue a pairing for `mac` unless it has a key or a pairing is open; True if one was
        queued. Checked here, in the caller's transaction: what the caller read before may be
        stale (a pairing acked meanwhile), and a needless pairing replaces a good key.
        `sealed_key` is the new key as `eslserver.keyvault.KeyVault.new_label_key` seals it:
        the job row never holds it in clear."""
        label = await label_rows.pairing(conn, mac)
        if label is None or label.paired or label.pairing:
            return False
        await self.insert(conn, store=store, mac=mac, kind=JobKind.PAIR, now=now, command=sealed_key)
        return True

    async def finish(self, conn: Connection, job_id: int, outcome: str, now: datetime, *,
                     error: str | None = None) -> bool:
        """End an open job as `outcome` (``done``, ``failed``); False if it was not open (a
        duplicate ack, a job already superseded or failed): nothing is changed or counted."""
        if outcome not in JOB_OUTCOMES:
            raise ValueError(f"outcome: expected one of {', '.join(JOB_OUTCOMES)}, got {outcome!r}")
        kind = await job_rows.finish(conn, job_id, outcome, iso(now), error)
        if kind is None:
            return False
        self._finished(kind, outcome, 1)
        return True

    async def supersede_images(self, conn: Connection, macs: Iterable[str], now: datetime) -> int:
        """End the queued image jobs of `macs` as ``superseded`` (a newer image, or none, is
        wanted); returns how many."""
        superseded = await job_rows.supersede_images(conn, list(macs), iso(now))
        self._finished(JobKind.IMAGE, "superseded", superseded)
        return superseded

    async def adopt_open(self) -> None:
        """Count the jobs a previous run left open as created by this one: they will finish
        here, and ``created - finished = open`` must hold from the first scrape. Called at
        start, before anything else can create or end a job."""
        for kind, n in (await job_rows.open_by_kind(self.db)).items():
            self.metrics.jobs_created.labels(kind).inc(n)

    def _created(self, kind: str, n: int) -> None:
        if n:
            self.db.after_commit(lambda: self.metrics.jobs_created.labels(kind).inc(n))

    def _finished(self, kind: str, outcome: str, n: int) -> None:
        if n:
            self.db.after_commit(lambda: self.metrics.jobs_finished.labels(kind, outcome).inc(n))
