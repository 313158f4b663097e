"""Dirty labels → rendered images → outbox jobs, in batches, off the event loop.

Anything that changes what a label should show (a price, a promotion starting, a template,
a binding, a check-in that reveals the label lost its image) marks the label ``dirty`` with
a generation number, in the transaction that made the change. This loop waits a debounce
window after the first mark (a burst of POS messages becomes one batch), then renders every
dirty label in batches on the process pool while the event loop keeps serving MQTT and HTTP,
and writes the outcome in one transaction per batch:

- the image the label already shows (its reported hash): nothing to send, state ``ok``;
- otherwise an image job with the cheapest update (a region or delta against the image the
  label shows, when the server has it), superseding older queued ones; an unpaired label
  gets its pairing job first;
- a render error (bad template, bad data): an event, and the label keeps its last good image.

The dirty mark is cleared only if it still holds the generation that was rendered, so a
change that lands during rendering is rendered again. A crash at any point leaves the marks
in the database, and the next start renders those labels again: no change is lost.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any

from eslserver import pricing
from eslserver.config import DEFAULT_TEMPLATES, Settings
from eslserver.db.database import Database
from eslserver.ingest import price_periods
from eslserver.jobs import JobKind, Outbox
from eslserver.keyvault import KeyVault
from eslserver.logs import FailureLog
from eslserver.metrics import Metrics
from eslserver.render_worker import RenderItem, RenderJob, RenderOutcome, render_job, render_limited
from eslserver.store import events as event_rows
from eslserver.store import images as image_rows
from eslserver.store import jobs as job_rows
from eslserver.store import labels as label_rows
from eslserver.store import templates as store_templates
from eslserver.timeutil import iso, utcnow
from eslserver.uploads import Uploads
from render.isolate import LimitedPool

__all__ = ["Pipeline", "template_for"]

log = logging.getLogger(__name__)

_CHUNK = 64  # labels per task handed to a render process
_RECHECK_S = 5.0
_IMAGE_JOB_COLUMNS = ("mac", "origin_at", "image_hash", "base_hash", "region", "delta", "format", "payload")


def template_for(model: str, template: str | None) -> str:
    return template or DEFAULT_TEMPLATES.get(model, "shelf-2.9")


class Pipeline:
    """The render loop. `poke` after marking labels dirty; `run` is the task body."""

    def __init__(self, db: Database, settings: Settings, metrics: Metrics, executor: LimitedPool | None,
                 *, vault: KeyVault, on_jobs: Callable[[], None] = lambda: None,
                 on_states: Callable[[Iterable[str]], None] = lambda macs: None,
                 uploads: Uploads | None = None) -> None:
        self.db = db
        self.uploads = uploads or Uploads(db, settings)
        """The uploaded images render jobs carry (render processes have no database)."""
        self.vault = vault
        self.settings = settings
        self.metrics = metrics
        self.executor = executor
        self.on_jobs = on_jobs
        self.on_states = on_states
        self.outbox = Outbox(db, metrics)
        self._wake = asyncio.Event()
        self.batches = 0

    def poke(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        self._wake.set()  # labels left dirty by a previous run
        debounce = self.settings.debounce_ms / 1000
        failure = FailureLog(log, "render pipeline", store=self.settings.store)
        while True:
            try:  # a safety net: look every few seconds even if nobody pokes
                async with asyncio.timeout(_RECHECK_S):
                    await self._wake.wait()
            except TimeoutError:
                pass
            if debounce:
                await asyncio.sleep(debounce)
            self._wake.clear()
            try:
                while await self.step():
                    pass
            except Exception as exc:  # the outermost boundary of the loop: log, back off, go on
                failure.failed(exc, retry_s=1.0)
                await asyncio.sleep(1.0)
                self._wake.set()
            else:
                failure.ok()

    async def step(self) -> int:
        """Render one batch of dirty labels; returns how many labels it handled."""
        store = self.settings.store
        now = utcnow()
        owner = self.settings.instance
        async with self.db.transaction() as conn:  # a lease: instances on one database split the work
            claimed = await label_rows.claim_dirty(conn, store, owner=owner, now=iso(now), limit=self.settings.render_batch,
                                                   until=iso(now + timedelta(seconds=self.settings.render_lease_s)))
        if not claimed:
            return 0
        rows = await label_rows.dirty_batch(self.db, claimed)
        orphans = [r for r in rows if r["record"] is None]
        rows = [r for r in rows if r["record"] is not None]
        skus = sorted({r["sku"] for r in rows})
        periods = await price_periods(self.db, store, skus)
        bases = await image_rows.payloads(self.db, {r["displayed_hash"] for r in rows if r["displayed_hash"]})
        templates = await self._templates({template_for(r["model"], r["template"]) for r in rows})
        groups: dict[tuple[str, str], list[RenderItem]] = defaultdict(list)
        record_cache: dict[str, dict[str, Any]] = {}
        for r in rows:
            sku = r["sku"]
            if sku not in record_cache:
                record_cache[sku] = pricing.product_for_render(pricing.record_from_json(r["record"]),
                                                               periods.get(sku, []), now)
            base = bases.get(r["displayed_hash"]) if r["displayed_hash"] else None
            groups[(template_for(r["model"], r["template"]), r["model"])].append(RenderItem(
                r["mac"], sku, record_cache[sku], base[1] if base else None, base[0] if base else None))
        jobs: list[RenderJob] = []
        for (tname, model), items in groups.items():
            version, source = templates.get(tname, (0, None))
            for i in range(0, len(items), _CHUNK):
                chunk = tuple(items[i:i + _CHUNK])
                images = await self.uploads.image_set([source], [item.record for item in chunk])
                jobs.append(RenderJob(tname, version, source, model, self.settings.store_name,
                                      self.settings.currency, now, chunk, images))
        started = time.perf_counter()
        outcomes: list[RenderOutcome] = []
        if jobs:
            if self.executor is None:
                results = [render_job(job) for job in jobs]
            else:  # limited processes; a batch that hits a limit is bisected to its bad labels
                results = await asyncio.gather(*(render_limited(self.executor, job) for job in jobs))
            for part in results:
                outcomes.extend(part)
        self.metrics.render_seconds.observe(time.perf_counter() - started)
        by_mac = {r["mac"]: r for r in rows}
        changed = await self._write(outcomes, by_mac, orphans, now, claimed)
        self.batches += 1
        if changed:
            self.on_states(changed)
        self.on_jobs()
        return len(claimed)

    async def _templates(self, names: set[str]) -> dict[str, tuple[int, str]]:
        keys = sorted(names)
        return {r["name"]: (r["version"], r["source"]) for r in await store_templates.by_names(self.db, keys)}

    async def _write(self, outcomes: list[RenderOutcome], rows: dict[str, Any], orphans: list[Any],
                     now: Any, claimed: list[str]) -> list[str]:
        store = self.settings.store
        changed: list[str] = []
        stamp = iso(now)
        # collected per statement and written with executemany: one round trip per kind of
        # row instead of several per label keeps the event loop free during a repricing
        images: list[tuple[str, str, int, bytes, str]] = []
        supersede: list[str] = []
        shown: list[tuple[str, str, str]] = []
        pending: list[tuple[str, str, str]] = []
        failed: list[tuple[str, str]] = []
        events: list[event_rows.Event] = []
        clear: list[tuple[str, int]] = [(r["mac"], r["dirty"]) for r in orphans]
        jobs: list[tuple[Any, ...]] = []
        unpaired: list[str] = []
        async with self.db.transaction() as conn:
            macs = [o.mac for o in outcomes]
            current = await label_rows.dirty_marks(conn, macs)
            open_images = await job_rows.open_images(conn, macs)
            for out in outcomes:
                r = rows[out.mac]
                if current.get(out.mac) != r["dirty"]:
                    continue  # changed while we drew it (new price, unbound, rebound): the newer mark wins
                if out.error is not None or out.image_hash is None:
                    self.metrics.render_errors.inc()
                    log.warning("label %s (sku %s): %s", out.mac, r["sku"], out.error,
                                extra={"store": store, "mac": out.mac, "sku": r["sku"]})
                    events.append(event_rows.Event(stamp, store, out.mac, None, "render_error", {"error": out.error}))
                    failed.append((stamp, out.mac))
                    changed.append(out.mac)
                    continue
                self.metrics.labels_rendered.inc()
                digest = out.image_hash.hex()
                images.append((digest, r["model"], out.image_format, out.image_payload, stamp))
                if out.update is None or digest == r["displayed_hash"]:
                    self.metrics.labels_skipped.inc()
                    supersede.append(out.mac)
                    shown.append((digest, stamp, out.mac))
                    changed.append(out.mac)
                    continue
                if (out.mac, digest) in open_images:  # already on its way
                    clear.append((out.mac, r["dirty"]))
                    continue
                supersede.append(out.mac)
                if not r["paired"]:
                    unpaired.append(out.mac)
                u = out.update
                jobs.append((out.mac, r["origin_at"], digest, u.base_hash.hex() if u.base_hash else None,
                             ",".join(map(str, u.region)) if u.region else None, int(u.delta), u.image_format,
                             u.payload))
                pending.append((digest, stamp, out.mac))
                changed.append(out.mac)
            await image_rows.add_many(conn, images)
            await self.outbox.supersede_images(conn, supersede, now)
            for mac in unpaired:  # the image waits behind the pairing (one job per label at a time)
                await self.outbox.ensure_pair(conn, store=store, mac=mac, now=now,
                                              sealed_key=self.vault.new_label_key(store, mac))
            await self.outbox.insert_many(conn, store=store, kind=JobKind.IMAGE, now=now, columns=_IMAGE_JOB_COLUMNS,
                                          rows=jobs)
            await label_rows.set_shown(conn, shown)
            await label_rows.set_expected(conn, pending)
            await label_rows.set_render_failed(conn, failed)
            await event_rows.add_many(conn, events)
            await label_rows.clear_dirty(conn, clear)
            await label_rows.release_leases(conn, claimed, self.settings.instance)
        return changed
