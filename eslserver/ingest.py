"""POS price updates in: map fields, validate, store with history, mark the labels to redraw.

One call of `Ingest.submit` is one POS message (an object or a batch). Each item is mapped
through the store's field map and validated on its own, so one bad item is reported (its
index, field and value) and the rest are applied. Everything accepted is committed in one
transaction before `submit` returns, and MQTT / HTTP acknowledge only after that.

Ordering: an item whose ``seq`` is not above the highest stored for its SKU (applied or
scheduled) is stale: ignored and counted, not an error (a POS replaying its outbox is
normal). An item with ``valid_from`` in the future is kept in ``scheduled_updates`` and
applied by `apply_due` at its time, unless a newer ``seq`` has been applied by then (the
POS's newest instruction wins). Promotion windows need no scheduling of their own: the
product's ``next_change_at`` says when its label must be redrawn. A ``valid_from`` in the
past applies as of receipt when within ``valid_from_tolerance_s``, and is refused when older
(`eslserver.price_rules`; past prices are an admin's import, `eslserver.history_import`).
Refused against what is stored, per item: a ``seq`` more than ``max_seq_jump`` above the
stored one (``seq_jump``), a SKU not in the catalogue when ``unknown_sku`` is ``refuse``, and
an ``image`` naming an upload that is not there (`eslserver.uploads.unknown_image`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from eslserver import faults, pos_limits, pricing
from eslserver.audit import Who, changed, record_audit
from eslserver.config import Settings
from eslserver.db.database import Connection, Database, DatabaseError
from eslserver.health import database_fault
from eslserver.metrics import Metrics
from eslserver.pos_fields import in_pos_terms, read_update
from eslserver.price_rules import check_valid_from
from eslserver.pricing import PriceError, PriceUpdate
from eslserver.store import labels as label_rows
from eslserver.store import pos_updates, products
from eslserver.timeutil import iso, parse_iso, utcnow
from eslserver.uploads import unknown_image

__all__ = ["Ingest", "IngestResult", "STATUSES", "Unavailable", "accepted_item", "ack_message", "current_prices",
           "error_message"]

log = logging.getLogger(__name__)


STATUSES = ("applied", "scheduled", "stale", "duplicate")
"""What an accepted item's ``status`` says: applied now; kept for its ``valid_from``; ignored
as older than the stored ``seq``; ignored as an ``update_id`` accepted before."""


class Unavailable(Exception):
    """The database cannot commit now (disk full, locked, read-only, an I/O error, or the
    transaction failed as a whole): nothing of the message was stored.

    It is the machine's fault, not the message's, so the message must not be acknowledged:
    MQTT retries it unacknowledged (`eslserver.mqtt.Retry`), HTTP answers 503 with
    ``Retry-After`` `retry_after_s`; sent again later, it is applied then. `reason` names
    the fault (``database: disk full (…)``)."""

    def __init__(self, reason: str, *, retry_after_s: int = 5) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after_s = retry_after_s

    @classmethod
    def of(cls, exc: BaseException) -> Unavailable | None:
        """The `Unavailable` that database error `exc` means, or None when `exc` is no fault
        of the database (a bug, a constraint: retrying would fail the same way)."""
        if isinstance(exc, Unavailable):
            return exc
        if isinstance(exc, DatabaseError):  # ours: the database is not open (the server stops)
            return cls(f"database: {exc}")
        if getattr(exc, "sqlstate", None) in ("40001", "40P01"):  # PostgreSQL: serialisation, deadlock
            return cls(f"database: {exc}", retry_after_s=1)
        if not isinstance(exc, sqlite3.Error):
            fault = database_fault(exc)  # PostgreSQL: the server unreachable, its disk full…
            return None if fault is None else cls(fault[1])
        if not (isinstance(exc, sqlite3.OperationalError) or type(exc) is sqlite3.DatabaseError):
            return None
        fault = database_fault(exc)
        code = getattr(exc, "sqlite_errorcode", None)
        busy = isinstance(code, int) and code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
        return cls(fault[1] if fault is not None else f"database: {exc}", retry_after_s=1 if busy else 5)


@dataclass(slots=True)
class IngestResult:
    """What happened to each item: accepted (`STATUSES`, see `accepted_item`) or an error."""

    accepted: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"accepted": self.accepted, "errors": self.errors}


_GROUP = 200  # messages per transaction at most


@dataclass(slots=True)
class _Pending:
    """A validated message waiting for the group commit."""

    updates: list[tuple[int, PriceUpdate]]
    received: datetime
    source: str
    actor: Who
    done: asyncio.Future[list[str | PriceError]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())


class Ingest:
    """The POS side of the server (MQTT and HTTP both end here)."""

    def __init__(self, db: Database, settings: Settings, metrics: Metrics,
                 on_dirty: Callable[[], None] = lambda: None,
                 on_result: Callable[[int, int], None] = lambda accepted, rejected: None) -> None:
        self.db = db
        self.on_result = on_result
        self.settings = settings
        self.metrics = metrics
        self.on_dirty = on_dirty
        self._queue: list[_Pending] = []
        self._leading = False

    async def submit(self, payload: bytes | str | Sequence[object] | Mapping[str, Any], *, source: str,
                     actor: Who, max_bytes: int | None = None) -> IngestResult:
        """Validate and store one POS message; committed before this returns.

        A message of more than `max_bytes` (MQTT: `pos_limits.MAX_MESSAGE_BYTES`) or more than
        `pos_limits.MAX_ITEMS` items is refused whole, unread. Raises `Unavailable` when the
        database cannot commit: then nothing of the message was stored, and the caller must not
        acknowledge it.
        """
        result = IngestResult()
        received = utcnow()
        try:
            if max_bytes is not None and isinstance(payload, bytes):
                pos_limits.check_message_size(len(payload), max_bytes)
            if isinstance(payload, (bytes, str)):
                items: list[object] = pricing.parse_payload(payload)
            elif isinstance(payload, Mapping):
                items = [payload]
            else:
                items = list(payload)
            pos_limits.check_items(len(items))
        except PriceError as exc:
            self._reject(result, exc, source)
            return result
        updates: list[tuple[int, PriceUpdate]] = []
        for index, item in enumerate(items):
            try:
                update = read_update(item, self.settings.field_map, index=index,
                                     default_currency=self.settings.currency)
                updates.append((index, check_valid_from(update, received, self.settings.valid_from_tolerance_s,
                                                        index=index)))
            except PriceError as exc:  # named in the POS's own field names
                self._reject(result, in_pos_terms(exc, item, self.settings.field_map), source, count=False)
        if updates:  # counted once stored: a message retried while the database is down counts once
            statuses = await self._group_commit(_Pending(updates, received, source, actor))
        self.metrics.updates_received.labels(source).inc(len(items))
        for body in result.errors:
            self.metrics.updates_rejected.labels(source, str(body.get("error", "invalid"))).inc()
        if not updates:
            self.on_result(0, len(result.errors))
            return result
        dirty = False
        for (index, update), status in zip(updates, statuses, strict=True):
            if isinstance(status, PriceError):  # refused against what is stored (seq jump, unknown SKU)
                status.index = index
                self._reject(result, in_pos_terms(status, items[index], self.settings.field_map), source)
                continue
            result.accepted.append(accepted_item(index, update, status))
            dirty |= status in ("applied", "scheduled")  # the scheduler must look again
        for item in result.accepted:
            if item["status"] == "stale":
                self.metrics.updates_stale.labels(source).inc()
            elif item["status"] == "scheduled":
                self.metrics.updates_scheduled.labels(source).inc()
            elif item["status"] == "duplicate":
                self.metrics.updates_duplicate.labels(source).inc()
        if dirty:
            self.on_dirty()
        self.on_result(len(result.accepted), len(result.errors))
        return result

    async def _group_commit(self, pending: _Pending) -> list[str | PriceError]:
        """Apply `pending` in a transaction shared with the messages that arrive meanwhile.

        The first caller leads: it lets the loop run once (so that concurrent handlers queue
        their messages), then applies everything queued, in arrival order, in one transaction
        with a savepoint per message, and hands each caller its statuses after the commit. One
        commit per burst instead of per message is what sustains hundreds of messages a second.

        A message that fails on its own (a bug met by its data) fails alone. A database that
        fails (disk full, locked, I/O; or SQLite rolled the transaction back by itself) fails
        the whole transaction: every caller of it gets `Unavailable`, nothing of it is stored.
        """
        self._queue.append(pending)
        if self._leading:
            return await pending.done
        self._leading = True
        try:
            await asyncio.sleep(0)
            while self._queue:
                batch, self._queue = self._queue[:_GROUP], self._queue[_GROUP:]
                results: list[list[str | PriceError] | BaseException] = []
                try:
                    async with self.db.transaction() as conn:
                        for item in batch:
                            try:  # a failing message takes back only its own writes and after-commit counts
                                async with self.db.savepoint(conn):
                                    statuses = [await self._accept(conn, update, item.received, item.source,
                                                                   item.actor) for _, update in item.updates]
                                    await faults.reached("ingest.in_transaction")  # test hook: kill -9 here
                            except Exception as exc:  # this message only; the others still commit
                                if Unavailable.of(exc) is not None:
                                    raise  # the database's fault, not the message's: the batch goes
                                if not conn.in_transaction:  # SQLite rolled everything back by itself
                                    raise Unavailable(f"database: the transaction was rolled back ({exc})") from exc
                                results.append(exc)
                            else:
                                results.append(statuses)
                except BaseException as exc:
                    failure = Unavailable.of(exc) if isinstance(exc, Exception) else None
                    for item in batch:
                        if not item.done.done():
                            item.done.set_exception(failure or (exc if isinstance(exc, Exception)
                                                                else Unavailable(f"ingest interrupted: {exc!r}")))
                    if not isinstance(exc, Exception):
                        raise
                    continue
                for item, outcome in zip(batch, results, strict=True):
                    if isinstance(outcome, BaseException):
                        item.done.set_exception(outcome)
                    else:
                        item.done.set_result(outcome)
        finally:
            self._leading = False
            for item in self._queue:  # the leader was cancelled: followers must not wait forever
                if not item.done.done():
                    item.done.set_exception(Unavailable("ingest interrupted (the server is stopping); not stored"))
            self._queue = []
        return await pending.done

    def _reject(self, result: IngestResult, exc: PriceError, source: str, *, count: bool = True) -> None:
        body = exc.to_json()
        result.errors.append(body)
        if count:
            self.metrics.updates_rejected.labels(source, str(body.get("error", "invalid"))).inc()

    async def _accept(self, conn: Connection, update: PriceUpdate, received: datetime,
                      source: str, actor: Who) -> str | PriceError:
        """The item's status, or the `PriceError` refusing it against what is stored. An
        ``update_id`` accepted before is a ``duplicate`` (the POS re-sent what it saw no
        confirmation for): not applied again; an accepted one is kept with its change."""
        store = self.settings.store
        await products.take_turn(conn, store, update.sku)  # instances sharing a database: one item of a SKU at a time
        if update.update_id is not None and await pos_updates.seen(conn, store, update.update_id) is not None:
            return "duplicate"
        status = await self._decide(conn, update, received, source, actor)
        if update.update_id is not None and not isinstance(status, PriceError):
            await pos_updates.remember(conn, store, update.update_id, update.sku, status, iso(received))
        return status

    async def _decide(self, conn: Connection, update: PriceUpdate, received: datetime,
                      source: str, actor: Who) -> str | PriceError:
        """`_accept` for an item not seen before: stale, refused, scheduled or applied."""
        store = self.settings.store
        row = await products.get(conn, store, update.sku)
        if row is None and self.settings.unknown_sku == "refuse":
            return PriceError("sku", update.sku, "not in the catalogue (this store does not let the POS create "
                              "products: unknown_sku = refuse)", code="unknown_sku", sku=update.sku)
        applied = None if row is None else row["seq"]
        if update.seq is not None:
            pending = await products.scheduled_max_seq(conn, store, update.sku)
            highest = max((v for v in (applied, pending) if v is not None), default=None)
            if highest is not None and update.seq <= highest:
                return "stale"
            jump = self.settings.max_seq_jump
            if jump and highest is not None and update.seq - highest > jump:
                # a forged or corrupt seq would make every later genuine update stale
                log.warning("refused seq %d for %s: more than max_seq_jump %d above the stored %d", update.seq,
                            update.sku, jump, highest, extra={"store": store, "sku": update.sku})
                return PriceError("seq", update.seq, f"more than {jump} above the stored seq {highest} "
                                  "(max_seq_jump); an admin clears it with esl reset-seq",
                                  code="seq_jump", sku=update.sku)
        if row is not None and update.fields.get("attributes"):  # updates must not grow a product without bound
            merged = pricing.merge_record(pricing.record_from_json(row["record"]), update).get("attributes")
            try:
                pos_limits.check_attributes(merged, sku=update.sku, merged=True)
            except PriceError as exc:
                return exc
        missing = await unknown_image(conn, store, update)  # a name or digest no upload has
        if missing is not None:
            return missing
        if update.valid_from is not None and update.valid_from > received:
            await products.schedule(conn, store, update.sku, pricing.record_to_json(dict(update.fields)), update.seq,
                                    iso(update.valid_from), iso(received), source)
            await record_audit(conn, actor, "price.schedule", update.sku, None,
                               {"fields": dict(update.fields), "valid_from": update.valid_from, "seq": update.seq})
            return "scheduled"
        effective = update.valid_from or received
        await apply_update(conn, store, update, effective, received, source, actor)
        return "applied"

    async def apply_due(self, now: datetime, actor: Who) -> int:
        """Apply scheduled updates whose time has come and redraw labels whose promotion
        starts or ends by `now`; returns how many products changed."""
        store = self.settings.store
        changed = 0
        async with self.db.transaction() as conn:
            for row in await products.due_scheduled(conn, store, iso(now)):
                await products.drop_scheduled(conn, row["id"])
                # stored as validated JSON (decimal text, ISO times): validate again to get the values back
                update = pricing.validate_update({**pricing.record_from_json(row["fields"]), "sku": row["sku"],
                                                  "seq": row["seq"]}, default_currency=self.settings.currency)
                current = await products.seq(conn, store, update.sku)
                if update.seq is not None and current is not None and update.seq <= current:
                    log.info("scheduled update for %s (seq %s) superseded by seq %s", update.sku, update.seq,
                             current, extra={"store": store, "sku": update.sku})
                    continue
                await apply_update(conn, store, update, parse_iso(row["valid_from"]), parse_iso(row["received_at"]),
                                   row["source"], actor, scheduled=True)
                changed += 1
            for row in await products.due_changes(conn, store, iso(now)):
                nxt = pricing.next_change_after(pricing.record_from_json(row["record"]), now)
                await products.set_next_change(conn, store, row["sku"], iso(nxt) if nxt else None)
                # a promotion starting or ending took effect at its time, not when this loop woke
                await label_rows.mark_dirty(conn, row["next_change_at"], store=store, sku=row["sku"])
                changed += 1
        if changed:
            self.on_dirty()
        return changed

    async def next_due(self) -> datetime | None:
        """When `apply_due` next has something to do (None: nothing scheduled)."""
        due = await products.next_due(self.db, self.settings.store)
        return parse_iso(due) if due else None


async def apply_update(conn: Connection, store: str, update: PriceUpdate, effective: datetime,
                       received: datetime, source: str, actor: Who, *, scheduled: bool = False) -> None:
    """Make `update` the product's current state at `effective`: record, history, labels.
    A product a POS token creates is listed as new (``created_by_pos``) until another role
    changes it; a `scheduled` change the server applies leaves that as it is."""
    row = await products.get(conn, store, update.sku)
    before = pricing.record_from_json(row["record"]) if row else None
    after = pricing.merge_record(before, update)
    await products.add_history(conn, store, update.sku, [
        (str(period.price), iso(period.start), iso(period.end) if period.end else None, int(period.reduction),
         update.seq, source, iso(received)) for period in pricing.periods_for_update(before, update, effective)])
    nxt = pricing.next_change_after(after, received)
    seq = max((s for s in (update.seq, row["seq"] if row else None) if s is not None), default=None)
    await products.upsert(conn, store, update.sku, pricing.record_to_json(after), seq, iso(received),
                          iso(nxt) if nxt else None, by_pos=None if scheduled else actor.role == "pos")
    # time-to-shelf counts from when the change took effect: its arrival, or a scheduled
    # change's valid_from (it could not be on the shelf before then)
    await label_rows.mark_dirty(conn, iso(max(effective, received)), store=store, sku=update.sku)
    # what changed, not the whole record: an unchanged 8 KiB of attributes adds nothing per price
    await record_audit(conn, actor, "price.update", update.sku, *changed(before, after))


async def price_periods(db: Database, store: str, skus: Sequence[str]) -> dict[str, list[pricing.PricePeriod]]:
    """Each SKU's price history in the order it was written, as `pricing` reads it."""
    return {sku: [pricing.PricePeriod.from_row(h["price"], h["start_at"], h["end_at"], h["reduction"]) for h in rows]
            for sku, rows in (await products.history(db, store, skus)).items()}


