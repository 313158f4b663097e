"""Retention: nothing the server stores grows forever.

Finished jobs, events, audit rows, rendered images nothing uses any more, the update ids a
POS chose and old price periods are deleted once older than their ``retention_*`` setting
(`eslserver.config`; 0 keeps them forever). A round (`Retention.run`, every
``retention_interval_s``) deletes in batches of `BATCH` rows, each its own short write
transaction, and yields to the event loop between them, so a POS message or a gateway
event waits for one small batch at most; a table is done for the round when a batch finds
fewer rows than it may delete, or after `MAX_BATCHES` (the rest waits for the next round).

What is never deleted, whatever its age:

- an open job (``queued``, ``sent``);
- an image a label shows or expects, or that an open job sends or uses as its delta base;
- a price period the lowest-price rule still reads (`history_to_prune`): the one in effect
  now, the 30 days before the first step of the reduction in force (however long ago that
  step was: a reduction can last months, and a progressive one reaches back to its first
  step), the newest period before those 30 days (the price when the window opened), a
  planned one, and each SKU's latest recorded change (history imports start after it).

`measure` refreshes the table sizes (``esl_table_rows``) and the file size
(``esl_database_bytes``); the server calls it every minute, never per scrape.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Final

from eslserver import pricing
from eslserver.config import Settings
from eslserver.db.database import Connection, Database
from eslserver.metrics import Metrics
from eslserver.store import audit as audit_rows
from eslserver.store import events as event_rows
from eslserver.store import images as image_rows
from eslserver.store import jobs as job_rows
from eslserver.store import pos_updates
from eslserver.store import products
from eslserver.store.sizes import database_bytes, table_rows
from eslserver.timeutil import iso, utcnow

__all__ = ["BATCH", "MAX_BATCHES", "PRUNERS", "Retention", "RoundReport", "history_to_prune"]

log = logging.getLogger(__name__)

BATCH: Final = 500
"""Rows one write transaction deletes at most."""
MAX_BATCHES: Final = 200
"""Transactions per table per round at most (100,000 rows): a backlog is worked off over
several rounds rather than in one long burst."""
HISTORY_SKUS: Final = 200
"""SKUs whose history one read looks at (`products.history_groups`)."""
_HISTORY_CHUNK: Final = 50
"""SKUs whose history one write transaction reads, decides on and prunes."""
RULE_MARGIN: Final = timedelta(days=1)
"""Kept beyond what the lowest-price rule reads today: its window moves with the clock and
with a reduction that starts later, and a shorter piece of the timeline than this never
decides a price."""

Prune = Callable[[Connection, str, int], Awaitable[int]]

PRUNERS: Final[tuple[tuple[str, str, Prune], ...]] = (
    ("jobs", "retention_jobs_days", job_rows.prune_before),
    ("events", "retention_events_days", event_rows.prune_before),
    ("audit", "retention_audit_days", audit_rows.prune_before),
    ("images", "retention_images_days", image_rows.prune_before),
    ("pos_update_ids", "pos_update_ids_days", pos_updates.prune_before),
)
"""(table, its setting in days, its owner's ``prune_before``) of each table pruned by age
alone; ``price_history`` is pruned by `history_to_prune` as well."""


@dataclass(slots=True)
class RoundReport:
    """What one round deleted: per table, the rows each of its transactions deleted."""

    batches: dict[str, list[int]] = field(default_factory=dict)

    @property
    def deleted(self) -> dict[str, int]:
        return {table: sum(sizes) for table, sizes in self.batches.items()}


class Retention:
    """Applies the ``retention_*`` settings to one database (`run`) and measures its tables."""

    def __init__(self, db: Database, settings: Settings, metrics: Metrics, *, batch: int = BATCH,
                 max_batches: int = MAX_BATCHES) -> None:
        if batch < 1 or max_batches < 1:
            raise ValueError(f"batch and max_batches: expected >= 1, got {batch!r} and {max_batches!r}")
        self.db = db
        self.settings = settings
        self.metrics = metrics
        self.batch = batch
        self.max_batches = max_batches
        self._sweep: image_rows.Sweep | None = None

    async def run(self, now: datetime | None = None) -> RoundReport:
        """One round over every table whose retention is not 0, as of `now` (default: now)."""
        now = utcnow() if now is None else now
        report = RoundReport()
        for table, setting, prune in PRUNERS:
            days = int(getattr(self.settings, setting))
            if days > 0:
                report.batches[table] = await self._prune(table, prune, iso(now - timedelta(days=days)))
        if self.settings.retention_price_history_days > 0:
            report.batches["price_history"] = await self._prune_history(now)
        if any(report.deleted.values()):
            log.info("retention deleted %s", ", ".join(f"{n} {t}" for t, n in report.deleted.items() if n),
                     extra={"store": self.settings.store})
        return report

    async def _prune(self, table: str, prune: Prune, cutoff: str) -> list[int]:
        """Batches until one finds fewer rows than it may delete (images: until the sweep has
        looked at every old image once; one cut short by `max_batches` goes on next round)."""
        sweep: image_rows.Sweep | None = None
        if table == "images":
            if self._sweep is None or self._sweep.done:
                self._sweep = image_rows.Sweep()
            sweep = self._sweep
        sizes: list[int] = []
        while len(sizes) < self.max_batches:
            async with self.db.transaction() as conn:
                if sweep is None:
                    deleted = await prune(conn, cutoff, self.batch)
                else:
                    deleted = await image_rows.prune_before(conn, cutoff, self.batch, sweep=sweep)
            self._count(table, deleted)  # committed
            sizes.append(deleted)
            if sweep.done if sweep is not None else deleted < self.batch:
                break
            await asyncio.sleep(0)  # whoever waits for the write lock goes first
        return sizes

    async def _prune_history(self, now: datetime) -> list[int]:
        """Walk every SKU's history a few hundred SKUs at a time; for those with two or more
        periods older than the retention, decide in one write transaction (on the history as
        it is then) which periods nothing reads any more, and delete them."""
        older_than = now - timedelta(days=self.settings.retention_price_history_days)
        sizes: list[int] = []
        after = ("", "")
        while len(sizes) < self.max_batches:
            groups = await products.history_groups(self.db, iso(older_than), after, HISTORY_SKUS)
            if not groups:
                break
            after = (groups[-1]["store"], groups[-1]["sku"])
            due = [(g["store"], g["sku"]) for g in groups if g["old"] >= 2]
            for i in range(0, len(due), _HISTORY_CHUNK):
                chunk = due[i:i + _HISTORY_CHUNK]
                while len(sizes) < self.max_batches:
                    deleted, more = await self._prune_skus(chunk, now, older_than)
                    self._count("price_history", deleted)
                    if deleted:
                        sizes.append(deleted)
                    await asyncio.sleep(0)
                    if not more:
                        break
            await asyncio.sleep(0)
        return sizes or [0]

    async def _prune_skus(self, skus: Sequence[tuple[str, str]], now: datetime,
                          older_than: datetime) -> tuple[int, bool]:
        """(periods deleted, whether more of these SKUs' periods wait for another batch)."""
        by_store: dict[str, list[str]] = {}
        for store, sku in skus:
            by_store.setdefault(store, []).append(sku)
        async with self.db.transaction() as conn:
            ids: list[int] = []
            for store, names in by_store.items():
                for rows in (await products.history(conn, store, names)).values():
                    ids += history_to_prune(
                        [(r["id"], pricing.PricePeriod.from_row(r["price"], r["start_at"], r["end_at"],
                                                                r["reduction"])) for r in rows],
                        now, older_than)
            ids.sort()
            deleted = await products.delete_history(conn, ids[:self.batch])
        return deleted, len(ids) > self.batch

    def _count(self, table: str, deleted: int) -> None:
        if deleted:
            self.metrics.retention_deleted.labels(table).inc(deleted)

    async def measure(self) -> dict[str, int]:
        """Set ``esl_table_rows`` for every table and ``esl_database_bytes``; the row counts."""
        counts = await table_rows(self.db)
        for table, rows in counts.items():
            self.metrics.table_rows.labels(table).set(rows)
        self.metrics.database_bytes.set(await database_bytes(self.db))
        return counts


def history_to_prune(rows: Sequence[tuple[int, pricing.PricePeriod]], now: datetime,
                     older_than: datetime) -> list[int]:
    """The ids of those of one SKU's price periods (`rows`: ``(id, period)`` in the order
    written, all of them) that may be deleted at `now`: only periods older than `older_than`
    that no label can show again and that no lowest-price computation from `now` on reads.

    A period is read from the instant `keep_from` on: the earlier of `older_than` and the
    start of the window `pricing.prior_price` reads for the reduction in force now (30 days
    before its first step), less `RULE_MARGIN`. Deleted are periods that start before it and
    either ended before it, or are overridden from then on by a later open-ended period (a
    later row wins where it covers an instant: `pricing.selling_price_at`). So the timeline
    from `keep_from` on is the same with or without them, and so is every prior price the
    rule computes now or later; the newest period before the window (the price when it
    opened) stays, as does the SKU's latest recorded change.
    """
    if not rows:
        return []
    periods = [period for _, period in rows]
    keep_from = min(older_than, pricing.lookback_start(periods, now) - RULE_MARGIN)
    latest = max(period.start for period in periods)
    out: list[int] = []
    earliest_open_after: datetime | None = None  # the earliest start of a later open-ended period
    for row_id, period in reversed(rows):
        if period.start < keep_from and period.start != latest:
            if period.end is not None and period.end < keep_from:
                out.append(row_id)
            elif earliest_open_after is not None and earliest_open_after <= max(period.start, keep_from):
                out.append(row_id)
        if period.end is None and (earliest_open_after is None or period.start < earliest_open_after):
            earliest_open_after = period.start
    out.reverse()
    return out