async def current_prices(db: Database, store: str) -> dict[str, Decimal]:
    """Every product's stored base price (``price`` of its record), by SKU: what a POS
    starting up (the demo's) needs to know to continue from the catalogue as it is."""
    out: dict[str, Decimal] = {}
    for row in await products.records(db, store):
        out[row["sku"]] = Decimal(str(pricing.record_from_json(row["record"])["price"]))
    return out


def accepted_item(index: int, update: PriceUpdate, status: str) -> dict[str, Any]:
    """One accepted item as confirmed (``pos/acks``, the HTTP reply): ``index`` in the message,
    ``sku``, the POS's ``seq`` and ``update_id`` (null when it sent none), ``status``."""
    return {"index": index, "sku": update.sku, "seq": update.seq, "update_id": update.update_id, "status": status}


def ack_message(result: IngestResult) -> bytes:
    """The JSON published on ``pos/acks``, after the commit, for a message with accepted items."""
    return json.dumps({"accepted": result.accepted, "rejected": len(result.errors)}, ensure_ascii=False).encode()


def error_message(result: IngestResult) -> bytes:
    """The JSON published on ``pos/errors`` for a message with rejected items."""
    return json.dumps({"errors": result.errors, "accepted": len(result.accepted)}, ensure_ascii=False).encode()
